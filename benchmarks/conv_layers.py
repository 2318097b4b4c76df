"""One 3x3 convolution of each CIFAR stage, forward and forward+backward, in the formulations we compared.

    python benchmarks/conv_layers.py [--batch 128] [--repeats 9] [--torch]

For each stage shape (32x32x16, 16x16x32, 8x8x64) and batch 128: XLA with YNNPACK convolutions (XLA's default in
jax 0.10) and with XLA's Eigen convolutions (config.cpu_convolutions='eigen'), each with the weight gradient over
the whole batch and over chunks of 8 (models.conv_with_chunked_weight_grad); oneDNN's kernels through XLA's FFI
(resnet_jax/onednn.py, when built); with --torch, PyTorch's eager conv2d (oneDNN) on the same data, NCHW (its
default) and channels_last. Medians of --repeats calls, in milliseconds. All XLA variants run in this one
process (compiler options are per compiled function), interleaved per shape.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BATCH = flags.DEFINE_integer("batch", 128, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Timed calls per variant (median reported).")
_TORCH = flags.DEFINE_bool("torch", False, "Also time PyTorch eager conv2d.")


def _median_ms(fn, repeats):
  fn()
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  from resnet_jax import models, onednn, xla_options
  eigen = xla_options._EIGEN_CONVOLUTIONS
  dn = ("NHWC", "HWIO", "NHWC")
  b, r = _BATCH.value, _REPEATS.value
  print(f"batch {b}; ms per call, median of {r}: forward / forward+backward (output, input and weight gradients)")
  variants = [("ynnpack", {}, jax.lax.conv_general_dilated), ("ynnpack+dw8", {}, models.conv_with_chunked_weight_grad(8)),
              ("eigen", eigen, jax.lax.conv_general_dilated), ("eigen+dw8", eigen, models.conv_with_chunked_weight_grad(8))]
  if onednn.available():
    variants.append(("onednn", eigen, onednn.conv_general_dilated))
  else:
    print(f"(no oneDNN column: {onednn.unavailable_reason()})")
  for h, c in ((32, 16), (16, 32), (8, 64)):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, h, h, c), np.float32)
    w = (rng.standard_normal((3, 3, c, c), np.float32) * 0.1).astype(np.float32)
    dy = rng.standard_normal((b, h, h, c), np.float32)
    xj, wj, dyj = map(jnp.asarray, (x, w, dy))
    cells = []
    for label, options, conv_fn in variants:
      conv = lambda a, k, f=conv_fn: f(a, k, (1, 1), "SAME", dimension_numbers=dn)
      fwd = jax.jit(conv, compiler_options=options or None)
      both = jax.jit(lambda a, k, g, f=conv: (f(a, k), jax.vjp(f, a, k)[1](g)), compiler_options=options or None)
      t_f = _median_ms(lambda: jax.block_until_ready(fwd(xj, wj)), r)
      t_b = _median_ms(lambda: jax.block_until_ready(both(xj, wj, dyj)), r)
      cells.append(f"{label} {t_f:.1f}/{t_b:.1f}")
    if _TORCH.value:
      import torch
      for label, fmt in (("pytorch", torch.contiguous_format), ("pytorch-nhwc", torch.channels_last)):
        xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt).requires_grad_(True)
        wt = torch.tensor(w).permute(3, 2, 0, 1).contiguous(memory_format=fmt).requires_grad_(True)
        dyt = torch.tensor(dy).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

        def torch_both(xt=xt, wt=wt, dyt=dyt):
          y = torch.nn.functional.conv2d(xt, wt, padding=1)
          torch.autograd.grad(y, (xt, wt), dyt)
        with torch.no_grad():
          t_f = _median_ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=1), r)
        cells.append(f"{label} {t_f:.1f}/{_median_ms(torch_both, r):.1f}")
    print(f"{h}x{h}x{c}:  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
  app.run(main)
