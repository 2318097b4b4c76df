"""The CPU seam (resnet_jax/cpu): what the plan settles, and that each formulation computes the same function.

oneDNN convolutions (cpu/onednn.py): the same function and gradients as XLA's, where and when they apply. `make
install` builds the kernels (resnet_jax/cpu/_onednn_conv.so); these tests fail, not skip, when they are missing.
Chunked weight gradients and materialised block outputs (cpu/kernels.py): the same gradients and outputs.
"""

import functools
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from helpers import REPO
from resnet_jax import config_lib, cpu, models
from resnet_jax.cpu import kernels, onednn, xla_options

ONEDNN = dict(conv_general_dilated=onednn.conv_general_dilated)
KEEP = dict(block_output=kernels.materialize)


def chunked(n):
  return dict(conv_general_dilated=kernels.conv_with_chunked_weight_grad(n))


NHWC = ("NHWC", "HWIO", "NHWC")


def test_kernels_are_built_and_load():
  assert onednn.available(), f"{onednn.unavailable_reason()}: {onednn.BUILD_HINT}"


# (batch, size, in, out, kernel, stride, padding): the CIFAR 3x3s, the ImageNet stem, 1x1 projections (option B/C),
# stride-2 3x3s with flax's SAME padding (0 before, 1 after) and explicit asymmetric padding, a non-square input.
CASES = [
    (4, 32, 16, 16, 3, 1, "SAME"),
    (3, 16, 32, 64, 3, 2, "SAME"),
    (2, 8, 64, 64, 3, 1, "SAME"),
    (2, 32, 3, 16, 3, 1, "SAME"),
    (2, 224, 3, 64, 7, 2, ((3, 3), (3, 3))),
    (3, 16, 32, 64, 1, 2, "SAME"),
    (2, 14, 8, 16, 3, 2, ((0, 1), (1, 0))),
    (2, (12, 20), 8, 8, 3, 1, "VALID"),
]


@pytest.mark.parametrize("n,size,cin,cout,k,stride,padding", CASES)
def test_same_convolution_and_gradients_as_xla(n, size, cin, cout, k, stride, padding):
  h, w = size if isinstance(size, tuple) else (size, size)
  rng = np.random.default_rng(0)  # numpy's draws: jax.random's would compile a program per shape
  x = rng.standard_normal((n, h, w, cin), np.float32)
  kernel = rng.standard_normal((k, k, cin, cout), np.float32) / np.float32(np.sqrt(k * k * cin))
  ours = lambda x, kernel: onednn.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=NHWC)
  xla = lambda x, kernel: lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST
  )
  assert "resnet_jax_onednn_conv_fwd" in jax.jit(ours).lower(x, kernel).as_text()  # oneDNN, not a fallback
  y, y_ref = jax.jit(ours)(x, kernel), jax.jit(xla)(x, kernel)
  assert y.shape == y_ref.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  dy = rng.standard_normal(y.shape, np.float32)
  grads = jax.jit(lambda x, kernel: jax.vjp(ours, x, kernel)[1](dy))(x, kernel)
  grads_ref = jax.jit(lambda x, kernel: jax.vjp(xla, x, kernel)[1](dy))(x, kernel)
  for g, g_ref in zip(grads, grads_ref):
    assert g.shape == g_ref.shape
    scale = float(jnp.max(jnp.abs(g_ref)))
    assert float(jnp.max(jnp.abs(g - g_ref))) <= 1e-5 * scale, float(jnp.max(jnp.abs(g - g_ref))) / scale


def test_kernels_refuse_shapes_that_do_not_fit():
  """Called directly with mismatched shapes, a handler returns an error instead of reading out of bounds."""
  assert onednn.available()
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  attrs = onednn._attrs((1, 1), ((1, 1), (1, 1)))
  for out_shape in ((2, 8, 8, 5), (2, 9, 8, 4), (3, 8, 8, 4)):
    call = jax.ffi.ffi_call("resnet_jax_onednn_conv_fwd", jax.ShapeDtypeStruct(out_shape, jnp.float32))
    with pytest.raises(Exception, match="operand shapes do not fit together"):
      jax.block_until_ready(jax.jit(lambda a, b: call(a, b, **attrs))(x, kernel))
  ok = jax.ffi.ffi_call("resnet_jax_onednn_conv_fwd", jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32))
  np.testing.assert_allclose(jax.jit(lambda a, b: ok(a, b, **attrs))(x, kernel)[0, 3, 3], 36.0)


def test_what_onednn_does_not_cover_falls_back_to_xla():
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  cases = {
      "bfloat16": dict(lhs=x.astype(jnp.bfloat16), rhs=kernel.astype(jnp.bfloat16)),
      "dilation": dict(rhs_dilation=(2, 2)),
      "groups": dict(rhs=jnp.ones((3, 3, 2, 4)), feature_group_count=2),
      "NCHW": dict(lhs=jnp.ones((2, 4, 8, 8)), dimension_numbers=("NCHW", "HWIO", "NCHW")),
  }
  for name, kw in cases.items():
    args = dict(lhs=x, rhs=kernel, window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC) | kw
    text = jax.jit(lambda: onednn.conv_general_dilated(**args)).lower().as_text()
    assert "onednn" not in text and "convolution" in text, name
    ref = lax.conv_general_dilated(**args)
    np.testing.assert_allclose(
        np.asarray(onednn.conv_general_dilated(**args), np.float32), np.asarray(ref, np.float32), rtol=1e-6
    )


def test_resnet_with_onednn_is_the_same_network():
  """ResNet-8 (every kind of block once; and option B): the same loss to float32 rounding, the same gradients for
  every parameter."""
  x = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
  labels = jax.random.randint(jax.random.key(2), (16,), 0, 10)
  for shortcut in ("A", "B"):
    xla, ours = models.cifar_net(8, shortcut=shortcut), models.cifar_net(8, shortcut=shortcut, **ONEDNN)
    v = xla.init(jax.random.key(0), x[:2])
    assert jax.tree.structure(v) == jax.tree.structure(ours.init(jax.random.key(0), x[:2]))

    def grads(model):
      def loss(params):
        logits, stats = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), stats

      return jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])

    ((la, sa), ga), ((lb, sb), gb) = grads(xla), grads(ours)
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    flat_b = flax.traverse_util.flatten_dict(gb)
    for path, a in flax.traverse_util.flatten_dict(ga).items():
      scale = float(jnp.max(jnp.abs(a)))
      assert float(jnp.max(jnp.abs(a - flat_b[path]))) <= 1e-4 * scale + 1e-7, (shortcut, path)


def test_scanned_deep_net_uses_onednn():
  """nn.scan over a stage's blocks (the ResNet-1202 setting) runs the custom calls inside the loop."""
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  plain = models.cifar_net(32, **ONEDNN)
  scanned = models.cifar_net(32, scan=True, **ONEDNN)
  v = plain.init(jax.random.key(0), x)
  vs = models.scanned_variables(v, [5, 5, 5])
  text = jax.jit(lambda v: scanned.apply(v, x)).lower(vs).as_text()
  assert "resnet_jax_onednn_conv_fwd" in text and "stablehlo.while" in text
  np.testing.assert_allclose(
      jax.jit(lambda v: scanned.apply(v, x))(vs), jax.jit(lambda v: plain.apply(v, x))(v), rtol=1e-4, atol=1e-5
  )


def test_block_outputs_are_still_materialized():
  """With oneDNN convolutions, XLA could still recompute a stage's residual chain in every consumer; with
  cpu.materialize_blocks (on for CPU) no fusion of the ResNet-32 train step reads more than 3 convolution outputs."""
  x = jnp.zeros((8, 32, 32, 3))
  widest = {}
  for keep in (False, True):
    model = models.cifar_net(32, **ONEDNN, **(KEEP if keep else {}))
    v = model.init(jax.random.key(0), x)
    grad = jax.jit(
        jax.grad(
            lambda p: model.apply(
                {"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
            )[0].sum()
        )
    )
    hlo = grad.lower(v["params"]).compile().as_text()
    convs = set(
        re.findall(r"%([\w.-]+) = \S+ custom-call\([^)]*\), custom_call_target=\"resnet_jax_onednn_conv_fwd\"", hlo)
    )
    assert len(convs) == 31, len(convs)
    entry = hlo[hlo.index("\nENTRY") :]
    widest[keep] = max(
        sum(op in convs for op in re.findall(r"%([\w.-]+)", line.split(" fusion(")[1].split(")")[0]))
        for line in entry.splitlines()
        if " fusion(" in line
    )
  assert widest[True] <= 3 < widest[False], widest


def test_onednn_resolves_where_it_applies():
  assert onednn.resolve("auto", "cpu", 1) is True
  assert onednn.resolve("onednn", "cpu", 1) is True
  assert onednn.resolve("auto", "cpu", 8) is False  # several devices: XLA's convolutions
  assert onednn.resolve("auto", "gpu", 1) is False and onednn.resolve("onednn", "gpu", 1) is False
  assert onednn.resolve("eigen", "cpu", 1) is False and onednn.resolve("xla_default", "cpu", 1) is False
  with pytest.raises(ValueError, match="runs on one CPU device, this run has 8"):
    onednn.resolve("onednn", "cpu", 8)
  assert onednn.resolve("auto", "cpu", 1, half_precision=True) is False  # bfloat16: XLA's convolutions
  with pytest.raises(ValueError, match="computes in float32, and half_precision=True asks for bfloat16"):
    onednn.resolve("onednn", "cpu", 1, half_precision=True)


def test_plan_settles_every_auto_once():
  c = config_lib.cifar(20)
  assert dict(c.cpu) == {
      "convolutions": "auto",
      "weight_grad_chunk": -1,
      "materialize_blocks": None,
      "host_malloc": "auto",
  }
  one = cpu.plan(c, platform="cpu", device_count=1)
  assert (one.convolutions, one.weight_grad_chunk, one.materialize_blocks) == ("onednn", 0, True)
  assert one.options == xla_options._EIGEN_CONVOLUTIONS  # for any convolution left to XLA
  assert one.init_options == xla_options._FAST_INIT
  assert one.model_kwargs() == {
      "conv_general_dilated": onednn.conv_general_dilated,
      "block_output": kernels.materialize,
  }
  eight = cpu.plan(c, platform="cpu", device_count=8)  # XLA's SPMD partitioner does not split custom calls
  assert (eight.convolutions, eight.weight_grad_chunk, eight.materialize_blocks) == ("eigen", 8, True)
  assert eight.model_kwargs()["conv_general_dilated"] is not None
  gpu = cpu.plan(c, platform="gpu", device_count=1)
  assert (gpu.convolutions, gpu.weight_grad_chunk, gpu.materialize_blocks, gpu.options) == ("native", 0, False, {})
  assert gpu.init_options == {}
  assert gpu.model_kwargs() == {"conv_general_dilated": None, "block_output": None}
  c.half_precision = True
  assert cpu.plan(c, platform="cpu", device_count=1).convolutions == "eigen"
  c.half_precision, c.cpu.convolutions, c.cpu.materialize_blocks = False, "xla_default", False
  p = cpu.plan(c, platform="cpu", device_count=1)
  assert (p.convolutions, p.weight_grad_chunk, p.materialize_blocks, p.options) == ("xla_default", 8, False, {})
  c.cpu.convolutions, c.cpu.weight_grad_chunk = "onednn", 16
  with pytest.raises(ValueError, match="runs on one CPU device, this run has 8"):
    cpu.plan(c, platform="cpu", device_count=8)
  assert set(one.describe()) == {
      "platform",
      "convolutions",
      "weight_grad_chunk",
      "materialize_blocks",
      "xla_compiler_options",
      "xla_init_compiler_options",
      "host_malloc",
      "host_malloc_reason",
  }


def test_fast_compiling_initialiser_gives_the_same_bits():
  """The plan's initialiser options (a lower LLVM optimisation level) must not change a bit of the initial
  parameters: the reference is the network's initialiser compiled with XLA's defaults."""
  from resnet_jax import train

  config = config_lib.cifar(8)
  plan = cpu.plan(config, platform="cpu", device_count=1)
  assert plan.init_options
  model, tx = models.create_model(config.model), train.make_optimizer(config)
  state = train.init_host_state(model, tx, config, compiler_options=plan.init_options)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  reference = jax.jit(functools.partial(model.init, train=False))(jax.random.key(config.seed), x)
  got = {"params": state.params, "batch_stats": state.batch_stats}
  assert jax.tree.structure(got) == jax.tree.structure(reference)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)


def test_bad_cpu_settings_are_listed_together():
  c = config_lib.cifar(20)
  c.cpu.convolutions, c.cpu.weight_grad_chunk, c.cpu.materialize_blocks = "mkl", -3, None
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert "cpu.convolutions='mkl': valid values are ['auto', 'onednn', 'eigen', 'xla_default']" in str(e.value)
  assert "cpu.weight_grad_chunk=-3: use -1 (automatic" in str(e.value)


def test_building_a_model_neither_starts_a_backend_nor_imports_the_cpu_code():
  script = (
      "import jax, sys\nfrom jax._src import xla_bridge\nfrom resnet_jax import config_lib, models\n"
      "m = models.create_model(config_lib.imagenet(50).model)\n"
      "jax.eval_shape(lambda: m.init(jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3))))\n"
      "print(xla_bridge.backends_are_initialized(), 'resnet_jax.cpu' in sys.modules)"
  )
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_missing_kernels_are_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setattr(onednn, "LIBRARY", str(tmp_path / "missing.so"))
  onednn._load.cache_clear()
  try:
    assert onednn.resolve("auto", "cpu", 1) is False  # 'auto' falls back to XLA's Eigen convolutions
    with pytest.raises(ValueError, match=r"not available \(.*missing.so is not built\); build them with `make inst"):
      onednn.resolve("onednn", "cpu", 1)
    c = config_lib.cifar(20)
    c.cpu.convolutions = "onednn"
    with pytest.raises(config_lib.ConfigError, match="cpu.convolutions='onednn': the oneDNN kernels are not available"):
      config_lib.validate(c)
  finally:
    monkeypatch.undo()
    onednn._load.cache_clear()
  assert onednn.available()


# One case in `make test`; an uneven chunk with option B and bfloat16 in `make test-slow` (the suite's time budget).
@pytest.mark.parametrize(
    "chunk,shortcut,dtype",
    [
        (8, "A", jnp.float32),
        pytest.param(5, "B", jnp.float32, marks=pytest.mark.slow),
        pytest.param(8, "A", jnp.bfloat16, marks=pytest.mark.slow),
    ],
)
def test_chunked_weight_gradient_is_the_same_gradient(chunk, shortcut, dtype):
  """weight_grad_chunk changes only the summation order of the weight gradients (chunk 5: 24 = 5+5+5+5+4)."""
  x = jax.random.normal(jax.random.key(1), (24, 32, 32, 3))
  labels = jax.random.randint(jax.random.key(2), (24,), 0, 10)
  whole = models.cifar_net(8, shortcut=shortcut, dtype=dtype)
  in_chunks = models.cifar_net(8, shortcut=shortcut, dtype=dtype, **chunked(chunk))
  v = whole.init(jax.random.key(0), x[:2])

  def grads(model):
    def loss(params):
      logits, _ = model.apply(
          {"params": params, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
      )
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return jax.jit(jax.value_and_grad(loss))(v["params"])

  (la, ga), (lb, gb) = grads(whole), grads(in_chunks)
  assert float(la) == float(lb)  # the forward pass is untouched
  tol = 1e-4 if dtype == jnp.float32 else 3e-2
  for path, a in flax.traverse_util.flatten_dict(ga).items():
    b = flax.traverse_util.flatten_dict(gb)[path]
    assert a.dtype == b.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(a)))
    assert float(jnp.max(jnp.abs(a - b))) <= tol * scale + 1e-7, path
  # It really is in use: each convolution (7; option B adds two projections) has a weight gradient per chunk.
  n_conv = (
      lambda m: jax.jit(
          jax.grad(
              lambda p: m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])[
                  0
              ].sum()
          )
      )
      .lower(v["params"])
      .as_text()
      .count("stablehlo.convolution")
  )
  convs = 7 if shortcut == "A" else 9
  assert n_conv(in_chunks) - n_conv(whole) == convs * (-(-24 // chunk) - 1)


def test_materialized_blocks_compute_the_same_function():
  """materialize_blocks divides each block output by a runtime 1.0: outputs, statistics and gradients unchanged."""
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  plain, kept = models.cifar_net(20), models.cifar_net(20, **KEEP)
  v = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(v) == jax.tree.structure(kept.init(jax.random.key(0), x))

  def run(model):
    def f(params):
      out, stats = model.apply(
          {"params": params, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"]
      )
      return jnp.sum(out**2), (out, stats)

    return jax.jit(jax.grad(f, has_aux=True))(v["params"])

  (ga, (oa, sa)), (gb, (ob, sb)) = run(plain), run(kept)
  np.testing.assert_allclose(oa, ob, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves((ga, sa)), jax.tree.leaves((gb, sb))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(kernels.runtime_one(jnp.array([-3.0, 2.0]))) == 1.0


def test_cpu_formulations_inside_the_scanned_body():
  """Chunked weight gradients in a scanned stage (ResNet-1202's setting): the same gradients."""
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  scanned, in_chunks = models.cifar_net(32, scan=True), models.cifar_net(32, scan=True, **chunked(2), **KEEP)
  vs = scanned.init(jax.random.key(0), x)
  grad = lambda m: jax.jit(
      jax.grad(
          lambda p: jnp.sum(
              m.apply({"params": p, "batch_stats": vs["batch_stats"]}, x, train=True, mutable=["batch_stats"])[0] ** 2
          )
      )
  )(vs["params"])
  jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5), grad(scanned), grad(in_chunks))
