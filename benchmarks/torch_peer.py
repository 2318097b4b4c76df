"""Peer comparison: our JAX train step against the same network in PyTorch eager, timed back to back.

    python benchmarks/torch_peer.py --config=configs/cifar20.py [--config.batch_size=128] [--windows=5]
    python benchmarks/torch_peer.py --config=configs/imagenet_resnet50.py --config.batch_size=32 --steps=2

PyTorch is not a dependency of resnet_jax (this directory is not installed with the package); install the CPU
build into the same environment to run this (`make install` does).

The PyTorch network is built from the same `config.model` (family, depth, residual, shortcut option A/B/C, stride
placement, widths, classes), with batch norm after every convolution (momentum 0.1 = flax's 0.9, eps 1e-5), and
starts from *our* initial parameters (copied from the flax init: He normal fan-out convolutions, BN scale 1 / bias 0,
flax's dense init), so the two compute the same function. Before timing, the script checks that
* the parameter counts are equal (and the shapes, one by one), and
* the training-mode logits and loss of one batch agree within float32 noise (max |difference| printed).
Both are trained with the config's optimiser: SGD, momentum 0.9, weight decay (1e-4) added to every gradient
(config.weight_decay_bn_and_bias=True, as torch.optim.SGD's weight_decay does), learning rate config.learning_rate.

Timing: `--windows` windows of `--steps` steps for each framework, alternating (JAX window, PyTorch window, JAX
window, ...) so that both see the same machine load; the medians and their ratio (JAX / PyTorch) are printed.
Each window starts with `--window_warmup` untimed steps (default 1) of the framework about to be timed, so that
windows measure steady-state steps as a training loop runs them. Without it, ours paid for the interleaving on
this project's CPU sandbox: our step frees large buffers (XLA's temporary buffer, Eigen's packing buffers), and
while the other framework's window ran, the VM handed the freed 2 MiB blocks back to its host (virtio-balloon
free page reporting), so our first step after each PyTorch window took about twice as long (benchmarks/RESULTS.md).
Our side runs through resnet_jax.benchmark.TrainBench (train.compile_steps, the training loop's compiled step); the
PyTorch side is a plain eager loop (zero_grad, forward, cross-entropy, backward, SGD step), on the default
NCHW layout unless --channels_last.

On a GPU (`--torch_device=cuda`, with JAX on the same GPU): the PyTorch twin runs on CUDA with
`torch.backends.cudnn.benchmark = True`, and with config.half_precision under `torch.autocast(bfloat16)` (AMP, float32
parameters and optimiser, as NVIDIA's reference trainer does), which is the PyTorch counterpart of our bfloat16
compute with float32 parameters. Windows end with `torch.cuda.synchronize()`. Give JAX only part of the GPU's
memory so that both fit: XLA_PYTHON_CLIENT_MEM_FRACTION=0.45.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# ----------------------------------------------------------------------------------------------------------
# The PyTorch twin of resnet_jax.models.ResNet (names mirror the flax parameter tree).


def build_torch_model(model_config):
  import torch
  from torch import nn
  from resnet_jax import models

  flax_model = models.create_model(model_config)
  block_kind, stem, widths = flax_model.block, flax_model.stem, flax_model.widths
  shortcut, placement, residual = flax_model.shortcut, flax_model.stride_placement, flax_model.residual
  bn = lambda c: nn.BatchNorm2d(c, eps=flax_model.bn_epsilon, momentum=1.0 - flax_model.bn_momentum)

  def conv(i, o, k, s):
    """PyTorch's own k x k convolution, padding k // 2 on each side, as ours (resnet_jax.models.padded_conv)."""
    return nn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=False)

  class Shortcut(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.stride, self.cin, self.cout = stride, cin, cout
      self.project = shortcut == "C" or (shortcut == "B" and (stride != 1 or cin != cout))
      if self.project:
        self.proj_conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.proj_bn = bn(cout)

    def forward(self, x):
      if self.project:
        return self.proj_bn(self.proj_conv(x))
      if self.stride != 1:
        x = x[:, :, :: self.stride, :: self.stride]
      if self.cout > self.cin:  # option A: zero channels appended
        x = nn.functional.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))
      return x

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
      super().__init__()
      self.conv1, self.bn1 = conv(cin, width, 3, stride), bn(width)
      self.conv2, self.bn2 = conv(width, width, 3, 1), bn(width)
      if residual:
        self.shortcut = Shortcut(cin, width, stride)

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if residual:
        y = y + self.shortcut(x)
      return torch.relu(y)

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
      super().__init__()
      s1, s3 = (stride, 1) if placement == "v1" else (1, stride)
      self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, stride=s1, bias=False), bn(width)
      self.conv2, self.bn2 = conv(width, width, 3, s3), bn(width)
      self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), bn(width * 4)
      if residual:
        self.shortcut = Shortcut(cin, width * 4, stride)

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = torch.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      if residual:
        y = y + self.shortcut(x)
      return torch.relu(y)

  block_cls = Basic if block_kind == "basic" else Bottleneck

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      if stem == "cifar":
        self.stem_conv = conv(3, widths[0], 3, 1)
      else:
        self.stem_conv = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
      self.stem_bn = bn(widths[0])
      cin = widths[0]
      self.blocks = nn.ModuleDict()
      for i, (n, w) in enumerate(zip(flax_model.stage_sizes, widths)):
        for j in range(n):
          self.blocks[f"stage{i + 1}_block{j + 1}"] = block_cls(cin, w, 2 if (i > 0 and j == 0) else 1)
          cin = w * block_cls.expansion
      self.head = nn.Linear(cin, flax_model.num_classes)

    def forward(self, x):
      x = torch.relu(self.stem_bn(self.stem_conv(x)))
      if stem == "imagenet":
        x = nn.functional.max_pool2d(x, 3, stride=2, padding=1)
      for blk in self.blocks.values():
        x = blk(x)
      return self.head(x.mean(dim=(2, 3)))

  net = Net()
  for m in net.modules():  # the same scheme as ours (overwritten by copy_flax_params when comparing)
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
  return net


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def copy_flax_params(net, flax_params) -> None:
  """Loads our (unscanned) flax parameters into the PyTorch twin; fails on any missing or extra tensor."""
  import numpy as np
  import torch

  flat = _flat(flax_params)
  used = set()
  tnamed = dict(net.named_parameters())
  for tname, p in tnamed.items():
    parts = tname.split(".")
    if parts[0] == "blocks":
      parts = parts[1:]
    *mod, leaf = parts
    flax_leaf = {"weight": "kernel" if ("conv" in mod[-1] or mod[-1] == "head") else "scale", "bias": "bias"}[leaf]
    key = tuple(mod) + (flax_leaf,)
    if key not in flat:
      raise KeyError(f"no flax parameter {'/'.join(key)} for torch {tname}")
    v = np.asarray(flat[key], np.float32)
    if v.ndim == 4:
      v = v.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif v.ndim == 2:
      v = v.T  # [in, out] -> [out, in]
    if tuple(v.shape) != tuple(p.shape):
      raise ValueError(f"{tname}: torch {tuple(p.shape)} vs flax {'/'.join(key)} {v.shape}")
    with torch.no_grad():
      p.copy_(torch.from_numpy(np.array(v, np.float32, copy=True)))
    used.add(key)
  extra = set(flat) - used
  if extra:
    raise ValueError(f"flax parameters without a torch twin: {sorted('/'.join(k) for k in extra)[:5]}")


class TorchBench:
  """The PyTorch twin's train step on fixed batches: eager, or with the network under torch.compile (`compiled`:
  TorchInductor's default mode, forward and backward compiled through AOTAutograd; the optimiser step stays
  PyTorch's foreach SGD, as in the usual `model = torch.compile(model)` training loop)."""

  def __init__(
      self, config, flax_params, host_batches, *, channels_last: bool, device: str = "cpu", compiled: bool = False
  ):
    import contextlib
    import torch

    self.torch = torch
    self.device = torch.device(device)
    self.cuda = self.device.type == "cuda"
    if self.cuda:
      torch.backends.cudnn.benchmark = True
    # AMP in bfloat16 for config.half_precision (float32 parameters, optimiser and loss, like ours).
    self.autocast = (
        (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
        if config.half_precision
        else contextlib.nullcontext
    )
    self.net = build_torch_model(config.model)
    copy_flax_params(self.net, flax_params)
    self.fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.net = self.net.to(device=self.device, memory_format=self.fmt)
    self.net.train()
    self.opt = torch.optim.SGD(
        self.net.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    self.batches = [
        (
            torch.from_numpy(b["image"]).permute(0, 3, 1, 2).to(self.device).contiguous(memory_format=self.fmt),
            torch.from_numpy(b["label"]).long().to(self.device),
        )
        for b in host_batches
    ]
    self.num_params = sum(p.numel() for p in self.net.parameters())
    self.train_net = torch.compile(self.net) if compiled else self.net  # logits() checks the eager twin
    self._i = 0

  def step(self):
    x, y = self.batches[self._i % len(self.batches)]
    self._i += 1
    self.opt.zero_grad(set_to_none=True)
    with self.autocast():
      logits = self.train_net(x)
    loss = self.torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    self.opt.step()
    return _CudaSync(self.torch) if self.cuda else loss

  def logits(self, x_nhwc):
    """Training-mode logits in full float32 (no autocast, no TF32 on a GPU): the function check compares the
    float32 networks."""
    torch = self.torch
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
      with torch.no_grad():
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).to(self.device).contiguous(memory_format=self.fmt)
        return self.net(x).float().cpu().numpy()
    finally:
      torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


class _CudaSync:
  """What a CUDA step returns: jax.block_until_ready (which benchmark.timed_windows calls at the end of a window)
  calls its block_until_ready, which waits for every queued CUDA kernel."""

  def __init__(self, torch):
    self.torch = torch

  def block_until_ready(self):
    self.torch.cuda.synchronize()
    return self


def check_same_function(bench, tb) -> dict:
  """Parameter counts and training-mode logits of one batch, ours vs PyTorch's (before any update)."""
  import jax
  import numpy as np
  from resnet_jax import models, train

  assert (
      bench.num_params == tb.num_params
  ), f"parameter counts differ: ours {bench.num_params:,} vs torch {tb.num_params:,}"
  host = jax.device_get(bench.state)
  batch = bench.batches[0]
  # In full float32 on both sides, also for half_precision (whose bfloat16 roundings differ between the two and
  # compound over 50 layers) and on GPUs (whose default float32 convolutions round operands to TF32): this
  # checks the function; the timing then uses each side's default path.
  model = models.create_model(bench.config.model, half_precision=False)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
  with jax.default_matmul_precision("highest"):
    ours = apply({"params": host.params, "batch_stats": host.batch_stats}, batch["image"])
  ours = np.asarray(ours)
  theirs = tb.logits(batch["image"])
  loss_ours = float(np.asarray(train.cross_entropy(ours, batch["label"]).mean()))
  loss_theirs = float(
      tb.torch.nn.functional.cross_entropy(tb.torch.from_numpy(theirs), tb.torch.from_numpy(batch["label"]).long())
  )
  diff = float(np.abs(ours - theirs).max())
  scale = float(np.abs(ours).max())
  tol = 1e-3 * max(1.0, scale)
  assert diff <= tol, f"logits differ by {diff} (scale {scale}, bound {tol}): not the same function"
  return {"params": bench.num_params, "max_abs_logit_diff": diff, "loss_ours": loss_ours, "loss_torch": loss_theirs}


def compare(
    config,
    *,
    steps: int,
    windows: int,
    warmup: int,
    channels_last: bool = False,
    skip_jax: bool = False,
    torch_device: str = "cpu",
    window_warmup: int = 1,
    torch_compile: bool = False,
) -> dict:
  """Ours, PyTorch eager and (with `torch_compile`) PyTorch under torch.compile, their windows interleaved: one
  window of each in turn, `windows` times, so that all see the same machine load."""
  import jax
  import torch
  from resnet_jax import benchmark

  bench = benchmark.TrainBench(config)
  host = jax.device_get(bench.state)
  tb = TorchBench(config, host.params, bench.batches, channels_last=channels_last, device=torch_device)
  check = check_same_function(bench, tb)
  contenders = {} if skip_jax else {"jax": bench.step}
  contenders["torch"] = tb.step
  compile_seconds = {}
  t0 = time.perf_counter()
  if not skip_jax:
    bench.compile()
  compile_seconds["jax"] = time.perf_counter() - t0
  if torch_compile:
    # Its own twin from the same initial parameters (the eager twin's steps would otherwise move them).
    tc = TorchBench(config, host.params, bench.batches, channels_last=channels_last, device=torch_device, compiled=True)
    t0 = time.perf_counter()
    jax.block_until_ready(tc.step())  # TorchInductor compiles on the first call
    compile_seconds["torch_compile"] = time.perf_counter() - t0
    contenders["torch_compile"] = tc.step
  for _ in range(warmup):
    for step in contenders.values():
      jax.block_until_ready(step())
  # Ours runs steps_per_call steps per call; the others one.
  steps_per_call = {name: 1 for name in contenders}
  if "jax" in contenders:
    steps_per_call["jax"] = bench.steps_per_call
  rates = {name: [] for name in contenders}
  cpu = {name: [] for name in contenders}
  b = config.batch_size
  loads = [os.getloadavg()[0]]
  for _ in range(windows):
    for name, step in contenders.items():
      for _ in range(window_warmup):
        jax.block_until_ready(step())
      k = steps_per_call[name]
      t = benchmark.timed_windows(step, items_per_call=b * k, calls=max(1, steps // k), windows=1)
      rates[name].append(t["rate"])
      cpu[name].append(t["cpu_seconds_per_call"] / k)
    loads.append(os.getloadavg()[0])
  med = {name: statistics.median(r) for name, r in rates.items()}
  cpu_med = {name: statistics.median(c) for name, c in cpu.items()}
  jm, tm, tcm = med.get("jax"), med["torch"], med.get("torch_compile")
  jc, tcpu = cpu_med.get("jax"), cpu_med["torch"]
  return {
      "config": benchmark.describe(config),
      "check": check,
      "jax_images_per_sec": jm,
      "torch_images_per_sec": tm,
      "torch_compile_images_per_sec": tcm,
      "ratio_jax_over_torch": jm / tm if jm else None,
      "ratio_jax_over_torch_compile": jm / tcm if jm and tcm else None,
      "jax_cpu_seconds_per_step": jc,
      "torch_cpu_seconds_per_step": tcpu,
      "torch_compile_cpu_seconds_per_step": cpu_med.get("torch_compile"),
      "cpu_time_ratio_torch_over_jax": tcpu / jc if jc else None,
      "jax_windows": rates.get("jax", []),
      "torch_windows": rates["torch"],
      "torch_compile_windows": rates.get("torch_compile", []),
      "jax_compile_seconds": compile_seconds["jax"],
      "torch_compile_seconds": compile_seconds.get("torch_compile"),
      "torch_version": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "torch_channels_last": channels_last,
      "load_average_1min": loads,
      "torch_device": str(tb.device),
      "torch_device_name": (torch.cuda.get_device_name(tb.device) if tb.cuda else None),
      "torch_autocast_bf16": bool(config.half_precision),
      "machine": benchmark.machine_info(),
      "steps": steps,
      "jax_steps_per_call": steps_per_call.get("jax"),
      "windows": windows,
      "window_warmup": window_warmup,
  }


_FLAGS: dict = {}


def define_flags() -> None:
  """Command-line flags (defined only when run as a program, so that importing this module defines none)."""
  _FLAGS.update(
      config=config_flags.DEFINE_config_file(
          "config", "configs/cifar20.py", "Config file (configs/*.py).", lock_config=True
      ),
      steps=flags.DEFINE_integer("steps", 5, "Train steps per timed window."),
      windows=flags.DEFINE_integer("windows", 5, "Timed windows per framework (medians are reported)."),
      warmup=flags.DEFINE_integer("warmup", 2, "Untimed steps per framework before timing."),
      window_warmup=flags.DEFINE_integer("window_warmup", 1, "Untimed steps before each timed window (0: none)."),
      channels_last=flags.DEFINE_bool("channels_last", False, "PyTorch: channels_last memory format."),
      torch_threads=flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads (default: PyTorch's)."),
      cpu_devices=flags.DEFINE_integer("cpu_devices", None, "JAX on CPU: split the batch over N virtual devices."),
      json=flags.DEFINE_bool("json", False, "Print one JSON object."),
      skip_jax=flags.DEFINE_bool("skip_jax", False, "Time PyTorch only (still builds ours for the checks)."),
      torch_compile=flags.DEFINE_bool(
          "torch_compile", False, "Also time the PyTorch twin under torch.compile (a third interleaved window)."
      ),
      torch_device=flags.DEFINE_string(
          "torch_device", "cpu", "PyTorch device: cpu, or cuda (then with half_precision under bfloat16 autocast)."
      ),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from resnet_jax import benchmark, cli

  f = {k: v.value for k, v in _FLAGS.items()}
  if f["window_warmup"] < 0:
    raise app.UsageError(f"--window_warmup={f['window_warmup']}: use 0 or more untimed steps per window")
  # As the training loop does; one process, so PyTorch runs with the same malloc settings as ours.
  f["config"] = cli.start(f["config"], restart=__name__ == "__main__")
  benchmark._set_cpu_devices(f["cpu_devices"])
  import torch

  if f["torch_threads"]:
    torch.set_num_threads(f["torch_threads"])
  r = compare(
      f["config"],
      steps=f["steps"],
      windows=f["windows"],
      warmup=f["warmup"],
      channels_last=f["channels_last"],
      skip_jax=f["skip_jax"],
      torch_device=f["torch_device"],
      window_warmup=f["window_warmup"],
      torch_compile=f["torch_compile"],
  )
  if f["json"]:
    print(json.dumps(r))
    return
  c, ck = r["config"], r["check"]
  print(
      f"{c['family']} resnet{c['depth']} batch {c['batch_size']}: {ck['params']:,} parameters in both; "
      f"training-mode logits differ by at most {ck['max_abs_logit_diff']:.2e} (loss {ck['loss_ours']:.5f} "
      f"vs {ck['loss_torch']:.5f})"
  )
  fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
  if r["jax_images_per_sec"]:
    print(
        f"ours (jax {r['machine']['jax_version']}, {r['machine']['device_count']} device(s)): "
        f"{r['jax_images_per_sec']:.1f} img/s  [{fmt(r['jax_windows'])}]"
    )
  print(
      f"pytorch {r['torch_version']} eager on {r['torch_device_name'] or r['torch_device']} "
      f"({r['torch_threads']} threads{', bf16 autocast' if r['torch_autocast_bf16'] else ''}"
      f"{', channels_last' if r['torch_channels_last'] else ''}): {r['torch_images_per_sec']:.1f} img/s  "
      f"[{fmt(r['torch_windows'])}]"
  )
  if r["torch_compile_images_per_sec"]:
    print(
        f"pytorch torch.compile (compiled in {r['torch_compile_seconds']:.0f} s): "
        f"{r['torch_compile_images_per_sec']:.1f} img/s  [{fmt(r['torch_compile_windows'])}]"
    )
  if r["ratio_jax_over_torch_compile"]:
    print(f"ratio ours / torch.compile: {r['ratio_jax_over_torch_compile']:.2f}x")
  if r["ratio_jax_over_torch"]:
    print(
        f"ratio ours / pytorch eager: {r['ratio_jax_over_torch']:.2f}x   (load average "
        f"{min(r['load_average_1min']):.1f}-{max(r['load_average_1min']):.1f} on {r['machine']['cpu_count']} CPUs)"
    )
    print(
        f"process CPU seconds per step: ours {r['jax_cpu_seconds_per_step']:.3f}, pytorch "
        f"{r['torch_cpu_seconds_per_step']:.3f} (pytorch / ours {r['cpu_time_ratio_torch_over_jax']:.2f}x)"
    )


if __name__ == "__main__":
  from resnet_jax import cli

  define_flags()
  cli.run(main)
