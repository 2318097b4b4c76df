r"""torchvision (and timm) ResNet weights in and out.

    python -m resnet_jax.convert from-torchvision resnet50.safetensors --workdir=runs/tv50
    python -m resnet_jax.convert to-torchvision --workdir=runs/tv50 resnet50.pth

torchvision's ResNet state dicts (`conv1`, `bn1`, `layer1.0.conv1`, ..., `downsample.0/1`, `fc`), which timm's
ResNets share, map one to one onto our ImageNet `ResNet`: convolutions OIHW <-> HWIO, the dense layer [out, in] <->
[in, out], batch norm weight/bias/running_mean/running_var <-> scale/bias/mean/var. torchvision's networks are our
v1.5 bottlenecks (stride on the 3x3) with option B shortcuts (a projection where the shape changes; a projection on
every block is option C) and k // 2 padding on each side, as ours. Depth and block type are read from the keys and
shapes; widened (wide_resnet) and grouped (ResNeXt) variants are refused with what differs.

`from_torchvision(state_dict) -> (model_config, variables)` and `to_torchvision(model_config, variables)` are the
library functions; the command writes or reads a workdir (a step-0 checkpoint and config.json) that
`resnet_jax.evaluate`, `resnet_jax.predict` and `resnet_jax.main` (fine-tuning) accept. `.safetensors` files need
only the `safetensors` package; `.pth` files (torch.save of a state dict) need PyTorch.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from safetensors.numpy import load_file, save_file

from resnet_jax import cli, config_lib, errors, models, parallel, rundir

# PyTorch is optional (only .pth files need it) and imported where it is read; the training stack (train,
# checkpoint, inference: orbax, optax) is imported by the functions that write or read a workdir, so that the
# command's usage errors answer without it.

# Blocks per stage of torchvision's resnet18 ... resnet152.
DEPTHS = {
    (2, 2, 2, 2, "basic"): 18,
    (3, 4, 6, 3, "basic"): 34,
    (3, 4, 6, 3, "bottleneck"): 50,
    (3, 4, 23, 3, "bottleneck"): 101,
    (3, 8, 36, 3, "bottleneck"): 152,
}
WIDTHS = (64, 128, 256, 512)
_BN_LEAVES = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_OPTIONAL = "num_batches_tracked"  # a BN counter that torchvision saves and our BN does not need


class ConversionError(errors.UserError, ValueError):
  """The weights are not a ResNet this project can represent, or do not fit the network they describe."""


# ----------------------------------------------------------------------------------------------------------
# Names.


def torchvision_name(collection: str, path: tuple[str, ...]) -> str:
  """torchvision's key for our variable `collection/path` (e.g. params/stage2_block1/shortcut/proj_conv/kernel)."""
  *modules, leaf = path
  if modules[0] == "head":
    return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
  if modules[0] in ("stem_conv", "stem_bn"):
    prefix = "conv1" if modules[0] == "stem_conv" else "bn1"
  else:
    m = re.fullmatch(r"stage(\d+)_block(\d+)", modules[0])
    if m is None:
      raise ConversionError(f"{'/'.join(path)} has no torchvision counterpart (a scanned model? use model.scan=False)")
    layer = f"layer{m.group(1)}.{int(m.group(2)) - 1}"
    inner = {("shortcut", "proj_conv"): "downsample.0", ("shortcut", "proj_bn"): "downsample.1"}.get(
        tuple(modules[1:3]), modules[1]
    )
    prefix = f"{layer}.{inner}"
  if leaf == "kernel":
    return f"{prefix}.weight"
  return f"{prefix}.{_BN_LEAVES[(collection, leaf)]}"


def _to_ours(name: str, array: np.ndarray) -> np.ndarray:
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if name == "fc.weight":
    return array.T
  return array


def _to_theirs(name: str, array) -> np.ndarray:
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1))  # HWIO -> OIHW
  if name == "fc.weight":
    return np.ascontiguousarray(array.T)
  return array


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if hasattr(v, "items"):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _unflatten(items) -> dict:
  out: dict = {}
  for path, v in items:
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out


# ----------------------------------------------------------------------------------------------------------
# State dict -> model.


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def _shape(state_dict, key):
  return tuple(np.shape(state_dict[key]))


def infer_model_config(state_dict: dict):
  """The model config (config.model) of the torchvision ResNet whose weights are `state_dict`."""
  keys = set(state_dict)
  if "conv1.weight" not in keys or "fc.weight" not in keys or not any(k.startswith("layer1.") for k in keys):
    found = ", ".join(sorted(keys)[:4]) or "no keys"
    hint = " (a deep-stem ResNet such as timm's resnet50d: not supported)" if "conv1.0.weight" in keys else ""
    raise ConversionError(
        f"not a torchvision/timm ResNet state dict: expected conv1.weight, layer1.0...., fc.weight; "
        f"found {found}{hint}"
    )
  stem = _shape(state_dict, "conv1.weight")
  if stem != (64, 3, 7, 7):
    raise ConversionError(
        f"unsupported variant: conv1.weight has shape {stem}, torchvision's ResNets have (64, 3, 7, 7)"
    )
  blocks = []
  for i in range(1, 5):
    ids = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
    if not ids or ids != set(range(len(ids))):
      raise ConversionError(
          f"unsupported variant: layer{i} has blocks {sorted(ids)}; expected 0..n-1 in each of layer1..layer4"
      )
    blocks.append(len(ids))
  if any(k.startswith("layer5.") for k in keys):
    raise ConversionError("unsupported variant: a layer5 (torchvision's ResNets have four stages)")
  block = "bottleneck" if "layer1.0.conv3.weight" in keys else "basic"
  depth = DEPTHS.get((*blocks, block))
  if depth is None:
    raise ConversionError(
        f"unsupported variant: {block} blocks per stage {blocks}; torchvision's ResNets are "
        + ", ".join(f"{d} = {list(k[:4])} {k[4]}" for k, d in DEPTHS.items())
    )
  for i, width in enumerate(WIDTHS, start=1):
    conv1, conv2 = _shape(state_dict, f"layer{i}.0.conv1.weight"), _shape(state_dict, f"layer{i}.0.conv2.weight")
    if conv2[1] != conv2[0]:
      raise ConversionError(
          f"unsupported variant: layer{i}.0.conv2.weight has shape {conv2}, a grouped "
          "convolution (ResNeXt?); only ungrouped ResNets are supported"
      )
    if conv1[0] != width:
      raise ConversionError(
          f"unsupported variant: layer{i}.0.conv1.weight has {conv1[0]} output channels, "
          f"torchvision's ResNet-{depth} has {width} (a wide ResNet?)"
      )
  projections = [
      f"layer{i}.{j}" for i, n in enumerate(blocks, 1) for j in range(n) if f"layer{i}.{j}.downsample.0.weight" in keys
  ]
  everywhere = len(projections) == sum(blocks)
  shortcut = "C" if everywhere else "B"
  c = config_lib.imagenet_torchvision(depth).model
  c.shortcut = shortcut
  c.num_classes = int(_shape(state_dict, "fc.weight")[0])
  return c


def from_torchvision(state_dict: dict):
  """(model_config, variables) of our ResNet from a torchvision/timm ResNet state dict (numpy arrays or tensors).

  `models.create_model(model_config).apply(variables, x, train=False)` on NHWC images computes torchvision's
  eval-mode logits of the NCHW transpose of x.
  """
  state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # nn.DataParallel's prefix
  model_config = infer_model_config(state_dict)
  model = models.create_model(model_config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
  items, used, missing, misfit = {"params": [], "batch_stats": []}, set(), [], []
  for collection in ("params", "batch_stats"):
    for path, spec in _flatten(shapes[collection]):
      name = torchvision_name(collection, path)
      if name not in state_dict:
        missing.append(name)
        continue
      used.add(name)
      value = _to_ours(name, _numpy(state_dict[name]))
      if value.shape != tuple(spec.shape):
        misfit.append(
            f"{name}: {tuple(_numpy(state_dict[name]).shape)} in the file, "
            f"{_to_theirs(name, np.zeros(spec.shape)).shape} expected"
        )
        continue
      items[collection].append((path, value))
  unexpected = sorted(k for k in state_dict if k not in used and not k.endswith(_OPTIONAL))
  what = f"ResNet-{model_config.depth} (option {model_config.shortcut})"
  if missing:
    raise ConversionError(
        f"missing keys for {what}: {', '.join(missing[:5])}"
        + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    )
  if unexpected:
    raise ConversionError(
        f"unexpected keys for {what}: {', '.join(unexpected[:5])}"
        + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
    )
  if misfit:
    raise ConversionError(f"shapes that do not fit {what}: {'; '.join(misfit[:3])}")
  return model_config, {k: _unflatten(v) for k, v in items.items()}


def to_torchvision(model_config, variables) -> dict[str, np.ndarray]:
  """torchvision's state dict (numpy arrays) of our ImageNet ResNet; loads into torchvision.models.resnetNN()
  with strict=True. Only the networks torchvision has: option B, v1.5 bottlenecks."""
  c = model_config
  problems = []
  if c.family != "imagenet" or c.depth not in (18, 34, 50, 101, 152):
    problems.append(
        f"model.family={c.family!r}, depth {c.depth}: torchvision has ImageNet ResNet-18/34/50/101/152 only"
    )
  if c.shortcut != "B":
    problems.append(f"model.shortcut={c.shortcut!r}: torchvision's blocks are option B")
  if not c.residual:
    problems.append("model.residual=False: torchvision has no plain nets")
  if c.depth >= 50 and c.stride_placement != "v1.5":
    problems.append(
        f"model.stride_placement={c.stride_placement!r}: torchvision's bottlenecks are v1.5 "
        "(stride on the 3x3), the same weights would compute another function"
    )
  if c.scan:
    problems.append("model.scan=True: convert the parameters with models.scan=False first")
  if problems:
    raise ConversionError("cannot export to torchvision's layout: " + "; ".join(problems))
  out = {}
  for collection in ("params", "batch_stats"):
    for path, value in _flatten(variables[collection]):
      name = torchvision_name(collection, path)
      out[name] = _to_theirs(name, jax.device_get(value))
      if collection == "batch_stats" and path[-1] == "mean":
        out[name.replace("running_mean", _OPTIONAL)] = np.zeros((), np.int64)
  return out


# ----------------------------------------------------------------------------------------------------------
# Files.


def _needs_torch(path: str):
  try:
    import torch
  except ImportError:
    raise ConversionError(
        f"{path}: .pth files need PyTorch (pip install -e '.[torch]', or pip install torch); "
        "or convert the file to .safetensors"
    ) from None
  return torch


def load_state_dict(path: str) -> dict:
  """A state dict from a .safetensors file (no PyTorch needed) or a .pth/.pt file of torch.save(state_dict)."""
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  try:
    if path.endswith(".safetensors"):
      return load_file(path)
    if path.endswith((".pth", ".pt", ".bin")):
      torch = _needs_torch(path)
      sd = torch.load(path, map_location="cpu", weights_only=True)
      sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
      if not isinstance(sd, dict):
        raise ConversionError(f"{path}: holds a {type(sd).__name__}, not a state dict (save model.state_dict())")
      return sd
  except ConversionError:
    raise
  except Exception as e:  # noqa: BLE001 - every reader has its own exception types for a damaged file
    raise ConversionError(
        f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    ) from None
  raise ConversionError(f"{path}: unknown format; give a .safetensors or .pth file")


def save_state_dict(state_dict: dict, path: str) -> None:
  if path.endswith(".safetensors"):
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
  elif path.endswith((".pth", ".pt")):
    torch = _needs_torch(path)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
  else:
    raise ConversionError(f"{path}: give a .safetensors or .pth output file")


def write_workdir(config, variables, workdir: str) -> str:
  """Writes `variables` as the step-0 checkpoint of a run of `config` (resolved: config_lib.resolve) in workdir
  (plus config.json)."""
  from resnet_jax import checkpoint as ckpt_lib
  from resnet_jax import train

  run = rundir.RunDir(workdir)
  if run.has_checkpoints() and any(run.checkpoints.iterdir()):
    raise ConversionError(
        f"{run.checkpoints} already holds checkpoints; choose an empty --workdir (nothing was written)"
    )
  tx = train.make_optimizer(config)
  params = jax.tree.map(jnp.asarray, variables["params"])
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=jax.tree.map(jnp.asarray, variables["batch_stats"]),
      opt_state=tx.init(params),
  )
  run.path.mkdir(parents=True, exist_ok=True)
  state = parallel.put_replicated(state, parallel.make_mesh())
  checkpointer = ckpt_lib.Checkpointer(run.checkpoints)
  checkpointer.save(0, state, ckpt_lib.meta_for(config), force=True)
  checkpointer.close()
  run.write_config(config)
  return os.fspath(run.checkpoints / "0")


def read_workdir(workdir: str):
  """(config, variables) of the newest checkpoint of a workdir, with the config it was written with."""
  from resnet_jax import inference

  config = config_lib.load_workdir_config(workdir)
  return config, inference.load_for_inference(workdir, config)


USAGE = (
    "usage: python -m resnet_jax.convert from-torchvision WEIGHTS --workdir=DIR\n"
    "       python -m resnet_jax.convert to-torchvision --workdir=DIR OUT"
)


_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["workdir"] = flags.DEFINE_string(
      "workdir", None, "The run directory to write (from-torchvision) or read (to-torchvision)."
  )


def main(argv):
  args, workdir = argv[1:], _FLAGS["workdir"].value
  if len(args) != 2 or args[0] not in ("from-torchvision", "to-torchvision") or not workdir:
    cli.fail(f"expected a command, a file and --workdir\n{USAGE}")
  command, path = args
  cli.start(restart=False)
  with cli.user_errors():
    if command == "from-torchvision":
      model_config, variables = from_torchvision(load_state_dict(path))
      config = config_lib.imagenet_torchvision(model_config.depth)
      config.model = model_config
      written = write_workdir(config_lib.resolve(config), variables, workdir)
      print(
          f"ResNet-{model_config.depth} (v1.5, option {model_config.shortcut}, {model_config.num_classes} classes) "
          f"written to {written}; evaluate with python -m resnet_jax.evaluate --workdir={workdir}"
      )
    else:
      config, variables = read_workdir(workdir)
      state_dict = to_torchvision(config.model, variables)
      save_state_dict(state_dict, path)
      print(f"{len(state_dict)} tensors written to {path} (torchvision.models.resnet{config.model.depth}())")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
