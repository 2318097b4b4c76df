"""resnet_jax.export: StableHLO, SavedModel and ONNX artefacts that run without resnet_jax.

Each artefact is loaded in a process where resnet_jax cannot be imported, fed raw uint8 pixels, and must give the
probabilities of `predict --json` on the same images. Tolerance 1e-4 (absolute, on probabilities): both sides run
the same float32 network; XLA (StableHLO, SavedModel) and onnxruntime may order sums differently and fuse
differently, which moves float32 logits by about 1e-6 relative, far below 1e-4, while a wrong normalisation or a
missing softmax moves probabilities by 1e-2 or more.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import (
    SHARED_DATA,
    SMALL,
    predict_in_process,
    run_cli,
    small_cifar_npz,
    small_run_args,
    train_in_process,
)

CIFAR_SAMPLES = SHARED_DATA / "cifar10-lossless-test-samples"
IMAGENET_SAMPLES = SHARED_DATA / "imagenet-sample"

# Loads each artefact with its own runtime only: resnet_jax is made unimportable first.
LOADER = r"""
import json, sys
sys.modules["resnet_jax"] = None
try:
  import resnet_jax.models
  raise SystemExit("resnet_jax is importable")
except ImportError:
  pass
import numpy as np
images = np.load(sys.argv[1])
out = {}
for fmt, path in zip(sys.argv[2::2], sys.argv[3::2]):
  if fmt == "stablehlo":
    from jax import export
    exported = export.deserialize(bytearray(open(path, "rb").read()))
    run = lambda x: np.asarray(exported.call(x))
  elif fmt == "savedmodel":
    import tensorflow as tf
    serving = tf.saved_model.load(path).signatures["serving_default"]
    run = lambda x: serving(images=tf.constant(x))["probabilities"].numpy()
  else:
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    run = lambda x: session.run(["probabilities"], {"images": x})[0]
  out[fmt] = {"1": run(images[:1]).tolist(), "5": run(images).tolist()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A ResNet-8 (option A, the CIFAR nets' shortcut) trained for 4 steps: its normalisation saved in the workdir.

  Trained in this process (helpers.train_in_process): these tests are about the artefacts, not the command."""
  wd = tmp_path_factory.mktemp("export") / "run"
  train_in_process(*small_run_args(wd, steps=4))
  assert (wd / "normalization.npz").exists()
  return wd


def test_artefacts_give_predicts_probabilities_without_resnet_jax(workdir, tmp_path):
  paths = sorted(CIFAR_SAMPLES.glob("*.png"))[:5]
  expected = np.zeros((5, 10))
  for i, row in enumerate(predict_in_process(workdir, *paths, top=10)):  # `predict --json --top=10`'s rows
    for t in row["top"]:
      expected[i, t["class"]] = t["probability"]

  from resnet_jax import predict

  images = np.stack([predict.read_image(str(p)) for p in paths])
  np.save(tmp_path / "images.npy", images)
  artefacts = {
      "stablehlo": tmp_path / "net.stablehlo",
      "savedmodel": tmp_path / "net_savedmodel",
      "onnx": tmp_path / "net.onnx",
  }
  out = run_cli("resnet_jax.export", f"--workdir={workdir}", "--format=onnx", artefacts["onnx"])  # the command
  assert f"wrote {artefacts['onnx']} (onnx)" in out.stdout
  from resnet_jax import export

  for fmt in ("savedmodel", "stablehlo"):  # the same in Python
    path = export.export(str(workdir), str(artefacts[fmt]), fmt)
    assert str(path) == str(artefacts[fmt])
  loaded = subprocess.run(
      [sys.executable, "-c", LOADER, tmp_path / "images.npy", *[str(x) for kv in artefacts.items() for x in kv]],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  results = json.loads(loaded.stdout.strip().splitlines()[-1])
  for fmt in artefacts:
    np.testing.assert_allclose(results[fmt]["5"], expected, atol=1e-4, err_msg=fmt)
    np.testing.assert_allclose(results[fmt]["1"], expected[:1], atol=1e-4, err_msg=fmt)
  assert expected.max(axis=1).min() < 0.99  # a trained-for-4-steps net: probabilities that can differ

  from jax import export as jax_export

  module = jax_export.deserialize(bytearray(artefacts["stablehlo"].read_bytes())).mlir_module()
  calls = {line.split("@")[1].split("(")[0] for line in module.splitlines() if "stablehlo.custom_call" in line}
  assert calls <= {"shape_assertion"}  # no oneDNN (or any other) custom call inside

  logits = export.export(str(workdir), str(tmp_path / "logits.stablehlo"), "stablehlo", logits=True)
  got = np.asarray(jax_export.deserialize(bytearray(logits.read_bytes())).call(images))
  np.testing.assert_allclose(np.exp(got) / np.exp(got).sum(-1, keepdims=True), expected, atol=1e-4)


def test_onnx_export_is_quiet_and_loads_without_warnings_with_its_class_names(tmp_path):
  """`export --format=onnx` of a CIFAR-10 run prints its one line, none of the converter's output; onnxruntime
  loads the file at its default log severity without a warning (jax2onnx declared the NCHW activations of its
  convolutions with NHWC shapes), and the file's metadata names the 10 CIFAR-10 classes in order."""
  npz = small_cifar_npz(tmp_path / "cifar10.npz", n_train=64, n_test=32)
  wd = tmp_path / "run"
  train_in_process(
      "--config=configs/cifar20.py",
      f"--workdir={wd}",
      *[a for a in SMALL if not a.startswith(("--config.dataset", "--config.fake"))],
      f"--config.data_file={npz}",
      "--config.num_train_steps=2",
      "--config.eval_every_steps=2",
      "--config.checkpoint_every_steps=2",
  )
  out = tmp_path / "cifar.onnx"
  proc = run_cli("resnet_jax.export", f"--workdir={wd}", "--format=onnx", out)
  assert proc.stdout == f"wrote {out} (onnx)\n"
  for noise in ("DEBUG", "jax2onnx", "Converting JAX function", "unused nodes"):
    assert noise not in proc.stderr, proc.stderr[-3000:]
  loaded = subprocess.run(
      [
          sys.executable,
          "-c",
          "import sys, onnxruntime; session = onnxruntime.InferenceSession(sys.argv[1], "
          "providers=['CPUExecutionProvider']); print(session.get_modelmeta().custom_metadata_map['class_names'])",
          out,
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert loaded.returncode == 0 and loaded.stderr == "", loaded.stderr[-3000:]
  assert json.loads(loaded.stdout) == [
      "airplane",
      "automobile",
      "bird",
      "cat",
      "deer",
      "dog",
      "frog",
      "horse",
      "ship",
      "truck",
  ]


def test_errors_are_one_line(workdir, tmp_path):
  def fails(*args):
    out = run_cli("resnet_jax.export", *args, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return out.stderr.strip()

  assert "unknown --format=tflite: valid formats are stablehlo, savedmodel, onnx" in fails(
      f"--workdir={workdir}", "--format=tflite", tmp_path / "x"
  )
  existing = tmp_path / "existing.onnx"
  existing.write_text("keep me")
  assert "already exists: give another path, or --overwrite" in fails(f"--workdir={workdir}", "--format=onnx", existing)
  assert existing.read_text() == "keep me"
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((workdir / "config.json").read_text())
  assert "no checkpoint in" in fails(f"--workdir={empty}", "--format=stablehlo", tmp_path / "y")
  assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_output_folder_is_checked_before_the_checkpoint_loads(workdir, tmp_path, fmt):
  """An OUT in a folder that does not exist: one line naming the folder and the fix, before the checkpoint loads
  (a workdir without one answers the same), not a FileNotFoundError once the network is converted."""
  out = tmp_path / "exports" / f"tiny.{fmt}"
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  (no_checkpoint / "config.json").write_text((workdir / "config.json").read_text())
  for wd in (workdir, no_checkpoint):
    proc = run_cli("resnet_jax.export", f"--workdir={wd}", f"--format={fmt}", out, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the folder {out.parent} does not exist: create it first (mkdir -p {out.parent}), or give an OUT "
        "in a folder that exists"
    ]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["no_checkpoint"]


def test_missing_runtime_names_the_extra(workdir, tmp_path, monkeypatch):
  from resnet_jax import errors, export

  monkeypatch.setitem(sys.modules, "onnxruntime", None)
  with pytest.raises(errors.MissingDependencyError, match=r"pip install 'resnet_jax\[export\]'"):
    export.export(str(workdir), str(tmp_path / "m.onnx"), "onnx")


def test_option_b_nets_export_to_onnx():
  """Nets with identity and projection shortcuts (option B): onnxruntime rejected jax2onnx's graph while its
  activations' shapes were declared in the wrong layout; declared from the graph, it loads and computes the
  network's logits."""
  import jax
  import jax.numpy as jnp
  import onnxruntime

  from resnet_jax import config_lib, export, models

  config = config_lib.resolve(config_lib.cifar(20, shortcut="B"))
  variables = models.create_model(config.model).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  serve = export.serving_function(config, variables, (255.0, np.float32(0.5), np.float32(0.25)), logits=True)
  session = onnxruntime.InferenceSession(
      export.to_onnx(serve, config, output_name="logits"), providers=["CPUExecutionProvider"]
  )
  images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), np.uint8)
  logits = np.asarray(serve(images))
  assert np.abs(logits).max() > 1  # a net whose outputs can differ
  np.testing.assert_allclose(session.run(["logits"], {"images": images})[0], logits, atol=1e-4)


def test_torchvision_resnet50_exports_with_torchvisions_probabilities(tmp_path):
  """torchvision weights in (convert), StableHLO out: on the shared ImageNet JPEGs resized and cropped as
  torchvision's eval transform does (uint8 crops), the artefact's probabilities are torchvision's own."""
  import torch
  from PIL import Image
  from torchvision import transforms

  from resnet_jax import config_lib, convert, export
  from helpers import numpy_state, random_torchvision

  net = random_torchvision(50)
  model_config, variables = convert.from_torchvision(numpy_state(net))
  config = config_lib.imagenet_torchvision(50)
  config.model = model_config
  convert.write_workdir(config_lib.resolve(config), variables, str(tmp_path / "tv50"))
  out = export.export(str(tmp_path / "tv50"), str(tmp_path / "tv50.stablehlo"), "stablehlo")

  crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
  images = np.stack(
      [np.asarray(crop(Image.open(p).convert("RGB"))) for p in sorted(IMAGENET_SAMPLES.glob("*.JPEG"))[:5]]
  )
  normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
  with torch.no_grad():
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    theirs = torch.softmax(net(x), dim=-1).numpy()

  from jax import export as jax_export

  exported = jax_export.deserialize(bytearray(out.read_bytes()))
  np.testing.assert_allclose(np.asarray(exported.call(images)), theirs, atol=1e-4)
  with pytest.raises(export.ExportError, match="cannot convert this network .* --format=savedmodel or"):
    export.export(str(tmp_path / "tv50"), str(tmp_path / "tv50.onnx"), "onnx")  # jax2onnx's max-pool patch
  assert not (tmp_path / "tv50.onnx").exists()
