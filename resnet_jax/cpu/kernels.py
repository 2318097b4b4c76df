"""Two formulations of the network's operations that XLA's CPU backend runs faster; the same mathematics.

`conv_with_chunked_weight_grad(chunk)` is a `conv_general_dilated` for nn.Conv, and `materialize` a block-output
hook for models.ResNet; cpu.plan decides where they apply (benchmarks/RESULTS.md has the measurements).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def conv_with_chunked_weight_grad(chunk: int) -> Callable:
  """`lax.conv_general_dilated` (for nn.Conv's `conv_general_dilated`) with a chunked weight gradient.

  The forward pass and the input gradient are the usual whole-batch convolutions. The weight gradient, a
  convolution that contracts the batch, is computed for `chunk` examples at a time and the float32 partial sums
  are added: the same sum in another order, so results agree to float32 rounding. On CPU, XLA's weight-gradient
  convolution transposes both operands and contracts the batch, and runs several times slower per image over a
  whole CIFAR batch than over a few examples. The batch must be dimension 0 of the input (as nn.Conv lays it out).
  """
  if chunk < 1:
    raise ValueError(f"weight_grad_chunk must be >= 1 here, got {chunk}")

  def conv(lhs, rhs, *args, **kwargs):
    f = lambda x, w: jax.lax.conv_general_dilated(x, w, *args, **kwargs)
    n = lhs.shape[0]
    if n <= chunk:
      return f(lhs, rhs)

    @jax.custom_vjp
    def chunked(x, w):
      return f(x, w)

    def fwd(x, w):
      return f(x, w), (x, w)

    def bwd(res, dy):
      x, w = res
      dx = jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0]
      dw = jnp.zeros(w.shape, jnp.float32)
      for i in range(0, n, chunk):
        part = jax.vjp(lambda w_: f(x[i : i + chunk], w_), w)[1](dy[i : i + chunk])[0]
        dw = dw + part.astype(jnp.float32)
      return dx, dw.astype(w.dtype)

    chunked.defvjp(fwd, bwd)
    return chunked(lhs, rhs)

  return conv


def materialize(x, anchor):
  """x, unchanged, in a form XLA computes once and keeps in memory: x / one, where `one` is a runtime 1.0.

  A block-output hook (models.ResNet's `block_output(y, anchor)`; `anchor` is a replicated parameter). XLA's CPU
  fusion duplicates cheap elementwise producers into every consumer. A residual stage's block outputs are a chain
  of them (relu(bn(conv) + previous output)), so each fusion that reads a block output (the next block, the
  transposes of the weight gradients) would recompute the outputs of all earlier blocks of the stage from their
  convolutions: O(depth^2) work. XLA does not duplicate a division by a scalar it cannot see at compile time into
  such consumers (`jax.lax.optimization_barrier` cannot help: XLA removes it before fusion). The scalar is made
  from a parameter, so it is replicated on every device and needs no communication. Dividing by 1.0 is exact.
  """
  return x / runtime_one(anchor).astype(x.dtype)


def runtime_one(param):
  """sign(|p| + 1) for the first element p of a parameter: 1.0, but not a compile-time constant; no gradient."""
  return jax.lax.stop_gradient(jnp.sign(jnp.abs(param.reshape(-1)[0]) + 1))
