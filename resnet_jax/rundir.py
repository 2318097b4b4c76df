"""The run directory (--workdir), its files, and a sweep's directory: the one place that knows their layout.

    WORKDIR/config.json      the resolved config of the run (written by main, convert)
    WORKDIR/metrics.jsonl    one JSON object per logged step (train and eval scalars)
    WORKDIR/results.json     the final evaluation and the run's summary
    WORKDIR/normalization.npz  the input statistics the network was trained with (CIFAR's training-split mean
                             image), written by training before its first step: the commands that run a CIFAR
                             workdir (resnet_jax.inference) need no training data
    WORKDIR/checkpoints/N/   orbax checkpoints (resnet_jax.checkpoint)
    WORKDIR/events.out.tfevents.*  TensorBoard
    SWEEP_DIR/sweep.json     a sweep's runs, their overrides and commands; each run in SWEEP_DIR/NAME/

WORKDIR may be a local folder or a cloud URL (resnet_jax.storage): every file goes through epath, and each is
written whole (cloud objects cannot be appended to), so that a reader never sees a partial file.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading

import numpy as np

from resnet_jax import errors, storage

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
NORMALIZATION = "normalization.npz"
CHECKPOINTS = "checkpoints"
SWEEP_MANIFEST = "sweep.json"


class WorkdirError(errors.UserError, PermissionError):
  """The workdir cannot be used: not writable, or (with several hosts) not shared by all of them."""


class RunDir:
  """A run's directory: WORKDIR and the files in it."""

  def __init__(self, workdir):
    storage.check_supported(workdir)
    self.path = storage.path(workdir)
    self.name = os.fspath(self.path)
    self.is_url = storage.is_url(self.name)

  def __truediv__(self, name: str):
    return self.path / name

  @property
  def checkpoints(self):
    return self.path / CHECKPOINTS

  def has_checkpoints(self) -> bool:
    return self.checkpoints.is_dir()

  def check_writable(self) -> None:
    """Creates the directory and proves it writable before any compilation or data loading."""
    probe = self.path / f".write_test.{socket.gethostname()}.{os.getpid()}"  # one per process of a job
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      probe.write_text("ok")
      probe.unlink()
    except OSError as e:
      raise WorkdirError(
          f"workdir {self.name} is not a writable directory ({e.strerror or e}); choose another --workdir"
      ) from None

  # config.json
  def read_config(self) -> dict | None:
    return storage.read_json(self.path / CONFIG)

  def write_config(self, config) -> None:
    storage.write_text_atomic(self.path / CONFIG, config.to_json_best_effort(indent=2))

  # results.json
  def read_results(self) -> dict | None:
    return storage.read_json(self.path / RESULTS)

  def write_results(self, results: dict) -> None:
    storage.write_json(self.path / RESULTS, results)

  def stored_config(self, results: dict | None = None) -> dict | None:
    """The config of the run in this directory: results.json's, else config.json's, else None (`results`:
    results.json's content, where the caller has read it already)."""
    results = results or self.read_results()
    return results["config"] if results and "config" in results else self.read_config()

  # normalization.npz
  def read_normalization(self) -> dict:
    """{'mean', 'std'} float32 arrays of a CIFAR run (an ImageNet run's normalisation is constants of its config).

    errors.NotFoundError for a workdir without the file.
    """
    p = self.path / NORMALIZATION
    if not p.exists():
      raise errors.NotFoundError(
          f"{p} does not exist: the input statistics of this CIFAR net, which training writes before its first "
          'step. Train the run again, or write the file from its training split: python -c "from resnet_jax '
          f"import inference; inference.save_normalization('{self.name}')\""
      )
    with np.load(io.BytesIO(p.read_bytes())) as z:
      return {"mean": z["mean"], "std": z["std"]}

  def write_normalization(self, mean, std) -> None:
    buf = io.BytesIO()
    np.savez(buf, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))
    storage.write_bytes_atomic(self.path / NORMALIZATION, buf.getvalue())

  # metrics.jsonl
  def read_metrics(self) -> list[dict]:
    p = self.path / METRICS
    if not p.exists():
      return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

  def truncate_metrics(self, last_step: int) -> None:
    """Drops rows after `last_step` (written after the checkpoint a resumed run restarts from)."""
    p = self.path / METRICS
    if p.exists():
      rows = [r for r in self.read_metrics() if r["step"] <= last_step]
      storage.write_text_atomic(p, "".join(json.dumps(r) + "\n" for r in rows))

  def metrics_log(self) -> MetricsLog:
    return MetricsLog(self.path / METRICS, whole_file=self.is_url)


class MetricsLog:
  """Appends rows to metrics.jsonl: a local file is appended to; a cloud object, which cannot be appended to, is
  kept in memory and rewritten whole by `upload` (writers.FallbackWriter calls it from a thread, now and then)."""

  def __init__(self, path, *, whole_file: bool):
    self.path, self.whole_file = path, whole_file
    self._text = path.read_text() if whole_file and path.exists() else ""
    self._uploaded = len(self._text)
    self._lock = threading.Lock()

  def write(self, step: int, scalars: dict) -> None:
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in scalars.items()})
    line = json.dumps(row) + "\n"
    if self.whole_file:
      with self._lock:
        self._text += line
    else:
      with open(self.path, "a") as f:
        f.write(line)

  def upload(self) -> None:
    """The rows written so far, to the cloud object (nothing when no row is new)."""
    with self._lock:
      text = self._text
    if self.whole_file and len(text) != self._uploaded:
      storage.write_text_atomic(self.path, text)
      self._uploaded = len(text)


def read_manifest(sweep_dir) -> dict | None:
  return storage.read_json(storage.path(sweep_dir) / SWEEP_MANIFEST)


def write_manifest(sweep_dir, manifest: dict) -> None:
  d = storage.path(sweep_dir)
  d.mkdir(parents=True, exist_ok=True)
  storage.write_json(d / SWEEP_MANIFEST, manifest)


def run_dirs(sweep_dir) -> list[RunDir]:
  """The run directories directly under a sweep's directory, by name."""
  d = storage.path(sweep_dir)
  return [RunDir(os.fspath(p)) for p in sorted(d.iterdir(), key=lambda p: p.name) if p.is_dir()]
