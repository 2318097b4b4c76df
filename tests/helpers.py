"""What the tests share besides fixtures: paths, a runner for the command-line tools, and checks on run outputs.

Test files import this module (`from helpers import ...`); conftest.py keeps only pytest's hooks and fixtures.
"""

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


def strip_speed(rows):
  return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]


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


def numpy_state(net):
  return {k: v.numpy() for k, v in net.state_dict().items()}
