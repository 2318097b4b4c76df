"""Model summary: layers per stage, parameters and multiply-adds, beside the paper's figures.

    python -m resnet_jax.summary --config=configs/cifar56.py [--json]

Multiply-adds are counted from the model itself: every nn.Conv and nn.Dense call is intercepted during an
abstract forward pass (no FLOPs are spent) and its output size times its kernel's fan-in is summed. Batch norm,
ReLU, pooling and additions are not counted, as in the paper.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, models

# The paper's figures (docs/paper.md); ours are computed, these are only shown beside them.
PAPER_CIFAR_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
PAPER_IMAGENET_MULT_ADDS_G = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def count_params(variables) -> int:
  return int(sum(x.size for x in jax.tree.leaves(variables["params"])))


def analyze(model: nn.Module, image_size: int) -> dict:
  """Returns parameters, multiply-adds and per-stage layer counts for one image of `image_size`."""
  # nn.scan traces its body a varying number of times; count on the unscanned twin, which computes the same
  # function with the same parameters (tests/test_models.py checks that).
  model = model.clone(scan=False, remat=False)
  per_stage = OrderedDict()
  mult_adds = [0]

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (nn.Conv, nn.Dense)):
      kernel = mod.variables["params"]["kernel"]
      fan_in = math.prod(kernel.shape[:-1])
      mult_adds[0] += math.prod(out.shape[1:]) * fan_in  # batch of 1
      stage = next((p for p in mod.path if p.startswith("stage")), mod.path[0] if mod.path else "head")
      stage = stage.split("_")[0]
      kind = f"{kernel.shape[0]}x{kernel.shape[1]} conv" if isinstance(mod, nn.Conv) else "dense"
      entry = per_stage.setdefault(stage, OrderedDict())
      entry[kind] = entry.get(kind, 0) + 1
      entry["output"] = tuple(out.shape[1:])
    return out

  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)

  def init_and_count():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0), x)

  variables = jax.eval_shape(init_and_count)
  return {"params": count_params(variables), "mult_adds": int(mult_adds[0]), "stages": per_stage}


def paper_figures(model_config) -> dict:
  family, depth = model_config.family, model_config.depth
  out = {}
  if family == "cifar" and depth in PAPER_CIFAR_PARAMS_M:
    out["params_M"] = PAPER_CIFAR_PARAMS_M[depth]
  if family == "imagenet" and depth in PAPER_IMAGENET_MULT_ADDS_G:
    out["mult_adds_G"] = PAPER_IMAGENET_MULT_ADDS_G[depth]
    if model_config.shortcut == "B" and model_config.residual:
      out["params_torchvision"] = TORCHVISION_PARAMS[depth]
  return out


def summarize(config) -> dict:
  model = models.create_model(config.model)
  info = analyze(model, config.image_size)
  m = config.model
  return {
      "model": f"{m.family} {'resnet' if m.residual else 'plain'}{m.depth}",
      "shortcut": model.shortcut if m.residual else None,
      "stride_placement": model.stride_placement if model.block == "bottleneck" else None,
      "image_size": config.image_size,
      "num_classes": m.num_classes,
      "params": info["params"],
      "mult_adds": info["mult_adds"],
      "stages": {k: dict(v) for k, v in info["stages"].items()},
      "paper": paper_figures(m),
  }


def format_summary(s: dict) -> str:
  lines = [
      f"{s['model']}  (shortcut {s['shortcut']}, input {s['image_size']}x{s['image_size']}x3, "
      f"{s['num_classes']} classes)"
  ]
  lines.append(f"{'stage':<8} {'layers':<40} output")
  for stage, entry in s["stages"].items():
    layers = ", ".join(f"{n} x {k}" for k, n in entry.items() if k != "output")
    lines.append(f"{stage:<8} {layers:<40} {'x'.join(map(str, entry['output']))}")
  paper = s["paper"]
  p = f"{s['params']:,}"
  if "params_M" in paper:
    p += f"   (paper: {paper['params_M']}M)"
  if "params_torchvision" in paper:
    p += f"   (torchvision: {paper['params_torchvision']:,})"
  ma = f"{s['mult_adds'] / 1e9:.3f} G" if s["mult_adds"] > 1e8 else f"{s['mult_adds'] / 1e6:.1f} M"
  if "mult_adds_G" in paper:
    ma += f"   (paper: {paper['mult_adds_G']} G)"
  lines.append(f"parameters:   {p}")
  lines.append(f"mult-adds:    {ma}  (conv + dense, one image)")
  return "\n".join(lines)


_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
  _FLAGS["json"] = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  config = cli.start(_FLAGS["config"].value, restart=False)
  with cli.user_errors():
    s = summarize(config)
  print(json.dumps(s) if _FLAGS["json"].value else format_summary(s))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
