"""Markdown tables from the JSON files that benchmarks/run_cpu_results.sh writes.

python benchmarks/summarize_cpu_results.py /tmp/resnet_jax_cpu_results
"""

import json
import os
import sys


def load(out, name):
  path = os.path.join(out, f"{name}.json")
  try:
    with open(path) as f:
      lines = [line for line in f.read().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None
  except (OSError, json.JSONDecodeError):
    return None


def fmt(v, spec=".1f"):
  return "-" if v is None else format(v, spec)


def main(out):
  rows = []
  for name in ("cifar20", "cifar56", "cifar1202", "resnet50", "cifar20_bf16"):
    r = load(out, name)
    if r is None:
      rows.append(f"| {name} | failed or not run |" + " |" * 9)
      continue
    c, m = r["config"], r["machine"]
    model = f"{'resnet' if c['residual'] else 'plain'}{c['depth']}{' scan' if c['scan'] else ''}"
    rows.append(
        f"| {name} | {model} | {c['batch_size']} | {'bf16' if c['half_precision'] else 'f32'} | "
        f"{m['device_count']} | {r['train_lower_compile_seconds']:.1f} | {r['train_images_per_sec']:.1f} | "
        f"{r['train_cpu_seconds_per_step']:.2f} | {fmt(r['eval_images_per_sec'])} | "
        f"{fmt(r['input_images_per_sec'], '.0f')} | {r['peak_host_memory_bytes'] / 2**20:.0f} | "
        f"{r['train_loss_first']:.2f} -> {r['train_loss_last']:.2f} | {m['load_average_1min']:.1f} |"
    )
  print(
      "| run | model | batch | dtype | devices | compile s | train img/s | CPU s/step | eval img/s | "
      "input img/s | peak host MiB | loss first -> last | load |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))
  print()
  print(
      "| run | params | ours img/s | PyTorch img/s | ours / PyTorch | ours CPU s/step | PyTorch CPU s/step | "
      "max logit diff | load |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for name in ("peer_r20", "peer_r56", "peer_r50"):
    r = load(out, name)
    if r is None:
      print(f"| {name} | failed or not run |" + " |" * 7)
      continue
    loads = r["load_average_1min"]
    print(
        f"| {name} ({r['machine']['device_count']} dev, batch {r['config']['batch_size']}) | "
        f"{r['check']['params']:,} | {r['jax_images_per_sec']:.1f} | {r['torch_images_per_sec']:.1f} | "
        f"{r['ratio_jax_over_torch']:.2f}x | {r['jax_cpu_seconds_per_step']:.2f} | "
        f"{r['torch_cpu_seconds_per_step']:.2f} | {r['check']['max_abs_logit_diff']:.1e} | "
        f"{min(loads):.1f}-{max(loads):.1f} |"
    )


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/resnet_jax_cpu_results")
