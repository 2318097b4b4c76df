"""How every command starts: flags parsed with one-line errors, the config checked, then the platform set up.

    if __name__ == "__main__":
      cli.run(main)              # instead of absl's app.run

    def main(argv):
      config = cli.start(_CONFIG.value, restart=True)   # resolved and checked; huge pages for malloc, quiet logs
      with cli.user_errors():
        ...

A mistake on the command line (an unknown flag or config field, a value of the wrong type, a config file that is
missing or does not load) is one line on stderr and exit status 2, never a traceback; so is an error the user can
fix (a resnet_jax.errors.UserError: bad config values, missing data or checkpoint), with its own exit status (3
for a non-finite loss, 75 for a preemption).
"""

from __future__ import annotations

import contextlib
import difflib
import logging as logging_std
import os
import re
import sys
import traceback

from absl import app, flags, logging

from resnet_jax import cluster, config_lib, errors
from resnet_jax.cpu import host_malloc

# JAX is imported inside the functions that use it: every command imports this module, and --help and the
# errors of a command line answer without it.


def fail(message: str, code: int = errors.UserError.exit_code) -> None:
  """Prints `error: message` and exits with `code`; with several processes, the others stop too."""
  print(f"error: {message}", file=sys.stderr)
  cluster.fail(code, message)
  sys.exit(code)


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # configs/ links here


def recipes() -> list[str]:
  """The recipes' names (--config=NAME): the packaged configs/ files."""
  return sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py") and not f.startswith("_"))


def _config_flag(arg: str):
  """(flag name, value) of a --NAME=VALUE argument for a config-file flag, else None."""
  m = re.fullmatch(r"--(\w+)=(.+)", arg)
  if m and m.group(1) in flags.FLAGS and type(flags.FLAGS[m.group(1)]).__name__ == "_ConfigFlag":
    return m.groups()
  return None


def resolve_config_names(argv: list[str]) -> list[str]:
  """--config=cifar56 (a recipe's name, optionally with :ARG) -> the packaged configs/cifar56.py, so that the
  recipes work from an installed wheel as from a clone; paths are left alone."""
  out = list(argv[:1])
  for arg in argv[1:]:
    parsed = _config_flag(arg)
    if parsed:
      name, value = parsed
      recipe, sep, rest = value.partition(":")
      packaged = os.path.join(CONFIGS_DIR, recipe + ".py")
      if re.fullmatch(r"\w+", recipe) and not os.path.exists(recipe) and os.path.isfile(packaged):
        arg = f"--{name}={packaged}{sep}{rest}"
    out.append(arg)
  return out


def _config_file_problem(argv: list[str]) -> str | None:
  """The problem with a --config=FILE[:ARG] of the command line whose file is missing, else None."""
  for arg in argv[1:]:
    parsed = _config_flag(arg)
    if not parsed or os.path.isfile(parsed[1].split(":", 1)[0]):
      continue
    path = parsed[1].split(":", 1)[0]
    close = difflib.get_close_matches(os.path.basename(path).removesuffix(".py"), recipes(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (recipes: {', '.join(recipes())})"
    return f"{arg}: no such config file{hint}"
  return None


def _unknown_field(e: Exception) -> str:
  """ml_collections' KeyError/AttributeError for an unknown field, as one line with its "did you mean"."""
  text = errors.one_line(str(e).replace("\\n", " ").replace("\\'", "'").strip("'\" "))
  field = re.match(r"'?([\w.]+)'?", text)
  return f"unknown config field {field.group(1)!r}{text[field.end():]}" if field else f"config: {text}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with each mistake as one line and exit status 2."""
  argv = resolve_config_names(argv)
  problem = _config_file_problem(argv)
  if problem:
    fail(problem)
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):  # config files load lazily: report a failed one now
      flags.FLAGS[name].value  # noqa: B018
  except flags.Error as e:  # unknown flag, wrong type, missing required flag
    fail(errors.one_line(e))
  except (AttributeError, KeyError) as e:  # --config.FIELD=... of a field the config does not have
    fail(_unknown_field(e))
  except Exception as e:  # noqa: BLE001 - a config file that raises while loading
    fail(f"the config does not load: {errors.one_line(e)}")
  return rest


def run(main) -> None:
  """absl's app.run(main) with parse_flags; with several processes, an error in any one stops them all."""

  def main_in_cluster(argv):
    try:
      main(argv)
    except SystemExit:  # an exit every process reaches (errors went through fail(), which stops the others)
      cluster.finish()
      raise
    except Exception as e:  # noqa: BLE001 - a bug or a failed collective: the traceback, then stop the others
      if not cluster.active():
        raise
      error = f"{type(e).__name__}: {errors.one_line(e, 500)}"
      cluster.wait_if_caused_by_another(error)  # if so, the watchdog ends this process with the line naming it
      traceback.print_exc()
      fail(error, code=1)
    cluster.finish()

  app.run(main_in_cluster, flags_parser=parse_flags)


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of orbax, clu, tfds, JAX and the ONNX converter (their warnings and errors still show),
  unless -v 1 (absl's --verbosity=1) asks for everything."""

  NOISY = ("/orbax/", "/clu/", "/tensorflow_datasets/", "/jax/_src/", "/jax2onnx/", "/onnx_ir/")

  def filter(self, record):
    return (
        record.levelno >= logging_std.WARNING
        or logging.get_verbosity() >= logging.DEBUG
        or not any(p in record.pathname for p in self.NOISY)
    )


def quiet_library_logs():
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def start(config=None, *, restart: bool, join_cluster: bool = False):
  """What a command does once its flags are parsed; returns the config resolved and checked, the one the command
  passes on (config_lib.resolve: epochs as steps, the learning rate scaled to the batch).

  The config is resolved and checked first (everything that does not need JAX's backend; one list of problems,
  exit 2), then config.cpu.host_malloc is applied, which may restart this process once with huge pages for malloc
  (`restart`: the command runs as __main__), so that an error is printed once and before any restart; then library
  logs are quietened, and with `join_cluster` the process joins the job's other processes (resnet_jax.cluster; the
  command defines cluster.define_flags()), after which only process 0 logs progress.
  """
  if config is not None:
    with user_errors():
      config = config_lib.resolve(config)
    host_malloc.apply(config.cpu.host_malloc, restart=restart)
    use_compilation_cache(config.compilation_cache_dir)
  quiet_library_logs()
  if join_cluster:
    with user_errors():
      cluster.start()
    import jax

    if jax.process_index() > 0:  # only process 0 logs progress; the others report warnings and errors
      logging.set_verbosity(logging.WARNING)
  return config


def use_compilation_cache(directory: str | None) -> None:
  """JAX's persistent compilation cache in `directory` (a local folder or a gs:// URL), for every compilation of
  this process however short: a restarted or resumed run, and every process of a pod, then loads its compiled
  steps instead of compiling them again. None leaves JAX's own setting (JAX_COMPILATION_CACHE_DIR)."""
  if directory is None:
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_enable_compilation_cache", True)


@contextlib.contextmanager
def user_errors():
  """Errors a user can fix (resnet_jax.errors.UserError) are printed as one message, not a stack trace."""
  try:
    yield
  except errors.UserError as e:
    if isinstance(e, errors.Preempted):  # every process stopped at the same step: not a failure
      print(f"preempted: {e}", file=sys.stderr)
      cluster.finish()
      sys.exit(e.exit_code)
    fail(str(e), code=e.exit_code)
