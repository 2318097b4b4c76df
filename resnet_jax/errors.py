"""The errors a user can fix, each with the exit status a command ends with.

Every module's user-facing errors derive from `UserError`, and a command catches that class alone
(`cli.user_errors`): it prints the message as one line and exits with the error's `exit_code`. A new kind of
error needs no change to `cli`. This module imports nothing of the project, so any module can import it.
"""

from __future__ import annotations


class UserError(Exception):
  """An error whose message says what to fix; a command prints it as one line and exits with `exit_code`."""

  exit_code = 2  # bad flags or config, missing data, checkpoint of another model, ...


class NotFoundError(UserError, FileNotFoundError):
  """What a command needs (a run directory, its config, a checkpoint) is not there; the message says where it
  looked and how to make it."""


class DataNotFoundError(UserError, RuntimeError):
  """The data set is not where the config says; the message says where we looked and how to get it."""


class ImageNetNotFoundError(NotFoundError):
  """The prepared imagenet2012 data set and the manual download it is built from are both missing."""


class SplitError(UserError, ValueError):
  """A split string that the data set cannot provide (e.g. train[:90000] of a 50k split)."""


class MissingDependencyError(UserError, RuntimeError):
  """An optional dependency (TensorFlow, tfds, an export runtime) that this configuration needs is not installed."""


class NonFiniteError(UserError, FloatingPointError):
  """The loss or the gradient norm became NaN or Inf (the update was not applied)."""

  exit_code = 3


class Preempted(UserError):
  """SIGTERM/SIGINT: the run saved a checkpoint at the step it had reached and stopped; rerun to resume.

  Not a failure: with several processes every one stopped at the same step, and the command says so on stderr.
  """

  exit_code = 75  # EX_TEMPFAIL: "try again"


def one_line(text, limit: int | None = None) -> str:
  """`text` (a message or an exception) with its whitespace runs, newlines included, as single spaces."""
  return " ".join(str(text).split())[:limit]
