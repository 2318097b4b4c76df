"""Start-up on one host or many, and one failed host ending the whole job.

Every command starts here (through `cli`): `start()` calls `jax.distributed.initialize`, whose own cluster
detection finds Cloud TPU pods (the VM metadata), SLURM (srun's variables), Open MPI and the others JAX knows, or
takes --coordinator_address/--num_processes/--process_id; a single process with no cluster around it stays
alone. It logs one line: processes, local and global devices, platform.

SLURM: JAX gives each task the one GPU numbered by SLURM_LOCALID, which is right for one task per GPU and wrong
for one task per node (it would use 1 GPU of 8, silently). `slurm_local_device_ids` reads how SLURM placed the
tasks and GPUs and gives each task all of its GPUs, or refuses a layout that fits neither.

Failure: with several processes, a collective waits for every process, so a process that dies or stops on an
error would leave the others waiting (NCCL and TPU collectives wait forever; JAX's heartbeat check then aborts
them with a crash dump). Here a process that stops on an error publishes it in JAX's coordination service, and a
watchdog thread in every process polls that service: when another process has failed, or has disappeared (the
heartbeat it publishes there has not moved for --failure_timeout seconds: killed, or its host died), it prints one
line naming that process and exits non-zero. JAX's
recoverable mode keeps the service from aborting the survivors itself, so that they can say what happened.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import secrets
import sys
import threading
import time

from absl import flags

from resnet_jax import errors

# Every command imports this module through `cli` before its flags are parsed: JAX, NumPy and the workdir's
# modules are imported inside the functions that use them.

DEFAULT_FAILURE_TIMEOUT = 60  # seconds without a heartbeat after which a process is taken for dead
_KEY = "resnet_jax"
_FLAGS: dict = {}


class ClusterError(errors.UserError, ValueError):
  """The cluster's layout cannot run this job as asked (the message says how to launch it)."""


def define_flags() -> None:
  """The multi-host flags every command takes; all optional (JAX detects Cloud TPU, SLURM, Open MPI...)."""
  _FLAGS["coordinator_address"] = flags.DEFINE_string(
      "coordinator_address", None, "Multi-host, where JAX cannot detect the cluster: host:port of process 0."
  )
  _FLAGS["num_processes"] = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  _FLAGS["process_id"] = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
  _FLAGS["failure_timeout"] = flags.DEFINE_integer(
      "failure_timeout",
      DEFAULT_FAILURE_TIMEOUT,
      "Multi-host: seconds without a heartbeat after which a process is taken for dead and the job stopped.",
  )


def _tasks_per_node(env) -> int | None:
  """This step's tasks per node: srun's own layout (SLURM_STEP_TASKS_PER_NODE) before the job's #SBATCH one, which
  an `srun -n4 --gpus-per-task=8` inside an `--ntasks-per-node=8` allocation does not follow."""
  for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
    m = re.match(r"\d+", env.get(var, ""))
    if m:
      return int(m.group())
  return None


def slurm_local_device_ids(env=None) -> list[int] | None:
  """The GPUs this SLURM task should use (indices among those it sees), or None to leave JAX's choice.

  None outside SLURM or where the task sees no GPU list (CPUs, TPUs). A task bound to its own GPUs
  (--gpus-per-task=N, or one task per node): all of them. Every GPU of the node visible to each of as many tasks
  as GPUs: the one numbered SLURM_LOCALID (JAX's default). Any other layout is refused with two that work.
  """
  env = os.environ if env is None else env
  if "SLURM_JOB_ID" not in env or "SLURM_LOCALID" not in env:
    return None
  visible = len([d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])
  on_node = int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
  gpus = visible or on_node
  if not gpus:
    return None
  tasks = _tasks_per_node(env) or 1
  if gpus == 1 or tasks == 1 or (visible and on_node and visible * tasks == on_node):
    return list(range(gpus))
  if tasks == gpus:
    return [int(env["SLURM_LOCALID"])]
  raise ClusterError(
      f"SLURM runs {tasks} tasks per node and each task sees {gpus} GPUs, which they cannot share evenly; "
      f"launch one task per node (srun --ntasks-per-node=1 --gpus-per-task={gpus}) or one task per GPU "
      f"(srun --ntasks-per-node={gpus} --gpus-per-task=1)"
  )


def start(*, coordinator_address=None, num_processes=None, process_id=None, failure_timeout=None) -> bool:
  """Joins the job's other processes if there are any (True), else stays a single process (False).

  The flags' values are used when not given (every command defines them through define_flags).
  """
  import jax

  if coordinator_address is None and num_processes is None and process_id is None and _FLAGS:
    coordinator_address = _FLAGS["coordinator_address"].value
    num_processes = _FLAGS["num_processes"].value
    process_id = _FLAGS["process_id"].value
  if failure_timeout is None:
    failure_timeout = _FLAGS["failure_timeout"].value if _FLAGS else DEFAULT_FAILURE_TIMEOUT
  if failure_timeout < 1:
    raise ClusterError(f"--failure_timeout={failure_timeout}: must be at least 1 second")
  alone = num_processes == 1 and coordinator_address is None  # --num_processes=1: no detection at all
  if alone or (coordinator_address is None and num_processes is None and _detected_processes() <= 1):
    _log_devices()  # no cluster, or a one-process one (srun -n1, a single TPU VM)
    return False
  try:
    jax.config.update("jax_enable_recoverability", True)  # survivors report a failed process themselves
  except (AttributeError, KeyError):  # a JAX without the option: its heartbeat check aborts them instead
    pass
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=slurm_local_device_ids(),
        heartbeat_timeout_seconds=int(failure_timeout),
    )
  except ValueError as e:
    if "coordinator_address should be defined" not in str(e):
      raise ClusterError(f"cannot start the cluster: {e}") from None
    # JAX found no cluster to take the coordinator from: each process would train alone into the same workdir.
    raise ClusterError(
        f"--num_processes={num_processes} / --process_id={process_id} without --coordinator_address, and no "
        "cluster (SLURM, Cloud TPU, Open MPI, ...) that names one: give every process "
        "--coordinator_address=HOST:PORT of process 0, or drop --num_processes and --process_id for one process"
    ) from None
  multi = jax.process_count() > 1
  _log_devices()
  if multi:
    _Watchdog.start_for(failure_timeout)
  return multi


def _detected_processes() -> int:
  """The process count of the cluster JAX's own detection finds (1 where it finds none).

  Asked before `jax.distributed.initialize`, which would otherwise start a coordination service (and take a
  port) for a job of one process. A detection that fails is an error naming the flags that avoid it.
  """
  try:
    from jax._src import clusters  # JAX's detectors (the ones jax.distributed.initialize() itself consults)

    for env in clusters.ClusterEnv._cluster_types:
      if not env.opt_in_only_method and env.is_env_present():
        return int(env.get_process_count())
  except Exception as e:  # noqa: BLE001 - e.g. a Kubernetes API that refuses the pod's query
    raise ClusterError(
        f"JAX's cluster detection failed ({type(e).__name__}: {str(e)[:200]}); run a single process with "
        "--num_processes=1, or give --coordinator_address, --num_processes and --process_id"
    ) from None
  return 1


def _log_devices() -> None:
  import jax

  logging.info(
      "cluster: process %d of %d, %d local / %d global devices, platform %s",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.devices()[0].platform,
  )


def _client():
  from jax._src import distributed  # the coordination service's client (no public handle to it)

  return distributed.global_state.client


def _exit(code: int) -> None:
  """Ends the process at once: JAX's exit-time shutdown would wait for the processes that are gone."""
  sys.stdout.flush()
  sys.stderr.flush()
  logging.shutdown()
  os._exit(code)


class _Watchdog(threading.Thread):
  """Watches the job's other processes through the coordination service's key-value store.

  Every period it publishes its own heartbeat (a counter), reads the failures published (none, almost always) and
  the heartbeat of one process, the next one in a ring: a fixed cost per process and period however large the job,
  where reading every heartbeat made the service's load grow with the square of the process count. A watched
  process whose counter has not moved for `timeout` seconds is gone (killed, or its host failed): its watcher
  publishes that as its failure, which every process reads. A failure ends each process with a line naming the one
  that failed. The store is polled, never waited on (a wait would hang on a process that has stopped answering),
  and every call has a deadline: a service that stops answering ends the process too.
  """

  instance: _Watchdog | None = None

  def __init__(self, timeout: float, me: int, n: int):
    super().__init__(name="resnet_jax-watchdog", daemon=True)
    self.me, self.n, self.timeout = me, n, timeout
    self.watched = (self.me + 1) % self.n
    self.period = min(1.0, timeout / 10)
    self.beat = 0  # this process's heartbeat
    self.watched_beat, self.watched_since = None, time.monotonic()  # the watched one's, and since when it stands
    self._calls = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnet_jax-store")
    self.stopped = threading.Event()
    self.ending = threading.Event()  # set once it has found a failed or vanished process and ends this one

  @classmethod
  def start_for(cls, failure_timeout: float) -> None:
    client = _client()
    if not all(hasattr(client, m) for m in ("key_value_dir_get", "key_value_set", "wait_at_barrier")):
      logging.warning(
          "this JAX's coordination service has no key-value listing: a failed process is detected by JAX's own "
          "heartbeat check (it aborts the others after %d s)",
          failure_timeout,
      )
      return
    import jax

    cls.instance = cls(failure_timeout, jax.process_index(), jax.process_count())
    cls.instance.start()

  def store(self, method: str, *args):
    """The coordination client's `method`, with the failure timeout as its deadline (TimeoutError after it)."""
    return self._calls.submit(getattr(_client(), method), *args).result(timeout=self.timeout)

  def try_get(self, key: str) -> str | None:
    """The value of `key`, or None where nobody has published it yet."""
    try:
      return self.store("key_value_try_get", key)
    except Exception as e:  # noqa: BLE001 - JaxRuntimeError: NOT_FOUND, or the service's own failure
      if "NOT_FOUND" in str(e):
        return None
      raise

  def published(self, kind: str = "") -> dict[str, dict[int, str]]:
    """What the processes have published (of one `kind`, or all), in one read of the store: {kind: {process:
    value}}."""
    out = {}
    for key, value in self.store("key_value_dir_get", f"{_KEY}/{kind + '/' if kind else ''}"):
      _, kind_of_key, proc = key.rsplit("/", 2)
      out.setdefault(kind_of_key, {})[int(proc)] = value
    return out

  def failures(self) -> list[tuple[int, int, str]]:
    """(process, exit code, message) of every other process whose failure was published."""
    out = []
    for proc, value in self.published("failed").get("failed", {}).items():
      code, _, message = value.partition("\t")
      if proc != self.me:
        out.append((proc, int(code), message))
    return sorted(out)

  def run(self):
    while not self.stopped.wait(self.period):
      self.check()

  def check(self) -> None:
    """One period: publishes this heartbeat, reads the failures and the watched heartbeat, and acts on them."""
    try:
      self.beat += 1
      self.store("key_value_set", f"{_KEY}/beat/{self.me}", str(self.beat), True)
      failed = self.failures()
      watched = self.try_get(f"{_KEY}/beat/{self.watched}")
    except Exception as e:  # noqa: BLE001 - the service is gone (it runs in process 0) or does not answer
      if self.stopped.is_set():
        return
      print(
          f"error: process {self.me} lost contact with process 0, which runs the job's coordination service "
          f"(it was killed, its host failed, or it did not answer within {self.timeout:.0f} s: "
          f"{type(e).__name__}); stopping this process too",
          file=sys.stderr,
      )
      _exit(1)
    if self.stopped.is_set():
      return
    now = time.monotonic()
    if watched != self.watched_beat:
      self.watched_beat, self.watched_since = watched, now
    if failed:
      self.ending.set()
      proc, code, message = failed[0]
      print(f"error: process {proc} failed: {message}; stopping process {self.me} too", file=sys.stderr)
      self.leave(code or 1)
    if now - self.watched_since > self.timeout and not self._finished(self.watched):
      self.ending.set()
      print(f"error: {_vanished(self.watched)}; stopping process {self.me} too", file=sys.stderr)
      try:  # said for the watched process, so that every other process stops too
        self.store("key_value_set", f"{_KEY}/failed/{self.watched}", f"1\t{_vanished(self.watched)}", True)
      except Exception:  # noqa: BLE001 - the service is gone: the others notice that themselves
        pass
      self.leave(1)

  def _finished(self, process: int) -> bool:
    """Whether `process` said it ended normally (its heartbeat then stops)."""
    try:
      return self.try_get(f"{_KEY}/done/{process}") is not None
    except Exception:  # noqa: BLE001 - the service is gone: the next round says so
      return False

  def leave(self, code: int) -> None:
    """Says so (the process that failed waits for that) and exits; process 0, which runs the coordination service,
    last: JAX aborts a process that loses the service with a crash dump instead of its own message."""
    try:
      _client().key_value_set(f"{_KEY}/ack/{self.me}", "1", allow_overwrite=True)
      if self.me == 0:
        self.wait_for_others(("bye", "ack", "done"))
        time.sleep(0.3)  # the others exit right after they answered
    except Exception:  # noqa: BLE001 - the service is gone: nothing to wait for
      pass
    _exit(code)

  def wait_for_others(self, kinds) -> None:
    """Until every other process has published one of `kinds`, a few seconds at most (a vanished one never
    does)."""
    deadline = time.monotonic() + max(5.0, 4 * self.period)
    while time.monotonic() < deadline:
      published = self.published()
      answered = set().union(*(published.get(kind, {}) for kind in kinds))
      if answered >= set(range(self.n)) - {self.me}:
        return
      time.sleep(0.05)


def _vanished(process: int) -> str:
  return f"process {process} stopped without reporting an error (killed, or its host failed or lost the network)"


_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|collective|all.?reduce|all.?gather|all.?to.?all", re.I)


def wait_if_caused_by_another(error: str) -> None:
  """Returns once no other process is to blame for this process's `error` (a collective's failure, say).

  A collective fails at once when another process dies (gloo), before the watchdog can tell which: then this
  waits for its verdict (at most the failure timeout), and the watchdog ends the process with the one line that
  names the process that failed or vanished, so that this error is not printed as a second one.
  """
  w = _Watchdog.instance
  if w is None or not _COLLECTIVE_FAILURE.search(error):
    return
  deadline = time.monotonic() + w.timeout + 3 * w.period
  while time.monotonic() < deadline or w.ending.is_set():
    time.sleep(w.period)


def active() -> bool:
  return _Watchdog.instance is not None


def finish() -> None:
  """This process ended normally. All processes end here together (a barrier), and process 0, which runs the
  coordination service, keeps it up until the others have disconnected: in recoverable mode JAX's own shutdown
  does not wait for them, and a process whose service is gone when it disconnects is aborted."""
  w = _Watchdog.instance
  if w is None:
    return
  w.stopped.set()
  _Watchdog.instance = None
  client = _client()
  try:
    client.key_value_set(f"{_KEY}/done/{w.me}", "1", allow_overwrite=True)
    client.wait_at_barrier(f"{_KEY}_finish", int(w.timeout * 1000))
    if w.me == 0 and not hasattr(client, "get_live_nodes"):  # an older JAX: a moment for them to disconnect
      time.sleep(2.0)
    elif w.me == 0:
      # get_live_nodes returns once every live process has called it or disconnected: the others disconnect as
      # they exit. In a thread, so that one hanging at its exit cannot hold this one beyond the timeout.
      waiter = threading.Thread(target=client.get_live_nodes, args=(list(range(w.n)),), daemon=True)
      waiter.start()
      waiter.join(w.timeout)
  except Exception:  # noqa: BLE001 - another process failed meanwhile; its own message says so
    pass


def fail(code: int, message: str) -> None:
  """Ends this process with `code` after telling every other process why (they stop too), when there are others.

  Waits (a few seconds at most) until the others have read the message, then says goodbye; process 0 also waits
  for the others' goodbyes, so that it leaves last. Returns only in a single-process run.
  """
  w = _Watchdog.instance
  if w is None:
    return
  w.stopped.set()
  one_line = errors.one_line(message)
  try:
    client = _client()
    client.key_value_set(f"{_KEY}/failed/{w.me}", f"{int(code)}\t{one_line}", allow_overwrite=True)
    w.wait_for_others(("ack", "failed", "done"))
    client.key_value_set(f"{_KEY}/bye/{w.me}", "1", allow_overwrite=True)
    if w.me == 0:
      w.wait_for_others(("bye", "ack", "done"))
      time.sleep(0.3)
  except Exception:  # noqa: BLE001 - the service is gone: the others notice that themselves
    pass
  _exit(code)


def check_shared(run) -> None:
  """Refuses, on every process, a workdir that the processes do not all see (a local folder on each host).

  Process 0 writes a random token into it; each process reads it back. Checkpoints, metrics and resumption need
  one directory for the whole job: a folder every host mounts, or a bucket.
  """
  import jax

  if jax.process_count() == 1:
    return
  import numpy as np
  from jax.experimental import multihost_utils

  from resnet_jax import rundir

  token = str(int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31)))))
  probe = run / ".shared_check"
  if jax.process_index() == 0:
    probe.write_text(token)
  multihost_utils.sync_global_devices("resnet_jax_shared_check_written")
  try:
    seen = probe.read_text() == token
  except OSError:
    seen = False
  blind = np.flatnonzero(np.asarray(multihost_utils.process_allgather(np.int32(not seen))))
  multihost_utils.sync_global_devices("resnet_jax_shared_check_read")
  if jax.process_index() == 0:
    probe.unlink()
  if blind.size:
    raise rundir.WorkdirError(
        f"workdir {run.name} is not shared by the job's processes: process {int(blind[0])} does not see what "
        "process 0 wrote there; use a folder that every host mounts, or a bucket (--workdir=gs://BUCKET/RUN)"
    )
