"""XLA compiler options for the compiled steps: on CPU, convolutions by XLA's Eigen kernels (config.cpu_convolutions).

jax 0.10's CPU backend hands convolutions, dots and reductions to YNNPACK by default. For the convolutions of a
ResNet on the 2-core x86 machine of benchmarks/RESULTS.md, XLA's own Eigen kernels were about 2x faster in the
forward pass at CIFAR's stage 2 and 3 shapes and made a whole ResNet-20/56 train step 1.16-1.3x faster. So on CPU
the train and eval steps are compiled with YNNPACK kept for dots and reductions only (jax 0.10's default set
without convolutions). The option is per compilation (`jax.jit(..., compiler_options=...)`), so nothing else in
the process changes; an XLA that does not know the option is detected once and left at its default, with a
warning. 'xla_default' keeps whatever the installed XLA chooses. GPUs and TPUs are never affected. With 'auto' and
'onednn' the model computes its float32 convolutions with oneDNN (resnet_jax/onednn.py) where that applies; the
steps are still compiled with the Eigen option, for any convolution left to XLA.

`jax.pmap` takes no compiler options; train.Steps compiles its pmapped steps through `lower().compile()` with them.
"""
from __future__ import annotations

import functools
import logging

import jax

CHOICES = ("auto", "onednn", "eigen", "xla_default")
# jax 0.10's default set is INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION and REDUCE; this is it without convolutions.
_EIGEN_CONVOLUTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def check(choice) -> list[str]:
  """Problems with config.cpu_convolutions (for train.validate_config)."""
  if choice not in CHOICES:
    return [f"cpu_convolutions={choice!r}: valid values are {list(CHOICES)}"]
  return []


@functools.lru_cache(maxsize=None)
def _supported(items: tuple) -> bool:
  """Whether this XLA accepts the options (compiles a one-op function with them, once per process)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(1.0).compile()
    return True
  except Exception as e:  # noqa: BLE001  (XLA reports an unknown option or value as a runtime error)
    logging.warning("this XLA does not accept %s (%s); CPU convolutions stay at XLA's default", dict(items),
                    str(e).splitlines()[0][:200])
    return False


def compiler_options(config, platform: str | None = None) -> dict:
  """The compiler options for the train/eval steps of `config` on `platform` (default: JAX's default backend)."""
  choice = config.get("cpu_convolutions", "auto")
  if choice not in CHOICES:
    raise ValueError(check(choice)[0])
  if (platform or jax.default_backend()) != "cpu" or choice == "xla_default":
    return {}
  items = tuple(sorted(_EIGEN_CONVOLUTIONS.items()))
  return dict(items) if _supported(items) else {}
