"""Image data sets as tensors in ``[-1, 1]``, at a requested size, with labels where the data has them.

``load(name, size=...)`` returns an :class:`ImageData` (``images [N, C, H, W]`` float32 in ``[-1, 1]``,
``labels [N]`` int64 or ``None``, and where the data came from).

================ ======================================================================== ========
name             source                                                                   offline
================ ======================================================================== ========
``lfw_faces``    the 100 real faces of ``skimage.data.lfw_subset()`` (25 x 25 grayscale,   yes
                 from Labeled Faces in the Wild); no labels
``digits``       scikit-learn's ``load_digits()``: 1797 images 8 x 8, values 0-16,         yes
                 10 classes
``fashion_mnist`` Fashion-MNIST (70k images 28 x 28, 10 classes) from Debian's            yes, if the
                 ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``)  package is
                                                                                          installed
``celeba_hq``    CelebA-HQ 256 x 256 RGB from the Hugging Face hub through ``datasets``    no
                 (default mirror ``mattymchen/celeba-hq``; labels 0 female, 1 male)
================ ======================================================================== ========

Images are resized with antialiased bilinear interpolation. Hub data sets ask :mod:`lfm_core.hub` first
and fail within its deadline when the hub cannot be reached (or ``HF_HUB_OFFLINE=1``), naming the offline
alternatives. Sources and licences: ``data/README.md``.

Copy with: hub, utils (``torch``, ``numpy``; ``scikit-image`` / ``scikit-learn`` for the offline sets).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import hub
from .utils import check_positive_int

__all__ = ["ImageData", "NAMES", "OFFLINE", "load", "resize", "FASHION_MNIST_DIR", "CELEBA_HQ_REPO"]

NAMES = ("lfw_faces", "digits", "fashion_mnist", "celeba_hq")
OFFLINE = ("lfw_faces", "digits", "fashion_mnist")
FASHION_MNIST_DIR = Path(os.environ.get("LFM_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CELEBA_HQ_REPO = "mattymchen/celeba-hq"


@dataclass
class ImageData:
    """Images ``[N, C, H, W]`` in ``[-1, 1]`` (float32), integer labels ``[N]`` or ``None``, and provenance."""

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    source: str
    num_classes: int | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, n_heldout: int, *, generator: torch.Generator | None = None):
        """A random ``(train, heldout)`` split with ``n_heldout`` held-out images."""
        check_positive_int(n_heldout, "n_heldout")
        if n_heldout >= len(self):
            raise ValueError(f"n_heldout must be < the {len(self)} images, got {n_heldout}")
        perm = torch.randperm(len(self), generator=generator)
        parts = []
        for idx in (perm[n_heldout:], perm[:n_heldout]):
            parts.append(ImageData(self.images[idx], None if self.labels is None else self.labels[idx],
                                   self.name, self.source, self.num_classes))
        return parts[0], parts[1]


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size x size`` (antialiased bilinear; identity when already there)."""
    check_positive_int(size, "size")
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _to_unit_range(x: np.ndarray, max_value: float) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float32) / max_value * 2 - 1)


def _lfw_faces():
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # rows 0-99 are faces, 100-199 are not
    return _to_unit_range(faces, 1.0)[:, None], None, "skimage.data.lfw_subset() rows 0-99 (Labeled Faces in the Wild)"


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (_to_unit_range(d.images, 16.0)[:, None], torch.from_numpy(d.target.astype(np.int64)),
            "sklearn.datasets.load_digits() (UCI optical recognition of handwritten digits)")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        _, _, dtype_code, ndim = f.read(4)
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        if dtype_code != 0x08:
            raise ValueError(f"{path}: only unsigned-byte IDX files are supported")
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def _fashion_mnist():
    d = FASHION_MNIST_DIR
    images, labels = [], []
    for prefix in ("train", "t10k"):
        ip, lp = _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")
        if ip is None or lp is None:
            raise FileNotFoundError(
                f"Fashion-MNIST was not found in {d}: install Debian's dataset-fashion-mnist package "
                "(sudo apt install dataset-fashion-mnist), point LFM_FASHION_MNIST_DIR at the IDX files, or use "
                "the offline data sets 'lfw_faces' or 'digits'"
            )
        images.append(_read_idx(ip))
        labels.append(_read_idx(lp))
    imgs = np.concatenate(images).astype(np.float32)
    return (_to_unit_range(imgs, 255.0)[:, None], torch.from_numpy(np.concatenate(labels).astype(np.int64)),
            f"Fashion-MNIST IDX files in {d} (Debian package dataset-fashion-mnist)")


def _celeba_hq(limit: int | None, repo: str):
    hub.require(f"The data set 'celeba_hq' ({repo})")
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("'celeba_hq' needs the `datasets` package: pip install 'lfm-core[hub]'") from exc
    split = "train" if limit is None else f"train[:{limit}]"
    ds = datasets.load_dataset(repo, split=split)
    images = np.stack([np.asarray(ex["image"].convert("RGB"), dtype=np.uint8) for ex in ds])
    label_key = "label" if "label" in ds.column_names else None
    labels = torch.tensor([int(ex[label_key]) for ex in ds]) if label_key else None
    x = _to_unit_range(images.transpose(0, 3, 1, 2), 255.0)
    return x, labels, f"Hugging Face hub {repo} (CelebA-HQ 256; non-commercial research use only)"


def load(name: str, *, size: int | None = None, limit: int | None = None, repo: str = CELEBA_HQ_REPO) -> ImageData:
    """Load the image data set ``name`` (one of :data:`NAMES`) in ``[-1, 1]``, resized to ``size`` if given.

    ``limit`` keeps the first ``limit`` images. ``repo`` chooses the hub mirror of ``celeba_hq``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in NAMES:
        raise ValueError(f"unknown image data set name {name!r}; choose one of {', '.join(NAMES)}")
    if size is not None:
        check_positive_int(size, "size")
    if limit is not None:
        check_positive_int(limit, "limit")
    if name == "celeba_hq":
        images, labels, source = _celeba_hq(limit, repo)
        num_classes = 2 if labels is not None else None
    else:
        images, labels, source = {"lfw_faces": _lfw_faces, "digits": _digits, "fashion_mnist": _fashion_mnist}[name]()
        num_classes = None if labels is None else 10
        if limit is not None:
            images = images[:limit]
            labels = None if labels is None else labels[:limit]
    if size is not None:
        images = resize(images, size).clamp(-1, 1)
    return ImageData(images.contiguous(), labels, name, source, num_classes)
