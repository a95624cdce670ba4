"""Image files on disk, read a chunk at a time: decoded, checked, resized the same way every time.

:class:`ImageFiles` is a data set of encoded images (JPEG, PNG: a file each, or rows of a parquet file) that it
reads, decodes and resizes a chunk of ``n`` at a time, so that a set of any length goes through with bounded
memory; it shares its interface (``len``, ``labels``, ``content_key()``, ``chunks(n)``, ``load()``) with the
in-memory :class:`lfm_core.images.ImageData`. :func:`decode_image` checks each file (RGB, square, at least
``size``, not damaged) and names it when it is not; :func:`resize` is the one resize of the package
(antialiased bilinear), whose name is part of every content key. :func:`check_folder` turns a folder argument
into a path, refusing the empty path that would silently mean the current folder.

Copy with: utils, and for :meth:`ImageFiles.load` images, image_files, hub (``torch``, ``numpy``, ``Pillow``).
"""

from __future__ import annotations

import hashlib
import io
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .utils import check_finite, check_positive_int, check_tensor

__all__ = ["ImageFiles", "decode_image", "resize", "check_folder", "check_rows"]

_RESIZE = "bilinear-antialias-v1"  # part of every content key: another resize gives other images


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
        return check_rows(indices, len(self)).reshape(-1).tolist()

    def load(self, limit: int | None = None):
        """Every image (or the first ``limit``) in memory, as an :class:`~lfm_core.images.ImageData`."""
        from .images import ImageData

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


def check_rows(indices, length: int, name: str = "indices", *, allow_empty: bool = False) -> torch.Tensor:
    """``indices`` (a sequence or tensor of integer row numbers, each in ``[0, length)``) as an int64 tensor; a str,
    non-integer rows (``0.5``, ``'a'``, ``True``), rows out of range and (unless ``allow_empty``) no rows at all are
    an error naming ``name``."""
    if isinstance(indices, torch.Tensor):
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"{name} must hold integer row numbers, got a tensor of dtype {indices.dtype}")
        idx = indices.long()
    else:
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"{name} must be a sequence or tensor of row numbers, got {indices!r}")
        rows = []
        for i in indices:
            try:
                if isinstance(i, bool):   # True is an int to Python, not a row number
                    raise TypeError
                rows.append(operator.index(i))
            except TypeError:
                raise TypeError(f"{name} must hold integer row numbers, got {i!r} ({type(i).__name__})") from None
        idx = torch.tensor(rows, dtype=torch.long)
    lo, hi = (int(idx.min()), int(idx.max())) if idx.numel() else (0, 0)
    if (idx.numel() == 0 and not allow_empty) or (idx.numel() and (lo < 0 or hi >= length)):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}list of rows in [0, {length}), got "
                         f"{f'{lo}..{hi}' if idx.numel() else 'none'}")
    return idx


def check_folder(value, name: str) -> Path:
    """``value`` (a ``str`` or ``os.PathLike`` naming a folder) as a :class:`~pathlib.Path`, ``~`` expanded; anything
    else, and the empty path (which would silently mean the current folder), is an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path (str or os.PathLike), got {type(value).__name__}")
    if not str(os.fspath(value)).strip():
        raise ValueError(f"{name} must name a folder, got an empty path (which would mean the current folder)")
    return Path(value).expanduser()


def decode_image(data: bytes, size: int, *, name: str = "image") -> torch.Tensor:
    """One encoded RGB image (JPEG, PNG) -> ``[3, size, size]`` float32 in ``[-1, 1]``.

    Refuses images that are not RGB, not square, or smaller than ``size``, and damaged files (truncated,
    corrupt, or claiming more pixels than Pillow's decompression-bomb limit), each with a ``ValueError`` naming
    ``name``: CelebA-HQ is square RGB at 1024 px, and anything else in its folder is a mistake that resizing
    would hide.
    """
    from PIL import Image, UnidentifiedImageError

    check_positive_int(size, "size")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data ({name}) must be the encoded bytes of an image, got {type(data).__name__}")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image file that Pillow can read") from None
    except (Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ValueError(f"{name}: not a usable image ({type(exc).__name__}: {exc})") from None
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
        try:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (Image.DecompressionBombError, OSError, SyntaxError) as exc:   # "image file is truncated", ...
            raise ValueError(f"{name}: the image data are damaged ({type(exc).__name__}: {exc})") from None
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div_(127.5).sub_(1.0)
    return resize(x, size)[0].clamp_(-1, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size x size`` (antialiased bilinear; identity when already there)."""
    check_positive_int(size, "size")
    check_tensor(images, "images", min_dim=4)
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    check_finite(images, "images")
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
