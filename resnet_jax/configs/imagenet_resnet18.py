"""ImageNet 2012 ResNet-18, shortcut option A, the recipe of section 3.4 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/imagenet_resnet18.py --workdir=runs/imagenet_resnet18
Paper (Tables 2-3): 10-crop top-1 error 27.88 (option A).
Ours: not measured (needs the ILSVRC2012 tars and an accelerator).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.imagenet(18, residual=True)
