"""A trained (or converted) workdir's network, its input preprocessing and its class labels, for the commands
that run it: evaluate, predict, export, layer_responses, convert.

The newest readable checkpoint is restored into the shapes of the run's TrainState, as training would resume it
(a checkpoint of another model or config is refused by resnet_jax.checkpoint), and only the network's variables
are returned, as host arrays.

The preprocessing is the network's single-crop evaluation input. An ImageNet net's is constants of its config
(config.eval_resize, config.image_size, config.normalization). A CIFAR net's is the training split's statistics,
which training writes to WORKDIR/normalization.npz before its first step, so that running a workdir needs no
training data.
"""

import logging
import os

import jax
import numpy as np

from resnet_jax import checkpoint as ckpt_lib
from resnet_jax import config_lib, errors, parallel, rundir, train

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "imagenet_classes.tsv")


def load_for_inference(workdir: str, config=None) -> dict:
  """{'params', 'batch_stats'} of the newest readable checkpoint in workdir (host arrays).

  `config` is the run's config, resolved (a --config of the command line, as cli.start returns it); None reads the
  workdir's config.json (config_lib.load_workdir_config).
  """
  run = rundir.RunDir(workdir)
  if not run.has_checkpoints():  # before building anything, and without creating it
    raise errors.NotFoundError(
        f"no checkpoint in {run.name}: {run.checkpoints} does not exist; train first with "
        f"python -m resnet_jax.main --config=... --workdir={workdir}"
    )
  config = config if config is not None else config_lib.load_workdir_config(workdir)
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


def is_imagenet(config) -> bool:
  return config.dataset == "imagenet2012" or config.model.family == "imagenet"


def class_labels(config) -> list[str]:
  """A readable label per class: CIFAR-10 names, or 'wnid name' for the 1000 ImageNet classes."""
  n = config.model.num_classes
  if config.model.family == "imagenet" and n == 1000:
    with open(IMAGENET_CLASSES_FILE) as f:
      rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [f"{wnid} {name}" for _, wnid, name in rows]
  if config.dataset == "cifar10" and n == 10:
    return list(CIFAR10_LABELS)
  return [f"class {i}" for i in range(n)]


def cifar_normalizer(workdir):
  """The data.cifar.Normalizer a CIFAR net was trained with: the statistics saved in its workdir (errors.NotFoundError
  naming the fix where they are missing)."""
  from resnet_jax.data import cifar

  saved = rundir.RunDir(workdir).read_normalization()
  return cifar.Normalizer(saved["mean"], saved["std"])


def save_normalization(workdir) -> None:
  """Writes WORKDIR/normalization.npz from the run's training split, as training does before its first step.

  The repair for a CIFAR workdir trained before training saved the file; it reads the training data that the run's
  config.json names (config.data_file, or tfds).
  """
  from resnet_jax.data import cifar

  config = config_lib.load_workdir_config(workdir)
  norm = cifar.normalizer(config, cifar.load_split(config, "train"))
  rundir.RunDir(workdir).write_normalization(norm.mean, norm.std)


def preprocessor(config, workdir):
  """image uint8 [H, W, 3] -> float32 [S, S, 3], the single-crop evaluation input of the workdir's network.

  `workdir` holds a CIFAR net's input statistics; an ImageNet net needs none (None).
  """
  if is_imagenet(config):
    from resnet_jax.data import imagenet_images

    mode, size, resize_to = config.normalization, config.image_size, config.eval_resize
    return lambda image: np.asarray(
        imagenet_images.normalize(
            imagenet_images.to_uint8(imagenet_images.single_view(image, resize_to=resize_to, crop=size)), mode
        )
    )
  normalize, size = cifar_normalizer(workdir), config.image_size

  def cifar(image):
    if image.shape[:2] != (size, size):
      from PIL import Image

      image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return normalize(image[None])[0]

  return cifar
