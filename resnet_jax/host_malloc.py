"""Host memory reuse for CPU training (config.host_malloc): freed buffers are kept by malloc, not unmapped.

On CPU every train step allocates large short-lived host buffers: XLA's temporary buffer for the step (330 MB for
CIFAR ResNet-20 at batch 128) and the packing buffers of every Eigen convolution (up to 75 MB each, on Eigen's
worker threads). glibc's malloc serves blocks that large with a fresh mmap and gives them back with munmap, so
each step faulted in and zeroed about a gigabyte of pages again: 22 % of the process's CPU time was spent in the
kernel (perf) and ResNet-20 took about 80,000 page faults per step. With one malloc arena, no mmap for large
blocks and no trimming of the heap, glibc keeps freed blocks and hands them out again: no page faults after the
first steps and 1.1-1.2x faster CIFAR train steps on the 2-core machine of benchmarks/RESULTS.md. Nothing about
the computation changes.

The settings (mallopt: M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1) are process-wide, and a thread that
has already allocated keeps its own arena, so the entry points (resnet_jax.main, resnet_jax.benchmark,
resnet_jax.evaluate) apply them first, before JAX's backend and its thread pools start. Their costs: memory the
process frees stays with it until it exits (its peak is unchanged), and all threads share one arena's lock,
which multi-threaded host work such as tf.data's ImageNet decoding for a GPU would feel. So 'auto' applies them
only when JAX will run on the CPU alone (JAX_PLATFORMS=cpu, or no GPU/TPU plugin installed); 'reuse' applies them
anyway and 'system' leaves malloc alone. Only glibc (Linux) has these settings; elsewhere nothing changes.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import pkgutil

CHOICES = ("auto", "reuse", "system")
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))

# What the last apply() did, for reports (benchmark --json): 'reuse' or 'system', and why.
state = {"host_malloc": "system", "reason": "not configured (only the entry points apply config.host_malloc)"}


def check(choice) -> list[str]:
  """Problems with config.host_malloc (for train.validate_config)."""
  if choice not in CHOICES:
    return [f"host_malloc={choice!r}: valid values are {list(CHOICES)} ('auto': keep freed host memory for reuse "
            "when JAX runs on the CPU alone)"]
  return []


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
    import jax
    platforms = jax.config.jax_platforms
  if platforms:
    first = platforms.split(",")[0].strip().lower()
    return first == "cpu", f"JAX_PLATFORMS={platforms}"
  plugins = accelerator_plugins() if plugins is None else plugins
  if plugins:
    return False, f"accelerator plugins installed: {', '.join(plugins)}"
  return True, "no GPU/TPU plugin installed"


def _glibc():
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    libc.gnu_get_libc_version()
    return libc
  except (OSError, AttributeError):
    return None


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def apply(choice: str) -> dict:
  """Applies config.host_malloc (see the module docstring); returns and records what was done.

  An invalid choice changes nothing (train.validate_config reports it).
  """
  if choice not in CHOICES:
    return dict(state)
  if choice == "system":
    state.update(host_malloc="system", reason="host_malloc='system'")
    return dict(state)
  if choice == "auto":
    on_cpu, why = cpu_only()
    if not on_cpu:
      state.update(host_malloc="system", reason=f"host_malloc='auto' and {why}")
      return dict(state)
    if _backend_started():
      state.update(host_malloc="system", reason="host_malloc='auto' and JAX's backend had already started")
      return dict(state)
  else:
    why = "host_malloc='reuse'"
  libc = _glibc()
  if libc is None:
    state.update(host_malloc="system", reason="this C library is not glibc (no mallopt settings)")
    if choice == "reuse":
      logging.warning("host_malloc='reuse' has no effect: %s", state["reason"])
    return dict(state)
  if not all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS):
    state.update(host_malloc="system", reason="glibc refused the mallopt settings")
    logging.warning("host_malloc=%r: %s", choice, state["reason"])
    return dict(state)
  state.update(host_malloc="reuse", reason=why)
  logging.info("host malloc: freed memory is kept for reuse (%s)", why)
  return dict(state)
