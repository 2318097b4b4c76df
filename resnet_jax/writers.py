"""Metric writers: clu's (TensorBoard through TensorFlow + console) plus metrics.jsonl; a TF-free fallback.

clu.metric_writers imports TensorFlow when it is imported (seconds of start-up). Runs whose input needs no
TensorFlow (input_backend='device') and machines without it (GPU machines often have JAX without TF) write to
the console and metrics.jsonl, plus TensorBoard event files through the `tensorboard` package's own TF-free
event writer when that package is installed; where TensorFlow is missing, one line says so. A workdir on cloud
storage also takes the fallback, with metrics.jsonl and its event file uploaded whole through epath from a
background thread, every UPLOAD_PERIOD_S and at the end: TensorFlow's gfile, under clu, would ignore an emulator
(resnet_jax.storage).
"""

import io
import logging
import os
import socket
import threading
import time

from resnet_jax import rundir

# clu (TensorFlow) and the tensorboard package (optional here) are imported inside the writers that use them.


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


# A cloud workdir's growing files are uploaded whole (cloud objects cannot be appended to) at most this often, and at
# every flush (the end of a run, however it ends): uploading at every logged step made the other hosts wait for
# process 0, with bytes growing as the square of the run's length.
UPLOAD_PERIOD_S = 30.0


class _Uploads(threading.Thread):
  """Calls the upload functions every `period` seconds in the background, and at once on `upload_now`."""

  def __init__(self, uploads, period: float = UPLOAD_PERIOD_S):
    super().__init__(name="resnet_jax-uploads", daemon=True)
    self.uploads, self.period = uploads, period
    self.stopped = threading.Event()
    self.lock = threading.Lock()  # one upload at a time: the thread's or a flush's

  def run(self):
    while not self.stopped.wait(self.period):
      self.upload_now(background=True)

  def upload_now(self, background: bool = False) -> None:
    with self.lock:
      for upload in self.uploads:
        try:
          upload()
        except Exception as e:  # noqa: BLE001 - in the background, the next upload tries again
          if not background:
            raise
          logging.warning("uploading the metrics failed (%s: %s); trying again later", type(e).__name__, e)

  def close(self) -> None:
    self.stopped.set()
    self.join()
    self.upload_now()


class _WholeObject(io.BytesIO):
  """A file for tensorboard's RecordWriter kept in memory; `upload` writes it whole to its cloud object."""

  def __init__(self, path):
    super().__init__()
    self.path = path
    self._lock = threading.Lock()
    self._uploaded = 0

  def write(self, data):
    with self._lock:
      return super().write(data)

  def flush(self):
    pass  # uploads happen in `upload`, at most every UPLOAD_PERIOD_S

  def upload(self):
    with self._lock:
      data = self.getvalue()
    if len(data) != self._uploaded:
      self.path.write_bytes(data)
      self._uploaded = len(data)


def _cloud_event_writer(run: rundir.RunDir):
  """tensorboard's record format and Event protos, written through epath."""
  from tensorboard.compat.proto.event_pb2 import Event
  from tensorboard.summary.writer.record_writer import RecordWriter

  name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
  events = _WholeObject(run / name)
  records = RecordWriter(events)
  records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

  class Writer:

    def add_event(self, event):
      records.write(event.SerializeToString())

    def upload(self):
      events.upload()

    def flush(self):
      pass  # FallbackWriter's uploads

    def close(self):
      pass

  return Writer()


class FallbackWriter(_JsonlMixin):
  """Console + metrics.jsonl (+ TensorBoard events via the tensorboard package, without TensorFlow)."""

  def __init__(self, run: rundir.RunDir, is_chief: bool):
    super().__init__(run)
    self.run, self.is_chief = run, is_chief
    self._events = self._uploads = None
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
      if run.is_url:
        self._uploads = _Uploads([self.metrics.upload] + ([self._events.upload] if self._events else []))
        self._uploads.start()

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
    if self._uploads is not None:
      self._uploads.upload_now()

  def close(self):
    if self._events is not None:
      self._events.close()
    if self._uploads is not None:
      self._uploads.close()
      self._uploads = None


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
