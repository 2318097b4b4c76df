"""Every command answers bad input with one clear line on stderr and exit status 2, never a traceback.

Each case is a command line a user could type; the test checks the exit status, that the message names the field,
flag or path at fault, that it is printed once, and that no Python traceback appears. None of these reach
compilation or data loading, so each takes about a second.
"""

import pytest

from helpers import run_cli

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
    ("resnet_jax.convert", ["from-torchvision", "missing.safetensors", "--workdir=W"], "missing.safetensors: no such"),
    ("resnet_jax.convert", ["to-pytorch", "x", "--workdir=W"], "usage: python -m resnet_jax.convert"),
    ("resnet_jax.benchmark", ["--config=configs/nope.py"], "configs/nope.py: no such config file"),
    ("resnet_jax.benchmark", [CIFAR, "--config.learning_rate=-1"], "learning_rate=-1"),
    ("resnet_jax.benchmark", ["--jpeg_dir=MISSING_JPEGS"], "MISSING_JPEGS is not a directory"),
    ("resnet_jax.imagenet_prepare", ["--data_dir=MISSING_DATA"], "ILSVRC2012_img_train.tar"),
    ("resnet_jax.sweep", ["experiments/nope.py", "--workdir=W"], "experiments/nope.py"),
    ("resnet_jax.sweep", ["experiments/depth.py"], "--workdir is required"),
    ("resnet_jax.report", ["MISSING_SWEEP"], "MISSING_SWEEP"),
    ("resnet_jax.analyze", ["--workdir=MISSING_RUN"], "MISSING_RUN/config.json does not exist"),
]


@pytest.mark.parametrize("module,args,needle", CASES, ids=[f"{m.split('.')[1]}:{' '.join(a)}" for m, a, _ in CASES])
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
