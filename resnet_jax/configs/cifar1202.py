"""CIFAR-10 ResNet-1202 (option A shortcuts), the recipe of section 4.2 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/cifar1202.py --workdir=runs/cifar1202 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper (Table 6): 7.93 % test error.
Ours: not measured yet (no sweep of experiments/ trains it).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(1202, residual=True)
