"""config.cpu.host_malloc (resnet_jax/cpu/host_malloc.py): huge pages for malloc on CPU-only runs, by one restart.

Tunables act on a whole process from its start, so every test that applies them runs in a subprocess.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
from resnet_jax import config_lib
from resnet_jax.cpu import host_malloc

# Applies config.host_malloc as an entry point does (restart allowed), then allocates, touches and frees 256 MiB
# twice with the C library's malloc and reports the page faults of the second round: glibc maps a block that
# large afresh each time, so 4 KiB pages fault 65,536 times and 2 MiB huge pages 128 times.
_PROBE = r"""
import ctypes, json, os, resource, sys
if os.environ.get("PROBE_IMPORT_JAX"):
  import jax  # imported, backend not started: the restart still happens
from resnet_jax.cpu import host_malloc
state = host_malloc.apply(sys.argv[1], restart=True)
assert host_malloc.apply(sys.argv[1], restart=True) == state  # a second call changes nothing
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
import subprocess
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES'))"],
                       capture_output=True, text=True).stdout.strip()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "pid": os.getpid(), "tunables": os.environ.get("GLIBC_TUNABLES"), "child_tunables": child,
                  "leaked": sorted(k for k in os.environ if k.startswith("RESNET_JAX_HOST_MALLOC"))}))
"""


def _probe(choice, **env):
  full_env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
  full_env.update(env)
  proc = subprocess.run(
      [sys.executable, "-c", _PROBE, choice], cwd=REPO, capture_output=True, text=True, timeout=120, env=full_env
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout  # the restart replaced the process: one report, not two
  return json.loads(lines[0])


# What the restart and page-fault checks need of the machine (decide()'s own conditions); elsewhere the setting
# rightly does nothing, which test_auto_only_on_cpu_only_jax's decisions cover.
_glibc, _thp = host_malloc.glibc_version(), host_malloc.thp_mode()
needs_huge_pages = pytest.mark.skipif(
    not (_glibc and _glibc >= (2, 35) and _thp == "madvise"),
    reason=f"huge pages for malloc need glibc >= 2.35 and transparent huge pages 'madvise' (here {_glibc}, {_thp!r})",
)


@needs_huge_pages
def test_huge_pages_restart_the_process_once_and_cut_page_faults():
  huge = _probe("huge_pages")
  assert huge["state"] == {
      "host_malloc": "huge_pages",
      "reason": "GLIBC_TUNABLES sets glibc.malloc.hugetlb=1 (restarted)",
  }, huge
  assert huge["faults"] < 2_000, huge  # 2 MiB pages
  # ... in this process only: the processes it starts get the user's environment.
  assert huge["tunables"] is None and huge["child_tunables"] == "None" and huge["leaked"] == []
  assert _probe("huge_pages", PROBE_IMPORT_JAX="1")["state"] == huge["state"]
  default = _probe("system")
  assert default["state"] == {"host_malloc": "system", "reason": "host_malloc='system'"} and not default["tunables"]
  assert default["faults"] > 30_000, default  # 4 KiB pages
  # Other tunables are kept; a hugetlb value chosen by the user is respected (no restart).
  kept = _probe("auto", GLIBC_TUNABLES="glibc.malloc.tcache_count=8", JAX_PLATFORMS="cpu")
  assert kept["state"]["host_malloc"] == "huge_pages" and kept["faults"] < 2_000
  assert kept["tunables"] == kept["child_tunables"] == "glibc.malloc.tcache_count=8"
  user = _probe("huge_pages", GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  assert user["state"] == {"host_malloc": "system", "reason": "GLIBC_TUNABLES sets glibc.malloc.hugetlb=0"}


@needs_huge_pages
def test_auto_does_not_restart_a_process_that_computes_on_an_accelerator():
  on_gpu = _probe("auto", JAX_PLATFORMS="cuda,cpu")
  assert on_gpu["state"] == {"host_malloc": "system", "reason": "host_malloc='auto' and JAX_PLATFORMS=cuda,cpu"}
  assert on_gpu["faults"] > 30_000 and not on_gpu["tunables"]


def test_auto_only_on_cpu_only_jax():
  d = lambda choice, **kw: host_malloc.decide(
      choice, **{"environ": {}, "glibc": (2, 36), "thp": "madvise", "platforms": "", "plugins": [], **kw}
  )
  assert d("auto") == ("restart", "host_malloc='auto'")
  assert d("auto", plugins=["cuda12"]) == ("no", "host_malloc='auto' and accelerator plugins installed: cuda12")
  assert d("huge_pages", plugins=["cuda12"]) == ("restart", "host_malloc='huge_pages'")
  assert d("auto", thp="always")[0] == "no" and d("auto", thp="never")[0] == "no" and d("auto", thp=None)[0] == "no"
  assert d("auto", glibc=(2, 31))[0] == "no" and d("auto", glibc=None)[0] == "no"
  assert d("auto", environ={"RESNET_JAX_HOST_MALLOC_RESTARTED": "1"})[0] == "no"  # never a restart loop
  # Not an entry point: nothing restarts, and the report says why.
  assert host_malloc.apply("system", restart=False)["reason"] == "host_malloc='system'"


def test_invalid_choice_is_a_config_error_and_changes_nothing():
  config = config_lib.cifar(20)
  assert config.cpu.host_malloc == "auto"
  config.cpu.host_malloc = "jemalloc"
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  assert "cpu.host_malloc='jemalloc': valid values are ['auto', 'huge_pages', 'system']" in str(e.value)
  before = dict(host_malloc.state)
  assert host_malloc.apply("jemalloc", restart=True) == before
