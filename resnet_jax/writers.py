"""Metric writers: clu's (TensorBoard through TensorFlow + console) plus metrics.jsonl; a TF-free fallback.

clu.metric_writers imports TensorFlow when it is imported (seconds of start-up). Runs whose input needs no
TensorFlow (input_backend='device') and machines without it (GPU machines often have JAX without TF) write to
the console and metrics.jsonl, plus TensorBoard event files through the `tensorboard` package's own TF-free
event writer when that package is installed; where TensorFlow is missing, one line says so. A workdir on cloud
storage also takes the fallback, with its event file uploaded whole at each flush through epath: TensorFlow's
gfile, under clu, would ignore an emulator (resnet_jax.storage).
"""

import io
import logging
import os
import socket
import time

from resnet_jax import rundir


class _JsonlMixin:

  def __init__(self, run: rundir.RunDir):
    self.metrics = run.metrics_log()

  def write_scalars(self, step, scalars):
    self.metrics.write(step, scalars)


def _clu_writers(run: rundir.RunDir, is_chief: bool):
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

  writers = [metric_writers.create_default_writer(run.name, just_logging=not is_chief, asynchronous=False)]
  if is_chief:
    writers.append(JsonlWriter(run))
  return metric_writers.MultiWriter(writers)


class _WholeObject(io.BytesIO):
  """A file for tensorboard's RecordWriter whose flush uploads everything written so far (a cloud object is
  written whole)."""

  def __init__(self, path):
    super().__init__()
    self.path = path

  def flush(self):
    self.path.write_bytes(self.getvalue())

  def close(self):
    self.flush()
    super().close()


def _cloud_event_writer(run: rundir.RunDir):
  """tensorboard's record format and Event protos, written through epath."""
  from tensorboard.compat.proto.event_pb2 import Event
  from tensorboard.summary.writer.record_writer import RecordWriter

  name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
  records = RecordWriter(_WholeObject(run / name))
  records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

  class Writer:

    def add_event(self, event):
      records.write(event.SerializeToString())

    def flush(self):
      records.flush()

    def close(self):
      records.close()

  return Writer()


class FallbackWriter(_JsonlMixin):
  """Console + metrics.jsonl (+ TensorBoard events via the tensorboard package, without TensorFlow)."""

  def __init__(self, run: rundir.RunDir, is_chief: bool):
    super().__init__(run)
    self.run, self.is_chief = run, is_chief
    self._events = None
    if is_chief:
      try:
        if run.is_url:
          self._events = _cloud_event_writer(run)
        else:
          from tensorboard.summary.writer.event_file_writer import EventFileWriter

          self._events = EventFileWriter(run.name)
      except Exception as e:  # noqa: BLE001 - TensorBoard is optional here
        logging.warning("no TensorBoard event file (%s: %s); metrics still go to metrics.jsonl", type(e).__name__, e)
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
      if self.run.is_url:  # visible in TensorBoard while the run goes on (the object is uploaded whole)
        self._events.flush()

  def write_hparams(self, hparams):
    logging.info("hparams: %s", hparams)

  def flush(self):
    if self._events is not None:
      self._events.flush()

  def close(self):
    if self._events is not None:
      self._events.close()


def make_writer(run: rundir.RunDir, is_chief: bool, *, tensorflow: bool = True):
  """clu's writers when `tensorflow` (the run's input uses it anyway), it is installed and the workdir is local;
  else FallbackWriter."""
  if not tensorflow or run.is_url:
    return FallbackWriter(run, is_chief)
  try:
    return _clu_writers(run, is_chief)
  except ImportError as e:
    writer = FallbackWriter(run, is_chief)
    logging.warning(
        "TensorFlow is not installed (%s): metrics go to the console and metrics.jsonl%s",
        e,
        " and TensorBoard event files (tensorboard's TF-free writer)" if writer._events else "",
    )
    return writer
