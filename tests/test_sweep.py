"""The sweep runner: a tiny sweep on fake data completes, is skipped when rerun, resumes after a kill; --dry_run
prints commands that train the same runs; a bad override stops the sweep before any run; the experiments/ sweeps
load and validate."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, TFDS_DIR, read_metrics, run_cli

SWEEP = "resnet_jax.sweep"

# A depth-8 net (one block per stage) on 64 random images: compiles in seconds. Evaluating and checkpointing
# often keeps a run going long enough (about a second) to be killed in the middle.
TINY_SWEEP = """
from resnet_jax import config_lib
from resnet_jax.sweep import Run


def get_config():
  c = config_lib.cifar(8)
  c.dataset = "fake"
  c.fake_train_size, c.fake_eval_size = 64, 64
  c.batch_size, c.eval_batch_size = 16, 64
  c.num_train_steps = {steps}
  c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 1, 2
  return c


def get_sweep():
  return [Run("plain8", {{"model.residual": False}}), Run("resnet8", {{}}){extra}]
"""


def write_sweep(tmp_path, steps=12, extra="", name="tiny.py"):
  path = tmp_path / name
  path.write_text(TINY_SWEEP.format(steps=steps, extra=extra))
  return str(path)


@pytest.mark.slow  # `make test-slow`: the suite's time budget; make test runs sweeps end to end in test_experiments.py
def test_sweep_resumes_after_kill_then_skips_what_is_complete(tmp_path):
  """SIGKILL in the second run after its first checkpoint; the rerun skips the first run and resumes the second
  (that a resumed run ends bit for bit as an uninterrupted one is tests/test_resume.py's); a third run of the sweep
  finds both complete and writes nothing."""
  sweep_file = write_sweep(tmp_path, steps=12)
  wd = tmp_path / "killed"
  sweep_proc = subprocess.Popen(
      [sys.executable, "-m", SWEEP, sweep_file, f"--workdir={wd}"],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  ckpts = wd / "resnet8" / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline and sweep_proc.poll() is None:
    if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
      break
    time.sleep(0.01)
  assert sweep_proc.poll() is None, "the sweep ended before it could be killed"
  sweep_proc.send_signal(signal.SIGKILL)
  sweep_proc.wait()
  assert not (wd / "resnet8" / "results.json").exists()
  proc = run_cli(SWEEP, sweep_file, f"--workdir={wd}")
  assert "[1/2] plain8: complete (12 steps), skipped" in proc.stdout, proc.stdout
  assert "[2/2] resnet8: resuming from step" in proc.stdout, proc.stdout
  for name, residual in (("plain8", False), ("resnet8", True)):
    res = json.loads((wd / name / "results.json").read_text())
    assert res["steps"] == 12 and res["config"]["model"]["residual"] is residual
    assert [r["step"] for r in read_metrics(wd / name)] == list(range(1, 13))
  assert 0 < json.loads((wd / "resnet8" / "results.json").read_text())["resumed_from_step"] < 12
  manifest = json.loads((wd / "sweep.json").read_text())
  assert list(manifest["runs"]) == ["plain8", "resnet8"]
  assert manifest["runs"]["plain8"]["overrides"] == {"model.residual": False}

  # Rerun: both runs are complete and skipped; nothing is written.
  before = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != "sweep.json"}
  proc = run_cli(SWEEP, sweep_file, f"--workdir={wd}")
  assert proc.stdout.count("skipped") == 2 and "starting" not in proc.stdout, proc.stdout
  after = {p: p.stat().st_mtime_ns for p in wd.rglob("*") if p.is_file() and p.name != "sweep.json"}
  assert after == before


def test_dry_run_prints_commands_that_train_the_same_runs(tmp_path):
  from resnet_jax import sweep

  sweep_file = write_sweep(tmp_path, steps=2)
  wd = tmp_path / "dry"
  # --set values that leave the compiled step unchanged (a new learning rate would mean a new compilation).
  sets = ["--set=seed=3", "--set=lr_boundaries=(0.5,0.75)"]
  proc = run_cli(SWEEP, sweep_file, f"--workdir={wd}", "--dry_run", *sets)
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2 and all(line.startswith("python -m resnet_jax.main --config=") for line in lines)
  assert not wd.exists(), "a dry run must not create anything"
  plain = shlex.split(lines[0])
  assert f"--workdir={wd}/plain8" in plain and "--config.model.residual=False" in plain
  assert "--config.seed=3" in plain and "--config.lr_boundaries=(0.5,0.75)" in plain

  # Run the printed command as a scheduler would; the sweep then finds that run complete with its config.
  subprocess.run([sys.executable] + plain[1:], cwd=REPO, check=True, capture_output=True, timeout=600)
  res = json.loads((wd / "plain8" / "results.json").read_text())
  spec = sweep.build_runs(sweep_file, str(wd), sets=[s[len("--set=") :] for s in sets])[0]
  assert res["config"] == json.loads(spec.config.to_json_best_effort())
  assert res["config"]["seed"] == 3 and res["config"]["lr_boundaries"] == [0.5, 0.75]
  proc = run_cli(SWEEP, sweep_file, f"--workdir={wd}", "--only=plain*", *sets)
  assert "plain8: complete (2 steps), skipped" in proc.stdout and "resnet8" not in proc.stdout


def test_a_sweep_is_named_as_a_recipe_is_from_any_folder(tmp_path):
  """`sweep table6` is experiments/table6.py of this checkout, from any folder (the printed commands too); from the
  repository root it reads as the path typed there."""
  elsewhere = subprocess.run(
      [sys.executable, "-m", SWEEP, "table6", f"--workdir={tmp_path / 't6'}", "--dry_run", "--only=resnet20"],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
  (command,) = elsewhere.stdout.strip().splitlines()
  assert f"--config={REPO}/experiments/table6.py" in shlex.split(command)
  from_root = run_cli(SWEEP, "table6", f"--workdir={tmp_path / 't6'}", "--dry_run", "--only=resnet20")
  assert from_root.stdout == command.replace(f"{REPO}/experiments", "experiments") + "\n"
  assert not (tmp_path / "t6").exists()


def test_bad_override_stops_the_sweep_before_any_run(tmp_path):
  sweep_file = write_sweep(tmp_path, extra=', Run("typo8", {"model.dept": 8})')
  wd = tmp_path / "bad"
  proc = run_cli(SWEEP, sweep_file, f"--workdir={wd}", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert "run typo8: unknown field 'model.dept' (did you mean 'model.depth'?)" in proc.stderr
  assert not wd.exists(), "no run may start when one override is bad"


@pytest.mark.parametrize(
    "extra, sets, needles",
    [
        (', Run("typo8", {"model.dept": 8})', [], ["run typo8: unknown field 'model.dept'"]),
        (', Run("wrongtype", {"batch_size": "big"})', [], ["run wrongtype: batch_size='big': wrong type str"]),
        (', Run("boolint", {"num_train_steps": True})', [], ["run boolint: num_train_steps=True: wrong type bool"]),
        (', Run("depth21", {"model.depth": 21})', [], ["run depth21: model: CIFAR depth must be 6n+2"]),
        ("", ["batch_size=big"], ["run plain8:", "--config.batch_size=big"]),
        ("", ["batch_sise=8"], ["run plain8: --set=batch_sise=8: unknown field 'batch_sise'", "'batch_size'"]),
        (
            "",
            ["learning_rate=-1"],
            ["run plain8: learning_rate=-1.0: must be a positive number", "run resnet8: learning_rate=-1.0"],
        ),
        ("", ["num_train_steps"], ["--set=num_train_steps: write --set=FIELD=VALUE"]),
        (', Run("plain8", {})', [], ["run name 'plain8' appears 2 times"]),
    ],
)
def test_bad_overrides_name_the_run_and_the_field(tmp_path, extra, sets, needles):
  from resnet_jax import sweep

  sweep_file = write_sweep(tmp_path, extra=extra)
  with pytest.raises(sweep.SweepError) as e:
    sweep.build_runs(sweep_file, str(tmp_path / "wd"), sets=sets)
  for needle in needles:
    assert needle in str(e.value), str(e.value)
  assert not (tmp_path / "wd").exists()


def test_set_wins_over_run_values_and_only_selects(tmp_path):
  from resnet_jax import sweep

  sweep_file = write_sweep(tmp_path, extra=', Run("deep14", {"model.depth": 14, "num_train_steps": 7})')
  specs = sweep.build_runs(sweep_file, str(tmp_path), only="deep*,plain8", sets=["num_train_steps=5"])
  assert [s.name for s in specs] == ["plain8", "deep14"]
  deep = specs[1]
  assert deep.config.num_train_steps == 5 and deep.config.model.depth == 14
  assert deep.overrides == {"model.depth": 14, "num_train_steps": 5}
  assert deep.command.count("--config.num_train_steps=") == 1 and "--config.num_train_steps=5" in deep.command
  with pytest.raises(sweep.SweepError, match="matches none of the runs"):
    sweep.build_runs(sweep_file, str(tmp_path), only="resnet56")


def test_run_directory_of_another_config_is_refused(tmp_path):
  from resnet_jax import sweep

  sweep_file = write_sweep(tmp_path)
  spec = sweep.build_runs(sweep_file, str(tmp_path / "wd"))[0]
  stored = json.loads(spec.config.to_json_best_effort())
  stored["learning_rate"] = 0.5
  stored["log_every_steps"] = 7  # bookkeeping: may differ
  os.makedirs(spec.workdir)
  with open(os.path.join(spec.workdir, "config.json"), "w") as f:
    json.dump(stored, f)
  with pytest.raises(sweep.SweepError) as e:
    sweep.build_runs(sweep_file, str(tmp_path / "wd"))
  msg = str(e.value)
  assert "run plain8:" in msg and "learning_rate: directory has 0.5, this sweep 0.1" in msg
  assert "log_every_steps" not in msg


def test_machine_settings_are_not_conflicts():
  """A run directory written with other CPU settings, under today's names (cpu.*) or names the code no longer has
  (cpu_convolutions, host_malloc, model.weight_grad_chunk), is the same run: it is reused, not refused. A field
  the directory's config lacks has its recipe's value, which the code used before the field existed."""
  from resnet_jax import sweep

  stored = {
      "cpu_convolutions": "eigen",
      "host_malloc": "system",
      "learning_rate": 0.1,
      "model": {"weight_grad_chunk": -1, "depth": 20},
      "cpu": {"convolutions": "eigen", "weight_grad_chunk": 8},
  }
  wanted = {"learning_rate": 0.1, "model": {"depth": 20}, "cpu": {"convolutions": "auto", "weight_grad_chunk": -1}}
  assert sweep.config_conflicts(stored, wanted) == []
  assert sweep.config_conflicts(stored, {**wanted, "learning_rate": 0.2}) == [
      "learning_rate: directory has 0.1, this sweep 0.2"
  ]
  assert sweep.config_conflicts(stored, {**wanted, "model": {"depth": 20, "zero_init_last_bn": True}}) == [
      "model.zero_init_last_bn: directory has False, this sweep True"
  ]


def test_product_combines_names_and_overrides():
  from resnet_jax.sweep import Run, SweepError, product

  runs = product(
      [Run("resnet20", {}), Run("resnet56", {"model.depth": 56})],
      [Run("optA", {"model.shortcut": "A"}), Run("optB", {"model.shortcut": "B"})],
  )
  assert [r.name for r in runs] == ["resnet20_optA", "resnet20_optB", "resnet56_optA", "resnet56_optB"]
  assert runs[3].overrides == {"model.depth": 56, "model.shortcut": "B"}
  with pytest.raises(SweepError, match="model.depth"):
    product([Run("a", {"model.depth": 20})], [Run("b", {"model.depth": 32})])


def test_experiment_sweeps_load_and_validate(tmp_path):
  from resnet_jax import sweep

  wd = str(tmp_path / "x")
  sets = [f"data_dir={TFDS_DIR}"]
  deg = sweep.build_runs("experiments/degradation.py", wd, sets=sets)
  assert [s.name for s in deg] == [
      "plain20",
      "plain32",
      "plain44",
      "plain56",
      "resnet20",
      "resnet32",
      "resnet44",
      "resnet56",
  ]
  assert deg[3].config.model.depth == 56 and not deg[3].config.model.residual
  assert deg[7].config.model.residual and deg[7].config.model.shortcut == "A"
  depth = sweep.build_runs("experiments/depth.py", wd, sets=sets)
  assert [s.name for s in depth] == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
  r110 = depth[-1].config
  assert not r110.model.scan and r110.warmup_steps == 400  # config_lib's ResNet-110 recipe, not restated
  assert [s.name for s in sweep.build_runs("experiments/depth.py", wd, only="resnet*")] == [
      s.name for s in depth
  ]  # ResNet-1202 is optional: only by its exact name
  assert sweep.build_runs("experiments/depth.py", wd, only="resnet1202")[0].config.model.depth == 1202
  short = sweep.build_runs("experiments/shortcuts.py", wd, sets=sets)
  names = [s.name for s in short]
  assert names[:6] == [f"resnet{d}_opt{o}" for d in (20, 56) for o in "ABC"]
  assert names[6:] == ["imagenet_plain34"] + [f"imagenet_resnet34_opt{o}" for o in "ABC"]
  imagenet_c = short[-1]
  assert imagenet_c.config.model.family == "imagenet" and imagenet_c.config.model.shortcut == "C"
  assert "--config=experiments/shortcuts.py:imagenet" in imagenet_c.command
  for module in ("degradation", "depth", "shortcuts"):
    doc = sweep.load_sweep_file(f"experiments/{module}.py").__doc__
    assert "python -m resnet_jax.sweep experiments/" in doc and "GPU" in doc and "CPU" in doc
