"""A profile of a few chosen training steps (jax.profiler), for TensorBoard's profile plugin and for Perfetto.

    python -m resnet_jax.main --config=... --workdir=W --config.profile_first_step=100 --config.profile_num_steps=5

Process 0 traces the compiled calls that hold steps 100 to 104 (whole calls: with several steps per call, a few
more), waits for the devices to finish them, and writes the trace to W/profile/: `tensorboard --logdir=W/profile`
(profile tab), or the *.trace.json.gz file opened in https://ui.perfetto.dev. The trace is written to a local
folder first and copied to W afterwards, so a workdir on a bucket gets it the same way as every other file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import jax

from resnet_jax import storage

PROFILE_DIR = "profile"


class StepProfile:
  """Starts a trace before the call that holds config.profile_first_step and stops it after the call that holds the
  last profiled step; nothing when profile_first_step is 0 or this is not process 0."""

  def __init__(self, config, workdir):
    self.first = int(config.profile_first_step)
    self.last = self.first + max(1, int(config.profile_num_steps)) - 1
    self.enabled = self.first > 0 and jax.process_index() == 0
    self.destination = storage.path(workdir) / PROFILE_DIR
    self._local = None

  def before_call(self, first: int, n: int) -> None:
    """Before the call that trains steps first + 1 .. first + n."""
    if self.enabled and self._local is None and first < self.first <= first + n:
      self._local = tempfile.mkdtemp(prefix="resnet_jax-profile-")
      jax.profiler.start_trace(self._local, create_perfetto_trace=True)

  def after_call(self, step: int, outputs) -> None:
    """After the call that ended at `step` was dispatched (its `outputs` are waited for before the trace stops)."""
    if self._local is not None and step >= self.last:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    """Ends a running trace and copies it into the workdir (also when training stops early)."""
    if self._local is None:
      return
    local, self._local = self._local, None
    jax.profiler.stop_trace()
    storage.copy_tree(local, os.fspath(self.destination))
    shutil.rmtree(local, ignore_errors=True)
    logging.info(
        "profile of steps %d to %d in %s: tensorboard --logdir=%s (profile tab), or its .trace.json.gz in "
        "https://ui.perfetto.dev",
        self.first,
        self.last,
        self.destination,
        self.destination,
    )
