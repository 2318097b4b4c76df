"""CIFAR-10 plain-20: ResNet-20's layers without shortcuts (Figure 6, left), section 4.2's recipe.

Command:  python -m resnet_jax.main --config=configs/plain20.py --workdir=runs/plain20 \\
              --config.data_dir=DIR  # a tfds data dir holding cifar10 (default: $TFDS_DATA_DIR)
Paper: curves only (Figure 6): plain nets train and test worse as they get deeper.
Ours: its first 150 iterations on a CPU, beside ResNet-20's, are in experiments/results/degradation_cpu
(report.md, figure6.png); not measured yet at the full recipe (experiments/table6.py trains it).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.cifar(20, residual=False)
