"""Train-step time after idle gaps: what a pause (eval, checkpoint, another program's turn) costs the next step.

    python benchmarks/idle_gap.py --config=configs/cifar20.py [--gaps=0,3,0,3] [--steps=3] [--config.X=...]

Runs the training loop's compiled step (resnet_jax.benchmark.TrainBench, fake data, host_malloc applied as the
entry points apply it), then for each gap: sleeps that many seconds and times `--steps` steps one by one, with
the process's user and system CPU time and minor page faults per step (getrusage).

Why: each of our CPU steps frees large buffers (XLA's temporary buffer, Eigen's convolution packing buffers, tens
to hundreds of MB, which glibc maps and unmaps every step). On a VM with free page reporting (virtio-balloon;
Linux reports free blocks of 2^page_reporting_order pages to the host, which takes their memory back), memory freed
and left free for a while is returned to the host, and the next step has to get it back: the step after a pause of
a second or more spends about as long in the kernel as the whole step normally takes (benchmarks/RESULTS.md). Back-to-back
steps reuse the memory before it is reported. The script prints whether this machine reports free pages, and how
many KiB it reported while the script ran.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

_REPORTING = "/sys/module/page_reporting/parameters"


def _reported_kib() -> int | None:
  """KiB of free memory this kernel has reported to its hypervisor so far (None: no free page reporting here)."""
  try:
    with open(os.path.join(_REPORTING, "reported_kib")) as f:
      return int(f.read())
  except (OSError, ValueError):
    return None


def _timed_step(step) -> dict:
  import jax
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  jax.block_until_ready(step())
  t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
  return {"wall_ms": (t1 - t0) * 1e3, "user_ms": (r1.ru_utime - r0.ru_utime) * 1e3,
          "sys_ms": (r1.ru_stime - r0.ru_stime) * 1e3, "minor_faults": r1.ru_minflt - r0.ru_minflt}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  gaps = [float(g) for g in _GAPS.value]
  if any(g < 0 for g in gaps) or _STEPS.value < 1:
    raise app.UsageError("--gaps must be seconds >= 0 and --steps at least 1")
  from resnet_jax import host_malloc
  host_malloc.apply(config.get("host_malloc", "auto"), restart=__name__ == "__main__")
  import jax
  from resnet_jax import benchmark
  with config.unlocked():
    config.dataset = "fake"
  bench = benchmark.TrainBench(config)
  bench.compile()
  for _ in range(3):
    jax.block_until_ready(bench.step())
  kib0 = _reported_kib()
  rows = []
  for gap in gaps:
    time.sleep(gap)
    rows.append({"gap_s": gap, "steps": [_timed_step(bench.step) for _ in range(_STEPS.value)]})
  kib1 = _reported_kib()
  result = {"config": benchmark.describe(config), "machine": benchmark.machine_info(), "rows": rows,
            "free_page_reporting": kib0 is not None,
            "reported_kib_during_run": None if kib0 is None else kib1 - kib0}
  if _JSON.value:
    print(json.dumps(result))
    return
  c = result["config"]
  print(f"{c['family']} resnet{c['depth']} batch {c['batch_size']}, host_malloc={c['host_malloc']}; "
        f"per step: wall ms / user CPU ms / system CPU ms / minor page faults")
  for row in rows:
    print(f"after {row['gap_s']:4.1f} s idle: " + "   ".join(
        f"{s['wall_ms']:5.0f} / {s['user_ms']:5.0f} / {s['sys_ms']:4.0f} / {s['minor_faults']:6d}"
        for s in row["steps"]))
  if kib0 is None:
    print("this kernel does not report free pages to a hypervisor (no /sys/module/page_reporting)")
  else:
    print(f"free page reporting is on: {result['reported_kib_during_run'] / 1024:.0f} MiB reported during the run")


_CONFIG = _GAPS = _STEPS = _JSON = None

if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/cifar20.py", "Config file (configs/*.py).")
  _GAPS = flags.DEFINE_list("gaps", ["0", "3", "0", "3", "0", "3"], "Idle seconds before each group of steps.")
  _STEPS = flags.DEFINE_integer("steps", 3, "Timed steps after each gap.")
  _JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")
  app.run(main)
