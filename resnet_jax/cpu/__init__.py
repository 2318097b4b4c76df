"""Everything that makes CPU training fast, behind one seam: `plan(config)` settles it once per run.

None of it changes the mathematics (each is the same function in another summation order, tested), and none of
it applies on GPUs or TPUs. The settings are the `config.cpu` group:

* `cpu.convolutions`: 'onednn' computes float32 convolutions with oneDNN's direct kernels through XLA's FFI
  (cpu/onednn.py, cpu/csrc/onednn_conv.cc, built by `make install`); 'eigen' compiles the steps with XLA's Eigen
  convolutions instead of YNNPACK's (cpu/xla_options.py); 'xla_default' leaves XLA's choice; 'auto' is 'onednn'
  for a float32 run on one CPU device when the kernels are built, else 'eigen'.
* `cpu.weight_grad_chunk`: with XLA's convolutions, every convolution's weight gradient summed over chunks of this
  many examples (kernels.conv_with_chunked_weight_grad); -1 is 8 on CPU with XLA's convolutions, else 0 (off).
* `cpu.materialize_blocks`: every block output kept in memory instead of recomputed by XLA's fusion in each
  consumer (kernels.materialize); None is on for CPU.
* `cpu.host_malloc`: huge pages for malloc by one restart of the entry point (cpu/host_malloc.py).

The model receives what the plan chose as plain arguments (`Plan.model_kwargs()`: a convolution function and a
block-output hook), the compiled steps its compiler options, the parameter initialiser its own (faster to compile,
same bits: cpu/xla_options.py); the figures behind each choice are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from resnet_jax.cpu import host_malloc

# The config's checks (config_lib imports this package) and the entry points' malloc set-up run before JAX starts:
# JAX and the modules built on it (kernels, onednn, xla_options) are imported inside the functions that use them.

CONVOLUTIONS = ("auto", "onednn", "eigen", "xla_default")
HOST_MALLOC = ("auto", "huge_pages", "system")
CPU_WEIGHT_GRAD_CHUNK = 8  # weight_grad_chunk=-1 (automatic) on CPU with XLA's convolutions


def usable_cpus() -> int:
  """The CPUs this process may run on: under SLURM, a container or taskset, fewer than os.cpu_count() says."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS
    return os.cpu_count() or 1


def check(config) -> list[str]:
  """Problems with config.cpu (for the config validation), without starting JAX's backend."""
  c = config.cpu
  problems = []
  if c.convolutions not in CONVOLUTIONS:
    problems.append(f"cpu.convolutions={c.convolutions!r}: valid values are {list(CONVOLUTIONS)}")
  chunk = c.weight_grad_chunk
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < -1:
    problems.append(
        f"cpu.weight_grad_chunk={chunk!r}: use -1 (automatic: {CPU_WEIGHT_GRAD_CHUNK} on CPU with XLA's "
        "convolutions, off elsewhere), 0 (off) or a positive number of examples"
    )
  if c.materialize_blocks not in (None, True, False):
    problems.append(f"cpu.materialize_blocks={c.materialize_blocks!r}: use None (automatic: on for CPU), True or False")
  if c.host_malloc not in HOST_MALLOC:
    problems.append(
        f"cpu.host_malloc={c.host_malloc!r}: valid values are {list(HOST_MALLOC)} ('auto': "
        "transparent huge pages for malloc when JAX runs on the CPU alone)"
    )
  return problems


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run does on this platform: which convolutions, which block-output hook, which compiler options."""

  platform: str
  convolutions: str  # 'onednn', 'eigen', 'xla_default', or 'native' (not a CPU)
  weight_grad_chunk: int  # 0: whole-batch weight gradients
  materialize_blocks: bool
  compiler_options: tuple = ()  # (name, value) pairs for jax.jit(..., compiler_options=...)
  init_compiler_options: tuple = ()  # the same for the parameter initialiser (train.init_host_state)

  @property
  def options(self) -> dict:
    return dict(self.compiler_options)

  @property
  def init_options(self) -> dict:
    return dict(self.init_compiler_options)

  def model_kwargs(self) -> dict[str, Callable | None]:
    """The convolution function and block-output hook to build the model with (models.create_model)."""
    from resnet_jax.cpu import kernels, onednn

    conv = None
    if self.convolutions == "onednn":
      conv = onednn.conv_general_dilated
    elif self.weight_grad_chunk > 0:
      conv = kernels.conv_with_chunked_weight_grad(self.weight_grad_chunk)
    return {"conv_general_dilated": conv, "block_output": kernels.materialize if self.materialize_blocks else None}

  def describe(self) -> dict[str, Any]:
    """For benchmark --json and the start-up log line."""
    return {
        "platform": self.platform,
        "convolutions": self.convolutions,
        "weight_grad_chunk": self.weight_grad_chunk,
        "materialize_blocks": self.materialize_blocks,
        "xla_compiler_options": self.options,
        "xla_init_compiler_options": self.init_options,
        "host_malloc": host_malloc.state["host_malloc"],
        "host_malloc_reason": host_malloc.state["reason"],
    }


def plan(config, *, platform: str | None = None, device_count: int | None = None) -> Plan:
  """Settles every 'auto' of config.cpu for this run (default: JAX's backend and device count).

  Raises ValueError with the fix when a setting cannot be honoured (cpu.convolutions='onednn' without kernels, in
  bfloat16, or over several devices).
  """
  import jax
  from resnet_jax.cpu import onednn, xla_options

  problems = check(config)
  if problems:
    raise ValueError("; ".join(problems))
  c = config.cpu
  platform = platform or jax.default_backend()
  if platform != "cpu":
    return Plan(platform, "native", max(0, c.weight_grad_chunk), bool(c.materialize_blocks))
  device_count = jax.device_count() if device_count is None else device_count
  choice = c.convolutions
  use_onednn = onednn.resolve(
      choice, platform=platform, device_count=device_count, half_precision=config.half_precision
  )
  convolutions = "onednn" if use_onednn else ("xla_default" if choice == "xla_default" else "eigen")
  chunk = c.weight_grad_chunk
  if chunk == -1:
    chunk = 0 if use_onednn else CPU_WEIGHT_GRAD_CHUNK
  materialize = c.materialize_blocks
  options = xla_options.compiler_options(convolutions)
  return Plan(
      platform,
      convolutions,
      chunk,
      True if materialize is None else materialize,
      tuple(sorted(options.items())),
      tuple(sorted(xla_options.init_compiler_options().items())),
  )
