"""Devices and meshes, kept apart from the pure train and eval steps.

Two ways to run the same step on many devices:
* 'jit' (default): one `jax.jit` over a Mesh with a 'data' axis; the state is replicated, the batch is sharded
  along its leading axis, and XLA inserts the collectives. Synchronised BN falls out of computing batch
  statistics over the global (sharded) batch; per-device BN runs the forward pass under `jax.shard_map`.
* 'pmap': `jax.pmap` over the local devices with axis name 'data'; the state carries a leading device axis.

Joining the other processes of a multi-host job is resnet_jax.cluster's.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def check_batch(batch_size: int, field: str = "batch_size") -> list[str]:
  """Problems (empty if none) splitting a global batch over processes and devices, with numbers that work."""
  n_dev, n_proc, n_local = jax.device_count(), jax.process_count(), jax.local_device_count()
  problems = []
  if batch_size % n_dev:
    lo = max(n_dev, batch_size // n_dev * n_dev)
    problems.append(
        f"{field}={batch_size} is not divisible by the {n_dev} devices; use a multiple of "
        f"{n_dev}, e.g. {lo} or {lo + n_dev}"
    )
  elif (batch_size // n_proc) % n_local:
    problems.append(
        f"{field}={batch_size} gives {batch_size // n_proc} examples per process, which the "
        f"{n_local} local devices cannot share evenly; use a multiple of {n_dev}"
    )
  return problems


def eval_batch(config, *, training_size: bool = True) -> int:
  """The global evaluation batch: each device's share of eval_batch_size, or of the training batch where that is
  larger and the views are the training size, times the device count.

  Evaluation pads its batches and masks the padding (every example counts once), so this batch decides how many
  calls an evaluation takes, never its result. A recipe's eval_batch_size thus runs unchanged on any number of
  devices (1000 on 16 devices gives batches of 1008), and on a large slice no device evaluates fewer images per
  call than it trains on per step, which fit its memory with the gradients besides: ImageNet's 250 would
  otherwise give each of 1,024 chips one image per call, 200 calls for the 50,000 validation images.
  `training_size=False` for views that need more memory than training's (10 crops, or larger images, per image):
  eval_batch_size alone sizes those.
  """
  n = jax.device_count()
  share = -(-int(config.eval_batch_size) // n)
  return max(share, int(config.batch_size) // n if training_size else 0) * n


def make_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def put_replicated(tree, mesh: Mesh):
  """Host values (identical on every process) -> global arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def abstract_replicated(tree, mesh: Mesh):
  """The shapes and dtypes of host arrays (or jax.ShapeDtypeStructs), replicated over the mesh: what a checkpoint is
  restored into."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def stacked_data_sharded(mesh: Mesh) -> NamedSharding:
  """Several steps' batches stacked along a leading axis: each batch sharded along the data axis."""
  return NamedSharding(mesh, P(None, AXIS))


def put_batch(local_batch: dict, mesh: Mesh, *, stacked: bool = False) -> dict:
  """Process-local slices of a global batch -> global arrays sharded along the data axis (the second axis of
  `stacked` batches, whose first is the step)."""
  sharding = stacked_data_sharded(mesh) if stacked else data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


# pmap helpers -------------------------------------------------------------------------------------------------


def pmap_replicate(tree):
  """Host values -> [local_devices, ...] arrays; the first pmapped call places them (outputs stay there)."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)).copy(), tree)


def pmap_unreplicate(tree):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), tree)


def pmap_split(local_batch: dict) -> dict:
  """[local_batch, ...] -> [local_devices, local_batch / local_devices, ...], placed on the devices."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + np.shape(x)[1:]), local_batch)
