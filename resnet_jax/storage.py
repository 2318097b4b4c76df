"""Paths that may be local folders or cloud URLs (gs://, s3://, ...), through etils.epath as orbax and tfds use.

Every workdir and data path goes through `path()` (weight files for `convert` and images for `predict` stay local
files): a local path is made absolute
(so that a run started in another folder, or a checkpoint restored later, finds the same files); a URL is kept as
it is, never turned into a local folder named `gs:`.

Cloud storage needs the `gcs` extra (`pip install 'resnet_jax[gcs]'`: gcsfs). An emulator is chosen by the
standard variable alone: with STORAGE_EMULATOR_HOST set, `configure_emulator()` (run on import) points each layer
at it: epath reads and writes through gcsfs rather than TensorFlow's gfile (which has no emulator support), and
tensorstore (orbax's array store) through TENSORSTORE_GCS_HTTP_URL.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re

from etils import epath

from resnet_jax import errors

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(p) -> bool:
  return bool(_URL.match(os.fspath(p)))


def path(p) -> epath.Path:
  """A user-given path as an epath.Path: local paths absolute (with ~ expanded), URLs unchanged."""
  p = os.fspath(p)
  if is_url(p):
    return epath.Path(p)
  return epath.Path(os.path.abspath(os.path.expanduser(p)))


def name(p) -> str:
  """A path as the text to show and record: the URL, or the absolute local path."""
  return os.fspath(path(p))


def configure_emulator() -> None:
  """With STORAGE_EMULATOR_HOST set, routes epath (through gcsfs) and tensorstore (under orbax) to the emulator.

  Values the user set explicitly are kept. Both settings are read when a cloud path is first used, so this runs
  when the module is imported, before any of them.
  """
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  url = host if "://" in host else f"http://{host}"
  os.environ.setdefault("EPATH_USE_TF", "false")  # TensorFlow's gfile would go to the real service
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  # An emulator needs no credentials; the clients' warnings that none were found are noise here.
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  logging.getLogger("gcsfs").setLevel(logging.ERROR)


configure_emulator()


class MissingCloudSupportError(errors.UserError, ImportError):
  """A cloud URL was given but the library that serves it is not installed."""


def check_supported(p) -> None:
  """Raises MissingCloudSupportError, naming the extra to install, for a gs:// path that nothing here can serve.

  epath serves gs:// through TensorFlow's gfile where TensorFlow is installed (and EPATH_USE_TF is not false),
  else through gcsfs.
  """
  if not os.fspath(p).startswith("gs://"):
    return
  use_tf = os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
  if (use_tf and importlib.util.find_spec("tensorflow")) or importlib.util.find_spec("gcsfs"):
    return
  raise MissingCloudSupportError(f"{p}: gs:// paths need gcsfs; install the extra: pip install 'resnet_jax[gcs]'")


def read_json(p):
  """The JSON object in file p, or None when there is none."""
  p = path(p)
  if not p.exists():
    return None
  return json.loads(p.read_text())


def write_bytes_atomic(p, data: bytes) -> None:
  """Writes the whole file so that a reader never sees half of it.

  Local files go through a temporary file and a rename; a cloud object is replaced whole by one upload (objects
  have no partial state), and there is no append: callers rewrite the whole content.
  """
  p = path(p)
  if is_url(os.fspath(p)):
    p.write_bytes(data)
    return
  tmp = p.parent / f"{p.name}.tmp{os.getpid()}"
  tmp.write_bytes(data)
  tmp.replace(p)


def write_text_atomic(p, text: str) -> None:
  write_bytes_atomic(p, text.encode())


def write_json(p, obj) -> None:
  write_text_atomic(p, json.dumps(obj, indent=2))


def copy_tree(src, dst) -> None:
  """Copies the files under src to the folder dst (folder by folder: epath has no recursive glob on GCS)."""
  src, dst = path(src), path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for f in src.iterdir():
    if f.is_dir():
      copy_tree(f, dst / f.name)
    else:
      write_bytes_atomic(dst / f.name, f.read_bytes())
