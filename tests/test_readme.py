"""The README is a guide that works: its links resolve, and (make test-slow) every command it shows runs.

The commands run as a user would type them in a clone, from a folder that holds the clone's experiments/ and
nothing else, with real CIFAR-10 (TFDS_DATA_DIR) and small
stand-ins for the user's files (photos, a torchvision weights file); training commands get flags appended that
shrink them to two steps of ResNet-8 (absl: the last value of a flag wins), sweeps the same through --set.
`make install` and `make test` are what CI runs; the SLURM command is docs/pods.md's, which
tests/test_cloud_storage.py runs as simulated SLURM tasks.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, SHARED_DATA, TFDS_DIR

README = (REPO / "README.md").read_text()
SHRINK = [
    "num_train_steps=2",
    "model.depth=8",
    "batch_size=16",
    "eval_split=test[:100]",
    "eval_batch_size=100",
    "log_every_steps=1",
    "eval_every_steps=2",
    "checkpoint_every_steps=2",
]


def readme_commands() -> list[str]:
  """The commands of the README's sh blocks, one string each (backslash continuations joined)."""
  commands = []
  for block in re.findall(r"```sh\n(.*?)```", README, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = " ".join(line.split("#")[0].split())
      if line:
        commands.append(line)
  return commands


def test_links_resolve():
  links = re.findall(r"\]\(([^)#]+)\)", README)
  assert links and all((REPO / link).exists() for link in links if "://" not in link), links


def test_commands_are_known():
  commands = readme_commands()
  assert {c for c in commands if c.startswith("make ")} == {"make install", "make test"}
  srun = [c for c in commands if c.startswith("srun ")]
  pods = " ".join((REPO / "docs" / "pods.md").read_text().replace("\\\n", " ").split())
  assert srun and all(c in pods for c in srun)
  assert all(c.startswith(("make ", "srun ", "python -m resnet_jax.")) for c in commands), commands


@pytest.mark.slow
def test_every_command_runs(tmp_path):
  from resnet_jax import convert
  from helpers import numpy_state, random_torchvision

  (tmp_path / "experiments").symlink_to(REPO / "experiments")  # as in a clone, without writing into this one
  samples = sorted((SHARED_DATA / "cifar10-lossless-test-samples").glob("*.png"))
  shutil.copy(samples[2], tmp_path / "ship.png")
  shutil.copy(samples[-1], tmp_path / "bird.png")
  shutil.copy(sorted((SHARED_DATA / "imagenet-sample").glob("*.JPEG"))[0], tmp_path / "cat.jpg")
  convert.save_state_dict(numpy_state(random_torchvision(50)), str(tmp_path / "resnet50.safetensors"))
  inline = re.findall(r"`(python -m resnet_jax\.[^`]+)`", README)
  commands = [c for c in readme_commands() if c.startswith("python -m")] + inline
  assert len(commands) >= 9
  env = {"TFDS_DATA_DIR": str(TFDS_DIR)}
  for command in commands:
    args = command.split()[2:]
    if args[0] == "resnet_jax.main":
      args += [f"--config.{s}" for s in SHRINK]
    elif args[0] == "resnet_jax.sweep":
      args += ["--only=resnet20"] + [f"--set={s}" for s in SHRINK]
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **env}
    )
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-4000:]}"
  for made in ("cifar20.onnx", "resnet50.stablehlo", "runs/cifar56/results.json", "runs/table6/report/report.md"):
    assert (tmp_path / made).exists(), made


def test_results_table_is_the_packed_runs():
  """The README's results are what experiments/results_table.py writes from the committed packs, word for word."""
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "results_table.py")], capture_output=True, text=True, check=True
  )
  table = proc.stdout.strip()
  assert table.count("\n") >= 2 and "| ResNet-20 | 8.75 % |" in table
  assert table in README, "README.md's results table is stale: paste `python experiments/results_table.py`"


def test_results_table_cells(tmp_path):
  """Finished: the final test error; in pieces: the step reached; absent: 'not measured'; pieces' time summed."""
  import importlib.util
  import json

  spec = importlib.util.spec_from_file_location("results_table", REPO / "experiments" / "results_table.py")
  results_table = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(results_table)
  machine = {"cpu": "AMD EPYC (family 26, model 2)", "cpus": 2, "devices": "1 x cpu"}
  for name, steps, checkpoint in (("cifar20_resnet20", 64_000, 64_000), ("cifar20_resnet20_torch", 30_000, 30_000)):
    pack = tmp_path / name
    pack.mkdir()
    (pack / "config.json").write_text(json.dumps({"num_train_steps": 64_000}))
    (pack / "packed.json").write_text(json.dumps({"runs": {".": {"checkpoint": checkpoint}}}))
    (pack / "pieces.jsonl").write_text(
        "".join(json.dumps({"seconds": 5400.0, "machine": machine}) + "\n" for _ in range(steps // 30_000))
    )
    if steps == 64_000:
      (pack / "results.json").write_text(json.dumps({"steps": 64_000, "final_eval_error": 0.08914}))
  row = results_table.table(tmp_path).splitlines()[2].split(" | ")
  assert row[2:4] == ["8.91 %", "running: step 30,000 of 64,000"]
  assert row[5] == "AMD EPYC (family 26, model 2), 2 CPUs; AMD EPYC (family 26, model 2), 2 CPUs"
  assert row[6] == "3 h 00 min; 1 h 30 min |"
  assert results_table.error_cell(tmp_path / "nothing") == "not measured"
  twin_pieces = [{"machine": {**machine, "threads": t}} for t in (1, 2, 2)]
  assert results_table.machines(twin_pieces) == ["AMD EPYC (family 26, model 2), 2 CPUs, 1 or 2 threads"]
