"""The ImageNet evaluation protocols: a process's shard of the evaluation split as batches of views.

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
"""

from __future__ import annotations

import tensorflow as tf

from resnet_jax import config_lib
from resnet_jax.data import imagenet_images as images
from resnet_jax.data import imagenet_prepare as prepared

PROTOCOLS = config_lib.EVAL_PROTOCOLS
VIEWS_PER_IMAGE = {"single": 1, "10crop": 10}  # multiscale: 2 per scale


def multiscale_batch_size(local_batch_size: int, image_size: int, hw: tuple[int, int]) -> int:
  return max(1, local_batch_size * image_size * image_size // (hw[0] * hw[1]))


def multiscale_shapes(config, local_batch_size: int) -> list[tuple[int, int, int]]:
  """Every (h, w, batch size) the multiscale protocol can produce: at most one compilation each."""
  aspects = tuple(config.multiscale_aspects)
  image_size = int(config.image_size)
  out = []
  for size in config.multiscale_sizes:
    for key in range(2 * len(aspects)):
      idx, portrait = divmod(key, 2)
      if idx == 0 and portrait:
        continue
      hw = images.multiscale_shape(size, portrait, aspects[idx])
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

  Fields: image uint8, normalised by the devices (imagenet_images.normalize; 'single' [b, S, S, 3], '10crop'
  [b, 10, S, S, 3], 'multiscale' [b, 2, h, w, 3] with per-batch h, w), label int32 [b], index int32 [b] (image
  number in this process's shard, -1 for padding), mask int32 [b] (1 real, 0 padding).
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown eval protocol {protocol!r}: valid values are {list(PROTOCOLS)}")
  if local_batch_size <= 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"bad eval_dataset arguments: local_batch_size={local_batch_size}, "
        f"process_index={process_index}, process_count={process_count}"
    )
  builder = builder or prepared.load_builder(config, process_count=process_count)
  split = config.eval_split
  filenames, skips, takes, n_local = prepared.file_instructions(builder, split, process_index, process_count)
  image_size = int(config.image_size)
  resize_to = int(config.eval_resize)
  if resize_to < image_size:
    raise ValueError(f"eval_resize {resize_to} is smaller than image_size {image_size}")
  images.normalization_constants(config.normalization)  # validates the mode
  parse = prepared.record_parser(builder)
  ds = prepared.read_records(tf.constant(filenames, tf.string), skips, takes, cycle_length=1).enumerate()

  def parsed(index, record):
    ex = parse(record)
    return ex["image"], ex["label"], tf.cast(index, tf.int32)

  ds = ds.map(parsed, num_parallel_calls=tf.data.AUTOTUNE)
  if protocol in ("single", "10crop"):
    views = images.single_view if protocol == "single" else images.ten_crop_views

    def preprocess(image, label, index):
      return {
          "image": images.to_uint8(views(image, resize_to=resize_to, crop=image_size)),
          "label": label,
          "index": index,
          "mask": tf.constant(1, tf.int32),
      }

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    # Same number of batches on every process: ceil(largest shard / batch); the rest is padding.
    largest = max(
        prepared.split_size(builder, split, process_index=p, process_count=process_count) for p in range(process_count)
    )
    n_pad = -(-largest // local_batch_size) * local_batch_size - n_local
    if n_pad:
      pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
      pad["index"] = tf.constant(-1, tf.int32)
      ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(n_pad))
    ds = ds.batch(local_batch_size, drop_remainder=True)
  else:
    ds = _multiscale(ds, config, local_batch_size)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(prepared.dataset_options(threads))


def _multiscale(ds, config, local_batch_size):
  sizes = [int(s) for s in config.multiscale_sizes]
  aspects = tuple(float(a) for a in config.multiscale_aspects)
  if not aspects or abs(aspects[0] - 1.0) > 1e-6 or list(aspects) != sorted(aspects):
    raise ValueError(f"multiscale_aspects {aspects} must be increasing and start at 1.0")
  image_size = int(config.image_size)
  n_keys = 2 * len(aspects)
  # Batch size per (scale, shape key); keys that cannot occur (portrait squares) get 1.
  table = []
  for size in sizes:
    for key in range(n_keys):
      idx, portrait = divmod(key, 2)
      table.append(
          multiscale_batch_size(local_batch_size, image_size, images.multiscale_shape(size, portrait, aspects[idx]))
      )
  batch_sizes = tf.constant(table, tf.int64)

  def all_scales(image, label, index):
    # Decode once, emit one element per scale (a tuple: the scales' shapes differ).
    image = images.decode(image)
    out = []
    for i, size in enumerate(sizes):
      views, key = images.multiscale_views(image, size, aspects=aspects)
      out.append(
          {
              "image": images.to_uint8(views),
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
