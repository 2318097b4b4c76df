"""CIFAR-10 ResNet-56 (option A shortcuts), the recipe of section 4.2 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/cifar56.py --workdir=runs/cifar56 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper (Table 6): 6.97 % test error.
Ours: not measured yet at the full recipe (experiments/table6.py trains it); its first 150 iterations on a CPU,
beside plain-56's, are in experiments/results/degradation_cpu (report.md, figure6.png).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(56, residual=True)
