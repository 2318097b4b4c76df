"""CIFAR-10/100 (and fake data) in host memory, and the tf.data training stream that is a pure function of the step.

A split is read once into numpy arrays: from tfds (decoded once, then cached), or from a plain .npz given by
`config.data_file` so that TensorFlow is not needed (see `load_split`). Both input backends train on these arrays:
input_backend='tfdata' through `train_dataset` below, input_backend='device' from the devices (cifar_device.py).

Training batches are a deterministic function of (seed, step): the example order of epoch e is a stateless
permutation seeded by (seed, e), and the crop offsets and flips of global batch s are stateless random numbers
seeded by (seed, s). So a run resumed at step s reads exactly the examples an uninterrupted run would have read
(nothing repeated, nothing skipped), and P processes reading their slices of each global batch see together
exactly what one process sees alone.

Augmentation (section 4.2): per-pixel mean subtraction, 4-pixel zero padding (after normalisation, so the pad
value is the mean image, as in the Torch reference code), a random 32x32 crop and a random horizontal flip.

Evaluation batches are padded to a whole number of global batches and carry a `mask` (1 real, 0 padding), so
every example is counted exactly once whatever the batch size, device count or process count.

The .npz holds, for each of `train` and `test`, either `x_train` (uint8 [N, 32, 32, 3]) and `y_train` (the
labels), or `train_jpeg` (the JPEG files' bytes, concatenated), `train_offsets` (N + 1: image i is
`train_jpeg[off[i]:off[i + 1]]`) and `y_train`; row i is the i-th example in the order of tfds's keys (the
official CIFAR order for the official files, as `keras.datasets.cifar10.load_data()` returns them). A split string
selects the same examples, in the same order, from it as from tfds (`test[:1000]`, `train[45000:]`,
`train[:90%]`): `tfds_order` sorts the rows as tfds's prepared files hold them before the slice is taken. The
file's own order would give the first rows of whatever order it was written in: `test[:1000]` of a class-sorted
test split is one class.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
from typing import Iterator

import numpy as np
from PIL import Image

from resnet_jax import cpu, errors, storage
from resnet_jax.data import resolve_data_dir

# TensorFlow and tfds are imported inside the functions that use them: a run from a .npz (config.data_file) with
# input_backend='device' needs neither installed.

CIFAR_DATASETS = ("cifar10", "cifar100")
PAD = 4
_SPLIT = re.compile(r"^(train|test)(?:\[(-?\d*%?):(-?\d*%?)\])?$")


def require_tensorflow(what: str):
  """Imports TensorFlow (and tfds) or says which backend to use instead."""
  try:
    import tensorflow as tf  # noqa: F401
    import tensorflow_datasets as tfds  # noqa: F401
  except ImportError as e:
    raise errors.MissingDependencyError(
        f"{what} needs TensorFlow and tensorflow-datasets ({e}). Install them (pip install tensorflow-cpu "
        f"tensorflow-datasets), or train without them: --config.input_backend=device with "
        f"--config.data_file=FILE.npz (the data set's arrays; see resnet_jax/data/cifar.py), or "
        f"--config.dataset=fake"
    ) from None


def _local_copy(data_dir: str, name: str) -> str:
  """A local copy of a data set prepared on cloud storage (copied once, into the cache folder).

  tf.data reads records through TensorFlow's own cloud client, which no emulator reaches; a CIFAR split is read
  whole into memory anyway, so its prepared files (136 MiB) are fetched through epath instead. The copy is made
  once: a data set prepared again on the bucket needs its copy deleted (RESNET_JAX_CACHE/tfds/).
  """
  source = storage.path(data_dir) / name
  if not source.exists():
    raise errors.DataNotFoundError(
        f"tfds data set {name!r} is not prepared in {data_dir}: {source} does not exist. Copy a prepared "
        f"{name}/<version>/ folder there, or point --config.data_dir at one"
    )
  key = hashlib.sha256(f"{data_dir}/{name}".encode()).hexdigest()[:16]  # one copy per data set
  root = os.path.join(_cache_dir() or tempfile.gettempdir(), "tfds", key)
  if not os.path.isdir(os.path.join(root, name)):
    tmp = f"{root}.tmp{os.getpid()}"
    storage.copy_tree(source, os.path.join(tmp, name))
    os.makedirs(os.path.dirname(root), exist_ok=True)
    try:
      os.rename(tmp, root)  # atomic: a killed copy is never taken for a complete one
    except OSError:  # another process finished the same copy first
      shutil.rmtree(tmp, ignore_errors=True)
  logging.info("data: %s/%s read from its local copy in %s", data_dir, name, root)
  return root


@dataclasses.dataclass(frozen=True)
class ArrayData:
  """A split held in host memory."""

  images: np.ndarray  # uint8 [N, H, W, 3]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)


def _cache_dir() -> str:
  return os.environ.get("RESNET_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax"))


@functools.lru_cache(maxsize=8)
def _load_tfds_split(name: str, split: str, data_dir: str) -> ArrayData:
  """Decodes a split once (about 16 s for CIFAR-10 train on 2 cores) and caches the arrays as .npz.

  The cache key includes the prepared files' names, sizes and modification times, so a re-prepared data set is
  decoded again. Set RESNET_JAX_CACHE to move the cache, or to an empty string to disable it.
  """
  import tensorflow_datasets as tfds

  if storage.is_url(data_dir):
    data_dir = _local_copy(data_dir, name)

  cache_root = _cache_dir()
  cache_file = None
  if cache_root:
    files = sorted(glob.glob(os.path.join(data_dir, name, "*", "*")))
    key = repr([(name, split)] + [(f, os.path.getsize(f), os.path.getmtime(f)) for f in files])
    cache_file = os.path.join(cache_root, f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz")
    if files and os.path.exists(cache_file):
      with np.load(cache_file) as z:
        return ArrayData(z["images"], z["labels"])
  data = _decode_tfds_split(tfds, name, split, data_dir)
  if cache_file:
    try:
      os.makedirs(cache_root, exist_ok=True)
      tmp = f"{cache_file}.tmp{os.getpid()}.npz"
      np.savez(tmp, images=data.images, labels=data.labels)
      os.replace(tmp, cache_file)  # atomic: a killed run never leaves a partial cache file
    except OSError as e:
      logging.warning("could not cache decoded data in %s (%s); continuing without the cache", cache_root, e)
  return data


def _decode_tfds_split(tfds, name: str, split: str, data_dir: str) -> ArrayData:
  where = data_dir
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise errors.DataNotFoundError(
          f"tfds data set {name!r} is not prepared in {where}. Point --config.data_dir (or the TFDS_DATA_DIR "
          f"environment variable) at a directory that holds {name}/<version>/, or download and prepare it once "
          f"with internet access: "
          f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='DIR')"
          f'.download_and_prepare()"'
      )
    ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
  except errors.DataNotFoundError:
    raise
  except ValueError as e:  # bad split strings, e.g. train[:90000] on a 50k split
    raise errors.SplitError(f"cannot read split {split!r} of {name!r} from {where}: {e}") from None
  images, labels = tfds.as_numpy(ds)
  return ArrayData(np.ascontiguousarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int32))


def _fake_split(config, split_kind: str) -> ArrayData:
  n = config.fake_train_size if split_kind == "train" else config.fake_eval_size
  rng = np.random.default_rng([config.seed, 0 if split_kind == "train" else 1])
  size = config.image_size
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, config.model.num_classes, (n,), dtype=np.int32)
  return ArrayData(images, labels)


def load_split(config, which: str) -> ArrayData:
  """config.train_split ('train') or config.eval_split ('eval') in memory: from config.data_file when given (the
  split string selecting what it selects in tfds, see tfds_order), else from tfds."""
  if config.dataset == "fake":
    return _fake_split(config, "train" if which == "train" else "eval")
  if config.dataset not in CIFAR_DATASETS:
    raise ValueError(
        f"dataset {config.dataset!r} is not an in-memory data set; valid values here are "
        f"{list(CIFAR_DATASETS) + ['fake']}"
    )
  split = config.train_split if which == "train" else config.eval_split
  if config.data_file:
    return _npz_split(config.data_file, split)
  require_tensorflow(f"reading {config.dataset!r} with tfds")
  return _load_tfds_split(config.dataset, split, resolve_data_dir(config.data_dir))


def _npz_split(data_file: str, split: str) -> ArrayData:
  m = _SPLIT.match(split.replace(" ", ""))
  if not m:
    raise errors.SplitError(
        f"split {split!r} is not supported with data_file: use train, test, or a slice "
        "such as train[:45000] / train[45000:] / test[:10%]"
    )
  name, lo, hi = m.groups()
  stored, labels = _load_npz(storage.name(data_file), name)
  n = len(labels)
  start, stop = _bound(lo, n), _bound(hi, n)
  rows = tfds_order(name, n)[start:stop]
  if any(b is not None and abs(b) > n for b in (start, stop)) or not len(rows):
    raise errors.SplitError(
        f"split {split!r} does not fit the {n} examples of {name!r} in {data_file}: it must select at least "
        f"one of them and reach no further than {n}"
    )
  images = stored["x"][rows] if "x" in stored else _decode_jpegs(stored["jpeg"], stored["offsets"], rows)
  return ArrayData(images, labels[rows])


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """The JPEGs of `rows`, decoded by Pillow: it made the tfds copy's pixels from these files, so it gives them
  exactly (tested)."""
  return np.stack(
      [np.asarray(Image.open(io.BytesIO(buf[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")) for i in rows]
  )


@functools.lru_cache(maxsize=4)
def _load_npz(path: str, which: str) -> tuple[dict, np.ndarray]:
  """A split's arrays as the file stores them ({'x': images} or {'jpeg', 'offsets'}) and its labels: the rows a
  split string selects are decoded afterwards, so that `test[:1000]` decodes 1,000 JPEGs, not 10,000."""
  storage.check_supported(path)
  if not storage.path(path).exists():
    raise errors.DataNotFoundError(
        f"data_file {path} does not exist; point --config.data_file at an .npz with x_{which}/y_{which} uint8 "
        f"arrays or {which}_jpeg/{which}_offsets/y_{which} (JPEG bytes, their offsets and the labels)"
    )
  with storage.path(path).open("rb") as f, np.load(f) as z:
    if f"x_{which}" in z:
      stored = {"x": np.asarray(z[f"x_{which}"], np.uint8)}
    elif f"{which}_jpeg" in z:
      stored = {"jpeg": z[f"{which}_jpeg"], "offsets": z[f"{which}_offsets"]}
    else:
      raise errors.SplitError(f"{path} holds neither x_{which} nor {which}_jpeg (it has {sorted(z.files)})")
    labels = np.asarray(z[f"y_{which}"], np.int32).reshape(-1)  # keras's labels are [N, 1]
  return stored, labels


def tfds_order(split: str, n: int) -> np.ndarray:
  """Rows 0..n-1 of a split in the order of tfds's prepared files, computed without TensorFlow.

  tfds's cifar10 and cifar100 builders key the i-th example of the official files by the integer i, and its writer
  stores a split sorted by the md5 hash of the split's name followed by the key (tensorflow_datasets/core/hashing.py;
  the name salts the hash so that two splits are shuffled differently). tfds reads them in that order and slices
  that order, so a .npz in key order read in this order gives any split string tfds's examples.
  tests/test_cifar.py compares it with the prepared files.
  """
  salted = hashlib.md5(split.encode())

  def key(i: int) -> bytes:
    h = salted.copy()
    h.update(str(i).encode())
    return h.digest()  # big-endian: bytes order is tfds's integer order

  return np.array(sorted(range(n), key=key), dtype=np.int64)


def _bound(value: str, n: int) -> int | None:
  """A slice bound as tfds reads it: examples, or a percentage rounded to the closest example."""
  if not value:
    return None
  return round(float(value[:-1]) * n / 100) if value.endswith("%") else int(value)


# ----------------------------------------------------------------------------------------------------------
# Normalisation.


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """x -> (x / 255 - mean) / std, with a per-pixel mean image (std 1) or per-channel mean and std."""

  mean: np.ndarray  # float32 [H, W, 3] or [3]
  std: np.ndarray  # float32, broadcastable

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32, copy=False)

  def tensorflow(self, images):
    """The same function of a uint8 TensorFlow tensor, bit for bit: the same float32 operations in the same order."""
    import tensorflow as tf

    return (tf.cast(images, tf.float32) / 255.0 - tf.constant(self.mean)) / tf.constant(self.std)


def normalizer(config, train: ArrayData, chunk: int = 1024) -> Normalizer:
  """The training split's statistics, computed once per process.

  From exact integer sums of the uint8 pixels and of their squares, `chunk` images at a time: a float64 copy of
  the whole split would be 1.1 GB for CIFAR-10's 45,000-50,000 images and take seconds to fill.
  """
  if config.normalization not in ("pixel_mean", "channel"):
    raise ValueError(f"unknown normalization {config.normalization!r}: valid values are ['pixel_mean', 'channel']")
  images = train.images
  sums = np.zeros(images.shape[1:], np.int64)
  squares = np.zeros(images.shape[1:], np.int64)
  for start in range(0, len(images), chunk):
    block = images[start : start + chunk].astype(np.int64)
    sums += block.sum(axis=0)
    squares += (block * block).sum(axis=0)
  n = len(images)
  if config.normalization == "pixel_mean":
    # The paper: "the per-pixel mean subtracted"; no division by a standard deviation.
    return Normalizer((sums / n / 255.0).astype(np.float32), np.ones((), np.float32))
  count = n * sums.shape[0] * sums.shape[1]
  mean = sums.sum(axis=(0, 1)) / count / 255.0
  variance = squares.sum(axis=(0, 1)) / count / 255.0**2 - mean**2
  return Normalizer(mean.astype(np.float32), np.sqrt(variance).astype(np.float32))


# ----------------------------------------------------------------------------------------------------------
# Training: step-indexed, deterministic, tf.data.


def example_indices(seed: int, step, global_batch: int, n: int):
  """Indices (into the split) of global batch `step`: epoch-wise stateless permutations. TensorFlow ops."""
  import tensorflow as tf

  pos = tf.cast(step, tf.int64) * global_batch + tf.range(global_batch, dtype=tf.int64)
  epoch = pos // n
  first = epoch[0]

  def perm(e):
    return tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), e])
    )

  # A batch spans at most two epochs (global_batch <= n is checked by the config validation).
  p0, p1 = perm(first), perm(first + 1)
  return tf.where(epoch == first, tf.gather(p0, pos % n), tf.gather(p1, pos % n))


def augmentation_params(seed: int, step, global_batch: int):
  """Crop offsets (uniform over 0..2*PAD) and flips (probability 1/2) of global batch `step`."""
  import tensorflow as tf

  step = tf.cast(step, tf.int64)
  seed = tf.cast(seed, tf.int64)
  offsets = tf.random.stateless_uniform(
      [global_batch, 2], seed=tf.stack([seed + 1_000_003, step]), minval=0, maxval=2 * PAD + 1, dtype=tf.int32
  )
  flips = (
      tf.random.stateless_uniform(
          [global_batch], seed=tf.stack([seed + 2_000_003, step]), minval=0, maxval=2, dtype=tf.int32
      )
      > 0
  )
  return offsets, flips


def pad_crop_flip(images, offsets, flips):
  """Vectorised 4-pixel zero pad, crop at `offsets` and horizontal flip (TensorFlow ops, [B,H,W,C])."""
  import tensorflow as tf

  h, w = images.shape[1], images.shape[2]
  x = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
  rows = offsets[:, :1] + tf.range(h)[None, :]
  cols = offsets[:, 1:] + tf.range(w)[None, :]
  x = tf.gather(x, rows, axis=1, batch_dims=1)
  x = tf.gather(x, cols, axis=2, batch_dims=1)
  return tf.where(flips[:, None, None, None], tf.reverse(x, axis=[2]), x)


def train_dataset(config, data: ArrayData, norm: Normalizer, *, start_step: int, process_index: int, local_batch: int):
  """tf.data.Dataset of this process's slices (`local_batch` examples from process_index * local_batch on) of
  global batches start_step, start_step + 1, ... of config.batch_size examples."""
  require_tensorflow("input_backend='tfdata'")
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerators JAX uses
  global_batch = config.batch_size
  lo = process_index * local_batch
  n = len(data)
  # The split stays uint8 (captured by reference, not copied per batch) and each batch is normalised as it is
  # drawn: normalising the whole split at start-up would make a float32 copy four times its size (and numpy's
  # temporaries beside it), memory that every run would fault in before its first step.
  images = tf.constant(data.images)
  labels = tf.constant(data.labels)
  seed = int(config.seed)

  def make_batch(step):
    idx = example_indices(seed, step, global_batch, n)[lo : lo + local_batch]
    offsets, flips = augmentation_params(seed, step, global_batch)
    x = norm.tensorflow(tf.gather(images, idx))
    x = pad_crop_flip(x, offsets[lo : lo + local_batch], flips[lo : lo + local_batch])
    return {"image": x, "label": tf.gather(labels, idx)}

  ds = tf.data.Dataset.range(start_step, config.num_train_steps)
  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(2, cpu.usable_cpus())
  ds = ds.with_options(options)
  return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------------------------
# Evaluation: padded and masked, every example exactly once.


def eval_batches(
    data: ArrayData, norm: Normalizer, *, global_batch: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict]:
  """This process's slices of padded global eval batches: dict(image, label, mask)."""
  n = len(data)
  local = global_batch // process_count
  num_batches = -(-n // global_batch)
  for b in range(num_batches):
    start = b * global_batch + process_index * local
    idx = np.arange(start, start + local)
    mask = idx < n
    idx = np.where(mask, idx, 0)
    yield {"image": norm(data.images[idx]), "label": data.labels[idx], "mask": mask.astype(np.float32)}


def log_data_summary(config, train: ArrayData, evaluation: ArrayData):
  """One line with each split's size and how evenly its classes are represented: a split that holds one class
  (the first rows of a class-sorted file) shows at start-up, not as a strange test error hours later."""
  logging.info(
      "data: %s train %r = %d examples %s, eval %r = %d examples %s",
      config.dataset,
      config.train_split,
      len(train),
      _class_counts(train.labels),
      config.eval_split,
      len(evaluation),
      _class_counts(evaluation.labels),
  )


def _class_counts(labels: np.ndarray) -> str:
  counts = np.bincount(labels)
  counts = counts[counts > 0]
  if not len(counts):
    return "(none)"
  return f"of {len(counts)} class{'es' if len(counts) != 1 else ''} ({counts.min()} to {counts.max()} per class)"
