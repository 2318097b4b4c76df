"""Orbax CheckpointManager wrapper: async saves, automatic resume, checks that a checkpoint fits the run.

A checkpoint is a directory `checkpoints/<step>/` holding two items: `state` (the TrainState arrays) and `meta`
(JSON: the config that wrote it). Orbax writes into a temporary directory and renames it only once every file is
complete, so a process killed mid-save never leaves a directory that a restart takes as a finished checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from resnet_jax import config_lib, errors, storage


class CheckpointMismatchError(errors.UserError, ValueError):
  """The workdir's checkpoint was written by a different model or config."""


class CheckpointUnreadableError(errors.UserError, RuntimeError):
  """No checkpoint in the workdir can be read."""


class CheckpointSaveError(errors.UserError, OSError):
  """A checkpoint could not be written (full disk, read-only or vanished directory)."""


def _free_space(directory: str) -> str:
  if storage.is_url(directory):
    return "free space unknown (cloud storage)"
  path = directory
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return f"{shutil.disk_usage(path).free / 2**20:,.1f} MiB free on {path}"
  except OSError:
    return "free space unknown"


def model_differences(saved: dict, current: dict) -> list[str]:
  """['model.depth: checkpoint 56, this run 20', ...]: the fields of the network (config.model) in which a stored
  config (a checkpoint's record, results.json's), filled from its recipe as a workdir's is, and this run's differ
  (config_lib.differences)."""
  return [
      f"{k}: checkpoint {a!r}, this run {b!r}"
      for k, a, b in config_lib.differences(config_lib.fill(saved), current)
      if k.startswith("model.")
  ]


def _key(p):
  for attr in ("key", "name", "idx"):
    if hasattr(p, attr):
      return str(getattr(p, attr))
  return str(p)


def _shape_tree(tree):
  """{'params/stage1_block1/conv1/kernel': shape, ...} for the model's arrays (params and BN statistics)."""
  get = (lambda t, k: t[k]) if isinstance(tree, dict) else getattr
  out = {}
  for part in ("params", "batch_stats"):
    for path, x in jax.tree_util.tree_flatten_with_path(get(tree, part))[0]:
      out[part + "/" + "/".join(_key(p) for p in path)] = tuple(x.shape)
  return out


class Checkpointer:

  def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = True):
    self.path = storage.path(directory)  # a local folder or a cloud URL
    self.directory = os.fspath(self.path)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.path,
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _failed(self, step, e) -> CheckpointSaveError:
    try:
      self.manager.reload()
      kept = self.all_steps()
    except Exception:  # noqa: BLE001
      kept = sorted(int(p.name) for p in self.path.iterdir() if p.name.isdigit())
    text = str(e)
    m = re.search(r"/(\d+)\.orbax-checkpoint-tmp", text)
    step = int(m.group(1)) if m else step  # an async save's error surfaces during the next call
    reason = next(
        (
            r
            for r in ("No space left on device", "Permission denied", "Read-only file system", "Disk quota exceeded")
            if r in text
        ),
        None,
    )
    reason = reason or f"{type(e).__name__}: {(text.splitlines() or [''])[0][:200]}"
    return CheckpointSaveError(
        f"saving the checkpoint of step {step} in {self.directory} failed ({reason}); "
        f"{_free_space(self.directory)}. The checkpoints "
        f"already there are intact ({', '.join(map(str, kept)) or 'none'}); free space or fix permissions and "
        f"rerun the same command to resume from the newest."
    )

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
    """Starts an async save; errors of the previous async save surface here or in wait()."""
    self._pending = step
    try:
      return self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force
      )
    except Exception as e:  # noqa: BLE001 - orbax wraps OSErrors in several ways
      raise self._failed(step, e) from e

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._failed(getattr(self, "_pending", None), e) from e

  def close(self):
    self.wait()
    self.manager.close()

  def set_aside(self, step: int, reason: str) -> str:
    """Renames an unreadable checkpoint so that it is neither used nor overwritten; never deletes it.

    Process 0 renames it while the others wait, so that all of them then see the same checkpoints.
    """
    src = self.path / str(step)
    dst = src.parent / f"{src.name}.unreadable"
    n = 1
    while dst.exists():
      n += 1
      dst = src.parent / f"{src.name}.unreadable{n}"
    if jax.process_index() == 0:
      src.rename(dst)
    _sync(f"set_aside_{step}")
    logging.warning(
        "checkpoint %s is unreadable (%s); moved it to %s (kept for inspection) and falling back to an older one",
        src,
        reason,
        dst,
    )
    self.manager.reload()
    return os.fspath(dst)

  def read_meta(self, step: int) -> dict:
    if jax.process_count() > 1:  # the JSON itself: orbax's restore ends in a barrier that a failed read skips
      return json.loads((self.path / str(step) / "meta" / "metadata").read_text())
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest(self, abstract_state, meta: dict):
    """(state, step) from the newest readable checkpoint, or (None, 0) when there is none.

    A checkpoint of another model is refused with the differing config fields named. An unreadable newest
    checkpoint is reported in one line and the next older one is tried; unreadable ones are left on disk. With
    several processes the decision is one: process 0 names the step to try, every process reads its record
    (meta), and when any of them cannot, all set it aside and go on to the next. Arrays that one process cannot
    restore stop the job with the fix (orbax's restore ends in a barrier, so the others cannot be asked).
    """
    failures = []
    while True:
      steps = sorted(self.manager.all_steps(), reverse=True)
      step = _agree_on(steps[0] if steps else -1)
      if step < 0 or any(f.startswith(f"step {step}:") for f in failures):  # none left, or one not moved aside
        break
      problem, restored = None, None
      path = os.fspath(self.path / str(step))
      try:
        saved = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"
        problem = f"step {step}: meta unreadable ({type(e).__name__}: {str(e)[:200]})"
      if problem is None:
        diffs = model_differences(saved, meta)
        self._check_shapes(step, abstract_state, diffs, path)
        if diffs:  # same arrays, another function (e.g. stride placement, BN epsilon, no shortcuts)
          raise CheckpointMismatchError(
              f"the checkpoint in {path} belongs to a different model: {'; '.join(diffs)}. Use a new --workdir for "
              f"this config, or rerun with the checkpoint's config."
          )
        try:
          restored = self.manager.restore(
              step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
          )["state"]
        except Exception as e:  # noqa: BLE001
          problem = f"step {step}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
          if jax.process_count() > 1:  # the others may wait in orbax's barrier: no agreement possible now
            raise CheckpointUnreadableError(
                f"process {jax.process_index()} could not restore {path} ({problem}); if it is damaged, move it "
                f"aside (mv {path} {path}.unreadable) and rerun to resume from the checkpoint before it"
            ) from None
      problem = _first_problem(step, problem)
      if problem is None:
        return restored, step
      failures.append(problem)
      self.set_aside(step, problem)
    if not failures:
      return None, 0
    raise CheckpointUnreadableError(
        f"none of the checkpoints in {self.directory} can be read: "
        + "; ".join(failures)
        + ". They were renamed to <step>.unreadable (nothing was deleted); rerun to start from scratch, or "
        "restore a backup."
    )

  def _check_shapes(self, step, abstract_state, diffs, path):
    expected = _shape_tree(abstract_state)
    try:
      found = self.manager.item_metadata(step)["state"]
      found = _shape_tree(getattr(found, "tree", found))
    except Exception:  # noqa: BLE001
      return
    if found != expected:
      bad = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
      raise CheckpointMismatchError(
          f"the checkpoint in {path} belongs to a different model: "
          + ("; ".join(diffs) if diffs else "config fields agree")
          + f"; first differing array: {bad[0]} (checkpoint {found.get(bad[0])}, this run "
          f"{expected.get(bad[0])}). Use a new --workdir for this config, or rerun with the checkpoint's "
          f"config."
      )


def _agree_on(step: int) -> int:
  """Process 0's step, on every process (the one decision of which checkpoint to try)."""
  if jax.process_count() == 1:
    return step
  return int(multihost_utils.broadcast_one_to_all(np.int32(step)))


def _first_problem(step: int, problem: str | None) -> str | None:
  """This process's problem reading a checkpoint, or the first other process's: one verdict for all."""
  if jax.process_count() == 1:
    return problem
  failed = np.asarray(multihost_utils.process_allgather(np.int32(problem is not None)))
  if not failed.any():
    return None
  return problem or f"step {step}: process {int(np.flatnonzero(failed)[0])} could not read it"


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def meta_for(config) -> dict:
  """What a checkpoint records about the run that wrote it."""
  return json.loads(config.to_json_best_effort())
