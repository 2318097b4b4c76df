"""Shortcut options A / B / C (section 3.3): on CIFAR-10 here, and on ImageNet ResNet-34 as the paper's Table 3.

A: identity shortcuts, zero-padded channels where the width grows (no parameters).
B: 1x1 projection shortcuts where the shape changes, identity elsewhere.
C: 1x1 projections on every shortcut.
The paper compares them on ImageNet only (Table 3, 10-crop top-1 error: plain-34 28.54, ResNet-34 A 25.03,
B 24.52, C 24.19): all three beat the plain net by far, B is a little better than A and C a little better than B,
"so projection shortcuts are not essential". On CIFAR it uses A throughout; runs resnet20_opt{A,B,C} and
resnet56_opt{A,B,C} ask the same question there, at the cost of CIFAR runs.

    # CIFAR-10 (6 runs):
    python -m resnet_jax.sweep experiments/shortcuts.py --workdir=runs/shortcuts --only='resnet*' \\
        --set=data_dir=../shared/data/tfds
    # ImageNet (Table 3: plain-34 and ResNet-34 A/B/C; needs ImageNet 2012 prepared for tfds):
    python -m resnet_jax.sweep experiments/shortcuts.py --workdir=runs/shortcuts --only='imagenet_*' \\
        --set=data_dir=PATH_TO_TFDS
    python -m resnet_jax.report runs/shortcuts

Cost: the CIFAR runs cost as in experiments/degradation.py (options B and C add a few 1x1 convolutions: about 1%
and 10% more compute); each ImageNet ResNet-34 run is 120 epochs of 1.28M images at 3.6 G mult-adds per image,
impossible on a CPU and, estimated (not measured), about 2-4 days on one GPU (8 GPUs: about half a day) each.
The report's ImageNet error is the in-training single-crop evaluation; the paper's Table 3 is 10-crop
(python -m resnet_jax.evaluate --protocol=10crop --workdir=runs/shortcuts/imagenet_resnet34_optA ...).
"""

from resnet_jax import config_lib
from resnet_jax.sweep import Run, overrides_between, product


def get_config(base="cifar"):
  """`cifar` (ResNet-20, the default) or `imagenet` (ResNet-34, option A): the bases of the two halves."""
  if base == "imagenet":
    return config_lib.imagenet(34, shortcut="A")
  if base != "cifar":
    raise ValueError(f"unknown base {base!r}: use 'cifar' or 'imagenet'")
  return config_lib.cifar(20)


def get_sweep():
  cifar = get_config()
  depths = [Run(f"resnet{d}", overrides_between(cifar, config_lib.cifar(d))) for d in (20, 56)]
  options = [Run(f"opt{o}", {"model.shortcut": o}) for o in "ABC"]
  imagenet = [Run("imagenet_plain34", {"model.residual": False}, config_arg="imagenet")]
  imagenet += [Run(f"imagenet_resnet34_opt{o}", {"model.shortcut": o}, config_arg="imagenet") for o in "ABC"]
  return product(depths, options) + imagenet
