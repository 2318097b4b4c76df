"""Architecture tests: parameter counts, multiply-adds, shapes and shortcuts against docs/paper.md."""

import functools
import json
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config_lib, models, summary

CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
IMAGENET_PARAMS_B = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
IMAGENET_PARAMS_A = {18: 11_515_688, 34: 21_623_848}
PAPER_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


def abstract_variables(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3))))


def n_params(model, size):
  return summary.count_params(abstract_variables(model, size))


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_param_counts_and_plain_twin(depth):
  # ResNet-1202 as its config builds it (nn.scan: the same parameters, stacked; traced in seconds, not tens).
  scan = depth >= 1202
  assert n_params(models.cifar_net(depth, scan=scan), 32) == CIFAR_PARAMS[depth]
  assert n_params(models.cifar_net(depth, residual=False, scan=scan), 32) == CIFAR_PARAMS[depth]


@pytest.mark.parametrize("depth", sorted(IMAGENET_PARAMS_B))
def test_imagenet_param_counts(depth):
  assert n_params(models.imagenet_net(depth, shortcut="B"), 224) == IMAGENET_PARAMS_B[depth]
  if depth in IMAGENET_PARAMS_A:
    assert n_params(models.imagenet_net(depth, shortcut="A"), 224) == IMAGENET_PARAMS_A[depth]
    assert n_params(models.imagenet_net(depth, residual=False), 224) == IMAGENET_PARAMS_A[depth]


def test_batch_stats_are_not_parameters():
  v = abstract_variables(models.cifar_resnet20(), 32)
  n_stats = sum(x.size for x in jax.tree.leaves(v["batch_stats"]))
  # 19 BN layers: stem (16) + 6 x 16 + 6 x 32 + 6 x 64 channels, mean and var each.
  assert n_stats == 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)


@pytest.mark.parametrize("depth", sorted(PAPER_GMACS))
def test_mult_adds_match_paper(depth):
  shortcut = "A" if depth < 50 else "B"
  macs = summary.analyze(models.imagenet_net(depth, shortcut=shortcut), 224)["mult_adds"] / 1e9
  assert abs(macs - PAPER_GMACS[depth]) / PAPER_GMACS[depth] < 0.03, macs
  if depth >= 50:
    v15 = summary.analyze(models.imagenet_net(depth, stride_placement="v1.5"), 224)["mult_adds"] / 1e9
    assert v15 > macs * 1.01


NAMED = [
    (name, 32 if name.startswith("cifar") else 224, 10 if name.startswith("cifar") else 1000)
    for name in dir(models)
    if name.startswith(("cifar_resnet", "cifar_plain", "imagenet_resnet", "imagenet_plain"))
]


@pytest.mark.parametrize("name,size,classes", NAMED)
def test_named_model_output_shapes(name, size, classes):
  model = getattr(models, name)(**({"scan": True} if name.endswith("1202") else {}))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((3, size, size, 3)))[0])
  assert out.shape == (3, classes) and out.dtype == jnp.float32


def test_fully_convolutional_on_other_sizes():
  model = models.imagenet_resnet18(num_classes=7)
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 320, 480, 3)))[0])
  assert out.shape == (1, 7)


def _shortcut_kinds(model, size):
  params = abstract_variables(model, size)["params"]
  kinds = {}
  for name, block in params.items():
    if name.startswith("stage"):
      kinds[name] = "proj" if "proj_conv" in block.get("shortcut", {}) else "identity"
  return kinds


def test_shortcut_options_A_B_C():
  a = _shortcut_kinds(models.imagenet_resnet34(shortcut="A"), 64)
  b = _shortcut_kinds(models.imagenet_resnet34(shortcut="B"), 64)
  c = _shortcut_kinds(models.imagenet_resnet34(shortcut="C"), 64)
  assert set(a.values()) == {"identity"}
  assert {k for k, v in b.items() if v == "proj"} == {"stage2_block1", "stage3_block1", "stage4_block1"}
  assert set(c.values()) == {"proj"} and len(c) == 16
  # Bottleneck with B: stage 1's first block changes 64 -> 256 channels, so it projects too.
  b50 = _shortcut_kinds(models.imagenet_resnet50(), 64)
  assert {k for k, v in b50.items() if v == "proj"} == {f"stage{i}_block1" for i in range(1, 5)}


def test_option_A_is_zero_padded_subsampled_identity():
  norm = functools.partial(models.nn.BatchNorm, use_running_average=True)
  block = models.BasicBlock(features=32, strides=2, shortcut="A", norm=norm)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  sc = models.Shortcut(32, 2, "A", models.nn.Conv, models.nn.BatchNorm)
  y = sc.apply({}, x)
  np.testing.assert_array_equal(y[..., :16], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(y[..., 16:], 0)
  assert "shortcut" not in block.init(jax.random.key(0), x)["params"]


def _zero_last_bn(params):
  """Zero the last BN (scale and bias) of every block: the residual branch then outputs exactly 0."""
  params = flax.core.unfreeze(params)
  for name, block in params.items():
    if name.startswith("stage"):
      for bn in ("bn2", "bn3"):
        if bn in block:
          block[bn] = jax.tree.map(jnp.zeros_like, block[bn])
  return params


@pytest.mark.parametrize("residual", [False, True])
def test_plain_net_has_no_shortcut_path(residual):
  """With each block's residual branch silenced, a plain net's output no longer depends on its input.

  If any shortcut (identity or projection) sneaks into the plain net, the input leaks through and this fails.
  """
  model = models.cifar_net(20, residual=residual, shortcut="B")
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = model.init(jax.random.key(0), x)
  v = {**v, "params": _zero_last_bn(v["params"])}
  out = model.apply(v, x)
  spread = float(jnp.abs(out - out[0]).max())
  if residual:
    assert spread > 1e-3
  else:
    assert spread == 0.0
    assert not any("shortcut" in "/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(v["params"])[0])


def test_scan_computes_the_same_function():
  model, scanned = models.cifar_net(32), models.cifar_net(32, scan=True)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = model.init(jax.random.key(0), x)
  vs = models.scanned_variables(v, model.stage_sizes)
  assert jax.tree.structure(vs) == jax.tree.structure(scanned.init(jax.random.key(0), x))
  np.testing.assert_allclose(model.apply(v, x), scanned.apply(vs, x), rtol=1e-5, atol=1e-5)
  (a, sa), (b, sb) = (m.apply(w, x, train=True, mutable=["batch_stats"]) for m, w in ((model, v), (scanned, vs)))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  jax.tree.map(
      lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6),
      models.scanned_variables(sa, model.stage_sizes)["batch_stats"],
      sb["batch_stats"],
  )
  remat = models.cifar_net(32, scan=True, remat=True)
  np.testing.assert_allclose(remat.apply(vs, x), scanned.apply(vs, x), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_float32_params():
  model = models.cifar_net(20, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  out, v = model.init_with_output(jax.random.key(0), x)
  assert out.dtype == jnp.float32
  assert {l.dtype for l in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}


def test_zero_init_last_bn():
  v = models.cifar_net(20, zero_init_last_bn=True).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert float(jnp.abs(v["params"]["stage1_block1"]["bn2"]["scale"]).max()) == 0.0
  assert float(jnp.abs(v["params"]["stage1_block1"]["bn1"]["scale"]).min()) == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=21), "6n\\+2"),
        (dict(depth=0), "6n\\+2"),
    ],
)
def test_bad_cifar_depth(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.cifar_net(**kwargs)


def test_bad_values_name_the_valid_ones():
  with pytest.raises(ValueError, match=r"\[18, 34, 50, 101, 152\]"):
    models.imagenet_net(42)
  with pytest.raises(ValueError, match=r"\['A', 'B', 'C'\]"):
    models.cifar_net(20, shortcut="D")
  with pytest.raises(ValueError, match=r"\['v1', 'v1.5'\]"):
    models.imagenet_net(50, stride_placement="v2")
  c = config_lib.cifar(20)
  c.model.family = "mnist"
  with pytest.raises(ValueError, match="cifar"):
    models.create_model(c.model)


def test_create_model_from_config():
  c = config_lib.imagenet(34, shortcut="C")
  m = models.create_model(c.model)
  assert m.shortcut == "C" and m.num_classes == 1000 and m.stem == "imagenet"
  m = models.create_model(config_lib.cifar(110).model, half_precision=True)
  assert m.dtype == jnp.bfloat16 and not m.scan and m.stage_sizes == [18, 18, 18]
  assert models.create_model(config_lib.cifar(1202).model).scan


@pytest.mark.parametrize(
    "config,params,gmacs",
    [
        ("configs/cifar56.py", 853_018, None),
        ("configs/plain20.py", 269_722, None),
        ("configs/imagenet_resnet50.py", 25_557_032, 3.8),
        ("configs/imagenet_plain34.py", 21_623_848, 3.6),
    ],
)
def test_summary_cli_json(config, params, gmacs):
  out = subprocess.run(
      [sys.executable, "-m", "resnet_jax.summary", f"--config={config}", "--json"],
      capture_output=True,
      text=True,
      check=True,
  ).stdout
  s = json.loads(out.strip().splitlines()[-1])
  assert s["params"] == params
  if gmacs:
    assert abs(s["mult_adds"] / 1e9 - gmacs) / gmacs < 0.03
    assert s["paper"]["mult_adds_G"] == gmacs


def test_summary_cli_table():
  out = subprocess.run(
      [sys.executable, "-m", "resnet_jax.summary", "--config=configs/cifar20.py"],
      capture_output=True,
      text=True,
      check=True,
  ).stdout
  assert "269,722" in out and "paper: 0.27M" in out and "stage3" in out
