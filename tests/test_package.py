"""The package as a user installs it: a wheel built from the repository, installed outside it, trains a few steps
with a recipe named by its packaged config (--config=cifar20), and carries what the commands need (the configs,
the oneDNN source, the ImageNet class names)."""

import os
import subprocess
import sys
import zipfile

from helpers import REPO, SMALL


def test_wheel_installs_and_trains_outside_the_repository(tmp_path):
  dist, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
  work.mkdir()
  run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
  out = run(
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-deps",
      "--no-build-isolation",
      "-q",
      "-w",
      str(dist),
      str(REPO),
      cwd=tmp_path,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  (wheel,) = dist.glob("resnet_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  assert {
      "resnet_jax/configs/cifar20.py",
      "resnet_jax/configs/imagenet_torchvision.py",
      "resnet_jax/cpu/csrc/onednn_conv.cc",
      "resnet_jax/data/imagenet_classes.tsv",
  } <= names
  out = run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel))
  assert out.returncode == 0, out.stderr[-3000:]
  # The dependencies come from this environment; resnet_jax from the wheel (PYTHONPATH precedes the editable
  # install's finder), run from a directory that has no configs/.
  env = {**os.environ, "PYTHONPATH": str(target)}
  out = run(sys.executable, "-c", "import resnet_jax; print(resnet_jax.__file__)", cwd=work, env=env)
  assert out.stdout.startswith(str(target)), out.stdout + out.stderr
  out = run(
      sys.executable,
      "-m",
      "resnet_jax.main",
      "--config=cifar20",
      f"--workdir={work / 'run'}",
      *SMALL,
      "--config.model.depth=8",
      "--config.num_train_steps=2",
      "--config.log_every_steps=1",
      cwd=work,
      env=env,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 2/2" in out.stderr and (work / "run" / "results.json").exists()
