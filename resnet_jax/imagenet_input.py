"""ImageNet 2012 (ILSVRC2012) input pipeline: tfds `imagenet2012` (manual download) + tf.data.

Preparing the data (once, a few hours for the real 1.28M images):

    # put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ (tfds's default
    # manual directory; or pass --manual_dir), then
    python -m resnet_jax.imagenet_input prepare --data_dir=$TFDS_DATA_DIR

`data_dir` is `config.data_dir`, else $TFDS_DATA_DIR, else tfds's default (~/tensorflow_datasets). A single-process
run prepares the data itself if the tars are there; a multi-process run asks for the command above instead (every
process would otherwise write the same files).

Training (`train_dataset`), config.augmentation:
  'paper'      section 3.4 of He et al.: shorter side resized to a uniform random integer in config.scale_range
               ([256, 480]), random image_size (224) crop, random horizontal flip, AlexNet PCA colour noise with
               std config.pca_std (0.1), mean subtraction.
  'inception'  random-resized crop (area config.crop_area_range 8%-100%, aspect config.crop_aspect_range 3/4-4/3,
               as flax's and torchvision's references) + flip, resized to image_size; no colour noise.
Both decode only the crop window (tf.image.decode_and_crop_jpeg): the window is computed in source pixels from
the JPEG header, and only that window is decoded and resized. For 'paper' this equals "resize the whole image,
then crop" up to the rounding of the window to whole source pixels (under one source pixel).

Mean subtraction: the paper subtracts a per-pixel mean image. Computing a mean image over 1.28M images is
impractical here, and after random scales and crops the ImageNet mean image is flat to within a few grey levels,
so config.normalization='pixel_mean' subtracts the standard per-channel ImageNet RGB mean (123.68, 116.78,
103.94, the mean used by the original Caffe/VGG models) without dividing; 'channel' also divides by the
per-channel std (58.40, 57.12, 57.38), as torchvision and flax do.

Determinism and resumption: the training stream of a process is a sequence of epochs over its own disjoint shard
of the split (tfds.split_for_jax_process). Epoch e reads the shard's files in an order drawn from (seed, e),
interleaves them deterministically and shuffles with a buffer seeded by (seed, e). The random augmentation of an
example is seeded statelessly by (config.seed, global example position), where the global position of element i
of local batch `step` on process p is step * global_batch + p * local_batch + i. Resuming at start_step skips
whole epochs without reading them and skips the remaining start_step * local_batch % shard_size records of the
current epoch before parsing or decoding them, so a resumed stream equals the uninterrupted one, batch for batch.

Evaluation (`eval_dataset`), protocol:
  'single'      shorter side resized to config.eval_resize (256), centre image_size (224) crop. 1 view.
  '10crop'      the four corner crops and the centre crop of the eval_resize image, then their horizontal flips
                (10 views, in the order tl, tr, bl, br, centre, flipped tl, ... flipped centre).
  'multiscale'  fully convolutional on the whole image at shorter side s in config.multiscale_sizes (224, 256,
                384, 480, 640), plus its flip: 2 views per element, one element per (image, scale). To bound the
                number of distinct shapes, the longer side is centre-cropped to s * a, where a is the largest
                aspect ratio in config.multiscale_aspects (1, 4/3, 3/2) not above the image's (nothing is stretched;
                a 500x375 image keeps everything, a 16:9 one loses 16% of its width). Elements are grouped by shape
                into batches of max(1, local_batch_size * image_size**2 // (h * w)) images (about the pixels of a
                single-crop batch), the last batch of each shape padded.
Every validation image is read exactly once across processes; padded elements have mask 0 (real ones 1), and
'index' numbers the images of a process's shard 0..n-1 so that views of one image can be averaged (evaluate.py).
On the 346 real images of imagenet-sample, all 5 shapes per scale occur; the crop removes on average 5% of the
longer side (median 0.1%, 90th percentile 20%); multiscale_aspects=(1, 5/4, 4/3, 3/2) lowers that to 3.7% (90th
percentile 11%) for 35 compilations instead of 25.
Compilations of a forward pass with fixed batch size: 'single' 1, '10crop' 1, 'multiscale' at most
len(multiscale_sizes) * (2 * len(multiscale_aspects) - 1) = 25 with the defaults (a square shape, and a landscape
and a portrait shape per other aspect, per scale). For 'single' and '10crop' every process yields the same
number of batches (ceil of the largest shard over the batch size), so a sharded eval step sees equal batch counts.

Throughput (decode + augment, img/s per core) on the sample JPEGs of ../shared/data/imagenet-sample:
    python -m resnet_jax.imagenet_input benchmark [--images_dir=...] [--threads=1]
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax import config_lib, errors

DATASET_NAME = "imagenet2012"
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
AUGMENTATIONS = ("paper", "inception")
PROTOCOLS = config_lib.EVAL_PROTOCOLS
NORMALIZATIONS = ("pixel_mean", "channel", "torchvision")
VIEWS_PER_IMAGE = {"single": 1, "10crop": 10}  # multiscale: 2 per scale

# Data-set statistics (facts about ImageNet, not tunable hyper-parameters).
# Per-channel RGB mean of the ImageNet training set (Caffe/VGG), and std (torchvision), both on the 0..255 scale.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_STD_RGB = (58.393, 57.12, 57.375)
# torchvision's transforms.Normalize for its ImageNet weights, on the 0..1 scale (normalization='torchvision').
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
# Principal components of ImageNet RGB pixels (Krizhevsky et al. 2012; values as in fb.resnet.torch), for pixels
# on the 0..1 scale; PCA_EIGVEC[:, j] is the j-th eigenvector.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))

# Defaults of the config fields read with config.get (config_lib.imagenet may set them explicitly).
DEFAULTS = dict(
    augmentation="paper",
    scale_range=(256, 480),
    pca_std=0.1,
    crop_area_range=(0.08, 1.0),
    crop_aspect_range=(3 / 4, 4 / 3),
    eval_resize=256,
    multiscale_sizes=(224, 256, 384, 480, 640),
    multiscale_aspects=(1.0, 4 / 3, 3 / 2),
    shuffle_buffer_size=None,  # None: 16 * local_batch_size records (encoded JPEGs, about 110 kB each)
    manual_dir=None,  # None: <data_dir>/downloads/manual
)


def setting(config, name):
  """config.<name>, or its default from DEFAULTS where the config lacks the field."""
  return config.get(name, DEFAULTS[name])


class ImageNetNotFoundError(errors.NotFoundError):
  """The prepared imagenet2012 data set and the manual download it is built from are both missing."""


# ----------------------------------------------------------------------------------------------------------
# tfds builder helpers.


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """config.data_dir, else $TFDS_DATA_DIR, else tfds's default data dir."""
  return os.fspath(data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR)


def default_manual_dir(data_dir=None) -> str:
  return os.path.join(resolve_data_dir(data_dir), "downloads", "manual")


def check_manual_download(data_dir=None, manual_dir=None) -> str:
  """Returns the manual directory if both ILSVRC2012 tars are in it; raises ImageNetNotFoundError otherwise."""
  data_dir = resolve_data_dir(data_dir)
  manual_dir = os.fspath(manual_dir or default_manual_dir(data_dir))
  missing = [f for f in MANUAL_FILES if not tf.io.gfile.exists(os.path.join(manual_dir, f))]
  if missing:
    raise ImageNetNotFoundError(
        f"ImageNet 2012 is not prepared in {os.path.join(data_dir, DATASET_NAME)} and its manual download is "
        f"incomplete: expected {' and '.join(MANUAL_FILES)} in the manual directory {manual_dir} "
        f"(missing: {', '.join(missing)}). Download them from https://image-net.org/download-images "
        f"(registration required), put them there (or set config.manual_dir / --manual_dir), then prepare once "
        f"with `python -m resnet_jax.imagenet_input prepare --data_dir={data_dir}` (hours for the full data set). "
        f"The data dir comes from config.data_dir, else $TFDS_DATA_DIR, else {tfds.core.constants.DATA_DIR}."
    )
  return manual_dir


def get_builder(data_dir=None) -> tfds.core.DatasetBuilder:
  return tfds.builder(DATASET_NAME, data_dir=resolve_data_dir(data_dir))


def prepare(data_dir=None, manual_dir=None, *, num_shards: int | None = None) -> tfds.core.DatasetBuilder:
  """Builds tfds imagenet2012 from the manual tars (a no-op if already prepared)."""
  builder = get_builder(data_dir)
  if builder.is_prepared():
    return builder
  manual_dir = check_manual_download(data_dir, manual_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False, num_shards=num_shards)
  )
  return builder


def load_builder(config, *, process_count: int = 1) -> tfds.core.DatasetBuilder:
  """The prepared builder; prepares it from the manual tars in a single-process run, else explains how to."""
  builder = get_builder(config.get("data_dir"))
  if builder.is_prepared():
    if builder.info.file_format.value != "tfrecord":
      raise ValueError(
          f"{builder.data_dir} is stored as {builder.info.file_format.value}; this pipeline reads "
          "tfrecord files (tfds's default): prepare it again without --file_format"
      )
    return builder
  manual_dir = check_manual_download(config.get("data_dir"), setting(config, "manual_dir"))
  if process_count > 1:
    raise ImageNetNotFoundError(
        f"ImageNet 2012 is not prepared in {builder.data_dir}; prepare it once, before a multi-process run, with "
        f"`python -m resnet_jax.imagenet_input prepare --data_dir={resolve_data_dir(config.get('data_dir'))} "
        f"--manual_dir={manual_dir}`"
    )
  return prepare(config.get("data_dir"), manual_dir)


def _split_info(builder, split):
  try:
    return builder.info.splits[split]
  except KeyError as e:
    raise ValueError(
        f"split {split!r} is not in {builder.data_dir} (splits: {list(builder.info.splits)}); "
        "was its tar in the manual directory when the data set was prepared?"
    ) from e


def split_size(builder, split, *, process_index: int = 0, process_count: int = 1) -> int:
  """Number of examples of process `process_index`'s shard of `split`."""
  sub = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  return _split_info(builder, sub).num_examples


def _file_instructions(builder, split, process_index, process_count):
  sub = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  info = _split_info(builder, sub)
  fis = [fi for fi in info.file_instructions if fi.take != 0]
  filenames = [fi.filename for fi in fis]
  skips = [fi.skip for fi in fis]
  takes = [fi.take if fi.take is not None and fi.take >= 0 else fi.examples_in_shard - fi.skip for fi in fis]
  return filenames, skips, takes, info.num_examples


def _read(filenames, skips, takes, cycle_length: int) -> tf.data.Dataset:
  files = tf.data.Dataset.from_tensor_slices(
      (tf.convert_to_tensor(filenames, tf.string), tf.cast(skips, tf.int64), tf.cast(takes, tf.int64))
  )
  return files.interleave(
      lambda f, s, t: tf.data.TFRecordDataset(f, buffer_size=4 << 20).skip(s).take(t),
      cycle_length=cycle_length,
      block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
  )


def _parser(builder):
  features = builder.info.features

  def parse(record):
    ex = features.deserialize_example(record, decoders={"image": tfds.decode.SkipDecoding()})
    return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32), "file_name": ex["file_name"]}

  return parse


def _options(threads: int | None = None) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return options


# ----------------------------------------------------------------------------------------------------------
# Preprocessing on one image. `image` is either an encoded JPEG (tf.string scalar) or a decoded [H, W, C] tensor
# (uint8 or float), so that every function can be unit tested on synthetic pixels.


def image_hw(image) -> tf.Tensor:
  """[height, width] (int32) of an encoded JPEG (from its header) or of a decoded image."""
  if image.dtype == tf.string:
    return tf.image.extract_jpeg_shape(image, output_type=tf.int32)[:2]
  return tf.shape(image, out_type=tf.int32)[:2]


def decode(image) -> tf.Tensor:
  """Decoded 3-channel image (grayscale and CMYK JPEGs come out as RGB)."""
  if image.dtype == tf.string:
    return tf.io.decode_jpeg(image, channels=3, dct_method="INTEGER_ACCURATE")
  return _to_rgb(image)


def _to_rgb(image):
  if image.shape[-1] == 1:
    return tf.image.grayscale_to_rgb(image)
  return image


def decode_and_crop(image, window) -> tf.Tensor:
  """The [y, x, h, w] window of the image; for a JPEG only that window is decoded."""
  if image.dtype == tf.string:
    return tf.image.decode_and_crop_jpeg(image, window, channels=3, dct_method="INTEGER_ACCURATE")
  return _to_rgb(image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]])


def resize(image, hw) -> tf.Tensor:
  """Bilinear resize with antialiasing (like PIL's, which torchvision uses); float32 out."""
  return tf.image.resize(tf.cast(image, tf.float32), hw, method="bilinear", antialias=True)


def _seeds(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


def resized_hw(hw, shorter: tf.Tensor) -> tf.Tensor:
  """[h, w] after resizing so that the shorter side is `shorter` (longer side rounded to a whole pixel)."""
  hw = tf.cast(hw, tf.float32)
  return tf.cast(tf.round(hw * tf.cast(shorter, tf.float32) / tf.reduce_min(hw)), tf.int32)


def paper_crop_window(hw, seed, *, crop_size: int, scale_range: Sequence[int]):
  """Section 3.4's scale augmentation as a window in source pixels.

  Draws the shorter side s uniformly from the integers in scale_range, then a uniformly placed crop_size square of
  the image resized to shorter side s, and returns (window [y, x, h, w] in source pixels, s).
  """
  lo, hi = int(scale_range[0]), int(scale_range[1])
  if lo < crop_size or hi < lo:
    raise ValueError(f"scale_range {tuple(scale_range)} must satisfy crop size {crop_size} <= low <= high")
  s_scale, s_y, s_x = _seeds(seed, 3)
  hw = tf.cast(hw, tf.int32)
  s = tf.random.stateless_uniform([], s_scale, minval=lo, maxval=hi + 1, dtype=tf.int32)
  big = resized_hw(hw, s)
  oy = tf.random.stateless_uniform([], s_y, minval=0, maxval=big[0] - crop_size + 1, dtype=tf.int32)
  ox = tf.random.stateless_uniform([], s_x, minval=0, maxval=big[1] - crop_size + 1, dtype=tf.int32)
  ratio = tf.cast(tf.reduce_min(hw), tf.float32) / tf.cast(s, tf.float32)  # source pixels per resized pixel
  y0 = tf.minimum(tf.cast(tf.floor(tf.cast(oy, tf.float32) * ratio), tf.int32), hw[0] - 1)
  x0 = tf.minimum(tf.cast(tf.floor(tf.cast(ox, tf.float32) * ratio), tf.int32), hw[1] - 1)
  size = tf.maximum(tf.cast(tf.round(crop_size * ratio), tf.int32), 1)
  h = tf.minimum(size, hw[0] - y0)
  w = tf.minimum(size, hw[1] - x0)
  return tf.stack([y0, x0, h, w]), s


def inception_crop_window(hw, seed, *, area_range: Sequence[float], aspect_range: Sequence[float]):
  """Random-resized-crop window [y, x, h, w] (Szegedy et al. 2015) via tf.image's bounding-box sampler."""
  hw = tf.cast(hw, tf.int32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([hw, [3]], 0),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=0.1,
      aspect_ratio_range=list(aspect_range),
      area_range=list(area_range),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def random_flip(image, seed):
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def pca_lighting(image, seed, std: float):
  """AlexNet colour augmentation: adds eigvec @ (alpha * eigval), alpha ~ N(0, std), on the 0..255 scale."""
  if std <= 0:
    return image
  alpha = tf.random.stateless_normal([3], seed, stddev=std)
  rgb = tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL)) * 255.0
  return image + rgb


def normalize(image, mode: str):
  """Mean subtraction ('pixel_mean', see the module docstring), per-channel standardisation ('channel'), or
  torchvision's (pixels / 255 - mean) / std ('torchvision', what its pretrained weights expect)."""
  if mode not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {mode!r}: valid values are {list(NORMALIZATIONS)}")
  if mode == "torchvision":
    return (tf.cast(image, tf.float32) / 255.0 - tf.constant(TORCHVISION_MEAN_RGB)) / tf.constant(TORCHVISION_STD_RGB)
  image = tf.cast(image, tf.float32) - tf.constant(IMAGENET_MEAN_RGB)
  if mode == "channel":
    image = image / tf.constant(IMAGENET_STD_RGB)
  return image


def train_image(
    image,
    seed,
    *,
    augmentation: str = "paper",
    image_size: int = 224,
    scale_range=DEFAULTS["scale_range"],
    pca_std: float = DEFAULTS["pca_std"],
    area_range=DEFAULTS["crop_area_range"],
    aspect_range=DEFAULTS["crop_aspect_range"],
):
  """One augmented training image, float32 [image_size, image_size, 3] on the 0..255 scale (not normalised)."""
  s_crop, s_flip, s_colour = _seeds(seed, 3)
  hw = image_hw(image)
  if augmentation == "paper":
    window, _ = paper_crop_window(hw, s_crop, crop_size=image_size, scale_range=scale_range)
  elif augmentation == "inception":
    window = inception_crop_window(hw, s_crop, area_range=area_range, aspect_range=aspect_range)
  else:
    raise ValueError(f"unknown augmentation {augmentation!r}: valid values are {list(AUGMENTATIONS)}")
  out = resize(decode_and_crop(image, window), [image_size, image_size])
  out = random_flip(out, s_flip)
  if augmentation == "paper":
    out = pca_lighting(out, s_colour, pca_std)
  return tf.ensure_shape(out, [image_size, image_size, 3])


def resize_shorter_side(image, size: int):
  """Decodes if needed and resizes so that the shorter side is `size`; float32."""
  image = decode(image)
  return resize(image, resized_hw(tf.shape(image)[:2], size))


def center_crop(image, size: int):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  return image[(h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]


def single_view(image, *, resize_to: int = 256, crop: int = 224):
  """'single': shorter side to resize_to, centre crop. [crop, crop, 3]."""
  return tf.ensure_shape(center_crop(resize_shorter_side(image, resize_to), crop), [crop, crop, 3])


def ten_crop_views(image, *, resize_to: int = 256, crop: int = 224):
  """'10crop': corners tl, tr, bl, br, centre of the resize_to image, then their flips. [10, crop, crop, 3]."""
  big = resize_shorter_side(image, resize_to)
  h, w = tf.shape(big)[0], tf.shape(big)[1]
  crops = [big[y : y + crop, x : x + crop] for y, x in ((0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop))]
  crops.append(center_crop(big, crop))
  views = tf.stack(crops)
  views = tf.concat([views, tf.reverse(views, [2])], 0)
  return tf.ensure_shape(views, [10, crop, crop, 3])


def multiscale_bucket(hw, aspects: Sequence[float]):
  """(landscape 0 / portrait 1, index of the largest aspect bucket <= the image's long/short ratio).

  A ratio within 0.2% below a bucket counts as that bucket (e.g. 500x375 is 4/3 even after rounding).
  """
  hw = tf.cast(hw, tf.float32)
  ratio = tf.reduce_max(hw) / tf.reduce_min(hw)
  idx = tf.reduce_sum(tf.cast(tf.constant(aspects, tf.float32) <= ratio * 1.002, tf.int32)) - 1
  portrait = tf.cast(hw[0] > hw[1], tf.int32) * tf.cast(idx > 0, tf.int32)  # squares count as landscape
  return portrait, idx


def multiscale_shape(size: int, portrait: int, aspect: float) -> tuple[int, int]:
  long = int(round(size * aspect))
  return (long, size) if portrait else (size, long)


def multiscale_views(image, size: int, *, aspects: Sequence[float] = DEFAULTS["multiscale_aspects"]):
  """'multiscale' at one scale: shorter side `size`, longer side centre-cropped to its aspect bucket, + flip.

  Returns ([2, h, w, 3] float32, shape key) where key = 2 * bucket + portrait identifies the shape at this size.
  """
  image = decode(image)
  hw = tf.shape(image)[:2]
  portrait, idx = multiscale_bucket(hw, aspects)
  long = tf.cast(tf.round(size * tf.gather(tf.constant(aspects, tf.float32), idx)), tf.int32)
  th = tf.where(portrait == 1, long, size)
  tw = tf.where(portrait == 1, size, long)
  # Resize keeping the aspect ratio, but never below the crop (at most a pixel of stretch, from rounding).
  big_hw = tf.maximum(resized_hw(hw, size), tf.stack([th, tw]))
  big = resize(image, big_hw)
  y0, x0 = (big_hw[0] - th) // 2, (big_hw[1] - tw) // 2
  view = big[y0 : y0 + th, x0 : x0 + tw]
  return tf.stack([view, tf.reverse(view, [1])]), 2 * idx + portrait


# ----------------------------------------------------------------------------------------------------------
# Training stream.


def _validate_train(config, local_batch_size, start_step, process_index, process_count):
  if local_batch_size <= 0 or start_step < 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"bad train_dataset arguments: local_batch_size={local_batch_size}, start_step={start_step}, "
        f"process_index={process_index}, process_count={process_count}"
    )
  aug = setting(config, "augmentation")
  if aug not in AUGMENTATIONS:
    raise ValueError(f"unknown config.augmentation {aug!r}: valid values are {list(AUGMENTATIONS)}")
  normalize(tf.zeros([1, 1, 3]), config.get("normalization", "pixel_mean"))  # validates the mode


def train_records(
    config, *, start_step: int = 0, process_index: int = 0, process_count: int = 1, local_batch_size: int, builder=None
) -> tf.data.Dataset:
  """Unbatched, undecoded training examples of this process, from start_step on, with their global positions.

  Elements: dict(image=encoded JPEG, label int32, file_name, position int64 global example position).
  """
  builder = builder or load_builder(config, process_count=process_count)
  filenames, skips, takes, n_local = _file_instructions(
      builder, config.get("train_split", "train"), process_index, process_count
  )
  if n_local == 0:
    raise ValueError(f"process {process_index} of {process_count} has no training examples")
  buffer = setting(config, "shuffle_buffer_size") or 16 * local_batch_size
  buffer = int(min(buffer, n_local))
  cycle = min(16, len(filenames))
  base_seed = tf.constant([int(config.get("seed", 0)), process_index], tf.int64)
  names = tf.constant(filenames)

  def epoch_records(epoch):
    s_files, s_shuffle = _seeds(tf.random.experimental.stateless_fold_in(base_seed, epoch), 2)
    order = tf.argsort(tf.random.stateless_uniform([len(filenames)], s_files))
    records = _read(tf.gather(names, order), tf.gather(skips, order), tf.gather(takes, order), cycle)
    shuffle_seed = tf.random.stateless_uniform([], s_shuffle, minval=None, maxval=None, dtype=tf.int64)
    return records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

  local_start = start_step * local_batch_size
  first_epoch = local_start // n_local
  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  ds = ds.skip(local_start - first_epoch * n_local)  # records only: nothing parsed or decoded
  ds = ds.enumerate(start=local_start)
  global_batch = local_batch_size * process_count
  parse = _parser(builder)

  def with_position(local_pos, record):
    ex = parse(record)
    ex["position"] = (
        (local_pos // local_batch_size) * global_batch + process_index * local_batch_size + local_pos % local_batch_size
    )
    return ex

  return ds.map(with_position, num_parallel_calls=tf.data.AUTOTUNE)


def train_dataset(
    config,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    local_batch_size: int,
    builder=None,
    threads: int | None = None,
) -> tf.data.Dataset:
  """Infinite, batched, prefetched training batches dict(image float32 [b, S, S, 3] normalised, label int32 [b]).

  Batch k of the returned stream is global training step start_step + k (see the module docstring).
  """
  _validate_train(config, local_batch_size, start_step, process_index, process_count)
  ds = train_records(
      config,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
      local_batch_size=local_batch_size,
      builder=builder,
  )
  kwargs = dict(
      augmentation=setting(config, "augmentation"),
      image_size=int(config.get("image_size", 224)),
      scale_range=tuple(setting(config, "scale_range")),
      pca_std=float(setting(config, "pca_std")),
      area_range=tuple(setting(config, "crop_area_range")),
      aspect_range=tuple(setting(config, "crop_aspect_range")),
  )
  mode = config.get("normalization", "pixel_mean")
  seed = int(config.get("seed", 0))

  def preprocess(ex):
    image = train_image(ex["image"], tf.stack([tf.constant(seed, tf.int64), ex["position"]]), **kwargs)
    return {"image": normalize(image, mode), "label": ex["label"]}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))


# ----------------------------------------------------------------------------------------------------------
# Evaluation stream.


def multiscale_batch_size(local_batch_size: int, image_size: int, hw: tuple[int, int]) -> int:
  return max(1, local_batch_size * image_size * image_size // (hw[0] * hw[1]))


def multiscale_shapes(config, local_batch_size: int) -> list[tuple[int, int, int]]:
  """Every (h, w, batch size) the multiscale protocol can produce: at most one compilation each."""
  aspects = tuple(setting(config, "multiscale_aspects"))
  image_size = int(config.get("image_size", 224))
  out = []
  for size in setting(config, "multiscale_sizes"):
    for key in range(2 * len(aspects)):
      idx, portrait = divmod(key, 2)
      if idx == 0 and portrait:
        continue
      hw = multiscale_shape(size, portrait, aspects[idx])
      out.append((*hw, multiscale_batch_size(local_batch_size, image_size, hw)))
  return out


def _pad_batch(batch, size):
  """Pads the leading dimension of every field to `size` (mask 0, index -1 for the padding)."""
  n = tf.shape(batch["label"])[0]
  out = {}
  for k, v in batch.items():
    pad = [[0, size - n]] + [[0, 0]] * (len(v.shape) - 1)
    out[k] = tf.pad(v, pad, constant_values=-1 if k == "index" else 0)
  return out


def eval_dataset(
    config,
    *,
    protocol: str = "single",
    process_index: int = 0,
    process_count: int = 1,
    local_batch_size: int,
    builder=None,
    threads: int | None = None,
) -> tf.data.Dataset:
  """Batches of this process's shard of config.eval_split under `protocol` (see the module docstring).

  Fields: image float32 normalised ('single' [b, S, S, 3], '10crop' [b, 10, S, S, 3], 'multiscale'
  [b, 2, h, w, 3] with per-batch h, w), label int32 [b], index int32 [b] (image number in this process's shard,
  -1 for padding), mask int32 [b] (1 real, 0 padding).
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown eval protocol {protocol!r}: valid values are {list(PROTOCOLS)}")
  if local_batch_size <= 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"bad eval_dataset arguments: local_batch_size={local_batch_size}, "
        f"process_index={process_index}, process_count={process_count}"
    )
  builder = builder or load_builder(config, process_count=process_count)
  split = config.get("eval_split", "validation")
  filenames, skips, takes, n_local = _file_instructions(builder, split, process_index, process_count)
  image_size = int(config.get("image_size", 224))
  resize_to = int(setting(config, "eval_resize"))
  if resize_to < image_size:
    raise ValueError(f"eval_resize {resize_to} is smaller than image_size {image_size}")
  mode = config.get("normalization", "pixel_mean")
  normalize(tf.zeros([1, 1, 3]), mode)
  parse = _parser(builder)
  ds = _read(tf.constant(filenames, tf.string), skips, takes, cycle_length=1).enumerate()

  def parsed(index, record):
    ex = parse(record)
    return ex["image"], ex["label"], tf.cast(index, tf.int32)

  ds = ds.map(parsed, num_parallel_calls=tf.data.AUTOTUNE)
  if protocol in ("single", "10crop"):
    views = single_view if protocol == "single" else ten_crop_views

    def preprocess(image, label, index):
      return {
          "image": normalize(views(image, resize_to=resize_to, crop=image_size), mode),
          "label": label,
          "index": index,
          "mask": tf.constant(1, tf.int32),
      }

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    # Same number of batches on every process: ceil(largest shard / batch); the rest is padding.
    largest = max(
        split_size(builder, split, process_index=p, process_count=process_count) for p in range(process_count)
    )
    n_pad = -(-largest // local_batch_size) * local_batch_size - n_local
    if n_pad:
      pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
      pad["index"] = tf.constant(-1, tf.int32)
      ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(n_pad))
    ds = ds.batch(local_batch_size, drop_remainder=True)
  else:
    ds = _multiscale(ds, config, local_batch_size, mode)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))


def _multiscale(ds, config, local_batch_size, mode):
  sizes = [int(s) for s in setting(config, "multiscale_sizes")]
  aspects = tuple(float(a) for a in setting(config, "multiscale_aspects"))
  if not aspects or abs(aspects[0] - 1.0) > 1e-6 or list(aspects) != sorted(aspects):
    raise ValueError(f"multiscale_aspects {aspects} must be increasing and start at 1.0")
  image_size = int(config.get("image_size", 224))
  n_keys = 2 * len(aspects)
  # Batch size per (scale, shape key); keys that cannot occur (portrait squares) get 1.
  table = []
  for size in sizes:
    for key in range(n_keys):
      idx, portrait = divmod(key, 2)
      table.append(multiscale_batch_size(local_batch_size, image_size, multiscale_shape(size, portrait, aspects[idx])))
  batch_sizes = tf.constant(table, tf.int64)

  def all_scales(image, label, index):
    # Decode once, emit one element per scale (a tuple: the scales' shapes differ).
    image = decode(image)
    out = []
    for i, size in enumerate(sizes):
      views, key = multiscale_views(image, size, aspects=aspects)
      out.append(
          {
              "image": normalize(views, mode),
              "label": label,
              "index": index,
              "mask": tf.constant(1, tf.int32),
              "key": tf.cast(i * n_keys + key, tf.int64),
          }
      )
    return tuple(out)

  def split_scales(*elements):
    parts = [tf.data.Dataset.from_tensors(e) for e in elements]
    out = parts[0]
    for p in parts[1:]:
      out = out.concatenate(p)
    return out

  ds = ds.map(all_scales, num_parallel_calls=tf.data.AUTOTUNE).flat_map(split_scales)

  def batch_window(key, window):
    size = tf.gather(batch_sizes, key)
    window = window.map(lambda e: {k: v for k, v in e.items() if k != "key"})
    return window.batch(size).map(lambda b: _pad_batch(b, tf.cast(size, tf.int32)))

  return ds.group_by_window(
      key_func=lambda e: e["key"], reduce_func=batch_window, window_size_func=lambda key: tf.gather(batch_sizes, key)
  )


# ----------------------------------------------------------------------------------------------------------
# Throughput of decode + augment.


def benchmark_train_preprocessing(
    images_dir, *, augmentation: str, threads: int = 1, image_size: int = 224, seconds: float = 20.0, warmup: int = 200
) -> dict:
  """img/s of the training decode + augment + normalise on the JPEG files of `images_dir`, with `threads`
  tf.data threads (one image per thread at a time; intra-op parallelism 1): a per-core figure for threads=1."""
  paths = sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.upper().endswith((".JPEG", ".JPG")))
  if not paths:
    raise FileNotFoundError(f"no JPEG files in {images_dir}")
  blobs = [open(p, "rb").read() for p in paths]
  kwargs = dict(augmentation=augmentation, image_size=image_size)
  ds = tf.data.Dataset.from_tensor_slices(blobs).repeat().enumerate()
  ds = ds.map(
      lambda i, b: normalize(train_image(b, tf.stack([tf.constant(0, tf.int64), i]), **kwargs), "pixel_mean"),
      num_parallel_calls=threads,
      deterministic=True,
  )
  ds = ds.batch(32).prefetch(2).with_options(_options(threads))
  it = iter(ds)
  for _ in range(max(1, warmup // 32)):
    next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += 32
  dt = time.perf_counter() - t0
  mean_bytes = float(np.mean([len(b) for b in blobs]))
  return {
      "augmentation": augmentation,
      "threads": threads,
      "images": n,
      "seconds": round(dt, 2),
      "img_per_s": round(n / dt, 1),
      "img_per_s_per_thread": round(n / dt / threads, 1),
      "files": len(blobs),
      "mean_file_kB": round(mean_bytes / 1e3, 1),
  }


def _main(argv):
  import argparse

  parser = argparse.ArgumentParser(prog="python -m resnet_jax.imagenet_input")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare", help="build tfds imagenet2012 from the ILSVRC2012 tars")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--manual_dir", default=None)
  b = sub.add_parser("benchmark", help="decode + augment throughput on a folder of JPEGs")
  b.add_argument(
      "--images_dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "imagenet-sample")
  )
  b.add_argument("--threads", type=int, nargs="+", default=[1])
  b.add_argument("--seconds", type=float, default=20.0)
  b.add_argument("--augmentation", nargs="+", default=list(AUGMENTATIONS))
  args = parser.parse_args(argv)
  if args.command == "prepare":
    builder = prepare(args.data_dir, args.manual_dir)
    print(f"prepared {builder.data_dir}: " + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()))
    return
  import json

  for aug in args.augmentation:
    for threads in args.threads:
      print(
          json.dumps(
              benchmark_train_preprocessing(args.images_dir, augmentation=aug, threads=threads, seconds=args.seconds)
          ),
          flush=True,
      )


if __name__ == "__main__":
  _main(sys.argv[1:])
