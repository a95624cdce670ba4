r"""Training checkpoints: written atomically, checksummed, and resumed bit for bit.

**Format** (:data:`FORMAT`, one folder ``out_dir/ckpt-<step>/`` per checkpoint): the model stored as a
:mod:`lfm_core.store` folder, with the optimisation's files beside it under the same checksums:

* ``model.safetensors`` and ``ema.safetensors``: the weights of the model and of its moving average;
* ``state.pt``: the optimiser, the gradient scaler, every random state (the trainer's generator, torch's,
  Python's, NumPy's and CUDA's global ones) and the losses so far; read back with ``weights_only=True``;
* ``config.json``: the model's class and configuration (diffusers-style), and as its record the step, a
  signature of its parameter shapes, the training configuration and the history of the changes applied on
  resume; ``lfm_core.store.load(folder)`` rebuilds the model from it;
* ``checksums.json``: the SHA-256 of every other file, written last.

**Atomic writes.** :func:`lfm_core.store.write_folder` writes a folder under a hidden
temporary name, flushes it to disk and renames it: a folder named ``ckpt-*`` is always complete, whenever the
process is killed, and the previous version of a folder stays until the new one is complete and in place.
Older checkpoints are renamed out of the ``ckpt-*`` names before they are deleted. ``latest`` names the newest.
:func:`clean_partial` settles what killed writes left: a complete copy (verified by its checksums) of a
missing checkpoint is moved back into place, incomplete ones are deleted. Files have the mode of a new file
(0644 under the usual umask); a failed write (disk full, permission denied) is an ``OSError`` naming the
operation and the path, and leaves the previous checkpoints as they were.

**Resume.** :func:`load` takes the newest checkpoint that verifies (:func:`verify_folder`: every file
matches its checksum), warning about each corrupt one it skips (naming its path). It compares the stored
configuration with the new one and refuses differences in the settings that change the optimisation (listing
them) unless ``override=True``, which applies them and records them in the history. Loading restores the
trainer's own generator and keeps the global random states (torch's, Python's, NumPy's, CUDA's) of the
checkpoint in ``trainer.global_rng``, without setting them: :meth:`lfm_core.trainer.Trainer.fit` sets them when
training goes on (a loss may draw from them, e.g. dropout), so loading a checkpoint alone leaves the process's
generators as they were.

**Set aside.** :func:`set_aside` renames a checkpoint whose weights met a non-finite or diverged loss to
``diverged-ckpt-<step>``, out of the names a resume reads, so that a resume starts from weights that passed the
trainer's guard; :func:`after_failure` does so and names the last good checkpoint.

:func:`save` and :func:`load` take the trainer (:class:`lfm_core.trainer.Trainer`: its ``model``, ``ema``,
``opt``, ``scaler``, ``generator``, ``device``, ``config``, ``step``, ``losses``, ``history``, ``out_dir``;
:func:`load` sets ``global_rng``).

Copy with: store (``torch``, ``numpy``, ``safetensors``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from . import store

__all__ = ["FORMAT", "CheckpointError", "save", "load", "verify", "verify_folder", "clean_partial",
           "newest", "set_aside", "after_failure", "model_config", "parameter_signature", "rng_state", "set_rng_state"]

FORMAT = "lfm_core.checkpoint/2"
FORMAT_1 = "lfm_core.checkpoint/1"   # the layout before checkpoints were store folders: still resumed
REQUIRED = ("model.safetensors", "state.pt", "config.json")
_OLD_TMP = re.compile(r"^\.tmp-(ckpt-\d+)-")   # the temporary name of a checkpoint/1 write


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used (corrupt, truncated, incomplete), with its path."""


# --------------------------------------------------------------------------- atomic, checksummed folders
def verify_folder(path, required=()) -> None:
    """Check each file of the folder ``path`` against its ``checksums.json``, which must list ``required``
    (:func:`lfm_core.store.verify_files`).

    Raises :class:`CheckpointError` naming the folder and what is wrong.
    """
    path = store.check_path(path, "path")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder")
    try:
        store.verify_files(path, required)
    except (store.StoreError, OSError) as exc:
        raise CheckpointError(f"{exc}; the write was interrupted or the folder was changed") from None


def clean_partial(out_dir) -> None:
    """Settle what killed writes left in ``out_dir`` (:func:`lfm_core.store.tidy`: a missing checkpoint gets back
    a complete copy of it, other copies go), then the hidden ``.tmp-*`` files and folders: a complete copy of a
    missing checkpoint is moved into place (with a warning), the rest (incomplete writes, checkpoints being
    deleted, temporary ``latest`` files) is removed."""
    out_dir = _out_dir(out_dir)
    if not out_dir.is_dir():
        return
    store.tidy(out_dir)
    for p in out_dir.glob(".tmp-*"):
        m = _OLD_TMP.match(p.name)
        if m and p.is_dir() and not (out_dir / m.group(1)).exists():
            with contextlib.suppress(CheckpointError, OSError):
                verify_folder(p, REQUIRED)
                os.replace(p, out_dir / m.group(1))
                warnings.warn(f"{out_dir / m.group(1)} was missing; restored the complete copy {p.name} that a "
                              "stopped write left beside it", RuntimeWarning, stacklevel=3)
                continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _out_dir(out_dir) -> Path:
    """``out_dir`` as a ``Path``: a path, not empty, not a file (a missing folder holds no checkpoints yet)."""
    out_dir = store.check_path(out_dir, "out_dir")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file, not a folder of checkpoints")
    return out_dir


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _folders(out_dir: Path) -> list:
    """The ``ckpt-*`` folders of ``out_dir``, oldest first."""
    if out_dir is None or not out_dir.exists():
        return []
    return sorted((p for p in out_dir.glob("ckpt-*") if p.is_dir()), key=_step_of)


def newest(out_dir, at_most: int | None = None) -> Path | None:
    """The newest ``ckpt-*`` folder of ``out_dir`` (verified or not; of step ``at_most`` or before), or None."""
    if at_most is not None and (isinstance(at_most, bool) or not isinstance(at_most, int)):
        raise TypeError(f"at_most must be a step (an int) or None, got {type(at_most).__name__}")
    if at_most is not None and at_most < 0:
        raise ValueError(f"at_most must be a step >= 0 or None, got {at_most}")
    folders = [p for p in _folders(None if out_dir is None else _out_dir(out_dir))
               if at_most is None or _step_of(p) <= at_most]
    return folders[-1] if folders else None


def _point_latest(out_dir: Path, last: Path | None) -> None:
    """Write ``out_dir/latest`` (the name of ``last``) atomically, or remove it when ``last`` is None."""
    tmp = out_dir / f".tmp-latest-{uuid.uuid4().hex[:8]}"
    try:
        if last is None:
            (out_dir / "latest").unlink(missing_ok=True)
            return
        tmp.write_text(last.name + "\n")
        os.replace(tmp, out_dir / "latest")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise store.os_error(exc, f"writing {out_dir / 'latest'}") from exc


def after_failure(out_dir, step: int, met_loss: bool, writer: bool = True) -> str:
    """How a run that failed at ``step`` goes on, as sentences: from the newest checkpoint before ``step``
    (``met_loss``: its loss failed, and a checkpoint of ``step`` itself, whose weights gave that loss, is set
    aside when ``writer``) or of ``step`` (its gradient or its update failed), with a lower learning rate or
    without the step's batch."""
    aside = set_aside(out_dir, step) if met_loss and writer and out_dir is not None else None
    bound = step - 1 if met_loss else step   # a loss that failed at step 0 leaves no checkpoint before it
    last = newest(out_dir, at_most=bound) if bound >= 0 else None
    where = (f"The last good checkpoint is {last}" if last is not None else
             "No good checkpoint was written: fit() starts again from step 0")
    where += f" ({aside.name} holds the weights that gave this loss)" if aside is not None else ""
    return (f"{where}. To go on from there: lower the learning rate (a TrainerConfig with a smaller lr, then "
            "fit(override=True)) or clip gradients (grad_clip, also with override=True); if the batch of step "
            f"{step} is bad, skip it (TrainerConfig(skip_steps=({step},)), then fit()).")


def set_aside(out_dir, step: int) -> Path | None:
    """Rename ``out_dir/ckpt-<step>`` (if there is one) to ``diverged-ckpt-<step>``, where no resume reads it, and
    point ``latest`` at the newest checkpoint left. Returns the new name, or None."""
    out_dir = Path(out_dir)
    folder = out_dir / f"ckpt-{step:08d}"
    if not folder.is_dir():
        return None
    target = out_dir / f"diverged-{folder.name}"
    if target.exists():
        target = out_dir / f"diverged-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(folder, target)
    except OSError as exc:
        raise store.os_error(exc, f"renaming {folder} to {target.name}") from exc
    _point_latest(out_dir, newest(out_dir))
    return target


# ------------------------------------------------------------------------------- what is recorded
def model_config(model: torch.nn.Module) -> dict:
    """The model's configuration as JSON-ready data: ``{"_class_name": ..., **model.config}`` (diffusers-style).

    Models of this project, like diffusers models, carry a ``config`` mapping; for others only the class
    name is known.
    """
    return {"_class_name": type(model).__name__, **store.model_config(model)}


def parameter_signature(model: torch.nn.Module) -> str:
    """A short hash of the names and shapes of the model's parameters and buffers."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(shapes.encode()).hexdigest()[:16]


def rng_state(device: torch.device) -> dict:
    """Every global random state a training step may draw from: torch's, Python's, NumPy's (and CUDA's)."""
    np_state = np.random.get_state()  # noqa: NPY002 - user code may draw from the legacy global generator
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                     float(np_state[4]))}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` recorded."""
    if not isinstance(state, dict) or not {"torch", "python", "numpy"} <= state.keys():
        raise (ValueError if isinstance(state, dict) else TypeError)(
            "state must be what rng_state() recorded (a dict with 'torch', 'python' and 'numpy'), got "
            + (f"the keys {sorted(map(str, state))}" if isinstance(state, dict) else type(state).__name__))
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ the trainer's checkpoints
def save(trainer) -> Path:
    """Write ``out_dir/ckpt-<step>`` of ``trainer`` atomically (:func:`lfm_core.store.save`), point
    ``out_dir/latest`` at it and keep the newest ``config.keep_checkpoints``."""
    out_dir = Path(trainer.out_dir)
    record = {"checkpoint": FORMAT, "step": trainer.step, "parameter_signature": parameter_signature(trainer.model),
              "training": trainer.config.to_dict(), "precision_used": trainer.precision, "world_size": trainer.world,
              "history": trainer.history, "torch": torch.__version__}
    state = {"step": trainer.step, "optimizer": trainer.opt.state_dict(),
             "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
             "generator": trainer.generator.get_state(),  # the global states: the loaded ones until fit sets them
             "rng": trainer.global_rng if getattr(trainer, "global_rng", None) else rng_state(trainer.device),
             "losses": torch.tensor(trainer.losses, dtype=torch.float64)}
    final = store.save(out_dir / f"ckpt-{trainer.step:08d}", trainer.model, record,
                       tensors={"ema": trainer.ema} if trainer.ema is not None else None,
                       write=lambda folder: _write_state(state, folder / "state.pt"))
    _point_latest(out_dir, final)
    older = [p for p in _folders(out_dir) if p != final]
    for p in older[: max(0, len(older) - (trainer.config.keep_checkpoints - 1))]:
        doomed = out_dir / f".tmp-pruned-{p.name}-{uuid.uuid4().hex[:8]}"  # out of the ckpt-* names first
        with contextlib.suppress(OSError):
            os.replace(p, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def _write_state(state: dict, path: Path) -> None:
    with open(path, "wb") as f:  # through Python's file: a failed write raises the OSError (errno) behind it
        torch.save(state, f)


def verify(path) -> dict:
    """Check a checkpoint folder's files against its checksums and its format; return what it records: the
    ``step``, ``parameter_signature``, ``training``, ``history`` ... and the ``model`` (class and config)."""
    verify_folder(path, REQUIRED)
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: config.json is not valid JSON ({exc})") from None
    if isinstance(cfg, dict) and cfg.get("format") == store.FORMAT and isinstance(cfg.get("record"), dict) \
            and cfg["record"].get("checkpoint") == FORMAT:
        return {**cfg["record"], "model": {"_class_name": cfg.get("_class_name"), **cfg.get("config", {})}}
    if isinstance(cfg, dict) and cfg.get("format") == FORMAT_1:   # written before checkpoints were store folders
        return cfg
    found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
    raise CheckpointError(f"{path}: unknown checkpoint format {found!r} (expected a {store.FORMAT!r} folder whose "
                          f"record is a {FORMAT!r} checkpoint)")


def _changes(stored: dict, trainer, path: Path, override: bool) -> dict:
    """The settings that differ from the checkpoint's, as ``{name: (stored, now)}``; refused unless ``override``."""
    new_model = model_config(trainer.model)
    if stored["model"] != new_model or stored["parameter_signature"] != parameter_signature(trainer.model):
        diff = {k: (stored["model"].get(k), new_model.get(k)) for k in set(stored["model"]) | set(new_model)
                if stored["model"].get(k) != new_model.get(k)}
        raise ValueError(f"the checkpoint {path} was made for another model configuration "
                         f"(stored vs now: {diff or 'parameter shapes differ'}): build the model as stored, or "
                         "train into another out_dir")
    old, new = stored["training"], trainer.config.to_dict()
    changed = {k: (old.get(k), new[k]) for k in trainer.config.must_match() if old.get(k) != new[k]}
    if changed and not override:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"the checkpoint {path} was trained with another configuration ({listing}); pass "
                         "override=True to apply the new values from here on, or use another out_dir")
    return changed


def _read(folder: Path, device: torch.device):
    from safetensors.torch import load_file

    try:
        model_sd = load_file(str(folder / "model.safetensors"), device=str(device))
        ema_sd = (load_file(str(folder / "ema.safetensors"), device=str(device))
                  if (folder / "ema.safetensors").exists() else None)
        state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
    except Exception as exc:  # unreadable although the checksums match (e.g. written by another version)
        raise CheckpointError(f"{folder}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return model_sd, ema_sd, state


def load(trainer, path=None, *, override: bool = False) -> bool:
    """Resume ``trainer`` from ``path`` (a ``ckpt-*`` folder) or from the newest good checkpoint in its ``out_dir``.

    Returns False when there is none. Each corrupt checkpoint on the way is skipped with a warning that
    names it; a corrupt ``path`` given explicitly raises :class:`CheckpointError`, and so does an ``out_dir``
    whose checkpoints are all corrupt. The stored configuration must match the trainer's (or ``override``).
    The trainer's generator is restored; the global random states are kept in ``trainer.global_rng``, not set.
    """
    if not isinstance(override, bool):
        raise TypeError(f"override must be True or False, got {override!r} ({type(override).__name__})")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint folder (str or os.PathLike) or None, got {type(path).__name__}")
    if path is not None:
        store.check_path(path, "path")
    explicit = path is not None
    candidates = [Path(path)] if explicit else _folders(trainer.out_dir)[::-1]
    problems = []
    for i, folder in enumerate(candidates):
        try:
            stored = verify(folder)
            changed = _changes(stored, trainer, folder, override)
            model_sd, ema_sd, state = _read(folder, trainer.device)
        except CheckpointError as exc:
            if explicit:
                raise
            problems.append(str(exc))
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            warnings.warn(f"skipping a corrupt checkpoint: {exc}; "
                          + (f"falling back to {nxt}" if nxt else "no older checkpoint is left"),
                          RuntimeWarning, stacklevel=3)
            continue
        trainer.model.load_state_dict(model_sd)
        if trainer.ema is not None:
            trainer.ema.load_state_dict(ema_sd if ema_sd is not None else model_sd)
        trainer.opt.load_state_dict(state["optimizer"])
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.generator.set_state(state["generator"])
        trainer.global_rng = state["rng"]  # set by fit when training goes on, not here
        trainer.step = int(state["step"])
        trainer.losses = state["losses"].tolist()
        trainer.history = list(stored.get("history", []))
        if changed:
            trainer.history.append({"step": trainer.step, "changes": {k: list(v) for k, v in changed.items()}})
        return True
    if problems:
        raise CheckpointError(f"no usable checkpoint in {trainer.out_dir}:\n  " + "\n  ".join(problems)
                              + "\nremove them, or pass resume=False to start again")
    return False
