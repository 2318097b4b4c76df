"""torchvision weights in and out (resnet_jax.convert) and classifying images (resnet_jax.predict).

Parity is checked against torchvision itself (installed by `make install`): random weights with perturbed batch
norm statistics, eval-mode logits on the same images. Tolerance: max|diff| <= 1e-4 x max|logit| under
jax.default_matmul_precision('highest'). Both sides compute in float32 and differ only in summation order, which
gives relative differences of about 1e-6 through 152 layers; torchvision's net padded as flax's 'SAME' (one pixel
off in the stride-2 blocks) differs from ours by about 3e-1 (ResNet-18, -50: 100 classes), and a transposed kernel or
a swapped BN statistic more still.
"""

import json
import sys

import jax
import numpy as np
import pytest
import torch
import torchvision

from helpers import SHARED_DATA, evaluate_in_process, numpy_state, pad_as_flax_same, random_torchvision, run_cli
from helpers import train_in_process
from resnet_jax import config_lib, convert, models

SAMPLES = SHARED_DATA / "imagenet-sample"


def our_logits(model_config, variables, x):
  model = models.create_model(model_config)
  with jax.default_matmul_precision("highest"):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


# ResNet-101 and -152 repeat ResNet-50's bottleneck blocks (more of them): `make test-slow` checks them too.
@pytest.mark.parametrize(
    "depth", [18, 34, 50, pytest.param(101, marks=pytest.mark.slow), pytest.param(152, marks=pytest.mark.slow)]
)
def test_logits_equal_torchvision(depth):
  net = random_torchvision(depth, num_classes=100)
  model_config, variables = convert.from_torchvision(net.state_dict())  # torch tensors are accepted
  assert (model_config.depth, model_config.shortcut, model_config.stride_placement) == (depth, "B", "v1.5")
  assert model_config.num_classes == 100
  x = np.random.default_rng(depth).standard_normal((2, 64, 64, 3), dtype=np.float32)
  theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
  ours = our_logits(model_config, variables, x)
  scale = np.abs(theirs).max()
  assert np.abs(ours - theirs).max() <= 1e-4 * scale
  if depth in (18, 50):  # the check can fail: flax's 'SAME' padding is off by a pixel in every stride-2 block
    same = pad_as_flax_same(net)(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().numpy()
    assert np.abs(ours - same).max() > 1e-2 * scale


@pytest.mark.parametrize("depth", [18, 50])
def test_round_trip_is_identical_and_loads_strictly(depth, tmp_path):
  sd = numpy_state(random_torchvision(depth))
  model_config, variables = convert.from_torchvision(sd)
  back = convert.to_torchvision(model_config, variables)
  assert set(back) == set(sd)
  for k, v in sd.items():
    if not k.endswith("num_batches_tracked"):
      assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
  again = convert.from_torchvision(back)[1]
  assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))
  for suffix in (".safetensors", ".pth"):
    path = str(tmp_path / f"w{suffix}")
    convert.save_state_dict(back, path)
    net = getattr(torchvision.models, f"resnet{depth}")()
    net.load_state_dict({k: torch.as_tensor(v) for k, v in convert.load_state_dict(path).items()}, strict=True)


def test_option_c_is_inferred():
  sd = numpy_state(random_torchvision(18))
  net = models.imagenet_net(18, shortcut="C", stride_placement="v1.5")
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32)))
  for name in ("layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"):  # a projection on every block
    block = shapes["params"][f"stage{name[5]}_block{int(name[-1]) + 1}"]["shortcut"]
    width = block["proj_conv"]["kernel"].shape[-1]
    sd[f"{name}.downsample.0.weight"] = np.zeros((width, width, 1, 1), np.float32)
    for leaf, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
      sd[f"{name}.downsample.1.{leaf}"] = np.full(width, value, np.float32)
  assert convert.from_torchvision(sd)[0].shortcut == "C"


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: {"weight": np.zeros(3)}, "not a torchvision/timm ResNet state dict"),
        (
            lambda: numpy_state(torchvision.models.wide_resnet50_2()),
            "128 output channels, torchvision's ResNet-50 has 64",
        ),
        (lambda: numpy_state(torchvision.models.resnext50_32x4d()), "grouped convolution (ResNeXt?)"),
        (
            lambda: {k: v for k, v in numpy_state(random_torchvision(18)).items() if k != "layer2.1.bn2.running_var"},
            "missing keys for ResNet-18 (option B): layer2.1.bn2.running_var",
        ),
        (lambda: {**numpy_state(random_torchvision(18)), "extra.weight": np.zeros(1)}, "unexpected keys for ResNet-18"),
        (
            lambda: {**numpy_state(random_torchvision(18)), "layer3.0.conv2.weight": np.zeros((256, 256, 5, 5))},
            "layer3.0.conv2.weight: (256, 256, 5, 5) in the file, (256, 256, 3, 3) expected",
        ),
        (
            lambda: {k: v for k, v in numpy_state(random_torchvision(18)).items() if not k.startswith("layer4.1.")},
            "basic blocks per stage [2, 2, 2, 1]",
        ),
    ],
)
def test_bad_state_dicts_name_the_problem(make, needle):
  with pytest.raises(convert.ConversionError) as e:
    convert.from_torchvision(make())
  assert needle in str(e.value)


def test_export_refuses_what_torchvision_cannot_hold():
  c = config_lib.imagenet(50).model  # the paper's v1 bottlenecks
  with pytest.raises(convert.ConversionError, match="stride_placement='v1'.*v1.5"):
    convert.to_torchvision(c, {"params": {}, "batch_stats": {}})
  with pytest.raises(convert.ConversionError, match="shortcut='A'"):
    convert.to_torchvision(config_lib.imagenet(18).model, {"params": {}, "batch_stats": {}})


def test_files_errors(tmp_path, monkeypatch):
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"not safetensors")
  with pytest.raises(convert.ConversionError, match="bad.safetensors: unreadable"):
    convert.load_state_dict(str(bad))
  with pytest.raises(convert.ConversionError, match="no such file"):
    convert.load_state_dict(str(tmp_path / "missing.pth"))
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
  with pytest.raises(convert.ConversionError, match=r"need PyTorch \(pip install -e '.\[torch\]'.*safetensors"):
    convert.load_state_dict(str(tmp_path / "w.pth"))


def test_cli_round_trip_evaluate_predict_and_fine_tune(fake, tmp_path):
  """from-torchvision -> evaluate -> predict -> fine-tune with main -> to-torchvision.

  convert (both ways) and predict are the commands themselves (the suite's only runs of convert, and of predict
  with unreadable images); evaluation and fine-tuning run in this process as their commands run them
  (tests/test_imagenet.py runs the evaluate command, other tests the training command), which saves starting
  Python and JAX and loading the compiled ResNet-18 for each.
  """
  sd = numpy_state(random_torchvision(18))
  weights, workdir = tmp_path / "r18.safetensors", tmp_path / "run"
  convert.save_state_dict(sd, str(weights))
  out = run_cli("resnet_jax.convert", "from-torchvision", weights, f"--workdir={workdir}")
  assert "ResNet-18 (v1.5, option B, 1000 classes)" in out.stdout
  config = json.loads((workdir / "config.json").read_text())
  assert config["normalization"] == "torchvision" and config["eval_resize"] == 256 and config["image_size"] == 224
  assert config["model"]["stride_placement"] == "v1.5" and config["model"]["shortcut"] == "B"
  with pytest.raises(convert.ConversionError, match="already holds checkpoints; choose an empty --workdir"):
    convert.write_workdir(config_lib.resolve(config_lib.imagenet_torchvision(18)), {}, str(workdir))  # at once

  (row,) = evaluate_in_process(
      workdir,
      "--config=configs/imagenet_torchvision.py:18",
      f"--config.data_dir={fake['data_dir']}",
      "--config.eval_batch_size=10",
  )
  assert row["count"] == fake["num_val"] and row["protocol"] == "single"

  images = sorted(SAMPLES.glob("*.JPEG"))[:2]
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(images[0].read_bytes()[:2000])
  out = run_cli(
      "resnet_jax.predict",
      f"--workdir={workdir}",
      "--json",
      "--top=3",
      images[0],
      broken,
      images[1],
      check=False,
  )
  assert out.returncode == 2 and "Traceback" not in out.stderr
  rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
  assert [r["image"] for r in rows] == [str(images[0]), str(images[1])]
  assert all(len(r["top"]) == 3 and r["top"][0]["label"].startswith("n") for r in rows)
  assert "broken.jpg" in out.stderr  # a path that does not exist stops predict at once: tests/test_cli.py

  train_in_process(
      "--config=configs/imagenet_torchvision.py:18",
      f"--workdir={workdir}",
      f"--config.data_dir={fake['data_dir']}",
      "--config.batch_size=4",
      "--config.num_train_steps=2",
      "--config.image_size=32",
      "--config.eval_resize=36",
      "--config.eval_batch_size=10",
      "--config.log_every_steps=1",
      "--config.eval_every_steps=2",
      "--config.checkpoint_every_steps=2",
      "--config.learning_rate=0.001",
  )
  results = json.loads((workdir / "results.json").read_text())
  assert results["resumed_from_step"] == 0 and results["steps"] == 2

  out_file = tmp_path / "back.pth"
  run_cli("resnet_jax.convert", "to-torchvision", f"--workdir={workdir}", out_file)
  tuned = torch.load(out_file, weights_only=True)
  torchvision.models.resnet18().load_state_dict(tuned, strict=True)
  changed = [k for k in sd if "num_batches" not in k and not np.array_equal(tuned[k].numpy(), sd[k])]
  assert "fc.weight" in changed and "conv1.weight" in changed  # fine-tuning moved the converted weights


def test_predict_preprocessing_is_torchvisions_eval_transform():
  """What predict (and evaluate's single crop) feeds a converted network: torchvision's own eval transform, up to
  the resampling of two bilinear antialiased resizers (TensorFlow's and Pillow's, about a grey level on average).
  Another normalisation or a crop off by a few pixels differs by far more."""
  from PIL import Image
  from torchvision import transforms
  from resnet_jax import inference, predict

  theirs_fn = transforms.Compose(
      [
          transforms.Resize(256),
          transforms.CenterCrop(224),
          transforms.ToTensor(),
          transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
      ]
  )
  ours_fn = inference.preprocessor(config_lib.imagenet_torchvision(18), None)
  for path in sorted(SAMPLES.glob("*.JPEG"))[:3]:
    image = predict.read_image(str(path))
    theirs = theirs_fn(Image.fromarray(image)).permute(1, 2, 0).numpy()
    ours = ours_fn(image)
    assert ours.shape == theirs.shape == (224, 224, 3)
    assert np.abs(ours - theirs).mean() < 0.03  # normalised units: 0.03 x 0.226 x 255 = 1.7 grey levels
    assert np.abs(ours[:, 4:] - theirs[:, :-4]).mean() > 2 * np.abs(ours - theirs).mean()
