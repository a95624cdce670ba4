"""Networks trained ahead by a committed script, stored in the package, and how quick mode starts from them.

Some effects need more training than a notebook's quick mode (2 CPU cores, a few minutes) can afford. The
notebook then starts its networks from weights made by *its own training code* run for the longer, quick-mode
length ahead of time, and trains a short continuation live; it says so where it does. The mechanism:

* A folder (default ``lfm_core/assets/<name>``) holds one subfolder per network, ``<entry>/``, in the format of
  :mod:`lfm_core.store` (config, weights and checksums), whose record holds the training steps, the seconds, the
  loss history, the settings and the command that made it. :func:`add` writes one entry atomically (floating
  tensors optionally in float16, which halves the size and is far below what training changes), :func:`load`
  verifies and reads the folder back in float32.
* ``LFM_MODE=pretrain`` (set by ``python3 tasks.py pretrain``; the notebooks run their quick sizes) makes a
  notebook *write* its networks: :func:`start` returns the pretraining length and leaves the network as
  initialised, :func:`finish` stores it with :func:`add`.
* In quick mode :func:`start` loads the stored weights into the network and returns the live continuation's
  length; in full mode and the rehearsal it does nothing and returns the full length.
* The stored networks are those of seed 0. With another ``LFM_SEED`` (:func:`lfm_core.runtime.seed`), quick mode
  trains them from scratch for their pretraining length instead, so that a run with that seed checks the
  notebook's claims on networks trained with it (``benchmarks/notebook_seeds.py``).

Copy with: runtime, store (``torch``, ``safetensors``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from . import runtime, store

__all__ = ["ASSETS", "add", "load", "pretraining", "start", "finish", "history", "summary"]

#: where the package keeps its pretrained networks (:data:`lfm_core.store.ASSETS`)
ASSETS = store.ASSETS
_ENTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _check_entry(entry) -> str:
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise ValueError(f"entry must be a name of letters, digits and _ . + - (a file name), got {entry!r}")
    return entry


def _bare(folder) -> bool:
    return isinstance(folder, str) and "/" not in folder and "\\" not in folder


def _folder(folder) -> Path:
    if isinstance(folder, bool) or not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path or the name of a folder of the assets, got {type(folder).__name__}")
    store.check_path(folder, "folder")   # not empty: that would be the assets themselves, or the current folder
    if _bare(folder) and not _ENTRY.match(folder):
        raise ValueError(f"folder must be a path or the name of a folder of the assets (a file name), got {folder!r}")
    return ASSETS / folder if _bare(folder) else Path(folder)   # a bare name: a folder of the package's assets


def add(folder, entry: str, model: torch.nn.Module, record: dict, *, half: bool = False) -> Path:
    """Store ``model`` with ``record`` (JSON-serialisable: how it was made) as the network ``folder/<entry>/``
    (:func:`lfm_core.store.save`: atomic, so the previous version stays whole until the new one is), leaving the
    other entries. ``half=True`` stores floating tensors in float16. ``folder``: a path, or a bare name for a
    folder of :data:`ASSETS`. Returns the entry's folder."""
    _check_entry(entry)
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    return store.save(_folder(folder) / entry, model, record, half=half)


def _assets() -> list[str]:
    """The folders of the package's assets."""
    return sorted(p.name for p in ASSETS.iterdir() if p.is_dir() and _ENTRY.match(p.name)) if ASSETS.is_dir() else []


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if _ENTRY.match(p.name) and (p / "config.json").exists()) \
        if folder.is_dir() else []


def load(folder, entries=None) -> tuple[dict, dict]:
    """``(states, records)``: entry -> state dict (floating tensors in float32) and entry -> record, read from
    ``folder`` (a path, or a bare name for a folder of :data:`ASSETS`), every file verified against its checksum
    (:class:`lfm_core.store.StoreError` names a corrupt one). ``entries``: read only the weights of these (a
    non-empty list of entry names; the records of all are returned). A bare name that is no folder of the assets
    is a ``ValueError`` listing them; a path that holds no networks, a ``FileNotFoundError``."""
    path = _folder(folder)
    if entries is not None and (isinstance(entries, str) or not isinstance(entries, (list, tuple, set, frozenset))
                                or not all(isinstance(e, str) for e in entries)):
        raise TypeError(f"entries must be a list of entry names or None (all), got {entries!r}")
    if entries is not None and not entries:
        raise ValueError("entries is empty: name the entries whose weights to read, or pass None for all")
    names = _names(path)
    if not names and _bare(folder) and not path.exists():
        raise ValueError(f"folder {folder!r} is not a folder of the package's assets (known: {', '.join(_assets())})")
    if not names:
        raise FileNotFoundError(f"no pretrained networks in {path}: `python3 tasks.py pretrain` writes the "
                                "notebooks' networks")
    if entries is not None and (unknown := sorted(set(entries) - set(names))):
        raise ValueError(f"entries {unknown} are not in {path} (it holds {names})")
    folder = path
    records, states = {}, {}
    for name in names:
        if entries is None or name in entries:
            states[name], config = store.load_state(folder / name)
        else:
            config = store.verify(folder / name)
        records[name] = config["record"]
    return states, records


def pretraining() -> bool:
    """True while ``LFM_MODE=pretrain`` (``python3 tasks.py pretrain``): the notebook writes its networks."""
    on = runtime.mode_setting() == "pretrain"
    if on and runtime.seed() != 0:
        raise ValueError(f"LFM_MODE=pretrain writes the seed-0 networks that quick mode starts from; LFM_SEED is "
                         f"{runtime.seed()}: unset it (with another seed, quick mode trains from scratch anyway)")
    return on


def start(model: torch.nn.Module, folder, entry: str | None, *, steps: int,
          pretrain_steps: int) -> tuple[int, dict | None]:
    """Prepare ``model`` for training and return ``(steps to train now, the record of its start or None)``.

    Quick mode: load the weights stored under ``folder/entry`` into ``model`` and return ``steps`` (the live
    continuation) with their record. While pretraining (:func:`pretraining`), or in quick mode with a seed
    other than 0 (the stored networks are seed 0's): ``pretrain_steps`` from the network as initialised. Full
    mode and the rehearsal, or ``entry=None`` (a network that is never pretrained): ``steps`` from the network
    as initialised.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for value, name in ((steps, "steps"), (pretrain_steps, "pretrain_steps")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if entry is None:
        return steps, None
    _check_entry(entry)
    if pretraining() or (runtime.is_quick() and runtime.seed() != 0):
        return pretrain_steps, None
    if not runtime.is_quick():
        return steps, None
    try:
        record = store.verify(_folder(folder) / entry)["record"]
    except FileNotFoundError:
        raise KeyError(f"{_folder(folder)} holds no network {entry!r} (it holds {_names(_folder(folder))}): "
                       "`python3 tasks.py pretrain` writes it") from None
    if record.get("steps") != pretrain_steps:
        raise ValueError(f"{entry!r} was pretrained for {record.get('steps')} steps, the notebook asks for "
                         f"{pretrain_steps}: run `python3 tasks.py pretrain` again")
    store.load(_folder(folder) / entry, model)   # checks the class and config, loads every weight
    return steps, record


def finish(model: torch.nn.Module, folder, entry: str | None, result, settings: dict | None = None) -> None:
    """While pretraining, store ``model`` (the network to start from: usually the EMA) under ``folder/entry``
    with ``result``'s steps, seconds and losses (a :class:`lfm_core.trainer.FitResult`) and ``settings``, in
    float16. Otherwise, or with ``entry=None``, nothing."""
    if entry is None or not pretraining():
        return
    losses = [round(float(v), 5) if math.isfinite(v) else None for v in result.losses]   # skipped steps' NaN: null
    add(folder, entry, model, {"steps": len(losses), "seconds": round(float(result.seconds), 2), "losses": losses,
                                "settings": settings or {}, "command": "python3 tasks.py pretrain"}, half=True)


def _check_start(start, result) -> None:
    if start is not None and not isinstance(start, dict):
        raise TypeError(f"start must be the record start() returned (a dict) or None, got {type(start).__name__}")
    if not (hasattr(result, "losses") and hasattr(result, "seconds")):
        raise TypeError(f"result must be the FitResult of the training (losses, seconds), got {type(result).__name__}")


def history(start: dict | None, result) -> list:
    """Every training step's loss of a network :func:`start` prepared: the stored pretraining's (when it was
    loaded), then ``result``'s (the :class:`lfm_core.trainer.FitResult` of the training that followed)."""
    _check_start(start, result)
    stored = [float("nan") if v is None else v for v in start.get("losses", [])] if start else []
    return stored + list(result.losses)


def summary(start: dict | None, result) -> str:
    """One line on how a network was trained: ``"500 pretrained steps (142 s) + 60 steps in 10.4 s"``."""
    _check_start(start, result)
    steps = len(result.losses)
    before = f"{start['steps']} pretrained steps ({start.get('seconds', 0):.0f} s) + " if start else ""
    return f"{before}{steps} steps in {result.seconds:.1f} s ({1000 * result.seconds / max(steps, 1):.0f} ms/step)"
