"""A stuck job ends with every thread's stack and one line, instead of holding its machines until someone looks.

The cluster's watchdog (resnet_jax.cluster) sees processes that died or failed; a process that is alive but makes
no progress (a collective waiting for a peer that will never join, a deadlocked input thread, a file system that
stopped answering) looks healthy to it. `ProgressWatch` is told each time the training loop gets a result back
from the devices (a compiled call's metrics, an evaluation batch, a saved checkpoint); when nothing comes for
`timeout` seconds after the first call (whose compilation may take long), it writes every thread's Python stack
(faulthandler) to stderr and to WORKDIR/hang.process<N>.txt, and stops the job with one line naming the process.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile
import threading
import time

from resnet_jax import cluster, storage

HANG_EXIT_CODE = 4


class ProgressWatch(threading.Thread):
  """Ends the job when `progressed()` has not been called for `timeout` seconds once `arm()` was called."""

  def __init__(self, timeout: float, workdir, process_index: int):
    super().__init__(name="resnet_jax-progress-watch", daemon=True)
    self.timeout, self.process_index = float(timeout), process_index
    self.report = storage.path(workdir) / f"hang.process{process_index}.txt"
    self.stopped = threading.Event()
    self.armed = False
    self.last = time.monotonic()

  def arm(self) -> None:
    """A call completed: from the first on, the watch is armed (the first call's compilation is not a hang)."""
    self.last, self.armed = time.monotonic(), True

  def progressed(self) -> None:
    self.last = time.monotonic()

  def stop(self) -> None:
    self.stopped.set()

  def run(self):
    while not self.stopped.wait(min(10.0, self.timeout / 10)):
      if self.armed and time.monotonic() - self.last > self.timeout:
        self._end()

  def _end(self) -> None:
    with tempfile.TemporaryFile("w+") as f:
      faulthandler.dump_traceback(file=f, all_threads=True)
      f.seek(0)
      stacks = f.read()
    sys.stderr.write(stacks)
    try:
      storage.write_text_atomic(self.report, stacks)
      where = f"every thread's stack is in {self.report}"
    except OSError as e:
      where = f"every thread's stack is above (not written to {self.report}: {e})"
    message = (
        f"process {self.process_index} got no result from its devices for {self.timeout:.0f} s (a hang; {where}); "
        "stopping the job. Rerun the command to resume from the newest checkpoint; raise --config.hang_timeout_s "
        "if a step, an evaluation or a save can legitimately take that long"
    )
    print(f"error: {message}", file=sys.stderr, flush=True)
    cluster.fail(HANG_EXIT_CODE, message)  # the others stop too (returns only with one process)
    sys.stderr.flush()
    os._exit(HANG_EXIT_CODE)
