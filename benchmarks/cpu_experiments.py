"""CPU speed experiments: variants of the train step timed in rotation, each in its own process.

    python benchmarks/cpu_experiments.py --config=configs/cifar20.py --variants=baseline,dev2,dev8,torch \\
        [--rounds=3] [--steps=4] [--windows=2] [--config.batch_size=128]

XLA flags and the CPU device count are read once, when JAX starts, so every variant runs in a fresh process.
Variants are run round-robin (round 1: A, B, C; round 2: B, C, A; ...) so that each sees the same mix of machine
load; per variant the median of all its windows is reported, with the ratio to the first variant and to
PyTorch ('torch', the eager twin of benchmarks/torch_peer.py) when it is in the list. A persistent compilation
cache under /tmp keeps later rounds from recompiling (compile time is not what is measured here).

A variant is a name from VARIANTS (or 'devN' for N virtual CPU devices, 'set:FIELD=VALUE' for a config override,
'xla:cpu_FLAG=VALUE' for one XLA flag (--xla_cpu_FLAG=VALUE),
'torch' for PyTorch); it may set XLA
flags, the device count, config overrides and a patch (a function of benchmarks/cpu_variants.py applied before
the model is built). Variants whose mathematics differ from the baseline's say so in their description.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (description, XLA flags, cpu devices, config overrides, patch)
VARIANTS = {
    "baseline": ("as the training loop runs it", "", None, {}, None),
    "onednn": ("XLA oneDNN thunks for matmul/conv", "--xla_cpu_use_onednn=true", None, {}, None),
    "onednn_cc": ("XLA oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true", None, {}, None),
    "no_xnn": ("XNNPACK/YNNPACK off", "--xla_cpu_use_xnnpack=false", None, {}, None),
    "ynn_conv": ("YNNPACK for every convolution", "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
                 None, {}, None),
    "ynn_all": ("YNNPACK for dots, convolutions, elementwise, reductions",
                "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution,+individual_dot,+eltwise,+reduce",
                None, {}, None),
    "ynn_noreduce": ("reductions by XLA's own fusions, not YNNPACK", "--xla_cpu_experimental_ynn_fusion_type=-reduce",
                     None, {}, None),
    "no_ynn_conv": ("convolutions by XLA's Eigen kernels, not YNNPACK (dots and reductions stay YNNPACK)",
                    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution", None, {}, None),
    "eigen_conv": ("convolutions by Eigen, not YNNPACK (YNNPACK for dots only)",
                   "--xla_cpu_experimental_ynn_fusion_type=individual_dot", None, {}, None),
    "xnn_graph": ("XNNPACK greedy graph fusion", "--xla_cpu_experimental_xnn_graph_fusion_mode="
                  "XNN_GRAPH_FUSION_MODE_GREEDY", None, {}, None),
    "no_concurrency_sched": ("default (memory) scheduler instead of the concurrency-optimised one",
                             "--xla_cpu_enable_concurrency_optimized_scheduler=false", None, {}, None),
    "legacy_runtime": ("XLA's legacy CPU runtime (one LLVM program, no thunks)", "--xla_cpu_use_thunk_runtime=false",
                       None, {}, None),
    "eigen_1thread": ("Eigen single-threaded", "--xla_cpu_multi_thread_eigen=false", None, {}, None),
    "fast_math": ("fast math (changes rounding)", "--xla_cpu_enable_fast_math=true", None, {}, None),
    "pmap": ("parallelism='pmap' (needs devN)", "", None, {"parallelism": "pmap"}, None),
    "scan": ("model.scan=True (nn.scan over each stage's identical blocks)", "", None, {"model.scan": True}, None),
    "noscan": ("model.scan=False (every block unrolled)", "", None, {"model.scan": False}, None),
    "remat": ("model.remat=True (blocks rematerialised in the backward pass)", "", None, {"model.remat": True}, None),
    "bf16": ("half_precision=True (bfloat16 compute: different mathematics)", "", None,
             {"half_precision": True}, None),
}


def parse_variant(name: str):
  """(description, xla_flags, cpu_devices, overrides, patch) of a variant name; 'a+b' combines two."""
  if "+" in name and name not in VARIANTS:
    parts = [parse_variant(p) for p in name.split("+")]
    desc = " + ".join(p[0] for p in parts)
    flags = " ".join(p[1] for p in parts if p[1])
    devices = next((p[2] for p in parts if p[2]), None)
    overrides = {k: v for p in parts for k, v in p[3].items()}
    patches = [p[4] for p in parts if p[4]]
    return desc, flags, devices, overrides, ",".join(patches) or None
  if name.startswith("dev") and name[3:].isdigit():
    return f"{name[3:]} virtual CPU devices", "", int(name[3:]), {}, None
  if name.startswith("set:"):  # set:FIELD=VALUE, a config override (Python literal)
    import ast
    field, value = name[4:].split("=", 1)
    return f"{field}={value}", "", None, {field: ast.literal_eval(value)}, None
  if name.startswith("patch:"):
    return f"patch {name[6:]}", "", None, {}, name[6:]
  if name.startswith("xla:"):  # xla:FLAG=VALUE, one XLA flag (without the leading --xla_)
    return f"XLA flag --xla_{name[4:]}", f"--xla_{name[4:]}", None, {}, None
  if name == "torch":
    return "PyTorch eager twin", "", None, {}, None
  if name not in VARIANTS:
    raise SystemExit(f"unknown variant {name!r}: use one of {sorted(VARIANTS)}, devN, set:FIELD=VALUE, xla:FLAG=VALUE, "
                     "patch:NAME, torch or A+B")
  return VARIANTS[name]


def child(spec: dict) -> dict:
  """Runs in the variant's process: builds the step, warms up, times windows; returns a JSON-able dict."""
  sys.path.insert(0, REPO)
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import jax
  if spec["cpu_devices"]:
    jax.config.update("jax_num_cpu_devices", spec["cpu_devices"])
  jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  from ml_collections import config_flags  # noqa: F401  (config files import ml_collections)
  from resnet_jax import benchmark, config_lib  # noqa: F401
  import importlib.util
  mod_spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, spec["config"]))
  cfg_mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(cfg_mod)
  config = cfg_mod.get_config()
  for k, v in spec["overrides"].items():
    target = config
    *path, leaf = k.split(".")
    for p in path:
      target = target[p]
    target[leaf] = v
  from resnet_jax import host_malloc  # as the entry points do, before JAX's backend starts
  host_malloc.apply(config.get("host_malloc", "auto"), restart=True)  # this child runs as __main__
  if spec["patch"]:
    import cpu_variants
    for p in spec["patch"].split(","):
      getattr(cpu_variants, p)()
  if spec["torch"]:
    import torch_peer
    bench = benchmark.TrainBench(config)
    host = jax.device_get(bench.state)
    tb = torch_peer.TorchBench(config, host.params, bench.batches, channels_last=False)
    del bench
    step = tb.step
  else:
    bench = benchmark.TrainBench(config)
    bench.compile()
    step = bench.step
  for _ in range(spec["warmup"]):
    jax.block_until_ready(step())
  t = benchmark.timed_windows(step, items_per_call=config.batch_size, calls=spec["steps"], windows=spec["windows"])
  return {"rates": t["rates"], "cpu": t["cpu_seconds_per_call"], "load": os.getloadavg()[0]}


def main():
  from absl import app, flags
  from ml_collections import config_flags  # noqa: F401
  f_config = flags.DEFINE_string("config", "configs/cifar20.py", "Config file.")
  f_set = flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE (Python literal), for every variant.")
  f_variants = flags.DEFINE_list("variants", ["baseline", "dev2", "torch"], "Variants to compare.")
  f_rounds = flags.DEFINE_integer("rounds", 3, "Rounds (each runs every variant once, in rotated order).")
  f_steps = flags.DEFINE_integer("steps", 4, "Steps per window.")
  f_windows = flags.DEFINE_integer("windows", 2, "Windows per variant per round.")
  f_warmup = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  f_json = flags.DEFINE_string("json_out", None, "Also write the results here.")
  f_child = flags.DEFINE_string("child", None, "(internal) run one variant from this JSON spec.")

  def run(argv):
    del argv
    if f_child.value:
      print("RESULT " + json.dumps(child(json.loads(f_child.value))), flush=True)
      return
    import ast
    common = {}
    for item in f_set.value:
      k, v = item.split("=", 1)
      try:
        common[k] = ast.literal_eval(v)
      except (ValueError, SyntaxError):
        common[k] = v
    variants = f_variants.value
    parsed = {v: parse_variant(v) for v in variants}
    results = {v: {"rates": [], "cpu": [], "loads": []} for v in variants}
    t_start = time.time()
    for r in range(f_rounds.value):
      order = variants[r % len(variants):] + variants[:r % len(variants)]
      for v in order:
        desc, xla_flags, devices, overrides, patch = parsed[v]
        spec = {"config": f_config.value, "overrides": {**common, **overrides}, "cpu_devices": devices,
                "patch": patch, "torch": v == "torch", "steps": f_steps.value, "windows": f_windows.value,
                "warmup": f_warmup.value, "cache_dir": "/tmp/resnet_jax_cpu_experiments_cache"}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["XLA_FLAGS"] = " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), xla_flags) if x)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={json.dumps(spec)}"],
                              cwd=REPO, env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode or line is None:
          print(f"[round {r + 1}] {v}: FAILED\n{proc.stderr[-3000:]}", flush=True)
          continue
        res = json.loads(line[7:])
        results[v]["rates"] += res["rates"]
        results[v]["cpu"].append(res["cpu"])
        results[v]["loads"].append(res["load"])
        print(f"[round {r + 1}] {v:<28} {', '.join(f'{x:.1f}' for x in res['rates'])} img/s  "
              f"cpu {res['cpu']:.3f} s/step  load {res['load']:.1f}", flush=True)
    base = variants[0]
    med = {v: statistics.median(results[v]["rates"]) if results[v]["rates"] else None for v in variants}
    cpu = {v: statistics.median(results[v]["cpu"]) if results[v]["cpu"] else None for v in variants}
    print(f"\n{f_config.value} {common or ''}: medians over {f_rounds.value} rounds x {f_windows.value} windows x "
          f"{f_steps.value} steps ({(time.time() - t_start) / 60:.1f} min)")
    print(f"{'variant':<28} {'img/s':>8} {'vs ' + base:>12} {'vs torch':>9} {'cpu s/step':>11}  description")
    for v in variants:
      if med[v] is None:
        print(f"{v:<28} failed")
        continue
      vs_base = f"{med[v] / med[base]:.2f}x" if med[base] else "-"
      vs_torch = f"{med[v] / med['torch']:.2f}x" if med.get("torch") else "-"
      print(f"{v:<28} {med[v]:8.1f} {vs_base:>12} {vs_torch:>9} {cpu[v]:11.3f}  {parsed[v][0]}")
    loads = [x for v in variants for x in results[v]["loads"]]
    if loads:
      print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    if f_json.value:
      with open(f_json.value, "w") as fh:
        json.dump({"config": f_config.value, "set": common, "results": results, "median": med, "cpu": cpu}, fh)

  app.run(run)


if __name__ == "__main__":
  main()
