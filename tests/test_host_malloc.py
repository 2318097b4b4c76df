"""config.host_malloc (resnet_jax/host_malloc.py): freed host memory kept for reuse on CPU-only runs.

The malloc settings are process-wide, so every test that applies them runs in a subprocess.
"""
import json
import subprocess
import sys

import pytest

from conftest import REPO
from resnet_jax import config_lib, host_malloc, train

# Allocates, touches and frees 256 MiB twice with the C library's malloc and reports the page faults of the
# second round (a block that size comes from a fresh mmap each time under glibc's defaults).
_PROBE = r"""
import ctypes, json, resource, sys
from resnet_jax import host_malloc
state = host_malloc.apply(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20
def round_trip():
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(choice, **env):
  import os
  proc = subprocess.run([sys.executable, "-c", _PROBE, choice], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env={**os.environ, **env})
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_reuse_keeps_freed_memory_and_system_does_not():
  kept = _probe("reuse")
  assert kept["state"]["host_malloc"] == "reuse", kept
  assert kept["faults"] < 1000, kept  # the freed block was handed out again: no new pages
  default = _probe("system")
  assert default["state"]["host_malloc"] == "system", default
  assert default["faults"] > 30_000, default  # 65,536 pages of 4 KiB, faulted in again


def test_auto_reuses_on_cpu_only_jax_and_not_with_accelerators():
  on_cpu = _probe("auto", JAX_PLATFORMS="cpu")
  assert on_cpu["state"] == {"host_malloc": "reuse", "reason": "JAX_PLATFORMS=cpu"} and on_cpu["faults"] < 1000
  on_gpu = _probe("auto", JAX_PLATFORMS="cuda,cpu")
  assert on_gpu["state"]["host_malloc"] == "system" and "JAX_PLATFORMS=cuda,cpu" in on_gpu["state"]["reason"]
  assert on_gpu["faults"] > 30_000
  # Without JAX_PLATFORMS, installed GPU/TPU plugins decide (found without starting a backend).
  assert host_malloc.cpu_only("", plugins=[]) == (True, "no GPU/TPU plugin installed")
  assert host_malloc.cpu_only("", plugins=["cuda12"]) == (False, "accelerator plugins installed: cuda12")
  assert host_malloc.cpu_only("cpu") == (True, "JAX_PLATFORMS=cpu")
  assert isinstance(host_malloc.accelerator_plugins(), list)


def test_invalid_choice_is_a_config_error_and_changes_nothing():
  config = config_lib.cifar(20)
  assert config.host_malloc == "auto" and host_malloc.check("auto") == []
  config.host_malloc = "jemalloc"
  with pytest.raises(train.ConfigError) as e:
    train.validate_config(config)
  assert "host_malloc='jemalloc': valid values are ['auto', 'reuse', 'system']" in str(e.value)
  before = dict(host_malloc.state)
  assert host_malloc.apply("jemalloc") == before
