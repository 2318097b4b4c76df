r"""Classify images with a trained (or converted) workdir.

    python -m resnet_jax.predict --workdir=runs/tv50 cat.jpg dog.png [--top=5] [--json]
    python -m resnet_jax.predict --workdir=runs/cifar20 photos/     # the images in a folder, by name

Each image gets the workdir's single-crop evaluation preprocessing: for ImageNet nets the shorter side resized to
config.eval_resize, the centre config.image_size crop and config.normalization (imagenet_images.single_view and
normalize, exactly what `resnet_jax.evaluate --protocol=single` feeds the network); for CIFAR nets the image resized
to config.image_size (CIFAR images already are) and the training split's normalisation, saved in the workdir by
training, so that no training data is needed (resnet_jax.inference.preprocessor). The config is the workdir's
config.json unless --config is given.
`--json` prints one object per image: {"image": PATH, "top": [{"class": INT, "label": STR, "probability": FLOAT}]}.
A folder stands for its image files (by extension: JPEG, PNG, BMP, GIF, TIFF, WebP, PPM), sorted by name. Paths
that do not exist, and folders without such files, stop the command in one line before the checkpoint is loaded; a
file that cannot be read (not an image, truncated) gets one line on stderr, the others are still classified, and
the exit status is then 2.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image, UnidentifiedImageError

from resnet_jax import cli, config_lib, errors

# JAX and the workdir's network (resnet_jax.inference, which imports the training stack) are imported inside the
# functions that classify: a mistyped path or flag is answered without them.

# The files of a folder that predict classifies: photo formats Pillow decodes. Not Pillow's whole registry, which
# also names formats it only identifies (HDF5, GRIB, MPEG), so that a folder's data files would count as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB; OSError/ValueError with the reason for a missing, unreadable or truncated file."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise OSError("no such file") from None
  except UnidentifiedImageError:
    raise ValueError("not an image Pillow can read (JPEG, PNG, ...)") from None
  except OSError as e:  # e.g. "image file is truncated"
    raise OSError(str(e)) from None


def image_files(args) -> list[str]:
  """The image paths of the command line, a folder replaced by its files with an IMAGE_EXTENSIONS extension (any
  case), sorted by name; errors.NotFoundError for paths that do not exist or a folder without such files.

  Checked before the checkpoint loads (seconds), so that a mistyped path costs nothing.
  """
  missing = [a for a in args if not os.path.exists(a)]
  if missing:
    raise errors.NotFoundError(f"no such file or folder: {', '.join(missing)}; nothing was classified")
  files = []
  for arg in args:
    if not os.path.isdir(arg):
      files.append(arg)
      continue
    found = sorted(f for f in os.listdir(arg) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    if not found:
      raise errors.NotFoundError(
          f"the folder {arg} holds no image file ({', '.join(IMAGE_EXTENSIONS)}): predict takes image files, or "
          "folders of them"
      )
    files += [os.path.join(arg, f) for f in found]
  return files


def predict(config, variables, paths, *, workdir, top: int = 5):
  """Yields (path, top-k list or None, error or None) per path, in order (`workdir`: a CIFAR net's saved input
  statistics; None for an ImageNet net)."""
  import jax
  from resnet_jax import inference, models

  model = models.create_model(config.model, half_precision=config.half_precision)
  probabilities = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))
  prepare, labels = inference.preprocessor(config, workdir), inference.class_labels(config)
  for path in paths:
    try:
      x = prepare(read_image(path))
    except (OSError, ValueError) as e:
      yield path, None, str(e)
      continue
    p = np.asarray(probabilities(variables, x[None]))[0]
    best = np.argsort(-p)[:top]
    yield path, [{"class": int(c), "label": labels[c], "probability": float(p[c])} for c in best], None


def predict_workdir(workdir: str, config, paths, *, top: int = 5):
  """predict() with the variables of the newest checkpoint of `workdir` (and its saved input statistics): what the
  command prints, one (path, top-k list or None, error or None) per path."""
  from resnet_jax import inference

  variables = inference.load_for_inference(workdir, config)
  yield from predict(config, variables, paths, workdir=workdir, top=top)


_FLAGS: dict = {}


def define_flags():
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Config file; default: the workdir's config.json.")
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Training (or converted) directory; its newest checkpoint.")
  _FLAGS["top"] = flags.DEFINE_integer("top", 5, "Classes to print per image.", lower_bound=1)
  _FLAGS["json"] = flags.DEFINE_bool("json", False, "One JSON object per image instead of text.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  images = argv[1:]
  if not images:
    cli.fail("give one or more image files or folders: python -m resnet_jax.predict --workdir=DIR IMAGE|FOLDER ...")
  workdir = _FLAGS["workdir"].value
  with cli.user_errors():
    config = _FLAGS["config"].value or config_lib.load_workdir_config(workdir)
    images = image_files(images)
  config = cli.start(config, restart=__name__ == "__main__")
  failed = 0
  with cli.user_errors():
    for path, top, error in predict_workdir(workdir, config, images, top=_FLAGS["top"].value):
      if error:
        failed += 1
        print(f"error: {path}: {error}", file=sys.stderr)
      elif _FLAGS["json"].value:
        print(json.dumps({"image": path, "top": top}), flush=True)
      else:
        print(f"{path}: " + ", ".join(f"{t['label']} ({100 * t['probability']:.1f}%)" for t in top), flush=True)
  if failed:
    sys.exit(errors.UserError.exit_code)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
