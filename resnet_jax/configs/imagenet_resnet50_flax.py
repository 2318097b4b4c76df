"""ImageNet ResNet-50 with the recipe of flax's examples/imagenet, for comparison with its published numbers.

v1.5 stride placement, inception-style random-resized crops, 5 epochs of linear warm-up, cosine decay over 100
epochs, lr 0.1 per 256 images, weight decay 1e-4, batch 256 (scale with --config.batch_size).
Command:  python -m resnet_jax.main --config=configs/imagenet_resnet50_flax.py --workdir=runs/r50_flax
Reference: flax reports 76.3-76.7 % single-crop top-1 accuracy; the paper's ResNet-50 (v1, 10-crop) has 22.85 %
top-1 error. Ours: not measured (needs the ILSVRC2012 tars and an accelerator).
"""

from resnet_jax import config_lib


def get_config():
  return config_lib.imagenet_flax_like(50)
