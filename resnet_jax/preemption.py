"""Preemption: SIGTERM and SIGINT become a request to stop after the current call, with a checkpoint.

The training loop asks `StopRequest.requested(step)` between compiled calls; when it says yes, the loop saves the
step reached and raises `errors.Preempted`, which the command-line tools turn into exit status 75 (rerun to resume).
"""

import logging
import signal

import jax


class StopRequest:
  """Turns SIGTERM and SIGINT into a request to stop after the current call (a second SIGINT stops at once).

  With several processes, JAX's preemption sync point (the coordination service's notice of a SIGTERM on any
  process) makes every process stop at the same step, so that they save one checkpoint together.
  """

  def __init__(self):
    self.signum = None
    self._old = {}
    self._multi = jax.process_count() > 1
    sigs = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt("second interrupt: stopping at once (the newest checkpoint is intact)")
    self.signum = signum
    logging.warning(
        "received %s: finishing this step, saving a checkpoint and exiting (press Ctrl-C again to stop at once)",
        signal.Signals(signum).name,
    )

  def requested(self, step: int) -> bool:
    if self._multi:
      try:
        from jax.experimental import multihost_utils

        return bool(multihost_utils.reached_preemption_sync_point(step))
      except Exception:  # noqa: BLE001 - no preemption service (e.g. CPU without it): local signals only
        return False
    return self.signum is not None

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
