"""oneDNN's direct convolutions for the CPU train step, as XLA FFI custom calls (config.cpu.convolutions='onednn').

XLA's CPU convolutions (Eigen's) lower a 3x3 convolution to a matrix product over image patches and copy those
patches first (im2col), and their weight gradients are slow. oneDNN, the library behind PyTorch's CPU
convolutions, computes them directly (measurements in benchmarks/RESULTS.md).

The kernels are resnet_jax/cpu/csrc/onednn_conv.cc, built into resnet_jax/cpu/_onednn_conv.so against the oneDNN
wheel (`pip install -e '.[onednn]'`, then `python -m resnet_jax.cpu.onednn build`; `make install` does both) and
registered with `jax.ffi`. `conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (nn.Conv's
`conv_general_dilated` argument) with a custom VJP whose backward pass calls oneDNN's backward-data and
backward-weights kernels; what oneDNN does not cover here (other dtypes, dilation, groups, layouts other than
NHWC/HWIO) falls through to `lax.conv_general_dilated`. Same mathematics, another summation order: outputs and
gradients agree with XLA's to float32 rounding (tests/test_cpu.py).

config.cpu.convolutions: 'auto' (default) uses oneDNN for a float32 CPU run on one device when the kernels are
built, and XLA's Eigen convolutions otherwise (half_precision's bfloat16 included); 'onednn' requires them (a
clear error says how to build them); 'eigen' and 'xla_default' are XLA's (resnet_jax/cpu/xla_options.py). A run over
several devices (a mesh or pmap) uses XLA's: the custom calls are not partitioned by XLA's SPMD partitioner.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_DIR, "csrc", "onednn_conv.cc")
LIBRARY = os.path.join(_DIR, "_onednn_conv.so")
_TARGETS = {
    "fwd": "ResnetJaxOnednnConvFwd",
    "bwd_data": "ResnetJaxOnednnConvBwdData",
    "bwd_weights": "ResnetJaxOnednnConvBwdWeights",
}
BUILD_HINT = (
    "build them with `make install`, or `pip install -e '.[onednn]' && python -m resnet_jax.cpu.onednn "
    "build` (needs g++), or set --config.cpu.convolutions=eigen"
)


def _prefix_dirs() -> tuple[str, str]:
  """Where the oneDNN wheels put their headers and library (this environment's prefix)."""
  return os.path.join(sys.prefix, "include"), os.path.join(sys.prefix, "lib")


def build(verbose: bool = True) -> str:
  """Compiles the kernels into LIBRARY with g++ (against jax's FFI headers and the oneDNN wheel); returns its path."""
  include, lib = _prefix_dirs()
  if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
    raise RuntimeError(f"oneDNN headers not found under {include}: pip install -e '.[onednn]' first")
  cmd = [
      os.environ.get("CXX", "g++"),
      "-O2",
      "-std=c++17",
      "-shared",
      "-fPIC",
      "-w",
      f"-I{jax.ffi.include_dir()}",
      f"-I{include}",
      SOURCE,
      f"-L{lib}",
      "-ldnnl",
      f"-Wl,-rpath,{lib}",
      "-o",
      LIBRARY + ".tmp",
  ]
  if verbose:
    print(" ".join(cmd))
  subprocess.run(cmd, check=True)
  os.replace(LIBRARY + ".tmp", LIBRARY)  # never leave a half-written library behind
  return LIBRARY


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """Loads and registers the kernels once; returns None on success, else why they are not available."""
  if not os.path.exists(LIBRARY):
    return f"{LIBRARY} is not built"
  try:
    lib = ctypes.cdll.LoadLibrary(LIBRARY)
    for name, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(
          f"resnet_jax_onednn_conv_{name}", jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
      )
  except (OSError, AttributeError) as e:
    return f"{LIBRARY} does not load ({e})"
  return None


def available() -> bool:
  return _load() is None


def unavailable_reason() -> str | None:
  return _load()


def resolve(
    choice: str, platform: str | None = None, device_count: int | None = None, half_precision: bool = False
) -> bool:
  """Whether a model should use oneDNN convolutions for config.cpu.convolutions=`choice`."""
  platform = platform or jax.default_backend()
  device_count = jax.device_count() if device_count is None else device_count
  if choice == "onednn":
    if platform != "cpu":
      return False  # a CPU setting; GPUs and TPUs keep their own convolutions
    if device_count != 1:
      raise ValueError(
          f"cpu.convolutions='onednn' runs on one CPU device, this run has {device_count}: use "
          "'auto' or 'eigen' with several devices"
      )
    if half_precision:
      raise ValueError(
          "cpu.convolutions='onednn' computes in float32, and half_precision=True asks for bfloat16: "
          "use 'auto' or 'eigen' (XLA's convolutions) with half_precision"
      )
    reason = _load()
    if reason:
      raise ValueError(f"cpu.convolutions='onednn': the oneDNN kernels are not available ({reason}); {BUILD_HINT}")
    return True
  if choice == "auto":
    return platform == "cpu" and device_count == 1 and not half_precision and available()
  return False


# ----------------------------------------------------------------------------------------------------------
# The convolution.

_NHWC = ("NHWC", "HWIO", "NHWC")


def _attrs(strides, pads) -> dict:
  (pt, pb), (pl, pr) = pads
  return dict(
      stride_h=np.int64(strides[0]),
      stride_w=np.int64(strides[1]),
      pad_top=np.int64(pt),
      pad_bottom=np.int64(pb),
      pad_left=np.int64(pl),
      pad_right=np.int64(pr),
  )


def _fwd_call(x, w, strides, pads):
  n, h, wd, _ = x.shape
  kh, kw, _, o = w.shape
  oh = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
  ow = (wd + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
  out = jax.ShapeDtypeStruct((n, oh, ow, o), jnp.float32)
  return jax.ffi.ffi_call("resnet_jax_onednn_conv_fwd", out)(x, w, **_attrs(strides, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  return _fwd_call(x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _fwd_call(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, res, dy):
  x, w = res
  attrs = _attrs(strides, pads)
  dx = jax.ffi.ffi_call("resnet_jax_onednn_conv_bwd_data", jax.ShapeDtypeStruct(x.shape, jnp.float32))(dy, w, **attrs)
  dw = jax.ffi.ffi_call("resnet_jax_onednn_conv_bwd_weights", jax.ShapeDtypeStruct(w.shape, jnp.float32))(
      x, dy, **attrs
  )
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
  """`lax.conv_general_dilated` by oneDNN where it applies (float32 NHWC/HWIO 2-D, no dilation, one group)."""
  fallback = functools.partial(
      lax.conv_general_dilated,
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )
  if (
      lhs.ndim != 4
      or rhs.ndim != 4
      or lhs.dtype != jnp.float32
      or rhs.dtype != jnp.float32
      or feature_group_count != 1
      or batch_group_count != 1
      or preferred_element_type not in (None, jnp.float32)
      or any(d != 1 for d in (lhs_dilation or (1, 1)))
      or any(d != 1 for d in (rhs_dilation or (1, 1)))
  ):
    return fallback()
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return fallback()
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if any(p < 0 for pair in pads for p in pair):
    return fallback()
  reason = _load()  # registers the custom calls (once per process)
  if reason:
    raise RuntimeError(f"oneDNN convolutions requested, but the kernels are not available ({reason}); {BUILD_HINT}")
  return _conv(lhs, rhs, strides, pads)


def main(argv: list[str]) -> int:
  if argv[1:] != ["build"]:
    print("usage: python -m resnet_jax.cpu.onednn build", file=sys.stderr)
    return 2
  try:
    path = build()
  except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
    print(f"could not build the oneDNN kernels: {e}", file=sys.stderr)
    return 1
  _load.cache_clear()
  reason = _load()
  if reason:
    print(f"built {path}, but it does not load: {reason}", file=sys.stderr)
    return 1
  print(f"built and loaded {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
