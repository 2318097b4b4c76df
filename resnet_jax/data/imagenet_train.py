"""The ImageNet training stream: a process's shard of the training split, augmented and batched by tf.data.

Determinism and resumption: the training stream of a process is a sequence of epochs over its own disjoint shard
of the split (tfds.split_for_jax_process). Epoch e reads the shard's files in an order drawn from (seed, e),
interleaves them deterministically and shuffles with a buffer seeded by (seed, e). The random augmentation of an
example is seeded statelessly by (config.seed, global example position), where the global position of element i
of local batch `step` on process p is step * global_batch + p * local_batch + i. Resuming at start_step skips
whole epochs without reading them and skips the remaining start_step * local_batch % shard_size records of the
current epoch before parsing or decoding them, so a resumed stream equals the uninterrupted one, batch for batch.
"""

from __future__ import annotations

import tensorflow as tf

from resnet_jax.data import imagenet_images as images
from resnet_jax.data import imagenet_prepare as prepared


def _validate_train(config, local_batch_size, start_step, process_index, process_count):
  if local_batch_size <= 0 or start_step < 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"bad train_dataset arguments: local_batch_size={local_batch_size}, start_step={start_step}, "
        f"process_index={process_index}, process_count={process_count}"
    )
  aug = config.augmentation
  if aug not in images.AUGMENTATIONS:
    raise ValueError(f"unknown config.augmentation {aug!r}: valid values are {list(images.AUGMENTATIONS)}")
  images.normalization_constants(config.normalization)  # validates the mode


def train_records(
    config, *, start_step: int = 0, process_index: int = 0, process_count: int = 1, local_batch_size: int, builder=None
) -> tf.data.Dataset:
  """Unbatched, undecoded training examples of this process, from start_step on, with their global positions.

  Elements: dict(image=encoded JPEG, label int32, file_name, position int64 global example position).
  """
  builder = builder or prepared.load_builder(config, process_count=process_count)
  filenames, skips, takes, n_local = prepared.file_instructions(
      builder, config.train_split, process_index, process_count
  )
  if n_local == 0:
    raise ValueError(f"process {process_index} of {process_count} has no training examples")
  buffer = config.shuffle_buffer_size or 16 * local_batch_size
  buffer = int(min(buffer, n_local))
  cycle = min(16, len(filenames))
  base_seed = tf.constant([int(config.seed), process_index], tf.int64)
  names = tf.constant(filenames)

  def epoch_records(epoch):
    s_files, s_shuffle = images.seeds(tf.random.experimental.stateless_fold_in(base_seed, epoch), 2)
    order = tf.argsort(tf.random.stateless_uniform([len(filenames)], s_files))
    records = prepared.read_records(tf.gather(names, order), tf.gather(skips, order), tf.gather(takes, order), cycle)
    shuffle_seed = tf.random.stateless_uniform([], s_shuffle, minval=None, maxval=None, dtype=tf.int64)
    return records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

  local_start = start_step * local_batch_size
  first_epoch = local_start // n_local
  ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  ds = ds.skip(local_start - first_epoch * n_local)  # records only: nothing parsed or decoded
  ds = ds.enumerate(start=local_start)
  global_batch = local_batch_size * process_count
  parse = prepared.record_parser(builder)

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
  """Infinite, batched, prefetched training batches dict(image uint8 [b, S, S, 3], lighting float32 [b, 3], label
  int32 [b]); the devices normalise them (imagenet_images.normalize_batch).

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
      augmentation=config.augmentation,
      image_size=int(config.image_size),
      scale_range=tuple(config.scale_range),
      pca_std=float(config.pca_std),
      area_range=tuple(config.crop_area_range),
      aspect_range=tuple(config.crop_aspect_range),
  )
  seed = int(config.seed)

  def preprocess(ex):
    example = images.train_example(ex["image"], tf.stack([tf.constant(seed, tf.int64), ex["position"]]), **kwargs)
    return {**example, "label": ex["label"]}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(prepared.dataset_options(threads))
