"""ImageNet 2012 plain-18: ResNet-18's layers without shortcuts, the recipe of section 3.4.

Command:  python -m resnet_jax.main --config=configs/imagenet_plain18.py --workdir=runs/imagenet_plain18
Paper (Table 2): 10-crop top-1 error 27.94.
Ours: not measured (needs the ILSVRC2012 tars and an accelerator).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.imagenet(18, residual=False)
