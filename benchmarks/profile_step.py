"""Where a train step's time goes: the XLA thunks of one compiled step, summed by kind and by output shape.

    python benchmarks/profile_step.py --config=configs/cifar56.py [--steps 2] [--config.X=...] [--hlo_out FILE] [--patch NAME]

Runs the training loop's compiled step (resnet_jax.benchmark.TrainBench, fake data) under jax.profiler, reads the
trace back with jax.profiler.ProfileData and prints milliseconds per step for each kind of thunk (the XLA fusion
or op name without its number: ynn_fusion, transpose_copy_fusion, ...) and for the 25 largest (kind, output shape)
pairs. Convolutions run by XLA's Eigen kernels do not appear as thunk events of their own on CPU; the gap between
the wall time per step and the listed thunks is mostly theirs. --hlo_out writes the optimised HLO, so that a
fusion name can be looked up (which operands it reads, e.g. how many convolution outputs). --patch applies
functions of benchmarks/cpu_variants.py first (alternative formulations).

Caveat: these are wall-clock durations of thunks, and XLA's thunk executor runs independent thunks concurrently
on the same two cores, so a kind of thunk that runs beside others (the per-chunk transposes of the weight
gradients) is over-counted. For CPU time by library (Eigen, JIT-compiled code, the kernel's page faults), use
`perf record -g -p PID` on a running benchmark (benchmarks/RESULTS.md, huge pages).
"""
from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cifar20.py", "Config file (configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 2, "Profiled steps (after two untimed ones).")
_HLO = flags.DEFINE_string("hlo_out", None, "Write the optimised HLO of the train step here.")
_PATCH = flags.DEFINE_list("patch", [], "Functions of benchmarks/cpu_variants.py to apply before the model is built.")


def main(argv):
  del argv
  import jax
  from resnet_jax import benchmark
  config = _CONFIG.value
  config.dataset = "fake"
  if _PATCH.value:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_variants
    for name in _PATCH.value:
      getattr(cpu_variants, name)()
  bench = benchmark.TrainBench(config)
  bench.compile()
  for _ in range(2):
    jax.block_until_ready(bench.step())
  trace_dir = tempfile.mkdtemp(prefix="resnet_jax_profile_")
  with jax.profiler.trace(trace_dir):
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      jax.block_until_ready(bench.step())
    wall = (time.perf_counter() - t0) / _STEPS.value
  path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  n = _STEPS.value
  hlo = bench.compiled.as_text()
  shapes = dict(re.findall(r"^\s*%?([\w.\-]+) = (\S+?)[{ ]", hlo, re.M))
  by_kind, count, by_shape = collections.Counter(), collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if not (line.name.startswith("tf_XLAEigen") or line.name.startswith("tf_XLAPjRtCpuClient")):
          continue
        if ev.name.startswith(("ThunkExecutor", "end: ", "SlinkyThreadPool")):
          continue
        kind = ev.name.split(".")[0]
        by_kind[kind] += ev.duration_ns
        count[kind] += 1
        if ev.name in shapes:
          by_shape[(kind, shapes[ev.name])] += ev.duration_ns
  print(f"{config.model.get('family', 'cifar')} depth {config.model.depth}, batch {config.batch_size}: "
        f"{1e3 * wall:.0f} ms wall per step (under the profiler)")
  print(f"{'ms/step':>9} {'count':>6}  kind")
  for kind, ns in by_kind.most_common(20):
    print(f"{ns / n / 1e6:9.1f} {count[kind] / n:6.0f}  {kind}")
  print(f"\n{'ms/step':>9}  kind, output shape")
  for (kind, shape), ns in by_shape.most_common(25):
    print(f"{ns / n / 1e6:9.1f}  {kind} {shape}")
  if _HLO.value:
    with open(_HLO.value, "w") as f:
      f.write(hlo)


if __name__ == "__main__":
  app.run(main)
