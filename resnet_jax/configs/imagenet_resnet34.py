"""ImageNet 2012 ResNet-34, shortcut option A, the recipe of section 3.4 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/imagenet_resnet34.py --workdir=runs/imagenet_resnet34
Paper (Tables 2-3): 10-crop top-1 error 25.03 / 24.52 / 24.19 for options A / B / C; 7.76 / 7.46 / 7.40 top-5.
Ours: not measured (needs the ILSVRC2012 tars and an accelerator).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.imagenet(34, residual=True)
