"""Prints the table of benchmarks/gpu_run.sh's results.jsonl (one JSON object per line: resnet_jax.benchmark
--json or torch_peer.py --json, each with the 'name' gpu_run.sh gave it).

    python benchmarks/summarize_gpu_results.py results.jsonl
"""

from __future__ import annotations

import json
import sys


def _f(v, spec=".0f"):
  return "n/a" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
  lines = [
      "| run | device | model | batch | precision | steps per call | train img/s | compile s | eval img/s | "
      "input img/s | peak device MiB |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  peers = []
  for r in rows:
    c, m = r["config"], r["machine"]
    model = f"{c['family']} {'resnet' if c['residual'] else 'plain'}{c['depth']}"
    prec = "bf16" if c["half_precision"] else "f32"
    if "torch_images_per_sec" in r:
      peers.append(
          f"| {r['name']} | {r.get('torch_device_name') or m['device_kind']} | {model} | {c['batch_size']} | "
          f"{prec} | {_f(r['jax_images_per_sec'])} | {_f(r['torch_images_per_sec'])} | "
          f"**{_f(r['ratio_jax_over_torch'], '.2f')}x** | {r['check']['params']:,} | "
          f"{r['check']['max_abs_logit_diff']:.1e} | {r['torch_version']} |"
      )
      continue
    peak = r.get("peak_device_memory_bytes")
    lines.append(
        f"| {r['name']} | {m['device_kind']} | {model} | {c['batch_size']} | {prec} | "
        f"{r.get('train_steps_per_call', 1)} | {_f(r['train_images_per_sec'])} | "
        f"{_f(r['train_lower_compile_seconds'], '.1f')} | "
        f"{_f(r.get('eval_images_per_sec'))} | {_f(r.get('input_images_per_sec'))} | "
        f"{_f(peak and peak / 2**20)} |"
    )
  if peers:
    lines += [
        "",
        "| run | device | model | batch | precision | ours img/s | PyTorch img/s | ratio | params (both) | "
        "max logit diff | torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ] + peers
  if rows:
    m = rows[0]["machine"]
    lines += [
        "",
        f"jax {m['jax_version']}, flax {m['flax_version']}, python {m['python']}, {m['cpu_count']} CPUs "
        f"({m['cpu_model']})",
    ]
  return "\n".join(lines)


def main(argv):
  path = argv[1] if len(argv) > 1 else "results.jsonl"
  try:
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  except FileNotFoundError:
    print(f"no results: {path} does not exist (every run failed? see log.txt beside it)")
    return 1
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
