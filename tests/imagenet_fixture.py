"""A small fake ImageNet 2012 in the exact manual-download format, from the real JPEGs of imagenet-sample.

ILSVRC2012_img_train.tar holds one tar per class, <wnid>.tar, each holding <wnid>_<N>.JPEG files;
ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>.JPEG files. tfds's imagenet2012 builder prepares them.

Validation labels: tfds does not read labels from the val tar. It sorts the file names in the tar and pairs them
with the first lines of the validation_labels.txt it ships (the official labels of ILSVRC2012_val_00000001,
00000002, ... in that order). So the fake val tar holds ILSVRC2012_val_00000001 ... _000000NN, the first NN
official names, and tfds gives each its official label. Where imagenet-sample has an image of that class we use
it, so image and label agree; the sample holds one image for a third of the classes only, so the other names get
other sample images, whose content does not match their (official) label. No test relies on content.

Train: NUM_TRAIN_CLASSES wnids with TRAIN_PER_CLASS images each; the images are distinct sample JPEGs, mostly of
other classes (the sample has one image per class), so again content and label need not agree. Three grayscale
JPEGs and one CMYK JPEG (a sample image re-encoded by Pillow, under a name tfds does not convert) are included.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

from helpers import SHARED_DATA

SAMPLE_DIR = SHARED_DATA / "imagenet-sample"
NUM_TRAIN_CLASSES = 6
TRAIN_PER_CLASS = 5
NUM_VAL = 20
MAX_SIDE = 640  # small images keep the tests fast


def sample_rows():
  with open(SAMPLE_DIR / "labels.csv") as f:
    return list(csv.DictReader(f))


def tfds_validation_labels() -> list[str]:
  import tensorflow_datasets as tfds

  path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
  return path.read_text().split()


def _tar_bytes(members: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _cmyk_jpeg(data: bytes) -> bytes:
  from PIL import Image

  buf = io.BytesIO()
  Image.open(io.BytesIO(data)).convert("CMYK").save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write_manual_download(manual_dir) -> dict:
  """Writes both tars into manual_dir; returns what a test needs to know about them."""
  manual_dir = Path(manual_dir)
  manual_dir.mkdir(parents=True, exist_ok=True)
  rows = sorted(
      (r for r in sample_rows() if max(int(r["width"]), int(r["height"])) <= MAX_SIDE), key=lambda r: r["file"]
  )
  by_wnid = {r["wnid"]: r for r in rows}
  read = lambda r: (SAMPLE_DIR / r["file"]).read_bytes()

  # Validation: the first NUM_VAL official names, with the sample image of the official class where there is one.
  official = tfds_validation_labels()[:NUM_VAL]
  used, val_members, val_labels, val_matching = set(), {}, [], 0
  for i, wnid in enumerate(official):
    if wnid in by_wnid:
      r = by_wnid[wnid]
      val_matching += 1
    else:
      r = next(r for r in rows if r["file"] not in used and r["wnid"] not in official)
    used.add(r["file"])
    val_members[f"ILSVRC2012_val_{i + 1:08d}.JPEG"] = read(r)
    val_labels.append(wnid)

  # Train: grayscale ones first so that they are surely included, then colour ones.
  rest = [r for r in rows if r["file"] not in used]
  gray = [r for r in rest if r["mode"] == "L"][:3]
  colour = [r for r in rest if r["mode"] != "L"][: NUM_TRAIN_CLASSES * TRAIN_PER_CLASS - len(gray)]
  chosen = gray + colour
  wnids = sorted({r["wnid"] for r in colour[:NUM_TRAIN_CLASSES]})
  train_members, train_files = {}, {}
  for c, wnid in enumerate(wnids):
    members = {}
    for j in range(TRAIN_PER_CLASS):
      r = chosen[c * TRAIN_PER_CLASS + j]
      data = read(r)
      mode = r["mode"]
      if c == 0 and j == TRAIN_PER_CLASS - 1:
        data, mode = _cmyk_jpeg(data), "CMYK"
      name = f"{wnid}_{j + 1}.JPEG"
      members[name] = data
      train_files[name] = {"wnid": wnid, "mode": mode, "source": r["file"]}
    train_members[f"{wnid}.tar"] = _tar_bytes(members)
  (manual_dir / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(train_members))
  (manual_dir / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes(val_members))
  return {
      "train_files": train_files,
      "train_wnids": wnids,
      "val_names": list(val_members),
      "val_labels": val_labels,
      "val_matching_content": val_matching,
      "num_train": len(train_files),
      "num_val": len(val_members),
  }


def prepare_fake_imagenet(data_dir, *, num_shards: int = 3) -> dict:
  """Writes the manual download under <data_dir>/downloads/manual (tfds's default) and prepares it."""
  from resnet_jax.data import imagenet_prepare

  meta = write_manual_download(Path(data_dir) / "downloads" / "manual")
  builder = imagenet_prepare.prepare(data_dir, num_shards=num_shards)
  meta["builder"] = builder
  return meta
