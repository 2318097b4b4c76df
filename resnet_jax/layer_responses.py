"""Figure 7: the standard deviation of each 3x3 conv layer's response, for one trained run.

    python -m resnet_jax.layer_responses --workdir=runs/degradation/plain56 [--config=configs/plain56.py] \\
        [--num_examples=N]

The response of a 3x3 conv layer is its batch-norm output, before the ReLU and (in a residual net) before the
addition of the shortcut: what the blocks in resnet_jax/models.py sow into the 'intermediates' collection. The
model is applied with `mutable=['intermediates']` (flax's capture; no copy of the model), in inference mode with
the checkpoint's BN statistics, over the eval split (config.eval_split, the test set by default), normalised with the
training split's statistics saved in the workdir (resnet_jax.inference); every example counts once (the last batch
is padded and masked).

The value per layer is the standard deviation of all of the layer's responses over the examples (every image,
position and channel together), as the paper's "std of layer responses". There is one value per 3x3 conv: two per
basic block, one per bottleneck block; layers are listed in network order (stage1_block1/conv1, .../conv2,
stage1_block2/conv1, ...), and again sorted by magnitude, largest first (the two panels of Figure 7).

Without --config, the run's own config.json (written by train_and_evaluate) is used. Writes
RUN/layer_responses.json; `python -m resnet_jax.report` draws Figure 7 from these files.

Early in training the running BN statistics lag behind the weights, and in inference mode the mismatch compounds
with depth, so a response's std can be far from the BN scale it was trained to. `--batch_stats` (a diagnostic)
normalises with each batch's own statistics instead and writes RUN/layer_responses_batch_stats.json, to tell
the two effects apart.
"""

from __future__ import annotations

import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, config_lib, models, rundir, storage
from resnet_jax.data import cifar

# The training stack (resnet_jax.inference: orbax, optax) is imported where the checkpoint is read, so that the
# command's usage errors answer without it.

RESULTS_FILE = "layer_responses.json"
BATCH_STATS_FILE = "layer_responses_batch_stats.json"  # --batch_stats: a diagnostic, not Figure 7
_BLOCK_RE = re.compile(r"^stage(\d+)_block(\d+)$")
_REST_RE = re.compile(r"^stage(\d+)_rest$")


def _conv_names(count: int) -> list[str]:
  """Names of the 3x3 convs whose responses a block sows, in the order it sows them."""
  # A basic block sows after both of its 3x3 convs; a bottleneck block after its one 3x3 (conv2).
  return {1: ["conv2"], 2: ["conv1", "conv2"]}.get(count) or [f"response{i + 1}" for i in range(count)]


def named_responses(intermediates) -> list[tuple[str, jax.Array]]:
  """[(layer name, response [B, H, W, C]), ...] in network order from a captured 'intermediates' tree.

  Unscanned blocks are `stageS_blockJ`; under model.scan the blocks 2..n of stage S are `stageS_rest/block` with
  their responses stacked on a leading axis, which is unstacked here into stageS_block2..n.
  """
  entries = []  # (stage, block, index within block, name, array)
  for key, sub in intermediates.items():
    m, r = _BLOCK_RE.match(key), _REST_RE.match(key)
    if m:
      stage, block = int(m.group(1)), int(m.group(2))
      responses = sub["response"]
      names = _conv_names(len(responses))
      for i, (name, y) in enumerate(zip(names, responses)):
        entries.append((stage, block, i, f"{key}/{name}", y))
    elif r:
      stage = int(r.group(1))
      responses = sub["block"]["response"]
      names = _conv_names(len(responses))
      n_rest = responses[0].shape[0]
      for j in range(n_rest):
        for i, (name, y) in enumerate(zip(names, responses)):
          entries.append((stage, j + 2, i, f"stage{stage}_block{j + 2}/{name}", y[j]))
    else:
      raise ValueError(f"unexpected module {key!r} in the captured intermediates")
  entries.sort(key=lambda e: e[:3])
  return [(name, y) for *_, name, y in entries]


def make_batch_stats_fn(model, batch_stats: bool = False):
  """jit: (variables, images, mask) -> (names, count, mean, M2) per 3x3 conv layer for one batch (float32).

  batch_stats=True normalises with each batch's own statistics (training mode; the updated running statistics
  are dropped) instead of the checkpoint's running statistics: early in training the two differ, and the
  difference shows how much of a response's std comes from running statistics that lag behind the weights.
  Padded examples would enter those batch statistics, so use it with full batches only.
  """
  names_box = []

  def fn(variables, images, mask):
    if batch_stats:
      _, state = model.apply(variables, images, train=True, mutable=["intermediates", "batch_stats"])
    else:
      _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    named = named_responses(state["intermediates"])
    if not names_box:
      names_box.append([n for n, _ in named])
    counts, means, m2s = [], [], []
    for _, y in named:
      y = y.astype(jnp.float32)
      w = jnp.broadcast_to(mask[:, None, None, None], y.shape)
      n = w.sum()
      mean = (w * y).sum() / jnp.maximum(n, 1.0)
      counts.append(n)
      means.append(mean)
      m2s.append((w * (y - mean) ** 2).sum())
    return jnp.stack(counts), jnp.stack(means), jnp.stack(m2s)

  jitted = jax.jit(fn)

  def run(variables, images, mask):
    out = jitted(variables, images, mask)
    return names_box[0], out

  return run


def combine(acc, batch):
  """Chan et al.'s parallel update of (count, mean, M2), element-wise over layers, in float64."""
  if acc is None:
    return tuple(np.asarray(x, np.float64) for x in batch)
  na, ma, qa = acc
  nb, mb, qb = (np.asarray(x, np.float64) for x in batch)
  n = na + nb
  safe = np.maximum(n, 1.0)
  delta = mb - ma
  return n, ma + delta * nb / safe, qa + qb + delta**2 * na * nb / safe


def response_stds(model, variables, batches, *, batch_stats: bool = False) -> tuple[list[str], np.ndarray, int]:
  """(layer names, std per layer, examples counted) over an iterable of {'image', 'mask'} batches."""
  fn = make_batch_stats_fn(model, batch_stats)
  acc, names, examples = None, None, 0
  for batch in batches:
    names, stats = fn(variables, jnp.asarray(batch["image"]), jnp.asarray(batch["mask"], jnp.float32))
    acc = combine(acc, jax.device_get(stats))
    examples += int(np.sum(batch["mask"]))
  if acc is None:
    raise ValueError("no examples to analyse: the eval split is empty")
  n, _, m2 = acc
  return names, np.sqrt(m2 / n), examples


def measure(config, workdir: str, *, num_examples: int | None = None, batch_stats: bool = False) -> dict:
  """Computes the response std of every 3x3 conv layer of the run's newest checkpoint; writes RESULTS_FILE
  (BATCH_STATS_FILE with batch_stats=True)."""
  from resnet_jax import inference

  t0 = time.time()
  variables = inference.load_for_inference(workdir, config)
  model = models.create_model(config.model, half_precision=config.half_precision)
  eval_data = cifar.load_split(config, "eval")  # CIFAR only: an ImageNet net's stops here
  norm = inference.cifar_normalizer(workdir)
  if num_examples is not None and num_examples < len(eval_data):
    eval_data = cifar.ArrayData(eval_data.images[:num_examples], eval_data.labels[:num_examples])
  batch_size = min(config.eval_batch_size, 500)
  if batch_stats:  # whole batches only: padding would enter the batch statistics
    keep = max(batch_size, len(eval_data) // batch_size * batch_size)
    eval_data = cifar.ArrayData(eval_data.images[:keep], eval_data.labels[:keep])
  batches = cifar.eval_batches(eval_data, norm, global_batch=batch_size)
  names, stds, count = response_stds(model, variables, batches, batch_stats=batch_stats)
  run = rundir.RunDir(workdir)
  step = (run.read_results() or {}).get("steps")
  m = config.model
  out = {
      "workdir": run.name,
      "model": f"{'resnet' if m.residual else 'plain'}{m.depth}",
      "family": m.family,
      "depth": m.depth,
      "residual": m.residual,
      "step": step,
      "split": config.eval_split,
      "bn_statistics": "batch" if batch_stats else "running",
      "num_examples": count,
      "layers": [{"index": i + 1, "name": n, "std": float(s)} for i, (n, s) in enumerate(zip(names, stds))],
      "std": [float(s) for s in stds],
      "std_sorted": sorted((float(s) for s in stds), reverse=True),
      "mean_std": float(np.mean(stds)),
      "seconds": time.time() - t0,
  }
  path = run / (BATCH_STATS_FILE if batch_stats else RESULTS_FILE)
  storage.write_json(path, out)
  out["path"] = os.fspath(path)
  return out


# ----------------------------------------------------------------------------------------------------------
# Command line.

_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Config that trained the run (default: RUN/config.json).", lock_config=True
  )
  _FLAGS["workdir"] = flags.DEFINE_string(
      "workdir", None, "Training run directory whose newest checkpoint is analysed."
  )
  _FLAGS["num_examples"] = flags.DEFINE_integer(
      "num_examples", None, "Analyse only the first N examples of the eval split."
  )
  _FLAGS["batch_stats"] = flags.DEFINE_bool(
      "batch_stats",
      False,
      "Diagnostic: normalise with each batch's statistics instead of the checkpoint's "
      "running ones; writes RUN/" + BATCH_STATS_FILE + ".",
  )


def main(argv):
  f = {name: holder.value for name, holder in _FLAGS.items()}
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  if not f["workdir"]:
    cli.fail("--workdir is required: the training run to analyse, e.g. runs/degradation/plain56")
  with cli.user_errors():
    config = f["config"] if f["config"] is not None else config_lib.load_workdir_config(f["workdir"])
  config = cli.start(config, restart=__name__ == "__main__")
  with cli.user_errors():
    out = measure(config, f["workdir"], num_examples=f["num_examples"], batch_stats=f["batch_stats"])
  print(
      f"{out['model']} (step {out['step']}): std of {len(out['std'])} 3x3 conv responses over "
      f"{out['num_examples']} examples of {out['split']!r}: mean {out['mean_std']:.3f}, "
      f"min {min(out['std']):.3f}, max {max(out['std']):.3f} ({out['bn_statistics']} BN statistics) -> "
      f"{out['path']}"
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
