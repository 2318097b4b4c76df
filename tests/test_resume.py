"""Runs that stop and start again: SIGKILL, SIGTERM, a damaged newest checkpoint, a full disk, a finished run.

The runs that are killed or signalled are the real command in a process of their own; the references, the resumed
runs and the rest run main's path in this process (helpers.train_in_process).
"""

import gc
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, assert_trees_equal, load_state, read_metrics, small_run_args, train_in_process
from helpers import TFDS_DIR, without_host_measures

MAIN = "resnet_jax.main"


def test_sigkill_and_resume_is_bit_identical(tmp_path):
  """With the step-indexed tf.data input (input_backend='device' resumes exactly too: tests/test_cifar.py)."""
  tfdata_run_args = lambda wd: [*small_run_args(wd), "--config.input_backend=tfdata"]
  ref = tmp_path / "ref"
  train_in_process(*tfdata_run_args(ref))
  # Kill a second run with SIGKILL at a random step after its first checkpoint, then restart it.
  wd = tmp_path / "killed"
  kill_at = random.Random().randint(6, 21)
  env = dict(os.environ)
  proc = subprocess.Popen(
      [sys.executable, "-m", MAIN, *tfdata_run_args(wd)],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    ckpts = wd / "checkpoints"  # a step's folder appears once its (async) save is complete
    if len(read_metrics(wd)) >= kill_at and any(d.name.isdigit() for d in ckpts.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_rows = read_metrics(wd)
  assert killed_rows[-1]["step"] < 24
  train_in_process(*tfdata_run_args(wd))
  assert without_host_measures(read_metrics(wd)) == without_host_measures(read_metrics(ref))
  assert_trees_equal(load_state(wd, 24), load_state(ref, 24))
  res = json.loads((wd / "results.json").read_text())
  assert 0 < res["resumed_from_step"] < 24, (kill_at, res["resumed_from_step"])


def test_rerun_of_finished_run_changes_nothing(tmp_path, monkeypatch):
  """Rerunning a finished run says so in one line (its test error, results.json) and neither evaluates again nor
  rewrites a file; train_and_evaluate still returns the results. A run whose results.json is missing (stopped
  between its last checkpoint and the results) is evaluated from its checkpoint, without training."""
  wd = tmp_path / "done"
  train_in_process(*small_run_args(wd, steps=4))
  before = {name: (wd / name).read_text() for name in ("metrics.jsonl", "results.json", "pieces.jsonl")}
  results = json.loads(before["results.json"])

  def no_initial_state(*args):
    raise AssertionError("an initial state was computed although a checkpoint is restored into its shapes")

  def no_evaluation(*args):
    raise AssertionError("a finished run was evaluated again")

  from resnet_jax import config_lib, sweep, train

  evaluate_split = train.evaluate_split
  monkeypatch.setattr(train, "init_host_state", no_initial_state)  # nor do predict, evaluate... (inference.py)
  monkeypatch.setattr(train, "evaluate_split", no_evaluation)
  log = train_in_process(*small_run_args(wd, steps=4)).stderr
  assert {name: (wd / name).read_text() for name in before} == before
  assert (
      f"{wd} is finished: error {100 * results['final_eval_error']:.2f}% on test (100 examples) after 4 steps, in "
      f"{wd}/results.json; nothing trained or evaluated (a larger --config.num_train_steps trains on)"
  ) in log
  config = config_lib.resolve(sweep.config_from_argv(small_run_args(wd, steps=4)))
  assert train.train_and_evaluate(config, str(wd)) == results
  from resnet_jax import inference

  assert set(inference.load_for_inference(str(wd))) == {"params", "batch_stats"}
  monkeypatch.setattr(train, "evaluate_split", evaluate_split)
  (wd / "results.json").unlink()
  train_in_process(*small_run_args(wd, steps=4))
  again = json.loads((wd / "results.json").read_text())
  assert again["resumed_from_step"] == 4 and again["final_eval_error"] == results["final_eval_error"]
  assert (wd / "metrics.jsonl").read_text() == before["metrics.jsonl"]


# Preemption, damaged checkpoints, full disks (issue: survive preemption and damage).


def _wait_for_rows(proc, wd, n, timeout=600):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if len(read_metrics(wd)) >= n:
      return True
    time.sleep(0.05)
  return False


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  ref = tmp_path_factory.mktemp("ref") / "ref"
  train_in_process(*small_run_args(ref))
  return ref


def test_sigterm_saves_at_that_step_and_resumes_exactly(tmp_path, reference_run):
  wd = tmp_path / "term"
  at = random.Random().randint(3, 18)
  proc = subprocess.Popen(
      [sys.executable, "-m", MAIN, *small_run_args(wd)],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  assert _wait_for_rows(proc, wd, at), "the run ended before the signal"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 75, err[-3000:]
  stopped = read_metrics(wd)[-1]["step"]
  assert f"stopped by a signal after step {stopped}" in err
  assert stopped in [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  train_in_process(*small_run_args(wd))
  assert json.loads((wd / "results.json").read_text())["resumed_from_step"] == stopped
  assert without_host_measures(read_metrics(wd)) == without_host_measures(read_metrics(reference_run))
  assert_trees_equal(load_state(wd, 24), load_state(reference_run, 24))


def _largest_file(root):
  files = [p for p in root.rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


# Reading the damaged checkpoint fails inside orbax, which leaves its other reads' coroutines to the garbage
# collector: their "Exception ignored" reports are expected here (collected at the end of the test, so that they
# do not surface in whichever test runs next).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_newest_checkpoint_falls_back_and_stays_exact(tmp_path, reference_run):
  wd = tmp_path / "trunc"
  # Train past step 12 exactly as the reference does, then kill the run and damage its newest checkpoint.
  proc = subprocess.Popen(
      [sys.executable, "-m", MAIN, *small_run_args(wd)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  assert _wait_for_rows(proc, wd, 13)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
  assert len(steps) >= 2, steps
  newest = wd / "checkpoints" / str(steps[-1])
  victim = _largest_file(newest / "state")
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  proc = train_in_process(*small_run_args(wd))
  assert f"checkpoints/{steps[-1]} is unreadable" in proc.stderr
  assert (wd / "checkpoints" / f"{steps[-1]}.unreadable").is_dir()  # kept, not deleted
  assert json.loads((wd / "results.json").read_text())["resumed_from_step"] == steps[-2]
  assert_trees_equal(load_state(wd, 24), load_state(reference_run, 24))
  assert without_host_measures(read_metrics(wd)) == without_host_measures(read_metrics(reference_run))
  gc.collect()


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
    proc = train_in_process(*small_run_args(wd, steps=12), check=False)
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
  proc = train_in_process(*small_run_args(target / "w", steps=2), check=False)
  assert proc.returncode == 2 and "workdir" in proc.stderr


def test_stop_after_stops_at_a_call_boundary_records_the_piece_and_resumes_exactly(tmp_path, reference_run):
  """--stop_after=0.001s has passed by the end of the first compiled call: the run saves there and exits 75."""
  from resnet_jax import pieces

  wd = tmp_path / "pieces"
  first = train_in_process(*small_run_args(wd), "--stop_after=0.001s", check=False)
  assert first.returncode == 75, first.stderr[-3000:]
  stopped = read_metrics(wd)[-1]["step"]
  assert f"--stop_after's time limit passed after step {stopped}" in first.stderr
  assert stopped in [int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()]
  train_in_process(*small_run_args(wd))
  assert without_host_measures(read_metrics(wd)) == without_host_measures(read_metrics(reference_run))
  assert_trees_equal(load_state(wd, 24), load_state(reference_run, 24))
  records = pieces.read(wd)
  assert [(r["start_step"], r["end_step"], r["outcome"]) for r in records] == [
      (0, stopped, "stop_after"),
      (stopped, 24, "finished"),
  ]
  for r in records:
    assert r["seconds"] > 0 and r["peak_rss_mb"] > 100 and r["machine"]["jax"] and r["machine"]["cpu"]
  assert all(row["host_rss_mb"] > 100 for row in read_metrics(wd) if "train_loss" in row)


@pytest.mark.parametrize("text", ["2h30m", "90m", "45s", "1.5h", "9000", "1h5m30s"])
def test_stop_after_durations(text):
  from resnet_jax import pieces

  expected = {"2h30m": 9000, "90m": 5400, "45s": 45, "1.5h": 5400, "9000": 9000, "1h5m30s": 3930}[text]
  assert pieces.parse_duration(text) == expected


def test_stop_after_that_is_not_a_duration_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", MAIN, *small_run_args(tmp_path / "x"), "--stop_after=2 hours"],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: '2 hours' is not a duration; write hours, minutes and seconds such as 2h30m, 90m, 45s or 9000"
  ]
  assert not (tmp_path / "x").exists()


def _pieces_script(*args):
  return subprocess.run(
      [sys.executable, str(REPO / "experiments" / "pieces.py"), *map(str, args)],
      cwd=REPO,
      capture_output=True,
      text=True,
  )


def test_a_run_packed_after_a_piece_resumes_exactly_elsewhere(tmp_path, reference_run):
  """experiments/pieces.py: stop, pack (the folder committed), unpack on 'another machine', resume, pack again."""
  here, there, packed = tmp_path / "here", tmp_path / "there", tmp_path / "results" / "run"
  assert train_in_process(*small_run_args(here), "--stop_after=0.001s", check=False).returncode == 75
  stopped = read_metrics(here)[-1]["step"]
  proc = _pieces_script("pack", here, packed)
  assert proc.returncode == 0, proc.stderr
  assert sorted(p.name for p in packed.iterdir()) == sorted(
      ["checkpoints", "config.json", "metrics.jsonl", "normalization.npz", "packed.json", "pieces.jsonl"]
  )
  assert [p.name for p in (packed / "checkpoints").iterdir()] == [str(stopped)]
  assert _pieces_script("unpack", packed, there).returncode == 0
  train_in_process(*small_run_args(there))
  assert without_host_measures(read_metrics(there)) == without_host_measures(read_metrics(reference_run))
  assert_trees_equal(load_state(there, 24), load_state(reference_run, 24))
  # The finished run packed over the earlier pack: the trained network, readable from the pack itself.
  assert _pieces_script("pack", there, packed).returncode == 0
  assert [p.name for p in (packed / "checkpoints").iterdir()] == ["24"]
  assert json.loads((packed / "packed.json").read_text())["runs"]["."] == {"finished": True, "checkpoint": 24}
  assert_trees_equal(load_state(packed, 24), load_state(reference_run, 24))
  # Nothing is overwritten: unpacking onto a run, or packing into a folder that holds something else.
  proc = _pieces_script("unpack", packed, there)
  assert proc.returncode == 2 and "exists; unpack into a new folder (nothing was copied)" in proc.stderr
  proc = _pieces_script("pack", there, here)
  assert proc.returncode == 2 and "is not empty and holds no earlier pack" in proc.stderr
  assert (here / "checkpoints" / str(stopped)).is_dir()


class _Watched:
  """`python -m resnet_jax.main ARGS` with its stderr read as it comes: `seen` is set at the first line holding
  `marker`; `finish()` waits for the exit and returns all of stderr."""

  def __init__(self, args, marker: str):
    import threading

    self.proc = subprocess.Popen(
        [sys.executable, "-m", MAIN, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    self.lines, self.seen = [], threading.Event()
    self.reader = threading.Thread(target=self._read, args=(marker,), daemon=True)
    self.reader.start()

  def _read(self, marker):
    for line in self.proc.stderr:
      self.lines.append(line)
      if marker in line:
        self.seen.set()

  def text(self) -> str:
    return "".join(self.lines)

  def finish(self) -> str:
    self.proc.wait(timeout=600)
    self.reader.join(60)
    return self.text()


def test_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
  """The second Ctrl-C is sent as soon as the first is acknowledged, while the run finishes its step and saves."""
  wd = tmp_path / "interrupted"
  run = _Watched(small_run_args(wd, steps=100_000), marker="received SIGINT")
  assert _wait_for_rows(run.proc, wd, 3), "the run ended before the signal"
  run.proc.send_signal(signal.SIGINT)
  assert run.seen.wait(60), run.text()[-3000:]
  run.proc.send_signal(signal.SIGINT)
  err = run.finish()
  assert run.proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == [
      "error: second interrupt: stopped at once; the newest checkpoint is intact, rerun the command to resume"
  ], err[-3000:]


def test_a_signal_is_answered_at_the_next_call_not_at_the_next_logged_step(tmp_path):
  """ResNet-20 on real CIFAR-10 through tf.data, logged, evaluated and saved every 400 steps: the steps take longer
  than the input, so a host free to run ahead is at step 400 when the signal is handled, and stops there (a minute
  later); with at most one call queued, it stops a call or two after the signal."""
  args = [
      "--config=configs/cifar20.py",
      f"--workdir={tmp_path / 'far_log'}",
      f"--config.data_dir={TFDS_DIR}",
      "--config.eval_split=test[:100]",
      "--config.steps_per_call=4",
      *[f"--config.{f}=400" for f in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")],
  ]
  run = _Watched(args, marker="training steps 1 to 64000")
  assert run.seen.wait(300), run.text()[-3000:]
  time.sleep(10)  # compiled, and a few calls run
  run.proc.send_signal(signal.SIGTERM)
  signalled = time.monotonic()
  err = run.finish()
  waited = time.monotonic() - signalled
  assert run.proc.returncode == 75, err[-3000:]
  stopped = int(re.search(r"stopped by a signal after step (\d+)", err).group(1))
  # A call of 4 steps takes 1-2 s here even beside another process; the host, left to run ahead, had queued some
  # 200 steps (50 s and more on this project's machines) that the devices had to finish before the checkpoint.
  assert 0 < stopped < 400 and waited < 30, (stopped, waited)
