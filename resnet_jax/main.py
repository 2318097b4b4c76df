"""Entry point: python -m resnet_jax.main --config=configs/cifar56.py --workdir=DIR [--config.FIELD=VALUE ...]

Kept tiny on purpose (as flax's examples do): flags -> config -> train.train_and_evaluate. Everything else lives
in importable, tested modules.
"""
from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  from resnet_jax import cli
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  config = cli.start(_CONFIG.value, restart=__name__ == "__main__")
  from resnet_jax import parallel, train  # after the start: keeps --help and config errors fast
  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if parallel.process_index() > 0:  # only process 0 logs progress; the others report warnings and errors
    logging.set_verbosity(logging.WARNING)
  with cli.user_errors():
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  from resnet_jax import cli
  cli.run(main)
