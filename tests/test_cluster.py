"""Several processes as one job (resnet_jax.cluster): SLURM-style start-up, failures, preemption, agreed restores.

Processes are local (gloo CPU collectives between them) and are given only what a launcher gives: srun's SLURM_*
variables (JAX's own SLURM detection finds the coordinator, the process count and ids), or the explicit flags.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, small_run_args
from resnet_jax import cluster


def test_slurm_local_devices():
  base = {"SLURM_JOB_ID": "7", "SLURM_LOCALID": "3"}
  assert cluster.slurm_local_device_ids({}) is None  # not SLURM
  assert cluster.slurm_local_device_ids(base) is None  # SLURM without GPUs (CPU, TPU): JAX's choice
  one_per_node = {**base, "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  assert cluster.slurm_local_device_ids(one_per_node) == [0, 1, 2, 3]
  # --ntasks-per-node=1 --gpus-per-task=8 as srun reports it (SLURM_STEP_TASKS_PER_NODE, GPUs on the node)
  assert cluster.slurm_local_device_ids({**base, "SLURM_STEP_TASKS_PER_NODE": "1(x4)", "SLURM_GPUS_ON_NODE": "8"}) == [
      *range(8)
  ]
  all_visible = {**base, "SLURM_NTASKS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  assert cluster.slurm_local_device_ids(all_visible) == [3]  # one task per GPU, every GPU visible
  bound = {**base, "SLURM_NTASKS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "3"}
  assert cluster.slurm_local_device_ids(bound) == [0]  # --gpus-per-task=1: the one GPU it sees
  two_each = {**base, "SLURM_NTASKS_PER_NODE": "2", "CUDA_VISIBLE_DEVICES": "4,5", "SLURM_GPUS_ON_NODE": "4"}
  assert cluster.slurm_local_device_ids(two_each) == [0, 1]  # --gpus-per-task=2: both of its own
  with pytest.raises(cluster.ClusterError, match=r"2 tasks per node and each task sees 8 GPUs.*--ntasks-per-node=1"):
    cluster.slurm_local_device_ids({**base, "SLURM_NTASKS_PER_NODE": "2", "SLURM_GPUS_ON_NODE": "8"})
  # #SBATCH --ntasks-per-node=8, then `srun -n4 --gpus-per-task=8` on 4 nodes: the step's layout is what counts.
  step = {**base, "SLURM_NTASKS_PER_NODE": "8", "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}
  assert cluster.slurm_local_device_ids({**step, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}) == [*range(8)]


def test_num_processes_without_a_coordinator_is_one_line(tmp_path):
  """Not two one-process runs writing into one workdir: the missing flag named before anything starts."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  args = [*small_run_args(tmp_path / "run", steps=4), "--num_processes=2", "--process_id=0"]
  proc = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      "error: --num_processes=2 / --process_id=0 without --coordinator_address, and no cluster (SLURM, Cloud TPU, "
      "Open MPI, ...) that names one: give every process --coordinator_address=HOST:PORT of process 0, or drop "
      "--num_processes and --process_id for one process"
  )
  assert not (tmp_path / "run" / "checkpoints").exists()


def _slurm_env(rank: int, n: int, job_id: int) -> dict:
  """What `srun --ntasks=N` sets in task `rank` on one node (JAX reads the job id, node list, task ids)."""
  return {
      "SLURM_JOB_ID": str(job_id),
      "SLURM_STEP_NODELIST": "localhost",
      "SLURM_STEP_NUM_NODES": "1",
      "SLURM_NTASKS": str(n),
      "SLURM_NTASKS_PER_NODE": str(n),
      "SLURM_PROCID": str(rank),
      "SLURM_LOCALID": str(rank),
  }


def _launch(args, *, n=2, extra_env=None, cwds=None):
  """Starts n processes of `python -m resnet_jax.main args` as srun would; returns the Popen objects."""
  job_id = random.randrange(10**6)  # JAX takes the coordinator's port from the job id
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  return [
      subprocess.Popen(
          [sys.executable, "-m", "resnet_jax.main", *map(str, args)],
          cwd=(cwds or [REPO] * n)[rank],
          env={**env, **_slurm_env(rank, n, job_id), **(extra_env or {})},
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for rank in range(n)
  ]


def _wait(procs, timeout=600):
  out = [p.communicate(timeout=timeout) for p in procs]
  return [p.returncode for p in procs], [err for _, err in out]


def test_slurm_launch_trains(tmp_path):
  """Two tasks given only srun's variables form one job (2 processes, 2 devices) and train together; resuming
  together is test_processes_agree_on_the_fallback_checkpoint's (make test-slow)."""
  wd = tmp_path / "run"
  codes, errs = _wait(_launch(small_run_args(wd, steps=4)))
  assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
  assert "cluster: process 0 of 2, 1 local / 2 global devices, platform cpu" in errs[0]
  assert "step 4/4" in errs[0] and "step 4/4" not in errs[1]  # only process 0 logs progress
  res = json.loads((wd / "results.json").read_text())
  assert res["processes"] == 2 and res["devices"] == 2 and res["steps"] == 4
  assert res["eval_count"] == 100  # fake_eval_size: every example once
  assert sorted(d.name for d in (wd / "checkpoints").iterdir()) == ["4"]


def test_workdir_not_shared_is_refused(tmp_path):
  """A relative workdir from two different folders: two directories, as on hosts without a shared mount."""
  cwds = [tmp_path / "host0", tmp_path / "host1"]
  for d in cwds:
    d.mkdir()
  args = small_run_args("run", steps=4)
  args[0] = f"--config={REPO / 'configs' / 'cifar20.py'}"
  codes, errs = _wait(_launch(args, cwds=cwds))
  assert codes == [2, 2], errs
  for err in errs:
    assert "Traceback" not in err
    assert "is not shared by the job's processes: process 1 does not see what process 0 wrote there" in err


def _start_long_run(tmp_path, extra=()):
  args = small_run_args(tmp_path / "run", steps=100000) + ["--failure_timeout=10", *extra]
  procs = _launch(args)
  deadline = time.time() + 300
  while not (tmp_path / "run" / "metrics.jsonl").exists():  # training has started on both
    assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    time.sleep(0.5)
  return procs


@pytest.mark.slow  # about a minute on the 2-core machine: `make test-slow`
@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_process_ends_the_other(tmp_path, victim):
  procs = _start_long_run(tmp_path)
  procs[victim].kill()
  t0 = time.time()
  survivor = procs[1 - victim]
  _, err = survivor.communicate(timeout=120)
  elapsed = time.time() - t0
  assert survivor.returncode != 0 and elapsed < 30, (elapsed, err[-3000:])
  if victim == 1:  # process 0 names it; process 1 is stopped by JAX itself when process 0 (which runs the
    # coordination service) dies, with JAX's own message
    assert "error: process 1 stopped without reporting an error" in err, err[-3000:]
    # One line: not the failed collective's error and traceback after it.
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: process 1 stopped without reporting an error (killed, or its host failed or lost the network); "
        "stopping process 0 too"
    ], err[-3000:]
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.slow
def test_error_on_one_host_stops_all(tmp_path):
  """Data missing on one host only (a relative data_file, two working folders): both stop, the other names it."""
  cwds = [tmp_path / "host0", tmp_path / "host1"]
  for d in cwds:
    d.mkdir()
  import numpy as np

  rng = np.random.default_rng(0)
  np.savez(
      cwds[0] / "data.npz",
      x_train=rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8),
      y_train=rng.integers(0, 10, 256),
      x_test=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
      y_test=rng.integers(0, 10, 100),
  )
  args = [
      a for a in small_run_args(tmp_path / "run", steps=4) if not a.startswith(("--config.dataset", "--config.fake"))
  ]
  args[0] = f"--config={REPO / 'configs' / 'cifar20.py'}"
  procs = _launch(args + ["--config.data_file=data.npz", "--failure_timeout=10"], cwds=cwds)
  codes, errs = _wait(procs, timeout=180)
  assert codes == [2, 2], errs
  assert "data_file" in errs[1] and "does not exist" in errs[1] and "Traceback" not in errs[1]
  assert "error: process 1 failed: data_file" in errs[0]


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_call", [1, 4, 100])
def test_sigterm_to_one_process_saves_one_checkpoint_for_all(tmp_path, steps_per_call):
  """With several steps per compiled call too (auto: 4 on CPUs, 100 with device input on GPUs), where JAX's sync
  point (a step number) falls inside a call."""
  every = [f"--config.{f}={steps_per_call}" for f in ("steps_per_call", "log_every_steps", "eval_every_steps")]
  procs = _start_long_run(tmp_path, ["--config.checkpoint_every_steps=100000", *every])
  procs[1].send_signal(signal.SIGTERM)
  codes, errs = _wait(procs, timeout=180)
  assert codes == [75, 75], errs
  steps = [int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit()]
  assert len(steps) == 1, steps
  assert f"checkpoint saved in {tmp_path / 'run' / 'checkpoints'}/{steps[0]}" in errs[0]


@pytest.mark.slow
def test_ctrl_c_on_one_process_stops_the_job_as_sigterm(tmp_path):
  every = [f"--config.{f}=4" for f in ("steps_per_call", "log_every_steps", "eval_every_steps")]
  procs = _start_long_run(tmp_path, ["--config.checkpoint_every_steps=100000", *every])
  procs[1].send_signal(signal.SIGINT)
  codes, errs = _wait(procs, timeout=180)
  assert codes == [75, 75], errs
  steps = [int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit()]
  assert len(steps) == 1 and "Traceback" not in errs[0] + errs[1], (steps, errs)


class _CoordinationStore:
  """The coordination service's key-value store as the watchdog uses it, counting the calls and values it serves."""

  def __init__(self):
    self.values, self.calls, self.served = {}, 0, 0

  def key_value_set(self, key, value, allow_overwrite=False):
    self.calls += 1
    self.values[key] = value

  def key_value_try_get(self, key):
    self.calls += 1
    if key not in self.values:
      raise RuntimeError(f"NOT_FOUND: {key}")
    self.served += 1
    return self.values[key]

  def key_value_dir_get(self, prefix):
    self.calls += 1
    found = [(k, v) for k, v in self.values.items() if k.startswith(prefix)]
    self.served += len(found)
    return found


class _Left(Exception):
  """cluster._exit, which ends the process, as an exception."""


def test_the_watchdog_load_per_process_does_not_grow_with_the_process_count(monkeypatch, capsys):
  """Each process reads the failures and one neighbour's heartbeat per period: with 64 processes the store serves
  each no more than with 4 (reading every heartbeat served 64 values per process and period), every process is
  watched by one other, and one that stops beating is found by its watcher and then named by everyone."""

  def _exit(code):
    raise _Left(code)

  monkeypatch.setattr(cluster, "_exit", _exit)
  per_process_round = {}
  for n in (4, 64):
    store = _CoordinationStore()
    monkeypatch.setattr(cluster, "_client", lambda: store)
    dogs = [cluster._Watchdog(timeout=60, me=i, n=n) for i in range(n)]
    for dog in dogs:  # a first round, in which some neighbours have not beaten yet
      dog.check()
    store.calls = store.served = 0
    for _ in range(3):
      for dog in dogs:
        dog.check()
    per_process_round[n] = (store.calls / (3 * n), store.served / (3 * n))
    assert sorted(dog.watched for dog in dogs) == list(range(n))
  assert per_process_round[4] == per_process_round[64] == (3, 1)

  # Process 7 stops beating: process 6 watches it and publishes that it vanished once the timeout has passed.
  dogs[6].check()
  dogs[6].watched_since -= 61
  with pytest.raises(_Left):
    dogs[6].check()
  with pytest.raises(_Left):
    dogs[40].check()
  assert capsys.readouterr().err.splitlines() == [
      f"error: {cluster._vanished(7)}; stopping process 6 too",
      f"error: process 7 failed: {cluster._vanished(7)}; stopping process 40 too",
  ]
  for dog in dogs:
    dog._calls.shutdown()


@pytest.mark.slow
def test_a_process_stuck_in_a_collective_ends_the_job_with_its_stacks(tmp_path):
  """Process 1 frozen (SIGSTOP: alive, silent): process 0 waits in a collective that never completes; before the
  cluster's watchdog would call process 1 gone, its progress watch ends the job with every thread's stack."""
  procs = _start_long_run(tmp_path, ["--config.hang_timeout_s=5", "--failure_timeout=120"])
  procs[1].send_signal(signal.SIGSTOP)
  try:
    _, err = procs[0].communicate(timeout=100)
  finally:
    procs[1].kill()
    procs[1].communicate()
  report = tmp_path / "run" / "hang.process0.txt"
  assert procs[0].returncode == 4, err[-3000:]
  assert (
      f"error: process 0 got no result from its devices for 5 s (a hang; every thread's stack is in {report})" in err
  ), err[-3000:]
  assert "Thread" in report.read_text() and "train.py" in report.read_text()


@pytest.mark.slow
def test_processes_agree_on_the_fallback_checkpoint(tmp_path):
  """The newest checkpoint's record damaged: both processes set it aside and resume from the same older one (a
  SLURM-style launch that trains, then one that resumes)."""
  wd = tmp_path / "run"
  codes, errs = _wait(_launch(small_run_args(wd, steps=8)))
  assert codes == [0, 0], errs
  (wd / "checkpoints" / "8" / "meta" / "metadata").write_text("{damaged")
  codes, errs = _wait(_launch(small_run_args(wd, steps=12)))
  assert codes == [0, 0], errs
  res = json.loads((wd / "results.json").read_text())
  assert res["resumed_from_step"] == 4 and res["steps"] == 12 and res["processes"] == 2
  assert (wd / "checkpoints" / "8.unreadable").is_dir()


@pytest.mark.slow  # about 45 s (compiling for 16 devices): `make test-slow`
def test_recipe_batch_sizes_fit_16_devices(tmp_path):
  """configs/cifar20.py's batch sizes (128, eval 1000) unchanged on 16 devices: eval batches padded to 1008."""
  args = small_run_args(tmp_path / "run", steps=2)
  args = [a for a in args if not a.startswith(("--config.batch_size", "--config.eval_batch_size"))]
  proc = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main", *map(str, args), "--config.fake_eval_size=1000"],
      cwd=REPO,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=16"},
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads((tmp_path / "run" / "results.json").read_text())
  assert res["devices"] == 16 and res["eval_count"] == 1000


@pytest.mark.parametrize("devices", [16, 32])
def test_recipe_configs_validate_on_pod_device_counts(devices):
  code = (
      "from resnet_jax import config_lib, inputs; from configs import cifar20, imagenet_resnet50\n"
      "for c in (cifar20.get_config(), imagenet_resnet50.get_config()):\n"
      "  inputs.check_batch(config_lib.resolve(c, with_devices=True))\n"
      "import jax; print(jax.device_count())"
  )
  proc = subprocess.run(
      [sys.executable, "-c", code],
      cwd=REPO,
      env={**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0 and proc.stdout.split() == [str(devices)], proc.stderr[-3000:]


def test_usable_cpus_follow_the_affinity_mask():
  """What SLURM, a container or taskset grants, not the machine's count (tf.data's threads, the pieces' record)."""
  code = "from resnet_jax import cpu; print(cpu.usable_cpus())"
  proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert proc.stdout.strip() == "1"
