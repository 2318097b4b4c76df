"""Every input of a run, behind one interface (resnet_jax.inputs.Data), and where its files are.

  cifar.py            CIFAR-10/100 (and fake data) through tfds into host memory: the splits, their normalisation,
                      the step-indexed tf.data training stream and the padded, masked evaluation batches
  cifar_device.py     input_backend='device': the CIFAR training split held on the devices, batches drawn inside jit
  imagenet_prepare.py ImageNet 2012 prepared once by tfds from the manual download, and read a process's shard at a
                      time (`python -m resnet_jax.data.imagenet_prepare`)
  imagenet_images.py  one ImageNet image: decoding, the training augmentations, the evaluation views, normalisation
  imagenet_train.py   the ImageNet training stream
  imagenet_eval.py    the ImageNet evaluation protocols (single crop, 10-crop, multi-scale)

Their user-facing errors are in resnet_jax.errors. `resolve_data_dir` is the one answer to "which tfds data dir",
for every data set and for the preparation command.
"""

from __future__ import annotations

import os

from resnet_jax import storage


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """The tfds data dir: `data_dir` (config.data_dir, or the preparation command's flag), else $TFDS_DATA_DIR, else
  tfds's default (~/tensorflow_datasets); a local path made absolute, a URL (gs://...) kept as it is.

  Naming the default instead of leaving it to tfds lets the error messages and the decoded-array cache say which
  folder they mean.
  """
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  if not data_dir:
    import tensorflow_datasets as tfds  # imported here: a data_file run may have no TensorFlow

    data_dir = tfds.core.constants.DATA_DIR
  return storage.name(data_dir)
