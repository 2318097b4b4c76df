"""The paper's recipes as ml_collections configs; the files under configs/ are one-line uses of these.

Every training hyper-parameter lives here or in a config file, never in library code. Field names are part of
the command-line interface (`--config.FIELD=VALUE`), so changing one is a user-visible change.
"""

from __future__ import annotations

import json
from typing import Sequence

import ml_collections

from resnet_jax import errors

# Config files import this module, and so does everything that builds a model from a config: what the checks and
# the workdir need (cpu, models, rundir; JAX, etils) is imported inside the functions that use it, so that neither
# imports more (tests/test_cpu.py checks that building a model leaves resnet_jax.cpu unimported).

# ImageNet evaluation protocols (resnet_jax.evaluate): 256/224 centre crop, 10-crop, fully-convolutional multi-scale.
EVAL_PROTOCOLS = ("single", "10crop", "multiscale")

# Fields that say how a run is observed or computed, not what it computes: results agree to float32 rounding
# whatever their values (a data_dir spelling, logging intervals, the CPU kernels and malloc settings, ...). A sweep
# reuses a run directory and a run resumes a checkpoint when only these differ; any other difference is refused.
BOOKKEEPING_FIELDS = frozenset(
    {
        "data_dir",
        "compilation_cache_dir",
        "hang_timeout_s",
        "profile_first_step",
        "profile_num_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "eval_batch_size",
        "input_backend",
        "data_file",
        "model.remat",
        "steps_per_call",
        "cpu.convolutions",
        "cpu.weight_grad_chunk",
        "cpu.materialize_blocks",
        "cpu.host_malloc",
    }
)


# The loop's events (log, evaluate, save) happen between calls, so these must be multiples of steps_per_call.
INTERVAL_FIELDS = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")


class ConfigError(errors.UserError, ValueError):
  """One or more config fields are invalid; the message lists each with its fix.

  `problems` holds them one by one (a sweep reports them per run), each naming the field and the fix.
  """

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__("invalid config:\n  - " + "\n  - ".join(self.problems))


def base_training_config() -> ml_collections.ConfigDict:
  """Fields shared by every training config (values are the CIFAR recipe of section 4.2)."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "cifar10"  # 'cifar10', 'imagenet2012' or 'fake' (random data of the right shapes)
  # tfds data dir; None -> $TFDS_DATA_DIR, then tfds's default (~/tensorflow_datasets).
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.train_split = "train"  # the paper's 45k/5k split: train[:45000] and eval_split=train[45000:]
  c.eval_split = "test"
  c.normalization = "pixel_mean"  # 'pixel_mean' (the paper: subtract the per-pixel mean image) or 'channel'
  c.image_size = 32
  c.input_backend = "tfdata"  # 'tfdata' (tf.data on the host) or 'device' (data set held on the devices)
  # .npz for input_backend='device' without tfds (e.g. cifar10_jpeg_bytes.npz).
  c.data_file = ml_collections.config_dict.placeholder(str)
  c.fake_train_size = 1024  # examples in the 'fake' data set
  c.fake_eval_size = 300
  # Optimisation (SGD with momentum; weight decay added to the gradient, as L2 in the loss).
  c.batch_size = 128  # global batch, over all devices and hosts
  c.eval_batch_size = 1000  # global; each device evaluates at least its training share (parallel.eval_batch)
  c.num_train_steps = 64_000
  c.learning_rate = 0.1
  # Where lr is multiplied by lr_decay_factor: fractions of num_train_steps (values < 1) or iterations (>= 1).
  # The paper's 32k and 48k of 64k iterations are 0.5 and 0.75; fractions keep the shape of the schedule when
  # a run is shortened with --config.num_train_steps=N.
  c.lr_boundaries = (0.5, 0.75)
  c.lr_decay_factor = 0.1
  c.warmup_steps = 0  # constant warm-up lr for this many steps (ResNet-110: 400 at 0.01)
  c.warmup_learning_rate = 0.01
  c.warmup_mode = "constant"  # 'constant' at warmup_learning_rate, or 'linear' from it to learning_rate
  c.lr_schedule = "step"  # 'step' (divide at lr_boundaries) or 'cosine'
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
  c.half_precision = False  # bfloat16 compute, float32 parameters, BN statistics and loss
  c.parallelism = "jit"  # 'jit' (mesh + NamedSharding) or 'pmap'
  # Training steps per compiled call, so that a GPU does not wait for the host to launch each small step and a CPU
  # reuses the step's buffers; needs parallelism='jit', and divides the log/eval/checkpoint intervals. Same results
  # for any value. 0: auto (with jit, up to 4 on CPUs; on GPUs/TPUs up to 100 with input_backend='device' and 1 with
  # host batches; 1 with pmap).
  c.steps_per_call = 0
  c.bn_sync = True  # BN statistics over the global batch (True) or each device's sub-batch
  # CPU speed settings, each the same mathematics and without effect on GPUs/TPUs (resnet_jax/cpu: what each
  # does; benchmarks/RESULTS.md: what each gains).
  c.cpu = ml_collections.ConfigDict()
  c.cpu.convolutions = "auto"  # 'auto' (oneDNN if built, one device; else Eigen), 'onednn', 'eigen', 'xla_default'
  c.cpu.weight_grad_chunk = -1  # -1: 8 with XLA's convolutions on CPU, else off; 0: off; N: chunks of N examples
  c.cpu.materialize_blocks = ml_collections.config_dict.placeholder(bool)  # None: on for CPU
  c.cpu.host_malloc = "auto"  # 'auto' (huge pages for malloc on CPU-only runs), 'huge_pages', 'system'
  c.skip_nonfinite = False  # skip updates whose loss or gradient is not finite instead of stopping
  # Stop the job, with every thread's stack, when no result comes back from the devices for this long once the
  # first call has compiled (resnet_jax/hang.py); 0: never.
  c.hang_timeout_s = 1800.0
  # A profile (jax.profiler, process 0) of the calls holding these steps, into WORKDIR/profile (resnet_jax/tracing.py);
  # 0: none.
  c.profile_first_step = 0
  c.profile_num_steps = 5
  # JAX's persistent compilation cache (a folder or a gs:// URL, shared by a pod's processes): restarts load the
  # compiled steps instead of compiling them. None: JAX_COMPILATION_CACHE_DIR, if set.
  c.compilation_cache_dir = ml_collections.config_dict.placeholder(str)
  return c


def model_config(
    family: str, depth: int, residual: bool = True, shortcut: str = "A", *, num_classes: int = 10, scan: bool = False
) -> ml_collections.ConfigDict:
  """config.model of every recipe: the paper's network (resnet_jax.models.create_model builds it)."""
  m = ml_collections.ConfigDict()
  m.family = family  # 'cifar' (3x3 stem, 16/32/64 filters) or 'imagenet' (7x7 stem and max pool, 64 to 512)
  m.depth = depth
  m.residual = residual  # False: the plain twin, the same layers without shortcuts
  m.shortcut = shortcut  # section 3.3: 'A' zero-padded identity, 'B' projections where the shape changes, 'C' all
  m.stride_placement = "v1"  # 'v1' (the paper: stride on a bottleneck's first 1x1) or 'v1.5' (on its 3x3)
  m.num_classes = num_classes
  m.zero_init_last_bn = False
  m.bn_momentum = 0.9
  m.bn_epsilon = 1e-5
  m.scan = scan
  m.remat = False
  return m


def cifar(depth: int, residual: bool = True, shortcut: str = "A") -> ml_collections.ConfigDict:
  """CIFAR-10 recipe of section 4.2: batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k, wd 1e-4."""
  c = base_training_config()
  # nn.scan makes compile time flat in depth (ResNet-1202 compiles like ResNet-56) and computes the same
  # function, but on CPU the scanned step runs several times slower (benchmarks/RESULTS.md): only 1202 uses it.
  c.model = model_config("cifar", depth, residual, shortcut, num_classes=10, scan=depth >= 1202)
  if depth >= 110:
    # Section 4.2: "we use 0.01 to warm up the training until the training error is below 80% (about 400
    # iterations), and then go back to 0.1". We use the fixed 400 iterations: deterministic and resumable.
    c.warmup_steps = 400
  return c


IMAGENET_TRAIN_SIZE = 1_281_167


def imagenet(depth: int, residual: bool = True, shortcut: str | None = None) -> ml_collections.ConfigDict:
  """ImageNet recipe of section 3.4: batch 256, lr 0.1 /10 at epochs 30/60/90 of 120, wd 1e-4.

  `learning_rate` is given per `lr_reference_batch_size` (256) images and the run length in `num_epochs`;
  `resolve()` turns them into the lr and step count of the actual batch, so `--config.batch_size=1024` gives
  lr 0.4 (the linear scaling rule of Goyal et al.) and the same 120 epochs in fewer steps. An explicit
  `--config.num_train_steps=N` wins over `num_epochs`.
  """
  c = base_training_config()
  c.dataset = "imagenet2012"
  c.train_split = "train"
  c.eval_split = "validation"
  c.image_size = 224
  c.batch_size = 256
  c.eval_batch_size = 250
  c.train_size = IMAGENET_TRAIN_SIZE
  c.num_epochs = 120.0
  c.num_train_steps = ml_collections.config_dict.placeholder(int)  # None: num_epochs of train_size
  c.learning_rate = 0.1
  c.lr_reference_batch_size = 256  # lr = learning_rate * batch_size / 256 (linear scaling rule)
  c.lr_boundaries = (0.25, 0.5, 0.75)  # epochs 30, 60 and 90 of 120
  c.warmup_epochs = 0.0  # e.g. 5 epochs of linear warm-up for large batches
  c.warmup_mode = "linear"
  c.warmup_learning_rate = 0.0
  c.log_every_steps = 100
  c.eval_every_steps = 5 * IMAGENET_TRAIN_SIZE // 256
  c.checkpoint_every_steps = 2_000
  # Input (resnet_jax/data/imagenet_images.py, imagenet_train.py, imagenet_eval.py).
  c.augmentation = "paper"  # 'paper' (scale 256-480, crop, flip, PCA colour) or 'inception'
  c.scale_range = (256, 480)  # shorter side, uniform ('paper')
  c.pca_std = 0.1  # AlexNet-style colour augmentation ('paper'); 0 turns it off
  c.crop_area_range = (0.08, 1.0)  # 'inception'
  c.crop_aspect_range = (3 / 4, 4 / 3)
  c.eval_resize = 256  # 'single' and '10crop': shorter side before the 224 crops
  c.multiscale_sizes = (224, 256, 384, 480, 640)
  c.multiscale_aspects = (1.0, 4 / 3, 3 / 2)
  c.shuffle_buffer_size = ml_collections.config_dict.placeholder(int)  # None: 16 x local batch
  c.manual_dir = ml_collections.config_dict.placeholder(str)  # None: <data_dir>/downloads/manual
  c.normalization = "pixel_mean"  # ImageNet: per-channel mean subtraction (see imagenet_images.py)
  # Table 2 uses option A for 18 and 34 layers, B from 50 on.
  c.model = model_config("imagenet", depth, residual, shortcut or ("A" if depth < 50 else "B"), num_classes=1000)
  return c


def imagenet_flax_like(depth: int = 50) -> ml_collections.ConfigDict:
  """The recipe of flax's examples/imagenet, for comparison with it: v1.5 bottlenecks, inception crop,
  5 warm-up epochs then cosine decay over 100 epochs, lr 0.1 per 256 images."""
  c = imagenet(depth)
  c.model.stride_placement = "v1.5"
  c.augmentation = "inception"
  c.num_epochs = 100
  c.lr_schedule = "cosine"
  c.warmup_epochs = 5.0
  return c


def imagenet_torchvision(depth: int = 50) -> ml_collections.ConfigDict:
  """The networks of torchvision's (and timm's) ImageNet ResNets: v1.5 bottlenecks, option B shortcuts, and
  torchvision's preprocessing (pixels / 255 normalised by its mean and std; resize 256, centre crop 224). Configs
  written by `python -m resnet_jax.convert from-torchvision` are this; fine-tune from them with
  --config=configs/imagenet_torchvision.py:DEPTH."""
  c = imagenet(depth, shortcut="B")
  c.model.stride_placement = "v1.5"
  c.normalization = "torchvision"
  c.augmentation = "inception"
  return c


def flatten(config) -> dict:
  """{'model.depth': 20, ...}: every leaf field of a ConfigDict (or dict) by its dotted path."""
  out = {}
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update({f"{k}.{kk}": vv for kk, vv in flatten(v).items()})
    else:
      out[k] = v
  return out


def resolve(config, *, with_devices: bool = False) -> ml_collections.ConfigDict:
  """The config as a run holds it, checked: a copy with epoch-based and batch-relative fields turned into steps and
  an absolute learning rate, then `validate`d (ConfigError listing every problem).

  Every command passes its config through here once (cli.start), and the library functions it calls
  (train.train_and_evaluate, inference.load_for_inference, the benchmarks, ...) take the result as it is.
  `with_devices`: the checks that need JAX's backend too (see validate).
  """
  c = _resolved(config)
  validate(c, with_devices=with_devices)
  return c


def _resolved(config) -> ml_collections.ConfigDict:
  """resolve's copy, unchecked. The epoch and reference-batch fields are the ImageNet recipes' only; once resolved
  they read as steps and lr_reference_batch_size=0, so that resolving again changes nothing."""
  c = ml_collections.ConfigDict(config.to_dict())
  with c.unlocked():
    epochs_to_steps = lambda e: int(e * c.train_size // c.batch_size)
    if c.num_train_steps is None and c.get("num_epochs"):
      c.num_train_steps = epochs_to_steps(c.num_epochs)
    if c.get("warmup_epochs"):
      c.warmup_steps = epochs_to_steps(c.warmup_epochs)
      c.warmup_epochs = 0.0
    if c.get("lr_reference_batch_size"):
      c.learning_rate = c.learning_rate * c.batch_size / c.lr_reference_batch_size
      c.warmup_learning_rate = c.warmup_learning_rate * c.batch_size / c.lr_reference_batch_size
      c.lr_reference_batch_size = 0
  return c


def _recipe_of(stored: dict) -> ml_collections.ConfigDict:
  """The recipe a stored config was made from, by its network: config_lib.cifar or imagenet of its model's family,
  depth, residual and shortcut, imagenet_torchvision for a net converted from torchvision (convert.py writes that
  recipe, recognised by its normalization)."""
  model = stored.get("model")
  if not isinstance(model, dict) or not isinstance(model.get("depth"), int):
    raise ValueError("it holds no model.depth: not a config of resnet_jax")
  depth, residual, shortcut = model["depth"], model.get("residual", True), model.get("shortcut")
  if model.get("family", "cifar") == "cifar":  # a stored config without model.family is of a CIFAR net
    return cifar(depth, residual, shortcut or "A")
  if stored.get("normalization") == "torchvision":
    return imagenet_torchvision(depth)
  return imagenet(depth, residual, shortcut)


def fill(stored: dict) -> ml_collections.ConfigDict:
  """A stored config (a workdir's config.json, results.json's, a checkpoint's record) with every field it lacks
  taken from its resolved recipe (_recipe_of): the value with which a run whose record lacks the field trained.

  Stored configs are resolved (training and convert write them so), hence the resolved recipe: an ImageNet config
  without lr_reference_batch_size holds an absolute learning rate. Fields of the stored config that no recipe has
  (settings this code does not read) are kept; `differences` and the code pass them by.
  """

  def overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
      out[k] = overlay(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out

  return ml_collections.ConfigDict(overlay(_resolved(_recipe_of(stored)).to_dict(), stored))


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained (or converted) with: its config.json, `fill`ed, so that every field reads
  plainly (config.FIELD) and holds the value training had."""
  from resnet_jax import rundir

  run = rundir.RunDir(workdir)
  try:
    stored = run.read_config()
    config = None if stored is None else fill(stored)
  except (OSError, ValueError) as e:
    raise errors.NotFoundError(f"{run / rundir.CONFIG} is unreadable ({e}); pass --config=... instead") from None
  if config is None:
    raise errors.NotFoundError(
        f"{run / rundir.CONFIG} does not exist: {run.name} is not a training directory of resnet_jax (pass "
        "--config=..., or train or convert into it first)"
    )
  return config


def differences(stored, wanted) -> list[tuple[str, object, object]]:
  """(field, stored value, wanted value) of each field in which a stored config (`fill`ed) and the wanted one
  differ, other than BOOKKEEPING_FIELDS: what a resumed checkpoint or a reused run directory must agree on.

  Only fields that both hold count: one that only the stored config has is a setting this code does not read, one
  that only the wanted has belongs to another recipe's family (whose network differs anyway).
  """
  a, b = (flatten(json.loads(ml_collections.ConfigDict(c).to_json_best_effort())) for c in (stored, wanted))
  return [(k, a[k], b[k]) for k in sorted(set(a) & set(b)) if k not in BOOKKEEPING_FIELDS and a[k] != b[k]]


def lr_boundaries(config) -> list[int]:
  """config.lr_boundaries as iterations; values below 1 are fractions of num_train_steps."""
  return [max(1, int(round(b * config.num_train_steps))) if b < 1 else int(b) for b in config.lr_boundaries]


def validate(config, *, with_devices: bool = True) -> None:
  """Checks every field a run needs before any compilation or data loading; lists every problem found.

  `with_devices=False` leaves out what needs JAX's backend (whether the CPU plan can be honoured): the entry points
  check the rest first, before they may restart for huge pages. The batch against the processes and devices is
  inputs.Data's to check (inputs.check_batch), before it loads anything.
  """
  from resnet_jax import cpu, models

  problems = []

  def check(cond, msg):
    if not cond:
      problems.append(msg)

  def positive_int(field):
    v = config[field]
    ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
    check(ok, f"{field}={v!r}: must be a positive integer")
    return ok

  for f in (
      "batch_size",
      "eval_batch_size",
      "num_train_steps",
      "log_every_steps",
      "eval_every_steps",
      "checkpoint_every_steps",
      "keep_checkpoints",
  ):
    positive_int(f)
  check(
      isinstance(config.learning_rate, (int, float)) and config.learning_rate > 0,
      f"learning_rate={config.learning_rate!r}: must be a positive number",
  )
  check(0 <= config.momentum < 1, f"momentum={config.momentum!r}: must be in [0, 1)")
  for field in ("profile_first_step", "profile_num_steps"):
    value = config[field]
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        f"{field}={value!r}: a step number (profile_first_step=0: no profile)",
    )
  check(
      isinstance(config.hang_timeout_s, (int, float)) and config.hang_timeout_s >= 0,
      f"hang_timeout_s={config.hang_timeout_s!r}: seconds without progress before the job is stopped (0: never)",
  )
  check(config.weight_decay >= 0, f"weight_decay={config.weight_decay!r}: must be >= 0")
  check(config.parallelism in ("jit", "pmap"), f"parallelism={config.parallelism!r}: use 'jit' or 'pmap'")
  normalizations = ("pixel_mean", "channel") + (("torchvision",) if config.dataset == "imagenet2012" else ())
  check(
      config.normalization in normalizations,
      f"normalization={config.normalization!r}: valid values for {config.dataset} are {list(normalizations)}",
  )
  check(
      config.input_backend in ("tfdata", "device"),
      f"input_backend={config.input_backend!r}: use 'tfdata' or 'device'",
  )
  check(
      config.input_backend == "tfdata" or config.dataset in ("cifar10", "cifar100", "fake"),
      f"input_backend='device' holds small data sets (cifar10, fake) in device memory, not "
      f"{config.dataset!r}; use input_backend='tfdata'",
  )
  if isinstance(config.num_train_steps, int) and config.num_train_steps > 0:
    bounds = lr_boundaries(config)
    check(
        all(0 < b <= config.num_train_steps for b in bounds) and bounds == sorted(bounds),
        f"lr_boundaries={list(config.lr_boundaries)} -> steps {bounds}: must increase and lie inside the run "
        f"(0, num_train_steps={config.num_train_steps}]; give fractions such as [0.5, 0.75] to scale with "
        f"num_train_steps",
    )
    check(
        0 <= config.warmup_steps < config.num_train_steps,
        f"warmup_steps={config.warmup_steps}: must be in [0, num_train_steps={config.num_train_steps})",
    )
  if config.warmup_steps:
    check(config.warmup_learning_rate > 0, f"warmup_learning_rate={config.warmup_learning_rate}: must be > 0")
  cpu_problems = cpu.check(config)
  problems.extend(cpu_problems)
  if with_devices and not cpu_problems:
    try:
      cpu.plan(config)
    except ValueError as e:
      problems.append(str(e))
  if config.parallelism == "pmap" and config.input_backend == "device":
    problems.append("input_backend='device' supports parallelism='jit' only; set --config.parallelism=jit")
  k = config.steps_per_call
  if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
    problems.append(f"steps_per_call={k!r}: must be 0 (auto) or a positive integer")
  elif k > 1:
    if config.parallelism != "jit":
      problems.append(
          f"steps_per_call={k} runs {k} steps in one compiled call, which needs parallelism='jit': set "
          "--config.parallelism=jit, or --config.steps_per_call=1"
      )
    for field in INTERVAL_FIELDS:
      v = config[field]
      if isinstance(v, int) and v > 0 and v % k:
        problems.append(
            f"{field}={v} is not a multiple of steps_per_call={k}: logging, evaluation and "
            f"checkpoints happen between calls of {k} steps; use a multiple of {k} (e.g. "
            f"{max(k, v // k * k)}) or a steps_per_call that divides {v}"
        )
  try:
    models.create_model(config.model)
  except (ValueError, AttributeError, KeyError) as e:
    problems.append(f"model: {e}")
  if problems:
    raise ConfigError(problems)
