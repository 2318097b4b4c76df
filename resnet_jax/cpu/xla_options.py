"""XLA compiler options for the compiled steps: on CPU, convolutions by XLA's Eigen kernels (config.cpu.convolutions).

jax 0.10's CPU backend hands convolutions, dots and reductions to YNNPACK by default. For a ResNet's convolutions
XLA's own Eigen kernels were faster (benchmarks/RESULTS.md), so on CPU the train and eval steps are compiled with
YNNPACK kept for dots and reductions only (jax 0.10's default set without convolutions). The option is per
compilation (`jax.jit(..., compiler_options=...)`), so nothing else in the process changes; an XLA that does not
know the option is detected once and left at its default, with a warning. 'xla_default' keeps whatever the
installed XLA chooses. With oneDNN convolutions (cpu/onednn.py) the steps are still compiled with the Eigen
option, for any convolution left to XLA.

`jax.pmap` takes no compiler options; resnet_jax.compiled_steps compiles its pmapped steps through
`lower().compile()` with them.

The parameter initialiser (train.init_host_state) runs once and in milliseconds, but XLA compiles every
parameter's random draw as a loop of its own, and LLVM's full optimisation of those loops takes longer than
compiling the train step itself. Optimisation level 1 compiles it several times faster (benchmarks/RESULTS.md) and
gives the same bits (tests/test_cpu.py checks it); level 0 does not give the same bits.
"""

from __future__ import annotations

import functools
import logging

import jax

# jax 0.10's default set is INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION and REDUCE; this is it without convolutions.
_EIGEN_CONVOLUTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}
_FAST_INIT = {"xla_backend_optimization_level": 1}


@functools.lru_cache(maxsize=None)
def _supported(items: tuple) -> bool:
  """Whether this XLA accepts the options (compiles a one-op function with them, once per process)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(1.0).compile()
    return True
  except Exception as e:  # noqa: BLE001  (XLA reports an unknown option or value as a runtime error)
    logging.warning(
        "this XLA does not accept %s (%s); compiling with XLA's defaults instead",
        dict(items),
        str(e).splitlines()[0][:200],
    )
    return False


def compiler_options(convolutions: str) -> dict:
  """The CPU compiler options for the train/eval steps, given cpu.plan's settled `convolutions`."""
  if convolutions not in ("onednn", "eigen"):
    return {}
  items = tuple(sorted(_EIGEN_CONVOLUTIONS.items()))
  return dict(items) if _supported(items) else {}


def init_compiler_options() -> dict:
  """The CPU compiler options for the parameter initialiser."""
  items = tuple(sorted(_FAST_INIT.items()))
  return dict(items) if _supported(items) else {}
