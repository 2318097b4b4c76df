"""Every command answers bad input with one clear line on stderr and exit status 2, never a traceback; and what a
user meets in a first hour (main's --help and --print_config, predict given a folder) says what it does.

Each case is a command line a user could type; the test checks the exit status, that the message names the field,
flag or path at fault, that it is printed once, and that no Python traceback appears. None of these reach
compilation or data loading, so each takes about a second.
"""

import json
import shutil

import pytest

from helpers import SHARED_DATA, predict_in_process, run_cli, small_run_args, train_in_process

CIFAR = "--config=configs/cifar20.py"

CASES = [
    # (module, args, what the message must name)
    ("resnet_jax.main", ["--config=configs/nope.py", "--workdir=W"], "configs/nope.py: no such config file"),
    ("resnet_jax.main", ["--config=configs/cifr20.py", "--workdir=W"], "did you mean cifar20?"),
    ("resnet_jax.main", [CIFAR, "--config.batchsize=64", "--workdir=W"], 'Did you mean "batch_size"'),
    ("resnet_jax.main", [CIFAR, "--config.batch_size=abc", "--workdir=W"], "--config.batch_size=abc"),
    ("resnet_jax.main", [CIFAR, "--config.model.depth=21", "--workdir=W"], "CIFAR depth must be 6n+2"),
    ("resnet_jax.main", [CIFAR, "--config.cpu.host_malloc=jemalloc", "--workdir=W"], "cpu.host_malloc='jemalloc'"),
    (
        "resnet_jax.main",
        [CIFAR, "--config.input_backend=device", "--config.steps_per_call=3", "--workdir=W"],
        "log_every_steps=100 is not a multiple of steps_per_call=3",
    ),
    (
        "resnet_jax.main",
        [CIFAR, "--config.parallelism=pmap", "--config.steps_per_call=4", "--workdir=W"],
        "--config.parallelism=jit",
    ),
    ("resnet_jax.main", [CIFAR], "--workdir"),
    ("resnet_jax.main", [CIFAR, "--workdir=W", "extra"], "unexpected arguments"),
    ("resnet_jax.summary", [CIFAR, "--config.model.depth=21"], "CIFAR depth must be 6n+2"),
    ("resnet_jax.summary", [CIFAR, "--config.model.shortcut=D"], "unknown shortcut option 'D'"),
    ("resnet_jax.summary", ["--config=configs/missing.py"], "configs/missing.py: no such config file"),
    ("resnet_jax.evaluate", ["--workdir=MISSING_RUN"], "MISSING_RUN/checkpoints does not exist"),
    (
        "resnet_jax.evaluate",
        ["--config=configs/imagenet_resnet18.py", "--config.eval_bach_size=8", "--workdir=W"],
        "unknown config field 'eval_bach_size'",
    ),
    ("resnet_jax.evaluate", ["--workdir=W", "--protocol=12crop"], "--protocol"),
    ("resnet_jax.predict", ["--workdir=MISSING_RUN", "x.jpg"], "MISSING_RUN/config.json does not exist"),
    ("resnet_jax.predict", ["--workdir=W"], "give one or more image files"),
    ("resnet_jax.export", ["--workdir=W", "out.onnx"], "give --format: stablehlo, savedmodel or onnx, e.g."),
    ("resnet_jax.convert", ["from-torchvision", "missing.safetensors", "--workdir=W"], "missing.safetensors: no such"),
    ("resnet_jax.convert", ["to-pytorch", "x", "--workdir=W"], "usage: python -m resnet_jax.convert"),
    ("resnet_jax.benchmark", ["--config=configs/nope.py"], "configs/nope.py: no such config file"),
    ("resnet_jax.benchmark", [CIFAR, "--config.learning_rate=-1"], "learning_rate=-1"),
    ("resnet_jax.data.imagenet_prepare", ["--data_dir=MISSING_DATA"], "ILSVRC2012_img_train.tar"),
    ("resnet_jax.sweep", ["experiments/nope.py", "--workdir=W"], "experiments/nope.py"),
    (
        "resnet_jax.sweep",
        ["nope", "--workdir=W"],
        "no sweep file nope; the sweeps are degradation, depth, shortcuts, table6",
    ),
    ("resnet_jax.sweep", ["experiments/depth.py"], "--workdir is required"),
    ("resnet_jax.report", ["MISSING_SWEEP"], "MISSING_SWEEP"),
    ("resnet_jax.layer_responses", ["--workdir=MISSING_RUN"], "MISSING_RUN/config.json does not exist"),
]


@pytest.mark.parametrize("module,args,needle", CASES, ids=[f"{m.split('.')[-1]}:{' '.join(a)}" for m, a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(module, args, needle, tmp_path):
  args = [a.replace("=W", f"={tmp_path / 'W'}").replace("MISSING_", f"{tmp_path}/MISSING_") for a in args]
  proc = run_cli(module, *args, check=False, timeout=120, env={"GLIBC_TUNABLES": ""})  # a restart would be due
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "FATAL"))]
  assert len(errors) == 1, proc.stderr[-3000:]  # printed once
  assert needle in proc.stderr, proc.stderr[-3000:]
  assert "host_malloc: restarting" not in proc.stderr  # refused before any restart
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created


# The first hour: main says what it takes; predict checks its paths before loading a checkpoint and takes folders.


def test_main_help_names_the_recipes_and_how_to_override_fields():
  out = run_cli("resnet_jax.main", "--help", check=False).stdout  # absl exits 1 after --help
  for needle in ("cifar20", "cifar110", "plain56", "imagenet_resnet50", "--config.FIELD=VALUE", "--print_config"):
    assert needle in out, out


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path):
  wd = tmp_path / "W"
  out = run_cli(
      "resnet_jax.main",
      "--config=cifar20",
      "--config.model.depth=32",
      "--config.num_train_steps=2000",
      f"--workdir={wd}",
      "--print_config",
  )
  config = json.loads(out.stdout)
  assert config["model"]["depth"] == 32 and config["num_train_steps"] == 2000 and config["batch_size"] == 128
  assert not wd.exists()
  imagenet = json.loads(run_cli("resnet_jax.main", "--config=imagenet_resnet18", "--print_config").stdout)
  assert imagenet["num_train_steps"] == 120 * 1_281_167 // 256  # resolved: epochs as steps, as config.json says
  bad = run_cli("resnet_jax.main", "--config=cifar20", "--config.model.depth=21", "--print_config", check=False)
  assert bad.returncode == 2 and "CIFAR depth must be 6n+2" in bad.stderr and not bad.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A ResNet-8 trained for 4 steps on fake data (in this process), and the shared CIFAR-10 sample PNGs."""
  wd = tmp_path_factory.mktemp("first_hour") / "run"
  train_in_process(*small_run_args(wd, steps=4))
  return wd, sorted((SHARED_DATA / "cifar10-lossless-test-samples").glob("*.png"))


def _one_error_line(proc):
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  return line


def test_predict_checks_image_paths_before_loading_the_checkpoint(trained, tmp_path):
  wd, images = trained
  no_checkpoint = tmp_path / "no_checkpoint"  # loading it would fail: the paths' error must come first
  no_checkpoint.mkdir()
  shutil.copy(wd / "config.json", no_checkpoint)
  missing = tmp_path / "missing.png"
  proc = run_cli("resnet_jax.predict", f"--workdir={no_checkpoint}", images[0], missing, check=False)
  assert _one_error_line(proc) == f"error: no such file or folder: {missing}; nothing was classified"
  assert not proc.stdout


def test_predict_classifies_the_images_of_a_folder(trained, tmp_path):
  wd, images = trained
  folder = tmp_path / "photos"
  folder.mkdir()
  for i, image in enumerate(images[:3]):
    shutil.copy(image, folder / f"{2 - i}_{image.name.upper() if i == 1 else image.name}")  # any case, by name
  (folder / "notes.txt").write_text("not an image")
  (folder / "sub").mkdir()
  proc = run_cli("resnet_jax.predict", f"--workdir={wd}", "--json", "--top=3", folder)
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  expected = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() == ".png")
  assert [r["image"] for r in rows] == expected and len(expected) == 3
  for got, want in zip(rows, predict_in_process(wd, *expected, top=3)):  # what predict gives each file
    assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
    assert [t["probability"] for t in got["top"]] == pytest.approx([t["probability"] for t in want["top"]], abs=1e-6)

  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("not an image")
  line = _one_error_line(run_cli("resnet_jax.predict", f"--workdir={wd}", empty, check=False))
  assert line.startswith(f"error: the folder {empty} holds no image file (.jpg, .jpeg, .png,")
  assert line.endswith("predict takes image files, or folders of them")
