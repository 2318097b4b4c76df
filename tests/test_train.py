"""Training tests: the real command on real CIFAR-10, and the loop's errors on fake data (run in this process)."""

import json
import os
import re
import subprocess
import sys

import numpy as np

from helpers import assert_trees_equal, load_state, read_metrics, run_cli, small_run_args, without_host_measures
from helpers import REPO, train_in_process

MAIN = "resnet_jax.main"


def test_resnet8_learns_real_cifar10_on_the_papers_split(tmp_path, tfds_dir):
  """ResNet-8 (the CIFAR recipe with one block per stage), 200 steps of batch 64 on the paper's 45k training images,
  evaluated on the other 5k (one override each) with an eval batch (768) that does not divide 5,000.

  Chance is 90% error. After 200 steps at lr 0.1 the error is about 55-65% on this machine (the BN running
  statistics lag behind the weights this early, so it is noisy); 80% is far from both chance and from what a broken
  pipeline (labels shuffled against images, wrong normalisation) gives.
  """
  wd = tmp_path / "r8"
  proc = run_cli(
      MAIN,
      "--config=configs/cifar20.py",
      "--config.model.depth=8",
      f"--workdir={wd}",
      f"--config.data_dir={tfds_dir}",
      "--config.train_split=train[:45000]",
      "--config.eval_split=train[45000:]",
      "--config.num_train_steps=200",
      "--config.batch_size=64",
      "--config.eval_batch_size=768",
      "--config.log_every_steps=50",
      "--config.eval_every_steps=100",
      "--config.checkpoint_every_steps=200",
  )
  assert "'train[:45000]' = 45000 examples" in proc.stderr
  res = json.loads((wd / "results.json").read_text())
  assert res["eval_count"] == 5_000 and res["eval_split"] == "train[45000:]"
  assert res["final_eval_error"] < 0.80, res
  rows = read_metrics(wd)
  train_rows = [r for r in rows if "train_loss" in r]
  assert [r["step"] for r in train_rows] == [50, 100, 150, 200]
  assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
  for key in ("train_loss", "train_error", "learning_rate", "images_per_sec"):
    assert key in train_rows[-1]
  evals = [r for r in rows if "eval_error" in r]
  assert [r["step"] for r in evals] == [100, 200] and all(r["eval_count"] == 5_000 for r in evals)
  # A validation split drawn from train: the best evaluation is reported beside the final one.
  best = min(evals, key=lambda r: r["eval_error"])
  assert res["best_validation_error"] == best["eval_error"] and res["best_validation_step"] == best["step"]
  assert any(p.name.startswith("events.out.tfevents") for p in wd.iterdir())
  assert res["config"]["model"]["depth"] == 8 and res["steps"] == 200


def test_evaluate_command_on_a_cifar_run(tmp_path, tfds_dir):
  """`evaluate --workdir=` a CIFAR run: its test split (here the first 200 real test images, labels of every class),
  with the error training's own evaluation gave; and ImageNet's protocols refused in one line."""
  wd = tmp_path / "cifar"
  train_in_process(
      *small_run_args(wd, steps=8),
      "--config.dataset=cifar10",
      f"--config.data_dir={tfds_dir}",
      "--config.train_split=train[:512]",
      "--config.eval_split=test[:200]",
  )
  res = json.loads((wd / "results.json").read_text())
  proc = run_cli("resnet_jax.evaluate", f"--workdir={wd}", "--json")
  (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
  assert row["count"] == res["eval_count"] == 200 and row["protocol"] == "single" and row["workdir"] == str(wd)
  # Training evaluates with the CPU plan's convolutions, evaluate with XLA's: float32 rounding may flip one argmax.
  assert abs(row["top1_error"] - res["final_eval_error"]) <= 1 / 200, (row, res)
  assert 0 <= row["top5_error"] < row["top1_error"]
  proc = run_cli("resnet_jax.evaluate", f"--workdir={wd}", "--protocol=10crop", check=False)
  _assert_user_error(proc, "--protocol=10crop is one of ImageNet's protocols; a CIFAR net is evaluated on each whole")


def test_training_log_says_what_it_does_and_where_the_results_are(tmp_path):
  """A line before the first (compiling) call, the time left as a duration, and a closing line with the test error,
  results.json and the commands that read the run."""
  from resnet_jax import train

  assert [train._fmt_eta(s) for s in (54160, 3599.6, 200, 40.4)] == ["15 h 03 min", "1 h 00 min", "3 min 20 s", "40 s"]
  wd = tmp_path / "w"
  log = train_in_process(*small_run_args(wd, steps=4)).stderr.splitlines()
  compiling = next(i for i, line in enumerate(log) if "compiling the train step first" in line)
  steps = [line for line in log if " step 1/4 " in line or " step 4/4 " in line]
  assert steps and log.index(steps[0]) > compiling
  assert all(re.search(r"img/s  (\d+ h \d\d min|\d+ min \d\d s|\d+ s) left$", line) for line in steps), steps
  res = json.loads((wd / "results.json").read_text())
  assert log[-1].endswith(
      f"done: error {100 * res['final_eval_error']:.2f}% on test (100 examples) after 4 steps, in {wd}/results.json; "
      f"look at them with python -m resnet_jax.report {wd} (tables, curves) and python -m resnet_jax.predict "
      f"--workdir={wd} IMAGE|FOLDER"
  ), log[-3:]


# Errors: one clear message, exit status 2 (3 for non-finite values), no stack trace. The command's own flag errors
# are run as the command; the rest run main's path in this process (helpers.train_in_process).


def _assert_user_error(proc, *needles, code=2):
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for needle in needles:
    assert needle in proc.stderr, proc.stderr[-3000:]


def test_unknown_field_and_wrong_type(tmp_path):
  proc = run_cli(MAIN, "--config=configs/cifar20.py", f"--workdir={tmp_path}", "--config.batch_sise=64", check=False)
  assert proc.returncode != 0 and "batch_sise" in proc.stderr
  proc = run_cli(MAIN, "--config=configs/cifar20.py", f"--workdir={tmp_path}", "--config.batch_size=big", check=False)
  assert proc.returncode != 0 and "batch_size" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_invalid_values_are_all_listed(tmp_path):
  proc = train_in_process(
      "--config=configs/cifar20.py",
      f"--workdir={tmp_path}",
      "--config.batch_size=0",
      "--config.learning_rate=-1",
      "--config.model.depth=21",
      "--config.num_train_steps=1000",
      "--config.lr_boundaries=(500, 2000)",
      check=False,
  )
  _assert_user_error(proc, "batch_size=0", "learning_rate=-1", "6n+2", "lr_boundaries")


def test_missing_data_names_the_fix(tmp_path):
  proc = train_in_process(
      "--config=configs/cifar20.py",
      f"--workdir={tmp_path / 'w'}",
      f"--config.data_dir={tmp_path / 'nothing_here'}",
      check=False,
  )
  _assert_user_error(proc, "not prepared", "TFDS_DATA_DIR", "--config.data_dir", "download_and_prepare")


def test_checkpoint_of_another_model_is_refused(tmp_path):
  wd = tmp_path / "w"
  train_in_process(*small_run_args(wd, steps=2))
  proc = train_in_process(*small_run_args(wd, steps=4), "--config.model.depth=32", check=False)
  _assert_user_error(proc, "different model", "model.depth: checkpoint 8, this run 32")
  assert sorted(os.listdir(wd / "checkpoints")) == ["2"]


def test_nonfinite_steps_are_named_and_skipped_exactly(tmp_path):
  """lr 1e30 makes the loss non-finite within a few steps. With skip_nonfinite and one step per call, logged every
  step, the log says which steps were skipped; four steps per call skip the same ones, and without skip_nonfinite
  stop with an error naming the first of them (exit 3). No checkpoint ever holds a non-finite value."""
  nan = ["--config.learning_rate=1e30", "--config.lr_boundaries=(0.9,)"]
  train_in_process(*small_run_args(tmp_path / "skip1", steps=8), *nan, "--config.skip_nonfinite=True")
  counts = {r["step"]: r["skipped_nonfinite"] for r in read_metrics(tmp_path / "skip1")}
  res = json.loads((tmp_path / "skip1" / "results.json").read_text())
  assert res["skipped_nonfinite_this_run"] == counts[8] >= 1
  first_bad = min(step for step, count in counts.items() if count)
  four = ["--config.log_every_steps=4", "--config.steps_per_call=4"]
  train_in_process(*small_run_args(tmp_path / "skip4", steps=8), *nan, *four, "--config.skip_nonfinite=True")
  rows = read_metrics(tmp_path / "skip4")
  assert {r["step"]: r["skipped_nonfinite"] for r in rows} == {4: counts[4], 8: counts[8]}
  wd = tmp_path / "stop4"
  proc = train_in_process(*small_run_args(wd, steps=8), *nan, *four, check=False)
  _assert_user_error(proc, f"non-finite loss or gradient at step {first_bad} ", "Newest good checkpoint", code=3)
  import jax

  for run in ("skip1", "skip4", "stop4"):
    for step in os.listdir(tmp_path / run / "checkpoints"):
      state = load_state(tmp_path / run, int(step))
      assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


def test_host_batches_several_steps_per_call_are_bit_identical_and_resume_exactly(tmp_path):
  """Host batches (tf.data) stacked for several steps per call: two steps per call, then four after a resume from
  step 6 (a call of two, then one of four), give the metrics and checkpoints of one step per call, bit for bit; the
  default (auto) runs four per call on the CPU."""
  host = [
      "--config.input_backend=tfdata",
      "--config.fake_train_size=64",
      "--config.log_every_steps=4",
      "--config.checkpoint_every_steps=4",
      "--config.keep_checkpoints=5",
      "--config.lr_decay_factor=1.0",  # one schedule whatever num_train_steps the first part of the run is given
  ]
  args = lambda name, steps: [*small_run_args(tmp_path / name, steps=steps), *host]
  train_in_process(*args("ref", 12), "--config.steps_per_call=1")
  proc = train_in_process(*args("split", 6), "--config.steps_per_call=2")
  assert "2 training step(s) per compiled call" in proc.stderr
  proc = train_in_process(*args("split", 12))
  assert "4 training step(s) per compiled call" in proc.stderr
  ref, split = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "split")
  assert [r["step"] for r in ref] == [4, 8, 12] and [r["step"] for r in split] == [4, 6, 8, 12]
  ref, split = without_host_measures(ref), without_host_measures(split)
  assert split[0] == ref[0] and split[-1] == ref[-1]
  for step in (4, 8, 12):
    assert_trees_equal(load_state(tmp_path / "split", step), load_state(tmp_path / "ref", step))


def test_compilation_cache_dir_holds_the_compiled_steps_for_a_restart(tmp_path):
  """--config.compilation_cache_dir: the first run writes its executables there, a second one loads them all."""
  cache = tmp_path / "cache"
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}

  def run(name):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_jax.main",
            *small_run_args(tmp_path / name, steps=4),
            f"--config.compilation_cache_dir={cache}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.name for p in cache.iterdir() if not p.name.endswith("-atime")}

  first = run("first")
  assert any(name.startswith("jit_") for name in first), first
  assert run("second") == first  # nothing compiled again


def test_profile_of_chosen_steps_lands_in_the_workdir(tmp_path):
  """--config.profile_first_step: a trace of those steps for TensorBoard (xplane) and Perfetto (trace.json.gz)."""
  wd = tmp_path / "profiled"
  finished = train_in_process(
      *small_run_args(wd, steps=8), "--config.profile_first_step=3", "--config.profile_num_steps=2"
  )
  traces = [p.name for p in (wd / "profile").rglob("*") if p.is_file()]
  assert any(n.endswith(".xplane.pb") for n in traces) and any(n.endswith(".trace.json.gz") for n in traces), traces
  assert f"profile of steps 3 to 4 in {wd / 'profile'}" in finished.stderr
