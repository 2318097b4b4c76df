"""The run's input, whatever the data set and backend: `Data(config, mesh)` with `train_batch(step)`,
`eval_batches()`, and what a compiled call of several steps draws its batches with.

Three backends (resnet_jax/data), chosen by the config: CIFAR through tf.data on the host (input_backend='tfdata',
data.cifar), CIFAR held on the devices (input_backend='device', data.cifar_device), and ImageNet through tf.data
(dataset='imagenet2012', data.imagenet_train and data.imagenet_eval). The training loop and the benchmark read their
batches through this one interface. It alone computes this process's share of the global batch, once it has
checked that the batch splits evenly over the processes and devices and fits in the training split; the backends
take the share it gives them. What the devices do to a batch before the network sees it is
`device_preprocessing(config)`.
"""

import functools
import logging

import jax

from resnet_jax import config_lib, parallel
from resnet_jax.data import cifar, cifar_device


def device_preprocessing(config):
  """batch -> batch, traced at the start of every compiled train and eval step, or None when the host sends what
  the network takes: ImageNet's uint8 pixels are normalised there (data.imagenet_images.normalize_batch), CIFAR's
  arrive normalised (their statistics are the run's, computed on the host once)."""
  if config.dataset != "imagenet2012":
    return None
  from resnet_jax.data import imagenet_images  # TensorFlow: imported only for ImageNet runs

  return functools.partial(imagenet_images.normalize_batch, mode=config.normalization)


def check_batch(config) -> None:
  """The batch contract that Data keeps, checked before it loads anything: the global batch splits evenly over the
  processes and devices (config_lib.ConfigError with sizes that do otherwise). What compiles a train step without
  a Data (the benchmark's host batches) or plans runs (a sweep) asks here too."""
  problems = parallel.check_batch(config.batch_size)
  if problems:
    raise config_lib.ConfigError(problems)


class Data:
  """The run's input, whatever the data set and backend: `train_batch(step)` and `eval_batches()`.

  Built once with the mesh. CIFAR through tf.data (input_backend='tfdata') and ImageNet give host batches of
  `process_batch` examples (this process's share of the global batch); CIFAR held on the devices
  (input_backend='device') gives global arrays drawn inside jit, and `draw` and `source` with which
  CompiledSteps.train draws several steps' batches inside one compiled call (`draw` is None for host batches).
  Batches are a function of (seed, step) in every case, so a resumed run reads what an uninterrupted one would have.
  """

  def __init__(self, config, mesh):
    self.config = config
    self._pi, self._pc = jax.process_index(), jax.process_count()
    self._stream, self._next_step, self._device = None, None, None
    self.draw = None
    check_batch(config)
    self.process_batch = config.batch_size // self._pc
    if config.dataset == "imagenet2012":
      # tfds; imported only for ImageNet runs
      from resnet_jax.data import imagenet_eval, imagenet_prepare, imagenet_train

      self._imagenet, self._imagenet_eval = imagenet_train, imagenet_eval
      imagenet_prepare.load_builder(config, process_count=self._pc)  # clear error now if the data is missing
      self.train_size = None
      logging.info(
          "data: imagenet2012 %r, eval %r (single-crop during training; 10-crop and multi-scale "
          "with python -m resnet_jax.evaluate)",
          config.train_split,
          config.eval_split,
      )
      return
    self._imagenet = None
    on_device = config.input_backend == "device"
    self.train, self.eval = cifar.load_split(config, "train"), cifar.load_split(config, "eval")
    n = len(self.train)
    self.train_size = cifar_device.held_examples(n, mesh.size) if on_device else n  # the examples training reads
    if config.batch_size > self.train_size:
      raise config_lib.ConfigError(
          [
              f"batch_size={config.batch_size} exceeds the {self.train_size} training examples of "
              f"{config.train_split!r}: use a smaller batch_size or a larger train_split"
          ]
      )
    self.norm = cifar.normalizer(config, self.train)
    cifar.log_data_summary(config, self.train, self.eval)
    if on_device:
      self._device = cifar_device.DeviceData(config, self.train, self.norm, mesh)
      self.draw = self._device.draw
      logging.info("data: training split held on %d device(s), batches drawn inside jit", mesh.size)

  def source(self, first_step: int, n: int) -> tuple:
    """The device arrays that `draw(*source(first_step, n), step)` draws batches first_step..first_step+n-1 from
    (input_backend='device' only)."""
    return self._device.source(first_step, n)

  def _open_stream(self, start_step: int):
    if self._imagenet:
      ds = self._imagenet.train_dataset(
          self.config,
          start_step=start_step,
          process_index=self._pi,
          process_count=self._pc,
          local_batch_size=self.process_batch,
      )
    else:
      ds = cifar.train_dataset(
          self.config,
          self.train,
          self.norm,
          start_step=start_step,
          process_index=self._pi,
          local_batch=self.process_batch,
      )
    return ds.as_numpy_iterator()

  def train_batch(self, step: int):
    """The training batch of `step` (0-based: the state's step before the update)."""
    if self._device is not None:
      return self._device.batch(step)
    if step != self._next_step:  # first call, or a jump: (re)open the stream there
      self._stream = self._open_stream(step)
    self._next_step = step + 1
    return next(self._stream)

  def eval_batches(self):
    """This process's share of the padded, masked evaluation batches: every example counted once."""
    if self._imagenet:
      ds = self._imagenet_eval.eval_dataset(
          self.config,
          protocol="single",
          process_index=self._pi,
          process_count=self._pc,
          local_batch_size=parallel.eval_batch(self.config) // self._pc,
      )
      for batch in ds.as_numpy_iterator():
        yield {k: batch[k] for k in ("image", "label", "mask")}
      return
    yield from cifar.eval_batches(
        self.eval,
        self.norm,
        global_batch=parallel.eval_batch(self.config),
        process_index=self._pi,
        process_count=self._pc,
    )
