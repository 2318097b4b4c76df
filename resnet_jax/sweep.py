"""Sweeps: a base config and a list of named overrides, run one after another through train.train_and_evaluate.

    python -m resnet_jax.sweep degradation --workdir=runs/degradation \\
        [--dry_run] [--only=plain*,resnet20] [--set=num_train_steps=2000 --set=data_dir=DIR] [--stop_after=2h30m]

The sweep is a name (`table6`: experiments/table6.py of the checkout that holds this package, from any folder, as
--config=cifar20 names a recipe) or the path of a sweep file; a name that is neither gets the list of the sweeps.

A sweep file is an ordinary config file (it defines `get_config()`, so `python -m resnet_jax.main
--config=SWEEP_FILE` trains its base config) that also defines `get_sweep()`, returning a list of `Run`s:

    def get_sweep():
      return [sweep.Run("plain20", {"model.residual": False}), sweep.Run("resnet20", {})]

A run is a readable name (its directory under --workdir), a dict of `field.path -> value` overrides of the base
config, and optionally `config_arg`, passed to `get_config(config_arg)` for a run whose base is another recipe
(`--config=FILE:ARG` on the command line). An `optional` run (ResNet-1202, say)
runs only when --only names it exactly. `product(...)` combines lists of runs, `overrides_between(a, b)` turns
"the recipe b" into overrides of the base a, so a sweep never restates what config_lib already says.

Every run's config is built from the exact command line that --dry_run prints (`python -m resnet_jax.main
--config=FILE[:ARG] --workdir=DIR/NAME --config.FIELD=VALUE ...`, parsed by the same ml_collections config_flags
as main) and checked against the overrides applied directly, so a printed command trains exactly the run the
sweep would. All runs are validated before the first one starts: an unknown field, a value of the wrong type, a
config_lib.validate failure, or a run directory holding a run of another config stops the sweep at once,
naming the run and the field. `--set=FIELD=VALUE` (repeatable) applies to every run and wins over the runs' own
values; its VALUE is parsed exactly like `--config.FIELD=VALUE`.

A run whose results.json says it finished num_train_steps is skipped; an interrupted one resumes from its newest
checkpoint (train_and_evaluate does that by itself). A run that stops on a non-finite loss is recorded and the
sweep goes on with the next; any other error stops the sweep, and so does a preemption (SIGTERM/SIGINT: the run
saves a checkpoint and the sweep exits with train's preemption status; rerun the same command to go on).
`--stop_after` stops the whole sweep the same way once that long has passed since it started, in a run or
between two runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.util
import itertools
import json
import os
import re
import shlex
import sys
import time
from typing import Any, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, cluster, config_lib, errors, pieces, rundir

# Sweep files are config files that import this module: JAX and the training stack are imported inside the
# functions that check and run the runs.

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(errors.UserError, ValueError):
  """The sweep cannot run as asked; the message names the run and the field, and the fix."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its name (directory), overrides of the base config, and an optional get_config arg."""

  name: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  config_arg: str | None = None
  optional: bool = False  # run only when --only names it exactly (e.g. ResNet-1202: days on one GPU)


@dataclasses.dataclass
class RunSpec:
  """A validated run: the config it trains, where, and the command that trains it on its own."""

  name: str
  config: ml_collections.ConfigDict  # resolved and checked (config_lib.resolve), as train_and_evaluate takes it
  workdir: str
  argv: list[str]  # arguments of `python -m resnet_jax.main`
  overrides: dict  # field -> value, the run's own and --set's (what differs from the base)

  @property
  def command(self) -> str:
    return shlex.join(["python", "-m", "resnet_jax.main", *self.argv])


# ----------------------------------------------------------------------------------------------------------
# Helpers for sweep files.


def product(*axes: Sequence[Run], sep: str = "_") -> list[Run]:
  """Every combination of one run from each axis: names joined with `sep`, overrides merged.

  product([Run("resnet20", {...}), Run("resnet56", {...})], [Run("optA", {...}), Run("optB", {...})]) gives
  resnet20_optA, resnet20_optB, resnet56_optA, resnet56_optB. Two axes setting one field is an error.
  """
  out = []
  for combo in itertools.product(*axes):
    overrides, args = {}, {r.config_arg for r in combo} - {None}
    for r in combo:
      clash = set(overrides) & set(r.overrides)
      if clash:
        raise SweepError(f"product: {', '.join(sorted(clash))} set by more than one axis in {[r.name for r in combo]}")
      overrides.update(r.overrides)
    if len(args) > 1:
      raise SweepError(f"product: runs {[r.name for r in combo]} ask for different bases {sorted(args)}")
    out.append(
        Run(
            sep.join(r.name for r in combo if r.name),
            overrides,
            args.pop() if args else None,
            optional=any(r.optional for r in combo),
        )
    )
  return out


def overrides_between(base, target) -> dict:
  """The overrides that turn config `base` into config `target` (both with the same fields)."""
  a, b = config_lib.flatten(base), config_lib.flatten(target)
  missing = sorted(set(b) - set(a))
  if missing:
    raise SweepError(f"overrides_between: fields {missing} are not in the base config")
  return {k: v for k, v in b.items() if a[k] != v or type(a[k]) is not type(v)}


# ----------------------------------------------------------------------------------------------------------
# Loading and validating a sweep.


# The sweep files: experiments/ of the checkout that holds this package (not installed with it).
EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def sweep_names() -> list[str]:
  """The names of experiments/'s sweep files (those defining get_sweep), or [] without a checkout."""
  if not os.path.isdir(EXPERIMENTS_DIR):
    return []
  names = []
  for f in sorted(os.listdir(EXPERIMENTS_DIR)):
    if f.endswith(".py"):
      with open(os.path.join(EXPERIMENTS_DIR, f)) as text:
        if "\ndef get_sweep(" in text.read():
          names.append(f[:-3])
  return names


def resolve_sweep_file(name_or_path: str) -> str:
  """A sweep's file: a path as given, or a bare name (`table6`) as experiments/NAME.py, as --config=cifar20
  names a recipe; from the repository root that is the relative path experiments/NAME.py, so that the commands
  and sweep.json read as they do when the path is typed. SweepError listing the sweeps when there is no such file.
  """
  if os.path.isfile(name_or_path):
    return name_or_path
  path = os.path.join(EXPERIMENTS_DIR, name_or_path + ".py")
  if re.fullmatch(r"\w+", name_or_path) and os.path.isfile(path):
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
  names = sweep_names()
  where = (
      f"the sweeps are {', '.join(names)} ({EXPERIMENTS_DIR}): give a name or the path of a sweep file"
      if names
      else f"sweeps live in experiments/ of a clone of resnet_jax, which {EXPERIMENTS_DIR} is not: give a path"
  )
  raise SweepError(f"no sweep file {name_or_path}; {where}")


def load_sweep_file(path: str):
  """The module of a sweep file (a path: resolve_sweep_file gives it)."""
  name = "resnet_jax_sweep_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for fn in ("get_config", "get_sweep"):
    if not callable(getattr(module, fn, None)):
      raise SweepError(f"sweep file {path} must define {fn}() (see resnet_jax/sweep.py's docstring)")
  return module


def format_value(field: str, value) -> str:
  """VALUE of `--config.FIELD=VALUE` that config_flags parses back to `value`."""
  if value is None:
    raise SweepError(f"{field}=None cannot be given on the command line; leave the field out of the overrides")
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (int, float, str)):
    return str(value) if isinstance(value, str) else repr(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  raise SweepError(f"{field}={value!r}: a {type(value).__name__} cannot be given on the command line")


def _close(field: str, config) -> str:
  match = difflib.get_close_matches(field, list(config_lib.flatten(config)), n=1)
  return f" (did you mean {match[0]!r}?)" if match else ""


def set_field(config, field: str, value) -> str | None:
  """Sets config.<field> = value; returns a problem ('unknown field', 'wrong type') instead of raising."""
  node, parts = config, field.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return f"unknown field {field!r}{_close(field, config)}"
    if i < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, ml_collections.ConfigDict):
    return f"{field!r} is a group of fields; set its fields one by one ({field}.NAME)"
  # ConfigDict lets a bool into an int field and back; a run's config should not.
  if old is not None and (isinstance(old, bool) != isinstance(value, bool)):
    return f"{field}={value!r}: wrong type {type(value).__name__}, the field holds {type(old).__name__}"
  try:
    node[parts[-1]] = value
  except TypeError:
    return f"{field}={value!r}: wrong type {type(value).__name__}, the field holds {type(old).__name__}"
  return None


def field_exists(config, field: str) -> bool:
  node = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return not isinstance(node, ml_collections.ConfigDict)


def get_field(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def parse_set(items: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for item in items:
    field, eq, value = item.partition("=")
    if not eq or not field:
      raise SweepError(f"--set={item}: write --set=FIELD=VALUE, e.g. --set=num_train_steps=2000")
    out.append((field.strip(), value))
  return out


def config_from_argv(argv: Sequence[str]) -> ml_collections.ConfigDict:
  """The config `python -m resnet_jax.main ARGV` trains (same config_flags definition as main.py)."""
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      "config", None, "config file", flag_values=fv, lock_config=True, sys_argv=["main", *argv]
  )
  flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
  fv(["main", *argv])
  return holder.value


def _json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def config_conflicts(stored: dict, wanted: dict) -> list[str]:
  """The fields (other than bookkeeping) in which a run directory's config, filled from its recipe as a workdir's
  is, differs from the run's (config_lib.differences)."""
  return [
      f"{k}: directory has {a!r}, this sweep {b!r}"
      for k, a, b in config_lib.differences(config_lib.fill(stored), wanted)
  ]


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
  """Runs whose names match one of the comma-separated glob patterns of --only (all when None).

  Optional runs are selected only by a pattern that is their exact name.
  """
  if not only:
    return [r for r in runs if not r.optional]
  patterns = [p.strip() for p in only.split(",") if p.strip()]
  picked = [
      r for r in runs if (r.name in patterns if r.optional else any(fnmatch.fnmatchcase(r.name, p) for p in patterns))
  ]
  if not picked:
    raise SweepError(f"--only={only} matches none of the runs {[r.name for r in runs]}")
  return picked


def build_runs(sweep_file: str, workdir: str, *, only: str | None = None, sets: Sequence[str] = ()) -> list[RunSpec]:
  """Loads, selects and validates the runs of a sweep (a path, or a name of experiments/); raises SweepError
  listing every problem found."""
  sweep_file = resolve_sweep_file(sweep_file)
  module = load_sweep_file(sweep_file)
  runs = list(module.get_sweep())
  names = [r.name for r in runs]
  problems = [f"run name {n!r}: use letters, digits, '_', '-' and '.'" for n in names if not _NAME_RE.match(n)]
  problems += [f"run name {n!r} appears {names.count(n)} times" for n in sorted(set(names)) if names.count(n) > 1]
  if problems:
    raise SweepError(f"sweep {sweep_file}:\n  - " + "\n  - ".join(problems))
  set_items = parse_set(sets)
  specs = []
  for run in select(runs, only):
    spec, run_problems = _build_run(module, sweep_file, workdir, run, set_items)
    problems += [f"run {run.name}: {p}" for p in run_problems]
    if spec is not None:
      specs.append(spec)
  if problems:
    raise SweepError(f"sweep {sweep_file}: nothing was run:\n  - " + "\n  - ".join(problems))
  return specs


def _build_run(module, sweep_file: str, workdir: str, run: Run, set_items) -> tuple[RunSpec | None, list[str]]:
  """(spec, []) for a valid run, else (None, problems)."""
  base_args = () if run.config_arg is None else (run.config_arg,)
  # 1. The overrides applied directly, with their Python types checked against the fields'.
  config = module.get_config(*base_args)
  config.lock()
  problems = [p for p in (set_field(config, f, v) for f, v in run.overrides.items()) if p]
  args = {}
  for field, value in run.overrides.items():
    try:
      args[field] = format_value(field, value)
    except SweepError as e:
      problems.append(str(e))
  for field, raw in set_items:
    if not field_exists(config, field):
      problems.append(f"--set={field}={raw}: unknown field {field!r}{_close(field, config)}")
    args.pop(field, None)
    args[field] = raw  # --set wins over the run's own value
  if problems:
    return None, problems
  # 2. The config that the run's own command line gives (what --dry_run prints, parsed as main parses it).
  config_path = sweep_file + (f":{run.config_arg}" if run.config_arg is not None else "")
  run_dir = os.path.join(workdir, run.name)
  argv = [f"--config={config_path}", f"--workdir={run_dir}"] + [f"--config.{k}={v}" for k, v in args.items()]
  try:
    parsed = config_from_argv(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    return None, [str(e).strip()]
  # 3. The two must agree, so that a printed command trains exactly this run.
  for field, _ in set_items:
    set_field(config, field, get_field(parsed, field))
  direct, from_argv = config_lib.flatten(_json(config)), config_lib.flatten(_json(parsed))
  mismatch = [k for k, v in direct.items() if from_argv.get(k) != v]
  if mismatch:
    return None, [
        f"the command line cannot express {mismatch} exactly; give these overrides values of the fields' own types"
    ]
  # 4. The config as the command resolves it (epochs to steps, lr scaled to the batch) and the training code's
  # checks, devices included (the batch as inputs.Data will check it); the run directory (if any) must hold a run
  # of this config.
  from resnet_jax import inputs

  try:
    resolved = config_lib.resolve(parsed, with_devices=True)
    inputs.check_batch(resolved)
  except config_lib.ConfigError as e:
    return None, ["; ".join(e.problems)]
  stored = rundir.RunDir(run_dir).stored_config()
  conflicts = config_conflicts(stored, resolved) if stored is not None else []
  if conflicts:
    return None, [
        f"{run_dir} holds a run of another config ({'; '.join(conflicts)}); use another --workdir "
        f"or move that directory aside"
    ]
  base = config_lib.flatten(_json(module.get_config(*base_args)))
  overrides = {k: v for k, v in from_argv.items() if base.get(k) != v}
  return RunSpec(run.name, resolved, run_dir, argv, overrides), []


# ----------------------------------------------------------------------------------------------------------
# Running.


def run_state(spec: RunSpec) -> tuple[str, int]:
  """('complete', steps) | ('partial', newest checkpoint step) | ('new', 0)."""
  run = rundir.RunDir(spec.workdir)
  steps = (run.read_results() or {}).get("steps")
  if steps is not None and steps == spec.config.num_train_steps:
    return "complete", steps
  steps = [int(d.name) for d in run.checkpoints.iterdir() if d.name.isdigit()] if run.has_checkpoints() else []
  return ("partial", max(steps)) if steps else ("new", 0)


def write_manifest(sweep_file: str, workdir: str, specs: Sequence[RunSpec], sets: Sequence[str]) -> None:
  """workdir/sweep.json: the sweep file and, per run, its --set values, overrides and command.

  Runs of earlier invocations (other --only selections, other --set values) keep their entries.
  """
  manifest = {"sweep_file": sweep_file, "runs": {}}
  old = rundir.read_manifest(workdir)
  if old and old.get("sweep_file") == sweep_file:
    manifest["runs"] = old.get("runs", {})
    for entry in manifest["runs"].values():
      entry.setdefault("set", old.get("set", []))
  for s in specs:
    manifest["runs"][s.name] = {"set": list(sets), "overrides": s.overrides, "command": s.command}
  rundir.write_manifest(workdir, manifest)


def run_sweep(specs: Sequence[RunSpec], *, log=print, deadline: float | None = None) -> list[dict]:
  """Runs the specs in order (skipping finished ones); returns one summary dict per run.

  `deadline` (a time.time()): the run in progress stops at it as on SIGTERM, and no run starts after it.
  """
  from resnet_jax import train

  summary = []
  for i, spec in enumerate(specs, 1):
    state, step = run_state(spec)
    head = f"[{i}/{len(specs)}] {spec.name}"
    if state == "complete":
      log(f"{head}: complete ({step} steps), skipped")
      summary.append({"name": spec.name, "status": "skipped", "steps": step})
      continue
    if deadline is not None and time.time() >= deadline:
      raise errors.Preempted(
          f"--stop_after's time limit passed before run {spec.name} started; rerun the same command to go on"
      )
    log(f"{head}: {'resuming from step ' + str(step) if state == 'partial' else 'starting'} -> {spec.workdir}")
    t0 = time.time()
    try:
      res = train.train_and_evaluate(spec.config, spec.workdir, deadline=deadline)
    except errors.NonFiniteError as e:
      log(f"{head}: FAILED after {time.time() - t0:.0f} s: {e}")
      summary.append({"name": spec.name, "status": "non-finite", "error": str(e)})
      continue
    log(
        f"{head}: done in {time.time() - t0:.0f} s, test error {100 * res['final_eval_error']:.2f}% "
        f"after {res['steps']} steps"
    )
    summary.append(
        {
            "name": spec.name,
            "status": "done",
            "steps": res["steps"],
            "final_eval_error": res["final_eval_error"],
            "seconds": time.time() - t0,
        }
    )
  return summary


# ----------------------------------------------------------------------------------------------------------
# Command line.

_FLAGS: dict = {}


def define_flags():
  """The CLI's flags; defined only when run as a program (sweep files import this module as a library)."""
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Sweep directory; run NAME goes to WORKDIR/NAME.")
  _FLAGS["dry_run"] = flags.DEFINE_bool(
      "dry_run", False, "Print one `python -m resnet_jax.main` command per run; run none."
  )
  _FLAGS["only"] = flags.DEFINE_string(
      "only", None, "Comma-separated glob patterns of run names, e.g. 'plain*,resnet20'."
  )
  _FLAGS["set"] = flags.DEFINE_multi_string(
      "set",
      [],
      "FIELD=VALUE override for every run (repeatable), e.g. num_train_steps=2000; parsed as --config.FIELD=VALUE.",
  )
  _FLAGS["stop_after"] = flags.DEFINE_string("stop_after", None, pieces.STOP_AFTER_HELP)
  cluster.define_flags()


def main(argv):
  if len(argv) != 2:
    cli.fail(
        "usage: python -m resnet_jax.sweep NAME|FILE --workdir=DIR "
        "[--dry_run] [--only=PATTERN] [--set=FIELD=VALUE ...] [--stop_after=DURATION]"
    )
  f = {name: holder.value for name, holder in _FLAGS.items()}
  if not f["workdir"]:
    cli.fail("--workdir is required: the sweep's runs go to WORKDIR/NAME")
  with cli.user_errors():
    deadline = pieces.deadline(f["stop_after"])
  cli.start(restart=False, join_cluster=True)
  import jax

  chief = jax.process_index() == 0  # on several hosts, every process trains each run; process 0 reports
  with cli.user_errors():
    sweep_file = resolve_sweep_file(argv[1])
    specs = build_runs(sweep_file, f["workdir"], only=f["only"], sets=f["set"])
    if f["dry_run"]:
      for spec in specs if chief else ():
        print(spec.command)
      return
    if chief:
      write_manifest(sweep_file, f["workdir"], specs, f["set"])
    t0 = time.time()
    summary = run_sweep(specs, log=lambda s: print(f"sweep: {s}", flush=True) if chief else None, deadline=deadline)
  failed = [s for s in summary if s["status"] == "non-finite"]
  if not chief:
    sys.exit(errors.NonFiniteError.exit_code if failed else 0)
  print(
      f"sweep: {len(summary) - len(failed)} of {len(summary)} runs complete in {time.time() - t0:.0f} s; "
      f"tables and plots: python -m resnet_jax.report {f['workdir']}",
      flush=True,
  )
  if failed:
    print("sweep: failed runs: " + ", ".join(s["name"] for s in failed), file=sys.stderr)
    sys.exit(errors.NonFiniteError.exit_code)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
