"""Figure 6 (left and middle): plain-20/32/44/56 against ResNet-20/32/44/56 on CIFAR-10, section 4.2's recipe.

The paper's central claim: the plain nets' training *and* test error grow with depth (the degradation problem),
while the residual twins' (the same layers plus identity shortcuts, option A) shrink with depth.

Full recipe (64k iterations of batch 128, lr 0.1 divided by 10 at 32k and 48k, test error on the 10k test set):

    python -m resnet_jax.sweep experiments/degradation.py --workdir=runs/degradation \\
        --set=data_dir=../shared/data/tfds
    python -m resnet_jax.report runs/degradation

Cost: 8 runs x 64k steps = 65.5M training images. On this project's 2-core CPU, shared with other jobs, a step
of batch 128 took 1.3-2.4 s for the 20-layer nets and 5.6-8.9 s for the 56-layer nets (medians of the short run
below; the spread is the other jobs' load). Even unshared (about 1.3 s and 3.2 s) the full sweep is about two
weeks of this CPU: run it on an accelerator. One GPU: an estimate, not measured here, is 10-30 minutes per run
(2-4 hours for all eight) in float32; the host-side tf.data input may be the limit there
(--set=input_backend=device keeps CIFAR on the device).

Short version, the one run on this CPU: the first 150 iterations of the same recipe (at constant lr 0.1, as the
paper's first 32k iterations are), evaluated on the first 1,000 test images every 50 iterations:

    python -m resnet_jax.sweep experiments/degradation.py --workdir=runs/degradation_cpu \\
        --only=plain20,plain56,resnet20,resnet56 --set=data_dir=../shared/data/tfds \\
        --set=num_train_steps=150 --set=lr_decay_factor=1.0 '--set=eval_split=test[:1000]' \\
        --set=log_every_steps=10 --set=eval_every_steps=50 --set=checkpoint_every_steps=50
    for r in plain20 plain56 resnet20 resnet56; do
      python -m resnet_jax.layer_responses --workdir=runs/degradation_cpu/$r
    done
    python -m resnet_jax.report runs/degradation_cpu --out=experiments/results/degradation_cpu

It took 52 minutes of training (plain-20 5, ResNet-20 7, plain-56 17, ResNet-56 24); what it showed is in
experiments/results/degradation_cpu/ (README.md, report.md and the figures).
"""

from resnet_jax import config_lib
from resnet_jax.sweep import Run, overrides_between

DEPTHS = (20, 32, 44, 56)


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
      for residual in (False, True)
      for depth in DEPTHS
  ]
