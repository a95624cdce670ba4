r"""A latent cache: a data set's latents encoded once, kept on disk and reused exactly when nothing changed.

Latent flow matching trains on ``z = s * E(x)`` (:mod:`lfm_core.autoencoders`); encoding the images is the same
work every epoch and every run, so :func:`cached_latents` does it once. An entry is keyed by a SHA-256 of the
images and labels and of the autoencoder (class, configuration, weights and scale), so it is reused exactly when
both are the same, and verified by a checksum of its tensors when read back.

Copy with: autoencoders, hub, image_files, images, store, utils (``torch``, ``diffusers``, ``safetensors``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

import torch

from . import store
from .autoencoders import LatentAutoencoder
from .image_files import ImageFiles, check_folder
from .images import ImageData
from .utils import check_positive_int, check_writable_dir

__all__ = ["CACHE_FORMAT", "cached_latents"]

CACHE_FORMAT = "lfm_core.latents/1"


def _tensor_checksum(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        v = tensors[name]
        h.update(f"{name}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_entry(path: Path, key: str):
    """``(latents, labels)`` of a cache file that verifies, else a str saying what is wrong with it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except OSError as exc:  # not readable by this user: not corrupt
        raise store.os_error(exc, f"reading the latent cache entry {path}") from exc
    except Exception as exc:  # noqa: BLE001 - any parse error means the file is unusable
        return f"unreadable ({type(exc).__name__}: {exc})"
    if meta.get("format") != CACHE_FORMAT:
        return f"unknown format {meta.get('format')!r}"
    if meta.get("key") != key:
        return "its key does not match its name (the file was replaced)"
    if "latents" not in tensors or _tensor_checksum(tensors) != meta.get("checksum"):
        return "its contents do not match their checksum (truncated or corrupted)"
    return tensors["latents"], tensors.get("labels")


def _remove_stale_writes(cache_dir: Path) -> None:
    """Delete temporary files (entries, writability probes) of processes that are gone (killed mid-write); others
    may still be writing."""
    for tmp in cache_dir.glob(".tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except (IndexError, ValueError):
            pid = -1
        if pid < 0 or not store.process_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _describe_entries(cache_dir: Path) -> str:
    from safetensors import safe_open

    lines = []
    for p in sorted(cache_dir.glob("latents-*.safetensors")):
        try:
            with safe_open(str(p), framework="pt") as f:
                m = f.metadata() or {}
            lines.append(f"{p.name}: {m.get('count')} images of {m.get('dataset')!r} by {m.get('autoencoder')!r}")
        except Exception:  # noqa: BLE001
            lines.append(f"{p.name}: unreadable")
    return "; ".join(lines) or "none"


def cached_latents(autoencoder: LatentAutoencoder, data: ImageData | ImageFiles, cache_dir, *, batch_size: int = 64,
                   read_only: bool = False, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents (and labels) of ``data``, encoded once and kept in ``cache_dir``, keyed by content.

    ``data`` is an :class:`~lfm_core.images.ImageData` (in memory) or an :class:`~lfm_core.image_files.ImageFiles`
    (read from disk a chunk of ``batch_size`` images at a time: decoded, resized and encoded straight into the
    cache; peak memory is the latents of all images, ``N x 4 x (S/8)^2`` floats (0.5 GB for the 30 000
    CelebA-HQ images at 256 px), plus one chunk and the autoencoder's activations for it).
    The key is a SHA-256 of the images and labels (``data.content_key()``) and of the autoencoder (class,
    configuration, weights and scale: :meth:`LatentAutoencoder.fingerprint`). Each entry is one file,
    ``latents-<key>.safetensors``, holding the latents, the labels, the key and a checksum of the tensors; it
    is written under a temporary name and renamed when complete, so a killed write leaves no entry. A call
    with the same images and autoencoder reads the entry back (and checks it); other images or another
    autoencoder get another entry. A corrupt entry is never used: it is re-encoded with a warning, or, with
    ``read_only=True`` (which never encodes), refused like a missing one, with a ``ValueError`` that lists what
    the cache holds. ``overwrite=True`` encodes again even when a good entry exists. Unless ``read_only``,
    ``cache_dir`` is checked before any image is encoded (a file, or a folder that cannot be written to, is a
    ``ValueError``); an entry is written with the mode of a new file (0644 under the usual umask), and a failed
    write or read (disk full, permission denied) is an ``OSError`` naming the operation and the path.
    """
    from safetensors.torch import save_file

    if not isinstance(autoencoder, LatentAutoencoder):
        raise TypeError(f"autoencoder must be a LatentAutoencoder (autoencoders.load), got "
                        f"{type(autoencoder).__name__}")
    if not isinstance(data, (ImageData, ImageFiles)):
        raise TypeError(f"data must be an ImageData or ImageFiles (lfm_core.images.load or .stream), got "
                        f"{type(data).__name__}")
    check_positive_int(batch_size, "batch_size")
    for flag, name in ((read_only, "read_only"), (overwrite, "overwrite")):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if read_only and overwrite:
        raise ValueError("read_only=True and overwrite=True contradict each other")
    cache_dir = check_folder(cache_dir, "cache_dir")   # '' would mean the current folder
    channels = data.images.shape[1] if isinstance(data, ImageData) else 3   # ImageFiles decodes RGB
    if channels != autoencoder.in_channels:
        raise ValueError(f"data has {channels}-channel images but the autoencoder {autoencoder.name!r} takes "
                         f"{autoencoder.in_channels} channel(s): encode data it was trained on")
    if not read_only:
        check_writable_dir(cache_dir, "cache_dir")
        _remove_stale_writes(cache_dir)
    key = hashlib.sha256(f"{data.content_key()}|{autoencoder.fingerprint()}".encode()).hexdigest()
    path = cache_dir / f"latents-{key[:24]}.safetensors"
    if path.exists() and not overwrite:
        entry = _read_entry(path, key)
        if not isinstance(entry, str):
            return entry
        if read_only:
            raise ValueError(f"the latent cache entry {path} is corrupt ({entry}) and read_only=True forbids "
                             "encoding again")
        warnings.warn(f"the latent cache entry {path} is corrupt ({entry}); encoding again", RuntimeWarning,
                      stacklevel=2)
    elif read_only:
        what = "found" if cache_dir.is_dir() else "(the folder does not exist)"
        raise ValueError(f"no latents of these {len(data)} images ({data.name}) by {autoencoder.name!r} in {cache_dir} "
                         f"{what}; it holds: {_describe_entries(cache_dir) if cache_dir.is_dir() else 'nothing'}. "
                         "Call with read_only=False to encode them")
    latents, shape, done = None, None, 0
    for chunk in data.chunks(batch_size):
        z = autoencoder.encode(chunk, batch_size=batch_size).cpu()
        if latents is None:
            shape = list(chunk.shape[1:])
            latents = torch.empty((len(data), *z.shape[1:]), dtype=z.dtype)
        latents[done:done + len(z)] = z
        done += len(z)
    if done != len(data):
        raise RuntimeError(f"data yielded {done} images but has {len(data)}")
    latents = latents.contiguous()
    tensors = {"latents": latents}
    if data.labels is not None:
        tensors["labels"] = data.labels.detach().cpu().to(torch.int64).contiguous()
    meta = {"format": CACHE_FORMAT, "key": key, "checksum": _tensor_checksum(tensors), "autoencoder": autoencoder.name,
            "fingerprint": autoencoder.fingerprint(), "scale": repr(autoencoder.scale), "count": str(len(data)),
            "image_shape": json.dumps(shape), "dataset": data.name, "source": data.source}
    tmp = cache_dir / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage = f"creating the latent cache folder {cache_dir}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        stage = f"writing the latent cache entry {path} (into {tmp.name} beside it)"
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, store.file_mode())  # safetensors creates it 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        stage = f"renaming {tmp.name} to {path}"
        os.replace(tmp, path)
    except Exception as exc:
        if (named := store.os_error(exc, stage)) is not None:
            raise named from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return latents, tensors.get("labels")
