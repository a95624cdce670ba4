"""Image data sets as tensors in ``[-1, 1]``, at a requested size, with labels where the data has them.

Two ways to get a data set, with one interface (``len``, ``labels``, ``content_key()``, ``chunks(n)``,
``load()``):

* ``load(name, size=...)`` returns an :class:`ImageData`: every image in memory (``images [N, C, H, W]``
  float32 in ``[-1, 1]``, ``labels [N]`` int64 or ``None``, and where the data came from);
* ``stream(name, size=...)`` returns a source that reads, decodes and resizes the images a chunk at a time
  (:class:`~lfm_core.image_files.ImageFiles` for CelebA-HQ, whose files :mod:`lfm_core.celeba` finds), so
  that the latent cache (:func:`lfm_core.latent_cache.cached_latents`) encodes all 30 000 CelebA-HQ images
  with bounded memory.

================= ========================================================================== ==============
name              source                                                                     offline
================= ========================================================================== ==============
``lfw_faces``     the 100 real faces of ``skimage.data.lfw_subset()`` (25 x 25 grayscale,    yes
                  from Labeled Faces in the Wild); no labels
``digits``        scikit-learn's ``load_digits()``: 1797 images 8 x 8, values 0-16,          yes
                  10 classes
``fashion_mnist`` Fashion-MNIST (70k images 28 x 28, 10 classes) from Debian's               if the package
                  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), is installed,
                  else downloaded once from its authors' repository                          or after the
                  (:func:`lfm_core.fashion_mnist.cache_dir`)                                 first download
``celeba_hq``     CelebA-HQ RGB faces with labels 0 female, 1 male, split ``train`` /        with a local
                  ``val``, from a local folder (StarGAN v2 layout or the hub mirror's        copy
                  parquet files) or the hub mirror ``mattymchen/celeba-hq``; read by
                  :mod:`lfm_core.celeba`
================= ========================================================================== ==============

Fashion-MNIST's files are found, downloaded and checked by :mod:`lfm_core.fashion_mnist`.

A streamed image must be RGB and square, at least ``size`` pixels wide; JPEGs are decoded directly at a
reduced scale when that still covers ``size`` (PIL's draft mode), then every image is resized with the same
antialiased bilinear filter. Sources and licences: ``data/README.md``.

:func:`save_image_grid` writes the other way: images in ``[-1, 1]`` as one PNG grid (samples during training).

Copy with: image_files, utils; for ``fashion_mnist`` fashion_mnist, hub, runtime; for ``celeba_hq`` celeba, hub
(``torch``, ``numpy``, ``Pillow``; ``scikit-image`` / ``scikit-learn`` for the offline sets; ``tqdm`` for the
download of Fashion-MNIST; CelebA-HQ's own in :mod:`lfm_core.celeba`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .image_files import check_rows, resize
from .utils import check_finite, check_nonnegative_int, check_positive_int, check_tensor

__all__ = ["ImageData", "NAMES", "OFFLINE", "SPLITS", "load", "stream", "FASHION_MNIST_CLASSES", "fashion_mnist_split",
           "crop", "save_image_grid"]

NAMES = ("lfw_faces", "digits", "fashion_mnist", "celeba_hq")
OFFLINE = ("lfw_faces", "digits", "fashion_mnist")
SPLITS = ("train", "val")
#: Fashion-MNIST's class names, by label (Xiao et al. 2017); its files: :mod:`lfm_core.fashion_mnist`
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


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
        """The images at ``indices`` (a sequence or tensor of row numbers in ``[0, N)``)."""
        return self.images[check_rows(indices, len(self), allow_empty=True)]

    def load(self, limit: int | None = None) -> ImageData:
        """Itself (the first ``limit`` images when given)."""
        if limit is None:
            return self
        check_positive_int(limit, "limit")
        return ImageData(self.images[:limit], None if self.labels is None else self.labels[:limit], self.name,
                         self.source, self.num_classes)


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


def _fashion_mnist(root=None):
    from . import fashion_mnist

    images, labels, source = fashion_mnist.arrays(root)
    return _to_unit_range(images, 255.0)[:, None], torch.from_numpy(labels), source


def stream(name: str, *, size: int | None = None, limit: int | None = None, split: str | None = None, root=None,
           repo: str | None = None, workers: int = 4):
    """A data set read a chunk at a time: :class:`~lfm_core.image_files.ImageFiles` for ``celeba_hq`` (``size``
    pixels, default 256), the in-memory :class:`ImageData` of :func:`load` for the offline sets.

    ``split`` (``"train"``, the default, or ``"val"``), ``repo`` and ``workers`` (threads that decode) apply to
    ``celeba_hq`` (:func:`lfm_core.celeba.celeba_hq_files`), whose ``root`` is a local folder (default
    ``$LFM_CELEBA_HQ_DIR``, else the hub mirror ``repo``, default ``celeba.CELEBA_HQ_REPO``); ``root`` of
    ``fashion_mnist`` is that of :func:`load`. The offline sets have no splits (:meth:`ImageData.split` holds
    images out) and refuse a ``split`` or ``repo``. ``limit`` keeps the first images.
    """
    _check_name(name)
    _check_split_and_repo(name, split, repo)
    if limit is not None:
        check_positive_int(limit, "limit")
    if name != "celeba_hq":
        return load(name, size=size, limit=limit, root=root)
    from .celeba import celeba_hq_files

    files = celeba_hq_files(size=256 if size is None else size, split=split or "train", root=root, repo=repo,
                            workers=workers)
    return files if limit is None else files.head(min(limit, len(files)))


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in NAMES:
        raise ValueError(f"unknown image data set name {name!r}; choose one of {', '.join(NAMES)}")


def _check_split_and_repo(name: str, split, repo) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if name != "celeba_hq" and (split is not None or repo is not None):
        what = "split" if split is not None else "repo"
        raise ValueError(f"{what} applies to 'celeba_hq' only; {name!r} is one fixed set (hold images out with "
                         "ImageData.split)")


def load(name: str, *, size: int | None = None, limit: int | None = None, split: str | None = None, root=None,
         repo: str | None = None, pad: int = 0) -> ImageData:
    """Load the image data set ``name`` (one of :data:`NAMES`) into memory, in ``[-1, 1]``, resized to ``size``.

    ``limit`` keeps the first ``limit`` images. ``pad`` adds that many pixels of the black background (-1) on each
    side after resizing: Fashion-MNIST's 28 x 28 images padded by 2 are the 32 x 32 that the autoencoder
    ``offline-fashion`` takes (:func:`crop` takes them back). For ``fashion_mnist``, ``root`` is the folder of its
    IDX files (read there only); without it, Debian's package, else a cache where the files are downloaded once
    (:func:`lfm_core.fashion_mnist.arrays`; :class:`~lfm_core.fashion_mnist.Unavailable` when that cannot be). For
    ``celeba_hq`` (``size`` 256 by default), ``split``, ``root`` and ``repo`` are those of :func:`stream`; mind the
    memory: 1000 images at 256 px take 0.8 GB as float32, and the latent cache reads the stream instead.
    """
    _check_name(name)
    _check_split_and_repo(name, split, repo)
    if size is not None:
        check_positive_int(size, "size")
    if limit is not None:
        check_positive_int(limit, "limit")
    check_nonnegative_int(pad, "pad")
    if name == "celeba_hq":
        if pad:
            raise ValueError("pad applies to the offline sets; CelebA-HQ's images fill their frame")
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
    if pad:
        images = torch.nn.functional.pad(images, (pad,) * 4, value=-1.0)
    return ImageData(images.contiguous(), labels, name, source, num_classes)


def crop(images: torch.Tensor, border: int) -> torch.Tensor:
    """``images [N, C, H, W]`` without ``border`` pixels on each side: the inverse of ``load(..., pad=border)``,
    e.g. decoded 32 x 32 Fashion-MNIST images back to the data's 28 x 28 (what :mod:`lfm_core.classifier` takes)."""
    check_tensor(images, "images", min_dim=4)
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    check_nonnegative_int(border, "border")
    h, w = images.shape[-2:]
    if 2 * border >= min(h, w):
        raise ValueError(f"border {border} leaves nothing of images {h} x {w}")
    return images[..., border:h - border, border:w - border] if border else images


def fashion_mnist_split(data: ImageData) -> tuple[ImageData, ImageData]:
    """Fashion-MNIST's own ``(train, test)`` split of ``load("fashion_mnist")``: its first 60 000 images and its last
    10 000. Anything other than the 70 000 images of the data set is an error, since the split is by position."""
    if not isinstance(data, ImageData) or data.name != "fashion_mnist":
        raise TypeError(f"data must be the ImageData of load('fashion_mnist'), got "
                        f"{getattr(data, 'name', type(data).__name__)!r}")
    if len(data) != 70_000:
        raise ValueError(f"Fashion-MNIST's split needs all 70 000 images (60 000 train, then 10 000 test); "
                         f"{data.source} holds {len(data)}")
    return (ImageData(data.images[:60_000], data.labels[:60_000], data.name, data.source, data.num_classes),
            ImageData(data.images[60_000:], data.labels[60_000:], data.name, data.source, data.num_classes))


def save_image_grid(images: torch.Tensor, path, *, nrow: int | None = None) -> Path:
    """Save ``[N, C, H, W]`` images in ``[-1, 1]`` as one PNG grid (1 or 3 channels); values outside are clipped,
    and NaN or infinite pixels (a diverged model's samples) are an error rather than grey."""
    from PIL import Image

    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path naming a .png file, got {type(path).__name__}")
    if not str(path).strip() or Path(path).suffix.lower() != ".png":
        raise ValueError(f"path must name a .png file, got {str(path)!r}")
    if Path(path).is_dir():
        raise ValueError(f"path {path} is a folder: name a .png file in it")
    check_tensor(images, "images", min_dim=4)
    n, c, h, w = images.shape
    if images.dim() != 4 or c not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    check_finite(images, "images", boundary=True)
    if nrow is not None:
        check_positive_int(nrow, "nrow")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + 2), nrow * (w + 2))
    for i, img in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        r, q = divmod(i, nrow)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = img
    arr = ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(path)
    return path
