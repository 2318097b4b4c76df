"""oneDNN's own timings of each convolution primitive in a run, from its verbose log: median ms and GFLOP/s per
direction and shape.

    ONEDNN_VERBOSE=1 python -m resnet_jax.benchmark --config=configs/cifar20.py --config.dataset=fake \\
        --eval_steps=0 --input_steps=0 > verbose.txt 2>&1
    python benchmarks/onednn_verbose_summary.py verbose.txt

Set beside benchmarks/onednn_conv_alone.cc (the same primitives timed outside the step), it separates the kernels'
own speed from what the step's surroundings cost them. Lines are oneDNN 3.x's
`onednn_verbose,exec,cpu,convolution,IMPL,PROP,FORMATS,ATTRS,ALG,SHAPE,MS`.
"""

import collections
import re
import statistics
import sys

_SHAPE = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)\D.*_iw\d+ow(\d+)kw(\d+)")


def summarize(lines) -> list[dict]:
  times = collections.defaultdict(list)
  for line in lines:
    fields = line.strip().split(",")
    if len(fields) < 11 or fields[:4] != ["onednn_verbose", "exec", "cpu", "convolution"]:
      continue
    times[(fields[5], fields[-2], fields[4])].append(float(fields[-1]))
  rows = []
  for (direction, shape, impl), ms in sorted(times.items()):
    n, ic, oc, oh, kh, ow, kw = map(int, _SHAPE.match(shape).groups())
    median = statistics.median(ms)
    gflop = 2 * n * ic * oc * oh * ow * kh * kw / 1e9
    rows.append(
        {
            "direction": direction,
            "shape": shape,
            "impl": impl,
            "calls": len(ms),
            "median_ms": median,
            "gflops": gflop / median * 1e3,
        }
    )
  return rows


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  with open(argv[1]) as f:
    for r in summarize(f):
      print(
          f"{r['direction']:18s} {r['shape'][:52]:52s} {r['impl']:40s} {r['calls']:5d} calls  "
          f"{r['median_ms']:7.3f} ms  {r['gflops']:6.1f} GFLOP/s"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
