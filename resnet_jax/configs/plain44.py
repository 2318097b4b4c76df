"""CIFAR-10 plain-44: ResNet-44's layers without shortcuts (Figure 6, left), section 4.2's recipe.

Command:  python -m resnet_jax.main --config=configs/plain44.py --workdir=runs/plain44 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper: curves only (Figure 6): plain nets train and test worse as they get deeper.
Ours: not measured yet.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(44, residual=False)
