"""Patches for benchmarks/cpu_experiments.py (`--variants=patch:NAME`): alternative formulations of the model.

Each function monkeypatches flax / resnet_jax in the experiment's own process only, before the model is built.
They compute the same function as the model (checked by tests in the experiment notes, not in the package).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------------------------------------
# Batch norm with a hand-written backward pass: one fused pass for the two batch sums of the backward, one for
# dx (instead of what autodiff of mean / mean-of-squares produces).

def _bn_train(x, scale, bias, eps, axis_name):
  y, mean, var, _ = _bn_fwd_impl(x, scale, bias, eps, axis_name)
  return y, mean, var


def _reduce_axes(x):
  return tuple(range(x.ndim - 1))


def _bn_fwd_impl(x, scale, bias, eps, axis_name):
  xf = x.astype(jnp.float32)
  axes = _reduce_axes(x)
  mean = jnp.mean(xf, axes)
  mean2 = jnp.mean(jnp.square(xf), axes)
  if axis_name is not None:
    mean, mean2 = jax.lax.pmean((mean, mean2), axis_name)
  var = jnp.maximum(0.0, mean2 - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + eps)
  y = ((xf - mean) * (rstd * scale) + bias).astype(x.dtype)
  return y, mean, var, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def bn_train(x, scale, bias, eps, axis_name):
  """Training-mode batch norm over all axes but the last: (y, batch mean, batch variance).

  The gradient flows through y only: the statistics feed the running averages, which get no gradient.
  """
  return _bn_train(x, scale, bias, eps, axis_name)


def _bn_vjp_fwd(x, scale, bias, eps, axis_name):
  y, mean, var, rstd = _bn_fwd_impl(x, scale, bias, eps, axis_name)
  return (y, mean, var), (x, mean, rstd, scale)


def _bn_vjp_bwd(eps, axis_name, res, cts):
  x, mean, rstd, scale = res
  dy = cts[0].astype(jnp.float32)
  axes = _reduce_axes(x)
  xhat = (x.astype(jnp.float32) - mean) * rstd
  n = 1
  for a in axes:
    n *= x.shape[a]
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * xhat, axes)
  if axis_name is not None:
    dbias, dscale = jax.lax.psum((dbias, dscale), axis_name)
    n = n * jax.lax.psum(1, axis_name)
  dx = (scale * rstd) * (dy - dbias / n - xhat * (dscale / n))
  return dx.astype(x.dtype), dscale, dbias


bn_train.defvjp(_bn_vjp_fwd, _bn_vjp_bwd)


class FusedBatchNorm(nn.Module):
  """Drop-in for the nn.BatchNorm arguments models.py uses (same parameter and statistic names)."""
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable = nn.initializers.zeros
  scale_init: Callable = nn.initializers.ones
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
    dtype = self.dtype or x.dtype
    if self.use_running_average:
      rstd = jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - ra_mean.value) * (rstd * scale) + bias
      return y.astype(dtype)
    y, mean, var = bn_train(x, scale, bias, self.epsilon, self.axis_name)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean
      ra_var.value = m * ra_var.value + (1 - m) * var
    return y.astype(dtype)


def fused_bn():
  nn.BatchNorm = FusedBatchNorm


# ----------------------------------------------------------------------------------------------------------
# An optimisation barrier on every block's output, meant to stop XLA's CPU fusion from recomputing a stage's
# residual chain in every consumer of a block output. It does not: XLA's CPU pipeline removes barriers before
# fusion (benchmarks/RESULTS.md). What works is models.materialize (config model.materialize_blocks, on for CPU);
# the chunked weight gradient is models.conv_with_chunked_weight_grad (model.weight_grad_chunk): use
# `set:model.materialize_blocks=False` / `set:model.weight_grad_chunk=N` variants to compare them.

def block_barrier():
  from resnet_jax import models

  def with_barrier(cls):
    class Barrier(cls):
      def __call__(self, x):
        return jax.lax.optimization_barrier(super().__call__(x))
    Barrier.__name__ = cls.__name__
    return Barrier

  models.BLOCKS = {k: with_barrier(v) for k, v in models.BLOCKS.items()}


# ----------------------------------------------------------------------------------------------------------
# Whole convolutions over batch chunks: y = concat_k conv(x_k, w). Same function; autodiff gives per-chunk input
# gradients and the weight gradient as a sum of per-chunk ones. Slower than chunking the weight gradient alone
# (the concatenations cost more than the chunked forward saves).

def _chunked_conv(chunk):
  def conv(lhs, rhs, *args, **kwargs):
    n = lhs.shape[0]
    if n <= chunk or n % chunk:
      return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    parts = [jax.lax.conv_general_dilated(lhs[i:i + chunk], rhs, *args, **kwargs) for i in range(0, n, chunk)]
    return jnp.concatenate(parts, 0)
  return conv


def _conv_chunks(chunk):
  def patch():
    class ChunkedConv(nn.Conv):
      conv_general_dilated: Any = staticmethod(_chunked_conv(chunk))
    ChunkedConv.__name__ = "Conv"
    nn.Conv = ChunkedConv
  return patch


conv_chunks8 = _conv_chunks(8)
conv_chunks16 = _conv_chunks(16)
conv_chunks32 = _conv_chunks(32)


# ----------------------------------------------------------------------------------------------------------
# The chunked weight gradient reading its operands through a two-way lax.cond with a runtime predicate (both
# branches the identity). A conditional's operand and result are buffers XLA cannot fuse into, so the per-chunk
# transposes read the stored conv input instead of recomputing its BN + ReLU chunk by chunk. They did (the HLO
# shows plain slice + transpose fusions), but the step was not faster: benchmarks/RESULTS.md.

def _keep(v, one):
  # jax forwards a cond's output when every branch returns its input, so the second branch multiplies by `one`
  # (1.0, or NaN when the first parameter is NaN: never a different finite result).
  return jax.lax.cond(one > 0.5, lambda a: a, lambda a: a * one.astype(a.dtype), v)


def _cond_chunked(keep_dy: bool):
  def patch():
    import functools
    from resnet_jax import models

    def operands(x, dy, w):
      one = models.runtime_one(w)
      return _keep(x, one), (_keep(dy, one) if keep_dy else dy)

    models.conv_with_chunked_weight_grad = functools.partial(models.conv_with_chunked_weight_grad,
                                                             wgrad_operands=operands)
  return patch


cond_keep_x = _cond_chunked(False)
cond_keep_xdy = _cond_chunked(True)
