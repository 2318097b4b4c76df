"""CIFAR-10 ResNet-32 (option A shortcuts), the recipe of section 4.2 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/cifar32.py --workdir=runs/cifar32 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper (Table 6): 7.51 % test error.
Ours: not measured yet; experiments/table6.py trains it with the other Table 6 nets (experiments/README.md).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(32, residual=True)
