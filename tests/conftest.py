"""pytest's hooks and the shared fixtures (the real CIFAR-10, a fake ImageNet); shared helpers are in helpers.py."""

import os

import pytest

from helpers import REPO, TFDS_DIR

# PyTorch and torchvision before anything imports TensorFlow: importing torch, or torchvision, into a process that
# has already imported TensorFlow crashes it (SIGSEGV; torch 2.14, torchvision 0.29, tensorflow-cpu 2.21); both
# before works. A pytest worker gets all three: training runs in its process (helpers.train_in_process: clu's
# writers import TensorFlow, as do the tf.data tests) and the torchvision tests import torch, in whichever order
# the files come (collecting the whole suite imports torch first by chance: test_convert.py before test_imagenet.py).
# torch._dynamo too (through triton's native library), which torch.optim imports on its first use
# (experiments/torch_twin.py trains with it).
try:
  import torch  # noqa: F401
  import torch._dynamo  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:  # a test that needs them says so
  pass


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


# The longest test files first: `make test` hands whole files to the workers in this order (--dist loadfile
# --no-loadscope-reorder), so the files that take minutes start at once and the short ones fill the end (ordered by
# per-file totals of a run of the suite on three workers on this project's 2-core machine, 2026-12-02, cold
# compilation cache; `make test` now runs two).
_LONGEST_FIRST = (
    "test_export.py",
    "test_benchmark.py",
    "test_resume.py",
    "test_train.py",
    "test_cpu.py",
    "test_parallel.py",
    "test_convert.py",
    "test_imagenet.py",
    "test_cluster.py",
    "test_models.py",
    "test_cifar.py",
    "test_cli.py",
    "test_notebooks.py",
    "test_report.py",
    "test_sweep.py",
    "test_cloud_storage.py",
    "test_experiments.py",
    "test_torch_twin.py",
    "test_package.py",
    "test_host_malloc.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


@pytest.fixture(scope="session")
def tfds_dir():
  if not (TFDS_DIR / "cifar10").is_dir():
    pytest.fail(f"real CIFAR-10 is expected in {TFDS_DIR} (see ../shared/data/README.md)")
  return str(TFDS_DIR)


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
