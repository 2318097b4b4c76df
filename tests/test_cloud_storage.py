"""Workdirs and data on cloud storage, against a real GCS emulator (fake-gcs-server, started by the fixture).

The commands get only the standard STORAGE_EMULATOR_HOST; resnet_jax.storage points epath (gcsfs) and
tensorstore (orbax's checkpoints) at it. The test process itself talks to the emulator over its JSON API only.
"""

import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from helpers import (
    REPO,
    SHARED_DATA,
    SMALL,
    assert_trees_equal,
    load_state,
    predict_in_process,
    read_metrics,
    run_cli,
    without_host_measures,
    train_in_process,
)

BUCKET = "resnet-jax-test"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A running fake-gcs-server with one bucket (benchmarks/bucket_logging.start_emulator); {'env': the commands'
  environment, 'url': its address}."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import bucket_logging

  server, url = bucket_logging.start_emulator(str(tmp_path_factory.mktemp("gcs")), BUCKET)
  try:
    yield {"env": {"STORAGE_EMULATOR_HOST": url}, "url": url}
  finally:
    server.terminate()
    server.wait(timeout=10)


def _request(url, method, path, data=None, content_type="application/octet-stream"):
  req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": content_type})
  with urllib.request.urlopen(req, timeout=60) as resp:
    return resp.read()


def _upload(gcs, name: str, data: bytes):
  _request(gcs["url"], "POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}", data)


def _objects(gcs, prefix: str) -> list[str]:
  listing = json.loads(_request(gcs["url"], "GET", f"/storage/v1/b/{BUCKET}/o?prefix={prefix}"))
  return sorted(item["name"] for item in listing.get("items", []))


def _small_cifar_npz() -> bytes:
  """256 training and 100 test images of the real CIFAR-10 (decoded from the shared JPEG bytes)."""
  from PIL import Image

  out = {}
  with np.load(SHARED_DATA / "cifar10_jpeg_bytes.npz") as z:
    for split, n in (("train", 256), ("test", 100)):
      buf, off = z[f"{split}_jpeg"], z[f"{split}_offsets"]
      out[f"x_{split}"] = np.stack(
          [np.asarray(Image.open(io.BytesIO(buf[off[i] : off[i + 1]].tobytes())).convert("RGB")) for i in range(n)]
      )
      out[f"y_{split}"] = z[f"y_{split}"][:n]
  f = io.BytesIO()
  np.savez(f, **out)
  return f.getvalue()


def _args(workdir, data_file, steps):
  return [
      "--config=configs/cifar20.py",
      f"--workdir={workdir}",
      *[a for a in SMALL if not a.startswith(("--config.dataset", "--config.fake"))],
      f"--config.data_file={data_file}",
      f"--config.num_train_steps={steps}",
      "--config.log_every_steps=2",
      "--config.eval_every_steps=4",
      "--config.checkpoint_every_steps=4",
      "--config.lr_boundaries=(2,3)",  # in steps: the same schedule for the 4- and the 8-step run
  ]


def _download_tree(gcs, url: str, dest):
  """Copies gs://... to a local folder through resnet_jax.storage (in a process that has the emulator's variable)."""
  code = f"from resnet_jax import storage; storage.copy_tree({url!r}, {str(dest)!r})"
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env={**os.environ, **gcs["env"]}, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_train_resume_predict_report_on_a_bucket(gcs, tmp_path):
  """Workdir and data_file on gs://: 4 steps, then a resumed run to 8 that ends bit-identical to an uninterrupted
  local run; predict (without the training data) and report read the bucket; nothing lands in a local folder named
  gs:.

  Whatever touches the bucket is a command of its own, with the emulator's variable from its start (etils.epath
  chooses TensorFlow's gfile or gcsfs once per process, tensorstore reads its URL from the environment); the local
  reference run and the local predictions run in this process (helpers.train_in_process, predict_in_process)."""
  data = _small_cifar_npz()
  _upload(gcs, "data/cifar_small.npz", data)
  (tmp_path / "cifar_small.npz").write_bytes(data)
  bucket_run, cache = f"gs://{BUCKET}/sweep/run", f"--config.compilation_cache_dir=gs://{BUCKET}/jax_cache"
  run_cli("resnet_jax.main", *_args(bucket_run, f"gs://{BUCKET}/data/cifar_small.npz", 4), cache, env=gcs["env"])
  assert "sweep/run/checkpoints/4/" in " ".join(_objects(gcs, "sweep/run/checkpoints/"))
  compiled = {n for n in _objects(gcs, "jax_cache/") if not n.endswith("-atime")}
  assert any(n.startswith("jax_cache/jit_") for n in compiled), compiled
  resumed = run_cli(
      "resnet_jax.main", *_args(bucket_run, f"gs://{BUCKET}/data/cifar_small.npz", 8), cache, env=gcs["env"]
  )
  assert f"resumed from {bucket_run}/checkpoints/4" in resumed.stderr
  assert {n for n in _objects(gcs, "jax_cache/") if not n.endswith("-atime")} == compiled  # all loaded, none new
  train_in_process(*_args(tmp_path / "local", tmp_path / "cifar_small.npz", 8))  # the reference: local files only

  names = _objects(gcs, "sweep/run/")
  assert {f"sweep/run/{f}" for f in ("config.json", "metrics.jsonl", "results.json", "normalization.npz")} <= set(names)
  assert any("/events.out.tfevents." in n for n in names)  # TensorBoard, written through epath
  copy = tmp_path / "copy"
  _download_tree(gcs, bucket_run, copy)
  assert_trees_equal(load_state(copy, 8), load_state(tmp_path / "local", 8))
  rows, local = read_metrics(copy), read_metrics(tmp_path / "local")
  assert [r["step"] for r in rows] == [2, 4, 6, 8] and without_host_measures(rows) == without_host_measures(local)
  results = json.loads((copy / "results.json").read_text())
  assert results["resumed_from_step"] == 4 and results["steps"] == 8

  image = sorted((SHARED_DATA / "cifar10-lossless-test-samples").glob("*.png"))[0]
  # The workdir holds the input statistics: predict needs no training data (the bucket's copy is deleted), and
  # gives the local run's predictions.
  _request(gcs["url"], "DELETE", f"/storage/v1/b/{BUCKET}/o/data%2Fcifar_small.npz")
  preds = [
      json.loads(run_cli("resnet_jax.predict", f"--workdir={bucket_run}", "--json", image, env=gcs["env"]).stdout),
      *predict_in_process(tmp_path / "local", image),  # `predict --json`'s row
  ]
  assert preds[0]["image"] == str(image) and len(preds[0]["top"]) == 5
  assert preds[0]["top"] == preds[1]["top"]

  out = run_cli("resnet_jax.report", f"gs://{BUCKET}/sweep", env=gcs["env"])
  assert f"gs://{BUCKET}/sweep/report/report.md" in out.stdout
  assert {"sweep/report/report.md", "sweep/report/figure6.png"} <= set(_objects(gcs, "sweep/report/"))
  assert not (REPO / "gs:").exists() and not (tmp_path / "gs:").exists()


def test_missing_data_on_a_bucket_is_one_line(gcs, tmp_path):
  proc = run_cli(
      "resnet_jax.main", *_args(tmp_path / "run", f"gs://{BUCKET}/nothing.npz", 4), env=gcs["env"], check=False
  )
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert f"data_file gs://{BUCKET}/nothing.npz does not exist" in proc.stderr


def _documented_commands() -> list[list[str]]:
  """The arguments of every complete `python -m resnet_jax.main` command in docs/pods.md."""
  text = re.sub(r"\\\n\s*", " ", (REPO / "docs" / "pods.md").read_text())
  commands = []
  for line in text.splitlines():
    m = re.search(r"python -m resnet_jax\.main ([^\"]*)", line)
    if m and "..." not in m.group(1):
      commands.append(shlex.split(m.group(1)))
  return commands


# A two-step ImageNet-family run on fake data (ResNet-18 at 32x32): what a documented recipe does, small enough here.
TINY_IMAGENET = [
    "--config.dataset=fake",
    "--config.input_backend=device",
    "--config.model.depth=18",
    "--config.image_size=32",
    "--config.batch_size=8",
    "--config.eval_batch_size=10",
    "--config.fake_train_size=32",
    "--config.fake_eval_size=10",
    "--config.num_train_steps=2",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=2",
    "--config.checkpoint_every_steps=2",
]


@pytest.mark.slow  # three two-process runs of an ImageNet network: a few minutes on the 2-core machine
def test_documented_pod_and_slurm_commands_run_in_simulated_form(gcs, tmp_path):
  """docs/pods.md's commands, as two SLURM-style tasks each: the bucket is the emulator's, /shared a local folder."""
  from test_cluster import _launch, _wait

  commands = _documented_commands()
  assert len(commands) == 3 and any(a.startswith("--workdir=gs://BUCKET/") for a in commands[0])
  for i, args in enumerate(commands):
    bucket, shared = f"gs://{BUCKET}/docs{i}", str(tmp_path / f"shared{i}")  # the two SLURM commands share a workdir
    args = [a.replace("gs://BUCKET", bucket).replace("/shared", shared) for a in args]
    codes, errs = _wait(_launch(args + TINY_IMAGENET, extra_env=gcs["env"]))
    assert codes == [0, 0], (args, errs[0][-3000:], errs[1][-3000:])
    assert "cluster: process 0 of 2" in errs[0] and "step 2/2" in errs[0]


def test_a_cloud_workdirs_metrics_are_uploaded_in_the_background_not_at_each_step(tmp_path, monkeypatch):
  """metrics.jsonl of a cloud workdir (rewritten whole: objects cannot be appended to) is uploaded every period
  and at the end, not at each of its rows; an upload with no new row writes nothing."""
  from resnet_jax import rundir, storage, writers

  uploads = []
  write = storage.write_text_atomic
  monkeypatch.setattr(
      storage, "write_text_atomic", lambda path, text: (uploads.append(text.count("\n")), write(path, text))
  )
  log = rundir.MetricsLog(storage.path(tmp_path / "metrics.jsonl"), whole_file=True)
  background = writers._Uploads([log.upload], period=1.0)
  background.start()
  for step in range(1, 201):
    log.write(step, {"train_loss": 1.0})
  assert uploads == []  # the rows so far are in memory
  time.sleep(1.5)
  assert uploads == [200]  # one periodic upload of them all
  log.write(201, {"train_loss": 1.0})
  background.close()
  assert uploads == [200, 201]  # and the last row at the end
  assert [r["step"] for r in rundir.RunDir(tmp_path).read_metrics()] == list(range(1, 202))
