"""input_backend='device': CIFAR held in accelerator memory, batches drawn and augmented inside a jitted function.

On a GPU a CIFAR ResNet step takes milliseconds and a tf.data pipeline on a few host cores cannot keep up; the
fastest CIFAR trainers keep the whole data set on the device. The training split is loaded once (cifar.load_split:
from tfds, or from a plain .npz given by `config.data_file` so that TensorFlow is not needed), stored as uint8 and
sharded over the mesh's data axis. Each step, every device draws its share of the batch from its own shard:

* order: a fresh permutation of the shard every epoch, keyed by (seed, device, epoch);
* augmentation: 4-pixel zero padding after normalisation, a crop offset uniform over 0..8 in each direction
  and a horizontal flip with probability 1/2, keyed by (seed, device, step);
* normalisation: the same per-pixel mean (or per-channel statistics) as input_backend='tfdata'.

Everything is a function of (seed, step), so resumed runs stay exact. The random numbers differ from the
tfdata backend's (JAX's PRNG instead of TensorFlow's); the distributions are the same (tests check them).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import parallel
from resnet_jax.data import cifar

PAD = cifar.PAD


def held_examples(n: int, device_count: int) -> int:
  """How many of a split's n examples the devices hold: equal shards, the last n % device_count left out."""
  return n - n % device_count


class DeviceData:
  """The training split on the devices, and the draw of global batch `step` from it.

  `batch(step)` draws one batch (a jitted call of its own); `draw(*source(first, n), step)` is the same pure
  function for use inside a larger jitted computation, such as `n` training steps in one call
  (config.steps_per_call), with `source(first, n)` the device arrays that steps first..first+n-1 read. Each device
  draws config.batch_size / mesh.size examples per batch; that the batch fits in the `held_examples` is inputs.Data's
  check.
  """

  def __init__(self, config, data: cifar.ArrayData, norm: cifar.Normalizer, mesh):
    n_dev = mesh.size
    n = held_examples(len(data), n_dev)
    if n != len(data):
      logging.warning(
          "device input: dropping the last %d of %d training examples so that the %d devices hold equal shards",
          len(data) - n,
          len(data),
          n_dev,
      )
    sharding = NamedSharding(mesh, P(parallel.AXIS))
    local = {"image": data.images[:n], "label": data.labels[:n]}
    # Every process holds the whole split in host memory and places only its devices' shards.
    self.images = jax.make_array_from_callback(local["image"].shape, sharding, lambda i: local["image"][i])
    self.labels = jax.make_array_from_callback(local["label"].shape, sharding, lambda i: local["label"][i])
    self.n_local = n // n_dev
    self.local_batch = config.batch_size // n_dev
    mean = jnp.asarray(norm.mean, jnp.float32)
    std = jnp.asarray(norm.std, jnp.float32)
    seed = int(config.seed)
    fn = functools.partial(_local_batch, seed=seed, local_batch=self.local_batch, mean=mean, std=std)
    shard = P(parallel.AXIS)
    self.draw = jax.shard_map(
        fn, mesh=mesh, in_specs=(shard, shard, P(None, parallel.AXIS), P(), P()), out_specs=(shard, shard)
    )
    self._batch = jax.jit(self.draw)
    self._order = jax.jit(
        jax.shard_map(
            functools.partial(_epoch_order, seed=seed, n_local=self.n_local), mesh=mesh, in_specs=P(), out_specs=shard
        )
    )
    self._orders: dict[int, jax.Array] = {}

  def order(self, epoch: int) -> jax.Array:
    """Each device's permutation of its shard for `epoch` (computed once per epoch, kept while still needed)."""
    if epoch not in self._orders:
      self._orders[epoch] = self._order(jnp.asarray(epoch, jnp.int32))
    return self._orders[epoch]

  def epochs_spanned(self, n: int) -> int:
    """How many epochs of a shard n consecutive batches can touch (the length of source's orders)."""
    return -(-n * self.local_batch // self.n_local) + 1

  def source(self, first: int, n: int) -> tuple:
    """(images, labels, orders, first_epoch): what batches first..first+n-1 are drawn from, as device arrays.

    `orders` stacks each device's permutations of its shard for the epochs those batches touch, from the epoch of
    batch `first` on; epochs before it are dropped from the cache.
    """
    first_epoch = first * self.local_batch // self.n_local
    self._orders = {e: o for e, o in self._orders.items() if e >= first_epoch}
    orders = jnp.stack([self.order(first_epoch + i) for i in range(self.epochs_spanned(n))])
    return self.images, self.labels, orders, jnp.asarray(first_epoch, jnp.int32)

  def batch(self, step) -> dict:
    """Global batch number `step` (an int; a device scalar is read back to the host), sharded over the mesh."""
    step = int(step)
    images, labels = self._batch(*self.source(step, 1), jnp.asarray(step, jnp.int32))
    return {"image": images, "label": labels}


def pad_crop_flip(images, offsets, flips):
  """The same operation as cifar.pad_crop_flip, in JAX: zero pad by 4, crop at offsets, flip."""
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
  x = jax.vmap(crop)(padded, offsets)
  return jnp.where(flips[:, None, None, None], x[:, :, ::-1, :], x)


def augmentation_params(key, batch: int):
  """Crop offsets uniform over 0..8 in each direction and flips with probability 1/2."""
  k_off, k_flip = jax.random.split(key)
  return (jax.random.randint(k_off, (batch, 2), 0, 2 * PAD + 1), jax.random.bernoulli(k_flip, 0.5, (batch,)))


def augment(images, key):
  offsets, flips = augmentation_params(key, images.shape[0])
  return pad_crop_flip(images, offsets, flips), offsets, flips


def _order_key(seed):
  """Per-device key of the shard order (call under shard_map)."""
  device = jax.lax.axis_index(parallel.AXIS)
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), device), 0)


def _epoch_order(epoch, *, seed, n_local):
  """Runs on each device: the permutation of its shard for `epoch`."""
  return jax.random.permutation(jax.random.fold_in(_order_key(seed), epoch), n_local)


def _local_batch(images, labels, orders, first_epoch, step, *, seed, local_batch, mean, std):
  """Runs on each device (under shard_map) on its own shard of the training split and of the epoch orders.

  `orders[e]` is the permutation of the shard in epoch first_epoch + e; a batch takes the next `local_batch`
  positions of that sequence of epochs.
  """
  n_local = images.shape[0]
  device = jax.lax.axis_index(parallel.AXIS)
  key = jax.random.fold_in(jax.random.key(seed), device)
  pos = step.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) * local_batch + jnp.arange(local_batch)
  idx = orders[pos // n_local - first_epoch, pos % n_local]
  x = (images[idx].astype(jnp.float32) / 255.0 - mean) / std
  x, _, _ = augment(x, jax.random.fold_in(jax.random.fold_in(key, 1), step))
  return x, labels[idx]
