"""Huge pages for the host buffers of CPU training (config.cpu.host_malloc).

On CPU every train step allocates large short-lived host buffers: XLA's temporary buffer for the step (330 MB for
CIFAR ResNet-20 at batch 128) and the packing buffers of every Eigen convolution (up to 75 MB each). glibc's
malloc serves blocks that large with a fresh mmap and returns them with munmap, so each step faulted in about a
gigabyte of 4 KiB pages again: 22 % of the process's CPU time was spent in the kernel (perf; about 80,000 page
faults per ResNet-20 step). glibc's tunable `glibc.malloc.hugetlb=1` makes malloc ask for transparent huge
pages (madvise) on the memory it maps, so the same buffers take 2 MiB faults, 512 times fewer (speed-ups in
benchmarks/RESULTS.md). The computation is unchanged.

Tunables are read when a process starts, so the entry points (resnet_jax.main, resnet_jax.benchmark,
resnet_jax.evaluate) call `apply` first thing, and when the setting is wanted and not yet in effect the process
restarts itself once (os.execve: same PID, same command line) with GLIBC_TUNABLES extended, after the config has
been validated (so an error is reported once, without a restart). The restarted process puts the user's
GLIBC_TUNABLES back into its environment at once, so the processes it starts inherit nothing of it. 'auto' does so only
where it can help and is safe to assume: Linux with glibc >= 2.35, transparent huge pages in 'madvise' mode (with
'always' the kernel already uses them), JAX on the CPU alone (JAX_PLATFORMS=cpu, or no GPU/TPU plugin
installed: on GPU hosts the large buffers live on the device), and GLIBC_TUNABLES not already choosing
glibc.malloc.hugetlb. 'huge_pages' skips the CPU-only condition; 'system' never restarts. Setting
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 yourself has the same effect without the restart.

Tried and not kept (benchmarks/RESULTS.md): keeping freed memory in glibc's heap instead (mallopt: one arena, no
mmap, no trimming) was as fast on fixed batches, but the single arena slowed tf.data's threads and doubled the
peak host memory of ResNet-50 and ResNet-1202 runs.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import sys

CHOICES = ("auto", "huge_pages", "system")
TUNABLE = "glibc.malloc.hugetlb=1"
_RESTARTED = "RESNET_JAX_HOST_MALLOC_RESTARTED"  # set in the restarted process: never restart twice
_ORIGINAL = "RESNET_JAX_HOST_MALLOC_ORIGINAL_TUNABLES"  # the user's GLIBC_TUNABLES, restored after the restart
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"

# What apply() found or did, for reports (benchmark --json): 'huge_pages' or 'system', and why.
state = {"host_malloc": "system", "reason": "not configured (only the entry points apply config.host_malloc)"}


def accelerator_plugins() -> list[str]:
  """Installed JAX plugins for GPUs/TPUs (found the way JAX finds them, without starting a backend)."""
  names = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
  try:
    import jax_plugins  # namespace package of the CUDA/ROCm plugins

    names += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  if importlib.util.find_spec("libtpu") is not None:
    names.append("libtpu")
  return sorted(set(names))


def cpu_only(platforms: str | None = None, plugins: list[str] | None = None) -> tuple[bool, str]:
  """Whether JAX will compute on the CPU alone, decided without starting its backend; and why."""
  if platforms is None:
    platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu", f"JAX_PLATFORMS={platforms}"
  plugins = accelerator_plugins() if plugins is None else plugins
  if plugins:
    return False, f"accelerator plugins installed: {', '.join(plugins)}"
  return True, "no GPU/TPU plugin installed"


def glibc_version() -> tuple[int, ...] | None:
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return tuple(int(x) for x in libc.gnu_get_libc_version().decode().split(".")[:2])
  except (OSError, AttributeError, ValueError):
    return None


def thp_mode(path: str = _THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise' or 'never'), None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index("[") + 1 : text.index("]")] if "[" in text and "]" in text else None


def _tunables_with_hugetlb(current: str) -> str:
  return f"{current}:{TUNABLE}" if current else TUNABLE


_MACHINE = object()  # decide()'s default: read from this machine


def decide(choice: str, *, environ=None, glibc=_MACHINE, thp=_MACHINE, platforms=None, plugins=None) -> tuple[str, str]:
  """('in_effect' | 'restart' | 'no', reason) for config.host_malloc `choice` in this process."""
  env = os.environ if environ is None else environ
  if choice == "system":
    return "no", "host_malloc='system'"
  tunables = env.get("GLIBC_TUNABLES", "")
  setting = [t for t in tunables.split(":") if t.startswith("glibc.malloc.hugetlb=")]
  if setting:
    return ("in_effect" if setting[-1] == TUNABLE else "no"), f"GLIBC_TUNABLES sets {setting[-1]}"
  glibc = glibc_version() if glibc is _MACHINE else glibc
  if not glibc or glibc < (2, 35):
    return "no", "glibc >= 2.35 is needed for glibc.malloc.hugetlb" + (f" (this is {glibc})" if glibc else "")
  thp = thp_mode() if thp is _MACHINE else thp
  if thp != "madvise":
    return "no", f"transparent huge pages are {thp!r} on this machine (the setting helps only in 'madvise')"
  if choice == "auto":
    on_cpu, why = cpu_only(platforms, plugins)
    if not on_cpu:
      return "no", f"host_malloc='auto' and {why}"
  if env.get(_RESTARTED):
    return "no", "restarted once already and the tunable is still not set"
  return "restart", f"host_malloc={choice!r}"


def apply(choice: str, *, restart: bool) -> dict:
  """Applies config.host_malloc; may restart the process (`restart`: only an entry point running as __main__).

  An invalid choice changes nothing (the config validation reports it). Returns and records what was found.
  """
  if choice not in CHOICES or _restored:
    return dict(state)
  action, reason = decide(choice)
  if action == "restart" and restart:
    started = False
    if "jax" in sys.modules:  # not imported: no backend (and no import to pay for before the restart)
      try:
        from jax._src import xla_bridge

        started = bool(xla_bridge.backends_are_initialized())
      except (ImportError, AttributeError):
        pass
    if not started:
      env = dict(os.environ, GLIBC_TUNABLES=_tunables_with_hugetlb(os.environ.get("GLIBC_TUNABLES", "")))
      env[_RESTARTED] = "1"
      env[_ORIGINAL] = os.environ.get("GLIBC_TUNABLES", "")
      logging.info("host_malloc: restarting with GLIBC_TUNABLES=%s (%s)", env["GLIBC_TUNABLES"], reason)
      sys.stdout.flush()
      sys.stderr.flush()
      os.execve(sys.executable, sys.orig_argv, env)
    action, reason = "no", "JAX's backend had already started"
  if action == "restart":
    action, reason = "no", "not an entry point (no restart)"
  if action == "in_effect":
    state.update(host_malloc="huge_pages", reason=reason + (" (restarted)" if os.environ.get(_RESTARTED) else ""))
  else:
    state.update(host_malloc="system", reason=reason)
  _restore_environment()
  return dict(state)


_restored = False


def _restore_environment() -> None:
  """In a restarted process: the user's environment again, for the processes this one starts."""
  global _restored
  original = os.environ.pop(_ORIGINAL, None)
  if original is None:
    return
  os.environ.pop(_RESTARTED, None)
  if original:
    os.environ["GLIBC_TUNABLES"] = original
  else:
    os.environ.pop("GLIBC_TUNABLES", None)
  _restored = True
