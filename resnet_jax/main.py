"""Trains a network: python -m resnet_jax.main --config=RECIPE --workdir=DIR [--config.FIELD=VALUE ...]

    python -m resnet_jax.main --config=cifar20 --workdir=runs/cifar20   # tfds: $TFDS_DATA_DIR or ~/tensorflow_datasets
    python -m resnet_jax.main --config=cifar20 --config.num_train_steps=2000 --print_config   # see, train nothing

--config is a recipe's name (the files of configs/, listed under --config below; `imagenet_torchvision:50`
passes 50 to its get_config) or the path of a config file. Any field of it is overridden with --config.FIELD=VALUE
(nested ones as --config.model.depth=32); --print_config prints the config that would train, overrides applied,
and exits. Rerunning the command resumes from the workdir's newest checkpoint (a finished run says so and changes
nothing); --stop_after=2h30m stops it as SIGTERM does.

Kept tiny on purpose (as flax's examples do): flags -> config -> train.train_and_evaluate. Everything else lives
in importable, tested modules.
"""

from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, cluster, config_lib, pieces

_FLAGS: dict = {}


def define_flags():
  """The command's flags (defined only when run as a program: importing this module defines none)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config",
      None,
      f"Training recipe: one of {', '.join(cli.recipes())}, or a config file; override a field with "
      "--config.FIELD=VALUE (e.g. --config.num_train_steps=2000, --config.model.depth=32).",
      lock_config=True,
  )
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  _FLAGS["print_config"] = flags.DEFINE_bool(
      "print_config", False, "Print the config (overrides applied, epochs as steps) as JSON and exit; train nothing."
  )
  flags.mark_flag_as_required("config")
  _FLAGS["stop_after"] = flags.DEFINE_string("stop_after", None, pieces.STOP_AFTER_HELP)
  cluster.define_flags()


def run(config, workdir: str, *, restart: bool = False, stop_after: str | None = None):
  """What the command does once its flags are read: cli.start (the config resolved and checked, this process in
  its cluster), then training on the config it returns, a user error ending as one line and its exit status
  (cli.fail's SystemExit). `restart`: the process may restart itself once for huge pages (only when it runs as the
  program). `stop_after`: a duration ('2h30m') after which training stops as on SIGTERM."""
  with cli.user_errors():
    deadline = pieces.deadline(stop_after)
  config = cli.start(config, restart=restart, join_cluster=True)
  from resnet_jax import train  # JAX after cli.start (which may restart the process): --help and errors stay fast

  with cli.user_errors():
    train.train_and_evaluate(config, workdir, deadline=deadline)


def print_config(config) -> None:
  """The config as training will hold it (config_lib.resolve: epochs as steps, the learning rate scaled to the
  batch), checked first: what config.json of the run would say."""
  with cli.user_errors():
    config = config_lib.resolve(config)
  print(config.to_json_best_effort(indent=2))


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  if _FLAGS["print_config"].value:
    print_config(_FLAGS["config"].value)
    return
  if _FLAGS["workdir"].value is None:
    cli.fail("--workdir is required: the directory for the run's checkpoints, metrics and results")
  run(
      _FLAGS["config"].value,
      _FLAGS["workdir"].value,
      restart=__name__ == "__main__",
      stop_after=_FLAGS["stop_after"].value,
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
