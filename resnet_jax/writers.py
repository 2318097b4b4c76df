"""Metric writers: clu's (TensorBoard through TensorFlow + console) plus metrics.jsonl; a TF-free fallback.

clu.metric_writers imports TensorFlow when it is imported (seconds of start-up). Runs whose input needs no
TensorFlow (input_backend='device') and machines without it (GPU machines often have JAX without TF) write to
the console and metrics.jsonl, plus TensorBoard event files through the `tensorboard` package's own TF-free
event writer when that package is installed; where TensorFlow is missing, one line says so.
"""

import json
import logging
import os
import time


def _jsonl_row(step, scalars) -> str:
  row = {"step": int(step)}
  row.update({k: float(v) for k, v in scalars.items()})
  return json.dumps(row)


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops rows after `last_step` (written after the checkpoint a resumed run restarts from)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(rows)
  os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class _JsonlMixin:

  def __init__(self, path: str):
    self.path = path

  def write_scalars(self, step, scalars):
    with open(self.path, "a") as f:
      f.write(_jsonl_row(step, scalars) + "\n")


def _clu_writers(workdir: str, is_chief: bool):
  from clu import metric_writers  # imports TensorFlow

  class JsonlWriter(_JsonlMixin, metric_writers.MetricWriter):
    """metrics.jsonl: one JSON object per logged step."""

    def write_summaries(self, step, values, metadata=None):
      pass

    def write_images(self, step, images):
      pass

    def write_videos(self, step, videos):
      pass

    def write_audios(self, step, audios, *, sample_rate):
      pass

    def write_texts(self, step, texts):
      pass

    def write_histograms(self, step, arrays, num_buckets=None):
      pass

    def write_hparams(self, hparams):
      pass

    def flush(self):
      pass

    def close(self):
      pass

  writers = [metric_writers.create_default_writer(workdir, just_logging=not is_chief, asynchronous=False)]
  if is_chief:
    writers.append(JsonlWriter(os.path.join(workdir, "metrics.jsonl")))
  return metric_writers.MultiWriter(writers)


class FallbackWriter(_JsonlMixin):
  """Console + metrics.jsonl (+ TensorBoard events via the tensorboard package, without TensorFlow)."""

  def __init__(self, workdir: str, is_chief: bool):
    super().__init__(os.path.join(workdir, "metrics.jsonl"))
    self.is_chief = is_chief
    self._events = None
    if is_chief:
      try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._events = EventFileWriter(workdir)
      except Exception:  # noqa: BLE001 - TensorBoard is optional here
        self._events = None

  def write_scalars(self, step, scalars):
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    if not self.is_chief:
      return
    super().write_scalars(step, scalars)
    if self._events is not None:
      from tensorboard.compat.proto.event_pb2 import Event
      from tensorboard.compat.proto.summary_pb2 import Summary

      values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
      self._events.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

  def write_hparams(self, hparams):
    logging.info("hparams: %s", hparams)

  def flush(self):
    if self._events is not None:
      self._events.flush()

  def close(self):
    if self._events is not None:
      self._events.close()


def make_writer(workdir: str, is_chief: bool, *, tensorflow: bool = True):
  """clu's writers when `tensorflow` (the run's input uses it anyway) and it is installed, else FallbackWriter."""
  if not tensorflow:
    return FallbackWriter(workdir, is_chief)
  try:
    return _clu_writers(workdir, is_chief)
  except ImportError as e:
    writer = FallbackWriter(workdir, is_chief)
    logging.warning(
        "TensorFlow is not installed (%s): metrics go to the console and metrics.jsonl%s",
        e,
        " and TensorBoard event files (tensorboard's TF-free writer)" if writer._events else "",
    )
    return writer
