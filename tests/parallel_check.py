"""Runs a few train steps in every parallel mode in one 8-device process; saves losses and final states.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_check.py OUT.npz [--float64]

With --float64 (jax_enable_x64, a float64 network, parameters and data) it runs the references instead: one
device with synchronised BN, and 8 devices with per-device BN. The same seeds give the same initial parameters
and batches in both, so a float32 run's distance from its float64 reference is its float32 rounding error.
"""

import sys

import jax
import numpy as np

MODES = [
    ("jit1", "jit", True, 1),
    ("jit8", "jit", True, 8),
    ("pmap8", "pmap", True, 8),
    ("jit8_nosync", "jit", False, 8),
    ("pmap8_nosync", "pmap", False, 8),
]
FLOAT64_MODES = [("jit1", "jit", True, 1), ("jit8_nosync", "jit", False, 8)]
DEPTH, BATCH = 8, 32


def run(mode, bn_sync, n_devices, steps=3, dtype=np.float32):
  import jax.numpy as jnp
  from helpers import train_on_batch
  from resnet_jax import config_lib, models, parallel, train

  config = config_lib.cifar(DEPTH)
  config.dataset = "fake"
  config.batch_size = BATCH
  config.parallelism = mode
  config.bn_sync = bn_sync
  config.num_train_steps = steps
  schedule, tx = train.make_schedule(config), train.make_optimizer(config)
  config.cpu.convolutions = "eigen"  # the same XLA program whatever the device count (oneDNN runs on one only)
  factory = lambda axis: models.create_model(config.model, bn_axis_name=axis).clone(dtype=jnp.dtype(dtype))
  mesh = parallel.make_mesh(jax.devices()[:n_devices])
  s = train.compile_steps(config, tx, schedule, mesh=mesh, model_factory=factory)
  host = jax.tree.map(
      lambda x: x.astype(dtype) if x.dtype == np.float32 else x,
      train.init_host_state(s.model, tx, config, compiler_options=s.plan.init_options),
  )
  state = s.to_device(host)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    batch = {
        "image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32).astype(dtype),
        "label": rng.integers(0, 10, BATCH).astype(np.int32),
    }
    state, info = train_on_batch(s, state, batch, jax.random.key(0))
    losses.append(float(info["loss"]))
  eval_batch = {
      "image": rng.normal(size=(64, 32, 32, 3)).astype(np.float32).astype(dtype),
      "label": rng.integers(0, 10, 64).astype(np.int32),
      "mask": np.ones(64, dtype),
  }
  out = {"losses": np.array(losses), "eval_loss": float(s.eval_on_batch(state, eval_batch).compute()["loss"])}
  if mode == "pmap":  # running statistics must be identical on every device after each step
    out["stats_identical"] = all((np.asarray(x) == np.asarray(x)[:1]).all() for x in jax.tree.leaves(state.batch_stats))
  g = jax.device_get(s.to_global(state))
  for path, x in jax.tree_util.tree_flatten_with_path({"params": g.params, "batch_stats": g.batch_stats})[0]:
    out["/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(x, np.float64)
  return out


def main(out, float64=False):
  if float64:
    jax.config.update("jax_enable_x64", True)
  assert jax.device_count() == 8, jax.devices()
  results = {}
  for name, mode, sync, n in (FLOAT64_MODES if float64 else MODES):
    for k, v in run(mode, sync, n, dtype=np.float64 if float64 else np.float32).items():
      results[f"{name}:{k}"] = v
  np.savez(out, **results)


if __name__ == "__main__":
  main(sys.argv[1], float64="--float64" in sys.argv[2:])
