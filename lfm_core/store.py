"""One storage format for every network the project writes or ships: a checksummed folder per network.

A network is stored as a folder, diffusers-style::

    config.json         {"format": "lfm_core.network/1", "_class_name": "MLP", "config": {...the model's config},
                         "record": {...how it was made: command, steps, seconds, losses, settings}, "dtype": ...}
    model.safetensors   the state dict (floating tensors in float16 with ``half=True``, ``"dtype": "float16"``)
    <name>.safetensors  further named tensors, where one network needs them (a checkpoint's EMA)
    checksums.json      the SHA-256 of every other file, written last

:func:`save` writes into a hidden temporary folder beside the target (``.<name>.tmp-<pid>-<id>``), then renames
the previous version aside (``.<name>.old-...``), the new one into place, and deletes the aside copy. A write
that raises or is killed leaves the previous version complete; killed between the two renames, it leaves complete
copies beside the missing folder, and :func:`load` moves the newest that verifies back (with a warning). Files
get the mode of a new file (0644 under the usual umask); a write that fails for want of space or permission is an
``OSError`` naming the operation and the path.

:func:`load` verifies every file against ``checksums.json`` first: a changed byte, a truncated or missing file,
broken JSON or an unknown format is a :class:`StoreError` naming the file. Without a model it builds the network
from ``_class_name`` and ``config`` (:data:`CLASSES`; nested mappings with a ``_class_name`` are built first,
e.g. a ``ConditionedVelocity``'s ``net`` and ``encoder``); a given model must be of the stored class and config.
Half-precision tensors come back in float32. :data:`ASSETS` is the one folder of the networks that ship with the
package. :func:`write_folder`, :func:`verify_files` and :func:`tidy` are the atomic write, the checksum check and
the clean-up after killed writes on their own (the Trainer's checkpoints use them).

Copy with: nothing else (``torch``, ``safetensors``); building a network by its class name imports its module.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["ASSETS", "FORMAT", "CLASSES", "StoreError", "save", "load", "load_state", "verify", "verify_files",
           "write_folder", "tidy", "build", "model_config", "file_mode", "os_error", "check_path"]

#: the folder of the networks that ship with the package (one store folder, or a folder of them, per use)
ASSETS = Path(__file__).resolve().parent / "assets"
FORMAT = "lfm_core.network/1"
CHECKSUMS = "checksums.json"
#: what :func:`load` can build: class name -> its module (".module": a sibling of this one), or the class itself
#: (add your own: ``CLASSES["MyNet"] = MyNet``, built as ``MyNet(**config)``)
CLASSES: dict = {
    **dict.fromkeys(("MLP", "MLPEnsemble", "AffineVelocity", "UNetVelocity", "DiTVelocity"), ".nets"),
    **dict.fromkeys(("GlowInterpolant", "AffineInterpolant"), ".interpolants"),
    **dict.fromkeys(("SemanticEncoder", "ConditionedVelocity"), ".conditioning"),
    "AverageVelocity": ".average_velocity",
    "SmallClassifier": ".classifier",
    **dict.fromkeys(("AutoencoderKL", "AutoencoderTiny"), "diffusers"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_LEFTOVER = re.compile(r"^\.(.+)\.(?:tmp|old)-(\d+)-[0-9a-f]+$")   # .<name>.tmp-<pid>-<id>, .<name>.old-<pid>-<id>


class StoreError(ValueError):
    """A stored network that cannot be used (corrupt, truncated, incomplete, of another format or class); the
    message names the file."""


# ------------------------------------------------------------------------------------------ checks and files
def check_path(value, name: str = "folder") -> Path:
    """``value`` (a ``str`` or ``os.PathLike``, not empty) as a ``Path``, else an error naming the argument ``name``."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    if not os.fspath(value):
        raise ValueError(f"{name} is an empty path (which would mean the current folder): name a folder")
    return Path(value)


def _module(model) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform can open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} is not readable JSON ({type(exc).__name__}: {exc})") from None


def model_config(model: torch.nn.Module) -> dict:
    """The model's own ``config`` mapping as JSON data (tuples as lists, anything else by its ``repr``), without
    diffusers' private ``_`` keys."""
    cfg = getattr(_module(model), "config", None)
    cfg = json.loads(json.dumps(dict(cfg), default=repr)) if isinstance(cfg, dict) or hasattr(cfg, "items") else {}
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------ the atomic folder write
def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on Windows every writer counts as alive: ``os.kill`` would end it)."""
    try:
        os.name == "nt" or os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        pass
    return True


def _leftovers(folder: Path) -> list[Path]:
    """The temporary and aside copies of ``folder`` beside it, newest first."""
    found = [p for p in folder.parent.iterdir() if (m := _LEFTOVER.match(p.name)) and m.group(1) == folder.name]
    return sorted(found, key=lambda p: p.stat().st_mtime if p.exists() else 0.0, reverse=True)


def _remove_stale(folder: Path, also: Path | None = None) -> None:
    """Delete the copies of ``folder`` left by writers that are gone (and ``also``)."""
    for p in _leftovers(folder):
        if p == also or not process_alive(int(_LEFTOVER.match(p.name).group(2))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def file_mode() -> int:
    """The mode of a new file under the process's umask, ``0o666 & ~umask`` (0644 under the usual 022): the mode
    :func:`write_folder` gives every file it writes (``safetensors`` creates its files 0600)."""
    mask = os.umask(0o022)  # the one way to read it is to set it
    os.umask(mask)
    return 0o666 & ~mask


def os_error(exc: BaseException, what: str) -> OSError | None:
    """The ``OSError`` behind ``exc`` (disk full, permission denied ...: ``exc`` itself, one it was raised from, or
    the ``os error N`` that ``safetensors`` writes into its messages) as an ``OSError`` of the same errno whose
    message says what was being done (``what`` names the operation and its path); None when there is none."""
    if not isinstance(exc, BaseException) or not isinstance(what, str):
        raise TypeError(f"exc must be an exception and what a str, got {type(exc).__name__}, {type(what).__name__}")
    if isinstance(exc, (ValueError, TypeError)):   # an argument's error, whatever it was raised from
        return None
    cause = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, OSError):
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            return None
        cause = OSError(int(found.group(1)), os.strerror(int(found.group(1))))
    text = f"{what} failed: {cause.strerror or str(cause) or type(cause).__name__}"
    return OSError(*((cause.errno, text, cause.filename)[: 3 if cause.filename else 2] if cause.errno else (text,)))


def write_folder(folder, write) -> Path:
    """Fill a new ``folder`` atomically: ``write(tmp)`` writes the files into a temporary folder beside it, then
    ``checksums.json`` (SHA-256 of each) is written last and the folder is swapped in, the previous version
    renamed aside and deleted once the new one is in place. Returns ``folder``. Files get mode :func:`file_mode`;
    an ``OSError`` (disk full, permission denied) is raised again naming the operation and the path
    (:func:`os_error`), once the temporary folder is removed and the previous version put back. A file at
    ``folder`` is refused (``ValueError``), never replaced; so is the empty path."""
    folder = check_path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder {folder} is a file: refusing to replace it by a folder (remove it, or name another)")
    if not callable(write):
        raise TypeError(f"write must be a callable that writes files into a folder, got {type(write).__name__}")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, aside = (folder.parent / f".{folder.name}.{kind}-{tag}" for kind in ("tmp", "old"))
    stage = f"creating the folder {folder.parent}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        stage = f"writing {folder} (into {tmp.name} beside it)"
        tmp.mkdir()
        write(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        if bad := [n for n in names if n == CHECKSUMS or n.startswith(".") or not (tmp / n).is_file()]:
            raise ValueError(f"write left {bad} in the folder: it may write plain files, other than {CHECKSUMS}")
        mode = file_mode()
        for name in names:
            os.chmod(tmp / name, mode)
            _fsync(tmp / name)
        (tmp / CHECKSUMS).write_text(json.dumps({n: _sha256(tmp / n) for n in names}, indent=1) + "\n")
        _fsync(tmp / CHECKSUMS)
        _fsync(tmp)
        moved = folder.exists() or folder.is_symlink()
        stage = f"moving the previous {folder} aside (to {aside.name})"
        if moved:
            os.replace(folder, aside)
        stage = f"renaming {tmp.name} to {folder}"
        try:
            os.replace(tmp, folder)
        except BaseException:
            if moved:
                os.replace(aside, folder)
            raise
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (named := os_error(exc, stage)) is not None:
            raise named from exc
        raise
    _fsync(folder.parent)
    _remove_stale(folder, aside)   # the new version supersedes the aside copy and the copies of writers gone
    return folder


def _checked(folder: Path, required=()) -> dict:
    """The checksums of ``folder``, which must list ``required``, every file verified against them."""
    sums_file = folder / CHECKSUMS
    sums = _read_json(sums_file)
    if not isinstance(sums, dict) or not all(isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d)
                                             for d in sums.values()):
        raise StoreError(f"{sums_file} must map file names to SHA-256 hex digests")
    for name, digest in sums.items():
        path = folder / name
        if not _NAME.match(name) or name == CHECKSUMS:
            raise StoreError(f"{sums_file} lists {name!r}, not a file name of the folder")
        if not path.is_file():
            raise StoreError(f"{path} is missing (listed in {CHECKSUMS}): the folder is incomplete")
        if _sha256(path) != digest:
            raise StoreError(f"{path} does not match its checksum in {CHECKSUMS}: truncated or changed")
    if missing := [name for name in required if name not in sums]:
        raise StoreError(f"{folder / missing[0]} is not listed in {sums_file}")
    return sums


def _locate(folder: Path) -> Path:
    """``folder``, or, when only copies left beside it by a killed write remain, the newest that verifies (moved
    into place when the parent folder can be written to)."""
    if folder.exists():
        if not (folder / CHECKSUMS).exists() and not (folder / "config.json").exists():
            raise FileNotFoundError(f"no stored network in {folder} (no config.json, no {CHECKSUMS})")
        return folder   # without checksums.json: _checked names it
    if (where := _restore(folder)) is None:
        raise FileNotFoundError(f"no stored network in {folder} (the folder does not exist)")
    return where


def _complete(folder: Path) -> bool:
    try:
        return _checked(folder) is not None
    except (StoreError, OSError):
        return False


def _restore(folder: Path) -> Path | None:
    """Move the newest complete copy that a killed write left beside the missing ``folder`` into its place (where
    that cannot be done, read the copy); None when there is none."""
    for copy in _leftovers(folder):
        if not _complete(copy):
            continue
        try:
            os.replace(copy, folder)
        except OSError:   # a folder that cannot be written to, or another reader restored it first
            return folder if (folder / CHECKSUMS).exists() else copy
        warnings.warn(f"{folder} was missing or damaged; restored the complete copy {copy.name} that a stopped write "
                      "left beside it", RuntimeWarning, stacklevel=4)
        return folder
    return None


def tidy(parent) -> None:
    """Settle what killed writes left in the folder ``parent``: each folder that is missing, or that fails its
    checksums while a complete copy of it is left, gets back the newest complete copy (every copy is verified
    first), and the copies of writers that are gone are deleted (superseded, or incomplete)."""
    parent = check_path(parent, "parent")
    names = {m.group(1) for p in (parent.iterdir() if parent.is_dir() else ()) if (m := _LEFTOVER.match(p.name))}
    for name in sorted(names):
        folder, damaged = parent / name, None
        if folder.exists() and not _complete(folder) and any(_complete(c) for c in _leftovers(folder)):
            damaged = parent / f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(folder, damaged)
        if not folder.exists():
            _restore(folder)
        _remove_stale(folder, damaged)


def _verified(folder: Path) -> tuple[Path, dict, dict]:
    sums = _checked(where := _locate(folder), ("config.json", "model.safetensors"))
    path = where / "config.json"
    config = _read_json(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise StoreError(f"{path}: unknown format {found!r} (expected {FORMAT!r})")
    for key, kind in (("_class_name", str), ("config", dict), ("record", dict)):
        if not isinstance(config.get(key), kind):
            raise StoreError(f"{path}: {key!r} must be a {kind.__name__}, got {config.get(key)!r}")
    return where, sums, config


def verify(folder) -> dict:
    """Check a stored network's files against ``checksums.json`` and return its ``config.json``
    (:class:`StoreError` naming the file that is wrong; ``FileNotFoundError`` when nothing is stored there)."""
    return _verified(check_path(folder))[2]


def verify_files(folder, required=()) -> dict:
    """Check every file of a folder that :func:`write_folder` wrote against its ``checksums.json``, which must
    list ``required``; return the checksums (:class:`StoreError` naming the file that is wrong)."""
    return _checked(_locate(check_path(folder)), tuple(required))


# ---------------------------------------------------------------------------------------------- save, load
def _state(module_or_state, name: str, half: bool) -> dict:
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"{name} must be a torch.nn.Module or a dict of tensors, got {type(module_or_state).__name__}")
    cpu = {str(k): v.detach().cpu().contiguous() for k, v in state.items()}
    return {k: v.half() if half and v.is_floating_point() else v for k, v in cpu.items()}


def save(folder, model: torch.nn.Module, record: dict | None = None, *, half: bool = False,
         tensors: dict | None = None, write=None) -> Path:
    """Store ``model`` in ``folder`` (replacing what is there, atomically) and return ``folder``.

    ``record``: JSON-serialisable data on how the network was made. ``half=True`` stores floating tensors in
    float16. ``tensors``: name -> module or state dict, each written to ``<name>.safetensors`` (also halved with
    ``half``). ``write(tmp)``: writes further files into the temporary folder (all are checksummed).
    """
    folder, record = check_path(folder), {} if record is None else record
    for value, name, what in ((record, "record", "how the network was made"), (tensors, "tensors", "name -> module")):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict ({what}), got {type(value).__name__}")
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:   # NaN and inf are not JSON
        raise type(exc)(f"record must be JSON-serialisable (finite numbers): {exc}") from None
    tensors = dict(tensors or {})
    if not isinstance(half, bool):
        raise TypeError(f"half must be a bool, got {type(half).__name__}")
    if write is not None and not callable(write):
        raise TypeError(f"write must be a callable that writes files into a folder, got {type(write).__name__}")
    for name in tensors:
        if not isinstance(name, str) or not _NAME.match(name) or name in ("model", "config", "checksums"):
            raise ValueError(f"tensors: {name!r} must be a file name of letters, digits and _ . + - (not 'model')")
    files = {"model": _state(_module(model), "model", half)}
    files.update({n: _state(m, f"tensors[{n!r}]", half) for n, m in tensors.items()})
    dtypes = {str(v.dtype).removeprefix("torch.") for v in files["model"].values() if v.is_floating_point()}
    config = {"format": FORMAT, "_class_name": type(model).__name__, "config": model_config(model), "record": record,
              "dtype": dtypes.pop() if len(dtypes) == 1 else ("mixed" if dtypes else None)}

    def fill(tmp: Path) -> None:
        for name, state in files.items():
            save_file(state, str(tmp / f"{name}.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        if write is not None:
            write(tmp)

    return write_folder(folder, fill)


def _read(folder: Path, name: str) -> tuple[Path, dict, dict]:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be the name of a tensor file of the folder, got {name!r}")
    where, sums, config = _verified(folder)
    path = where / f"{name}.safetensors"
    if path.name not in sums:
        raise StoreError(f"name {name!r}: {path} is not part of the stored network (it holds {sorted(sums)})")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - checksummed but not safetensors: written by something else
        raise StoreError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    if config.get("dtype") == "float16":
        state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    return where, state, config


def load_state(folder, name: str = "model") -> tuple[dict, dict]:
    """``(state dict, config.json)`` of ``<name>.safetensors`` in a stored network, after verifying every file;
    float16 tensors of a half-precision folder come back in float32."""
    return _read(check_path(folder), name)[1:]


def build(class_name: str, config: dict) -> torch.nn.Module:
    """A fresh network of a class of :data:`CLASSES` from its config (nested ``_class_name`` mappings built first)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if not isinstance(class_name, str) or class_name not in CLASSES:
        raise (ValueError if isinstance(class_name, str) else TypeError)(f"class_name must be a known class ("
            f"{', '.join(sorted(CLASSES))}), got {class_name!r}: build it yourself, or add its class to CLASSES")
    if isinstance(cls := CLASSES[class_name], str):
        cls = getattr(importlib.import_module(cls, __package__ if cls.startswith(".") else None), class_name)
    kwargs = {k: build(v["_class_name"], {a: b for a, b in v.items() if a != "_class_name"})
              if isinstance(v, dict) and "_class_name" in v else v for k, v in config.items()}
    try:
        return cls.from_config(kwargs) if hasattr(cls, "from_config") else cls(**kwargs)
    except (TypeError, ValueError) as exc:   # the class refused its arguments
        raise (ValueError if isinstance(exc, ValueError) else TypeError)(
            f"config {config} does not build a {class_name}: {exc}") from exc


def load(folder, model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict]:
    """``(network, record)`` of a stored network, every file verified first.

    Without ``model`` the network is built from its class name and config (:func:`build`); a given ``model``
    must be of the stored class and config, and is loaded into (strictly: every key and shape).
    """
    folder, model = check_path(folder), model if model is None else _module(model)
    where, state, config = _read(folder, "model")
    path, stored, name = where / "config.json", config["config"], config["_class_name"]
    if model is None:
        try:
            model = build(name, stored)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{path}: cannot build its {name} ({exc})") from None
    elif type(model).__name__ != name:
        raise StoreError(f"{path} holds class {name}; the model given is of class {type(model).__name__}")
    elif (ours := model_config(model)) != stored:
        diff = {k: (stored.get(k), ours.get(k)) for k in sorted({*stored, *ours}) if stored.get(k) != ours.get(k)}
        raise StoreError(f"{path} holds a {name} of another configuration than the model given (stored vs given: "
                         f"{diff}): build the model as stored, or load without one")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise StoreError(f"{where / 'model.safetensors'} does not fit the {name}: {exc}") from None
    return model, config["record"]
