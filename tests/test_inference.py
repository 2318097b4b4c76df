"""resnet_jax.inference: a workdir's network and preprocessing, which evaluate, predict, export and layer_responses
share."""

import numpy as np
import pytest

from helpers import SHARED_DATA, run_cli, small_run_args, train_in_process


def test_cifar_workdir_without_its_statistics_names_the_file_and_the_fix(tmp_path):
  """A CIFAR workdir without normalization.npz (trained before training saved it) is refused in one line by every
  command that runs it, before any training data is read; save_normalization, the fix the message names, writes
  the statistics training wrote."""
  from resnet_jax import config_lib, errors, evaluate, export, inference, layer_responses

  wd = tmp_path / "run"
  train_in_process(*small_run_args(wd, steps=2))
  path = wd / "normalization.npz"
  with np.load(path) as z:
    trained = {k: z[k] for k in ("mean", "std")}
  path.unlink()
  image = sorted((SHARED_DATA / "cifar10-lossless-test-samples").glob("*.png"))[0]
  proc = run_cli("resnet_jax.predict", f"--workdir={wd}", image, check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  fix = f"inference.save_normalization('{wd}')"
  assert f"{path} does not exist" in proc.stderr and fix in proc.stderr
  config = config_lib.load_workdir_config(str(wd))
  for refused in (
      lambda: list(evaluate.evaluate_workdir(str(wd), config)),
      lambda: export.input_normalization(config, str(wd)),
      lambda: layer_responses.measure(config, str(wd)),
  ):
    with pytest.raises(errors.NotFoundError, match="normalization.npz does not exist") as e:
      refused()
    assert fix in str(e.value)
  inference.save_normalization(str(wd))
  with np.load(path) as z:
    for k in ("mean", "std"):
      np.testing.assert_array_equal(z[k], trained[k])
