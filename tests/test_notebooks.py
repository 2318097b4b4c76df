"""notebooks/tour.ipynb runs top to bottom (nbclient), training its own small run on the shared CIFAR-10."""

import os

import nbformat
from nbclient import NotebookClient

from helpers import REPO, SHARED_DATA, small_cifar_npz


def test_tour_runs_top_to_bottom(tmp_path, monkeypatch):
  path = REPO / "notebooks" / "tour.ipynb"
  notebook = nbformat.read(path, as_version=4)
  assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # none committed
  workdir, data = tmp_path / "tour", tmp_path / "data"
  data.mkdir()  # the shared data's layout, with the first 2,048 training and 1,000 test images of its .npz
  small_cifar_npz(data / "cifar10_jpeg_bytes.npz", n_train=2048, n_test=1000)
  (data / "cifar10-lossless-test-samples").symlink_to(SHARED_DATA / "cifar10-lossless-test-samples")
  monkeypatch.setenv("TOUR_WORKDIR", str(workdir))
  monkeypatch.setenv("TOUR_TRAIN_STEPS", "8")
  monkeypatch.setenv("TOUR_SHARED_DATA", str(data))
  NotebookClient(
      notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
  ).execute()

  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert f"{workdir}: cifar depth 20, 8 steps" in text
  assert "parameters:   269,722   (paper: 0.27M)" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4  # curves, classified images, the committed Figure 6, this run's curves
  assert (workdir / "results.json").exists()
  assert os.listdir(workdir / "checkpoints")


def test_tour_opens_the_committed_full_recipe_run_by_default(monkeypatch):
  """No TOUR_WORKDIR: the packed ResNet-20 run of the README's table, read as it is (nothing trained or written)."""
  path = REPO / "notebooks" / "tour.ipynb"
  pack = REPO / "experiments" / "results" / "cifar20_resnet20"
  before = sorted(p.relative_to(pack) for p in pack.rglob("*"))
  notebook = nbformat.read(path, as_version=4)
  monkeypatch.delenv("TOUR_WORKDIR", raising=False)
  NotebookClient(
      notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
  ).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert f"{pack}: cifar depth 20, 64000 steps (" in text and "resnet_jax.main" not in text
  assert sorted(p.relative_to(pack) for p in pack.rglob("*")) == before
