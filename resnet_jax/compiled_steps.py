"""The pure train and eval steps compiled for one parallelism mode, with the host <-> device conversions.

train.py's `train_step` and `eval_step` know nothing about devices. `CompiledSteps` compiles them either in
`jax.jit` over a device mesh (config.parallelism='jit', the default: one program on 1 device, 8 or a pod; the
state replicated, the batch sharded along its leading axis) or in `jax.pmap` over the local devices ('pmap': the
state carries a leading device axis). The choice is made once, in `CompiledSteps.__init__`: `_Jit` and `_Pmap`
hold what differs (compilation, placement of states and batches, the shape of the outputs), and every method of
`CompiledSteps` is the same for both. `train.compile_steps(config, tx, schedule)` builds one.

The training loop calls `train` (n steps from a given step in one compiled call, on batches drawn on the devices
or on n host batches stacked), `eval_on_batch`, and the state conversions; the benchmark lowers exactly those calls
with `lower_train` and compiles them with `compile`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from resnet_jax import config_lib, parallel

# Automatic steps_per_call: at most this many steps per call. On GPUs and TPUs a call of many steps on batches drawn
# on the devices hides the host's launch latency; host batches there stay one per call (a call of n steps holds n
# batches, and their steps are long enough to hide the launch). On CPUs each call allocates the step's temporary
# buffer afresh (a new mapping whose 2 MiB pages the kernel zeroes on first touch), and the steps of one call reuse
# it: 4 steps per call take about a quarter of the page faults per step and speed up the forward pass's operations,
# which touch the buffer first (benchmarks/RESULTS.md, "Why several steps per call are faster on the CPU"), with
# either input. Few, because a CPU step takes up to seconds and signals (a preemption's SIGTERM) are answered
# between calls.
AUTO_STEPS_PER_CALL = {"cpu": 4}
AUTO_STEPS_PER_CALL_ACCELERATORS = {"device": 100, "host": 1}

# Host batches are read and copied to the devices this many calls ahead, while the devices run the current call,
# so that neither the input's next batch nor its transfer waits for the step (flax's prefetch_to_device(size=2)).
PREFETCH_CALLS = 2


def resolve_steps_per_call(config, platform: str) -> int:
  """config.steps_per_call, with 0 (auto) settled for the platform.

  Auto is 1 with pmap; with jit it is the largest divisor of the log, eval and checkpoint intervals and of
  num_train_steps that is at most 4 on CPUs, and on GPUs and TPUs at most 100 with batches drawn on the devices
  (input_backend='device') and 1 with host batches (AUTO_STEPS_PER_CALL).
  """
  k = int(config.steps_per_call)
  if k:
    return k
  if config.parallelism != "jit":
    return 1
  g = functools.reduce(math.gcd, [int(config[f]) for f in config_lib.INTERVAL_FIELDS] + [int(config.num_train_steps)])
  source = "device" if config.input_backend == "device" else "host"
  cap = AUTO_STEPS_PER_CALL.get(platform, AUTO_STEPS_PER_CALL_ACCELERATORS[source])
  return max(d for d in range(1, cap + 1) if g % d == 0)


def _train_steps(state, window, xs, rng, *, batch_of, step):
  """One training step per element of `xs` (scanned along its leading axis), on the batch `batch_of(x)`; returns
  (state, window merged with each step's metrics in order, the steps' infos stacked)."""

  def body(carry, x):
    state, window = carry
    state, (m, info) = step(state, batch_of(x), rng)
    return (state, window.merge(m)), info

  (state, window), infos = jax.lax.scan(body, (state, window), xs)
  return state, window, infos


def draw_and_train(state, window, source, first_step, rng, *, n: int, draw, step):
  """n training steps in one computation (config.steps_per_call), each on a batch drawn on the devices.

  `draw(*source, s)` gives the images and labels of batch s (inputs.Data.draw); `step` is train_step with
  its model and optimiser bound. One call per n steps is what lets a GPU run a CIFAR step without waiting for the
  host to launch it.
  """

  def batch_of(s):
    images, labels = draw(*source, s)
    return {"image": images, "label": labels}

  steps = first_step + jnp.arange(n, dtype=jnp.int32)
  return _train_steps(state, window, steps, rng, batch_of=batch_of, step=step)


def train_on_batches(state, window, batches, rng, *, step):
  """One training step per host batch of `batches` (each field stacked along a leading axis), in one computation."""
  return _train_steps(state, window, batches, rng, batch_of=lambda batch: batch, step=step)


def _per_device_bn_forward(model, mesh):
  """Forward pass in which each device normalises with its own sub-batch's statistics (bn_sync=False).

  The gradient is taken outside this shard_map, so JAX sums the per-device contributions to the replicated
  parameters' gradients itself; the running statistics are averaged so they stay identical on all devices.
  """

  def local(params, batch_stats, images):
    logits, upd = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    return logits, jax.lax.pmean(upd["batch_stats"], parallel.AXIS)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(parallel.AXIS)), out_specs=(P(parallel.AXIS), P()))


class _Jit:
  """parallelism='jit': global arrays over the mesh; XLA inserts the collectives."""

  def __init__(self, config, mesh, model_factory, train_step, eval_step, options):
    self.mesh, self.options = mesh, options
    self.model = model_factory(None)
    forward = _per_device_bn_forward(self.model, mesh) if not config.bn_sync and mesh.size > 1 else None
    self.step = functools.partial(train_step, model=self.model, forward=forward)
    rep, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    self.train = jax.jit(
        self.step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=0, compiler_options=options
    )
    self.eval = jax.jit(
        functools.partial(eval_step, model=self.model),
        in_shardings=(rep, data),
        out_shardings=rep,
        compiler_options=options,
    )
    self.train_many = jax.jit(
        functools.partial(train_on_batches, step=self.step),
        in_shardings=(rep, rep, parallel.stacked_data_sharded(mesh), rep),
        out_shardings=(rep, rep, rep),
        donate_argnums=0,
        compiler_options=options,
    )
    self.compile_options = {}  # given to jax.jit already
    self._on_device_calls = {}

  def place_state(self, host_state):
    return parallel.put_replicated(host_state, self.mesh)

  def to_global(self, state):
    return state

  def from_global(self, state):
    return state

  def place_window(self, window):
    return parallel.put_replicated(window, self.mesh)

  def place_batch(self, local_batch):
    if isinstance(local_batch["image"], jax.Array):  # drawn on the devices: global arrays already
      return local_batch
    return parallel.put_batch(local_batch, self.mesh)

  def place_batches(self, local_batches):
    return parallel.put_batch(local_batches, self.mesh, stacked=True)

  def unstack(self, out):
    return out

  def on_device_call(self, n: int, draw):
    """The jitted `draw_and_train` of n steps (compiled once for each n a run uses: normally steps_per_call)."""
    if n not in self._on_device_calls:
      rep = parallel.replicated(self.mesh)
      self._on_device_calls[n] = jax.jit(
          functools.partial(draw_and_train, n=n, draw=draw, step=self.step),
          out_shardings=(rep, rep, rep),
          donate_argnums=0,
          compiler_options=self.options,
      )
    return self._on_device_calls[n]


class _Pmap:
  """parallelism='pmap': arrays with a leading axis of local devices; the steps average over the axis 'data'."""

  def __init__(self, config, mesh, model_factory, train_step, eval_step, options):
    self.mesh = mesh
    self.model = model_factory(parallel.AXIS if config.bn_sync else None)
    step = functools.partial(train_step, model=self.model, axis_name=parallel.AXIS)
    self.train = _with_compiler_options(
        jax.pmap(step, axis_name=parallel.AXIS, in_axes=(0, 0, None), donate_argnums=0), options
    )
    self.eval = _with_compiler_options(
        jax.pmap(functools.partial(eval_step, model=self.model, axis_name=parallel.AXIS), axis_name=parallel.AXIS),
        options,
    )
    self.compile_options = {"compiler_options": options} if options else {}  # pmap takes none itself

  def place_state(self, host_state):
    return parallel.pmap_replicate(host_state)

  def to_global(self, state):
    return parallel.put_replicated(parallel.pmap_unreplicate(state), self.mesh)

  def from_global(self, state):
    return parallel.pmap_replicate(jax.device_get(state))

  def place_window(self, window):
    return window  # merged on the host with the first device's metrics (all are equal)

  def place_batch(self, local_batch):
    return parallel.pmap_split(local_batch)

  def place_batches(self, local_batches):
    raise ValueError("several steps per call need parallelism='jit'")

  def unstack(self, out):
    return jax.tree.map(lambda x: x[0], out)

  def on_device_call(self, n: int, draw):
    raise ValueError("batches drawn on the devices need parallelism='jit'")


class _PmapWithOptions:
  """A jax.pmap'd function compiled with XLA compiler options (pmap, unlike jit, takes none itself): through
  `lower(...).compile(compiler_options=...)` on the first call for each argument signature."""

  def __init__(self, fn, options: dict):
    self.fn, self.options, self._compiled = fn, options, {}

  def lower(self, *args):
    return self.fn.lower(*args)

  def __call__(self, *args):
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves))
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self._compiled[key] = self.fn.lower(*args).compile(compiler_options=self.options)
    return compiled(*args)


def _with_compiler_options(fn, options: dict):
  return _PmapWithOptions(fn, options) if options else fn


_MODES = {"jit": _Jit, "pmap": _Pmap}


def stack(local_batches) -> dict:
  """Host batches -> one batch whose fields have a leading axis of steps."""
  return {k: np.stack([b[k] for b in local_batches]) for k in local_batches[0]}


class CompiledSteps:
  """The train and eval steps compiled for config.parallelism over `mesh`, with host <-> device conversions.

  `train_step(state, batch, rng, *, model, forward=None, axis_name=None)` and `eval_step(state, batch, *, model,
  axis_name=None)` are the pure steps with everything but the model bound; `model_factory(bn_axis_name)` builds
  the network (pmap's synchronised BN needs the axis name); `plan` is the platform plan (resnet_jax.cpu) whose
  XLA options both steps are compiled with.
  """

  def __init__(self, config, *, mesh, plan, model_factory, train_step, eval_step):
    if config.parallelism not in _MODES:
      raise ValueError(f"unknown parallelism {config.parallelism!r}: valid values are {list(_MODES)}")
    self.mode, self.mesh, self.plan = config.parallelism, mesh, plan
    self._mode = _MODES[self.mode](config, mesh, model_factory, train_step, eval_step, plan.options)
    self.model = self._mode.model
    self.steps_per_call = resolve_steps_per_call(config, mesh.devices.flat[0].platform)
    self._ahead = {}  # (data, first_step, n) -> its host batches already on the devices (PREFETCH_CALLS)
    self._num_train_steps = config.num_train_steps  # the input streams end there: nothing is read past it

  # State placement.
  def to_device(self, host_state):
    return self._mode.place_state(host_state)

  def to_global(self, state):
    """The state as globally replicated jax.Arrays (what checkpoints store, in either mode)."""
    return self._mode.to_global(state)

  def from_global(self, state):
    return self._mode.from_global(state)

  def abstract_global(self, host_state):
    return parallel.abstract_replicated(host_state, self.mesh)

  def place_window(self, window):
    """Training metrics placed where `train` merges into them."""
    return self._mode.place_window(window)

  # Steps.
  def train(self, state, window, data, first_step: int, n: int, rng):
    """Training steps first_step .. first_step + n - 1 (0-based: the state's step before each update).

    Returns (state, `window` merged with their metrics, their step infos stacked along a leading axis of length
    n). All n steps run in one compiled call, the metrics merged on the devices in step order: on batches drawn on
    the devices (input_backend='device': `data.draw` and `data.source`), or on the n host batches (tf.data,
    ImageNet) stacked; those are read and placed PREFETCH_CALLS calls ahead, while this call runs.
    """
    call, args = self._train_call(state, window, data, first_step, n, rng)
    if call is self._mode.train:  # one step on one host batch
      state, out = call(*args)
      m, info = self._mode.unstack(out)
      out = state, window.merge(m), jax.tree.map(lambda x: x[None], info)
    else:
      out = call(*args)
    if data.draw is None:
      for k in range(1, PREFETCH_CALLS + 1):
        ahead = (data, first_step + k * n, n)
        if first_step + (k + 1) * n <= self._num_train_steps and ahead not in self._ahead:
          self._ahead[ahead] = self._place_host_batches(*ahead)
    return out

  def _train_call(self, state, window, data, first_step: int, n: int, rng):
    """The compiled function that `train` calls, and its arguments placed on the devices."""
    if data.draw is not None:
      call = self._mode.on_device_call(n, data.draw)
      return call, (state, window, data.source(first_step, n), jnp.asarray(first_step, jnp.int32), rng)
    batches = self._ahead.pop((data, first_step, n), None)
    if batches is None:  # the first call, or a jump (a resume, a last call of fewer steps): read from here on
      self._ahead.clear()
      batches = self._place_host_batches(data, first_step, n)
    if n == 1:
      return self._mode.train, (state, batches, rng)
    return self._mode.train_many, (state, window, batches, rng)

  def _place_host_batches(self, data, first_step: int, n: int):
    """The host batches of steps first_step .. first_step + n - 1 on the devices: one, or n stacked."""
    batches = [data.train_batch(first_step + i) for i in range(n)]
    return self._mode.place_batch(batches[0]) if n == 1 else self._mode.place_batches(stack(batches))

  def eval_on_batch(self, state, local_batch):
    """The evaluation metrics of this process's share of a padded, masked batch."""
    return self._mode.unstack(self._mode.eval(state, self._mode.place_batch(local_batch)))

  # Lowering, for measurements of the very calls above (resnet_jax.benchmark).
  def lower_train(self, state, window, data, first_step: int, n: int, rng):
    """The jax Lowered of `train`'s call of n steps from first_step."""
    call, args = self._train_call(state, window, data, first_step, n, rng)
    return call.lower(*args)

  def compile(self, lowered):
    """A Lowered of the methods above compiled as the steps are: with the plan's XLA options."""
    return lowered.compile(**self._mode.compile_options)
