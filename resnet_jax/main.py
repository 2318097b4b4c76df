"""Entry point: python -m resnet_jax.main --config=configs/cifar56.py --workdir=DIR [--config.FIELD=VALUE ...]

Kept tiny on purpose (as flax's examples do): flags -> config -> train.train_and_evaluate. Everything else lives
in importable, tested modules.
"""

from absl import flags, logging
from ml_collections import config_flags

_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Training config file (configs/*.py).", lock_config=True
  )
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  _FLAGS["coordinator_address"] = flags.DEFINE_string(
      "coordinator_address", None, "Multi-host: host:port of process 0."
  )
  _FLAGS["num_processes"] = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  _FLAGS["process_id"] = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  from resnet_jax import cli

  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  f = {name: holder.value for name, holder in _FLAGS.items()}
  config = cli.start(f["config"], restart=__name__ == "__main__")
  from resnet_jax import parallel, train  # after the start: keeps --help and config errors fast

  parallel.maybe_initialize_distributed(f["coordinator_address"], f["num_processes"], f["process_id"])
  if parallel.process_index() > 0:  # only process 0 logs progress; the others report warnings and errors
    logging.set_verbosity(logging.WARNING)
  with cli.user_errors():
    train.train_and_evaluate(config, f["workdir"])


if __name__ == "__main__":
  from resnet_jax import cli

  define_flags()
  cli.run(main)
