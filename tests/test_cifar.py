"""CIFAR (resnet_jax/data/cifar.py, cifar_device.py, and inputs.Data over them): splits from tfds and from the .npz,
input_backend='device' with the same augmentation and normalisation as tf.data, exact resume, TF-free import path."""

import os
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (
    REPO,
    SHARED_DATA,
    SMALL,
    assert_trees_equal,
    load_state,
    read_metrics,
    run_cli,
    without_host_measures,
    train_in_process,
)
from resnet_jax import config_lib, errors, inputs, parallel
from resnet_jax.data import cifar, cifar_device

MAIN = "resnet_jax.main"
NPZ = str(SHARED_DATA / "cifar10_jpeg_bytes.npz")


def _coord_images(n=16, size=32):
  """Images whose pixels encode (example, row, column), so any crop or flip can be checked exactly."""
  r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  return np.stack([np.stack([r, c, np.full_like(r, i)], -1) for i in range(n)]).astype(np.float32) + 1.0


def test_crop_and_flip_identical_to_tfdata():
  import tensorflow as tf

  x = _coord_images()
  rng = np.random.default_rng(0)
  offsets = rng.integers(0, 9, (16, 2)).astype(np.int32)
  flips = rng.random(16) < 0.5
  ours = np.asarray(cifar_device.pad_crop_flip(jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(flips)))
  theirs = cifar.pad_crop_flip(tf.constant(x), tf.constant(offsets), tf.constant(flips)).numpy()
  np.testing.assert_array_equal(ours, theirs)
  # And it is the paper's crop: pixel (i, j) of the output is pixel (i + oy - 4, j + ox - 4) of the input.
  i = 3
  oy, ox = offsets[i]
  expect = np.pad(x[i], ((4, 4), (4, 4), (0, 0)))[oy : oy + 32, ox : ox + 32]
  np.testing.assert_array_equal(ours[i], expect[:, ::-1] if flips[i] else expect)


def test_augmentation_distributions_match():
  """Offsets uniform over 0..8 and flip rate 1/2 for both backends (18,000 draws each; 5-sigma bounds)."""
  n = 9000
  dev_off, dev_flip = cifar_device.augmentation_params(jax.random.key(0), n)
  tf_off, tf_flip = cifar.augmentation_params(0, 7, n)
  for off, flip in ((np.asarray(dev_off), np.asarray(dev_flip)), (tf_off.numpy(), tf_flip.numpy())):
    counts = np.bincount(off.ravel(), minlength=9)
    assert len(counts) == 9 and counts.min() > 0
    expected = off.size / 9
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected), counts
    assert abs(flip.mean() - 0.5) < 5 * np.sqrt(0.25 / n)


def test_mean_subtraction_identical():
  config = config_lib.cifar(20)
  config.dataset = "fake"
  data = cifar.load_split(config, "train")
  norm = cifar.normalizer(config, data)
  ours = (jnp.asarray(data.images[:64]).astype(jnp.float32) / 255.0 - norm.mean) / norm.std
  np.testing.assert_allclose(np.asarray(ours), norm(data.images[:64]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalization", ["pixel_mean", "channel"])
def test_tfdata_batches_are_normalised_bit_for_bit_as_numpy_does(normalization):
  """tf.data keeps the split as uint8 and normalises each batch in TensorFlow: the same bits as numpy for every
  pixel value at every position (inside a tf.data map, as the pipeline runs it), and a training batch equals the
  numpy-normalised images cropped and flipped."""
  import tensorflow as tf

  config = config_lib.cifar(20)
  config.dataset, config.fake_train_size, config.batch_size, config.normalization = "fake", 96, 32, normalization
  data = cifar.load_split(config, "train")
  norm = cifar.normalizer(config, data)
  every_value = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 32, 32, 3))
  in_tfdata = next(iter(tf.data.Dataset.from_tensors(every_value).map(norm.tensorflow))).numpy()
  np.testing.assert_array_equal(in_tfdata.view(np.int32), norm(every_value).view(np.int32))

  stream = cifar.train_dataset(config, data, norm, start_step=5, process_index=0, local_batch=32)
  batch = next(stream.as_numpy_iterator())
  idx = cifar.example_indices(config.seed, 5, 32, 96).numpy()
  offsets, flips = cifar.augmentation_params(config.seed, 5, 32)
  expected = cifar.pad_crop_flip(tf.constant(norm(data.images[idx])), offsets, flips).numpy()
  np.testing.assert_array_equal(batch["image"].view(np.int32), expected.view(np.int32))
  np.testing.assert_array_equal(batch["label"], data.labels[idx])


@pytest.mark.parametrize("normalization", ["pixel_mean", "channel"])
def test_statistics_are_the_float64_ones_rounded_to_float32(normalization):
  """The statistics come from exact integer sums, a chunk of images at a time (the last one partial); the
  reference computes them over a float64 copy of the split. Both round a float64 value to float32, and the two
  float64 values differ by a few float64 roundings, so the results may differ by one float32 ulp at most."""
  config = config_lib.cifar(20)
  config.normalization = normalization
  images = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
  norm = cifar.normalizer(config, cifar.ArrayData(images, np.zeros(300, np.int32)), chunk=64)
  x = images.astype(np.float64) / 255.0
  if normalization == "pixel_mean":
    mean, std = x.mean(axis=0), np.ones(())
  else:
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
  assert norm.mean.dtype == norm.std.dtype == np.float32 and norm.mean.shape == mean.shape
  np.testing.assert_array_max_ulp(norm.mean, mean.astype(np.float32), maxulp=1)
  np.testing.assert_array_max_ulp(norm.std, std.astype(np.float32), maxulp=1)


def test_device_batches_cover_each_epoch_once():
  config = config_lib.cifar(20)
  config.dataset, config.fake_train_size, config.batch_size = "fake", 96, 32
  data = cifar.load_split(config, "train")
  # Make labels the example index so that the batch says which examples it drew.
  data = cifar.ArrayData(data.images, np.arange(96, dtype=np.int32))
  dd = cifar_device.DeviceData(config, data, cifar.normalizer(config, data), parallel.make_mesh())
  seen = np.concatenate([np.asarray(dd.batch(s)["label"]) for s in range(3)])
  assert sorted(seen) == list(range(96))
  again = np.concatenate([np.asarray(dd.batch(s)["label"]) for s in range(3, 6)])
  assert sorted(again) == list(range(96)) and not np.array_equal(seen, again)  # reshuffled every epoch
  np.testing.assert_array_equal(np.asarray(dd.batch(4)["image"]), np.asarray(dd.batch(4)["image"]))


def test_device_batches_spanning_epochs_are_a_function_of_the_step():
  """Batch 40 over 96 examples: batches straddle epochs; each epoch is still every example once, in any order
  of requests (the per-epoch orders are cached, so a resumed or out-of-order request must not change them)."""
  config = config_lib.cifar(20)
  config.dataset, config.fake_train_size, config.batch_size = "fake", 96, 40
  data = cifar.load_split(config, "train")
  data = cifar.ArrayData(data.images, np.arange(96, dtype=np.int32))
  make = lambda: cifar_device.DeviceData(config, data, cifar.normalizer(config, data), parallel.make_mesh())
  dd = make()
  labels = np.concatenate([np.asarray(dd.batch(s)["label"]) for s in range(12)])  # 480 = 5 epochs
  for e in range(5):
    assert sorted(labels[96 * e : 96 * (e + 1)]) == list(range(96)), e
  fresh = make()
  for s in (7, 2, 11, 0):
    np.testing.assert_array_equal(np.asarray(fresh.batch(s)["label"]), labels[40 * s : 40 * (s + 1)])


def test_tfds_order_is_the_order_of_the_prepared_files(tfds_dir):
  """cifar.tfds_order (no TensorFlow) lists each split's official indices in the order of the ids in
  tfds's prepared cifar10 files."""
  import tensorflow_datasets as tfds

  builder = tfds.builder("cifar10", data_dir=tfds_dir)
  for split in ("train", "test"):
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    ids = np.concatenate(list(tfds.as_numpy(ds.map(lambda x: x["id"]).batch(10_000))))
    official = [int(i.decode().split("_")[1]) for i in ids]
    np.testing.assert_array_equal(cifar.tfds_order(split, len(official)), official)


@pytest.mark.parametrize("split", ["test[:1000]", "train[45000:]", "test[-5%:]"])
def test_a_split_string_selects_the_same_examples_on_every_input(tfds_dir, split):
  """The split from tfds and from the .npz (cifar.load_split, what inputs.Data loads for either backend): the same
  examples in the same order, pixel for pixel. The .npz's test split is sorted by class; its first 1,000 rows
  were once test[:1000], all airplanes."""
  loaded = []
  for data_file in (None, NPZ):
    config = config_lib.cifar(20)
    config.data_dir, config.data_file, config.eval_split = tfds_dir, data_file, split
    loaded.append(cifar.load_split(config, "eval"))
  from_tfds, from_npz = loaded
  assert len(np.unique(from_tfds.labels)) == 10
  np.testing.assert_array_equal(from_npz.labels, from_tfds.labels)
  np.testing.assert_array_equal(from_npz.images, from_tfds.images)


def test_npz_split_errors_name_the_limits():
  config = config_lib.cifar(20)
  config.input_backend, config.data_file = "device", NPZ
  for split in ("test[:20000]", "test[5:5]", "validation"):
    config.eval_split = split
    with pytest.raises(errors.SplitError, match=f"split {re.escape(repr(split))}"):
      cifar.load_split(config, "eval")


def test_one_data_dir_for_every_data_set(tmp_path, monkeypatch):
  """config.data_dir (or the preparation command's flag), else $TFDS_DATA_DIR, else tfds's default: CIFAR and
  ImageNet ask the same function; local paths come out absolute, URLs as given."""
  import tensorflow_datasets as tfds
  from resnet_jax.data import resolve_data_dir

  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("TFDS_DATA_DIR", "from_env")
  assert resolve_data_dir("given") == str(tmp_path / "given")
  assert resolve_data_dir("gs://bucket/tfds") == "gs://bucket/tfds"
  assert resolve_data_dir(None) == str(tmp_path / "from_env")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert resolve_data_dir(None) == os.path.abspath(os.path.expanduser(tfds.core.constants.DATA_DIR))


@pytest.mark.parametrize("backend", ["tfdata", "device"])
def test_data_splits_and_checks_the_batch_and_offers_the_draw(backend):
  """inputs.Data: this process's share of the global batch for host batches, the draw for compiled calls only on
  the devices, and one check of the batch against the training split that names the fix."""
  config = config_lib.cifar(20)
  config.dataset, config.fake_train_size, config.batch_size, config.input_backend = "fake", 96, 32, backend
  data = inputs.Data(config, parallel.make_mesh())
  assert data.process_batch == 32 and data.train_size == 96
  assert data.train_batch(0)["label"].shape == (32,)
  assert (data.draw is None) == (backend == "tfdata")
  config.batch_size = 128
  with pytest.raises(config_lib.ConfigError, match=r"batch_size=128 exceeds the 96 training examples .*smaller"):
    inputs.Data(config, parallel.make_mesh())


def test_notebooks_fallback_run_evaluates_on_every_class(tfds_dir, tmp_path):
  """The command of notebooks/tour.ipynb's own run with TOUR_DATA_FILE (CIFAR-10 from the .npz, test[:1000]): its
  log line counts tfds's classes of test[:1000], and the run evaluates those 1,000 examples."""
  config = config_lib.cifar(20)
  config.data_dir, config.eval_split = tfds_dir, "test[:1000]"
  counts = np.bincount(cifar.load_split(config, "eval").labels)
  proc = run_cli(
      MAIN,
      "--config=cifar20",
      f"--workdir={tmp_path / 'run'}",
      "--config.input_backend=device",
      f"--config.data_file={NPZ}",
      "--config.eval_split=test[:1000]",
      "--config.train_split=train[:256]",
      *[a for a in SMALL if not a.startswith(("--config.dataset", "--config.fake", "--config.input_backend"))],
      "--config.num_train_steps=2",
      "--config.eval_every_steps=2",
  )
  assert (
      f"eval 'test[:1000]' = 1000 examples of 10 classes ({counts.min()} to {counts.max()} per class)" in proc.stderr
  ), proc.stderr[-3000:]
  assert read_metrics(tmp_path / "run")[-1]["eval_count"] == 1000


def _args(wd, steps, steps_per_call=1):
  # 64 fake examples: 2 steps an epoch, so 12 steps fit them (the loss must fall) and cross epoch boundaries (a
  # call of 4 steps spans three epochs).
  return [
      "--config=configs/cifar20.py",
      f"--workdir={wd}",
      *SMALL,
      "--config.fake_train_size=64",
      "--config.input_backend=device",
      f"--config.steps_per_call={steps_per_call}",
      f"--config.num_train_steps={steps}",
      "--config.log_every_steps=4",
      "--config.eval_every_steps=8",
      "--config.checkpoint_every_steps=4",
      "--config.keep_checkpoints=5",
      "--config.learning_rate=0.05",
      "--config.lr_decay_factor=1.0",
  ]


def test_steps_per_call_is_bit_identical_and_resumes_exactly(tmp_path):
  """Two steps per compiled call, then four after a resume from step 6 (not a multiple of 4: one call of two steps,
  then one of four): the same metrics and checkpoints as one step per call, bit for bit.

  The three runs train in this process (helpers.train_in_process): what is checked is the training loop, and
  test_trains_without_tensorflow runs the command itself."""
  drop = without_host_measures
  train_in_process(*_args(tmp_path / "ref", 12))
  proc = train_in_process(*_args(tmp_path / "split", 6, steps_per_call=2))
  assert "2 training step(s) per compiled call" in proc.stderr
  train_in_process(*_args(tmp_path / "split", 12, steps_per_call=4))
  ref, split = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "split")
  assert [r["step"] for r in ref] == [4, 8, 12] and [r["step"] for r in split] == [4, 6, 8, 12]
  losses = [r["train_loss"] for r in ref]
  assert losses[-1] < losses[0]
  # Step 4 (two calls of two) and step 12 (the window of steps 9-12, one call of four, and the evaluation) are
  # logged alike; step 8's window holds only steps 7-8 in the resumed run.
  assert drop(split)[0] == drop(ref)[0] and drop(split)[-1] == drop(ref)[-1]
  for step in (4, 12):
    assert_trees_equal(load_state(tmp_path / "split", step), load_state(tmp_path / "ref", step))


def test_trains_without_tensorflow(tmp_path):
  """The CLI with TensorFlow and tfds made unimportable: device backend, console + metrics.jsonl writers."""
  block = tmp_path / "block"
  block.mkdir()
  # As if TensorFlow and tfds were not installed: the path finder does not find them.
  (block / "sitecustomize.py").write_text(textwrap.dedent("""
      import importlib.machinery, sys
      class _NoTF(importlib.machinery.PathFinder):
          @classmethod
          def find_spec(cls, name, path=None, target=None):
              if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                  return None
              return super().find_spec(name, path, target)
      sys.meta_path[:] = [_NoTF if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
  """))
  env = {"PYTHONPATH": f"{block}{os.pathsep}{REPO}"}
  wd = tmp_path / "w"
  run_cli(MAIN, *_args(wd, 4), env=env)
  rows = read_metrics(wd)
  assert rows[-1]["step"] == 4 and rows[-1]["eval_count"] == 100
  assert any(p.name.startswith("events.out.tfevents") for p in wd.iterdir())  # tensorboard's TF-free writer
  # The tfdata backend needs TensorFlow: it says so instead of failing obscurely.
  proc = run_cli(MAIN, *_args(tmp_path / "w2", 2), "--config.input_backend=tfdata", env=env, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "needs TensorFlow" in proc.stderr and "--config.input_backend=device" in proc.stderr


def test_automatic_steps_per_call_per_platform():
  """steps_per_call=0: the largest divisor of the intervals and the run's length up to 4 on CPUs and, with batches
  drawn on the devices, 100 on GPUs and TPUs; 1 there with host batches, and 1 with pmap; an explicit value as
  given."""
  from resnet_jax import compiled_steps, config_lib

  config = config_lib.cifar(20)
  config.input_backend = "device"
  config.num_train_steps, config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = (
      6400,
      100,
      2000,
      2000,
  )
  assert compiled_steps.resolve_steps_per_call(config, "cpu") == 4
  assert (
      compiled_steps.resolve_steps_per_call(config, "gpu")
      == compiled_steps.resolve_steps_per_call(config, "tpu")
      == 100
  )
  config.log_every_steps = 6
  assert compiled_steps.resolve_steps_per_call(config, "cpu") == 2
  assert compiled_steps.resolve_steps_per_call(config, "gpu") == 2
  config.log_every_steps = 100
  config.parallelism = "pmap"
  assert compiled_steps.resolve_steps_per_call(config, "cpu") == 1
  config.parallelism, config.input_backend = "jit", "tfdata"
  assert [compiled_steps.resolve_steps_per_call(config, p) for p in ("gpu", "tpu", "cpu")] == [1, 1, 4]
  config.input_backend, config.steps_per_call = "device", 3
  assert compiled_steps.resolve_steps_per_call(config, "cpu") == 3
