"""Table 6: ResNet-20/32/44/56/110 (and, optionally, 1202) on CIFAR-10, section 4.2's recipe.

Each run is config_lib.cifar(depth) expressed as overrides of ResNet-20 (so ResNet-110 also gets the paper's
400-iteration warm-up at lr 0.01, and 1202 runs its stages under nn.scan); the table beside the
paper's test errors (8.75 / 7.51 / 7.17 / 6.97 / 6.43 / 7.93 %) comes from the report:

    python -m resnet_jax.sweep experiments/depth.py --workdir=runs/depth --set=data_dir=../shared/data/tfds
    python -m resnet_jax.report runs/depth

ResNet-1202 (19.4M parameters) is an optional run: it runs only when --only names it exactly:

    python -m resnet_jax.sweep experiments/depth.py --workdir=runs/depth --only=resnet1202 \\
        --set=data_dir=../shared/data/tfds

Cost of the full recipe (64k steps of batch 128 each): on this project's 2-core CPU a ResNet-20 step takes about
1.3 s and a ResNet-56 step about 3.2 s when the CPU is not shared (2-3 times that when it is; measured in
experiments/results/degradation_cpu), growing linearly with depth: about 12 days for 20..110, so run it on an
accelerator. One GPU: an estimate, not measured here, is 10-60 minutes per run in float32 (ResNet-110 the
longest) and about 8-10 hours for ResNet-1202 alone (it is 11x ResNet-110's compute).
"""

from resnet_jax import config_lib
from resnet_jax.sweep import Run, overrides_between

DEPTHS = (20, 32, 44, 56, 110)
OPTIONAL_DEPTHS = (1202,)  # run only when --only names them exactly


def get_config():
  return config_lib.cifar(20)


def get_sweep():
  base = get_config()
  return [
      Run(f"resnet{d}", overrides_between(base, config_lib.cifar(d)), optional=d in OPTIONAL_DEPTHS)
      for d in DEPTHS + OPTIONAL_DEPTHS
  ]
