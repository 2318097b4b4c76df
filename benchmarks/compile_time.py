"""Train-step and initialiser compile time against depth: each config in a fresh process, through the benchmark CLI.

    python benchmarks/compile_time.py [--runs=2] [--batch_size=8] [--include_unscanned_1202]

Runs `python -m resnet_jax.benchmark --json` (persistent compilation cache off, so every compile is real) for
ResNet-20, ResNet-56 (unscanned, its default), ResNet-56 with model.scan=True, ResNet-1202 (scanned, its default)
and optionally ResNet-1202 unscanned, with a small batch (compile time barely depends on it) and one timed step;
prints the parameter initialiser's seconds (compiling it, mostly), the train step's lower + compile seconds (medians
of --runs) and the train step's ratios to ResNet-56.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUNS = flags.DEFINE_integer("runs", 2, "Processes per config (median reported).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch (compile time barely depends on it).")
_UNSCANNED_1202 = flags.DEFINE_bool("include_unscanned_1202", False, "Also ResNet-1202 without scan (slow).")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds allowed per process.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the results here.")

CASES = [
    ("resnet20", "configs/cifar20.py", []),
    ("resnet56", "configs/cifar56.py", []),
    ("resnet56_scan", "configs/cifar56.py", ["--config.model.scan=True"]),
    ("resnet1202_scan", "configs/cifar1202.py", []),
]


def measure(config: str, extra: list[str], batch: int, timeout: int) -> dict:
  cmd = [
      sys.executable,
      "-m",
      "resnet_jax.benchmark",
      f"--config={config}",
      "--json",
      "--config.dataset=fake",
      f"--config.batch_size={batch}",
      "--config.eval_batch_size=8",
      "--steps=1",
      "--windows=1",
      "--warmup=1",
      "--eval_steps=0",
      "--input_steps=0",
      *extra,
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  cases = list(CASES)
  if _UNSCANNED_1202.value:
    cases.append(("resnet1202_noscan", "configs/cifar1202.py", ["--config.model.scan=False"]))
  out = {}
  for r in range(_RUNS.value):
    for name, config, extra in cases:
      try:
        res = measure(config, extra, _BATCH.value, _TIMEOUT.value)
      except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"{name}: {str(e)[:300]}", flush=True)
        continue
      row = out.setdefault(
          name,
          {
              "init": [],
              "lower": [],
              "compile": [],
              "total": [],
              "step_s": [],
              "load": [],
              "scan": res["config"]["scan"],
              "params": res["params"],
          },
      )
      row["init"].append(res["init_seconds"])
      row["lower"].append(res["train_lower_seconds"])
      row["compile"].append(res["train_compile_seconds"])
      row["total"].append(res["train_lower_compile_seconds"])
      row["step_s"].append(res["train_step_seconds"])
      row["load"].append(res["machine"]["load_average_1min"])
      print(
          f"[run {r + 1}] {name:<18} initialiser {res['init_seconds']:6.2f} s  "
          f"lower {res['train_lower_seconds']:6.2f} s  compile "
          f"{res['train_compile_seconds']:6.2f} s  (load {res['machine']['load_average_1min']:.1f}, peak host "
          f"{res['peak_host_memory_bytes'] / 2**20:.0f} MiB)",
          flush=True,
      )
  base = statistics.median(out["resnet56"]["total"]) if "resnet56" in out else None
  print(f"\nmedian over {_RUNS.value} run(s), batch {_BATCH.value}:")
  print(
      f"{'config':<18} {'scan':>5} {'params':>11} {'init s':>7} {'lower s':>8} {'compile s':>10} {'total s':>8} "
      f"{'/ resnet56':>11}"
  )
  for name, row in out.items():
    total = statistics.median(row["total"])
    print(
        f"{name:<18} {str(row['scan']):>5} {row['params']:>11,} {statistics.median(row['init']):7.2f} "
        f"{statistics.median(row['lower']):8.2f} "
        f"{statistics.median(row['compile']):10.2f} {total:8.2f} {total / base if base else float('nan'):10.2f}x"
    )
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f)


if __name__ == "__main__":
  app.run(main)
