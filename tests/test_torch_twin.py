"""experiments/torch_twin.py, the PyTorch twin of our CIFAR run: the same start, schedule and augmentation as ours,
and runs in pieces that resume exactly.

Tiny runs of ResNet-20 on real CIFAR-10 (batch 32, 8 steps, 100 training and 200 test images) on one thread, in
this process; one run of the real command, stopped by SIGTERM.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import REPO, without_host_measures

sys.path.insert(0, str(REPO / "experiments"))
import torch_twin  # noqa: E402
from resnet_jax import config_lib, pieces, rundir, train  # noqa: E402
from resnet_jax.data import cifar  # noqa: E402

# 100 training images are 3 1/8 batches of 32: batch 3 ends epoch 0 and begins epoch 1. 200 test images in batches
# of 64 end with a short batch of 8.
TINY = {
    "train_split": "train[:100]",
    "eval_split": "test[:200]",
    "batch_size": 32,
    "eval_batch_size": 64,
    "num_train_steps": 8,
    "log_every_steps": 4,
    "eval_every_steps": 4,
    "checkpoint_every_steps": 4,
}


def tiny_config(tfds_dir, **overrides):
  c = config_lib.cifar(20)
  c.data_dir = tfds_dir
  c.update({**TINY, **overrides})
  return c


def twin(config, workdir, **kwargs) -> int:
  """The twin's command in this process, on one thread (two threads on a busy 2-core machine ran ten times
  slower); its exit status."""
  try:
    torch_twin.run(config, str(workdir), threads=1, **kwargs)
  except SystemExit as e:
    return e.code
  return 0


def state(workdir, step):
  return torch.load(workdir / "checkpoints" / str(step) / torch_twin.STATE, weights_only=True)


def assert_states_equal(a, b):
  """Network (parameters and BN statistics), momentum buffers, step and logging window, bit for bit."""
  assert a["step"] == b["step"] and a["window"] == b["window"]
  assert a["model"].keys() == b["model"].keys()
  for k in a["model"]:
    assert torch.equal(a["model"][k], b["model"][k]), k
  moms = lambda s: [v["momentum_buffer"] for _, v in sorted(s["optimizer"]["state"].items())]
  bn_buffers = ("running_mean", "running_var", "num_batches_tracked")
  assert len(moms(a)) == sum(not k.endswith(bn_buffers) for k in a["model"])  # one per parameter
  assert all(torch.equal(x, y) for x, y in zip(moms(a), moms(b)))


def test_stopped_and_resumed_runs_equal_the_uninterrupted_one(tmp_path, tfds_dir, capsys):
  config = tiny_config(tfds_dir)
  ref = tmp_path / "ref"
  assert twin(config, ref) == 0
  ref_rows, ref_state = without_host_measures(json.loads(x) for x in (ref / "metrics.jsonl").open()), state(ref, 8)
  assert [r["step"] for r in ref_rows] == [4, 8] and all(r["eval_count"] == 200 for r in ref_rows)
  assert ref_rows[1]["learning_rate"] == pytest.approx(0.001)  # boundaries at 4 and 6: updates 6 and 7 at 0.001

  # A time limit that has passed by the end of the first step: stopped at step 1, in the middle of the first
  # logging window; resumed by the same command without the limit.
  wd = tmp_path / "pieces"
  assert twin(config, wd, stop_after="0.001s") == 75
  assert "preempted: --stop_after's time limit passed after step 1" in capsys.readouterr().err
  assert torch_twin.checkpoint_steps(rundir.RunDir(str(wd))) == [1]
  assert twin(config, wd) == 0
  assert_states_equal(state(wd, 8), ref_state)
  assert without_host_measures(json.loads(x) for x in (wd / "metrics.jsonl").open()) == ref_rows
  results = json.loads((wd / "results.json").read_text())
  assert results["resumed_from_step"] == 1 and results["framework"] == f"pytorch {torch.__version__}"
  records = pieces.read(wd)
  assert [(r["start_step"], r["end_step"], r["outcome"]) for r in records] == [(0, 1, "stop_after"), (1, 8, "finished")]
  assert all(r["machine"]["torch"] == torch.__version__ and r["machine"]["threads"] == 1 for r in records)

  # From a periodic checkpoint (4) after the newer one and the results are lost: the same end again, metrics.jsonl
  # cut back to step 4 and grown again.
  for f in (ref / "checkpoints" / "8" / torch_twin.STATE, ref / "results.json"):
    f.unlink()
  (ref / "checkpoints" / "8").rmdir()
  assert twin(config, ref) == 0
  assert json.loads((ref / "results.json").read_text())["resumed_from_step"] == 4
  assert_states_equal(state(ref, 8), ref_state)
  assert without_host_measures(json.loads(x) for x in (ref / "metrics.jsonl").open()) == ref_rows

  # A finished run is not trained again; a workdir of another config is refused in one line.
  assert twin(config, ref) == 0
  assert len(pieces.read(ref)) == 2 and json.loads((ref / "results.json").read_text())["resumed_from_step"] == 4
  capsys.readouterr()
  assert twin(tiny_config(tfds_dir, num_train_steps=9), ref) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "num_train_steps: workdir 8, this run 9" in err[0], err


def test_initial_network_computes_our_initial_function(tfds_dir):
  """Our flax ResNet-20 at init (train.init_host_state, config.seed) and the twin's initial network, on a real
  batch, in training mode (batch statistics) and inference mode (running statistics).

  Tolerance 1e-4 x max|logit|: both are float32, summing in other orders, so each of the 20 layers adds relative
  noise of order sqrt(fan-in) x 2^-24 (about 1.5e-6 for 576 products), which the batch norms re-scale but do not
  amplify: a few 1e-6 at the logits (here 1.6e-6 in training mode, 3e-7 in inference), 60 times below the bound.
  A wrong copy moves them by far more than 1e-2 of their scale: the first kernel mirrored left to right does.
  """
  config = tiny_config(tfds_dir)
  data = cifar.load_split(config, "eval")
  x = cifar.normalizer(config, cifar.load_split(config, "train"))(data.images[:32])
  model = train.make_model(config)
  host = train.init_host_state(model, train.make_optimizer(config), config)
  variables = {"params": host.params, "batch_stats": host.batch_stats}
  ours_train, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  ours_eval = model.apply(variables, x, train=False)
  net = torch_twin.initial_network(config)
  with torch.no_grad():  # inference first: a training-mode call moves the running statistics
    theirs_eval = net.eval()(torch_twin.to_torch(x)).numpy()
    theirs_train = net.train()(torch_twin.to_torch(x)).numpy()
  for ours, theirs in ((ours_train, theirs_train), (ours_eval, theirs_eval)):
    scale = np.abs(theirs).max()
    diff = np.abs(np.asarray(ours) - theirs).max()
    assert scale > 0.1 and diff <= 1e-4 * scale, (diff, scale)
  with torch.no_grad():
    net.stem_conv.weight.copy_(net.stem_conv.weight.flip(-1))
    mirrored = net.train()(torch_twin.to_torch(x)).numpy()
  assert np.abs(mirrored - theirs_train).max() > 1e-2 * np.abs(theirs_train).max()


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the paper's: 0.1, /10 at 50 % and 75 %
        {"warmup_steps": 10},  # ResNet-110's constant warm-up at 0.01
        {"warmup_steps": 10, "warmup_mode": "linear"},
        {"warmup_steps": 10, "lr_boundaries": (5, 60)},  # a boundary inside the warm-up: dropped, as ours
        {"warmup_steps": 10, "lr_schedule": "cosine"},
    ],
)
def test_learning_rate_is_our_optax_schedule_at_every_step(overrides):
  config = config_lib.cifar(20)
  config.update({"num_train_steps": 100, **overrides})
  steps = np.arange(config.num_train_steps)
  ours = np.asarray(train.make_schedule(config)(steps))
  theirs = np.array([torch_twin.learning_rate(config, int(s)) for s in steps])
  # Ours is float32: 1e-6 relative, and near the end of the cosine 1e-8 absolute (1 + cos(x) near x = pi loses the
  # leading digits of a float32 cosine, whose rounding is 2^-24 ~ 6e-8, times lr / 2).
  np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-8)
  assert len(np.unique(ours)) > 2


def test_batches_read_each_epoch_once_padded_after_normalisation_cropped_and_flipped():
  """Every example once per epoch, batches running on across epochs; each image the normalised one, padded with 4
  zeros, cropped at an offset in 0..8 and maybe flipped; both offsets' extremes and both flips drawn."""
  config = config_lib.cifar(20)
  config.batch_size = 32
  rng = np.random.default_rng(0)
  data = cifar.ArrayData(rng.integers(0, 256, (100, 32, 32, 3), np.uint8), np.arange(100, dtype=np.int32))
  norm = cifar.normalizer(config, data)
  batches = torch_twin.TrainBatches(config, data, norm)
  order = np.concatenate([batches.indices(s) for s in range(25)])  # 800 examples: 8 epochs
  assert all(sorted(order[e * 100 : (e + 1) * 100]) == list(range(100)) for e in range(8))
  assert not np.array_equal(order[:100], order[100:200])  # reshuffled
  padded = np.pad(norm(data.images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  seen = set()
  for step in (0, 3, 7):
    images, labels = batches(step)
    np.testing.assert_array_equal(labels.numpy(), batches.indices(step))  # labels[i] == i here
    for img, i in zip(images.permute(0, 2, 3, 1).numpy(), labels.numpy()):
      matches = [
          (dy, dx, flip)
          for dy in range(9)
          for dx in range(9)
          for flip in (False, True)
          if np.array_equal(img, (lambda c: c[:, ::-1] if flip else c)(padded[i, dy : dy + 32, dx : dx + 32]))
      ]
      assert matches, (step, i)
      seen.update(matches)
  assert {0, 8} <= {m[0] for m in seen} and {0, 8} <= {m[1] for m in seen} and {m[2] for m in seen} == {False, True}


def test_sigterm_saves_a_checkpoint_and_exits_75(tmp_path, tfds_dir):
  """The real command, stopped by SIGTERM once it has logged its first step: it finishes that step (or the one it
  is in), saves there and records the piece."""
  wd = tmp_path / "signal"
  overrides = {**TINY, "num_train_steps": 1000, "log_every_steps": 1, "data_dir": tfds_dir}
  cmd = [sys.executable, "experiments/torch_twin.py", "--config=configs/cifar20.py", f"--workdir={wd}", "--threads=1"]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = wd / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-3000:]
  records = pieces.read(wd)
  assert len(records) == 1 and records[0]["outcome"] == "signal" and records[0]["start_step"] == 0
  stopped = records[0]["end_step"]
  assert 1 <= stopped < 1000 and f"preempted: stopped by a signal after step {stopped};" in err
  assert sorted(os.listdir(wd / "checkpoints")) == [str(stopped)]  # the temporary folder renamed, nothing else
  assert state(wd, stopped)["step"] == stopped


def test_user_mistakes_end_in_one_line(tmp_path, tfds_dir, capsys):
  """Missing data, a config the twin does not implement and a workdir of our JAX run: exit status 2, one line."""
  (tmp_path / "ours").mkdir()
  (tmp_path / "ours" / "results.json").write_text(json.dumps({"steps": 8, "final_eval_error": 0.9}))
  for config, workdir, expected in (
      (tiny_config(str(tmp_path / "empty")), tmp_path / "a", "tfds data set 'cifar10' is not prepared in"),
      (tiny_config(tfds_dir, half_precision=True), tmp_path / "b", "half_precision=True: the twin trains in float32"),
      (tiny_config(tfds_dir), tmp_path / "ours", "holds a resnet_jax (JAX) run, by its results.json; give"),
  ):
    assert twin(config, workdir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
