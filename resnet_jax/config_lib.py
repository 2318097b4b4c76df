"""The paper's recipes as ml_collections configs; the files under configs/ are one-line uses of these.

Every training hyper-parameter lives here or in a config file, never in library code. Field names are part of
the command-line interface (`--config.FIELD=VALUE`), so changing one is a user-visible change.
"""
from __future__ import annotations

import ml_collections


def base_training_config() -> ml_collections.ConfigDict:
  """Fields shared by every training config (values are the CIFAR recipe of section 4.2)."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "cifar10"            # 'cifar10', 'imagenet2012' or 'fake' (random data of the right shapes)
  c.data_dir = ml_collections.config_dict.placeholder(str)               # tfds data dir; None -> $TFDS_DATA_DIR, then tfds's default (~/tensorflow_datasets)
  c.train_split = "train"          # the paper's 45k/5k split: train[:45000] and eval_split=train[45000:]
  c.eval_split = "test"
  c.normalization = "pixel_mean"   # 'pixel_mean' (the paper: subtract the per-pixel mean image) or 'channel'
  c.image_size = 32
  c.input_backend = "tfdata"       # 'tfdata' (tf.data on the host) or 'device' (data set held on the devices)
  c.data_file = ml_collections.config_dict.placeholder(str)              # .npz for input_backend='device' without tfds (e.g. cifar10_jpeg_bytes.npz)
  c.fake_train_size = 1024         # examples in the 'fake' data set
  c.fake_eval_size = 300
  # Optimisation (SGD with momentum; weight decay added to the gradient, as L2 in the loss).
  c.batch_size = 128               # global batch, over all devices and hosts
  c.eval_batch_size = 1000
  c.num_train_steps = 64_000
  c.learning_rate = 0.1
  # Where lr is multiplied by lr_decay_factor: fractions of num_train_steps (values < 1) or iterations (>= 1).
  # The paper's 32k and 48k of 64k iterations are 0.5 and 0.75; fractions keep the shape of the schedule when
  # a run is shortened with --config.num_train_steps=N.
  c.lr_boundaries = (0.5, 0.75)
  c.lr_decay_factor = 0.1
  c.warmup_steps = 0               # constant warm-up lr for this many steps (ResNet-110: 400 at 0.01)
  c.warmup_learning_rate = 0.01
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.weight_decay_bn_and_bias = True  # decay BN scale/bias and dense bias too, as the original Torch/Caffe runs
  # Loop.
  c.log_every_steps = 100
  c.eval_every_steps = 2_000
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 3
  c.seed = 0
  c.half_precision = False         # bfloat16 compute, float32 parameters, BN statistics and loss
  c.parallelism = "jit"            # 'jit' (mesh + NamedSharding) or 'pmap'
  c.bn_sync = True                 # BN statistics over the global batch (True) or each device's sub-batch
  c.skip_nonfinite = False         # skip updates whose loss or gradient is not finite instead of stopping
  c.model = ml_collections.ConfigDict()
  return c


def cifar(depth: int, residual: bool = True, shortcut: str = "A") -> ml_collections.ConfigDict:
  """CIFAR-10 recipe of section 4.2: batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k, wd 1e-4."""
  c = base_training_config()
  c.model.family = "cifar"
  c.model.depth = depth
  c.model.residual = residual
  c.model.shortcut = shortcut
  c.model.stride_placement = "v1"
  c.model.num_classes = 10
  c.model.zero_init_last_bn = False
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.scan = depth > 56        # compile-time flat in depth; same function (tests/test_models.py)
  c.model.remat = False
  if depth >= 110:
    # Section 4.2: "we use 0.01 to warm up the training until the training error is below 80% (about 400
    # iterations), and then go back to 0.1". We use the fixed 400 iterations: deterministic and resumable.
    c.warmup_steps = 400
  return c


def imagenet(depth: int, residual: bool = True, shortcut: str | None = None) -> ml_collections.ConfigDict:
  """ImageNet recipe of section 3.4: batch 256, lr 0.1 /10 at epochs 30/60/90 of 120, wd 1e-4."""
  c = base_training_config()
  c.dataset = "imagenet2012"
  c.train_split = "train"
  c.eval_split = "validation"
  c.image_size = 224
  c.batch_size = 256
  c.eval_batch_size = 250
  steps_per_epoch = 1_281_167 // c.batch_size
  c.num_train_steps = 120 * steps_per_epoch
  c.learning_rate = 0.1 * c.batch_size / 256   # linear scaling rule for other batch sizes
  c.lr_boundaries = (0.25, 0.5, 0.75)         # epochs 30, 60 and 90 of 120
  c.log_every_steps = 100
  c.eval_every_steps = 5 * steps_per_epoch
  c.checkpoint_every_steps = 2_000
  c.model.family = "imagenet"
  c.model.depth = depth
  c.model.residual = residual
  c.model.shortcut = shortcut or ("A" if depth < 50 else "B")
  c.model.stride_placement = "v1"
  c.model.num_classes = 1000
  c.model.zero_init_last_bn = False
  c.model.bn_momentum = 0.9
  c.model.bn_epsilon = 1e-5
  c.model.scan = False
  c.model.remat = False
  return c
