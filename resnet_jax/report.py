"""Tables and plots of a sweep directory (or of one run): Table 6 (ours beside the paper's), Figure 6 and Figure 7.

    python -m resnet_jax.report runs/degradation [--out=runs/degradation/report]

Reads every run directory under DIR (one with metrics.jsonl or results.json, as train_and_evaluate writes; the
order of DIR/sweep.json when there is one), or DIR itself when it is a run's directory, and writes to --out:

* report.md: a table in the layout of the paper's Table 6 (method, layers, parameters, our errors beside the
  paper's test error; ImageNet runs beside Tables 2-3), the training and test error of each run at a few budgets
  (so one can see at which step a deeper net falls behind or pulls ahead), and the figures below;
* figure6.png (CIFAR; figure4.png for ImageNet): error against iterations, training error thin and test error
  bold, plain nets and residual nets side by side on one error scale, as the paper's Figures 4 and 6;
* figure7.png, when runs hold layer_responses.json (python -m resnet_jax.layer_responses): the std of each 3x3 conv
  layer's response in network order (top) and sorted by magnitude (bottom), plain nets dashed.

Errors are percentages. A run still in progress is reported up to its last logged step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import math
import os
import shlex
from typing import Sequence

import ml_collections
import numpy as np
from absl import flags

from resnet_jax import cli, cluster, config_lib, errors, rundir, storage

# JAX (to count a network's parameters) and matplotlib (the figures) are imported inside the functions that use
# them: --help and the command's errors answer without them.

# The paper's errors (docs/paper.md); ours are measured, these are only printed beside them.
PAPER_CIFAR_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
# ImageNet top-1 error, 10-crop (Tables 2 and 3): (residual, depth, shortcut) -> error; plain nets have no shortcut.
PAPER_IMAGENET_TOP1_10CROP = {
    (False, 18, None): 27.94,
    (False, 34, None): 28.54,
    (True, 18, "A"): 27.88,
    (True, 34, "A"): 25.03,
    (True, 34, "B"): 24.52,
    (True, 34, "C"): 24.19,
    (True, 50, "B"): 22.85,
    (True, 101, "B"): 21.75,
    (True, 152, "B"): 21.43,
}
RESPONSES_FILE = "layer_responses.json"
BATCH_STATS_RESPONSES_FILE = "layer_responses_batch_stats.json"  # layer_responses --batch_stats (a diagnostic)
MAX_BUDGET_COLUMNS = 6


@dataclasses.dataclass
class RunData:
  name: str
  path: str
  config: ml_collections.ConfigDict  # filled from its recipe (config_lib.fill), as a workdir's
  rows: list
  results: dict | None
  responses: dict | None
  responses_batch_stats: dict | None = None

  @property
  def model(self) -> ml_collections.ConfigDict:
    return self.config.model

  @property
  def family(self) -> str:
    return self.model.family

  @property
  def depth(self) -> int:
    return self.model.depth

  @property
  def residual(self) -> bool:
    return self.model.residual

  @property
  def shortcut(self) -> str | None:
    return self.model.shortcut if self.residual else None

  @property
  def label(self) -> str:
    return f"{'ResNet' if self.residual else 'plain'}-{self.depth}"

  @property
  def train_rows(self) -> list:
    return [r for r in self.rows if "train_error" in r]

  @property
  def eval_rows(self) -> list:
    return [r for r in self.rows if "eval_error" in r]

  @property
  def last_step(self) -> int:
    if self.results:
      return int(self.results["steps"])
    return max((r["step"] for r in self.rows), default=0)

  @property
  def complete(self) -> bool:
    return bool(self.results) and self.results.get("steps") == self.config.num_train_steps


def load_run(path: str) -> RunData | None:
  """A run directory's config, metrics, results and layer responses; None if it holds no run."""
  run = rundir.RunDir(path)
  results = run.read_results()
  config = run.stored_config(results)
  rows = run.read_metrics()
  if config is None or (not rows and results is None):
    return None
  return RunData(
      run.path.name,
      run.name,
      config_lib.fill(config),
      rows,
      results,
      storage.read_json(run / RESPONSES_FILE),
      storage.read_json(run / BATCH_STATS_RESPONSES_FILE),
  )


def discover(sweep_dir: str) -> list[RunData]:
  """The runs under sweep_dir, in the sweep's order (sweep.json), else plain before residual, by depth; or the run
  that sweep_dir is, given a run's own --workdir."""
  if not storage.path(sweep_dir).is_dir():
    raise errors.NotFoundError(f"{sweep_dir} is not a directory; give the --workdir of a sweep or a run")
  single = load_run(sweep_dir)
  if single is not None:
    return [single]
  runs = [r for r in (load_run(d.name) for d in rundir.run_dirs(sweep_dir)) if r is not None]
  if not runs:
    raise errors.NotFoundError(f"no training runs (metrics.jsonl / results.json) under {sweep_dir}")
  manifest = rundir.read_manifest(sweep_dir) or {}
  order = {name: i for i, name in enumerate(manifest.get("runs", {}))}
  return sorted(runs, key=lambda r: (order.get(r.name, len(order)), r.family, r.residual, r.depth, r.name))


def _save_figure(fig, path) -> None:
  """PNG through epath (the output folder may be a bucket)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  storage.path(path).write_bytes(buf.getvalue())


@functools.lru_cache(maxsize=64)
def _count_params(model_json: str, image_size: int) -> int:
  import jax
  import jax.numpy as jnp
  from resnet_jax import models

  model = models.create_model(ml_collections.ConfigDict(json.loads(model_json)))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


def count_params(run: RunData) -> int | None:
  try:
    return _count_params(run.model.to_json(sort_keys=True), run.config.image_size)
  except (ValueError, KeyError, TypeError, AttributeError):
    return None


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.2f}"


def _params_str(n) -> str:
  if n is None:
    return "?"
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e6:.3f}M"


def final_train_error(run: RunData):
  rows = run.train_rows
  return rows[-1]["train_error"] if rows else None


def final_eval(run: RunData):
  if run.results and run.results.get("final_eval_error") is not None:
    return run.results["final_eval_error"]
  rows = run.eval_rows
  return rows[-1]["eval_error"] if rows else None


def evaluates_on_validation(run: RunData) -> bool:
  """Whether the run's eval split is held out of the training set (the paper's train[45000:]), not the test set."""
  return str(run.config.eval_split).startswith("train")


def best_validation(run: RunData):
  """The lowest validation error and its step; (None, None) unless the run evaluates on a validation split (a
  minimum chosen on the test set is not comparable with the paper's errors of the final model)."""
  rows = run.eval_rows
  if not rows or not evaluates_on_validation(run):
    return None, None
  best = min(rows, key=lambda r: r["eval_error"])
  return best["eval_error"], best["step"]


def paper_error(run: RunData):
  if run.family == "cifar":
    return PAPER_CIFAR_TEST_ERROR.get(run.depth) if run.residual and run.shortcut == "A" else None
  return PAPER_IMAGENET_TOP1_10CROP.get((run.residual, run.depth, run.shortcut))


def results_table(runs: Sequence[RunData]) -> str:
  """Markdown, in the layout of the paper's Table 6 (method, # layers, # params, error), ours beside theirs."""
  shortcuts = len({r.shortcut for r in runs if r.residual}) > 1
  validation = any(evaluates_on_validation(r) for r in runs)
  head = (
      ["method", "# layers"]
      + (["shortcut"] if shortcuts else [])
      + ["# params", "steps", "train error (%)", "final eval error (%)"]
      + (["best validation error (%) [step]"] if validation else [])
      + ["paper test error (%)"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in runs:
    best, best_step = best_validation(r)
    steps = f"{r.last_step:,}" + ("" if r.complete else " (running)")
    paper = paper_error(r)
    if paper is None and r.family == "cifar" and not r.residual:
      paper_s = "– (curves only, Fig. 6)"
    else:
      paper_s = "–" if paper is None else f"{paper:.2f}" + (" (10-crop)" if r.family == "imagenet" else "")
    cells = (
        [f"{r.label} ({r.name})", str(r.depth)]
        + ([r.shortcut or "–"] if shortcuts else [])
        + [_params_str(count_params(r)), steps, _pct(final_train_error(r)), _pct(final_eval(r))]
        + (["–" if best is None else f"{100 * best:.2f} [{best_step:,}]"] if validation else [])
        + [paper_s]
    )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def budgets(runs: Sequence[RunData], max_columns: int = MAX_BUDGET_COLUMNS) -> list[int]:
  """Up to max_columns steps, evenly spread, at which every run has been evaluated (or, failing that, logged)."""

  def common(key):
    sets = [{row["step"] for row in r.rows if key in row} for r in runs]
    return sorted(set.intersection(*sets)) if sets else []

  steps = common("eval_error") or common("train_error")
  if len(steps) <= max_columns:
    return steps
  idx = np.unique(np.round(np.linspace(0, len(steps) - 1, max_columns)).astype(int))
  return [steps[i] for i in idx]


def train_error_up_to(run: RunData, step: int, prev: int) -> float | None:
  """Mean logged training error over the windows ending in (prev, step] (each window is already a mean)."""
  vals = [row["train_error"] for row in run.train_rows if prev < row["step"] <= step]
  return float(np.mean(vals)) if vals else None


def budget_tables(runs: Sequence[RunData]) -> str:
  steps = budgets(runs)
  if not steps:
    return ""
  head = "| run | " + " | ".join(f"{s:,}" for s in steps) + " |\n|" + "---|" * (len(steps) + 1)
  train_lines, test_lines = [head], [head]
  for r, label in zip(runs, _labels(runs)):
    prev, tr = 0, []
    for s in steps:
      tr.append(train_error_up_to(r, s, prev))
      prev = s
    ev = {row["step"]: row["eval_error"] for row in r.eval_rows}
    train_lines.append(f"| {label} | " + " | ".join(_pct(v) for v in tr) + " |")
    test_lines.append(f"| {label} | " + " | ".join(_pct(ev.get(s)) for s in steps) + " |")
  return (
      "Training error (%), mean of the logged windows since the previous column, by iteration:\n\n"
      + "\n".join(train_lines)
      + "\n\nTest error (%) at the iteration:\n\n"
      + "\n".join(test_lines)
      + "\n"
  )


def depth_comparisons(runs: Sequence[RunData]) -> list[str]:
  """For plain and for residual nets: the deepest against the shallowest, at each budget."""
  out = []
  for residual in (False, True):
    group = sorted((r for r in runs if r.residual == residual), key=lambda r: r.depth)
    if len(group) < 2 or group[0].depth == group[-1].depth:
      continue
    lo, hi = group[0], group[-1]
    steps = budgets([lo, hi])
    prev, diffs = 0, []
    for s in steps:
      a, b = train_error_up_to(hi, s, prev), train_error_up_to(lo, s, prev)
      prev = s
      if a is not None and b is not None:
        diffs.append((s, 100 * (a - b)))
    ev_lo = {row["step"]: row["eval_error"] for row in lo.eval_rows}
    ev_hi = {row["step"]: row["eval_error"] for row in hi.eval_rows}
    test = [(s, 100 * (ev_hi[s] - ev_lo[s])) for s in steps if s in ev_lo and s in ev_hi]
    fmt = lambda pairs: ", ".join(f"{d:+.1f} at {s:,}" for s, d in pairs)
    out.append(f"- {hi.label} minus {lo.label}, training error (points): {fmt(diffs)}; test error: {fmt(test) or '–'}.")
  return out


# ----------------------------------------------------------------------------------------------------------
# Figures.


def _colors(runs) -> dict:
  """{id(run): colour}: one colour per depth, shared by the plain and the residual net of that depth as in the
  paper's figures; runs of one depth and kind (seeds, a twin) each get their own."""
  import matplotlib

  cmap = matplotlib.colormaps["viridis"]
  keys, seen = [], collections.Counter()
  for r in runs:
    keys.append((r.depth, seen[r.depth, r.residual]))
    seen[r.depth, r.residual] += 1
  order = sorted(set(keys))
  n = max(len(order) - 1, 1)
  return {id(r): cmap(0.85 * order.index(k) / n) for r, k in zip(runs, keys)}


def _labels(runs):
  labels = [r.label for r in runs]
  return [r.name if labels.count(r.label) > 1 else r.label for r in runs]


def plot_curves(runs: Sequence[RunData], path: str, title: str) -> str:
  """Error vs iterations, training thin and test bold; plain left, residual right, one error scale."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  groups = [("plain", [r for r in runs if not r.residual]), ("residual", [r for r in runs if r.residual])]
  groups = [(g, rs) for g, rs in groups if rs]
  colors = _colors(runs)
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), sharey=True, squeeze=False)
  all_vals = []
  for ax, (group, rs) in zip(axes[0], groups):
    for r, label in zip(rs, _labels(rs)):
      c = colors[id(r)]
      tr = r.train_rows
      if tr:
        ax.plot([x["step"] for x in tr], [100 * x["train_error"] for x in tr], color=c, lw=0.8, alpha=0.9)
        all_vals += [100 * x["train_error"] for x in tr]
      ev = r.eval_rows
      if ev:
        ax.plot(
            [x["step"] for x in ev],
            [100 * x["eval_error"] for x in ev],
            color=c,
            lw=2.4,
            marker="o" if len(ev) < 30 else None,
            ms=3.5,
        )
        all_vals += [100 * x["eval_error"] for x in ev]
      ax.plot([], [], color=c, lw=2.4, label=label)  # one legend entry per run
    ax.set_title("plain networks" if group == "plain" else "residual networks (ResNets)")
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
  axes[0][0].set_ylabel("error (%)")
  if all_vals:
    axes[0][0].set_ylim(max(0.0, min(all_vals) - 5), min(100.0, max(all_vals) + 5))
  fig.suptitle(f"{title}: thin = training error, bold = test error", fontsize=10)
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return path


def plot_responses(runs: Sequence[RunData], path: str) -> str:
  """Figure 7: response std per 3x3 layer, in network order (top) and sorted by magnitude (bottom)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = [r for r in runs if r.responses]
  colors = _colors(runs)
  fig, axes = plt.subplots(2, 1, figsize=(7, 6))
  for r, label in zip(runs, _labels(runs)):
    style = dict(color=colors[id(r)], ls="-" if r.residual else "--", lw=1.4, marker=".", ms=3)
    std = r.responses["std"]
    axes[0].plot(range(1, len(std) + 1), std, label=label, **style)
    axes[1].plot(range(1, len(std) + 1), r.responses["std_sorted"], label=label, **style)
  values = [v for r in runs for v in r.responses["std"]]
  if values and max(values) > 8 * max(min(values), 1e-6):  # a few huge layers would flatten the others
    for ax in axes:
      ax.set_yscale("log")
  axes[0].set_xlabel("layer index (original)")
  axes[1].set_xlabel("layer index (sorted by magnitude)")
  for ax in axes:
    ax.set_ylabel("std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
  steps = sorted({r.responses.get("step") for r in runs if r.responses.get("step")})
  fig.suptitle(
      "std of 3x3 conv responses (after BN, before ReLU/addition); plain dashed"
      + (f"; step {', '.join(map(str, steps))}" if steps else ""),
      fontsize=9,
  )
  fig.tight_layout()
  _save_figure(fig, path)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------------------------------------
# The report.


def sweep_commands(sweep_dir: str, runs: Sequence[RunData]) -> list[str]:
  """The sweep commands that reproduce these runs (one per distinct set of --set values), from sweep.json."""
  manifest = rundir.read_manifest(sweep_dir)
  if not manifest:
    return []
  groups = {}
  for r in runs:
    entry = manifest.get("runs", {}).get(r.name)
    if entry is not None:
      groups.setdefault(tuple(entry.get("set", manifest.get("set", []))), []).append(r.name)
  return [
      shlex.join(
          [
              "python",
              "-m",
              "resnet_jax.sweep",
              manifest["sweep_file"],
              f"--workdir={sweep_dir}",
              "--only=" + ",".join(names),
          ]
          + [f"--set={s}" for s in sets]
      )
      for sets, names in groups.items()
  ]


def _responses_section(runs: Sequence[RunData]) -> str:
  rs = [r for r in runs if r.responses]
  batch = any(r.responses_batch_stats for r in rs)
  head = ["run", "step", "layers", "examples", "mean std", "min", "max", "mean std by stage"]
  head += ["mean std, batch BN statistics"] if batch else []
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rs:
    resp = r.responses
    stages = {}
    for layer in resp["layers"]:
      stages.setdefault(layer["name"].split("_")[0], []).append(layer["std"])
    by_stage = ", ".join(f"{k} {np.mean(v):.3f}" for k, v in stages.items())
    cells = [
        r.label,
        str(resp.get("step")),
        str(len(resp["std"])),
        f"{resp['num_examples']:,}",
        f"{resp['mean_std']:.3f}",
        f"{min(resp['std']):.3f}",
        f"{max(resp['std']):.3f}",
        by_stage,
    ]
    if batch:
      cells.append(f"{r.responses_batch_stats['mean_std']:.3f}" if r.responses_batch_stats else "–")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def build_report(sweep_dir: str, out_dir: str | None = None) -> dict:
  """Writes report.md and the PNGs; returns {'report': path, 'figures': [paths], 'runs': [names]}."""
  runs = discover(sweep_dir)
  out = storage.path(out_dir) if out_dir else storage.path(sweep_dir) / "report"
  out_dir = os.fspath(out)
  out.mkdir(parents=True, exist_ok=True)
  figures = []
  md = [f"# Results of {storage.path(sweep_dir).name}", ""]
  cmds = sweep_commands(sweep_dir, runs)
  if cmds:
    md += ["Reproduce with:", "", "```", *cmds, f"python -m resnet_jax.report {sweep_dir} --out={out_dir}", "```", ""]
  wall = sum((r.results or {}).get("wall_time_sec", 0) for r in runs)
  devices = sorted({(r.results or {}).get("devices") for r in runs} - {None})
  ev_counts = sorted({row.get("eval_count") for r in runs for row in r.eval_rows} - {None})
  md.append(
      f"{len(runs)} runs; training wall time {wall / 60:.1f} min in total (last invocation of each run)"
      + (f" on {', '.join(map(str, devices))} device(s)" if devices else "")
      + (f"; test error over {', '.join(f'{int(c):,}' for c in ev_counts)} test images" if ev_counts else "")
      + ". Errors in %; 'train error' is the mean over the last logged window of iterations."
  )
  md.append("")
  for family, fig_name, paper_ref in (
      ("cifar", "figure6.png", "Table 6 / Figure 6"),
      ("imagenet", "figure4.png", "Tables 2-3 / Figure 4"),
  ):
    fam = [r for r in runs if r.family == family]
    if not fam:
      continue
    md += [f"## {'CIFAR-10' if family == 'cifar' else 'ImageNet'} (paper: {paper_ref})", "", results_table(fam), ""]
    if family == "imagenet":
      md += [
          "Our test error is the in-training single-crop evaluation; the paper's is 10-crop (use "
          "`python -m resnet_jax.evaluate --protocol=10crop`).",
          "",
      ]
    table = budget_tables(fam)
    if table:
      md += [table]
    comparisons = depth_comparisons(fam)
    if comparisons:
      md += ["Deeper against shallower at the same budgets (positive: the deeper net's error is higher):", ""]
      md += comparisons + [""]
    if any(r.rows for r in fam):
      path = plot_curves(fam, os.fspath(out / fig_name), "CIFAR-10" if family == "cifar" else "ImageNet")
      figures.append(path)
      md += [f"![error vs iterations]({fig_name})", ""]
  if any(r.responses for r in runs):
    path = plot_responses(runs, os.fspath(out / "figure7.png"))
    figures.append(path)
    md += [
        "## Layer responses (paper: Figure 7)",
        "",
        "Standard deviation of each 3x3 conv layer's response (after BN, before the ReLU and the addition) "
        "over the test images with the checkpoint's running BN statistics (inference mode), from "
        "`python -m resnet_jax.layer_responses --workdir=RUN`"
        + (
            "; the last column normalises with each batch's own statistics instead (`--batch_stats`), "
            "which separates learned magnitudes from running statistics that lag behind the weights"
            if any(r.responses_batch_stats for r in runs)
            else ""
        )
        + ".",
        "",
        _responses_section(runs),
        "",
        "![layer responses](figure7.png)",
        "",
    ]
  report = os.fspath(out / "report.md")
  storage.write_text_atomic(report, "\n".join(md))
  return {"report": report, "figures": figures, "runs": [r.name for r in runs]}


_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["out"] = flags.DEFINE_string("out", None, "Output directory (default: SWEEP_DIR/report).")
  cluster.define_flags()


def main(argv):
  if len(argv) != 2:
    cli.fail("usage: python -m resnet_jax.report SWEEP_DIR [--out=SWEEP_DIR/report]")
  cli.start(restart=False, join_cluster=True)
  import jax

  if jax.process_index() > 0:  # on several hosts, process 0 writes the one report
    return
  try:
    out = build_report(argv[1], _FLAGS["out"].value)
  except (FileNotFoundError, ValueError) as e:
    cli.fail(str(e))
  print(f"wrote {out['report']} ({len(out['runs'])} runs) and {', '.join(out['figures']) or 'no figures'}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
