"""Table 6 and Figure 6 together: ResNet-20/32/44/56/110 and plain-20/56 on CIFAR-10, section 4.2's recipe.

The runs are listed in the order worth having when time runs out: ResNet-20 and ResNet-56 (Table 6's ends of the
curve), plain-20 and plain-56 (Figure 6's degradation beside them), then ResNet-32, -44 and -110. Every run is the
full recipe (64k steps of batch 128, lr 0.1 divided by 10 at 32k and 48k, weight decay 1e-4, momentum 0.9, 4-pixel
padding, 32x32 crops and flips, the test error on all 10,000 test images), as config_lib.cifar(depth) states it.

On one GPU, with the batches drawn on the device and 100 steps per compiled call (experiments/table6_gpu.sh runs
this on a lent GPU machine, within a deadline, resumable across calls):

    python -m resnet_jax.sweep experiments/table6.py --workdir=runs/table6 --set=input_backend=device \\
        --set=data_file=../shared/data/cifar10_jpeg_bytes.npz
    python -m resnet_jax.report runs/table6

Anywhere else, the same with --set=data_dir=../shared/data/tfds (tf.data input). On this project's 2-core CPU it
is weeks (experiments/depth.py gives the per-step cost).
"""

from resnet_jax import config_lib
from resnet_jax.sweep import Run, overrides_between

# (residual, depth), in the order the runs are made.
RUNS = ((True, 20), (True, 56), (False, 20), (False, 56), (True, 32), (True, 44), (True, 110))


def get_config():
  """The base config (ResNet-20); every run is this plus its overrides."""
  return config_lib.cifar(20)


def get_sweep():
  base = get_config()
  return [
      Run(
          f"{'resnet' if residual else 'plain'}{depth}",
          overrides_between(base, config_lib.cifar(depth, residual=residual)),
      )
      for residual, depth in RUNS
  ]
