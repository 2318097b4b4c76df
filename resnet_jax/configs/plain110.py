"""CIFAR-10 plain-110: ResNet-110's layers without shortcuts (Figure 6, left), section 4.2's recipe.

Command:  python -m resnet_jax.main --config=configs/plain110.py --workdir=runs/plain110 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper: curves only (Figure 6): plain nets train and test worse as they get deeper; plain-110 stays above 60 % error.
Ours: not measured yet.
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(110, residual=False)
