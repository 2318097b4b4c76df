"""TrainState, the pure train and eval steps, and the training loop.

`train_step(state, batch, rng) -> (state, metrics)` knows nothing about devices; `compile_steps` compiles it in
`jax.jit` over a device mesh (the default) or in `jax.pmap` (resnet_jax.compiled_steps), running
config.steps_per_call of them in one compiled call on batches drawn on the devices; `inputs.Data` is the run's
input, whatever the data set and backend.
`train_and_evaluate(config, workdir)` is what `python -m resnet_jax.main` runs: it resumes from the workdir's
newest checkpoint, trains, evaluates, writes metrics (TensorBoard, console, metrics.jsonl) and results.json.
"""

import functools
import json
import logging
import time
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics

from resnet_jax import checkpoint as ckpt_lib
from resnet_jax import cluster, compiled_steps, config_lib, cpu, errors, hang, inputs, models, parallel, pieces
from resnet_jax import preemption, rundir, tracing
from resnet_jax import writers


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  error: metrics.Average.from_output("error")
  grad_norm: metrics.Average.from_output("grad_norm")


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  error: metrics.Average.from_output("error")


# ----------------------------------------------------------------------------------------------------------
# Optimiser.


def make_schedule(config) -> optax.Schedule:
  """Optional warm-up (constant, as the paper's ResNet-110, or linear), then step decay or cosine decay."""
  lr, n, w = config.learning_rate, config.num_train_steps, int(config.warmup_steps)
  if config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, n - w))
  else:
    scales = {}
    for b in config_lib.lr_boundaries(config):
      if b > w:
        scales[b - w] = scales.get(b - w, 1.0) * config.lr_decay_factor
    main = optax.piecewise_constant_schedule(lr, scales)
  if not w:
    return main
  if config.warmup_mode == "constant":
    warm = optax.constant_schedule(config.warmup_learning_rate)
  else:
    warm = optax.linear_schedule(config.warmup_learning_rate, lr, w)
  return optax.join_schedules([warm, main], [w])


def weight_decay_mask(params, config):
  if config.weight_decay_bn_and_bias:
    return jax.tree.map(lambda _: True, params)
  return flax.traverse_util.path_aware_map(lambda path, _: path[-1] == "kernel", params)


def make_optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum; weight decay added to the gradient (L2 in the loss), as the paper's Caffe/Torch runs."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=functools.partial(weight_decay_mask, config=config)),
      optax.sgd(make_schedule(config), momentum=config.momentum, nesterov=config.nesterov),
  )


# ----------------------------------------------------------------------------------------------------------
# Pure steps.


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def init_state(model, tx, config, rng) -> TrainState:
  x = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  variables = model.init(rng, x, train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
  )


def train_step(state: TrainState, batch, rng, *, model, tx, schedule, forward=None, axis_name: str | None = None):
  """One SGD step on a batch. Returns (new_state, metrics).

  `forward(params, batch_stats, images) -> (logits, new_batch_stats)` defaults to the model's training-mode
  apply; the parallel layer swaps in a per-device-BN forward. Under pmap, `axis_name` averages gradients,
  metrics and BN statistics over devices. The update is applied only when the loss and the gradient norm are
  finite, so a NaN never reaches the parameters; the metrics say whether it happened.
  """
  del rng  # No stochastic layers in these nets; kept for the step signature (fold in state.step if needed).
  if forward is None:

    def forward(params, batch_stats, images):
      logits, upd = model.apply(
          {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      return logits, upd["batch_stats"]

  def loss_fn(params):
    logits, new_stats = forward(params, state.batch_stats, batch["image"])
    loss = cross_entropy(logits, batch["label"]).mean()
    return loss, (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  error = jnp.mean(jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
  if axis_name is not None:
    grads, loss, error, new_stats = jax.lax.pmean((grads, loss, error, new_stats), axis_name)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(new_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
  )
  m = TrainMetrics.single_from_model_output(
      loss=jnp.where(finite, loss, 0.0),
      error=jnp.where(finite, error, 0.0),
      grad_norm=jnp.where(finite, grad_norm, 0.0),
  )
  step_info = {"loss": loss, "nonfinite": (~finite).astype(jnp.int32), "learning_rate": schedule(state.step)}
  return new_state, (m, step_info)


def eval_step(state: TrainState, batch, *, model, axis_name: str | None = None):
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
  loss = cross_entropy(logits, batch["label"])
  error = (jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
  m = EvalMetrics.single_from_model_output(loss=loss, error=error, mask=batch["mask"])
  if axis_name is not None:
    m = jax.tree.map(lambda x: jax.lax.psum(x, axis_name), m)
  return m


# ----------------------------------------------------------------------------------------------------------
# Compiled steps (resnet_jax.compiled_steps: jit over a mesh, or pmap).


def make_model(config, bn_axis_name=None, *, plan: cpu.Plan | None = None):
  """The run's network: config.model in the config's precision, with the platform plan's formulations."""
  return models.create_model(
      config.model,
      half_precision=config.half_precision,
      bn_axis_name=bn_axis_name,
      **(plan.model_kwargs() if plan else {}),
  )


def compile_steps(config, tx, schedule, *, mesh=None, model_factory=None) -> compiled_steps.CompiledSteps:
  """train_step and eval_step compiled for config.parallelism over `mesh` (all devices by default).

  `model_factory(bn_axis_name)` defaults to make_model with the platform plan's formulations (resnet_jax.cpu).
  """
  mesh = mesh if mesh is not None else parallel.make_mesh()
  plan = cpu.plan(config, platform=mesh.devices.flat[0].platform, device_count=mesh.size)
  preprocess = inputs.device_preprocessing(config)
  return compiled_steps.CompiledSteps(
      config,
      mesh=mesh,
      plan=plan,
      model_factory=model_factory or functools.partial(make_model, config, plan=plan),
      train_step=_on_preprocessed(functools.partial(train_step, tx=tx, schedule=schedule), preprocess),
      eval_step=_on_preprocessed(eval_step, preprocess),
  )


def _on_preprocessed(step, preprocess):
  """`step` applied to the batch as the devices preprocess it (inputs.device_preprocessing; None: as it came)."""
  if preprocess is None:
    return step
  return lambda state, batch, *args, **kwargs: step(state, preprocess(batch), *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# The loop.


def init_host_state(model, tx, config, *, compiler_options: dict | None = None) -> TrainState:
  """The initial state on the host, computed by one compiled program (`compiler_options`: the platform plan's
  `init_options`, which make it compile faster without changing a bit)."""
  init = jax.jit(functools.partial(init_state, model, tx, config), compiler_options=compiler_options or None)
  return jax.device_get(init(jax.random.key(config.seed)))


def abstract_host_state(model, tx, config) -> TrainState:
  """init_host_state's shapes and dtypes, without computing it: what a checkpoint is restored into.

  Restoring needs no initial values, and computing them means compiling an initialiser per parameter (seconds,
  more for deep nets), which a resumed run or a command that loads a trained workdir would throw away.
  """
  return jax.eval_shape(lambda: init_state(model, tx, config, jax.random.key(config.seed)))


def _fmt_eta(seconds: float) -> str:
  """A duration as a person reads it ('15 h 03 min', '3 min 20 s', '40 s'), never as a clock time ('15:02:40')."""
  seconds = round(max(0.0, seconds))
  if seconds >= 3600:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"
  if seconds >= 60:
    return f"{seconds // 60} min {seconds % 60:02d} s"
  return f"{seconds} s"


def evaluate_split(compiled: compiled_steps.CompiledSteps, state, data: inputs.Data, progressed=lambda: None) -> dict:
  """config.eval_split's loss, error and count, as training logs them; `progressed` is called at each batch
  (hang.ProgressWatch)."""
  total = None
  for batch in data.eval_batches():
    m = compiled.eval_on_batch(state, batch)
    total = m if total is None else total.merge(m)
    progressed()
  out = total.compute()
  count = int(jax.device_get(total.loss.count))
  return {
      "eval_loss": float(out["loss"]),
      "eval_error": float(out["error"]),
      "eval_accuracy": 1.0 - float(out["error"]),
      "eval_count": count,
  }


class TrainLog:
  """The training metrics between two log lines: merged on the devices, fetched once per line, checked for
  non-finite steps (returned to the loop, which stops, or counted with skip_nonfinite), written and printed with
  img/s and the time left."""

  def __init__(self, config, new_window):
    self.config, self.new_window = config, new_window
    self.window, self.infos, self.last_finite, self.skipped = new_window(), [], {}, 0
    self.restart_clock()

  def restart_clock(self):
    """Called after logging and evaluation, which the next window's img/s leaves out."""
    self.t0 = time.time()

  def add(self, window, infos):
    """The window with the latest steps' metrics merged in (CompiledSteps.train), and those steps' infos (stacked)."""
    self.window = window
    self.infos.append(infos)

  def flush(self, step: int) -> tuple[dict, list]:
    """(the window's scalars, logged; []), or ({}, [(step, loss), ...]) for its non-finite steps unless
    skip_nonfinite skips them: the loop stops there, and last_finite stays the previous window's."""
    config = self.config
    infos = {k: np.concatenate([x[k] for x in jax.device_get(self.infos)]) for k in self.infos[0]}
    n = len(infos["loss"])
    first = step - n + 1
    bad = [(int(first + i), infos["loss"][i]) for i in np.flatnonzero(infos["nonfinite"])]
    self.skipped += len(bad)
    if bad and not config.skip_nonfinite:
      return {}, bad
    elapsed = time.time() - self.t0
    computed = self.window.compute()
    scalars = {
        "train_loss": float(computed["loss"]),
        "train_error": float(computed["error"]),
        "grad_norm": float(computed["grad_norm"]),
        "learning_rate": float(infos["learning_rate"][-1]),
        "images_per_sec": n * config.batch_size / max(elapsed, 1e-9),
        "host_rss_mb": pieces.host_rss_mb(),  # this process's; flat over a long run, or something leaks
    }
    if config.skip_nonfinite:
      scalars["skipped_nonfinite"] = float(self.skipped)
    self.last_finite = {k: round(v, 6) for k, v in scalars.items()} | {"step": step}
    remaining = (config.num_train_steps - step) * elapsed / max(n, 1)
    logging.info(
        "step %d/%d  loss %.4f  train error %.4f  lr %.4g  %.0f img/s  %s left",
        step,
        config.num_train_steps,
        scalars["train_loss"],
        scalars["train_error"],
        scalars["learning_rate"],
        scalars["images_per_sec"],
        _fmt_eta(remaining),
    )
    self.window, self.infos = self.new_window(), []
    return scalars, []


def _nonfinite_error(bad: list, last_finite: dict, checkpointer, workdir: str) -> errors.NonFiniteError:
  """The error that stops training at the first of TrainLog.flush's non-finite (step, loss)."""
  step, loss = bad[0]
  newest = checkpointer.all_steps()
  return errors.NonFiniteError(
      f"non-finite loss or gradient at step {step} (loss {loss}); the update was not applied. Last finite metrics: "
      f"{last_finite or 'none yet'}. Newest good checkpoint: "
      + (f"{workdir}/checkpoints/{newest[-1]}" if newest else "none")
      + ". Lower the learning rate, or set --config.skip_nonfinite=True to skip such updates."
  )


def _restore_or_init(compiled: compiled_steps.CompiledSteps, tx, config, checkpointer, workdir: str):
  """(state on the devices, its step): the newest readable checkpoint of the workdir, or a fresh init."""
  abstract = compiled.abstract_global(abstract_host_state(compiled.model, tx, config))
  restored, start_step = checkpointer.restore_latest(abstract, ckpt_lib.meta_for(config))
  if restored is None:
    logging.info(
        "no checkpoint in %s: a new run, the network initialised from seed %d", checkpointer.directory, config.seed
    )
    initial = init_host_state(compiled.model, tx, config, compiler_options=compiled.plan.init_options)
    return compiled.to_device(initial), 0
  logging.info("resumed from %s/checkpoints/%d", workdir, start_step)
  return compiled.from_global(restored), start_step


def _start_files(config, run: rundir.RunDir, start_step: int, is_chief: bool, norm):
  """metrics.jsonl cut back to the restored step, config.json, the input statistics (`norm`, CIFAR's; None for
  ImageNet, whose are constants of the config), and the metric writers."""
  if is_chief:
    run.truncate_metrics(start_step)
    run.write_config(config)
    if norm is not None:
      run.write_normalization(norm.mean, norm.std)
  writer = writers.make_writer(run, is_chief, tensorflow=config.input_backend != "device")
  if start_step == 0:
    fields = config_lib.flatten(json.loads(config.to_json_best_effort()))
    writer.write_hparams({k: v for k, v in fields.items() if isinstance(v, (int, float, str, bool))})
  return writer


def call_lengths(start_step: int, num_train_steps: int, steps_per_call: int):
  """(first step, number of steps) of each compiled call from start_step to num_train_steps.

  A call ends at the next multiple of steps_per_call (or at num_train_steps), so that the log, eval and checkpoint
  steps, multiples of it, fall between calls; a run resumed from a step that is not a multiple starts with a
  shorter call, as does a last call when num_train_steps is not a multiple (each other length compiles once).
  """
  step = start_step
  while step < num_train_steps:
    n = min(steps_per_call - step % steps_per_call, num_train_steps - step)
    yield step, n
    step += n


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, deadline: float | None = None) -> dict:
  """Trains (resuming from workdir/checkpoints if present) and evaluates; returns results.json's content.

  `config` is resolved (config_lib.resolve, as cli.start returns it); here it is checked against the devices too.
  `deadline` (a time.time(); `--stop_after`): stop at the first call boundary after it, as on SIGTERM. Each call
  appends its piece (steps, seconds, machine, how it ended) to WORKDIR/pieces.jsonl. A finished run (results.json
  of num_train_steps of this network) is not touched: its results are logged in one line and returned.
  """
  t_start = time.time()
  config_lib.validate(config)
  run = rundir.RunDir(workdir)
  workdir = run.name
  finished = _finished_results(config, run)
  if finished is not None:  # before any data or compilation: a rerun of a finished run changes nothing
    logging.info(
        "%s is finished: %s; nothing trained or evaluated (a larger --config.num_train_steps trains on)",
        workdir,
        _summary(finished, run),
    )
    return finished
  is_chief = jax.process_index() == 0
  run.check_writable()
  cluster.check_shared(run)

  # Set up: the data on the mesh, the compiled steps, the state (restored or new), the metric files.
  mesh = parallel.make_mesh()
  data = inputs.Data(config, mesh)
  tx = make_optimizer(config)
  compiled = compile_steps(config, tx, make_schedule(config), mesh=mesh)
  logging.info(
      "platform plan: %s; %d training step(s) per compiled call", compiled.plan.describe(), compiled.steps_per_call
  )
  checkpointer = ckpt_lib.Checkpointer(run.checkpoints, max_to_keep=config.keep_checkpoints)
  state, start_step = _restore_or_init(compiled, tx, config, checkpointer, workdir)
  writer = _start_files(config, run, start_step, is_chief, getattr(data, "norm", None))
  log = TrainLog(config, lambda: compiled.place_window(TrainMetrics.empty()))
  saved = set(checkpointer.all_steps())

  def save(step, force=False):
    if step not in saved:
      checkpointer.save(step, compiled.to_global(state), ckpt_lib.meta_for(config), force=force)
      saved.add(step)

  # Train, logging, evaluating and saving between calls; a signal saves the step reached and stops.
  rng = jax.random.key(config.seed)
  eval_results, step = {}, start_step
  stop = preemption.StopRequest(deadline, agree_every=config.log_every_steps)
  devices = jax.devices()
  piece = pieces.Piece(
      run.name, start_step, started=t_start, jax=jax.__version__, devices=f"{len(devices)} x {devices[0].device_kind}"
  )
  outcome = "error"
  watch = hang.ProgressWatch(config.hang_timeout_s, run.name, jax.process_index())
  if config.hang_timeout_s > 0:
    watch.start()
  profile = tracing.StepProfile(config, run.name)
  previous = None  # the outputs of the call before the one in flight
  if start_step < config.num_train_steps:
    logging.info(
        "training steps %d to %d: compiling the train step first (the first call takes a while), then a line every "
        "%d steps",
        start_step + 1,
        config.num_train_steps,
        config.log_every_steps,
    )
  try:
    for first, n in call_lengths(start_step, config.num_train_steps, compiled.steps_per_call):
      profile.before_call(first, n)
      state, window, infos = compiled.train(state, log.window, data, first, n, rng)  # first == state.step
      profile.after_call(first + n, infos)
      if previous is not None:
        # At most one call queued behind the one running: a signal or a deadline is answered at the next call
        # instead of at the next logged step (to which the host would run ahead), and a hang is seen.
        jax.block_until_ready(previous)
        watch.arm()
      previous = infos
      log.add(window, infos)
      step = first + n
      is_last = step == config.num_train_steps
      scalars = {}
      if step % config.log_every_steps == 0 or is_last:
        scalars, bad = log.flush(step)
        if bad:
          raise _nonfinite_error(bad, log.last_finite, checkpointer, workdir)
      if step % config.eval_every_steps == 0 or is_last:
        eval_results = evaluate_split(compiled, state, data, watch.progressed)
        scalars.update(eval_results)
        logging.info(
            "step %d  eval error %.4f  loss %.4f  (%d examples)",
            step,
            eval_results["eval_error"],
            eval_results["eval_loss"],
            eval_results["eval_count"],
        )
      if scalars:
        writer.write_scalars(step, scalars)
        log.restart_clock()
      if step % config.checkpoint_every_steps == 0 or is_last:
        save(step, force=is_last)
      watch.progressed()
      if stop.requested(first, step) and not is_last:
        save(step, force=True)
        checkpointer.close()
        outcome = "stop_after" if stop.deadline_passed else "signal"
        cause = "--stop_after's time limit passed" if stop.deadline_passed else "stopped by a signal"
        raise errors.Preempted(
            f"{cause} after step {step}; checkpoint saved in "
            f"{checkpointer.directory}/{step}. Rerun the same command to resume exactly there."
        )
    checkpointer.close()
    outcome = "finished"
  except BaseException as e:  # KeyboardInterrupt too: the piece says how it ended
    if outcome == "error":
      outcome = f"{type(e).__name__}: {errors.one_line(e, 200)}"
    raise
  finally:
    watch.stop()
    profile.stop()
    stop.restore()
    try:
      checkpointer.wait()  # on any exit, let pending async saves of good states finish
    except ckpt_lib.CheckpointSaveError:
      pass
    writer.flush()
    writer.close()
    if is_chief and step > start_step:
      piece.finish(step, outcome)

  # Report.
  if not eval_results and start_step >= config.num_train_steps:  # rerun of a finished run: just report
    eval_results = evaluate_split(compiled, state, data)
  results = _results(
      config,
      run,
      eval_results,
      step=step,
      start_step=start_step,
      t_start=t_start,
      skipped=log.skipped,
      is_chief=is_chief,
  )
  logging.info(
      "done: %s; look at them with python -m resnet_jax.report %s (tables, curves) and python -m resnet_jax.predict "
      "--workdir=%s IMAGE|FOLDER",
      _summary(results, run),
      workdir,
      workdir,
  )
  return results


def _finished_results(config, run: rundir.RunDir) -> dict | None:
  """results.json of a run that trained config.num_train_steps (or more) of this config's network, else None.

  A directory holding another network is not finished: restoring its checkpoint refuses it with the differences.
  """
  results = run.read_results()
  if not results or results.get("final_eval_error") is None or results.get("steps", 0) < config.num_train_steps:
    return None
  if ckpt_lib.model_differences(results["config"], ckpt_lib.meta_for(config)):
    return None
  return results


def _summary(results: dict, run: rundir.RunDir) -> str:
  """'error 8.75% on test (10000 examples) after 64000 steps, in WORKDIR/results.json'."""
  return (
      f"error {100 * results['final_eval_error']:.2f}% on {results['eval_split']} ({results['eval_count']} examples) "
      f"after {results['steps']} steps, in {run / rundir.RESULTS}"
  )


def _results(config, run: rundir.RunDir, eval_results, *, step, start_step, t_start, skipped, is_chief) -> dict:
  """results.json: the final model's evaluation (and a best one only on a validation split), written atomically."""
  results = {
      "final_eval_error": eval_results.get("eval_error"),
      "final_eval_accuracy": eval_results.get("eval_accuracy"),
      "final_eval_loss": eval_results.get("eval_loss"),
      "eval_count": eval_results.get("eval_count"),
      "eval_split": config.eval_split,
      "steps": int(step),
      "resumed_from_step": int(start_step),
      "wall_time_sec": time.time() - t_start,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "config": json.loads(config.to_json_best_effort()),
  }
  if config.skip_nonfinite:
    results["skipped_nonfinite_this_run"] = skipped
  rows = [r for r in run.read_metrics() if "eval_error" in r] if is_chief else []
  if rows and str(config.eval_split).startswith("train"):  # a minimum chosen on the test set is not reported
    best = min(rows, key=lambda r: r["eval_error"])
    results["best_validation_error"], results["best_validation_step"] = best["eval_error"], best["step"]
  if is_chief:
    run.write_results(results)
  return results
