"""End-to-end training tests: the real CLI on real CIFAR-10 and on fake data."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, SMALL, read_jsonl, run_cli

MAIN = "resnet_jax.main"


def load_state(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def assert_trees_equal(a, b):
  import jax

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def strip_speed(rows):
  return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]


def test_resnet8_learns_real_cifar10(tmp_path, tfds_dir):
  """ResNet-8 (the CIFAR recipe with one block per stage), 200 steps of batch 64 (about a quarter of an epoch) on
  the real training set, then the whole test set with an eval batch (768) that does not divide 10,000.

  Chance is 90% error. After 200 steps at lr 0.1 the test error is about 55-65% on this machine (the BN
  running statistics lag behind the weights this early, so test error is noisy); 80% is far from both chance
  and from what a broken pipeline (labels shuffled against images, wrong normalisation) gives.
  """
  wd = tmp_path / "r8"
  run_cli(
      MAIN,
      "--config=configs/cifar20.py",
      "--config.model.depth=8",
      f"--workdir={wd}",
      f"--config.data_dir={tfds_dir}",
      "--config.num_train_steps=200",
      "--config.batch_size=64",
      "--config.eval_batch_size=768",
      "--config.log_every_steps=50",
      "--config.eval_every_steps=200",
      "--config.checkpoint_every_steps=200",
  )
  res = json.loads((wd / "results.json").read_text())
  assert res["eval_count"] == 10_000
  assert res["final_eval_error"] < 0.80, res
  rows = read_jsonl(wd / "metrics.jsonl")
  train_rows = [r for r in rows if "train_loss" in r]
  assert [r["step"] for r in train_rows] == [50, 100, 150, 200]
  assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
  for key in ("train_loss", "train_error", "learning_rate", "images_per_sec"):
    assert key in train_rows[-1]
  assert rows[-1]["eval_count"] == 10_000 and "eval_error" in rows[-1]
  assert any(p.name.startswith("events.out.tfevents") for p in wd.iterdir())
  assert res["config"]["model"]["depth"] == 8 and res["steps"] == 200


def test_validation_split_override(tmp_path, tfds_dir):
  """The paper's 45k/5k split is one override away."""
  wd = tmp_path / "split"
  proc = run_cli(
      MAIN,
      "--config=configs/cifar20.py",
      "--config.model.depth=8",
      f"--workdir={wd}",
      f"--config.data_dir={tfds_dir}",
      "--config.train_split=train[:45000]",
      "--config.eval_split=train[45000:]",
      "--config.num_train_steps=2",
      "--config.batch_size=16",
      "--config.eval_batch_size=1024",
      "--config.log_every_steps=1",
  )
  res = json.loads((wd / "results.json").read_text())
  assert res["eval_count"] == 5_000 and res["eval_split"] == "train[45000:]"
  assert res["best_validation_error"] == res["final_eval_error"] and res["best_validation_step"] == 2
  assert "'train[:45000]' = 45000 examples" in proc.stderr


def _small_run_args(wd, steps=24):
  return [
      "--config=configs/cifar20.py",
      f"--workdir={wd}",
      *SMALL,
      f"--config.num_train_steps={steps}",
      "--config.log_every_steps=1",
      "--config.eval_every_steps=8",
      "--config.checkpoint_every_steps=4",
  ]


def test_sigkill_and_resume_is_bit_identical(tmp_path):
  """With the step-indexed tf.data input (input_backend='device' resumes exactly too: tests/test_device_input.py)."""
  small_run_args = lambda wd: [*_small_run_args(wd), "--config.input_backend=tfdata"]
  ref = tmp_path / "ref"
  run_cli(MAIN, *small_run_args(ref))
  # Kill a second run with SIGKILL at a random step after its first checkpoint, then restart it.
  wd = tmp_path / "killed"
  kill_at = random.Random().randint(6, 21)
  env = dict(os.environ)
  proc = subprocess.Popen(
      [sys.executable, "-m", MAIN, *small_run_args(wd)],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  jsonl = wd / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if jsonl.exists() and len(read_jsonl(jsonl)) >= kill_at:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_rows = read_jsonl(jsonl)
  assert killed_rows[-1]["step"] < 24
  run_cli(MAIN, *small_run_args(wd))
  assert strip_speed(read_jsonl(jsonl)) == strip_speed(read_jsonl(ref / "metrics.jsonl"))
  assert_trees_equal(load_state(wd, 24), load_state(ref, 24))
  res = json.loads((wd / "results.json").read_text())
  assert 0 < res["resumed_from_step"] < 24, (kill_at, res["resumed_from_step"])


def test_rerun_of_finished_run_changes_nothing(tmp_path):
  wd = tmp_path / "done"
  run_cli(MAIN, *_small_run_args(wd, steps=4))
  before = (wd / "metrics.jsonl").read_text()
  run_cli(MAIN, *_small_run_args(wd, steps=4))
  assert (wd / "metrics.jsonl").read_text() == before
  assert json.loads((wd / "results.json").read_text())["resumed_from_step"] == 4


# Errors: one clear message, exit status 2 (3 for non-finite values), no stack trace.


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
  proc = run_cli(
      MAIN,
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
  proc = run_cli(
      MAIN,
      "--config=configs/cifar20.py",
      f"--workdir={tmp_path / 'w'}",
      f"--config.data_dir={tmp_path / 'nothing_here'}",
      check=False,
  )
  _assert_user_error(proc, "not prepared", "TFDS_DATA_DIR", "--config.data_dir", "download_and_prepare")


def test_checkpoint_of_another_model_is_refused(tmp_path):
  wd = tmp_path / "w"
  run_cli(MAIN, *_small_run_args(wd, steps=2))
  proc = run_cli(MAIN, *_small_run_args(wd, steps=4), "--config.model.depth=32", check=False)
  _assert_user_error(proc, "different model", "model.depth: checkpoint 8, this run 32")
  assert sorted(os.listdir(wd / "checkpoints")) == ["2"]


def test_nonfinite_loss_stops_with_step_and_metrics(tmp_path):
  """The error names the first non-finite step, the same one whether steps run one or four per compiled call."""
  named = []
  for k in (1, 4):
    wd = tmp_path / f"nan{k}"
    proc = run_cli(
        MAIN,
        *_small_run_args(wd, steps=12),
        "--config.learning_rate=1e30",
        "--config.lr_boundaries=(0.9,)",
        "--config.log_every_steps=4",
        f"--config.steps_per_call={k}",
        check=False,
    )
    _assert_user_error(proc, "non-finite loss or gradient at step", "Newest good checkpoint", code=3)
    named.append(proc.stderr.split("non-finite loss or gradient at step ")[1].split()[0])
    # Every checkpoint left behind holds finite values.
    for step in os.listdir(wd / "checkpoints"):
      import jax

      assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(load_state(wd, int(step))))
  assert named[0] == named[1], named


def test_skip_nonfinite_counts_skipped_updates(tmp_path):
  rows = []
  for k in (1, 4):
    wd = tmp_path / f"skip{k}"
    run_cli(
        MAIN,
        *_small_run_args(wd, steps=8),
        "--config.learning_rate=1e30",
        "--config.lr_boundaries=(0.9,)",
        "--config.skip_nonfinite=True",
        "--config.log_every_steps=4",
        f"--config.steps_per_call={k}",
    )
    res = json.loads((wd / "results.json").read_text())
    assert res["skipped_nonfinite_this_run"] >= 1
    rows.append(strip_speed(read_jsonl(wd / "metrics.jsonl")))
    assert rows[-1][-1]["skipped_nonfinite"] == res["skipped_nonfinite_this_run"]
  assert rows[0] == rows[1]  # the same steps skipped, counted the same, with 1 or 4 steps per call


# Preemption, damaged checkpoints, full disks (issue: survive preemption and damage).


def _wait_for_rows(proc, jsonl, n, timeout=600):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if jsonl.exists() and len(read_jsonl(jsonl)) >= n:
      return True
    time.sleep(0.05)
  return False


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  ref = tmp_path_factory.mktemp("ref") / "ref"
  run_cli(MAIN, *_small_run_args(ref))
  return ref


def test_sigterm_saves_at_that_step_and_resumes_exactly(tmp_path, reference_run):
  wd = tmp_path / "term"
  at = random.Random().randint(3, 18)
  proc = subprocess.Popen(
      [sys.executable, "-m", MAIN, *_small_run_args(wd)],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  assert _wait_for_rows(proc, wd / "metrics.jsonl", at), "the run ended before the signal"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 75, err[-3000:]
  stopped = read_jsonl(wd / "metrics.jsonl")[-1]["step"]
  assert f"stopped by a signal after step {stopped}" in err
  assert stopped in [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  run_cli(MAIN, *_small_run_args(wd))
  assert json.loads((wd / "results.json").read_text())["resumed_from_step"] == stopped
  assert strip_speed(read_jsonl(wd / "metrics.jsonl")) == strip_speed(read_jsonl(reference_run / "metrics.jsonl"))
  assert_trees_equal(load_state(wd, 24), load_state(reference_run, 24))


def _largest_file(root):
  files = [p for p in root.rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def test_truncated_newest_checkpoint_falls_back_and_stays_exact(tmp_path, reference_run):
  wd = tmp_path / "trunc"
  # Train past step 12 exactly as the reference does, then kill the run and damage its newest checkpoint.
  proc = subprocess.Popen(
      [sys.executable, "-m", MAIN, *_small_run_args(wd)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  assert _wait_for_rows(proc, wd / "metrics.jsonl", 13)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) >= 2, steps
  newest = wd / "checkpoints" / str(steps[-1])
  victim = _largest_file(newest / "state")
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  proc = run_cli(MAIN, *_small_run_args(wd))
  assert f"checkpoints/{steps[-1]} is unreadable" in proc.stderr
  assert (wd / "checkpoints" / f"{steps[-1]}.unreadable").is_dir()  # kept, not deleted
  assert json.loads((wd / "results.json").read_text())["resumed_from_step"] == steps[-2]
  assert_trees_equal(load_state(wd, 24), load_state(reference_run, 24))
  assert strip_speed(read_jsonl(wd / "metrics.jsonl")) == strip_speed(read_jsonl(reference_run / "metrics.jsonl"))


def _mount_tmpfs(path, size):
  path.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
  return proc.returncode == 0


def test_full_disk_stops_with_a_clear_message_and_keeps_checkpoints(tmp_path):
  """A 1 MiB tmpfs holds one ResNet-8 checkpoint (about 0.6 MB on disk) but not two: the second save fails."""
  disk = tmp_path / "small_disk"
  if not _mount_tmpfs(disk, "1m"):
    pytest.fail("this test needs `mount -t tmpfs` (root in the sandbox); it is how a full disk is made")
  try:
    wd = disk / "w"
    proc = run_cli(MAIN, *_small_run_args(wd, steps=12), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # orbax's background threads may print their own tracebacks as the process exits; ours is one line.
    last = [l for l in proc.stderr.splitlines() if l.startswith("error: ")][-1]
    for needle in ("saving the checkpoint of step 8", "No space left on device", "MiB free on", "are intact (4)"):
      assert needle in last, last
    kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4], kept
    state = load_state(wd, 4)  # the previous checkpoint still restores
    assert int(state["step"]) == 4
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_unwritable_workdir_is_reported_before_training(tmp_path):
  target = tmp_path / "file_not_dir"
  target.write_text("x")
  proc = run_cli(MAIN, *_small_run_args(target / "w", steps=2), check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr and "workdir" in proc.stderr
