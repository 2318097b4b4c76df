"""ImageNet 2012 plain-34: ResNet-34's layers without shortcuts, the recipe of section 3.4.

Command:  python -m resnet_jax.main --config=configs/imagenet_plain34.py --workdir=runs/imagenet_plain34
Paper (Table 2): 10-crop top-1 error 28.54 (top-5 10.02).
Ours: not measured (needs the ILSVRC2012 tars and an accelerator).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.imagenet(34, residual=False)
