"""The report (Table 6 layout, Figure 6/7 PNGs) from synthetic workdirs."""

import json

import numpy as np
import pytest

from helpers import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(depth, residual, steps):
  from resnet_jax import config_lib

  c = config_lib.cifar(depth, residual=residual)
  c.num_train_steps = steps
  return json.loads(c.to_json_best_effort())


def make_run(root, name, depth, residual, *, steps=400, done=True, err0=0.9, slope=0.5, responses=None):
  """A run directory as train_and_evaluate writes it, with made-up curves: train error falls from err0 by
  `slope` over the run; test error is 5 points above it at each eval (every 100 steps)."""
  d = root / name
  d.mkdir(parents=True)
  config = _config(depth, residual, steps)
  last = steps if done else steps // 2
  rows = []
  for step in range(20, last + 1, 20):
    row = {
        "step": step,
        "train_loss": 2.0,
        "train_error": err0 - slope * step / steps,
        "learning_rate": 0.1,
        "images_per_sec": 100.0,
    }
    if step % 100 == 0:
      row.update(eval_error=row["train_error"] + 0.05, eval_loss=2.0, eval_count=10000.0)
    rows.append(row)
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (d / "config.json").write_text(json.dumps(config))
  if done:
    (d / "results.json").write_text(
        json.dumps(
            {
                "final_eval_error": rows[-1]["eval_error"],
                "steps": steps,
                "wall_time_sec": 60.0,
                "devices": 1,
                "config": config,
            }
        )
    )
  if responses is not None:
    std = list(responses)
    (d / "layer_responses.json").write_text(
        json.dumps(
            {
                "model": name,
                "depth": depth,
                "residual": residual,
                "step": steps,
                "split": "test",
                "num_examples": 10000,
                "std": std,
                "std_sorted": sorted(std, reverse=True),
                "mean_std": float(np.mean(std)),
                "layers": [{"index": i + 1, "name": f"layer{i + 1}", "std": s} for i, s in enumerate(std)],
            }
        )
    )
  return d


@pytest.fixture
def sweep_dir(tmp_path):
  root = tmp_path / "sweep"
  make_run(root, "plain20", 20, False, err0=0.8, slope=0.5, responses=[1.5] * 18)
  make_run(root, "plain56", 56, False, err0=0.9, slope=0.3)
  make_run(root, "resnet20", 20, True, err0=0.8, slope=0.5, responses=[0.8] * 18)
  make_run(root, "resnet56", 56, True, err0=0.8, slope=0.6, done=False)
  (root / "not_a_run").mkdir()
  (root / "sweep.json").write_text(
      json.dumps(
          {
              "sweep_file": "experiments/degradation.py",
              "runs": {n: {"set": ["num_train_steps=400"]} for n in ("plain20", "plain56", "resnet20", "resnet56")},
          }
      )
  )
  return root


def _table_rows(md, first_cell_prefix):
  return [line for line in md.splitlines() if line.startswith("| " + first_cell_prefix)]


def test_report_builds_table_and_pngs(sweep_dir, tmp_path):
  from resnet_jax import report

  out = report.build_report(str(sweep_dir), str(tmp_path / "out"))
  assert out["runs"] == ["plain20", "plain56", "resnet20", "resnet56"]  # the sweep's order; not_a_run left out
  md = (tmp_path / "out" / "report.md").read_text()

  # Table 6 layout: ours beside the paper's; parameters counted from the model (ResNet-20: 269,722).
  # Errors of the final model; no "best" column, since these runs evaluate on the test set.
  assert (
      "| method | # layers | # params | steps | train error (%) | final eval error (%) | paper test error (%) |" in md
  )
  r20 = _table_rows(md, "ResNet-20 (resnet20)")[0].split(" | ")
  assert r20[1:6] == ["20", "0.270M", "400", "30.00", "35.00"] and r20[-1].rstrip(" |") == "8.75"
  r56 = _table_rows(md, "ResNet-56 (resnet56)")[0]
  assert "200 (running)" in r56 and "0.853M" in r56 and "6.97" in r56
  assert "curves only" in _table_rows(md, "plain-56 (plain56)")[0]

  # Budget tables and the deeper-vs-shallower lines: plain-56 above plain-20, ResNet-56 below ResNet-20.
  assert "| run | 100 | 200 |" in md  # the eval steps every run reached
  comparisons = [line for line in md.splitlines() if " minus " in line]
  assert comparisons[0].startswith("- plain-56 minus plain-20, training error (points): +")
  assert comparisons[1].startswith("- ResNet-56 minus ResNet-20, training error (points): -")
  assert "--only=plain20,plain56,resnet20,resnet56 --set=num_train_steps=400" in md

  # Figures: Figure 6 (curves) and Figure 7 (the two runs with layer responses), embedded and valid PNGs.
  assert "![error vs iterations](figure6.png)" in md and "![layer responses](figure7.png)" in md
  import matplotlib.image

  for name in ("figure6.png", "figure7.png"):
    path = tmp_path / "out" / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    h, w = matplotlib.image.imread(str(path)).shape[:2]
    assert 300 < h < 1000 and 400 < w < 1200, (name, h, w)
    assert path.stat().st_size < 200_000  # small enough to commit
  assert "| plain-20 | 400 | 18 | 10,000 | 1.500 |" in md


def test_best_error_only_on_a_validation_split(sweep_dir, tmp_path):
  from resnet_jax import report

  runs = [report.load_run(str(sweep_dir / "resnet20"))]
  assert report.best_validation(runs[0]) == (None, None)  # evaluated on the test set
  runs[0].config["eval_split"] = "train[45000:]"
  best, step = report.best_validation(runs[0])
  assert best == min(r["eval_error"] for r in runs[0].eval_rows) and step in (100, 200, 300, 400)
  assert "| best validation error (%) [step] |" in report.results_table(runs)


def test_budget_means_and_paper_numbers():
  from resnet_jax import config_lib, report

  run = report.RunData(
      "r",
      "r",
      config_lib.fill(_config(110, True, 100)),
      [{"step": s, "train_error": e} for s, e in ((10, 0.9), (20, 0.7), (30, 0.5), (40, 0.3))],
      None,
      None,
  )
  assert report.train_error_up_to(run, 20, 0) == pytest.approx(0.8)
  assert report.train_error_up_to(run, 40, 20) == pytest.approx(0.4)
  assert report.paper_error(run) == 6.43 and report.count_params(run) == 1_727_962
  stored = {"model": {"family": "imagenet", "depth": 34, "residual": True, "shortcut": "B"}}
  imagenet = report.RunData("i", "i", config_lib.fill(stored), [], None, None)
  assert report.paper_error(imagenet) == 24.52


def test_a_depth_shares_its_colour_across_kinds_and_runs_of_one_kind_do_not():
  """Figure 6 colours plain-20 and ResNet-20 alike, as the paper; a run and its twin (or seeds) apart."""
  from resnet_jax import config_lib, report

  def run(name, depth, residual):
    return report.RunData(name, name, config_lib.fill(_config(depth, residual, 100)), [], None, None)

  plain20, res20, res20_twin, res56 = run("p", 20, False), run("r", 20, True), run("t", 20, True), run("d", 56, True)
  colors = report._colors([plain20, res20, res20_twin, res56])
  assert colors[id(plain20)] == colors[id(res20)]
  assert len({colors[id(r)] for r in (res20, res20_twin, res56)}) == 3
  assert report._labels([res20, res20_twin]) == ["r", "t"]


def test_report_cli_and_missing_dir(sweep_dir, tmp_path):
  proc = run_cli("resnet_jax.report", str(sweep_dir))
  assert (sweep_dir / "report" / "report.md").exists() and "figure6.png" in proc.stdout
  proc = run_cli("resnet_jax.report", str(tmp_path / "nothing"), check=False)
  assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_report_of_one_run_directory(sweep_dir, tmp_path):
  """A run's own --workdir (a long run trained alone) is reported as a sweep of one."""
  proc = run_cli("resnet_jax.report", str(sweep_dir / "resnet20"), f"--out={tmp_path / 'one'}")
  md = (tmp_path / "one" / "report.md").read_text()
  assert "figure6.png" in proc.stdout and len(_table_rows(md, "ResNet-20 (resnet20)")) == 1
  assert not _table_rows(md, "ResNet-56") and (tmp_path / "one" / "figure6.png").read_bytes()[:8] == PNG_MAGIC
