"""ImageNet 2012 (ILSVRC2012) as tfds `imagenet2012` prepares it from the manual download: preparing it once,
the prepared builder and its splits, and reading a process's shard of a split's records.

Preparing the data (once, a few hours for the real 1.28M images):

    # put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ (tfds's default
    # manual directory; or pass --manual_dir), then
    python -m resnet_jax.data.imagenet_prepare --data_dir=$TFDS_DATA_DIR

`data_dir` is `config.data_dir`, else $TFDS_DATA_DIR, else tfds's default (~/tensorflow_datasets): data's
resolve_data_dir, as for CIFAR. A single-process run prepares the data itself if the tars are there; a multi-process
run asks for the command above instead (every process would otherwise write the same files). The training stream is
imagenet_train.py, the evaluation protocols imagenet_eval.py.
"""

from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags

from resnet_jax import cli, errors
from resnet_jax.data import resolve_data_dir

DATASET_NAME = "imagenet2012"
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def default_manual_dir(data_dir=None) -> str:
  return os.path.join(resolve_data_dir(data_dir), "downloads", "manual")


def check_manual_download(data_dir=None, manual_dir=None) -> str:
  """Returns the manual directory if both ILSVRC2012 tars are in it; raises ImageNetNotFoundError otherwise."""
  data_dir = resolve_data_dir(data_dir)
  manual_dir = os.fspath(manual_dir or default_manual_dir(data_dir))
  missing = [f for f in MANUAL_FILES if not tf.io.gfile.exists(os.path.join(manual_dir, f))]
  if missing:
    raise errors.ImageNetNotFoundError(
        f"ImageNet 2012 is not prepared in {os.path.join(data_dir, DATASET_NAME)} and its manual download is "
        f"incomplete: expected {' and '.join(MANUAL_FILES)} in the manual directory {manual_dir} "
        f"(missing: {', '.join(missing)}). Download them from https://image-net.org/download-images "
        f"(registration required), put them there (or set config.manual_dir / --manual_dir), then prepare once "
        f"with `python -m resnet_jax.data.imagenet_prepare --data_dir={data_dir}` (hours for the full data set). "
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
  builder = get_builder(config.data_dir)
  if builder.is_prepared():
    if builder.info.file_format.value != "tfrecord":
      raise ValueError(
          f"{builder.data_dir} is stored as {builder.info.file_format.value}; this pipeline reads "
          "tfrecord files (tfds's default): prepare it again without --file_format"
      )
    return builder
  manual_dir = check_manual_download(config.data_dir, config.manual_dir)
  if process_count > 1:
    raise errors.ImageNetNotFoundError(
        f"ImageNet 2012 is not prepared in {builder.data_dir}; prepare it once, before a multi-process run, with "
        f"`python -m resnet_jax.data.imagenet_prepare --data_dir={resolve_data_dir(config.data_dir)} "
        f"--manual_dir={manual_dir}`"
    )
  return prepare(config.data_dir, manual_dir)


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


def file_instructions(builder, split, process_index, process_count):
  sub = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  info = _split_info(builder, sub)
  fis = [fi for fi in info.file_instructions if fi.take != 0]
  filenames = [fi.filename for fi in fis]
  skips = [fi.skip for fi in fis]
  takes = [fi.take if fi.take is not None and fi.take >= 0 else fi.examples_in_shard - fi.skip for fi in fis]
  return filenames, skips, takes, info.num_examples


def read_records(filenames, skips, takes, cycle_length: int) -> tf.data.Dataset:
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


def record_parser(builder):
  features = builder.info.features

  def parse(record):
    ex = features.deserialize_example(record, decoders={"image": tfds.decode.SkipDecoding()})
    return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32), "file_name": ex["file_name"]}

  return parse


def dataset_options(threads: int | None = None) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  if threads:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return options


# ----------------------------------------------------------------------------------------------------------
# Command line.

_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["data_dir"] = flags.DEFINE_string(
      "data_dir", None, "tfds data dir to prepare imagenet2012 in (default: $TFDS_DATA_DIR, else tfds's)."
  )
  _FLAGS["manual_dir"] = flags.DEFINE_string(
      "manual_dir", None, "Folder holding the ILSVRC2012 tars (default: DATA_DIR/downloads/manual)."
  )


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}; usage: python -m resnet_jax.data.imagenet_prepare --data_dir=DIR")
  cli.start(restart=False)
  with cli.user_errors():
    builder = prepare(_FLAGS["data_dir"].value, _FLAGS["manual_dir"].value)
  print(f"prepared {builder.data_dir}: " + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
