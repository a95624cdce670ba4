"""Fashion-MNIST's files: found on disk, else downloaded once, checked, and read as arrays.

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; Zalando Research, MIT licence) is 70 000 grayscale images of
28 x 28 pixels in 10 classes (named by :data:`lfm_core.images.FASHION_MNIST_CLASSES`), as four IDX files (gzipped or
not). :func:`arrays` reads them from

1. ``root``, when given (there only);
2. :data:`DEBIAN_DIR`, where Debian's ``dataset-fashion-mnist`` package puts them;
3. :func:`cache_dir`, downloading the files it lacks from :data:`URL` first (:func:`download`).

The download asks :func:`lfm_core.hub.require` whether the host answers within its deadline, else raises
:class:`Unavailable` naming the offline alternatives. Each file is written under a temporary name and kept only
when its MD5 is the one the authors publish and it parses as the IDX array it should be, so an interrupted or
damaged download leaves nothing behind and the next call downloads again.

:func:`lfm_core.images.load` ``("fashion_mnist")`` turns the arrays into images in ``[-1, 1]``.

Copy with: hub, image_files (``check_folder``), utils, runtime (the progress bar) (``numpy``; ``tqdm``).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from . import hub
from .image_files import check_folder
from .utils import check_writable_dir

__all__ = ["DEBIAN_DIR", "URL", "CACHE_ENV", "FILES", "Unavailable", "cache_dir", "download", "read_idx",
           "arrays"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian's dataset-fashion-mnist package
#: where Fashion-MNIST is downloaded from: the authors' repository (Zalando Research, MIT licence), data/fashion/
URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
#: the environment variable naming the folder the download is kept in (see :func:`cache_dir`)
CACHE_ENV = "LFM_FASHION_MNIST_CACHE"
#: each file: the MD5 the authors publish for it (README of zalandoresearch/fashion-mnist) and its IDX shape
FILES = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", (60_000, 28, 28)),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", (60_000,)),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", (10_000, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", (10_000,)),
}
READ_TIMEOUT_S = 60.0   # the longest wait for one read of the download (the probe before it has its own deadline)


def read_idx(path: Path, name=None) -> np.ndarray:
    """The array of the IDX file ``path`` (gzipped when its name ends in ``.gz``); errors name ``name`` (default
    ``path``)."""
    name = path if name is None else name
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0":
                raise ValueError(f"{name}: not an IDX file (its first bytes are {head!r})")
            dtype_code, ndim = head[2], head[3]
            if dtype_code != 0x08:
                raise ValueError(f"{name}: only unsigned-byte IDX files are supported")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{name}: truncated IDX header")
            shape = struct.unpack(">" + "I" * ndim, dims)
            body = f.read()
    except (OSError, EOFError) as exc:   # gzip's BadGzipFile is an OSError; a cut gzip stream an EOFError
        raise ValueError(f"{name}: not a readable IDX file ({type(exc).__name__}: {exc})") from None
    if len(body) != math.prod(shape):
        raise ValueError(f"{name}: {len(body)} bytes of data where its header {shape} needs {math.prod(shape)} "
                         "(truncated or damaged)")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


class Unavailable(hub.HubUnavailable, FileNotFoundError):
    """Fashion-MNIST is in none of its folders and cannot be downloaded: a :class:`~lfm_core.hub.HubUnavailable`
    (its host cannot be reached, or the download broke off) that is also a ``FileNotFoundError`` (the files are
    missing)."""


def cache_dir() -> Path:
    """The folder the download of Fashion-MNIST is kept in: ``$LFM_FASHION_MNIST_CACHE``, else
    ``$XDG_CACHE_HOME/lfm_core/fashion-mnist``, else ``~/.cache/lfm_core/fashion-mnist``."""
    if os.environ.get(CACHE_ENV, "").strip():
        return check_folder(os.environ[CACHE_ENV], f"${CACHE_ENV}")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lfm_core" / "fashion-mnist"


def _holds(folder: Path) -> bool:
    return all(_find(folder, name.removesuffix(".gz")) is not None for name in FILES)


def _alternatives(cache: Path) -> str:
    return ("Offline alternatives: install Debian's dataset-fashion-mnist package (sudo apt install "
            f"dataset-fashion-mnist; it puts the files in {DEBIAN_DIR}), copy the four IDX files "
            f"({', '.join(FILES)}) into {cache} or pass their folder as root=, or use the offline "
            "data sets 'lfw_faces' or 'digits'.")


def _fetch(url: str, dest: Path, desc: str) -> str:
    """Write what ``url`` serves into ``dest`` and return its MD5; a progress bar where
    :func:`lfm_core.runtime.show_progress` says so."""
    from tqdm.auto import tqdm

    from .runtime import show_progress

    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as reply, open(dest, "wb") as out:
        total = int(reply.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False, disable=not show_progress()) as bar:
            while chunk := reply.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def download(cache: Path) -> None:
    """Download the IDX files that ``cache`` lacks from :data:`URL`. The host is asked first, within
    :mod:`lfm_core.hub`'s deadline; each file is written under a temporary name in ``cache`` and renamed only when
    its MD5 is the one the authors publish and it parses as the IDX array it should be (shape, labels 0-9)."""
    alternatives = _alternatives(cache)
    try:
        hub.require(f"The download of Fashion-MNIST (in neither {DEBIAN_DIR} nor {cache})",
                    host=urlparse(URL).hostname, alternatives=alternatives)
    except hub.HubUnavailable as exc:
        raise Unavailable(str(exc)) from None
    check_writable_dir(cache, "the Fashion-MNIST cache")
    cache.mkdir(parents=True, exist_ok=True)
    for name, (md5, shape) in FILES.items():
        if (cache / name).exists():
            continue
        url = URL + name
        tmp = cache / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
        try:
            try:
                got = _fetch(url, tmp, f"Fashion-MNIST {name}")
            except OSError as exc:   # urllib's URLError and HTTPError, a timeout, a dropped connection
                raise Unavailable(f"Fashion-MNIST: the download of {url} failed "
                                  f"({type(exc).__name__}: {exc}). {alternatives}") from None
            if got != md5:
                raise ValueError(f"the download of {url} has MD5 {got}, not the {md5} its authors publish "
                                 "(truncated or damaged); nothing was kept, so loading again downloads it again")
            array = read_idx(tmp, url)
            labels = len(shape) == 1
            if array.shape != shape or (labels and array.size and array.max() > 9):
                found = f", labels up to {int(array.max())}," if labels and array.size else ""
                raise ValueError(f"the download of {url} holds an array of shape {array.shape}{found} where "
                                 f"Fashion-MNIST has shape {shape}" + (" and labels 0-9" if labels else ""))
            os.replace(tmp, cache / name)
        finally:
            tmp.unlink(missing_ok=True)


def arrays(root=None) -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST's 70 000 images (``uint8 [N, 28, 28]``, the 60 000 training images first), their labels
    (``int64 [N]``, 0-9) and where they were read from: ``root`` when given (there only), else :data:`DEBIAN_DIR`,
    else :func:`cache_dir`, downloading into it first when it lacks them."""
    if root is not None:
        d = check_folder(root, "root")
        origin = ""
    elif _holds(DEBIAN_DIR):
        d, origin = DEBIAN_DIR, " (Debian package dataset-fashion-mnist)"
    else:
        d, origin = cache_dir(), f" (downloaded from {URL})"
        if not _holds(d):
            download(d)
    images, labels = [], []
    for prefix in ("train", "t10k"):
        ip, lp = _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")
        if ip is None or lp is None:
            raise FileNotFoundError(f"Fashion-MNIST was not found in {d}. {_alternatives(d)}")
        images.append(read_idx(ip))
        labels.append(read_idx(lp))
        if len(images[-1]) != len(labels[-1]) or images[-1].ndim != 3 or labels[-1].ndim != 1:
            raise ValueError(f"{ip} holds {images[-1].shape} and {lp} {labels[-1].shape}: expected N images of "
                             "28 x 28 and their N labels")
        if labels[-1].size and labels[-1].max() > 9:
            raise ValueError(f"{lp}: labels must be 0..9, found {int(labels[-1].max())}")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), f"Fashion-MNIST IDX files in {d}{origin}"
