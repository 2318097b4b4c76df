"""ResNets and their plain twins (He et al., 2015) in flax.linen.

One module, `ResNet`, covers every network in the paper:

* CIFAR-10 (section 4.2): 3x3 stem with 16 filters, three stages of n basic blocks at 16/32/64 filters, depth
  6n+2, shortcut option A by default.
* ImageNet (section 3.4, Table 1): 7x7/2 stem + 3x3/2 max pool, four stages at 64/128/256/512 base filters,
  basic blocks (18, 34) or bottleneck blocks with 4x expansion (50, 101, 152).

Shortcut options (section 3.3): 'A' zero-padded identity (subsample by the stride, append zero channels), 'B'
a 1x1 projection only where the shape changes, 'C' a projection on every block. `residual=False` gives the plain
twin: the same convolutions and batch norms, with no shortcut at all.

Batch norm follows every convolution and precedes the ReLU (post-activation, "v1"). Bottleneck stride placement
'v1' (the paper) puts the stride on the first 1x1 conv; 'v1.5' (torchvision, flax) puts it on the 3x3.

The identical blocks of a stage (every block but the first) can run under `nn.scan`, so that deep nets such as
ResNet-1202 compile in about the time of a shallow one; `scanned_params` converts parameters between the two
layouts, which compute the same function.

Platform-specific formulations of the same function (CPU convolution kernels, a hook on block outputs) come in
as plain arguments, `conv_general_dilated` and `block_output` (resnet_jax/cpu chooses them); building a model never
asks which backend is running.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

SHORTCUT_OPTIONS = ("A", "B", "C")
STRIDE_PLACEMENTS = ("v1", "v1.5")
FAMILIES = ("cifar", "imagenet")
IMAGENET_DEPTHS = {
    18: ([2, 2, 2, 2], "basic"),
    34: ([3, 4, 6, 3], "basic"),
    50: ([3, 4, 6, 3], "bottleneck"),
    101: ([3, 4, 23, 3], "bottleneck"),
    152: ([3, 8, 36, 3], "bottleneck"),
}
CIFAR_PAPER_DEPTHS = (20, 32, 44, 56, 110, 1202)

# He et al. (2015, "Delving deep into rectifiers") initialisation, in torchvision's fan-out form.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Shortcut(nn.Module):
  """The shortcut path of a block: identity (A, or B/C where allowed) or a 1x1 projection + BN."""

  features: int
  strides: int
  option: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    changes_shape = self.strides != 1 or in_features != self.features
    if self.option == "C" or (self.option == "B" and changes_shape):
      x = self.conv(self.features, (1, 1), (self.strides, self.strides), name="proj_conv")(x)
      return self.norm(name="proj_bn")(x)
    if self.strides != 1:
      x = x[:, :: self.strides, :: self.strides, :]
    if in_features < self.features:  # option A: zero-pad the extra channels (no parameters)
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - in_features)))
    elif in_features > self.features:
      raise ValueError(f"option A cannot shrink channels ({in_features} -> {self.features})")
    return x


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (Figure 2 / Figure 5 left)."""

  features: int
  strides: int = 1
  residual: bool = True
  shortcut: str = "A"
  stride_placement: str = "v1"  # unused: a basic block has one place for the stride
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  act: Callable = nn.relu
  zero_init_last_bn: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), name="conv1")(x)
    y = self.norm(name="bn1")(y)
    self.sow("intermediates", "response", y)  # Figure 7: after BN, before ReLU / addition
    y = self.act(y)
    y = self.conv(self.features, (3, 3), name="conv2")(y)
    last_scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = self.norm(name="bn2", scale_init=last_scale)(y)
    self.sow("intermediates", "response", y)
    if self.residual:
      y = y + Shortcut(self.features, self.strides, self.shortcut, self.conv, self.norm, name="shortcut")(x)
    return self.act(y)


class BottleneckBlock(nn.Module):
  """1x1 (reduce) - 3x3 - 1x1 (expand 4x) (Figure 5 right)."""

  features: int
  strides: int = 1
  residual: bool = True
  shortcut: str = "B"
  stride_placement: str = "v1"
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = nn.BatchNorm
  act: Callable = nn.relu
  zero_init_last_bn: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x):
    s1, s3 = (self.strides, 1) if self.stride_placement == "v1" else (1, self.strides)
    y = self.conv(self.features, (1, 1), (s1, s1), name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), (s3, s3), name="conv2")(y)
    y = self.norm(name="bn2")(y)
    self.sow("intermediates", "response", y)
    y = self.act(y)
    y = self.conv(self.features * 4, (1, 1), name="conv3")(y)
    last_scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = self.norm(name="bn3", scale_init=last_scale)(y)
    if self.residual:
      y = y + Shortcut(self.features * 4, self.strides, self.shortcut, self.conv, self.norm, name="shortcut")(x)
    return self.act(y)


def padded_conv(conv: ModuleDef) -> Callable:
  """`conv` (an nn.Conv partial) padding every k x k convolution by k // 2 pixels on each side unless given.

  As the paper's Caffe/Torch networks and torchvision: a stride-2 3x3 convolution then centres output (i, j) on
  input (2i, 2j), where the shortcut samples. flax/XLA's 'SAME' would pad it on an even input by (0, 1) and centre
  it on (2i + 1, 2j + 1), one pixel off its shortcut.
  """

  def make(features, kernel_size, strides=(1, 1), **kwargs):
    kwargs.setdefault("padding", tuple((k // 2, k // 2) for k in kernel_size))
    return conv(features, kernel_size, strides, **kwargs)

  return make


class _ScanCell(nn.Module):
  """Adapts a block to nn.scan's (carry, x) -> (carry, y) signature."""

  block_cls: ModuleDef
  block_kwargs: Any

  @nn.compact
  def __call__(self, carry, _):
    return self.block_cls(**dict(self.block_kwargs), name="block")(carry), None


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
  """A residual (or plain) network; see the module docstring.

  Attributes:
    stage_sizes: blocks per stage, e.g. [3, 3, 3] (CIFAR ResNet-20) or [3, 4, 6, 3] (ResNet-34/50).
    block: 'basic' or 'bottleneck'.
    stem: 'cifar' (3x3 conv, 16 filters) or 'imagenet' (7x7/2 conv, 64 filters, 3x3/2 max pool).
    widths: base filters per stage (16/32/64 on CIFAR, 64/128/256/512 on ImageNet).
    residual: False builds the plain twin (no shortcuts, identical layers otherwise).
    shortcut: 'A', 'B' or 'C' (section 3.3).
    stride_placement: 'v1' (paper) or 'v1.5' (stride on the bottleneck's 3x3).
    zero_init_last_bn: zero-initialise the scale of each block's last BN (Goyal et al.); off in the paper.
    dtype: computation dtype (bfloat16 for mixed precision); parameters and BN statistics stay float32.
    scan: run each stage's identical blocks under nn.scan (same function, much faster compile for deep nets).
    remat: rematerialise each block in the backward pass (less memory, about a third more compute).
    conv_general_dilated: the convolution function of every nn.Conv (None: lax.conv_general_dilated); it must
      compute the same function (resnet_jax/cpu passes oneDNN's kernels or chunked weight gradients).
    block_output: `block_output(y, anchor) -> y`, applied to every block output (None: nothing); `anchor` is a
      replicated parameter (the stem BN scale) for hooks that need a value XLA cannot see at compile time. It
      must return y unchanged in value (resnet_jax/cpu's `materialize` changes only how XLA fuses it).
  """

  stage_sizes: Sequence[int]
  block: str = "basic"
  stem: str = "cifar"
  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10
  residual: bool = True
  shortcut: str = "A"
  stride_placement: str = "v1"
  zero_init_last_bn: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  scan: bool = False
  remat: bool = False
  conv_general_dilated: Callable | None = None
  block_output: Callable | None = None

  def __post_init__(self):
    validate_architecture(
        block=self.block,
        stem=self.stem,
        shortcut=self.shortcut,
        stride_placement=self.stride_placement,
        stage_sizes=self.stage_sizes,
        widths=self.widths,
        num_classes=self.num_classes,
    )
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv_kwargs = dict(use_bias=False, dtype=self.dtype, kernel_init=he_normal)
    if self.conv_general_dilated is not None:
      conv_kwargs["conv_general_dilated"] = self.conv_general_dilated
    conv = padded_conv(functools.partial(nn.Conv, **conv_kwargs))
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
    )
    block_cls = BLOCKS[self.block]
    if self.remat:
      block_cls = nn.remat(block_cls)
    x = x.astype(self.dtype)
    if self.stem == "cifar":
      x = conv(self.widths[0], (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      x = conv(self.widths[0], (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if self.block_output is not None:
      anchor = self.variables["params"]["stem_bn"]["scale"]
      keep = lambda y: self.block_output(y, anchor)
    else:
      keep = lambda y: y
    for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      kwargs = dict(
          features=width,
          residual=self.residual,
          shortcut=self.shortcut,
          stride_placement=self.stride_placement,
          conv=conv,
          norm=norm,
          zero_init_last_bn=self.zero_init_last_bn,
      )
      x = keep(block_cls(strides=1 if i == 0 else 2, name=f"stage{i + 1}_block1", **kwargs)(x))
      if n_blocks == 1:
        continue
      if self.scan:
        # The remaining blocks share one shape: one compiled body, parameters stacked on a leading axis.
        scan = nn.scan(
            _ScanCell,
            variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
            split_rngs={"params": True},
            length=n_blocks - 1,
        )
        x, _ = scan(block_cls, tuple(sorted(kwargs.items())), name=f"stage{i + 1}_rest")(x, None)
      else:
        for j in range(1, n_blocks):
          x = keep(block_cls(name=f"stage{i + 1}_block{j + 1}", **kwargs)(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # float32 logits for bfloat16 compute


def validate_architecture(*, block, stem, shortcut, stride_placement, stage_sizes, widths, num_classes):
  if block not in BLOCKS:
    raise ValueError(f"unknown block {block!r}: valid values are {sorted(BLOCKS)}")
  if stem not in FAMILIES:
    raise ValueError(f"unknown stem {stem!r}: valid values are {list(FAMILIES)}")
  if shortcut not in SHORTCUT_OPTIONS:
    raise ValueError(f"unknown shortcut option {shortcut!r}: valid values are {list(SHORTCUT_OPTIONS)}")
  if stride_placement not in STRIDE_PLACEMENTS:
    raise ValueError(f"unknown stride placement {stride_placement!r}: valid values are {list(STRIDE_PLACEMENTS)}")
  if len(stage_sizes) != len(widths) or not stage_sizes or min(stage_sizes) < 1:
    raise ValueError(f"stage_sizes {list(stage_sizes)} must be positive and match widths {list(widths)}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")


# ----------------------------------------------------------------------------------------------------------
# Named networks.


def cifar_stage_sizes(depth: int) -> list[int]:
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(f"CIFAR depth must be 6n+2 with n >= 1 (the paper uses {list(CIFAR_PAPER_DEPTHS)}), got {depth!r}")
  n = (depth - 2) // 6
  return [n, n, n]


def imagenet_stage_sizes(depth: int) -> tuple[list[int], str]:
  if depth not in IMAGENET_DEPTHS:
    raise ValueError(f"unknown ImageNet depth {depth!r}: valid values are {sorted(IMAGENET_DEPTHS)}")
  return IMAGENET_DEPTHS[depth]


def cifar_net(depth: int, residual: bool = True, **kwargs) -> ResNet:
  kwargs.setdefault("shortcut", "A")
  return ResNet(
      stage_sizes=cifar_stage_sizes(depth),
      block="basic",
      stem="cifar",
      widths=(16, 32, 64),
      residual=residual,
      **kwargs,
  )


def imagenet_net(depth: int, residual: bool = True, **kwargs) -> ResNet:
  stage_sizes, block = imagenet_stage_sizes(depth)
  kwargs.setdefault("shortcut", "A" if depth < 50 else "B")  # Table 2 uses A for 18/34, B for 50+
  kwargs.setdefault("num_classes", 1000)
  return ResNet(
      stage_sizes=stage_sizes, block=block, stem="imagenet", widths=(64, 128, 256, 512), residual=residual, **kwargs
  )


cifar_resnet20 = functools.partial(cifar_net, 20)
cifar_resnet32 = functools.partial(cifar_net, 32)
cifar_resnet44 = functools.partial(cifar_net, 44)
cifar_resnet56 = functools.partial(cifar_net, 56)
cifar_resnet110 = functools.partial(cifar_net, 110)
cifar_resnet1202 = functools.partial(cifar_net, 1202)
cifar_plain20 = functools.partial(cifar_net, 20, residual=False)
cifar_plain32 = functools.partial(cifar_net, 32, residual=False)
cifar_plain44 = functools.partial(cifar_net, 44, residual=False)
cifar_plain56 = functools.partial(cifar_net, 56, residual=False)
cifar_plain110 = functools.partial(cifar_net, 110, residual=False)
cifar_plain1202 = functools.partial(cifar_net, 1202, residual=False)
imagenet_resnet18 = functools.partial(imagenet_net, 18)
imagenet_resnet34 = functools.partial(imagenet_net, 34)
imagenet_resnet50 = functools.partial(imagenet_net, 50)
imagenet_resnet101 = functools.partial(imagenet_net, 101)
imagenet_resnet152 = functools.partial(imagenet_net, 152)
imagenet_plain18 = functools.partial(imagenet_net, 18, residual=False)
imagenet_plain34 = functools.partial(imagenet_net, 34, residual=False)


def create_model(
    model_config,
    *,
    half_precision: bool = False,
    bn_axis_name: str | None = None,
    conv_general_dilated: Callable | None = None,
    block_output: Callable | None = None,
) -> ResNet:
  """Builds the network described by `config.model` (the single way configs make models).

  `conv_general_dilated` and `block_output` are the platform's formulations of the same function (see ResNet);
  the training and benchmark steps pass resnet_jax.cpu's plan, other callers get XLA's defaults.
  """
  c = model_config
  if c.family not in FAMILIES:
    raise ValueError(f"unknown model.family {c.family!r}: valid values are {list(FAMILIES)}")
  builder = cifar_net if c.family == "cifar" else imagenet_net
  return builder(
      c.depth,
      residual=c.residual,
      shortcut=c.shortcut,
      num_classes=c.num_classes,
      stride_placement=c.stride_placement,
      zero_init_last_bn=c.zero_init_last_bn,
      bn_momentum=c.bn_momentum,
      bn_epsilon=c.bn_epsilon,
      scan=c.scan,
      remat=c.remat,
      bn_axis_name=bn_axis_name,
      dtype=jnp.bfloat16 if half_precision else jnp.float32,
      conv_general_dilated=conv_general_dilated,
      block_output=block_output,
  )


# ----------------------------------------------------------------------------------------------------------
# Scanned <-> unscanned parameter layouts.


def scanned_variables(variables, stage_sizes: Sequence[int]):
  """Converts variables of an unscanned ResNet to the layout of the same net with `scan=True`."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    new = {k: v for k, v in tree.items() if not (k.startswith("stage") and "_block" in k and not k.endswith("_block1"))}
    for i, n in enumerate(stage_sizes):
      if n > 1:
        rest = [tree[f"stage{i + 1}_block{j + 1}"] for j in range(1, n)]
        new[f"stage{i + 1}_rest"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *rest)}
    out[collection] = new
  return out
