"""CIFAR-10 ResNet-110 (option A shortcuts), the recipe of section 4.2 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/cifar110.py --workdir=runs/cifar110 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper (Table 6): 6.43 (best of 5; mean 6.61 +- 0.16) % test error.
Ours: not measured yet; experiments/table6.py trains it with the other Table 6 nets (experiments/README.md).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(110, residual=True)
