"""What the tests share besides fixtures: paths, a runner for the command-line tools, and checks on run outputs.

Test files import this module (`from helpers import ...`); conftest.py keeps only pytest's hooks and fixtures.
"""

import contextlib
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
TFDS_DIR = SHARED_DATA / "tfds"


def run_cli(module, *args, env=None, check=True, timeout=900):
  """Runs `python -m module args...` from the repository root; returns the CompletedProcess."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run(
      [sys.executable, "-m", module, *map(str, args)],
      cwd=REPO,
      capture_output=True,
      text=True,
      env=full_env,
      timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
  return proc


@dataclasses.dataclass
class Finished:
  """What a command run in this process left: its exit status and what it wrote to stderr (logs included)."""

  returncode: int
  stderr: str


def train_in_process(*args, check=True) -> Finished:
  """`python -m resnet_jax.main ARGS` run inside this process (main.run with the config from the same flag
  definitions), without starting a Python, importing JAX and loading compiled programs again for each run.

  For the tests of the training machinery (resume, errors, writers); tests/test_cli.py and a few end-to-end tests
  run the real command. A user error ends as it does in the command: its one-line message on stderr and its exit
  status (cli.fail's SystemExit), which this returns instead of exiting.
  """
  from resnet_jax import main, sweep

  args = [str(a) for a in args]
  stop_after = [a.split("=", 1)[1] for a in args if a.startswith("--stop_after=")]
  args = [a for a in args if not a.startswith("--stop_after=")]
  config = sweep.config_from_argv(args)
  (workdir,) = [a.split("=", 1)[1] for a in args if a.startswith("--workdir=")]
  stderr = io.StringIO()
  handler = logging.StreamHandler(stderr)
  handler.setFormatter(logging.Formatter("%(levelname)s %(filename)s:%(lineno)d] %(message)s"))
  root = logging.getLogger()  # the project logs with the standard logging module, absl's through its "absl" child
  level = root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    with contextlib.redirect_stderr(stderr):
      try:
        main.run(config, workdir, stop_after=stop_after[0] if stop_after else None)
        returncode = 0
      except SystemExit as e:
        returncode = e.code if isinstance(e.code, int) else 1
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
  finished = Finished(returncode, stderr.getvalue())
  if check and returncode != 0:
    raise AssertionError(f"resnet_jax.main {' '.join(args)} exited {returncode}:\n{finished.stderr[-6000:]}")
  return finished


def predict_in_process(workdir, *images, top=5) -> list[dict]:
  """The rows `python -m resnet_jax.predict --workdir=WORKDIR --json --top=TOP IMAGES` prints (the workdir's
  config.json, predict.predict_workdir), computed in this process.

  For tests of what is predicted; tests/test_convert.py runs the command itself (with unreadable images: exit
  status 2, no traceback). Every image must be readable here.
  """
  from resnet_jax import cli, config_lib, predict

  workdir = os.fspath(workdir)
  config = cli.start(config_lib.load_workdir_config(workdir), restart=False)
  rows = []
  for path, best, error in predict.predict_workdir(workdir, config, [str(i) for i in images], top=top):
    assert error is None, f"{path}: {error}"
    rows.append(json.loads(json.dumps({"image": path, "top": best})))  # as the command's JSON line reads back
  return rows


def evaluate_in_process(workdir, *config_args, protocols=("single",)) -> list[dict]:
  """The rows `python -m resnet_jax.evaluate --workdir=WORKDIR CONFIG_ARGS --json --protocol=P...` prints
  (evaluate.evaluate_workdir), computed in this process: the config from --config=FILE and --config.FIELD=VALUE
  arguments (the same flag definition as the command's), else the workdir's config.json.

  For tests of what is evaluated; tests/test_imagenet.py runs the command itself.
  """
  from resnet_jax import cli, config_lib, evaluate, sweep

  workdir = os.fspath(workdir)
  if config_args:
    config = sweep.config_from_argv([*map(str, config_args), f"--workdir={workdir}"])
  else:
    config = config_lib.load_workdir_config(workdir)
  config = cli.start(config, restart=False, join_cluster=True)
  return [json.loads(json.dumps(r)) for r in evaluate.evaluate_workdir(workdir, config, protocols)]


def read_metrics(workdir):
  """The rows of a run's metrics.jsonl, read as the project reads them (resnet_jax.rundir)."""
  from resnet_jax import rundir

  return rundir.RunDir(os.fspath(workdir)).read_metrics()


# Fake data held on the device and ResNet-8 (one block per stage: every kind of block, shortcut and downsampling
# of the CIFAR nets, compiled in a few seconds): for tests of the machinery (resume, errors, writers), not of
# learning. Such a run never imports TensorFlow (seconds per command); tests of the tf.data input add
# --config.input_backend=tfdata.
SMALL = [
    "--config.dataset=fake",
    "--config.input_backend=device",
    "--config.model.depth=8",
    "--config.batch_size=32",
    "--config.eval_batch_size=64",
    "--config.fake_train_size=256",
    "--config.fake_eval_size=100",
]


def small_cifar_npz(path, *, n_train, n_test):
  """The first examples of the shared JPEG-compressed CIFAR-10 .npz (config.data_file), in its own layout: for runs
  that need real images but not 50,000 of them to decode."""
  import numpy as np

  with np.load(SHARED_DATA / "cifar10_jpeg_bytes.npz") as z:
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
      offsets = z[f"{split}_offsets"][: n + 1]
      out[f"{split}_jpeg"] = z[f"{split}_jpeg"][: offsets[-1]]
      out[f"{split}_offsets"] = offsets
      out[f"y_{split}"] = z[f"y_{split}"][:n]
  np.savez(path, **out)
  return path


class HostBatches:
  """inputs.Data's interface for compiled_steps.CompiledSteps.train over given host batches (batch i at step i;
  the steps past the last, which CompiledSteps reads ahead, wrap around)."""

  draw = None  # host batches, as tf.data's

  def __init__(self, *batches):
    self.batches = batches

  def train_batch(self, step: int) -> dict:
    return self.batches[step % len(self.batches)]


def train_on_batch(steps, state, batch, rng):
  """(state, step info) after one training step of `steps` (a CompiledSteps) on this process's share of a host
  batch: the call the training loop makes for one step on tf.data's batches."""
  import jax
  from resnet_jax import train

  window = steps.place_window(train.TrainMetrics.empty())
  state, _, infos = steps.train(state, window, HostBatches(batch), 0, 1, rng)
  return state, jax.tree.map(lambda x: x[0], infos)


def lower_train_on_batch(steps, state, batch, rng):
  """The jax Lowered of train_on_batch's call (`state` may be abstract: shapes and shardings)."""
  from resnet_jax import train

  window = steps.place_window(train.TrainMetrics.empty())
  return steps.lower_train(state, window, HostBatches(batch), 0, 1, rng)


def load_state(workdir, step):
  """The TrainState of a checkpoint, as host arrays."""
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def assert_trees_equal(a, b):
  """Every leaf equal, bit for bit."""
  import jax
  import numpy as np

  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def without_host_measures(rows):
  """Metrics rows without what measures the machine rather than the training (speed, resident memory)."""
  return [{k: v for k, v in r.items() if k not in ("images_per_sec", "host_rss_mb")} for r in rows]


def small_run_args(wd, steps=24):
  """A ResNet-8 run on fake data held on the device, logged every step, checkpointed every 4."""
  return [
      "--config=configs/cifar20.py",
      f"--workdir={wd}",
      *SMALL,
      f"--config.num_train_steps={steps}",
      "--config.log_every_steps=1",
      "--config.eval_every_steps=8",
      "--config.checkpoint_every_steps=4",
  ]


def random_torchvision(depth, seed=0, **kwargs):
  """torchvision's resnetNN in eval mode with random weights and non-trivial BN statistics and affine terms."""
  import torch
  import torchvision

  torch.manual_seed(seed)
  net = getattr(torchvision.models, f"resnet{depth}")(**kwargs)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  return net.eval()


def pad_as_flax_same(net):
  """`net` (PyTorch) with each strided k x k convolution padded as flax's 'SAME' instead of k // 2 on each side: less
  before than after (0 and 1 for a 3x3 of stride 2 on an even size), one pixel off the shortcut's sampling. For
  checks that a comparison with ours is tight enough to see that."""
  import torch

  def pad(module, args):
    (k, _), (s, _), n = module.kernel_size, module.stride, args[0].shape[-1]
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return (torch.nn.functional.pad(args[0], (total // 2, total - total // 2) * 2),)

  for m in net.modules():
    if isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1 and m.kernel_size[0] > 1:
      m.padding = (0, 0)
      m.register_forward_pre_hook(pad)
  return net


def numpy_state(net):
  return {k: v.numpy() for k, v in net.state_dict().items()}
