"""Shared command-line helpers: turn expected failures into one clear message and a distinct exit code."""
import contextlib
import logging as logging_std
import sys

from absl import logging

# Exit codes of the command-line tools.
EXIT_USER_ERROR = 2     # bad config, missing data, checkpoint of another model, ...
EXIT_NONFINITE = 3      # the loss or the gradient became NaN/Inf
EXIT_PREEMPTED = 75     # SIGTERM/SIGINT: checkpoint saved, rerun to resume (EX_TEMPFAIL: "try again")


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of orbax, clu and tfds (their warnings and errors still show)."""
  NOISY = ("/orbax/", "/clu/", "/tensorflow_datasets/", "/jax/_src/")

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or not any(p in record.pathname for p in self.NOISY)


def quiet_library_logs():
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


@contextlib.contextmanager
def user_errors():
  """Errors a user can fix are printed as one message, not a stack trace."""
  from resnet_jax import checkpoint, convert, input_pipeline, train
  expected = (train.ConfigError, convert.ConversionError, input_pipeline.DataNotFoundError, input_pipeline.MissingDependencyError,
              input_pipeline.SplitError, checkpoint.CheckpointMismatchError, checkpoint.CheckpointUnreadableError,
              checkpoint.CheckpointSaveError, PermissionError, FileNotFoundError)
  try:
    yield
  except train.Preempted as e:
    logging.warning("%s", e)
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except train.NonFiniteError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_NONFINITE)
  except expected as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
