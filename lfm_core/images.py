"""Image data sets as tensors in ``[-1, 1]``, at a requested size, with labels where the data has them.

Two ways to get a data set, with one interface (``len``, ``labels``, ``content_key()``, ``chunks(n)``,
``load()``):

* ``load(name, size=...)`` returns an :class:`ImageData`: every image in memory (``images [N, C, H, W]``
  float32 in ``[-1, 1]``, ``labels [N]`` int64 or ``None``, and where the data came from);
* ``stream(name, size=...)`` returns a source that reads, decodes and resizes the images a chunk at a time
  (:class:`ImageFiles` for CelebA-HQ, whose files :mod:`lfm_core.celeba` finds), so that the latent cache
  (:func:`lfm_core.latent_cache.cached_latents`) encodes all 30 000 CelebA-HQ images with bounded memory.

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
``celeba_hq``    CelebA-HQ RGB faces with labels 0 female, 1 male, split ``train`` /        with a local
                 ``val``, from a local folder (StarGAN v2 layout or the hub mirror's       copy
                 parquet files) or the hub mirror ``mattymchen/celeba-hq``; read by
                 :mod:`lfm_core.celeba`
================ ======================================================================== ========

A streamed image must be RGB and square, at least ``size`` pixels wide; JPEGs are decoded directly at a
reduced scale when that still covers ``size`` (PIL's draft mode), then every image is resized with the same
antialiased bilinear filter. Sources and licences: ``data/README.md``.

:func:`save_image_grid` writes the other way: images in ``[-1, 1]`` as one PNG grid (samples during training).

Copy with: utils, and for ``celeba_hq`` celeba, hub (``torch``, ``numpy``, ``Pillow``; ``scikit-image`` /
``scikit-learn`` for the offline sets; CelebA-HQ's own in :mod:`lfm_core.celeba`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .utils import check_positive_int, check_tensor

__all__ = ["ImageData", "ImageFiles", "NAMES", "OFFLINE", "SPLITS", "load", "stream", "resize", "decode_image",
           "FASHION_MNIST_DIR", "save_image_grid"]

NAMES = ("lfw_faces", "digits", "fashion_mnist", "celeba_hq")
OFFLINE = ("lfw_faces", "digits", "fashion_mnist")
SPLITS = ("train", "val")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian's dataset-fashion-mnist package
_RESIZE = "bilinear-antialias-v1"  # part of every content key: another resize gives other images


@dataclass
class ImageData:
    """Images ``[N, C, H, W]`` in ``[-1, 1]`` (float32), integer labels ``[N]`` or ``None``, and provenance."""

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str
    source: str
    num_classes: int | None = None

    def __post_init__(self):
        check_tensor(self.images, "images", min_dim=4)
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {tuple(self.images.shape)}")
        if self.labels is not None:
            if not isinstance(self.labels, torch.Tensor) or self.labels.shape != self.images.shape[:1]:
                raise ValueError(f"labels must be a tensor of shape [N] = [{self.images.shape[0]}] or None")

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

    # the interface shared with ImageFiles (what the latent cache reads)
    def content_key(self) -> str:
        """SHA-256 of the images' values (as float32), their shape and the labels."""
        h = hashlib.sha256(f"images{tuple(self.images.shape)}".encode())
        for part in self.images.detach().split(256):
            h.update(part.to("cpu", torch.float32).contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(f"labels{tuple(self.labels.shape)}".encode())
            h.update(self.labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def chunks(self, n: int):
        """The images, ``n`` at a time."""
        check_positive_int(n, "n")
        yield from self.images.split(n)

    def get(self, indices) -> torch.Tensor:
        """The images at ``indices`` (a sequence or tensor of row numbers)."""
        return self.images[torch.as_tensor(indices, dtype=torch.long)]

    def load(self, limit: int | None = None) -> ImageData:
        """Itself (the first ``limit`` images when given)."""
        if limit is None:
            return self
        check_positive_int(limit, "limit")
        return ImageData(self.images[:limit], None if self.labels is None else self.labels[:limit], self.name,
                         self.source, self.num_classes)


class ImageFiles:
    """A data set on disk, read a chunk at a time: decoded, checked (RGB, square, at least ``size``), resized.

    Made by :func:`stream`. The images are those of ``records``, in order: ``(name, read)`` pairs, ``read()``
    returning the encoded bytes. Memory: one chunk of decoded images at a time (``n x 3 x size^2`` floats,
    plus one image at its draft scale per worker thread), whatever the number of images.
    """

    def __init__(self, records: list, labels: torch.Tensor | None, *, size: int, name: str, source: str,
                 num_classes: int | None, workers: int = 4):
        if not records:
            raise ValueError(f"{source}: no images found")
        self.records, self.labels, self.size = records, labels, check_positive_int(size, "size")
        self.name, self.source, self.num_classes = name, source, num_classes
        self.workers = check_positive_int(workers, "workers")
        self._key = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"ImageFiles({self.name!r}, {len(self)} images at {self.size} px, from {self.source})"

    def content_key(self) -> str:
        """SHA-256 of every file's bytes, the labels, the size and the resize method (one pass over the files)."""
        if self._key is None:
            h = hashlib.sha256(f"{self.name}|{self.size}|{_RESIZE}|{len(self)}".encode())
            for _, read in self.records:
                data = read()
                h.update(f"{len(data)}:".encode())
                h.update(data)
            if self.labels is not None:
                h.update(self.labels.numpy().astype(np.int64).tobytes())
            self._key = h.hexdigest()
        return self._key

    def _decode(self, record) -> torch.Tensor:
        name, read = record
        return decode_image(read(), self.size, name=name)

    def chunks(self, n: int):
        """``[<= n, 3, size, size]`` float32 images in ``[-1, 1]``, in order; decoded by ``workers`` threads."""
        check_positive_int(n, "n")
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            for start in range(0, len(self), n):
                yield torch.stack(list(pool.map(self._decode, self.records[start:start + n])))

    def get(self, indices) -> torch.Tensor:
        """The images at ``indices`` (a sequence or tensor of row numbers), decoded by ``workers`` threads."""
        idx = self._rows(indices)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            return torch.stack(list(pool.map(self._decode, [self.records[i] for i in idx])))

    def _rows(self, indices) -> list[int]:
        """``indices`` (a sequence or tensor of row numbers) as a checked, non-empty list of ints."""
        idx = [int(i) for i in torch.as_tensor(indices if isinstance(indices, torch.Tensor) else list(indices),
                                               dtype=torch.long).reshape(-1)]
        if not idx or any(i < 0 or i >= len(self) for i in idx):
            raise ValueError(f"indices must be a non-empty list of rows in [0, {len(self)}), got "
                             f"{'none' if not idx else f'{min(idx)}..{max(idx)}'}")
        return idx

    def load(self, limit: int | None = None) -> ImageData:
        """Every image (or the first ``limit``) in memory, as an :class:`ImageData`."""
        n = len(self) if limit is None else min(check_positive_int(limit, "limit"), len(self))
        part = self if n == len(self) else self.head(n)
        images = torch.cat(list(part.chunks(64)))
        return ImageData(images, part.labels, self.name, self.source, self.num_classes)

    def head(self, n: int) -> ImageFiles:
        """The first ``n`` images, as another source."""
        return self.subset(range(min(check_positive_int(n, "n"), len(self))))

    def spread(self, n: int | None) -> ImageFiles:
        """``n`` images spread evenly over the set (rows ``floor(i * len / n)``), as another source; all when ``n``
        is None or at least the length. Unlike :meth:`head`, keeps the class proportions of a folder stored class
        after class (the StarGAN v2 layout lists every female image before the first male one)."""
        if n is None or n >= len(self):
            return self
        return self.subset((torch.arange(check_positive_int(n, "n")) * len(self)) // n)

    def subset(self, indices) -> ImageFiles:
        """The images at ``indices`` (row numbers, in the order given), as another source."""
        idx = self._rows(indices)
        labels = None if self.labels is None else self.labels[torch.tensor(idx)]
        return ImageFiles([self.records[i] for i in idx], labels, size=self.size, name=self.name,
                          source=self.source, num_classes=self.num_classes, workers=self.workers)


def decode_image(data: bytes, size: int, *, name: str = "image") -> torch.Tensor:
    """One encoded RGB image (JPEG, PNG) -> ``[3, size, size]`` float32 in ``[-1, 1]``.

    Refuses images that are not RGB, not square, or smaller than ``size`` (naming ``name``): CelebA-HQ is square
    RGB at 1024 px, and anything else in its folder is a mistake that resizing would hide.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image file that Pillow can read") from None
    with im:
        if im.mode != "RGB":
            raise ValueError(f"{name}: image mode {im.mode!r}, expected RGB")
        w, h = im.size
        if w != h:
            raise ValueError(f"{name}: {w} x {h} pixels is not square (CelebA-HQ images are square)")
        if w < size:
            raise ValueError(f"{name}: {w} pixels wide, smaller than size={size}")
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when that still covers size
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(127.5).sub_(1.0)
    return resize(x, size)[0].clamp_(-1, 1)


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


def _fashion_mnist(root=None):
    d = FASHION_MNIST_DIR if root is None else Path(root).expanduser()
    images, labels = [], []
    for prefix in ("train", "t10k"):
        ip, lp = _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")
        if ip is None or lp is None:
            raise FileNotFoundError(
                f"Fashion-MNIST was not found in {d}: install Debian's dataset-fashion-mnist package "
                "(sudo apt install dataset-fashion-mnist), pass root= (the folder of the IDX files), or use "
                "the offline data sets 'lfw_faces' or 'digits'"
            )
        images.append(_read_idx(ip))
        labels.append(_read_idx(lp))
    imgs = np.concatenate(images).astype(np.float32)
    return (_to_unit_range(imgs, 255.0)[:, None], torch.from_numpy(np.concatenate(labels).astype(np.int64)),
            f"Fashion-MNIST IDX files in {d} (Debian package dataset-fashion-mnist)")


def stream(name: str, *, size: int | None = None, limit: int | None = None, split: str = "train", root=None,
           repo: str | None = None, workers: int = 4):
    """A data set read a chunk at a time: :class:`ImageFiles` for ``celeba_hq`` (``size`` pixels, default 256),
    the in-memory :class:`ImageData` of :func:`load` for the offline sets.

    ``split`` (``"train"`` or ``"val"``) and ``root`` (a local folder; default ``$LFM_CELEBA_HQ_DIR``, else the
    hub mirror ``repo``, default ``celeba.CELEBA_HQ_REPO``) apply to ``celeba_hq``
    (:func:`lfm_core.celeba.celeba_hq_files`); ``limit`` keeps the first images; ``workers`` threads decode.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None:
        check_positive_int(limit, "limit")
    if name != "celeba_hq":
        return load(name, size=size, limit=limit)
    from .celeba import celeba_hq_files

    files = celeba_hq_files(size=256 if size is None else size, split=split, root=root, repo=repo, workers=workers)
    return files if limit is None else files.head(min(limit, len(files)))


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in NAMES:
        raise ValueError(f"unknown image data set name {name!r}; choose one of {', '.join(NAMES)}")


def load(name: str, *, size: int | None = None, limit: int | None = None, split: str = "train", root=None,
         repo: str | None = None) -> ImageData:
    """Load the image data set ``name`` (one of :data:`NAMES`) into memory, in ``[-1, 1]``, resized to ``size``.

    ``limit`` keeps the first ``limit`` images. For ``fashion_mnist``, ``root`` is the folder of its IDX files
    (default :data:`FASHION_MNIST_DIR`). For ``celeba_hq`` (``size`` 256 by default), ``split``, ``root`` and
    ``repo`` are those of :func:`stream`; mind the memory: 1000 images at 256 px take 0.8 GB as float32, and the
    latent cache reads the stream instead.
    """
    _check_name(name)
    if size is not None:
        check_positive_int(size, "size")
    if limit is not None:
        check_positive_int(limit, "limit")
    if name == "celeba_hq":
        return stream(name, size=size, limit=limit, split=split, root=root, repo=repo).load()
    if root is not None and name != "fashion_mnist":
        raise ValueError(f"root is the folder of 'fashion_mnist' or 'celeba_hq'; {name!r} is built in, pass no root")
    if name == "fashion_mnist":
        images, labels, source = _fashion_mnist(root)
    else:
        images, labels, source = {"lfw_faces": _lfw_faces, "digits": _digits}[name]()
    num_classes = None if labels is None else 10
    if limit is not None:
        images = images[:limit]
        labels = None if labels is None else labels[:limit]
    if size is not None:
        images = resize(images, size).clamp(-1, 1)
    return ImageData(images.contiguous(), labels, name, source, num_classes)


def save_image_grid(images: torch.Tensor, path, *, nrow: int | None = None) -> Path:
    """Save ``[N, C, H, W]`` images in ``[-1, 1]`` as one PNG grid (1 or 3 channels)."""
    from PIL import Image

    check_tensor(images, "images", min_dim=4)
    n, c, h, w = images.shape
    if images.dim() != 4 or c not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    if nrow is not None:
        check_positive_int(nrow, "nrow")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + 2), nrow * (w + 2))
    for i, img in enumerate(images.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1)):
        r, q = divmod(i, nrow)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = img
    arr = ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(path)
    return path
