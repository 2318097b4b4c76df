"""ImageNet preprocessing of one image, as TensorFlow ops on the host: decoding, the training augmentations, the
evaluation views; and the normalisation, on the devices. `image` is either an encoded JPEG (tf.string scalar) or a
decoded [H, W, C] tensor (uint8 or float), so that every function can be unit tested on synthetic pixels.

Training (`train_example`), config.augmentation:
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

Evaluation views (imagenet_eval.py's protocols): `single_view`, `ten_crop_views`,
`multiscale_views`. Keyword defaults are the ImageNet recipe's (config_lib.imagenet).

What leaves the host: the resampled pixels rounded to uint8 (a quarter of float32's bytes to copy to the devices,
and no float arithmetic per pixel on the host's CPUs), with a training image's PCA colour offset beside them as
three floats. The devices add the offset and normalise (`normalize`, traced into the compiled step:
inputs.device_preprocessing), the same arithmetic in the same order as on the host, so the network's input
differs from unrounded pixels' by the rounding alone (at most half a grey level).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from resnet_jax import config_lib

AUGMENTATIONS = ("paper", "inception")
NORMALIZATIONS = ("pixel_mean", "channel", "torchvision")
_RECIPE = config_lib.imagenet(50)  # the defaults of the keyword arguments below

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


def seeds(seed, n):
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
  s_scale, s_y, s_x = seeds(seed, 3)
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


def pca_offset(seed, std: float):
  """AlexNet colour augmentation: the RGB offset eigvec @ (alpha * eigval), alpha ~ N(0, std), on the 0..255 scale,
  that every pixel of the image gets (zeros for std <= 0)."""
  if std <= 0:
    return tf.zeros([3], tf.float32)
  alpha = tf.random.stateless_normal([3], seed, stddev=std)
  return tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL)) * 255.0


def to_uint8(image):
  """Resampled pixels rounded to the nearest grey level, as the devices receive them (a quarter of float32's bytes;
  torchvision's and big_vision's pipelines hand over uint8 too)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def normalization_constants(mode: str) -> tuple[float, np.ndarray, np.ndarray]:
  """(divisor, mean, std) of config.normalization, applied as (pixels / divisor - mean) / std: mean subtraction
  ('pixel_mean', see the module docstring), per-channel standardisation ('channel'), or torchvision's (pixels / 255
  - mean) / std ('torchvision', what its pretrained weights expect)."""
  if mode not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {mode!r}: valid values are {list(NORMALIZATIONS)}")
  if mode == "torchvision":
    return 255.0, np.float32(TORCHVISION_MEAN_RGB), np.float32(TORCHVISION_STD_RGB)
  std = IMAGENET_STD_RGB if mode == "channel" else (1.0, 1.0, 1.0)
  return 1.0, np.float32(IMAGENET_MEAN_RGB), np.float32(std)


def normalize(images, mode: str, lighting=None):
  """uint8 pixels [..., H, W, 3] -> float32 network input, on the devices (jax.numpy; traced into the compiled step).

  `lighting` [b, 3] (training batches): each image's PCA colour offset (pca_offset), added to its pixels first.
  """
  divisor, mean, std = normalization_constants(mode)
  x = jnp.asarray(images).astype(jnp.float32)
  if lighting is not None:
    x = x + jnp.reshape(lighting, lighting.shape[:1] + (1,) * (x.ndim - 2) + (3,))
  return (x / divisor - mean) / std


def normalize_batch(batch: dict, mode: str) -> dict:
  """A batch of the ImageNet input (uint8 images, and each training image's `lighting`) as the network takes it."""
  out = {k: v for k, v in batch.items() if k != "lighting"}
  out["image"] = normalize(batch["image"], mode, batch.get("lighting"))
  return out


def train_view(
    image,
    seed,
    *,
    augmentation: str = _RECIPE.augmentation,
    image_size: int = _RECIPE.image_size,
    scale_range=_RECIPE.scale_range,
    area_range=_RECIPE.crop_area_range,
    aspect_range=_RECIPE.crop_aspect_range,
):
  """One augmented training image before its colour offset: the crop resized to [image_size, image_size, 3] and
  randomly flipped, float32 on the 0..255 scale."""
  s_crop, s_flip, _ = seeds(seed, 3)
  hw = image_hw(image)
  if augmentation == "paper":
    window, _ = paper_crop_window(hw, s_crop, crop_size=image_size, scale_range=scale_range)
  elif augmentation == "inception":
    window = inception_crop_window(hw, s_crop, area_range=area_range, aspect_range=aspect_range)
  else:
    raise ValueError(f"unknown augmentation {augmentation!r}: valid values are {list(AUGMENTATIONS)}")
  out = resize(decode_and_crop(image, window), [image_size, image_size])
  return tf.ensure_shape(random_flip(out, s_flip), [image_size, image_size, 3])


def train_example(image, seed, *, augmentation: str = _RECIPE.augmentation, pca_std: float = _RECIPE.pca_std, **view):
  """dict(image uint8 [S, S, 3], lighting float32 [3]): train_view's pixels, and the colour offset ('paper') that
  the devices add before normalising (normalize)."""
  lighting = pca_offset(seeds(seed, 3)[2], pca_std if augmentation == "paper" else 0.0)
  return {"image": to_uint8(train_view(image, seed, augmentation=augmentation, **view)), "lighting": lighting}


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


def multiscale_views(image, size: int, *, aspects: Sequence[float] = _RECIPE.multiscale_aspects):
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
