r"""Evaluation of a trained workdir: CIFAR's test set, ImageNet's validation set under the paper's protocols
(single crop, 10-crop, fully-convolutional multi-scale).

    python -m resnet_jax.evaluate --workdir=runs/cifar20 [--json]
    python -m resnet_jax.evaluate --config=configs/imagenet_resnet18.py --workdir=runs/imagenet_resnet18 \
        --protocol=10crop [--json] [--config.data_dir=...]

A CIFAR net (or one trained on fake data) is evaluated as training evaluates it: each image of config.eval_split
whole, once (the paper's CIFAR errors are single-view; --protocol=single only), normalised with the statistics
saved in the workdir, read from config.data_file when the run had one, else tfds.

Loads the variables of the workdir's latest checkpoint (inference.load_for_inference), runs the model (train=False)
over every validation image exactly once, averages the softmax over each image's views (1, 10, or 2 flips x 5
scales) and reports top-1 / top-5 error (fractions; printed as percentages) and the number of images counted.

The views of an image come from resnet_jax.data.imagenet_eval.eval_dataset; see its docstring for the crops and for the
number of compilations each protocol needs (1, 1, and at most 25 with the default multi-scale settings).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from resnet_jax import config_lib, errors


class EvaluateError(errors.UserError, ValueError):
  """The workdir cannot be evaluated as asked (and what to ask instead)."""


# jax, TensorFlow (data.imagenet_eval) and the training stack are imported where they are used, so that the command
# answers a missing workdir or a bad flag at once.


def _forward_fn(model, compiler_options=None, normalize=None):
  import jax
  import jax.numpy as jnp

  def forward(variables, images):
    """Summed softmax over each element's views: images [b, (V,) H, W, 3] -> [b, classes] float32; `normalize`
    (ImageNet's uint8 views) turns them into the network's input first, on the devices."""
    if normalize is not None:
      images = normalize(images)
    if images.ndim == 4:
      images = images[:, None]
    b, v = images.shape[:2]
    logits = model.apply(variables, images.reshape((b * v,) + images.shape[2:]), train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return probs.reshape(b, v, -1).sum(axis=1)

  return jax.jit(forward, compiler_options=compiler_options or None)


def _local_sharding(batch_size):
  """Splits the batch over this process's devices when it divides evenly; else one device does all of it."""
  import jax

  devices = jax.local_devices()
  if len(devices) > 1 and batch_size % len(devices) == 0:
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    return (
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    )
  single = jax.sharding.SingleDeviceSharding(devices[0])
  return single, single


def _sum_over_processes(values: np.ndarray) -> np.ndarray:
  import jax

  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def evaluate_protocol(
    model,
    variables,
    config,
    protocol: str = "single",
    *,
    eval_fn_cache: dict | None = None,
    builder=None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict:
  """Top-1 / top-5 error of `model` with `variables` ({'params', 'batch_stats'}) on config.eval_split.

  `eval_fn_cache`: a dict kept by the caller (e.g. the training loop) so that repeated evaluations reuse the jitted
  forward pass and its compilations. Returns dict(top1_error, top5_error, count, protocol, views_per_image,
  input_shapes) where count is the number of validation images counted, over all processes, and input_shapes the
  number of distinct batch shapes (each compiles once).
  """
  import jax
  from resnet_jax import cpu, parallel
  from resnet_jax.data import imagenet_eval, imagenet_images, imagenet_prepare

  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = -(-int(config.eval_batch_size) // process_count)  # padded and masked, as every eval batch
  if process_count == jax.process_count():  # ... sized for the devices, which split it evenly
    local_batch = parallel.eval_batch(config, training_size=protocol == "single") // process_count
  builder = builder or imagenet_prepare.load_builder(config, process_count=process_count)
  n_local = imagenet_prepare.split_size(
      builder, config.eval_split, process_index=process_index, process_count=process_count
  )
  ds = imagenet_eval.eval_dataset(
      config,
      protocol=protocol,
      process_index=process_index,
      process_count=process_count,
      local_batch_size=local_batch,
      builder=builder,
  )

  cache = {} if eval_fn_cache is None else eval_fn_cache
  cached = cache.get("forward")
  if cached is None or cached[0] is not model or cached[1] != config.normalization:
    normalize = functools.partial(imagenet_images.normalize, mode=config.normalization)
    forward = _forward_fn(model, cpu.plan(config).options, normalize)
    cached = cache["forward"] = (model, config.normalization, forward)
  forward = cached[2]
  variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}

  num_classes = None
  prob_sums = labels = None
  views_seen = np.zeros(n_local, np.int64)
  shapes = set()
  placed_vars = {}
  for batch in ds.as_numpy_iterator():
    images = batch["image"]
    data_sharding, replicated = _local_sharding(images.shape[0])
    key = str(replicated)
    if key not in placed_vars:
      placed_vars[key] = jax.device_put(variables, replicated)
    shapes.add(images.shape)
    probs = np.asarray(forward(placed_vars[key], jax.device_put(images, data_sharding)))
    if prob_sums is None:
      num_classes = probs.shape[-1]
      prob_sums = np.zeros((n_local, num_classes), np.float32)
      labels = np.full(n_local, -1, np.int64)
    real = batch["mask"].astype(bool)
    idx = batch["index"][real]
    n_views = 1 if images.ndim == 4 else images.shape[1]
    np.add.at(prob_sums, idx, probs[real])
    np.add.at(views_seen, idx, n_views)
    labels[idx] = batch["label"][real]

  expected_views = (
      2 * len(config.multiscale_sizes) if protocol == "multiscale" else imagenet_eval.VIEWS_PER_IMAGE[protocol]
  )
  if n_local and (views_seen != expected_views).any():
    bad = np.flatnonzero(views_seen != expected_views)
    raise RuntimeError(
        f"{protocol}: {bad.size} of {n_local} images did not get exactly {expected_views} views "
        f"(e.g. image {bad[0]} got {views_seen[bad[0]]}); the eval input pipeline is inconsistent"
    )
  if n_local:
    top5 = np.argsort(-prob_sums, axis=1)[:, :5]
    correct1 = int((top5[:, 0] == labels).sum())
    correct5 = int((top5 == labels[:, None]).any(axis=1).sum())
  else:
    correct1 = correct5 = 0
  correct1, correct5, count = (int(x) for x in _sum_over_processes(np.array([correct1, correct5, n_local])))
  return {
      "protocol": protocol,
      "top1_error": 1.0 - correct1 / max(count, 1),
      "top5_error": 1.0 - correct5 / max(count, 1),
      "count": count,
      "views_per_image": expected_views,
      "input_shapes": len(shapes),
  }


def evaluate_cifar(model, variables, config, workdir: str) -> dict:
  """evaluate_protocol's dict for a CIFAR (or fake-data) net on config.eval_split: each image whole, once, padded
  and masked as training's evaluation, with the input statistics saved in `workdir`."""
  import jax
  from resnet_jax import cpu, inference, parallel
  from resnet_jax.data import cifar

  data = cifar.load_split(config, "eval")  # config.data_file where the run had one, else tfds
  norm = inference.cifar_normalizer(workdir)
  forward = _forward_fn(model, cpu.plan(config).options)
  variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
  correct1 = correct5 = 0
  shapes, placed_vars = set(), {}
  batches = cifar.eval_batches(
      data,
      norm,
      global_batch=parallel.eval_batch(config),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  for batch in batches:
    images = batch["image"]
    data_sharding, replicated = _local_sharding(images.shape[0])
    if str(replicated) not in placed_vars:
      placed_vars[str(replicated)] = jax.device_put(variables, replicated)
    shapes.add(images.shape)
    probs = np.asarray(forward(placed_vars[str(replicated)], jax.device_put(images, data_sharding)))
    real = batch["mask"].astype(bool)
    top5 = np.argsort(-probs[real], axis=1)[:, :5]
    labels = batch["label"][real]
    correct1 += int((top5[:, 0] == labels).sum())
    correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
  correct1, correct5 = (int(x) for x in _sum_over_processes(np.array([correct1, correct5])))
  count = len(data)  # every process holds the whole split and counted its share of it
  return {
      "protocol": "single",
      "top1_error": 1.0 - correct1 / max(count, 1),
      "top5_error": 1.0 - correct5 / max(count, 1),
      "count": count,
      "views_per_image": 1,
      "input_shapes": len(shapes),
  }


def evaluate_workdir(workdir: str, config, protocols=("single",)) -> Iterator[dict]:
  """evaluate_protocol's (ImageNet) or evaluate_cifar's result for each protocol, with the run's name as "workdir":
  what the command prints.

  The newest checkpoint of `workdir` is loaded once for all protocols (inference.load_for_inference, which imports
  the training stack), and the jitted forward pass is shared between them.
  """
  from resnet_jax import inference, models, rundir

  imagenet = inference.is_imagenet(config)
  if not imagenet and set(protocols) != {"single"}:  # before the checkpoint loads
    raise EvaluateError(
        f"--protocol={next(p for p in protocols if p != 'single')} is one of ImageNet's protocols; a CIFAR net is "
        "evaluated on each whole image once: --protocol=single (the default)"
    )
  variables = inference.load_for_inference(workdir, config)
  model = models.create_model(config.model, half_precision=config.half_precision)
  name, cache = rundir.RunDir(workdir).name, {}
  for protocol in protocols:
    logging.info("evaluating %s with protocol %s on %s", workdir, protocol, config.eval_split)
    if imagenet:
      result = evaluate_protocol(model, variables, config, protocol, eval_fn_cache=cache)
    else:
      result = evaluate_cifar(model, variables, config, workdir)
    yield result | {"workdir": name}


def format_result(r: dict) -> str:
  return (
      f"{r['protocol']}: top-1 error {100 * r['top1_error']:.2f}%, top-5 error {100 * r['top5_error']:.2f}% "
      f"on {r['count']} images ({r['views_per_image']} views each, {r['input_shapes']} input shapes)"
  )


_FLAGS: dict = {}


def define_flags():
  """Defines the CLI's flags. Only the program does this: importing the library must not, because absl flags are
  global and other modules (summary.py, main.py) define --config too."""
  if _FLAGS:
    return
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Config file or recipe (configs/); default: the workdir's config.json.", lock_config=True
  )
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Training directory whose latest checkpoint is evaluated.")
  _FLAGS["protocol"] = flags.DEFINE_multi_enum(
      "protocol",
      ["single"],
      list(config_lib.EVAL_PROTOCOLS),
      "Evaluation protocol; repeat the flag for several (one checkpoint load, one result each).",
  )
  _FLAGS["json"] = flags.DEFINE_bool("json", False, "Print one JSON object per protocol instead of a line of text.")
  from resnet_jax import cluster

  cluster.define_flags()


def main(argv):
  from resnet_jax import cli

  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  config, workdir, protocols = (_FLAGS[k].value for k in ("config", "workdir", "protocol"))
  if workdir is None:
    cli.fail(
        "--workdir is required, e.g. --workdir=runs/imagenet_resnet18 (with --config=FILE, or the "
        "workdir's config.json)"
    )
  from resnet_jax import rundir

  with cli.user_errors():
    run = rundir.RunDir(workdir)
    if not run.has_checkpoints():  # at once, before JAX starts; nothing is created
      cli.fail(
          f"no checkpoint in {run.name}: {run.checkpoints} does not exist; train first with "
          f"python -m resnet_jax.main --config=... --workdir={workdir}"
      )
  if config is None:
    with cli.user_errors():
      config = config_lib.load_workdir_config(workdir)
  config = cli.start(config, restart=__name__ == "__main__", join_cluster=True)
  import jax

  with cli.user_errors():
    for result in evaluate_workdir(workdir, config, protocols):
      if jax.process_index() == 0:  # every process computed the same totals
        print(json.dumps(result) if _FLAGS["json"].value else format_result(result), flush=True)


if __name__ == "__main__":
  from resnet_jax import cli

  define_flags()
  cli.run(main)
