"""The run's input, whatever the data set and backend: `Data(config, mesh)` with `train_batch(step)` and
`eval_batches()`.

Three backends, chosen by the config: CIFAR through tf.data on the host (input_backend='tfdata',
resnet_jax.input_pipeline), CIFAR held on the devices (input_backend='device', resnet_jax.device_input), and
ImageNet through tf.data (dataset='imagenet2012', resnet_jax.imagenet_train_input and imagenet_eval_input). The
training loop and the benchmark read their batches through this one interface.
"""

import logging

import jax

from resnet_jax import config_lib, input_pipeline, parallel


class Data:
  """The run's input, whatever the data set and backend: `train_batch(step)` and `eval_batches()`.

  Built once with the mesh. CIFAR through tf.data (input_backend='tfdata') and ImageNet give host batches (this
  process's share of the global batch); CIFAR held on the devices (input_backend='device') gives global arrays
  drawn inside jit, and `device` (a device_input.DeviceData, else None) from which CompiledSteps.train draws several
  steps' batches inside one compiled call. Batches are a function of (seed, step) in every case, so a resumed run
  reads what an uninterrupted one would have.
  """

  def __init__(self, config, mesh):
    self.config = config
    self._pi, self._pc = jax.process_index(), jax.process_count()
    self._stream, self._next_step, self.device = None, None, None
    if config.dataset == "imagenet2012":
      # tfds; imported only for ImageNet runs
      from resnet_jax import imagenet_eval_input, imagenet_prepare, imagenet_train_input

      self._imagenet, self._imagenet_eval = imagenet_train_input, imagenet_eval_input
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
    if on_device:
      from resnet_jax import device_input

      load = device_input.load_split
    else:
      load = input_pipeline.load_split
    self.train, self.eval = load(config, "train"), load(config, "eval")
    self.train_size = len(self.train)
    if config.batch_size > self.train_size:
      raise config_lib.ConfigError(
          [f"batch_size={config.batch_size} exceeds the {self.train_size} training examples of {config.train_split!r}"]
      )
    self.norm = input_pipeline.normalizer(config, self.train)
    input_pipeline.log_data_summary(config, self.train, self.eval)
    if on_device:
      self.device = device_input.DeviceData(config, self.train, self.norm, mesh)
      logging.info("data: training split held on %d device(s), batches drawn inside jit", mesh.size)

  def _open_stream(self, start_step: int):
    if self._imagenet:
      return self._imagenet.train_dataset(
          self.config,
          start_step=start_step,
          process_index=self._pi,
          process_count=self._pc,
          local_batch_size=self.config.batch_size // self._pc,
      ).as_numpy_iterator()
    return input_pipeline.train_iterator(
        self.config, self.train, self.norm, start_step=start_step, process_index=self._pi, process_count=self._pc
    )

  def train_batch(self, step: int):
    """The training batch of `step` (0-based: the state's step before the update)."""
    if self.device is not None:
      return self.device.batch(step)
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
          local_batch_size=parallel.padded_eval_batch(self.config.eval_batch_size) // self._pc,
      )
      for batch in ds.as_numpy_iterator():
        yield {k: batch[k] for k in ("image", "label", "mask")}
      return
    yield from input_pipeline.eval_batches(
        self.eval,
        self.norm,
        global_batch=parallel.padded_eval_batch(self.config.eval_batch_size),
        process_index=self._pi,
        process_count=self._pc,
    )
