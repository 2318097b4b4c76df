"""The ImageNet training preprocessing alone, on JPEG files: img/s per tf.data thread count and augmentation.

    python benchmarks/imagenet_preprocessing.py --jpeg_dir=DIR [--threads=1,2] [--seconds=20] \\
        [--augmentation=paper,inception]

JPEG decode of the crop window + augmentation into the uint8 pixels and colour offset that go to the devices
(resnet_jax.data.imagenet_images.train_example; the devices normalise) on the JPEG files of DIR, without a config
or a network, one JSON line per augmentation of `--augmentation` and thread count of `--threads`: how many images
a core prepares per second for an ImageNet run, beside what the train step consumes
(`python -m resnet_jax.benchmark --config=configs/imagenet_resnet50.py`).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

_FLAGS: dict = {}


def define_flags():
  _FLAGS["jpeg_dir"] = flags.DEFINE_string("jpeg_dir", None, "A folder of JPEG images (e.g. ImageNet's).")
  _FLAGS["threads"] = flags.DEFINE_list("threads", ["1"], "tf.data thread counts to measure.")
  _FLAGS["seconds"] = flags.DEFINE_float("seconds", 20.0, "Timed seconds per measurement.")
  _FLAGS["augmentation"] = flags.DEFINE_list("augmentation", ["paper", "inception"], "The augmentations to measure.")


def preprocessing_rate(
    images_dir, *, augmentation: str, threads: int = 1, image_size: int = 224, seconds: float = 20.0, warmup: int = 200
) -> dict:
  """img/s of the training decode + augment on the JPEG files of `images_dir`, with `threads`
  tf.data threads (one image per thread at a time; intra-op parallelism 1): a per-core figure for threads=1."""
  from resnet_jax import errors

  if not os.path.isdir(images_dir):
    raise errors.NotFoundError(f"--jpeg_dir={images_dir} is not a directory; give a folder of JPEG images")
  paths = sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.upper().endswith((".JPEG", ".JPG")))
  if not paths:
    raise errors.NotFoundError(f"no JPEG files in {images_dir}; give --jpeg_dir a folder of JPEG images")
  import numpy as np
  import tensorflow as tf  # seconds to import: after the checks above
  from resnet_jax.data import imagenet_images, imagenet_prepare

  blobs = [open(p, "rb").read() for p in paths]
  kwargs = dict(augmentation=augmentation, image_size=image_size)
  ds = tf.data.Dataset.from_tensor_slices(blobs).repeat().enumerate()
  ds = ds.map(
      lambda i, b: imagenet_images.train_example(b, tf.stack([tf.constant(0, tf.int64), i]), **kwargs),
      num_parallel_calls=threads,
      deterministic=True,
  )
  ds = ds.batch(32).prefetch(2).with_options(imagenet_prepare.dataset_options(threads))
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


def main(argv):
  from resnet_jax import cli

  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  if not f["jpeg_dir"]:
    cli.fail("give --jpeg_dir=DIR, a folder of JPEG images")
  cli.start(restart=False)
  with cli.user_errors():
    for augmentation in f["augmentation"]:
      for threads in f["threads"]:
        r = preprocessing_rate(f["jpeg_dir"], augmentation=augmentation, threads=int(threads), seconds=f["seconds"])
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
  from resnet_jax import cli

  define_flags()
  cli.run(main)
