"""notebooks/tour.ipynb runs top to bottom (nbclient), training its own small run on real CIFAR-10 (from tfds, where
TFDS_DATA_DIR points, as a user's run reads it)."""

import os

import nbformat
from nbclient import NotebookClient

from helpers import REPO, TFDS_DIR

NOTEBOOK = REPO / "notebooks" / "tour.ipynb"


def _run_tour() -> tuple[list, str]:
  """The notebook executed top to bottom in this environment: its outputs, and the text it printed."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # none committed
  NotebookClient(
      notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
  ).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  return outputs, "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def test_tour_runs_top_to_bottom(tmp_path, monkeypatch):
  workdir = tmp_path / "tour"
  monkeypatch.setenv("TOUR_WORKDIR", str(workdir))
  monkeypatch.setenv("TOUR_TRAIN_STEPS", "8")
  monkeypatch.setenv("TFDS_DATA_DIR", str(TFDS_DIR))
  monkeypatch.delenv("TOUR_DATA_FILE", raising=False)
  outputs, text = _run_tour()
  assert f"{workdir}: cifar depth 20, 8 steps" in text
  assert "parameters:   269,722   (paper: 0.27M)" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4  # curves, classified images, the committed Figure 6, this run's curves
  assert (workdir / "results.json").exists()
  assert os.listdir(workdir / "checkpoints")


def test_tour_opens_the_committed_full_recipe_run_by_default(monkeypatch):
  """No TOUR_WORKDIR: the packed ResNet-20 run of the README's table, read as it is (nothing trained or written)."""
  pack = REPO / "experiments" / "results" / "cifar20_resnet20"
  before = sorted(p.relative_to(pack) for p in pack.rglob("*"))
  monkeypatch.delenv("TOUR_WORKDIR", raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(TFDS_DIR))  # the test images it classifies
  monkeypatch.delenv("TOUR_DATA_FILE", raising=False)
  _, text = _run_tour()
  assert f"{pack}: cifar depth 20, 64000 steps (" in text and "resnet_jax.main" not in text
  assert sorted(p.relative_to(pack) for p in pack.rglob("*")) == before
