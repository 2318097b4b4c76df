"""CIFAR-10 ResNet-20 (option A shortcuts), the recipe of section 4.2 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/cifar20.py --workdir=runs/cifar20 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper (Table 6): 8.75 % test error.
Ours: not yet measured at the full 64k-step budget. A 1,200-step shortened run (same schedule shape) reached
33.7 % test error on a JPEG-compressed copy of CIFAR-10 (README.md: the run, its hardware and its time).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(20, residual=True)
