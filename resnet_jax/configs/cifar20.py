"""CIFAR-10 ResNet-20 (option A shortcuts), the recipe of section 4.2 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/cifar20.py --workdir=runs/cifar20 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper (Table 6): 8.75 % test error.
Ours: README.md's results table, from the run packed in experiments/results/cifar20_resnet20 (the full recipe on
the JPEG-compressed CIFAR-10 copy, trained on a 2-core CPU in pieces of a few hours with --stop_after).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(20, residual=True)
