"""Long runs in pieces: pack a stopped run (or a sweep) for the repository or another machine, and unpack it there.

    python -m resnet_jax.main --config=configs/cifar20.py --workdir=runs/cifar20 --stop_after=2h30m   # exits 75
    python experiments/pieces.py pack runs/cifar20 experiments/results/cifar20_resnet20    # commit this folder
    ... on the next machine, from a clone:
    python experiments/pieces.py unpack experiments/results/cifar20_resnet20 runs/cifar20
    python -m resnet_jax.main --config=configs/cifar20.py --workdir=runs/cifar20 --stop_after=2h30m   # resumes

A pack is a run directory cut down to what resuming and using the run need: its records (config.json,
metrics.jsonl, results.json, normalization.npz, pieces.jsonl) and its newest checkpoint, which for a finished run
is the trained network (`predict`, `evaluate`, `export` and the notebook read the pack as a workdir). A sweep's
directory is packed run by run, with sweep.json. `--archive=FILE.tar.gz` also writes the pack as one file, for a
machine whose results travel as files (experiments/table6_gpu.sh); `unpack` takes a folder or such a file.

`pack` replaces an earlier pack in its destination (the folder holds packed.json) and refuses any other folder that
is not empty; `unpack` never overwrites a file. The PyTorch twin's run directories (experiments/torch_twin.py) have
the same layout, so they are packed the same way. Which piece ran where is in each run's pieces.jsonl
(resnet_jax.pieces): this script only moves files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from resnet_jax import pieces, rundir  # noqa: E402

RECORDS = (rundir.CONFIG, rundir.METRICS, rundir.RESULTS, rundir.NORMALIZATION, pieces.PIECES)
MARKER = "packed.json"
CHECKPOINT_CHOICES = ("newest", "unfinished", "none")


class PackError(Exception):
  """What the user asked cannot be done as asked; the message says why and what to do."""


def is_run_dir(path: Path) -> bool:
  return any((path / name).exists() for name in (rundir.CONFIG, rundir.METRICS, rundir.CHECKPOINTS))


def run_dirs(workdir: Path) -> list[tuple[str, Path]]:
  """(name in the pack, directory) of each run: the workdir itself, or the run directories of a sweep's."""
  if is_run_dir(workdir):
    return [(".", workdir)]
  return [(p.name, p) for p in sorted(workdir.iterdir()) if p.is_dir() and is_run_dir(p)]


def newest_checkpoint(run: Path) -> int | None:
  """The newest complete checkpoint's step (writers give a step's folder its numeric name once it is complete)."""
  steps = [int(p.name) for p in (run / rundir.CHECKPOINTS).glob("*") if p.name.isdigit()]
  return max(steps, default=None)


def is_finished(run: Path) -> bool:
  path = run / rundir.RESULTS
  if not path.exists():
    return False
  results = json.loads(path.read_text())
  return results.get("steps", 0) >= results.get("config", {}).get("num_train_steps", float("inf"))


def _check_destination(out: Path) -> None:
  if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
    raise PackError(f"{out} is not empty and holds no earlier pack ({MARKER}); choose a new folder")


def pack(workdir, out, *, checkpoints: str = "newest", include=(), archive=None) -> dict:
  """Copies the runs' records and checkpoints (`checkpoints`: 'newest' of every run, 'unfinished' runs' only, or
  'none') and the workdir's `include` entries into `out`, replacing an earlier pack there; returns packed.json."""
  workdir, out = Path(workdir), Path(out)
  if not workdir.is_dir():
    raise PackError(f"{workdir} is not a directory; give the --workdir of a run or a sweep")
  runs = run_dirs(workdir)
  if not runs:
    raise PackError(f"{workdir} holds no run (no {rundir.CONFIG}, {rundir.METRICS} or {rundir.CHECKPOINTS}/)")
  if checkpoints not in CHECKPOINT_CHOICES:
    raise PackError(f"--checkpoints={checkpoints}: choose one of {', '.join(CHECKPOINT_CHOICES)}")
  _check_destination(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=".packing-", dir=out.parent))  # beside `out`: renamed there at the end
  try:
    manifest = {
        "packed": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": os.path.abspath(workdir),
        "runs": {},
    }
    for name, run in runs:
      dest = staging / name
      dest.mkdir(parents=True, exist_ok=True)
      for record in RECORDS:
        if (run / record).exists():
          shutil.copy2(run / record, dest / record)
      step, finished = newest_checkpoint(run), is_finished(run)
      if step is not None and (checkpoints == "newest" or (checkpoints == "unfinished" and not finished)):
        shutil.copytree(run / rundir.CHECKPOINTS / str(step), dest / rundir.CHECKPOINTS / str(step))
      else:
        step = None
      manifest["runs"][name] = {"finished": finished, "checkpoint": step}
    for entry in [rundir.SWEEP_MANIFEST, *include]:
      src = workdir / entry
      if src.is_dir():
        shutil.copytree(src, staging / entry)
      elif src.exists():
        shutil.copy2(src, staging / entry)
      elif entry != rundir.SWEEP_MANIFEST:
        raise PackError(f"--include={entry}: no such file or folder in {workdir}")
    (staging / MARKER).write_text(json.dumps(manifest, indent=1) + "\n")
    if archive:
      with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(staging.iterdir()):
          tar.add(item, arcname=item.name)
    if out.exists():
      shutil.rmtree(out)
    staging.rename(out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return manifest


def unpack(src, workdir) -> list[str]:
  """Copies a pack (a folder or a .tar.gz) into `workdir` without overwriting anything; returns the files."""
  src, workdir = Path(src), Path(workdir)
  with tempfile.TemporaryDirectory() as tmp:
    if src.is_file():
      with tarfile.open(src) as tar:
        tar.extractall(tmp, filter="data")
      src = Path(tmp)
    if not (src / MARKER).exists():
      raise PackError(f"{src} is not a pack (no {MARKER}); make one with: python experiments/pieces.py pack ...")
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file() and p.name != MARKER)
    clashes = [f for f in files if (workdir / f).exists()]
    if clashes:
      raise PackError(f"{workdir / clashes[0]} exists; unpack into a new folder (nothing was copied)")
    for f in files:
      (workdir / f).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src / f, workdir / f)
  return [str(f) for f in files]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("pack", help="WORKDIR -> OUT (a folder; replaces an earlier pack there)")
  p.add_argument("workdir")
  p.add_argument("out")
  p.add_argument("--checkpoints", default="newest", choices=CHECKPOINT_CHOICES)
  p.add_argument("--include", action="append", default=[], help="a file or folder of WORKDIR to pack too")
  p.add_argument("--archive", help="also write the pack as this .tar.gz")
  u = sub.add_parser("unpack", help="PACK (folder or .tar.gz) -> WORKDIR (never overwrites)")
  u.add_argument("src")
  u.add_argument("workdir")
  args = parser.parse_args(argv)
  try:
    if args.command == "pack":
      manifest = pack(args.workdir, args.out, checkpoints=args.checkpoints, include=args.include, archive=args.archive)
      for name, run in manifest["runs"].items():
        state = "finished" if run["finished"] else "unfinished"
        print(f"packed {name} ({state}; checkpoint {run['checkpoint']}) -> {args.out}")
    else:
      files = unpack(args.src, args.workdir)
      print(f"unpacked {len(files)} files into {args.workdir}")
  except PackError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
