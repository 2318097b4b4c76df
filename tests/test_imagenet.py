"""ImageNet 2012 input pipeline and evaluation protocols, on a fake imagenet2012 built from real JPEGs.

The session fixture writes ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar in the manual-download format from
../shared/data/imagenet-sample (tests/imagenet_fixture.py) and prepares them with tfds (about 5 s).
"""

import collections
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from helpers import train_in_process
from resnet_jax import config_lib, errors, evaluate, models
from resnet_jax.data import imagenet_eval as eval_input
from resnet_jax.data import imagenet_images as images
from resnet_jax.data import imagenet_prepare as prepared
from resnet_jax.data import imagenet_train as train_input

REPO = Path(__file__).parents[1]


def make_config(fake, **overrides):
  c = config_lib.imagenet(18)
  c.data_dir = fake["data_dir"]
  for k, v in overrides.items():
    c[k] = v
  return c


def small_config(fake, **overrides):
  """Small images, so that eval and model tests stay fast on a CPU."""
  kw = dict(image_size=32, eval_resize=40, scale_range=(36, 64), multiscale_sizes=(32, 48))
  kw.update(overrides)
  return make_config(fake, **kw)


def coordinate_image(h, w):
  """float32 [h, w, 3]: R = row, G = column, B = 0."""
  y, x = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
  return tf.constant(np.stack([y, x, np.zeros_like(y)], -1))


def seed(i):
  return tf.constant([0, i], tf.int64)


# ----------------------------------------------------------------------------------------------------------
# Data set and errors.


def test_missing_download_names_files_and_directory(tmp_path, monkeypatch):
  with pytest.raises(errors.ImageNetNotFoundError) as e:
    prepared.check_manual_download(tmp_path)
  msg = str(e.value)
  assert isinstance(e.value, FileNotFoundError)
  assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
  assert str(tmp_path / "downloads" / "manual") in msg
  # Only one tar present: still an error, naming the missing one.
  (tmp_path / "downloads" / "manual").mkdir(parents=True)
  (tmp_path / "downloads" / "manual" / "ILSVRC2012_img_train.tar").write_bytes(b"")
  with pytest.raises(errors.ImageNetNotFoundError, match=r"missing: ILSVRC2012_img_val.tar\)"):
    prepared.check_manual_download(tmp_path)
  # config.data_dir=None falls back to $TFDS_DATA_DIR, and the pipelines stop with the same error.
  env_dir = tmp_path / "from_env"
  monkeypatch.setenv("TFDS_DATA_DIR", str(env_dir))
  config = config_lib.imagenet(18)
  config.data_dir = None
  with pytest.raises(errors.ImageNetNotFoundError, match=str(env_dir / "downloads" / "manual")):
    train_input.train_dataset(config, local_batch_size=2)
  with pytest.raises(errors.ImageNetNotFoundError):
    eval_input.eval_dataset(config, protocol="single", local_batch_size=2)
  with pytest.raises(errors.ImageNetNotFoundError):
    evaluate.evaluate_protocol(models.imagenet_resnet18(), {}, config, "single")


def test_fake_imagenet_is_prepared_with_official_val_labels(fake):
  builder = fake["builder"]
  assert builder.info.splits["train"].num_examples == fake["num_train"] == 30
  assert builder.info.splits["validation"].num_examples == fake["num_val"] == 20
  assert len(builder.info.splits["train"].filenames) == 3
  names = builder.info.features["label"].names
  got = {
      ex["file_name"].decode(): names[ex["label"]]
      for ex in builder.as_dataset(split="validation", decoders={"image": tfds_skip()}).as_numpy_iterator()
  }
  assert got == dict(zip(fake["val_names"], fake["val_labels"]))
  assert fake["val_matching_content"] >= 1


def tfds_skip():
  import tensorflow_datasets as tfds

  return tfds.decode.SkipDecoding()


def test_grayscale_and_cmyk_jpegs_decode_to_rgb(fake):
  config = make_config(fake)
  records = train_input.train_records(config, local_batch_size=1).take(fake["num_train"])
  modes = set()
  for ex in records.as_numpy_iterator():
    mode = fake["train_files"][ex["file_name"].decode()]["mode"]
    modes.add(mode)
    assert images.decode(tf.constant(ex["image"])).shape[-1] == 3
    assert images.train_view(tf.constant(ex["image"]), seed(0)).shape == (224, 224, 3)
  assert {"L", "CMYK", "RGB"} <= modes


# ----------------------------------------------------------------------------------------------------------
# Training stream.


@pytest.mark.parametrize("augmentation", ["paper", "inception"])
def test_train_batches_shapes_dtypes_ranges(fake, augmentation):
  config = make_config(fake, augmentation=augmentation)
  label_ids = {fake["builder"].info.features["label"].str2int(w) for w in fake["train_wnids"]}
  batches = list(train_input.train_dataset(config, local_batch_size=5).take(3).as_numpy_iterator())
  lo, hi = -max(images.IMAGENET_MEAN_RGB), 255 - min(images.IMAGENET_MEAN_RGB)
  pca_margin = 40.0 if augmentation == "paper" else 1e-3  # 0.1-std colour noise: a few grey levels
  for b in batches:
    assert set(b) == {"image", "lighting", "label"}
    assert b["image"].shape == (5, 224, 224, 3) and b["image"].dtype == np.uint8  # normalised by the devices
    assert b["lighting"].shape == (5, 3) and b["lighting"].dtype == np.float32
    assert (np.abs(b["lighting"]).max() > 0) == (augmentation == "paper")  # PCA colour noise: 'paper' only
    assert b["label"].shape == (5,) and b["label"].dtype == np.int32
    assert set(b["label"].tolist()) <= label_ids
    image = np.asarray(images.normalize_batch(b, "pixel_mean")["image"])
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert lo - pca_margin <= image.min() and image.max() <= hi + pca_margin
    assert image.std() > 10  # real image content, not a constant
    # per-channel mean subtraction: channel means of natural images land near zero
    assert np.abs(image.mean()) < 60
  channel = make_config(fake, augmentation=augmentation, normalization="channel")
  b = next(train_input.train_dataset(channel, local_batch_size=5).as_numpy_iterator())
  image = np.asarray(images.normalize_batch(b, "channel")["image"])
  assert -2.2 - pca_margin / 57 <= image.min() and image.max() <= 2.7 + pca_margin / 57


@pytest.mark.parametrize("mode", ["pixel_mean", "channel", "torchvision"])
def test_the_devices_normalise_as_the_host_did_bit_for_bit(fake, mode):
  """The host sends uint8 pixels and each image's colour offset; normalising on the devices (jitted, as inside the
  train step) gives what the host's TensorFlow arithmetic gave for the same pixels, and those pixels are the
  resampled ones up to rounding (half a grey level).

  Bit for bit where no division is involved ('pixel_mean', the paper's). XLA compiles a division as a product with
  the divisor's reciprocal (on the CPU, measured), which differs from a rounded quotient by at most 1.5 units in
  the last place; a subtraction after a division ('torchvision') keeps that error absolute, so each of the two
  divisions adds at most 2 epsilons of the largest term before the last division, over the smallest std."""
  config = make_config(fake, augmentation="paper", normalization=mode)
  records = list(train_input.train_records(config, local_batch_size=4).take(4).as_numpy_iterator())
  batch = next(train_input.train_dataset(config, local_batch_size=4).as_numpy_iterator())
  on_devices = np.asarray(jax.jit(functools.partial(images.normalize_batch, mode=mode))(batch)["image"])
  for i, ex in enumerate(records):
    example_seed = tf.constant([config.seed, ex["position"]], tf.int64)
    view = images.train_view(tf.constant(ex["image"]), example_seed).numpy()
    pixels = batch["image"][i]
    assert np.abs(pixels.astype(np.float32) - view).max() <= 0.5 + 1e-4  # rounded, nothing else
    # What the host computed before it sent uint8: TensorFlow's float32 ops, in the same order.
    x = tf.cast(pixels, tf.float32) + batch["lighting"][i]
    if mode == "torchvision":
      host = (x / 255.0 - tf.constant(images.TORCHVISION_MEAN_RGB)) / tf.constant(images.TORCHVISION_STD_RGB)
    else:
      host = x - tf.constant(images.IMAGENET_MEAN_RGB)
      if mode == "channel":
        host = host / tf.constant(images.IMAGENET_STD_RGB)
    if mode == "pixel_mean":
      np.testing.assert_array_equal(on_devices[i], host.numpy())
    else:
      divisor, mean, std = images.normalization_constants(mode)
      largest = (255.0 + np.abs(batch["lighting"][i]).max()) / divisor + mean.max()
      bound = 2 * (2 * np.finfo(np.float32).eps * largest / std.min())
      np.testing.assert_allclose(on_devices[i], host.numpy(), rtol=0, atol=bound)


def test_train_stream_is_deterministic_and_resumes_exactly(fake):
  config = small_config(fake)
  stream = lambda c, start: train_input.train_dataset(c, start_step=start, local_batch_size=4)
  first = list(stream(config, 0).take(18).as_numpy_iterator())
  again = list(stream(config, 0).take(2).as_numpy_iterator())
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  # 30 examples, batches of 4: step 7 spans the end of epoch 0; step 16 lies in epoch 2 (epochs 0-1 not read).
  for start in (7, 16):
    resumed = list(stream(config, start).take(2).as_numpy_iterator())
    for a, b in zip(first[start : start + 2], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  other = next(stream(small_config(fake, seed=1), 0).as_numpy_iterator())
  assert not np.array_equal(other["image"], first[0]["image"])


def test_train_epochs_and_process_shards(fake):
  config = make_config(fake)
  n = fake["num_train"]
  names = lambda ds: [ex["file_name"].decode() for ex in ds.as_numpy_iterator()]
  stream = names(train_input.train_records(config, local_batch_size=4).take(2 * n))
  assert sorted(stream[:n]) == sorted(stream[n:]) == sorted(fake["train_files"])
  assert stream[:n] != stream[n:]  # reshuffled every epoch
  # Two processes, local batch 3: disjoint halves, together the whole split; positions interleave by batch.
  shards = []
  for p in range(2):
    ds = train_input.train_records(config, process_index=p, process_count=2, local_batch_size=3).take(n // 2)
    exs = list(ds.as_numpy_iterator())
    shards.append({ex["file_name"].decode() for ex in exs})
    assert len(shards[-1]) == n // 2
    assert [ex["position"] for ex in exs[:6]] == [6 * (i // 3) + 3 * p + i % 3 for i in range(6)]
  assert not shards[0] & shards[1] and shards[0] | shards[1] == set(fake["train_files"])


def test_bad_augmentation_is_rejected(fake):
  with pytest.raises(ValueError, match="augmentation"):
    train_input.train_dataset(make_config(fake, augmentation="mixup"), local_batch_size=2)


# ----------------------------------------------------------------------------------------------------------
# Preprocessing on synthetic images.


def test_paper_scale_augmentation_shorter_side_range():
  hw, crop = (300, 400), 224
  scales = []
  for i in range(300):
    window, s = images.paper_crop_window(tf.constant(hw), seed(i), crop_size=crop, scale_range=(256, 480))
    y, x, h, w = window.numpy().tolist()
    assert 0 <= y and y + h <= hw[0] and 0 <= x and x + w <= hw[1] and h == w
    s = int(s)
    assert 256 <= s <= 480
    assert abs(crop * min(hw) / h - s) <= 0.01 * s + 1  # the window is a 224 crop of the image at scale s
    scales.append(s)
  assert min(scales) < 270 and max(scales) > 465 and len(set(scales)) > 100
  # Through train_view on pixels that encode their coordinates: the 224 output rows span the window's height.
  image = coordinate_image(*hw)
  implied = []
  for i in range(40):
    out = images.train_view(image, seed(i), augmentation="paper").numpy()
    rows = out[:, 0, 0]
    assert np.all(np.diff(rows) > 0)  # rows stay in order (no vertical flip)
    implied.append(223 * min(hw) / (rows[-1] - rows[0]))  # shorter side of the resized image
  assert 250 <= min(implied) and max(implied) <= 490


def test_inception_crop_area_and_aspect():
  hw = (300, 400)
  for i in range(200):
    y, x, h, w = (
        images.inception_crop_window(tf.constant(hw), seed(i), area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3))
        .numpy()
        .tolist()
    )
    assert 0 <= y and y + h <= hw[0] and 0 <= x and x + w <= hw[1]
    assert 0.08 - 0.01 <= h * w / (hw[0] * hw[1]) <= 1.0
    if (h, w) != hw:  # the whole image is the sampler's fallback
      assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_resize_shorter_side_keeps_aspect():
  for hw, size in [((300, 400), 256), ((400, 300), 480), ((97, 2400), 224)]:
    out = images.resize_shorter_side(coordinate_image(*hw), size)
    assert min(out.shape[:2]) == size
    assert abs(max(out.shape[:2]) / size - max(hw) / min(hw)) < 1.5 / size


def test_single_crop_position():
  view = images.single_view(coordinate_image(256, 320), resize_to=256, crop=224).numpy()
  y, x = np.meshgrid(np.arange(224), np.arange(224), indexing="ij")
  np.testing.assert_array_equal(view[..., 0], y + 16)
  np.testing.assert_array_equal(view[..., 1], x + 48)
  # From a 512x640 image: resized by 1/2, so resized pixel i holds source coordinate 2i + 0.5.
  view = images.single_view(coordinate_image(512, 640), resize_to=256, crop=224).numpy()
  np.testing.assert_allclose(view[..., 0], 2 * (y + 16) + 0.5, atol=1e-3)
  np.testing.assert_allclose(view[..., 1], 2 * (x + 48) + 0.5, atol=1e-3)


def test_ten_crop_positions():
  views = images.ten_crop_views(coordinate_image(256, 320), resize_to=256, crop=224).numpy()
  assert views.shape == (10, 224, 224, 3)
  y, x = np.meshgrid(np.arange(224), np.arange(224), indexing="ij")
  offsets = [(0, 0), (0, 96), (32, 0), (32, 96), (16, 48)]  # tl, tr, bl, br, centre
  for k, (oy, ox) in enumerate(offsets):
    np.testing.assert_array_equal(views[k, ..., 0], y + oy)
    np.testing.assert_array_equal(views[k, ..., 1], x + ox)
    np.testing.assert_array_equal(views[5 + k], views[k, :, ::-1])  # the flip of the same crop


def test_multiscale_shapes_and_flips():
  cases = {
      (300, 400): (0, 4 / 3),
      (400, 300): (1, 4 / 3),
      (300, 330): (0, 1.0),
      (300, 480): (0, 1.5),
      (300, 600): (0, 1.5),
      (420, 300): (1, 4 / 3),
  }
  for hw, (portrait, aspect) in cases.items():
    image = coordinate_image(*hw)
    for size in (224, 256, 384, 480, 640):
      views, key = images.multiscale_views(image, size)
      views = views.numpy()
      expect = images.multiscale_shape(size, portrait, aspect)
      assert views.shape == (2, *expect, 3), (hw, size)
      np.testing.assert_array_equal(views[1], views[0][:, ::-1])
      # Centre crop of the longer side: the crop is symmetric about the source centre.
      centre = views[0][..., 0].mean(), views[0][..., 1].mean()
      np.testing.assert_allclose(centre, ((hw[0] - 1) / 2, (hw[1] - 1) / 2), atol=1.0)
  config = config_lib.imagenet(18)
  shapes = eval_input.multiscale_shapes(config, 250)
  assert len(shapes) == 25 and len({s[:2] for s in shapes}) == 25
  assert (224, 224, 250) in shapes and (640, 960, 250 * 224 * 224 // (640 * 960)) in shapes


# ----------------------------------------------------------------------------------------------------------
# Evaluation streams: every image exactly once, with awkward batch sizes and process counts.


@pytest.mark.parametrize("protocol", ["single", "10crop", "multiscale"])
@pytest.mark.parametrize("batch,processes", [(7, 1), (3, 2), (3, 3)])
def test_eval_counts_every_image_once(fake, protocol, batch, processes):
  config = small_config(fake)
  n_scales = len(config.multiscale_sizes)
  allowed = {s[:2] for s in eval_input.multiscale_shapes(config, batch)}
  labels, total, n_batches, shapes = [], 0, set(), set()
  for p in range(processes):
    n_local = prepared.split_size(fake["builder"], "validation", process_index=p, process_count=processes)
    seen = collections.Counter()
    batches = list(
        eval_input.eval_dataset(
            config, protocol=protocol, process_index=p, process_count=processes, local_batch_size=batch
        ).as_numpy_iterator()
    )
    n_batches.add(len(batches))
    for b in batches:
      real = b["mask"] == 1
      assert set(np.unique(b["mask"])) <= {0, 1} and (b["index"][~real] == -1).all()
      assert b["image"].shape[0] == b["label"].shape[0] == b["index"].shape[0]
      shapes.add(b["image"].shape[1:])
      seen.update(b["index"][real].tolist())
      if protocol != "multiscale":
        assert b["image"].shape[0] == batch
        labels += b["label"][real].tolist()
      else:
        assert b["image"].shape[2:4] in allowed and b["image"].shape[1] == 2
        assert (
            b["image"].shape[0]
            == [s[2] for s in eval_input.multiscale_shapes(config, batch) if s[:2] == b["image"].shape[2:4]][0]
        )
    per_image = n_scales if protocol == "multiscale" else 1
    assert seen == {i: per_image for i in range(n_local)}
    total += n_local
  assert total == fake["num_val"]
  if protocol == "single":
    assert shapes == {(32, 32, 3)} and len(n_batches) == 1
    names = fake["builder"].info.features["label"].names
    assert sorted(names[i] for i in labels) == sorted(fake["val_labels"])
  elif protocol == "10crop":
    assert shapes == {(10, 32, 32, 3)} and len(n_batches) == 1
  else:
    assert 1 < len(shapes) <= len(allowed)


# ----------------------------------------------------------------------------------------------------------
# evaluate_protocol.


@pytest.fixture(scope="module")
def resnet18_small(fake):
  config = small_config(fake, eval_batch_size=7, multiscale_aspects=(1.0,))  # one shape per scale: fast
  model = models.create_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return config, model, variables


@pytest.mark.parametrize("protocol", ["single", "10crop", "multiscale"])
def test_evaluate_protocol_counts_every_image(fake, resnet18_small, protocol):
  config, model, variables = resnet18_small
  r = evaluate.evaluate_protocol(model, variables, config, protocol)
  assert r["count"] == fake["num_val"]
  assert 0.0 <= r["top5_error"] <= r["top1_error"] <= 1.0
  assert r["views_per_image"] == {"single": 1, "10crop": 10, "multiscale": 4}[protocol]
  assert r["input_shapes"] == {"single": 1, "10crop": 1, "multiscale": 2}[protocol]


class ConstantScores(nn.Module):
  """Ignores the image: the same logits for every view, so the errors follow from the labels alone."""

  scores: tuple

  @nn.compact
  def __call__(self, x, train=False):
    del train
    b = self.param("b", lambda _: jnp.asarray(self.scores, jnp.float32))
    return jnp.broadcast_to(b, (x.shape[0], b.shape[0])) + 0.0 * x.mean()


@pytest.mark.parametrize("protocol", ["single", "10crop"])
def test_evaluate_protocol_errors_are_right(fake, protocol):
  names = fake["builder"].info.features["label"].names
  labels = [names.index(w) for w in fake["val_labels"]]
  ranked = [c for c, _ in collections.Counter(labels).most_common()]
  top5 = ranked[:5]
  scores = np.zeros(1000, np.float32)
  scores[top5] = [10, 9, 8, 7, 6]
  model = ConstantScores(tuple(scores.tolist()))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  r = evaluate.evaluate_protocol(model, variables, small_config(fake, eval_batch_size=6), protocol, eval_fn_cache={})
  n = len(labels)
  assert r["count"] == n
  assert r["top1_error"] == pytest.approx(1 - labels.count(top5[0]) / n)
  assert r["top5_error"] == pytest.approx(1 - sum(labels.count(c) for c in top5) / n)
  assert r["top5_error"] < r["top1_error"]


# ----------------------------------------------------------------------------------------------------------
# Slow: the paper's sizes.


@pytest.mark.slow
def test_evaluate_all_protocols_at_paper_sizes(fake):
  config = make_config(fake, eval_batch_size=8)
  model = models.create_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  cache = {}
  for protocol in eval_input.PROTOCOLS:
    r = evaluate.evaluate_protocol(model, variables, config, protocol, eval_fn_cache=cache)
    assert r["count"] == fake["num_val"]
    assert r["input_shapes"] <= len(eval_input.multiscale_shapes(config, 8))


def test_train_cli_then_every_protocol(fake, tmp_path):
  """A few ResNet-18 training steps, then each evaluation protocol through the real evaluate command.

  The training runs in this process as the command runs it (helpers.train_in_process; other tests run the
  training command itself), which saves starting Python, JAX and TensorFlow and loading its compiled steps."""
  common = [
      "--config=configs/imagenet_resnet18.py",
      f"--workdir={tmp_path}",
      f"--config.data_dir={fake['data_dir']}",
      "--config.image_size=32",
      "--config.eval_resize=40",
      "--config.scale_range=(36, 64)",
      "--config.multiscale_sizes=(32, 48)",
      "--config.multiscale_aspects=(1.0,)",  # two scales, two compiled shapes: the averaging is what is checked
      "--config.eval_batch_size=8",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = train_in_process(
      *common,
      "--config.batch_size=4",
      "--config.num_train_steps=3",
      "--config.eval_every_steps=3",
      "--config.checkpoint_every_steps=3",
      "--config.log_every_steps=1",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 3/3" in out.stderr
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["steps"] == 3 and results["eval_count"] == fake["num_val"]
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "resnet_jax.evaluate",
          *common,
          "--json",
          *(f"--protocol={p}" for p in eval_input.PROTOCOLS),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=1200,
      env=env,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
  assert [r["protocol"] for r in rows] == list(eval_input.PROTOCOLS)
  assert all(r["count"] == fake["num_val"] for r in rows)
  # The single-crop protocol is the evaluation the training loop ran on the same checkpoint; the two compile the
  # network separately (another float32 summation order), so one image whose top two logits are within rounding
  # may flip.
  assert abs(rows[0]["top1_error"] - results["final_eval_error"]) <= 1 / fake["num_val"] + 1e-9
