r"""A trained workdir as a self-contained inference artefact: StableHLO, TF SavedModel or ONNX.

    python -m resnet_jax.export --workdir=runs/cifar20 --format=stablehlo cifar20.stablehlo
    python -m resnet_jax.export --workdir=runs/cifar20 --format=savedmodel cifar20_savedmodel
    python -m resnet_jax.export --workdir=runs/cifar20 --format=onnx cifar20.onnx   [--logits] [--overwrite]

Every artefact takes uint8 RGB images [N, S, S, 3] (NHWC; S is the workdir's config.image_size, 32 for CIFAR and
224 for ImageNet nets; any N) and returns class probabilities [N, classes], or logits with --logits. The input
normalisation the network was trained with is inside the artefact (CIFAR: the training split's mean image, saved in
the workdir by training; ImageNet: config.normalization's constants), so a caller feeds raw pixels. Resizing and
cropping an ImageNet photo to S x S stays outside (`resnet_jax.inference.preprocessor` is the evaluation's resize
and crop).
The network is the plain XLA formulation (never the CPU plan's oneDNN custom calls): an artefact runs anywhere.

- stablehlo: one file, `jax.export`'s serialisation, lowered for CPU, CUDA and TPU. Load it with JAX alone:
  `jax.export.deserialize(bytearray(open(OUT, "rb").read())).call(images)`.
- savedmodel: a folder with the signature `serving_default` (input `images`, output `probabilities` or `logits`),
  made by jax2tf (the network as an XlaCallModule op, its weights as variables): TensorFlow, TF Serving.
- onnx: one file through jax2onnx (input `images`, output `probabilities` or `logits`, a symbolic batch
  dimension, the class names as JSON in the metadata: `json.loads(session.get_modelmeta().custom_metadata_map
  ["class_names"])` in onnxruntime), checked with onnxruntime against the network before it is written; it loads
  without warnings. The converter's own output (jax2onnx prints a line per convolution) is silenced; `-v 1`
  (absl's --verbosity=1) shows it. jax2onnx handles the CIFAR nets (shortcut options A, B and C); it cannot
  convert ImageNet nets (its flax max-pool replacement takes no explicit padding): such an export stops with an
  error naming the other two formats, and writes nothing.

OUT may be a local path in a folder that exists or a cloud URL (gs://...); an existing OUT is kept unless
--overwrite. Both are checked before the checkpoint is loaded; without --format the command lists the formats.
The same in Python: `resnet_jax.export.export(workdir, out, "onnx")`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import tempfile

import numpy as np
from absl import flags
from absl import logging as absl_logging

from resnet_jax import cli, config_lib, errors, storage

# JAX, the workdir's network (resnet_jax.inference imports the training stack) and each format's converter
# (TensorFlow, jax2onnx, onnx, onnxruntime: optional, the `export` extra) are imported inside the functions that
# use them: a mistyped path or format is answered without them, and a format's libraries are needed only for it.

FORMATS = ("stablehlo", "savedmodel", "onnx")
# What to install for each format (the `export` extra of setup.cfg installs them all).
REQUIREMENTS = {"savedmodel": ("tensorflow",), "onnx": ("jax2onnx", "onnxruntime")}
# ONNX opset 21 (2024): what onnxruntime >= 1.20 and TensorRT 10 read; a ResNet needs nothing newer.
ONNX_OPSET = 21
# Largest difference between onnxruntime's outputs and JAX's that still counts as the same network: float32 sums
# in another order move logits by about 1e-6 relative; a wrong layout or constant moves them by far more.
ONNX_TOLERANCE = 1e-4


class ExportError(errors.UserError, ValueError):
  """The workdir cannot be exported in this format (and what to do instead)."""


def input_normalization(config, workdir) -> tuple[float, np.ndarray, np.ndarray]:
  """(divisor, mean, std) such that the network's input is (pixels / divisor - mean) / std.

  The same arithmetic as training's input pipelines: CIFAR's statistics (saved in the workdir), ImageNet's
  constants of config.normalization.
  """
  from resnet_jax import inference

  if inference.is_imagenet(config):
    from resnet_jax.data import imagenet_images

    try:
      return imagenet_images.normalization_constants(config.normalization)
    except ValueError as e:
      raise ExportError(str(e)) from None
  normalize = inference.cifar_normalizer(workdir)
  return 255.0, np.asarray(normalize.mean, np.float32), np.asarray(normalize.std, np.float32)


def serving_function(config, variables, normalization, *, logits: bool = False):
  """uint8 images [N, S, S, 3] -> probabilities (or logits) [N, classes], with the weights as constants."""
  import jax
  import jax.numpy as jnp

  from resnet_jax import models

  model = models.create_model(config.model, half_precision=config.half_precision)
  divisor, mean, std = normalization

  def serve(images, variables=variables):
    x = (images.astype(jnp.float32) / divisor - mean) / std
    out = model.apply(variables, x, train=False).astype(jnp.float32)
    return out if logits else jax.nn.softmax(out, axis=-1)

  return serve


def _input_spec(config, batch):
  import jax
  import jax.numpy as jnp

  return jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.uint8)


def to_stablehlo(serve, config) -> bytes:
  import jax
  from jax import export as jax_export

  (batch,) = jax_export.symbolic_shape("batch")
  exported = jax_export.export(jax.jit(serve), platforms=("cpu", "cuda", "tpu"))(_input_spec(config, batch))
  return exported.serialize()


def to_savedmodel(serve, config, variables, folder: str, *, output_name: str) -> None:
  import jax
  import tensorflow as tf
  from jax.experimental import jax2tf

  size = config.image_size
  converted = jax2tf.convert(
      lambda v, images: serve(images, variables=v),
      polymorphic_shapes=[None, f"(batch, {size}, {size}, 3)"],
      with_gradient=False,
      native_serialization_platforms=("cpu", "cuda", "tpu"),
  )
  module = tf.Module()
  # Weights as variables rather than constants of the graph: the SavedModel format stores them beside it.
  module.variables_ = tf.nest.map_structure(tf.Variable, jax.tree.map(np.asarray, variables))
  signature = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
  module.serve = tf.function(
      lambda images: {output_name: converted(module.variables_, images)}, input_signature=[signature], autograph=False
  )
  tf.saved_model.save(module, folder, signatures={"serving_default": module.serve})


def to_onnx(serve, config, *, output_name: str) -> bytes:
  import jax2onnx
  import onnx
  import onnxruntime

  from resnet_jax import inference

  quiet = absl_logging.get_verbosity() < absl_logging.DEBUG  # -v 1 asks for the converter's own output
  if quiet:
    # jax2onnx logs a warning with a traceback for each of its plugins for other libraries (dm_pix, equinox) that
    # does not import with this JAX; none of them concerns a ResNet.
    logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  try:
    # jax2onnx 0.13's flax Conv plugin print()s "DEBUG: ..." lines (the module's attributes) for every convolution.
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
      model = jax2onnx.to_onnx(
          serve,
          [_input_spec(config, "batch")],
          opset=ONNX_OPSET,
          input_names=["images"],
          output_names=[output_name],
      )
  except Exception as e:  # noqa: BLE001 - any failure inside the converter
    raise ExportError(
        f"jax2onnx {importlib.metadata.version('jax2onnx')} cannot convert this network "
        f"({type(e).__name__}: {errors.one_line(e, 200)}); it handles the CIFAR nets, not ImageNet "
        "nets: export this workdir with --format=savedmodel or --format=stablehlo"
    ) from None
  # jax2onnx declares the activations it moves to NCHW around each convolution with their NHWC shapes: onnxruntime
  # warns about each one (MergeShapeInfo) at every load, and rejected the graphs of option-B nets, whose shortcuts
  # add such activations. ONNX's shape inference declares them again from the graph.
  del model.graph.value_info[:]
  model = onnx.shape_inference.infer_shapes(model)
  # The names of the outputs' classes travel with the file, in the order of the outputs.
  model.metadata_props.add(key="class_names", value=json.dumps(inference.class_labels(config)))
  model = model.SerializeToString()
  # onnxruntime checks the graph's shapes when it loads it; then the graph must compute the network's function
  # (within float32 reordering) on a small batch of random pixels.
  images = np.random.default_rng(0).integers(0, 256, (2, config.image_size, config.image_size, 3), np.uint8)
  try:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    difference = float(np.max(np.abs(session.run(None, {"images": images})[0] - np.asarray(serve(images)))))
  except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
    problem = f"onnxruntime rejects it ({errors.one_line(e, 200)})"
  else:
    problem = None if difference <= ONNX_TOLERANCE else f"its outputs differ from the network's by {difference:.2g}"
  if problem:
    raise ExportError(
        f"jax2onnx {importlib.metadata.version('jax2onnx')} made an ONNX graph, but {problem}: export this workdir "
        "with --format=savedmodel or --format=stablehlo"
    )
  return model


def _require(fmt: str) -> None:
  for module in REQUIREMENTS.get(fmt, ()):
    try:
      importlib.import_module(module)
    except ImportError:
      raise errors.MissingDependencyError(
          f"--format={fmt} needs {module}, which is not installed: pip install 'resnet_jax[export]' "
          f"(or pip install {' '.join(REQUIREMENTS[fmt])})"
      ) from None


def check_output(out, *, overwrite: bool):
  """OUT as a storage path, once it is known to be writable as asked; raises ExportError otherwise.

  Checked before the checkpoint loads and the network converts (seconds to minutes), so that a mistyped path
  costs nothing. A local OUT's folder must exist (a cloud URL has no folders to make).
  """
  path = storage.path(out)
  if path.exists() and not overwrite:
    raise ExportError(f"{path} already exists: give another path, or --overwrite to replace it")
  if not storage.is_url(path) and not path.parent.is_dir():
    folder = os.path.dirname(os.fspath(out))
    where = folder if os.path.abspath(folder) == os.fspath(path.parent) else f"{folder} ({path.parent})"
    raise ExportError(
        f"the folder {where} does not exist: create it first (mkdir -p {folder}), or give an OUT in a folder that "
        "exists"
    )
  return path


def export(workdir, out, fmt: str, *, logits: bool = False, overwrite: bool = False, config=None):
  """Writes the workdir's newest checkpoint to `out` as `fmt` (see the module docstring); returns out's path."""
  from resnet_jax import inference

  if fmt not in FORMATS:
    raise ExportError(f"unknown format {fmt!r}: valid formats are {', '.join(FORMATS)}")
  out = check_output(out, overwrite=overwrite)
  _require(fmt)
  config = config or config_lib.load_workdir_config(workdir)
  variables = inference.load_for_inference(workdir, config)
  serve = serving_function(config, variables, input_normalization(config, workdir), logits=logits)
  output_name = "logits" if logits else "probabilities"
  if fmt == "stablehlo":
    data = to_stablehlo(serve, config)
  elif fmt == "onnx":
    data = to_onnx(serve, config, output_name=output_name)
  if fmt != "savedmodel":
    if out.is_dir():  # --overwrite of a folder by a file
      out.rmtree()
    storage.write_bytes_atomic(out, data)
    return out
  with tempfile.TemporaryDirectory() as tmp:  # written whole before it replaces anything
    folder = os.path.join(tmp, "savedmodel")
    to_savedmodel(serve, config, variables, folder, output_name=output_name)
    if out.is_dir():
      out.rmtree()
    elif out.exists():
      out.unlink()
    if storage.is_url(out):
      storage.copy_tree(folder, out)
    else:
      shutil.move(folder, out)
  return out


_FLAGS: dict = {}


def define_flags():
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Training (or converted) directory; its newest checkpoint.")
  _FLAGS["format"] = flags.DEFINE_string("format", None, f"One of {', '.join(FORMATS)}.")
  _FLAGS["logits"] = flags.DEFINE_bool("logits", False, "Return logits instead of class probabilities.")
  _FLAGS["overwrite"] = flags.DEFINE_bool("overwrite", False, "Replace OUT if it exists.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  workdir, fmt = _FLAGS["workdir"].value, _FLAGS["format"].value
  if fmt is None:  # not absl's "flag --format must have a value": the user needs the formats
    cli.fail(
        f"give --format: {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, e.g. python -m resnet_jax.export "
        f"--workdir={workdir} --format=onnx OUT.onnx"
    )
  if fmt not in FORMATS:
    cli.fail(f"unknown --format={fmt}: valid formats are {', '.join(FORMATS)}")
  if len(argv) != 2:
    cli.fail("give one output path: python -m resnet_jax.export --workdir=DIR --format=FORMAT OUT")
  with cli.user_errors():  # the arguments first, then the seconds of loading and converting
    check_output(argv[1], overwrite=_FLAGS["overwrite"].value)
    config = config_lib.load_workdir_config(workdir)
  config = cli.start(config, restart=__name__ == "__main__")
  with cli.user_errors():
    out = export(
        workdir, argv[1], fmt, logits=_FLAGS["logits"].value, overwrite=_FLAGS["overwrite"].value, config=config
    )
  print(f"wrote {out} ({fmt})")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
