"""experiments/table6_gpu.sh, the script a lent GPU machine runs for Table 6 and Figure 6, dry-run on the CPU.

The same script, sweep file, data path (a JPEG .npz read without TensorFlow, batches drawn on the device, several
steps per compiled call), report and archives as on the GPU; only the step counts and the networks are small.
"""

import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from helpers import REPO, small_cifar_npz

SCRIPT = REPO / "experiments" / "table6_gpu.sh"
TINY = [
    "--set=model.depth=8",
    "--set=batch_size=16",
    "--set=eval_batch_size=100",
    "--set=steps_per_call=2",
    "--set=log_every_steps=2",
    "--set=eval_every_steps=4",
    "--set=checkpoint_every_steps=2",
]


def _run_script(work, budget, *sets, env=None, timeout=600):
  full_env = {
      **os.environ,
      "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
      "TABLE6_RUNS": "resnet20,plain20",
      **(env or {}),
  }
  return subprocess.run(
      ["bash", str(SCRIPT), str(work), str(budget), *TINY, *sets],
      cwd=REPO,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _members(archive):
  with tarfile.open(archive) as t:
    return sorted(m.name.removeprefix("./") for m in t.getmembers() if m.isfile())


def test_table6_gpu_script_dry_run(tmp_path):
  npz = small_cifar_npz(tmp_path / "small.npz", n_train=512, n_test=200)
  work = tmp_path / "table6"
  proc = _run_script(work, 300, "--set=num_train_steps=4", env={"TABLE6_DATA": str(npz)})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "sweep exit status 0" in proc.stdout
  for run in ("resnet20", "plain20"):
    res = json.loads((work / run / "results.json").read_text())
    assert res["steps"] == 4 and res["eval_count"] == 200
    assert res["config"]["input_backend"] == "device" and res["config"]["data_file"] == str(npz)
  report = (work / "report" / "report.md").read_text()
  assert "ResNet-8" in report and "plain-8" in report
  # Every run finished: the next call gets their records (and skips them), no checkpoint.
  assert _members(work / "packed.tar.gz") == sorted(
      [
          "log.txt",
          "packed.json",
          *[
              f"{run}/{f}"
              for run in ("plain20", "resnet20")
              for f in ("config.json", "metrics.jsonl", "normalization.npz", "pieces.jsonl", "results.json")
          ],
          "report/figure6.png",
          "report/report.md",
          "sweep.json",
      ]
  )


@pytest.mark.slow
def test_table6_gpu_script_stops_at_its_deadline_and_resumes_in_another_call(tmp_path):
  """A deadline inside the first run: the run saves a checkpoint where it stopped and packed.tar.gz carries it to
  a fresh directory (another GPU machine), where the next call goes on from that step."""
  npz = small_cifar_npz(tmp_path / "small.npz", n_train=512, n_test=200)
  env = {"TABLE6_DATA": str(npz), "TABLE6_RESERVE": "30"}
  first = tmp_path / "first"
  t0 = time.time()
  proc = _run_script(first, 75, "--set=num_train_steps=100000", env=env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert time.time() - t0 < 75 + 10
  assert "sweep exit status 75" in proc.stdout, proc.stdout[-3000:]
  members = _members(first / "packed.tar.gz")
  steps = {int(m.split("/")[2]) for m in members if m.startswith("resnet20/checkpoints/")}
  assert len(steps) == 1 and steps.pop() > 0, members
  assert not any(m.startswith("plain20/") for m in members)  # never started
  second = tmp_path / "second"
  proc = _run_script(
      second, 75, "--set=num_train_steps=100000", env={**env, "TABLE6_RESUME": str(first / "packed.tar.gz")}
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "resnet20: resuming from step" in proc.stdout, proc.stdout[-3000:]
  # A call after a finished run skips it: the records are enough.
  third = tmp_path / "third"
  proc = _run_script(third, 100, "--set=num_train_steps=2", env={**env, "TABLE6_RUNS": "resnet20"})
  assert proc.returncode == 0 and "resnet20: done" in proc.stdout, proc.stdout[-3000:]
  proc = _run_script(
      tmp_path / "fourth",
      100,
      "--set=num_train_steps=2",
      env={**env, "TABLE6_RUNS": "resnet20", "TABLE6_RESUME": str(third / "packed.tar.gz")},
  )
  assert proc.returncode == 0 and "resnet20: complete (2 steps), skipped" in proc.stdout, proc.stdout[-3000:]
