"""torchvision's / timm's ImageNet ResNet-18/34/50/101/152: v1.5 bottlenecks, option B, torchvision's preprocessing.

The depth is the config argument. Fine-tune weights brought with `python -m resnet_jax.convert from-torchvision`:
    python -m resnet_jax.convert from-torchvision resnet50.safetensors --workdir=runs/tv50
    python -m resnet_jax.main --config=configs/imagenet_torchvision.py:50 --workdir=runs/tv50 \\
        --config.data_dir=DIR --config.learning_rate=0.01 --config.num_epochs=10
Reference: torchvision's V1 weights reach 69.76 / 73.31 / 76.13 / 77.37 / 78.31 % single-crop top-1 accuracy
(ResNet-18/34/50/101/152). Ours: not measured on the full validation set (it is not on this project's machines).
"""

from resnet_jax import config_lib


def get_config(depth: str = "50"):
  return config_lib.imagenet_torchvision(int(depth))
