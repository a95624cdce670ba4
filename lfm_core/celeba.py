"""CelebA-HQ and CelebAMask-HQ on disk: where the images are, how they are laid out, their labels and face parts.

**CelebA-HQ** (Karras et al. 2018: 30 000 CelebA faces at 1024 px; labels 0 female, 1 male, split ``train`` /
``val`` as in StarGAN v2) is read by :func:`celeba_hq_files`, which ``images.stream("celeba_hq")`` and
``images.load("celeba_hq")`` call, from one of three sources:

(a) a local folder in the StarGAN v2 layout ``{train,val}/{female,male}/*.jpg`` (the common download; its parent
    folder works too);
(b) a local folder of the hub mirror's parquet files (columns ``image`` {bytes, path} and ``label``; the file
    names say the split), read one row group at a time;
(c) the hub mirror itself (:data:`CELEBA_HQ_REPO`): its parquet files for the split are taken from the local
    Hugging Face cache, else downloaded, then read as in (b).

The folder is the ``root`` argument, else the environment variable ``LFM_CELEBA_HQ_DIR``, else the hub. A hub
download asks :mod:`lfm_core.hub` first and fails within its deadline when the hub cannot be reached, naming the
offline alternatives. The images are decoded, checked and resized a chunk at a time by
:class:`lfm_core.image_files.ImageFiles`.

**CelebAMask-HQ** (Lee et al. 2020: the same faces with hand-drawn masks of 18 face parts) is read by
:func:`load_celebamask_hq` from its published layout, as images and label maps (0 background, ``k + 1`` for part
:data:`CELEBAMASK_HQ_PARTS` ``[k]``).

Both are for non-commercial research use only; sources and licences: ``data/README.md``.

Copy with: image_files, images, hub, utils (``torch``, ``numpy``, ``Pillow``; ``pyarrow`` for parquet;
``huggingface_hub`` for the download).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import hub
from .image_files import ImageFiles, check_folder, decode_image
from .images import SPLITS, ImageData
from .utils import check_positive_int

__all__ = ["CELEBA_HQ_REPO", "CELEBA_HQ_ENV", "CELEBA_HQ_CLASSES", "CELEBAMASK_HQ_ENV", "CELEBAMASK_HQ_PARTS",
           "celeba_hq_files", "load_celebamask_hq"]

CELEBA_HQ_REPO = "mattymchen/celeba-hq"
CELEBA_HQ_ENV = "LFM_CELEBA_HQ_DIR"
CELEBA_HQ_CLASSES = ("female", "male")
CELEBAMASK_HQ_ENV = "LFM_CELEBAMASK_HQ_DIR"
#: the face parts of CelebAMask-HQ (Lee et al. 2020), in the order its own preprocessing paints them; label k + 1
CELEBAMASK_HQ_PARTS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                       "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------------- CelebA-HQ
def _stargan_records(folder: Path, split: str):
    """(records, labels) of a StarGAN v2 layout folder: ``split/{female,male}/*.jpg``."""
    records, labels = [], []
    for label, cls in enumerate(CELEBA_HQ_CLASSES):
        for f in sorted(p for p in (folder / split / cls).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            records.append((str(f), f.read_bytes))
            labels.append(label)
    return records, torch.tensor(labels, dtype=torch.int64)


def _parquet_split_files(folder: Path, split: str) -> list:
    names = ("train",) if split == "train" else ("validation", "val", "valid", "test")
    files = sorted(folder.rglob("*.parquet"))
    return [f for f in files if any(n in f.name.lower() for n in names)]


def _parquet_records(files: list, split: str):
    """(records, labels) of the hub mirror's parquet files (columns ``image`` {bytes, path} and ``label``)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("reading CelebA-HQ's parquet files needs pyarrow: pip install pyarrow") from exc

    records, labels = [], []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if "image" not in names or "label" not in names:
                raise ValueError(f"{f}: expected the columns 'image' and 'label' of the CelebA-HQ mirror, found "
                                 f"{names}")
            column = pf.read(columns=["label"]).column("label").to_pylist()
        except (OSError, pa.ArrowException) as exc:   # ArrowInvalid ("Corrupt snappy", a cut file) is a ValueError
            raise ValueError(f"{f}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
        for row, value in enumerate(column):
            if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
                raise ValueError(f"{f}, row {row}: label must be 0 (female) or 1 (male), got {value!r}")
        labels += column
        first = 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            for i in range(rows):
                records.append((f"{f} (row {first + i})", _ParquetCell(f, g, i, first + i)))
            first += rows
    return records, torch.tensor(labels, dtype=torch.int64)


class _ParquetCell:
    """Reads one image's bytes from a parquet row group (the group is read once and reused for its rows)."""

    _cache: dict = {}

    def __init__(self, path: Path, group: int, row: int, file_row: int):
        self.path, self.group, self.row, self.file_row = path, group, row, file_row

    def __call__(self) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = (str(self.path), self.group)
        if key not in _ParquetCell._cache:
            if len(_ParquetCell._cache) > 4:  # a few row groups at a time: memory stays bounded
                _ParquetCell._cache.clear()
            try:
                column = pq.ParquetFile(self.path).read_row_group(self.group, columns=["image"]).column("image")
            except (OSError, pa.ArrowException) as exc:   # e.g. ArrowInvalid: Corrupt snappy compressed data
                raise ValueError(f"{self.path}, rows of row group {self.group} (row {self.file_row} among them): "
                                 f"cannot be read ({type(exc).__name__}: {exc})") from None
            _ParquetCell._cache[key] = column.to_pylist()
        value = _ParquetCell._cache[key][self.row]
        data = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(data, bytes) or not data:
            raise ValueError(f"{self.path}, row {self.file_row}: no image bytes in its 'image' column (got "
                             f"{type(data).__name__})")
        return data


def _download_celeba_hq(repo: str, split: str) -> Path:
    """The hub mirror's parquet files for ``split``, from the local Hugging Face cache or downloaded (the hub
    library is imported only after the probe, which keeps the deadline)."""
    patterns = ["*train*.parquet"] if split == "train" else ["*validation*.parquet", "*val*.parquet"]
    for pattern in patterns:  # already downloaded: found without the hub library, works offline
        if (snapshot := hub.cached_snapshot(repo, repo_type="dataset", patterns=(pattern,))) is not None:
            return snapshot
    hub.require(f"The data set 'celeba_hq' ({repo})")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns))


def celeba_hq_files(*, size: int = 256, split: str = "train", root=None, repo: str | None = None,
                    workers: int = 4) -> ImageFiles:
    """CelebA-HQ's ``split`` as an :class:`~lfm_core.image_files.ImageFiles` at ``size`` pixels (what
    ``images.stream("celeba_hq", ...)`` returns): from ``root``, else ``$LFM_CELEBA_HQ_DIR``, else the hub mirror
    ``repo`` (default :data:`CELEBA_HQ_REPO`); ``workers`` threads decode."""
    check_positive_int(size, "size")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    repo = CELEBA_HQ_REPO if repo is None else repo
    hub.check_repo_id(repo, "repo")
    arg = "root"   # the name errors give the folder: the argument, or the variable it came from
    if root is None and os.environ.get(CELEBA_HQ_ENV):
        root, arg = os.environ[CELEBA_HQ_ENV], f"${CELEBA_HQ_ENV}"
    if root is None:
        folder, origin = _download_celeba_hq(repo, split), f"Hugging Face hub {repo}"
    else:
        folder, origin = check_folder(root, arg), None
        if not folder.is_dir():
            raise FileNotFoundError(f"{arg} (CelebA-HQ folder) {folder} does not exist")
    stargan = all((folder / s / c).is_dir() for s in SPLITS for c in CELEBA_HQ_CLASSES)
    if not stargan and (folder / "celeba_hq").is_dir():  # the parent of the StarGAN v2 download
        folder = folder / "celeba_hq"
        stargan = all((folder / s / c).is_dir() for s in SPLITS for c in CELEBA_HQ_CLASSES)
    if stargan:
        records, labels = _stargan_records(folder, split)
        source = f"CelebA-HQ, StarGAN v2 layout in {folder} ({split})"
    else:
        files = _parquet_split_files(folder, split)
        if not files:
            found = sorted(p.name for p in folder.iterdir())[:12]
            raise ValueError(f"{arg} (CelebA-HQ folder) {folder} is in no known layout: expected the StarGAN v2 layout "
                             "train/{female,male}/*.jpg and val/{female,male}/*.jpg, or the hub mirror's parquet "
                             f"files (names containing '{split if split == 'train' else 'validation'}'); found "
                             f"{found}")
        records, labels = _parquet_records(files, split)
        source = f"CelebA-HQ parquet files in {folder} ({split})" if origin is None else f"{origin} ({split})"
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 1):
        raise ValueError(f"{source}: labels must be 0 (female) or 1 (male), found {sorted(set(labels.tolist()))}")
    return ImageFiles(records, labels, size=size, name="celeba_hq",
                      source=source + "; non-commercial research use only", num_classes=2, workers=workers)


# ------------------------------------------------------------------------------------- CelebAMask-HQ
def load_celebamask_hq(root=None, *, size: int = 256, limit: int | None = None, start: int = 0):
    """CelebAMask-HQ in its published layout: images and their face-part maps, ``(ImageData, maps [N, size, size])``.

    ``root`` (default ``$LFM_CELEBAMASK_HQ_DIR``) holds ``CelebA-HQ-img/<i>.jpg`` and
    ``CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png`` (binary masks, 512 px). The map of image ``i`` has
    label 0 for the background and ``k + 1`` for part ``CELEBAMASK_HQ_PARTS[k]``, later parts painted over
    earlier ones as in the data set's own preprocessing; it is resized to ``size`` by nearest neighbour. Images
    ``start`` to ``start + limit - 1`` are read (all from ``start`` when ``limit`` is None). Licence:
    non-commercial research use (``data/README.md``).
    """
    from PIL import Image

    arg = "root"
    if root is None and os.environ.get(CELEBAMASK_HQ_ENV):
        root, arg = os.environ[CELEBAMASK_HQ_ENV], f"${CELEBAMASK_HQ_ENV}"
    if root is None:
        raise FileNotFoundError(f"CelebAMask-HQ: pass root= or set {CELEBAMASK_HQ_ENV} to the folder of its published "
                                "layout (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/)")
    root = check_folder(root, arg)
    img_dir, ann_dir = root / "CelebA-HQ-img", root / "CelebAMask-HQ-mask-anno"
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise ValueError(f"{arg} (CelebAMask-HQ folder) {root} is not in the published layout: expected "
                         "CelebA-HQ-img/ and CelebAMask-HQ-mask-anno/")
    check_positive_int(size, "size")
    if limit is not None:
        check_positive_int(limit, "limit")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0 (the first image number), got {start!r}")
    ids = sorted(int(p.stem) for p in img_dir.glob("*.jpg") if p.stem.isdigit())
    ids = [i for i in ids if i >= start][:limit] if limit is not None else [i for i in ids if i >= start]
    if not ids:
        raise ValueError(f"{arg} (CelebAMask-HQ folder) {root}: no images CelebA-HQ-img/<number>.jpg from {start}")
    pics, maps = [], []
    for i in ids:
        pics.append(decode_image((img_dir / f"{i}.jpg").read_bytes(), size, name=str(img_dir / f"{i}.jpg")))
        label = None
        for k, part in enumerate(CELEBAMASK_HQ_PARTS):
            f = ann_dir / str(i // 2000) / f"{i:05d}_{part}.png"
            if f.exists():
                try:
                    with Image.open(f) as m:
                        mask = np.asarray(m.convert("L")) > 127
                except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
                    raise ValueError(f"{f}: not a readable part mask ({type(exc).__name__}: {exc})") from None
                if label is None:
                    label = np.zeros(mask.shape, dtype=np.int64)
                if mask.shape != label.shape:
                    raise ValueError(f"{f}: {mask.shape[1]} x {mask.shape[0]} pixels, unlike image {i}'s other part "
                                     f"masks ({label.shape[1]} x {label.shape[0]})")
                label[mask] = k + 1
        if label is None:
            raise ValueError(f"{ann_dir}: image {i} has no part masks ({i // 2000}/{i:05d}_<part>.png)")
        t = torch.from_numpy(label)[None, None].float()
        maps.append(F.interpolate(t, size=(size, size), mode="nearest")[0, 0].to(torch.uint8))
    data = ImageData(torch.stack(pics), None, "celebamask_hq",
                     f"CelebAMask-HQ in {root}; non-commercial research use only", None)
    return data, torch.stack(maps)  # uint8: 19 labels, a quarter of the memory of int64
