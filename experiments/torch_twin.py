"""The PyTorch twin of our CIFAR training run: the same network, start, recipe and data, trained by PyTorch.

    python experiments/torch_twin.py --config=configs/cifar20.py --workdir=runs/cifar20_torch \\
        --config.data_dir=../shared/data/tfds [--config.FIELD=VALUE ...] [--stop_after=2h30m] [--threads=N]

Why: a reimplementation is judged by its test error, and the paper's 8.75 % for ResNet-20 has the paper's noise,
hardware and unknown details in it. This script trains the same run in PyTorch beside ours (`python -m
resnet_jax.main` with the same flags), so that the two test errors differ only by the two frameworks' code and by
the run-to-run noise of SGD; a gap larger than that noise is a bug in one of them.

What it matches (each read from the same ml_collections config, `--config.FIELD=VALUE` overrides as ours):
* The network and its start: benchmarks/torch_peer.py's twin of config.model (option A shortcuts as strided
  slicing and zero channels, BN momentum 0.1 = flax's 0.9, eps 1e-5), loaded with *our* initial parameters
  (train.init_host_state with config.seed, the values our run starts from).
* The optimiser: torch.optim.SGD with config.momentum, config.nesterov and config.weight_decay added to the gradient
  (all parameters with weight_decay_bn_and_bias, else only the convolution and dense kernels), which is optax's
  add_decayed_weights followed by sgd; the learning rate of each update set from `learning_rate(config, step)`, our
  optax schedule written out (warm-up, then step or cosine decay; tests/test_torch_twin.py compares the two).
* The data: the same decoded uint8 pixels (resnet_jax.data.cifar.load_split: tfds from config.data_dir,
  config.train_split and config.eval_split), normalised by our Normalizer of the training split's statistics
  (config.normalization; 'pixel_mean' is x / 255 minus the per-pixel mean image, no division), then padded by 4
  zeros *after* normalisation (the mean image in pixel terms), a 32x32 crop at offsets uniform in 0..8 and a
  horizontal flip with probability 1/2, in that order. The example order is a fresh permutation every epoch and
  the batches run on across epoch boundaries (a batch may end one epoch and begin the next; none is dropped or
  short), as ours.
* Evaluation every config.eval_every_steps and at the end, on every example of config.eval_split once, BN in
  inference mode; the workdir's files (config.json, metrics.jsonl, normalization.npz, results.json, pieces.jsonl)
  with our layout and field names, so that resnet_jax.report and a reader treat both alike.
* Pieces: `--stop_after` and SIGTERM/SIGINT finish the step, save a checkpoint and exit with status 75; the same
  command resumes exactly (network, BN statistics, momentum, the step, the half-filled logging window), since the
  batches are a function of (config.seed, step) and no random state needs saving.

What it deliberately does not match:
* The random numbers: its own numpy generators, keyed by (config.seed, epoch) for the order and (config.seed,
  step) for crops and flips, not TensorFlow's stateless ones, so its batches are other draws from the same
  distribution. Sharing ours would carry a sampling bug of ours into the judge.
* The arithmetic: float32 eager PyTorch on the CPU (channels_last: faster here than NCHW), with its own
  summation orders, and BN's running variance updated with the unbiased batch variance (PyTorch) where flax uses
  the biased one: a factor n / (n - 1) with n = batch x height x width >= 8,192 at batch 128, 1.2e-4 at most.
  So the two runs agree in distribution, not bit for bit.
* Settings that change how ours computes, not what: steps_per_call, parallelism, input_backend, cpu.*. It refuses
  what it does not implement (half_precision, skip_nonfinite, model.scan, ImageNet) with a one-line error.

A resumed piece continues bit for bit on the same machine with the same --threads; elsewhere it continues the same
run to float32 rounding (which SGD amplifies: one and two threads differ by 1e-4 in the loss after 2 steps and by
some per cent after 5).

Threads: --threads defaults to every CPU the process may use, which is right on an idle machine. Beside other work
give it fewer: PyTorch's OpenMP threads wait for each other at every operation, so two threads sharing two cores
with another busy process train several times slower than one (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import time

# PyTorch before anything imports TensorFlow: loaded after it, torch crashes (tests/conftest.py), and so does
# torch._dynamo (through triton's native library), which torch.optim imports on its first use.
import torch
import torch._dynamo  # noqa: F401
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import numpy as np  # noqa: E402
import torch_peer  # noqa: E402
from resnet_jax import config_lib, errors, pieces, rundir  # noqa: E402
from resnet_jax.data import cifar  # noqa: E402

STATE = "state.pt"  # WORKDIR/checkpoints/<step>/state.pt
FRAMEWORK = "pytorch"
# channels_last: ResNet-20's step ran faster than in NCHW on this project's CPUs (benchmarks/RESULTS.md).
MEMORY_FORMAT = torch.channels_last


class TwinError(errors.UserError, ValueError):
  """A config the twin does not implement, or a workdir that holds another run."""


def check_supported(config) -> None:
  """Refuses configs whose training the twin would not reproduce, each with its reason."""
  problems = []
  if config.dataset not in cifar.CIFAR_DATASETS + ("fake",):
    problems.append(f"dataset={config.dataset!r}: the twin trains the in-memory data sets cifar10, cifar100, fake")
  if config.half_precision:
    problems.append("half_precision=True: the twin trains in float32 only; set --config.half_precision=False")
  if config.skip_nonfinite:
    problems.append("skip_nonfinite=True: the twin stops on a non-finite loss; set --config.skip_nonfinite=False")
  if config.model.get("scan"):
    problems.append("model.scan=True: the twin copies unscanned initial parameters; set --config.model.scan=False")
  if config.get("data_file"):
    problems.append(f"data_file={config.data_file!r}: the twin reads tfds only; set --config.data_dir instead")
  if problems:
    raise TwinError("the PyTorch twin cannot train this config: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------
# The recipe.


def learning_rate(config, step: int) -> float:
  """The learning rate of update `step` (0-based: the step count before it), as train.make_schedule's optax schedule.

  Written out rather than called so that a mistake in our schedule cannot pass into the judge. The decay at a
  boundary b applies from update b on (optax's piecewise_constant_schedule: count >= b), and a boundary inside the
  warm-up is dropped, as ours drops it.
  """
  lr, n, w = config.learning_rate, config.num_train_steps, int(config.warmup_steps)
  if step < w:
    if config.get("warmup_mode", "constant") == "constant":
      return config.warmup_learning_rate
    return config.warmup_learning_rate + (lr - config.warmup_learning_rate) * step / w
  if config.get("lr_schedule", "step") == "cosine":
    decay_steps = max(1, n - w)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step - w, decay_steps) / decay_steps))
  passed = sum(1 for b in config_lib.lr_boundaries(config) if b > w and step >= b)
  return lr * config.lr_decay_factor**passed


def make_optimizer(config, net: torch.nn.Module) -> torch.optim.SGD:
  """SGD with momentum, weight decay added to the gradient: to every parameter with weight_decay_bn_and_bias, else
  to the convolution and dense kernels (the parameters of two or more dimensions) only, as our decay mask."""
  params = list(net.parameters())
  if config.weight_decay_bn_and_bias:
    groups = [{"params": params, "weight_decay": config.weight_decay}]
  else:
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
  return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=config.nesterov)


def initial_network(config) -> torch.nn.Module:
  """torch_peer's twin of config.model holding our run's initial parameters (init_host_state with config.seed)."""
  from resnet_jax import train  # JAX and flax: only to compute where ours starts

  model = train.make_model(config)
  host = train.init_host_state(model, train.make_optimizer(config), config)
  net = torch_peer.build_torch_model(config.model)
  torch_peer.copy_flax_params(net, host.params)
  return net.to(memory_format=MEMORY_FORMAT)


# ----------------------------------------------------------------------------------------------------------
# The data.


def to_torch(images_nhwc: np.ndarray) -> torch.Tensor:
  """float32 [B, H, W, C] -> the network's [B, C, H, W] input, in MEMORY_FORMAT."""
  return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous(memory_format=MEMORY_FORMAT)


class TrainBatches:
  """Training batch `step` as a function of (config.seed, step): each epoch a permutation of the split, drawn by a
  numpy generator keyed by (seed, epoch); the batches read the epochs' orders one after another, so that a batch
  may end one epoch and begin the next. Crop offsets and flips come from a generator keyed by (seed, step)."""

  def __init__(self, config, data: cifar.ArrayData, norm: cifar.Normalizer):
    self.data, self.norm = data, norm
    self.seed, self.batch = int(config.seed), int(config.batch_size)
    self._orders = {}

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # at most the two a batch spans
      self._orders[epoch] = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.data))
    return self._orders[epoch]

  def indices(self, step: int) -> np.ndarray:
    n = len(self.data)
    pos = step * self.batch + np.arange(self.batch)
    epochs = pos // n
    idx = np.empty(self.batch, np.int64)
    for e in np.unique(epochs):  # one, or two where the batch crosses into the next epoch
      idx[epochs == e] = self._order(int(e))[pos[epochs == e] % n]
    return idx

  def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = self.indices(step)
    rng = np.random.default_rng([self.seed, 1, step])
    offsets = rng.integers(0, 2 * cifar.PAD + 1, size=(self.batch, 2))
    flips = rng.integers(0, 2, size=self.batch).astype(bool)
    x = self.norm(self.data.images[idx])
    b, h, w, _ = x.shape
    pad = cifar.PAD
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # zeros after normalisation: the mean image
    rows = offsets[:, 0, None] + np.arange(h)
    cols = offsets[:, 1, None] + np.arange(w)
    x = x[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
    return to_torch(np.ascontiguousarray(x, np.float32)), torch.from_numpy(self.data.labels[idx]).long()


@torch.no_grad()
def evaluate(net, data: cifar.ArrayData, norm, batch_size: int) -> dict:
  """Every example of the split once (the last batch is simply shorter), BN with its running statistics."""
  net.eval()
  loss = wrong = 0.0
  for start in range(0, len(data), batch_size):
    logits = net(to_torch(norm(data.images[start : start + batch_size])))
    labels = torch.from_numpy(data.labels[start : start + batch_size]).long()
    loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    wrong += float((logits.argmax(-1) != labels).sum())
  net.train()
  n = len(data)
  return {"eval_loss": loss / n, "eval_error": wrong / n, "eval_accuracy": 1.0 - wrong / n, "eval_count": n}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: WORKDIR/checkpoints/<step>/state.pt.


def checkpoint_steps(run: rundir.RunDir) -> list[int]:
  d = os.fspath(run.checkpoints)
  if not os.path.isdir(d):
    return []
  return sorted(int(p) for p in os.listdir(d) if p.isdigit() and os.path.isfile(os.path.join(d, p, STATE)))


def save_checkpoint(run: rundir.RunDir, step: int, state: dict, keep: int) -> None:
  """Written into a temporary folder and renamed whole, so that a killed save never looks like a checkpoint; then
  all but the newest `keep` are deleted, and any temporary folder a killed process left (one process writes a
  workdir)."""
  d = os.fspath(run.checkpoints)
  final = os.path.join(d, str(step))
  if os.path.exists(final):
    return
  tmp = f"{final}.tmp{os.getpid()}"
  os.makedirs(tmp, exist_ok=True)
  with open(os.path.join(tmp, STATE), "wb") as f:
    torch.save(state, f)
    f.flush()
    os.fsync(f.fileno())
  os.rename(tmp, final)
  stale = [p for p in os.listdir(d) if re.fullmatch(r"\d+\.tmp\d+", p)]
  for old in [str(s) for s in checkpoint_steps(run)[:-keep]] + stale:
    shutil.rmtree(os.path.join(d, old))


def load_checkpoint(run: rundir.RunDir, step: int) -> dict:
  path = os.path.join(os.fspath(run.checkpoints), str(step), STATE)
  try:
    return torch.load(path, weights_only=True)
  except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"
    raise TwinError(
        f"checkpoint {path} is unreadable ({type(e).__name__}: {errors.one_line(e, 200)}); move it aside "
        f"(mv {os.path.dirname(path)} {os.path.dirname(path)}.unreadable) to resume from the one before"
    ) from None


# ----------------------------------------------------------------------------------------------------------
# The workdir.


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def check_workdir(run: rundir.RunDir, config) -> dict | None:
  """Refuses a workdir of our (JAX) run or of another config; returns results.json of a finished twin run."""
  jax_signs = []
  results = run.read_results()
  if results and not str(results.get("framework", "")).startswith(FRAMEWORK):
    jax_signs.append("results.json")
  if any("jax" in r.get("machine", {}) for r in pieces.read(run.name)):
    jax_signs.append("pieces.jsonl")
  d = os.fspath(run.checkpoints)
  if os.path.isdir(d) and any(p.isdigit() and not os.path.isfile(os.path.join(d, p, STATE)) for p in os.listdir(d)):
    jax_signs.append("checkpoints")
  if jax_signs:
    raise TwinError(
        f"{run.name} holds a resnet_jax (JAX) run, by its {' and '.join(jax_signs)}; give the PyTorch twin its own "
        "--workdir"
    )
  stored = run.read_config()
  if stored is not None:
    diffs = [
        f"{k}: workdir {a!r}, this run {b!r}" for k, a, b in config_lib.differences(config_lib.fill(stored), config)
    ]
    if diffs:
      raise TwinError(
          f"{run.name} holds a run of another config ({'; '.join(diffs)}); use a new --workdir, or rerun with its "
          f"config to resume it"
      )
  if results and results.get("steps", 0) >= config.num_train_steps:
    return results
  return None


def _results(config, run, eval_results, *, step, start_step, t_start) -> dict:
  results = {
      "final_eval_error": eval_results["eval_error"],
      "final_eval_accuracy": eval_results["eval_accuracy"],
      "final_eval_loss": eval_results["eval_loss"],
      "eval_count": eval_results["eval_count"],
      "eval_split": config.eval_split,
      "steps": int(step),
      "resumed_from_step": int(start_step),
      "wall_time_sec": time.time() - t_start,
      "framework": f"{FRAMEWORK} {torch.__version__}",
      "threads": torch.get_num_threads(),
      "config": _config_json(config),
  }
  rows = [r for r in run.read_metrics() if "eval_error" in r]
  if rows and str(config.eval_split).startswith("train"):  # as ours: no minimum chosen on the test set
    best = min(rows, key=lambda r: r["eval_error"])
    results["best_validation_error"], results["best_validation_step"] = best["eval_error"], best["step"]
  run.write_results(results)
  return results


# ----------------------------------------------------------------------------------------------------------
# Training.


class Window:
  """The training metrics between two logged steps. Its sums are part of a checkpoint, so that a run resumed in
  the middle of a window logs the row an uninterrupted run logs; its clock (img/s) is this process's own."""

  EMPTY = {"loss": 0.0, "error": 0.0, "grad_norm": 0.0, "steps": 0}

  def __init__(self, sums: dict | None = None):
    self.sums = dict(sums or self.EMPTY)
    self.restart_clock()

  def restart_clock(self):
    self.t0, self.timed_steps = time.time(), 0

  def add(self, loss: float, error: float, grad_norm: float):
    for k, v in (("loss", loss), ("error", error), ("grad_norm", grad_norm), ("steps", 1)):
      self.sums[k] += v
    self.timed_steps += 1

  def flush(self, batch_size: int, lr: float) -> dict:
    n = max(self.sums["steps"], 1)
    scalars = {
        "train_loss": self.sums["loss"] / n,
        "train_error": self.sums["error"] / n,
        "grad_norm": self.sums["grad_norm"] / n,
        "learning_rate": lr,
        "images_per_sec": self.timed_steps * batch_size / max(time.time() - self.t0, 1e-9),
        "host_rss_mb": pieces.host_rss_mb(),
    }
    self.sums = dict(self.EMPTY)
    return scalars


def train_step(net, opt, images, labels, lr: float, step: int) -> tuple[float, float, float]:
  """One SGD update at learning rate `lr`; (loss, error, gradient norm) of the batch. A non-finite loss or gradient
  stops the run before the update, as ours does (the newest checkpoint is the last good state)."""
  for group in opt.param_groups:
    group["lr"] = lr
  opt.zero_grad(set_to_none=True)
  logits = net(images)
  loss = torch.nn.functional.cross_entropy(logits, labels)
  loss.backward()
  loss_value = loss.item()
  grad_norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item()
  if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
    raise errors.NonFiniteError(
        f"non-finite loss or gradient at step {step + 1} (loss {loss_value}); the update was not applied. Lower "
        f"the learning rate; the newest checkpoint holds the last good state"
    )
  opt.step()
  return loss_value, (logits.argmax(-1) != labels).float().mean().item(), grad_norm


def train_and_evaluate(config, workdir: str, *, deadline: float | None = None) -> dict:
  """Trains the twin (resuming from the workdir's newest checkpoint), evaluates, and writes the workdir's files;
  returns results.json's content. `config` is resolved (cli.start). `deadline` (a time.time(), from --stop_after):
  stop as on SIGTERM after it."""
  from resnet_jax import preemption

  t_start = time.time()
  check_supported(config)
  run = rundir.RunDir(workdir)
  if run.is_url:
    raise TwinError(f"--workdir={run.name}: the twin writes to a local folder only")
  run.check_writable()
  finished = check_workdir(run, config)
  if finished:
    logging.info(
        "%s finished already (%d steps, eval error %.4f on %s); nothing to do",
        run.name,
        finished["steps"],
        finished["final_eval_error"],
        finished["eval_split"],
    )
    return finished

  train_data = cifar.load_split(config, "train")
  eval_data = cifar.load_split(config, "eval")
  if config.batch_size > len(train_data):
    raise config_lib.ConfigError(
        [f"batch_size={config.batch_size} exceeds the {len(train_data)} training examples of {config.train_split!r}"]
    )
  norm = cifar.normalizer(config, train_data)
  cifar.log_data_summary(config, train_data, eval_data)
  batches = TrainBatches(config, train_data, norm)

  saved = checkpoint_steps(run)
  start_step = saved[-1] if saved else 0
  if saved:
    state = load_checkpoint(run, start_step)
    net = torch_peer.build_torch_model(config.model).to(memory_format=MEMORY_FORMAT)
    net.load_state_dict(state["model"])
    opt = make_optimizer(config, net)
    opt.load_state_dict(state["optimizer"])
    window = Window(state["window"])
    logging.info("resumed from %s/%d", run.checkpoints, start_step)
  else:
    net = initial_network(config)
    opt = make_optimizer(config, net)
    window = Window()
  net.train()
  run.truncate_metrics(start_step)
  run.write_config(config)
  run.write_normalization(norm.mean, norm.std)
  metrics = run.metrics_log()

  def save(step):
    state = {"step": step, "model": net.state_dict(), "optimizer": opt.state_dict(), "window": dict(window.sums)}
    save_checkpoint(run, step, state, config.keep_checkpoints)

  stop = preemption.StopRequest(deadline)
  piece = pieces.Piece(run.name, start_step, started=t_start, torch=torch.__version__, threads=torch.get_num_threads())
  eval_results, step, outcome = {}, start_step, "error"
  window.restart_clock()
  try:
    for step in range(start_step + 1, config.num_train_steps + 1):
      lr = learning_rate(config, step - 1)
      window.add(*train_step(net, opt, *batches(step - 1), lr, step - 1))
      is_last = step == config.num_train_steps
      scalars = {}
      if step % config.log_every_steps == 0 or is_last:
        scalars = window.flush(config.batch_size, lr)
        logging.info(
            "step %d/%d  loss %.4f  train error %.4f  lr %.4g  %.0f img/s",
            step,
            config.num_train_steps,
            scalars["train_loss"],
            scalars["train_error"],
            lr,
            scalars["images_per_sec"],
        )
      if step % config.eval_every_steps == 0 or is_last:
        eval_results = evaluate(net, eval_data, norm, config.eval_batch_size)
        scalars.update(eval_results)
        logging.info(
            "step %d  eval error %.4f  loss %.4f  (%d examples)",
            step,
            eval_results["eval_error"],
            eval_results["eval_loss"],
            eval_results["eval_count"],
        )
      if scalars:
        metrics.write(step, scalars)
        window.restart_clock()
      if step % config.checkpoint_every_steps == 0 or is_last:
        save(step)
      if stop.requested(step - 1, step) and not is_last:
        save(step)
        outcome = "stop_after" if stop.deadline_passed else "signal"
        cause = "--stop_after's time limit passed" if stop.deadline_passed else "stopped by a signal"
        raise errors.Preempted(
            f"{cause} after step {step}; checkpoint saved in {run.checkpoints}/{step}. Rerun the same command to "
            "resume exactly there."
        )
    outcome = "finished"
  except BaseException as e:  # KeyboardInterrupt too: the piece says how it ended
    if outcome == "error":
      outcome = f"{type(e).__name__}: {errors.one_line(e, 200)}"
    raise
  finally:
    stop.restore()
    if step > start_step:
      piece.finish(step, outcome)

  if not eval_results:  # the final checkpoint was saved but results.json was not: report it
    eval_results = evaluate(net, eval_data, norm, config.eval_batch_size)
  return _results(config, run, eval_results, step=step, start_step=start_step, t_start=t_start)


# ----------------------------------------------------------------------------------------------------------
# The command.


def run(config, workdir: str, *, restart: bool = False, stop_after: str | None = None, threads: int | None = None):
  """The command once its flags are read: the config checked (cli.start, with our malloc settings), then training;
  a user error ends as one line and its exit status, a stop as status 75. `restart`: the process may restart
  itself once for huge pages (only when it runs as the program)."""
  from resnet_jax import cli

  with cli.user_errors():
    deadline = pieces.deadline(stop_after)
    if threads is not None and threads < 1:
      raise TwinError(f"--threads={threads}: give a positive number of threads")
  config = cli.start(config, restart=restart)
  # Both global to PyTorch: restored afterwards for a caller that goes on (a test).
  old = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
  torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
  torch.use_deterministic_algorithms(True)
  try:
    with cli.user_errors():
      return train_and_evaluate(config, workdir, deadline=deadline)
  finally:
    torch.set_num_threads(old[0])
    torch.use_deterministic_algorithms(old[1])


_FLAGS: dict = {}


def define_flags() -> None:
  """The command's flags (defined only when run as a program, so that importing this module defines none)."""
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True),
      workdir=flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results."),
      stop_after=flags.DEFINE_string("stop_after", None, pieces.STOP_AFTER_HELP),
      threads=flags.DEFINE_integer("threads", None, "torch.set_num_threads (default: every CPU this process may use)."),
  )
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  from resnet_jax import cli

  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  run(f["config"], f["workdir"], restart=__name__ == "__main__", stop_after=f["stop_after"], threads=f["threads"])


if __name__ == "__main__":
  from resnet_jax import cli

  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # JAX only computes the initial parameters here: keep it off GPUs
  define_flags()
  cli.run(main)
