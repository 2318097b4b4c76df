"""Where a train step's time goes on the CPU: each compiled operation's time against its FLOPs and the cores' peak.

    python benchmarks/profile_step.py --config=configs/cifar20.py [--config.FIELD=VALUE ...] [--calls=6] [--json]

Runs the training loop's compiled step (resnet_jax.benchmark.TrainBench: the config's defaults, the CPU seam's
choices) under JAX's profiler and reads the per-operation events of XLA's CPU runtime (one event per executed
operation, on XLA's worker threads). Each operation of the compiled program (its optimised HLO) is put in one part
of the step:

* the three convolutions of each layer (oneDNN's forward, backward-data and backward-weights custom calls, or XLA's
  own convolutions), with their FLOPs: 2 x (forward output elements) x (kernel height x width x input channels);
* XLA's fusions: reductions (batch-norm statistics, their gradients, the loss) and elementwise work (batch-norm
  application, ReLU, shortcut additions, the optimiser), with the bytes they read and write;
* everything else (copies, transposes, pads, slices);
* time in which no operation runs (between operations, and between calls: dispatch, Python).

The cores' float32 peak is measured, not looked up: benchmarks/fma_peak.cc (independent FMA chains on every core)
is built with g++ -march=native and run for two seconds (`--peak_gflops` gives it instead). Efficiency is the part's
FLOP/s over that peak; for the fusions, whose FLOPs are few, the achieved GB/s is given instead, beside the cores'
streaming bandwidth measured the same way (benchmarks/memory_bandwidth.cc, `--bandwidth=false` skips it) for arrays
that fit the last-level cache (8 MiB in and out: a CIFAR ResNet's largest activation at batch 128) and for arrays
that do not (256 MiB): a step's activations outgrow the cache, so a fusion reads its operands from one or the other.

Results of this machine: benchmarks/RESULTS.md ("Where a CPU train step's time goes").
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from resnet_jax import cpu, pieces  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_CALLS = flags.DEFINE_integer("calls", 6, "Profiled calls of the compiled step (after warm-up calls).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls before profiling.")
_PEAK = flags.DEFINE_float("peak_gflops", None, "The cores' float32 FMA peak; measured with fma_peak.cc if not given.")
_BANDWIDTH = flags.DEFINE_bool("bandwidth", True, "Measure the cores' memory bandwidth with memory_bandwidth.cc.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")

PARTS = (
    "convolution forward",
    "convolution backward-data",
    "convolution backward-weights",
    "fusions: reductions",
    "fusions: elementwise",
    "other operations",
    "no operation running",
)

_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "u8": 1, "s8": 1, "f64": 8, "s64": 8}
_SHAPE = re.compile(r"\b(f32|bf16|f16|s32|u32|pred|u8|s8|f64|s64)\[([\d,]*)\]")
_LINE = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z\-]+)\((.*)$")


def _build_and_run_each(name: str, flags_: list[str], runs: list[tuple]) -> list[dict]:
  """Builds benchmarks/NAME.cc once with g++ (-O2 -march=native FLAGS), runs it with each argument tuple of RUNS,
  returns their JSON lines."""
  source = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.cc")
  with tempfile.TemporaryDirectory() as tmp:
    binary = os.path.join(tmp, name)
    subprocess.run(["g++", "-O2", "-march=native", *flags_, "-pthread", source, "-o", binary], check=True)
    return [
        json.loads(subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True).stdout)
        for args in runs
    ]


def _build_and_run(name: str, flags_: list[str], *args) -> dict:
  return _build_and_run_each(name, flags_, [args])[0]


def measure_peak_gflops(threads: int) -> float:
  """GFLOP/s of fma_peak.cc on `threads` threads."""
  return _build_and_run("fma_peak", ["-ffp-contract=fast"], threads, 2)["gflops"]


def measure_bandwidth_gbs(threads: int) -> dict[str, float]:
  """GB/s (read + written) of memory_bandwidth.cc on `threads` threads, for arrays in the cache and in memory."""
  sizes = (("cache", 8), ("memory", 256))
  results = _build_and_run_each("memory_bandwidth", [], [(threads, 1, mib) for _, mib in sizes])
  return {f"{where}_{mib}_mib": r["gbytes_per_second"] for (where, mib), r in zip(sizes, results)}


def _elements(dims: str) -> int:
  n = 1
  for d in filter(None, dims.split(",")):
    n *= int(d)
  return n


def _bytes(text: str) -> int:
  return sum(_DTYPE_BYTES[t] * _elements(d) for t, d in _SHAPE.findall(text))


def classify_operations(hlo_text: str) -> dict[str, dict]:
  """{operation name: {"part", "flops", "bytes"}} for the operations of an optimised module (names are unique in a
  module; those inside fused computations never run on their own, and loops and calls are left out: the
  operations of their bodies are what the runtime reports)."""
  reducing = _reducing_computations(hlo_text)
  shapes, ops = {}, {}
  for line in hlo_text.splitlines():
    m = _LINE.match(line)
    if not m:
      continue
    name, shape, opcode, rest = m.groups()
    shapes[name] = shape
    operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
    moved = _bytes(shape) + sum(_bytes(shapes.get(o, "")) for o in operands)
    flops = 0
    if opcode == "custom-call" and "onednn_conv" in rest:
      # operand_layout_constraints holds the operands' shapes: (x, w) forward, (dy, w) backward-data, (x, dy)
      # backward-weights; the forward output's shape is the output (forward) or dy.
      constraint = _SHAPE.findall(rest.split("operand_layout_constraints=")[1].split("}, api_version")[0])
      kind = re.search(r'custom_call_target="resnet_jax_onednn_conv_(\w+)"', rest).group(1)
      if kind == "fwd":
        out_dims, kernel = _SHAPE.findall(shape)[0][1], constraint[1][1]
      elif kind == "bwd_data":
        out_dims, kernel = constraint[0][1], constraint[1][1]
      else:
        out_dims, kernel = constraint[1][1], _SHAPE.findall(shape)[0][1]
      kh, kw, cin, _ = (int(d) for d in kernel.split(","))
      flops = 2 * _elements(out_dims) * kh * kw * cin
      part = {"fwd": "convolution forward", "bwd_data": "convolution backward-data"}.get(
          kind, "convolution backward-weights"
      )
    elif opcode == "convolution":
      part = "convolution forward"  # XLA's convolutions (not the CPU default): neither split by direction nor counted
    elif opcode == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", rest)
      part = "fusions: reductions" if called and called.group(1) in reducing else "fusions: elementwise"
    elif opcode in ("while", "call", "conditional"):
      part = None  # a container: its body's operations are reported one by one
    elif opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
      continue
    else:
      part = "other operations"
    ops[name] = {"part": part, "flops": flops, "bytes": moved}
  return ops


def _reducing_computations(hlo_text: str) -> set[str]:
  """Names of the module's computations that contain a reduce (the fused computations of reducing fusions)."""
  reducing = set()
  for computation in re.split(r"\n(?=%?[\w.\-]+ \()", hlo_text):
    if re.search(r" reduce(-window)?\(", computation):
      reducing.add(computation.split(" ", 1)[0].lstrip("%"))
  return reducing


def profile(bench, calls: int) -> tuple[list[dict], float]:
  """The XLA operation events of `calls` calls of bench.step() and their wall time."""
  import jax

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      t0 = time.perf_counter()
      out = None
      for _ in range(calls):
        out = bench.step()
      jax.block_until_ready(out)
      wall = time.perf_counter() - t0
    (path,) = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
  # The runtime's own events (ThunkExecutor::Execute, ThreadpoolListener::..., "end: NAME" markers) are not
  # operations: C++ scopes and markers of microseconds. Each event carries its thread's name: XLA runs most
  # operations on its XLAEigen threads, and a few (the first ready ones of a call) on the PjRt client thread that
  # started the call.
  ops = [
      dict(e, thread=threads.get(e.get("tid"), ""))
      for e in events
      if e.get("ph") == "X" and "::" not in e["name"] and not e["name"].startswith("end: ")
  ]
  return ops, wall


def breakdown(config, calls: int, warmup: int, peak_gflops: float, bandwidth_gbs: dict | None = None) -> dict:
  import jax
  from resnet_jax import benchmark

  bench = benchmark.TrainBench(config)
  bench.compile()
  hlo = bench.compiled.as_text()
  operations = classify_operations(hlo)
  for _ in range(warmup):
    jax.block_until_ready(bench.step())
  events, wall = profile(bench, calls)
  cpu0 = time.process_time()
  t0 = time.perf_counter()
  for _ in range(calls):
    out = bench.step()
  jax.block_until_ready(out)
  unprofiled_wall, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
  steps = calls * bench.steps_per_call
  busy, parts, unknown = [], collections.defaultdict(lambda: {"seconds": 0.0, "flops": 0, "bytes": 0}), 0.0
  for e in events:
    name = e["name"]
    op = operations.get(name)
    if op is None and "XLAEigen" not in e["thread"]:
      continue  # not an operation of the step (the host's own events)
    seconds = e["dur"] / 1e6
    if op is not None and op["part"] is None:
      continue
    if op is None:
      unknown += seconds
      op = {"part": "other operations", "flops": 0, "bytes": 0}
    p = parts[op["part"]]
    p["seconds"] += seconds
    p["flops"] += op["flops"]
    p["bytes"] += op["bytes"]
    busy.append((e["ts"], e["ts"] + e["dur"]))
  # Time in which no operation runs, and in which two run at once (XLA runs independent operations concurrently).
  busy.sort()
  covered, overlap, end = 0.0, 0.0, None
  for start, stop in busy:
    if end is None or start >= end:
      covered += stop - start
      end = stop
    else:
      overlap += min(stop, end) - start
      covered += max(0.0, stop - end)
      end = max(end, stop)
  idle = max(0.0, wall - covered / 1e6)
  parts["no operation running"]["seconds"] = idle
  peak = peak_gflops * 1e9
  rows = []
  for part in PARTS:
    p = parts.get(part, {"seconds": 0.0, "flops": 0, "bytes": 0})
    s = p["seconds"] / steps
    row = {"part": part, "ms_per_step": 1e3 * s, "share_of_wall": p["seconds"] / wall}
    if p["flops"]:
      row.update(gflop_per_step=p["flops"] / steps / 1e9, gflops=p["flops"] / p["seconds"] / 1e9)
      row["fraction_of_peak"] = p["flops"] / p["seconds"] / peak
    elif p["bytes"] and p["seconds"]:
      row["gbytes_per_second"] = p["bytes"] / p["seconds"] / 1e9
    rows.append(row)
  flops = sum(p["flops"] for p in parts.values()) / steps
  return {
      "config": {"model": dict(config.model), "batch_size": config.batch_size},
      "steps_profiled": steps,
      "steps_per_call": bench.steps_per_call,
      "wall_ms_per_step_profiled": 1e3 * wall / steps,
      "wall_ms_per_step": 1e3 * unprofiled_wall / steps,
      "images_per_sec": config.batch_size * steps / unprofiled_wall,
      "cpu_seconds_per_wall_second": cpu_seconds / unprofiled_wall,
      "two_operations_at_once_ms_per_step": overlap / 1e3 / steps,
      "unmatched_event_ms_per_step": 1e3 * unknown / steps,
      "convolution_gflop_per_step": flops / 1e9,
      "peak_gflops": peak_gflops,
      "bandwidth_gbs": bandwidth_gbs,
      "step_fraction_of_peak": flops / (unprofiled_wall / steps) / peak,
      "parts": rows,
      "cpu": pieces.cpu_model(),
      "cores": cpu.usable_cpus(),
      "jax": jax.__version__,
  }


def format_table(r: dict) -> str:
  lines = [
      f"{r['cpu']}, {r['cores']} cores, peak {r['peak_gflops']:.0f} GFLOP/s (fma_peak.cc); "
      f"{r['images_per_sec']:.1f} img/s, {r['wall_ms_per_step']:.1f} ms/step ({r['steps_per_call']} step(s) per "
      f"call), convolutions {r['convolution_gflop_per_step']:.1f} GFLOP/step = {100 * r['step_fraction_of_peak']:.0f} "
      f"% of peak over the whole step; CPU s per wall s {r['cpu_seconds_per_wall_second']:.2f}",
  ]
  if r.get("bandwidth_gbs"):
    b = r["bandwidth_gbs"]
    lines.append(
        f"memory bandwidth (memory_bandwidth.cc, read + written): {b['cache_8_mib']:.0f} GB/s for 8 MiB arrays (in the "
        f"cache), {b['memory_256_mib']:.0f} GB/s for 256 MiB (in memory)"
    )
  lines += [
      "",
      "| part of the step | ms/step | share of the step | GFLOP/step | GFLOP/s | % of peak | GB/s |",
      "|---|---|---|---|---|---|---|",
  ]
  for row in r["parts"]:
    g = lambda k, fmt: format(row[k], fmt) if k in row else ""
    pct = f"{100 * row['fraction_of_peak']:.0f}" if "fraction_of_peak" in row else ""
    lines.append(
        f"| {row['part']} | {row['ms_per_step']:.1f} | {100 * row['share_of_wall']:.0f} % | "
        f"{g('gflop_per_step', '.2f')} | {g('gflops', '.0f')} | {pct} | {g('gbytes_per_second', '.1f')} |"
    )
  lines.append(
      f"\n(ms/step of the parts add up to more than the step where two operations ran at once: "
      f"{r['two_operations_at_once_ms_per_step']:.1f} ms/step; profiled step {r['wall_ms_per_step_profiled']:.1f} ms.)"
  )
  return "\n".join(lines)


def main(argv):
  del argv
  threads = cpu.usable_cpus()
  peak = _PEAK.value or measure_peak_gflops(threads)
  bandwidth = measure_bandwidth_gbs(threads) if _BANDWIDTH.value else None
  from resnet_jax import config_lib

  result = breakdown(config_lib.resolve(_CONFIG.value), _CALLS.value, _WARMUP.value, peak, bandwidth)
  print(json.dumps(result) if _JSON.value else format_table(result))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
