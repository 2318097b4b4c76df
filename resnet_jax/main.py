"""Entry point: python -m resnet_jax.main --config=configs/cifar56.py --workdir=DIR [--config.FIELD=VALUE ...]
    [--stop_after=2h30m]

Kept tiny on purpose (as flax's examples do): flags -> config -> train.train_and_evaluate. Everything else lives
in importable, tested modules.
"""

from absl import flags
from ml_collections import config_flags

_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Training config file (configs/*.py).", lock_config=True
  )
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  flags.mark_flags_as_required(["config", "workdir"])
  from resnet_jax import cluster, pieces

  _FLAGS["stop_after"] = flags.DEFINE_string("stop_after", None, pieces.STOP_AFTER_HELP)
  cluster.define_flags()


def run(config, workdir: str, *, restart: bool = False, stop_after: str | None = None):
  """What the command does once its flags are read: cli.start (the config checked, this process in its cluster),
  then training, a user error ending as one line and its exit status (cli.fail's SystemExit). `restart`: the
  process may restart itself once for huge pages (only when it runs as the program). `stop_after`: a duration
  ('2h30m') after which training stops as on SIGTERM."""
  from resnet_jax import cli, pieces

  with cli.user_errors():
    deadline = pieces.deadline(stop_after)
  config = cli.start(config, restart=restart, join_cluster=True)
  from resnet_jax import train  # after the start: keeps --help and config errors fast

  with cli.user_errors():
    train.train_and_evaluate(config, workdir, deadline=deadline)


def main(argv):
  from resnet_jax import cli

  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  run(
      _FLAGS["config"].value,
      _FLAGS["workdir"].value,
      restart=__name__ == "__main__",
      stop_after=_FLAGS["stop_after"].value,
  )


if __name__ == "__main__":
  from resnet_jax import cli

  define_flags()
  cli.run(main)
