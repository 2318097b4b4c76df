"""ImageNet 2012 ResNet-152, shortcut option B, the recipe of section 3.4 of He et al. (2015).

Command:  python -m resnet_jax.main --config=configs/imagenet_resnet152.py --workdir=runs/imagenet_resnet152
Paper (Tables 2-3): 10-crop top-1 error 21.43 (top-5 5.71), option B.
Ours: not measured (needs the ILSVRC2012 tars and an accelerator).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.imagenet(152, residual=True)
