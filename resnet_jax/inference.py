"""A trained (or converted) workdir's variables, for the commands that run its network: evaluate, predict,
analyze, convert.

The newest readable checkpoint is restored into the shapes of the run's TrainState, as training would resume it
(a checkpoint of another model or config is refused by resnet_jax.checkpoint), and only the network's variables
are returned, as host arrays.
"""

import logging

import jax

from resnet_jax import checkpoint as ckpt_lib
from resnet_jax import config_lib, errors, parallel, rundir, train


def load_for_inference(workdir: str, config=None) -> dict:
  """{'params', 'batch_stats'} of the newest readable checkpoint in workdir (host arrays).

  `config` is the run's config (a --config given on the command line); None reads the workdir's config.json.
  """
  run = rundir.RunDir(workdir)
  if not run.has_checkpoints():  # before building anything, and without creating it
    raise errors.NotFoundError(
        f"no checkpoint in {run.name}: {run.checkpoints} does not exist; train first with "
        f"python -m resnet_jax.main --config=... --workdir={workdir}"
    )
  config = config_lib.resolve(config if config is not None else config_lib.load_workdir_config(workdir))
  tx = train.make_optimizer(config)
  shapes = train.abstract_host_state(train.make_model(config), tx, config)
  abstract = parallel.abstract_replicated(shapes, parallel.make_mesh())
  checkpointer = ckpt_lib.Checkpointer(run.checkpoints)
  state, step = checkpointer.restore_latest(abstract, ckpt_lib.meta_for(config))
  checkpointer.close()
  if state is None:
    raise errors.NotFoundError(
        f"no checkpoint in {run.checkpoints}; train first with "
        f"python -m resnet_jax.main --config=... --workdir={workdir}"
    )
  logging.info("evaluating %s/%d", run.checkpoints, step)
  return {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
