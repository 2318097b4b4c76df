"""The README's results table, written from the packed runs under experiments/results/ (never by hand).

    python experiments/results_table.py        # prints the table; tests/test_readme.py checks the README holds it

Each row is a network trained with the paper's full recipe: the paper's test error, ours, the PyTorch twin's
(experiments/torch_twin.py: the same network, initial weights, recipe, pixels and augmentation), the data, and the
machines and wall time summed over the run's pieces (pieces.jsonl). A run still in pieces says how far it got; a
run not started says 'not measured'.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from resnet_jax import pieces, report, rundir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
JPEG_CIFAR = "CIFAR-10, JPEG copy (quality ~75), 50k train / 10k test"

# (network, paper's test error %, our pack, the twin's pack, data)
ROWS = (("ResNet-20", report.PAPER_CIFAR_TEST_ERROR[20], "cifar20_resnet20", "cifar20_resnet20_torch", JPEG_CIFAR),)


def _read(path: Path):
  return json.loads(path.read_text()) if path.exists() else None


def error_cell(pack: Path) -> str:
  """'8.91 %' for a finished run, 'running: step N of M' for one in pieces, 'not measured' for none."""
  results = _read(pack / rundir.RESULTS)
  config = _read(pack / rundir.CONFIG)
  if results and config and results["steps"] >= config["num_train_steps"]:
    return f"{100 * results['final_eval_error']:.2f} %"
  marker = _read(pack / "packed.json")
  if not marker or not config:
    return "not measured"
  step = max((r["checkpoint"] or 0 for r in marker["runs"].values()), default=0)
  return f"running: step {step:,} of {config['num_train_steps']:,}"


def machines(records: list[dict]) -> list[str]:
  """Each machine the pieces ran on, once, with the thread counts the twin's pieces used there."""
  threads = {}  # machine -> its pieces' thread counts, in order
  for r in records:
    m = r["machine"]
    name = f"{m['cpu']}, {m['cpus']} CPUs" + (f", {m['devices']}" if "cpu" not in m.get("devices", "cpu") else "")
    counts = threads.setdefault(name, [])
    if "threads" in m and m["threads"] not in counts:
      counts.append(m["threads"])
  return [
      name + (f", {' or '.join(map(str, counts))} thread{'s' if counts != [1] else ''}" if counts else "")
      for name, counts in threads.items()
  ]


def hours(seconds: float) -> str:
  minutes = round(seconds / 60)
  return f"{minutes // 60} h {minutes % 60:02d} min"


def table(results_dir: Path = RESULTS) -> str:
  lines = [
      "| network | paper | ours | PyTorch twin | data | hardware (ours; twin) | wall time (ours; twin) |",
      "|---|---|---|---|---|---|---|",
  ]
  for network, paper, ours, twin, data in ROWS:
    ours_pieces, twin_pieces = pieces.read(results_dir / ours), pieces.read(results_dir / twin)
    hardware = "; ".join(" + ".join(machines(p)) or "-" for p in (ours_pieces, twin_pieces))
    wall = "; ".join(hours(sum(r["seconds"] for r in p)) if p else "-" for p in (ours_pieces, twin_pieces))
    cells = [network, f"{paper:.2f} %", error_cell(results_dir / ours), error_cell(results_dir / twin), data]
    lines.append("| " + " | ".join(cells + [hardware, wall]) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(table())
