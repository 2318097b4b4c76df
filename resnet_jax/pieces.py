"""Long runs in pieces: a time limit for one process (`--stop_after`), and a record of each piece in the workdir.

A run longer than a machine's allowance (a SLURM wall-time limit, a preemptible VM, a CPU session of a few hours)
is trained in pieces: each process trains until `--stop_after` has passed, saves one checkpoint at the end of the
compiled call it is in, and exits with the preemption status (75), exactly as on SIGTERM; the same command then
resumes there, on this machine or on another (experiments/pieces.py packs a stopped run into an archive and
unpacks it elsewhere).

Each process appends one line to WORKDIR/pieces.jsonl when it ends: the steps it trained, its wall time, how it
ended, its peak resident memory, and the machine (CPU model, devices, framework versions), so that a result
trained in pieces says which piece ran where. The PyTorch twin (experiments/torch_twin.py) writes the same lines.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import resource
import socket
import sys
import time

from resnet_jax import cpu, errors, storage

PIECES = "pieces.jsonl"

_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


STOP_AFTER_HELP = (
    "Stop training after this long (e.g. 2h30m, 90m, 5400s): at the end of the compiled call in progress, with a "
    "checkpoint and exit status 75, as on SIGTERM; the same command resumes there."
)


class DurationError(errors.UserError, ValueError):
  """A time limit that is not a duration."""


def parse_duration(text: str) -> float:
  """Seconds in '2h30m', '90m', '45s', '1.5h' or a plain number of seconds ('9000')."""
  compact = str(text).strip().lower().replace(" ", "")
  try:
    seconds = float(compact)
  except ValueError:
    m = _DURATION_RE.fullmatch(compact)
    if not compact or not m or not any(m.groups()):
      raise DurationError(
          f"{text!r} is not a duration; write hours, minutes and seconds such as 2h30m, 90m, 45s or 9000"
      ) from None
    hours, minutes, secs = (float(g) if g else 0.0 for g in m.groups())
    seconds = 3600 * hours + 60 * minutes + secs
  if not seconds > 0:
    raise DurationError(f"{text!r}: a time limit must be positive, such as 2h30m")
  return seconds


def deadline(stop_after: str | None) -> float | None:
  """The time.time() at which `--stop_after` (None: no limit) passes, counted from now."""
  return None if stop_after is None else time.time() + parse_duration(stop_after)


def host_rss_mb() -> float:
  """This process's resident memory now, in MiB (its peak where /proc is missing, as on macOS)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except OSError:
    return peak_rss_mb()


def peak_rss_mb() -> float:
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def cpu_model() -> str:
  """The CPU's model name with its family and model numbers (a VM often names only the vendor: 'AMD EPYC')."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    return platform.processor() or platform.machine()
  name = fields.get("model name", platform.machine())
  if "cpu family" in fields:
    name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
  return name


def machine(**frameworks: str) -> dict:
  """Where a piece ran: host, CPU model, the CPUs this process may use, Python and the given framework versions."""
  return {
      "host": socket.gethostname(),
      "cpu": cpu_model(),
      "cpus": cpu.usable_cpus(),
      "python": platform.python_version(),
      **frameworks,
  }


def _utc(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Piece:
  """One process's share of a run: started when training starts, recorded in WORKDIR/pieces.jsonl when it ends."""

  def __init__(self, workdir, start_step: int, *, started: float | None = None, **machine_fields):
    """`started`: the process's start (a time.time(); default now), so that set-up and compilation count."""
    self.path = storage.path(workdir) / PIECES
    self.start_step = int(start_step)
    self.machine = machine(**machine_fields)
    self.t0 = time.time() if started is None else started

  def finish(self, end_step: int, outcome: str) -> dict:
    """Appends the record (`outcome`: 'finished', 'stop_after', 'signal' or an error's one line) and returns it."""
    t1 = time.time()
    record = {
        "start_step": self.start_step,
        "end_step": int(end_step),
        "seconds": round(t1 - self.t0, 1),
        "started": _utc(self.t0),
        "ended": _utc(t1),
        "outcome": outcome,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": self.machine,
    }
    try:
      text = self.path.read_text() if self.path.exists() else ""
      storage.write_text_atomic(self.path, text + json.dumps(record) + "\n")
    except OSError as e:  # a full disk, say: the error that ended the run is the one to report
      logging.warning("could not record this piece in %s: %s", self.path, e)
    return record


def read(workdir) -> list[dict]:
  """The pieces recorded in a workdir, oldest first."""
  path = storage.path(workdir) / PIECES
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
