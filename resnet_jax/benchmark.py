"""Throughput, compile time and memory of the train step of any config.

    python -m resnet_jax.benchmark --config=configs/cifar56.py [--json] [--steps N] [--config.FIELD=VALUE ...]

Measures, on the devices JAX sees:
* compile time of the train step (lower + compile, timed separately), and of the eval step;
* train img/s: the median of `--windows` timed windows of `--steps` steps each, after `--warmup` steps; the calls
  of a window are dispatched back to back (through `train.compile_steps`' CompiledSteps, the same compiled step and
  host-to-device batch placement the training loop uses) and the clock stops when the window's last state is ready. With
  input_backend='tfdata' batches are random, pre-normalised arrays of the config's shape held in host memory, so
  this excludes the input pipeline; with input_backend='device' they are drawn on the devices; each call is
  `CompiledSteps.train` of config.steps_per_call steps, as the training loop runs them;
* eval img/s, the same way, with the eval step on the batches evaluation uses (parallel.eval_batch);
* input-pipeline img/s alone: the training input of inputs.Data, exactly as the training loop reads it, without
  the model: the tf.data pipeline (real tfds data when config.dataset names one that is present, with its
  augmentation; random images with the same augmentation when dataset='fake'), or with input_backend='device'
  the jitted draw-and-augment on the devices;
* peak host memory (getrusage max RSS of this process) and, where the device reports it (GPUs, TPUs), peak device
  memory (`memory_stats()['peak_bytes_in_use']`, null on CPU);
* the compiled step's FLOPs (XLA cost analysis) and the achieved FLOP/s.

`--compare_steps_per_call=1,4` measures instead the train img/s of each config.steps_per_call value given, with
their windows interleaved in one process, and the ratios to the first.

`--json` prints one JSON object with all of these plus the machine (platform, device kind and count, CPU count)
and the jax / flax versions. On CPU the device count can be raised before JAX starts with `--cpu_devices=N`
(the same as XLA_FLAGS=--xla_force_host_platform_device_count=N); the global batch is then split over N
devices (same mathematics: BN statistics stay global with config.bn_sync=True).

Results of this machine: benchmarks/RESULTS.md. The PyTorch peer comparison: benchmarks/torch_peer.py; the ImageNet
JPEG preprocessing alone: benchmarks/imagenet_preprocessing.py.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from typing import Any, Callable

import numpy as np
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, config_lib, cpu, errors, pieces

# JAX and the modules built on it (train, inputs, parallel, compiled_steps) are imported inside the functions that
# use them: --help and config errors answer without them.

_FLAGS: dict = {}


def define_flags():
  """The command-line flags (defined only when run as a program, so that importing this module defines none)."""
  _FLAGS.update(
      {
          "config": config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True),
          "json": flags.DEFINE_bool("json", False, "Print one JSON object instead of a table."),
          "steps": flags.DEFINE_integer("steps", 10, "Train steps per timed window."),
          "windows": flags.DEFINE_integer("windows", 3, "Timed train windows (the median is reported)."),
          "warmup": flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation."),
          "eval_steps": flags.DEFINE_integer("eval_steps", 2, "Eval batches per timed eval window (0: skip eval)."),
          "input_steps": flags.DEFINE_integer("input_steps", 20, "Batches per timed input-pipeline window (0: skip)."),
          "cpu_devices": flags.DEFINE_integer(
              "cpu_devices",
              None,
              "On CPU: split the host into N JAX devices and the "
              "batch over them (must be set before JAX starts, as this flag is).",
          ),
          "compare_steps_per_call": flags.DEFINE_list(
              "compare_steps_per_call",
              None,
              "Instead of the measurements above: train img/s for each of these "
              "config.steps_per_call values (e.g. 1,4), their timed windows interleaved in one process.",
          ),
          "compilation_cache": flags.DEFINE_bool(
              "compilation_cache",
              False,
              "Use the persistent compilation cache "
              "(JAX_COMPILATION_CACHE_DIR); compile times then measure cache reads.",
          ),
      }
  )


def _set_cpu_devices(n: int | None) -> None:
  """Splits the host CPU into n JAX devices. Only works before the JAX backend is initialised."""
  if not n:
    return
  import jax

  jax.config.update("jax_num_cpu_devices", int(n))


# ----------------------------------------------------------------------------------------------------------
# Building blocks (also used by benchmarks/torch_peer.py).


def timed_windows(fn: Callable[[], Any], *, items_per_call: int, calls: int, windows: int) -> dict:
  """`windows` windows of `calls` back-to-back calls of fn (which returns what to block on).

  Returns the median items/s (wall clock), the per-window rates, and medians per call of the process's CPU seconds
  (all threads; less sensitive than the wall clock to other programs sharing the machine, but it also counts
  threads spinning while they wait for work), of its system CPU seconds and of its minor page faults (getrusage:
  the kernel's share, which memory that is freed and touched again shows up in).
  """
  import jax

  rates, cpu, system, faults = [], [], [], []
  for _ in range(windows):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, c0 = time.perf_counter(), time.process_time()
    out = None
    for _ in range(calls):
      out = fn()
    jax.block_until_ready(out)
    rates.append(items_per_call * calls / (time.perf_counter() - t0))
    cpu.append((time.process_time() - c0) / calls)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    system.append((r1.ru_stime - r0.ru_stime) / calls)
    faults.append((r1.ru_minflt - r0.ru_minflt) / calls)
  return {
      "rate": statistics.median(rates),
      "rates": rates,
      "cpu_seconds_per_call": statistics.median(cpu),
      "system_cpu_seconds_per_call": statistics.median(system),
      "minor_faults_per_call": statistics.median(faults),
  }


def random_batch(config, batch_size: int, seed: int, *, eval_mask: bool = False) -> dict:
  """A host batch of random images and labels of the config's shape, as its input hands them to the devices:
  ImageNet's uint8 pixels (and a training image's colour offset), which the devices normalise
  (inputs.device_preprocessing); CIFAR's normalised float32."""
  from resnet_jax import inputs

  rng = np.random.default_rng(seed)
  shape = (batch_size, config.image_size, config.image_size, 3)
  batch = {"label": rng.integers(0, config.model.num_classes, (batch_size,), dtype=np.int32)}
  if inputs.device_preprocessing(config) is None:
    batch["image"] = rng.standard_normal(shape, dtype=np.float32)
  else:
    batch["image"] = rng.integers(0, 256, shape, dtype=np.uint8)
    if not eval_mask:
      batch["lighting"] = rng.standard_normal((batch_size, 3), dtype=np.float32)
  if eval_mask:
    batch["mask"] = np.ones((batch_size,), np.float32)
  return batch


class _HostBatches:
  """inputs.Data's interface (`draw`, `train_batch(step)`) over a few fixed host batches."""

  draw = None  # host batches, as tf.data's

  def __init__(self, batches: list):
    self.batches = batches

  def train_batch(self, step: int) -> dict:
    return self.batches[step % len(self.batches)]


class TrainBench:
  """The config's model, optimiser and compiled steps (train.compile_steps), with an initial state on the devices."""

  def __init__(self, config):
    import jax
    from resnet_jax import inputs, train

    config_lib.validate(config)  # with the devices, as training checks its config
    inputs.check_batch(config)  # the host batches below stand in for inputs.Data, which would check it
    self.config = config
    self.tx = train.make_optimizer(config)
    schedule = train.make_schedule(config)
    self.compiled_steps = train.compile_steps(config, self.tx, schedule)
    self.steps_per_call = self.compiled_steps.steps_per_call
    self.data = inputs.Data(config, self.compiled_steps.mesh) if config.input_backend == "device" else None
    self.window = self.compiled_steps.place_window(train.TrainMetrics.empty())
    t0 = time.perf_counter()
    host_state = train.init_host_state(
        self.compiled_steps.model, self.tx, config, compiler_options=self.compiled_steps.plan.init_options
    )
    self.init_seconds = time.perf_counter() - t0  # compiling the initialiser, mostly
    self.num_params = int(sum(x.size for x in jax.tree.leaves(host_state.params)))
    self.state = self.compiled_steps.to_device(host_state)
    self.rng = jax.random.key(config.seed)
    self.batches = [random_batch(config, config.batch_size, seed=i) for i in range(2)]
    # What the training loop's inputs.Data gives CompiledSteps.train: batches drawn on the devices, or host batches.
    self.input = self.data if self.data is not None else _HostBatches(self.batches)
    self._i = 0
    self.compiled = None

  def compile(self) -> dict:
    """Lowers and compiles the train step (the jitted/pmapped train.train_step of the training loop); timed."""
    t0 = time.perf_counter()
    lowered = self.compiled_steps.lower_train(self.state, self.window, self.input, 0, self.steps_per_call, self.rng)
    t1 = time.perf_counter()
    self.compiled = self.compiled_steps.compile(lowered)
    t2 = time.perf_counter()
    out = {"train_lower_seconds": t1 - t0, "train_compile_seconds": t2 - t1, "train_lower_compile_seconds": t2 - t0}
    # oneDNN convolutions are custom calls, which XLA's cost analysis does not count (as cuDNN's on GPUs).
    out["train_step_flops"] = None if self.compiled_steps.plan.convolutions == "onednn" else _flops(self.compiled)
    return out

  def step(self):
    """One call exactly as the training loop makes it (CompiledSteps.train of steps_per_call steps); returns the
    last step's loss."""
    k = self.steps_per_call
    self.state, self.window, infos = self.compiled_steps.train(
        self.state, self.window, self.input, self._i, k, self.rng
    )
    self._i += k
    return infos["loss"][-1]

  def train_rate(self, *, steps: int, windows: int, warmup: int) -> dict:
    import jax

    k = self.steps_per_call
    losses = []
    for _ in range(max(1, -(-warmup // k))):
      losses.append(float(jax.device_get(self.step())))
    t = timed_windows(self.step, items_per_call=self.config.batch_size * k, calls=max(1, steps // k), windows=windows)
    losses.append(float(jax.device_get(self.step())))
    return {
        "train_images_per_sec": t["rate"],
        "train_step_seconds": self.config.batch_size / t["rate"],
        "train_window_images_per_sec": t["rates"],
        "train_cpu_seconds_per_step": t["cpu_seconds_per_call"] / k,
        "train_system_cpu_seconds_per_step": t["system_cpu_seconds_per_call"] / k,
        "train_minor_faults_per_step": t["minor_faults_per_call"] / k,
        "train_steps_per_call": k,
        "train_batches_drawn_on_devices": self.data is not None,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
    }

  def eval_rate(self, *, steps: int, windows: int) -> dict:
    import jax

    from resnet_jax import parallel

    eval_batch = parallel.eval_batch(self.config)
    batch = random_batch(self.config, eval_batch, seed=7, eval_mask=True)
    t0 = time.perf_counter()

    jax.block_until_ready(self.compiled_steps.eval_on_batch(self.state, batch))  # compiles
    compile_s = time.perf_counter() - t0
    t = timed_windows(
        lambda: self.compiled_steps.eval_on_batch(self.state, batch),
        items_per_call=eval_batch,
        calls=steps,
        windows=windows,
    )
    return {"eval_images_per_sec": t["rate"], "eval_first_call_seconds": compile_s}


def _flops(compiled) -> float | None:
  """XLA's cost-analysis FLOPs of a compiled step (on CPU they include the convolutions: 22.6 GFLOP per ResNet-50
  image, about 3 x 8.2 for forward and backward).

  On GPUs the convolutions are cuDNN custom calls, which the cost analysis does not count: the H100/H200 ResNet-50
  step of benchmarks/RESULTS.md came out at 102 GFLOP instead of about 6,300 (256 images x 3 x 8.2 GFLOP). None
  there rather than a figure 60x too small.
  """
  import jax

  if jax.default_backend() == "gpu":
    return None
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def input_pipeline_rate(config, *, steps: int, windows: int) -> dict:
  """img/s of the training input alone (no model): inputs.Data, exactly as the training loop reads its batches.

  input_backend='tfdata': the tf.data pipeline (tfds CIFAR, fake data, or ImageNet when prepared);
  input_backend='device': the jitted draw-and-augment of data.cifar_device.DeviceData on this host's devices.
  """
  from resnet_jax import inputs, parallel

  t0 = time.perf_counter()
  try:
    data = inputs.Data(config, parallel.make_mesh())
    data.train_batch(0)  # builds the pipeline (and compiles the device draw); starts filling any prefetch buffer
  except (FileNotFoundError, RuntimeError, ValueError) as e:  # no data or no TensorFlow on this machine
    return {"input_images_per_sec": None, "input_note": f"no input pipeline: {errors.one_line(e, 400)}"}
  load_s = time.perf_counter() - t0
  counter = iter(range(1, 10**9))
  fetch = lambda: data.train_batch(next(counter))["label"]
  if config.input_backend == "device":
    source = f"device ({config.dataset}, augmentation inside jit)"
  else:
    source = {"fake": "fake (random images, the same tf.data augmentation)"}.get(
        config.dataset, f"tfds {config.dataset}"
    )
  t = timed_windows(fetch, items_per_call=config.batch_size, calls=steps, windows=windows)
  return {"input_images_per_sec": t["rate"], "input_source": source, "input_load_seconds": load_s}


def machine_info() -> dict:
  import flax
  import jax
  import jaxlib

  dev = jax.devices()[0]
  return {
      "platform": dev.platform,
      "device_kind": dev.device_kind,
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
      "cpu_count": cpu.usable_cpus(),
      "cpu_model": pieces.cpu_model(),
      "python": platform.python_version(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib.__version__,
      "flax_version": flax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_average_1min": os.getloadavg()[0],
  }


def peak_device_memory_bytes() -> int | None:
  import jax

  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def describe(config) -> dict:
  """The config's network and run settings, and the platform plan (resnet_jax.cpu) it runs with."""
  import jax
  from resnet_jax import compiled_steps, parallel

  m = config.model
  return {
      "family": m.family,
      "depth": m.depth,
      "residual": m.residual,
      "shortcut": m.shortcut,
      "scan": m.scan,
      "remat": m.remat,
      "batch_size": config.batch_size,
      "eval_batch_size": parallel.eval_batch(config),
      "image_size": config.image_size,
      "half_precision": config.half_precision,
      "parallelism": config.parallelism,
      "bn_sync": config.bn_sync,
      "dataset": config.dataset,
      "input_backend": config.input_backend,
      "steps_per_call": compiled_steps.resolve_steps_per_call(config, jax.default_backend()),
      "cpu": cpu.plan(config).describe(),
  }


def run(
    config,
    *,
    steps: int = 10,
    windows: int = 3,
    warmup: int = 2,
    eval_steps: int = 2,
    input_steps: int = 20,
    compilation_cache: bool = False,
) -> dict:
  """Every measurement of the module docstring; returns the JSON object that --json prints.

  The persistent compilation cache (JAX_COMPILATION_CACHE_DIR) is off unless `compilation_cache`: a cache hit
  would report the time to read an executable, not to compile it.
  """
  import jax

  jax.config.update("jax_enable_compilation_cache", bool(compilation_cache))
  out: dict[str, Any] = {"config": describe(config)}
  bench = TrainBench(config)
  out["params"] = bench.num_params
  out["init_seconds"] = bench.init_seconds
  out.update(bench.compile())
  out.update(bench.train_rate(steps=steps, windows=windows, warmup=warmup))
  out["train_flops_per_sec"] = (
      out["train_step_flops"] / out["train_step_seconds"] if out.get("train_step_flops") else None
  )
  if eval_steps > 0:
    out.update(bench.eval_rate(steps=eval_steps, windows=windows))
  else:
    out.update({"eval_images_per_sec": None, "eval_first_call_seconds": None})
  if input_steps > 0:
    out.update(input_pipeline_rate(config, steps=input_steps, windows=windows))
  else:
    out.update({"input_images_per_sec": None, "input_note": "skipped (--input_steps=0)"})
  out["peak_host_memory_bytes"] = int(pieces.peak_rss_mb() * 2**20)
  out["peak_device_memory_bytes"] = peak_device_memory_bytes()
  out["machine"] = machine_info()
  out["settings"] = {
      "steps": steps,
      "windows": windows,
      "warmup": warmup,
      "eval_steps": eval_steps,
      "input_steps": input_steps,
      "compilation_cache": bool(compilation_cache),
  }
  return out


def compare_steps_per_call(config, values, *, steps: int, windows: int, warmup: int) -> dict:
  """Train img/s for each config.steps_per_call in `values`, measured side by side.

  One TrainBench per value, each compiled and warmed up first; then the timed windows alternate between them
  (v1, v2, v1, v2, ...), so that a machine's drift in speed (other programs, clocks) falls on each alike. Each
  window is `steps` steps (rounded down to whole calls). Returns the medians, every window, and each median's
  ratio to the first value's.
  """
  import jax

  configs = {}
  for v in values:
    configs[v] = c = config.copy_and_resolve_references()
    c.steps_per_call = v
    config_lib.validate(c)  # every value before the first compilation
  benches = {}
  for v, c in configs.items():
    benches[v] = bench = TrainBench(c)
    bench.compile()
    for _ in range(max(1, -(-warmup // bench.steps_per_call))):
      jax.block_until_ready(bench.step())
  windows_of = {v: [] for v in benches}
  for _ in range(windows):
    for v, bench in benches.items():
      k = bench.steps_per_call
      t = timed_windows(bench.step, items_per_call=config.batch_size * k, calls=max(1, steps // k), windows=1)
      windows_of[v].append(t)
  per_step = lambda v, key: statistics.median(t[key] for t in windows_of[v]) / benches[v].steps_per_call
  medians = {v: statistics.median(t["rate"] for t in ts) for v, ts in windows_of.items()}
  first = medians[next(iter(medians))]
  return {
      "config": describe(config),
      "steps_per_call": {
          str(v): {
              "train_images_per_sec": medians[v],
              "train_window_images_per_sec": [t["rate"] for t in windows_of[v]],
              "ratio_to_first": medians[v] / first,
              "cpu_seconds_per_step": per_step(v, "cpu_seconds_per_call"),
              "system_cpu_seconds_per_step": per_step(v, "system_cpu_seconds_per_call"),
              "minor_faults_per_step": per_step(v, "minor_faults_per_call"),
          }
          for v in benches
      },
      "machine": machine_info(),
      "settings": {"steps": steps, "windows": windows, "warmup": warmup},
  }


def format_comparison(r: dict) -> str:
  mach = r["machine"]
  lines = [
      f"{r['config']['family']} depth {r['config']['depth']}  batch {r['config']['batch_size']}; "
      f"{mach['device_count']} x {mach['device_kind']} ({mach['platform']}), {mach['cpu_count']} CPUs",
      "steps_per_call | train img/s (median) | ratio | CPU s/step | system s/step | minor faults/step | windows",
  ]
  for v, x in r["steps_per_call"].items():
    lines.append(
        f"{v:>14} | {x['train_images_per_sec']:20.1f} | {x['ratio_to_first']:5.2f} | "
        f"{x['cpu_seconds_per_step']:10.3f} | {x['system_cpu_seconds_per_step']:13.3f} | "
        f"{x['minor_faults_per_step']:17.0f} | " + ", ".join(f"{w:.1f}" for w in x["train_window_images_per_sec"])
    )
  return "\n".join(lines)


def _cpu_settings(p: dict) -> str:
  chunk = p.get("weight_grad_chunk")
  convolutions = {"onednn": "oneDNN", "eigen": "XLA Eigen", "xla_default": "XLA default (YNNPACK)"}[p["convolutions"]]
  return (
      (
          f"\ncpu settings:   weight gradients over chunks of {chunk}"
          if chunk
          else "\ncpu settings:   whole-batch weight gradients"
      )
      + f", {convolutions} convolutions"
      + (", block outputs materialized" if p.get("materialize_blocks") else "")
      + (", huge pages for malloc" if p.get("host_malloc") == "huge_pages" else "")
  )


def format_result(r: dict) -> str:
  c, mach = r["config"], r["machine"]
  fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
  drawn = ", batches drawn on the devices"
  lines = [
      f"{c['family']} {'resnet' if c['residual'] else 'plain'}{c['depth']}  batch {c['batch_size']}"
      f"{'  bf16' if c['half_precision'] else ''}{'  scan' if c['scan'] else ''}  ({r['params']:,} params)"
      f"{_cpu_settings(c['cpu']) if mach['platform'] == 'cpu' else ''}",
      f"machine:        {mach['device_count']} x {mach['device_kind']} ({mach['platform']}), {mach['cpu_count']} CPUs"
      f", load {mach['load_average_1min']:.2f}; jax {mach['jax_version']}, flax {mach['flax_version']}",
      f"compile train:  {r['train_lower_compile_seconds']:.2f} s (lower {r['train_lower_seconds']:.2f} s + "
      f"compile {r['train_compile_seconds']:.2f} s); parameter initialiser {r['init_seconds']:.2f} s",
      f"train:          {r['train_images_per_sec']:.1f} img/s  ({1e3 * r['train_step_seconds']:.1f} ms/step, "
      f"{r['train_steps_per_call']} per call{drawn if r['train_batches_drawn_on_devices'] else ''}; "
      f"windows {', '.join(f'{x:.1f}' for x in r['train_window_images_per_sec'])}; "
      f"loss {r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f})",
      f"                {fmt(r.get('train_flops_per_sec') and r['train_flops_per_sec'] / 1e9, '.1f')} GFLOP/s "
      f"({fmt(r.get('train_step_flops') and r['train_step_flops'] / 1e9, '.2f')} GFLOP per step, XLA cost analysis)",
      f"eval:           {fmt(r['eval_images_per_sec'], '.1f')} img/s",
      f"input pipeline: {fmt(r['input_images_per_sec'], '.1f')} img/s  "
      f"({r.get('input_source') or r.get('input_note')})",
      f"peak memory:    host {r['peak_host_memory_bytes'] / 2**20:.0f} MiB, device "
      f"{fmt(r['peak_device_memory_bytes'] and r['peak_device_memory_bytes'] / 2**20, '.0f')} MiB",
  ]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  if f["config"] is None:
    cli.fail("--config is required, e.g. --config=configs/cifar56.py")
  f["config"] = cli.start(f["config"], restart=__name__ == "__main__")
  _set_cpu_devices(f["cpu_devices"])
  with cli.user_errors():
    if f["compare_steps_per_call"]:
      values = [int(v) for v in f["compare_steps_per_call"]]
      result = compare_steps_per_call(f["config"], values, steps=f["steps"], windows=f["windows"], warmup=f["warmup"])
      print(json.dumps(result) if f["json"] else format_comparison(result))
      return
    result = run(
        f["config"],
        steps=f["steps"],
        windows=f["windows"],
        warmup=f["warmup"],
        eval_steps=f["eval_steps"],
        input_steps=f["input_steps"],
        compilation_cache=f["compilation_cache"],
    )
  if f["json"]:
    print(json.dumps(result))
  else:
    print(format_result(result))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
