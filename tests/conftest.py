"""Shared fixtures: paths, the real CIFAR-10 location, and a runner for the command-line tools."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
TFDS_DIR = SHARED_DATA / "tfds"


def pytest_configure(config):
  # Subprocesses share one persistent XLA compilation cache, so the many small CLI runs of the suite compile
  # each distinct step once (it does not change any result: the cache stores the same executables).
  cache = REPO / ".pytest_cache" / "jax_compilation_cache"
  cache.mkdir(parents=True, exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # The commands' huge pages for malloc (config.cpu.host_malloc='auto') in effect from the start, so that the many
  # command-line runs of the suite do not each restart once to get them (tests/test_host_malloc.py tests the
  # restart itself, with this variable removed).
  os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")


# The longest test files first: `make test` hands whole files to two workers in collection order (--dist loadfile),
# so the files that take minutes start at once and the short ones fill the end (per-file totals of a run of the
# suite on this project's 2-core machine, 2026-11-30: 90-145 s each for these, under a minute for the rest).
_LONGEST_FIRST = (
    "test_imagenet.py",
    "test_export.py",
    "test_notebooks.py",
    "test_cloud_storage.py",
    "test_resume.py",
    "test_cluster.py",
    "test_train.py",
    "test_cpu.py",
    "test_convert.py",
    "test_sweep.py",
    "test_device_input.py",
    "test_parallel.py",
    "test_models.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def tfds_dir():
  if not (TFDS_DIR / "cifar10").is_dir():
    pytest.fail(f"real CIFAR-10 is expected in {TFDS_DIR} (see ../shared/data/README.md)")
  return str(TFDS_DIR)


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


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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


@pytest.fixture(scope="session")
def fake(tmp_path_factory):
  """A small imagenet2012 prepared with tfds from the real JPEGs of imagenet-sample (tests/imagenet_fixture.py)."""
  import imagenet_fixture

  if not (imagenet_fixture.SAMPLE_DIR / "labels.csv").exists():
    pytest.fail(f"real ImageNet JPEGs are expected in {imagenet_fixture.SAMPLE_DIR} (see ../shared/data/README.md)")
  data_dir = tmp_path_factory.mktemp("imagenet_tfds")
  meta = imagenet_fixture.prepare_fake_imagenet(data_dir)
  meta["data_dir"] = str(data_dir)
  return meta


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
