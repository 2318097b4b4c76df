"""Preemption: SIGTERM, SIGINT and a passed deadline (`--stop_after`) become a request to stop after the current
call, with a checkpoint.

The training loop asks `StopRequest.requested(first, step)` between compiled calls; when it says yes, the loop saves the
step reached and raises `errors.Preempted`, which the command-line tools turn into exit status 75 (rerun to resume).
"""

import logging
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import cluster

INTERRUPTED = 130  # the shell's status for a program ended by Ctrl-C


class StopRequest:
  """Turns SIGTERM and SIGINT into a request to stop after the current call (a second SIGINT stops at once).

  With several processes, JAX's preemption sync point (the coordination service's notice of a SIGTERM on any
  process) makes every process stop at the same step, so that they save one checkpoint together; a Ctrl-C on any
  process is turned into that notice too.
  """

  def __init__(self, deadline: float | None = None, agree_every: int = 1):
    """`deadline`: a time.time() after which to stop (None: none). With several processes the clocks and the steps
    at which each passes it differ, so process 0's clock decides, at steps that are multiples of `agree_every`
    (the loop's logged steps, where the processes wait for their devices anyway)."""
    self.signum = None
    self.deadline, self.agree_every = deadline, agree_every
    self.deadline_passed = False
    self._old = {}
    self._multi = jax.process_count() > 1
    sigs = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)  # JAX's own SIGTERM handler
    for sig in sigs:
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      message = "second interrupt: stopped at once; the newest checkpoint is intact, rerun the command to resume"
      print(f"error: {message}", file=sys.stderr, flush=True)
      cluster.fail(INTERRUPTED, message)  # with several processes the others stop too, and this one exits
      # At once, from wherever the signal came (an orbax save's event loop, say): unwinding from there would print
      # the half-done work's complaints. A checkpoint being written is in a temporary folder, never taken for one.
      sys.stdout.flush()
      os._exit(INTERRUPTED)
    self.signum = signum
    logging.warning(
        "received %s: finishing this step, saving a checkpoint and exiting (press Ctrl-C again to stop at once)",
        signal.Signals(signum).name,
    )
    if self._multi and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notice, which every process stops on

  def requested(self, first: int, step: int) -> bool:
    """Whether to stop after a call that trained steps first + 1 .. step."""
    return self._signalled(first, step) or self._past_deadline(step)

  def _signalled(self, first: int, step: int) -> bool:
    if self._multi:
      try:
        # JAX's sync point is the largest step any process reported plus one, and it is reached only on an exact
        # match: every step a call trained is reported, so that a call of several steps cannot skip over it.
        return any(multihost_utils.reached_preemption_sync_point(s) for s in range(first + 1, step + 1))
      except Exception:  # noqa: BLE001 - no preemption service (e.g. CPU without it): local signals only
        return False
    return self.signum is not None

  def _past_deadline(self, step: int) -> bool:
    if self.deadline is None:
      return False
    passed = time.time() >= self.deadline
    if self._multi:
      if step % self.agree_every:
        return False
      passed = bool(multihost_utils.broadcast_one_to_all(np.int32(passed)))
    self.deadline_passed = passed
    return passed

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
