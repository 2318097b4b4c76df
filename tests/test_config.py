"""The config's one path: resolved and checked once (config_lib.resolve, cli.start), a workdir's stored config filled
from its recipe (config_lib.fill, load_workdir_config), and one comparison of a stored config with a run's
(config_lib.differences, behind checkpoint.model_differences and sweep.config_conflicts)."""

import json

import pytest

from resnet_jax import checkpoint, cli, config_lib, errors


def _json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def test_resolve_scales_to_the_batch_checks_and_changes_nothing_the_second_time():
  c = config_lib.imagenet(50)
  c.batch_size = 1024
  resolved = config_lib.resolve(c)
  assert resolved.num_train_steps == 120 * config_lib.IMAGENET_TRAIN_SIZE // 1024 and resolved.learning_rate == 0.4
  assert c.num_train_steps is None and c.learning_rate == 0.1  # a copy
  assert _json(config_lib.resolve(resolved)) == _json(resolved)
  bad = config_lib.cifar(20)
  bad.momentum, bad.model.depth = 1.5, 21
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.resolve(bad)
  assert len(e.value.problems) == 2 and "momentum=1.5" in str(e.value) and "6n+2" in str(e.value)


def test_cli_start_returns_the_resolved_config():
  c = config_lib.imagenet(18)
  assert cli.start(c, restart=False).num_train_steps == 120 * config_lib.IMAGENET_TRAIN_SIZE // 256


def test_a_stored_config_is_filled_from_its_recipe(tmp_path):
  """A field that config.json lacks (written before the field existed) has its recipe's value; the stored values
  win, fields the code no longer has are kept, and the result is resolved as training had it."""
  stored = _json(config_lib.resolve(config_lib.cifar(56, residual=False)))
  stored["learning_rate"] = 0.05
  stored["cpu_convolutions"] = "eigen"  # an older name
  del stored["hang_timeout_s"], stored["model"]["zero_init_last_bn"], stored["cpu"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  c = config_lib.load_workdir_config(str(tmp_path))
  assert (c.model.depth, c.model.residual, c.learning_rate, c.cpu_convolutions) == (56, False, 0.05, "eigen")
  assert c.hang_timeout_s == 1800.0 and c.model.zero_init_last_bn is False and c.cpu.convolutions == "auto"
  # ImageNet: the resolved recipe, so that an older config without lr_reference_batch_size keeps its absolute lr.
  stored = _json(config_lib.resolve(config_lib.imagenet(34, shortcut="B")))
  stored.update(batch_size=512, learning_rate=0.2, num_train_steps=1000)
  del stored["lr_reference_batch_size"], stored["augmentation"]
  c = config_lib.fill(stored)
  assert (c.model.shortcut, c.learning_rate, c.num_train_steps, c.augmentation) == ("B", 0.2, 1000, "paper")
  assert _json(config_lib.resolve(c)) == _json(c)
  # A net converted from torchvision: that recipe's preprocessing.
  stored = _json(config_lib.resolve(config_lib.imagenet_torchvision(50)))
  del stored["augmentation"]
  assert config_lib.fill(stored).augmentation == "inception"
  (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 0.1}))
  with pytest.raises(errors.NotFoundError, match="holds no model.depth"):
    config_lib.load_workdir_config(str(tmp_path))


def test_differences_count_fields_both_hold_except_bookkeeping():
  wanted = config_lib.resolve(config_lib.cifar(20))
  stored = _json(wanted)
  stored.update(log_every_steps=7, host_malloc="system", learning_rate=0.5)
  stored["model"]["stride_placement"] = "v1.5"
  assert config_lib.differences(config_lib.fill(stored), wanted) == [
      ("learning_rate", 0.5, 0.1),
      ("model.stride_placement", "v1.5", "v1"),
  ]
  # The checkpoint's comparison is the model's part; a field its record lacks has the recipe's value.
  del stored["model"]["zero_init_last_bn"]
  wanted.model.zero_init_last_bn = True
  assert checkpoint.model_differences(stored, _json(wanted)) == [
      "model.stride_placement: checkpoint 'v1.5', this run 'v1'",
      "model.zero_init_last_bn: checkpoint False, this run True",
  ]
