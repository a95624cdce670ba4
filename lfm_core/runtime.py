"""The run's mode, device choice, seeding, and whether to show progress bars.

* Mode: the environment variable ``LFM_MODE`` is one of :data:`MODES`. ``quick`` selects sizes for 2 CPU cores
  (CI and the test command), ``full`` (also when unset or empty) sizes for a GPU, e.g. Colab. ``rehearsal`` runs
  the full-mode configuration of notebooks 04 and 05 (sizes, architectures, data path) with only its lengths
  shortened, on local stand-ins of the downloads (``python3 tasks.py rehearse``). ``pretrain`` runs the quick
  sizes while the notebooks write the networks that quick mode starts from (``python3 tasks.py pretrain``,
  :func:`lfm_core.pretrained.pretraining`). Anything else is an error, not a silent guess.
* A notebook picks its configuration by :func:`mode`: ``CFG = {"quick": dict(...), "full": dict(...)}[mode()]``.
* Progress bars: ``LFM_PROGRESS`` (``1`` / ``true`` / ``yes`` / ``on`` or ``0`` / ``false`` / ``no`` / ``off``)
  turns them on or off; by default they are on. The test command turns them off so that logs stay short.
* Seeds: ``LFM_SEED``, the base seed every seed of a notebook is derived from (:func:`seed`).

Copy with: nothing else (``torch``, ``numpy``).
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

__all__ = ["MODES", "mode_setting", "mode", "is_quick", "is_rehearsal", "get_device", "seed", "seed_everything",
           "show_progress", "in_colab", "describe"]

MODES = ("quick", "full", "rehearsal", "pretrain")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_SEED_LIMIT = 2**64   # a torch.Generator keeps 64 bits (as utils.SEED_LIMIT; this module copies alone)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r} is not understood; use 1/0, true/false, yes/no or on/off")


def mode_setting() -> str:
    """``LFM_MODE`` as set: one of :data:`MODES`, ``"full"`` when unset or empty."""
    raw = os.environ.get("LFM_MODE", "")
    value = raw.strip() or "full"
    if value not in MODES:
        raise ValueError(f"environment variable LFM_MODE={raw!r} is not a mode; use one of {', '.join(MODES)} "
                         "(unset: full)")
    return value


def mode(supported=None) -> str:
    """The configuration to run: ``"quick"``, ``"full"`` or ``"rehearsal"`` (``LFM_MODE=pretrain`` runs quick).

    ``supported`` (the modes a notebook has settings for, e.g. its ``PER_MODE`` dict) turns a mode it lacks into
    a ValueError that says which it has, instead of a bare ``KeyError`` further on.
    """
    setting = mode_setting()
    chosen = "quick" if setting == "pretrain" else setting
    if supported is not None:
        if isinstance(supported, str) or not all(isinstance(m, str) for m in supported):
            raise TypeError(f"supported must be a collection of mode names, got {supported!r}")
        if not supported:
            raise ValueError(f"supported must name at least one mode ({', '.join(MODES)}), got {supported!r}")
        unknown = sorted(set(supported) - set(MODES))
        if unknown:
            raise ValueError(f"supported names modes that do not exist: {unknown}; modes are {', '.join(MODES)}")
        if chosen not in supported:
            why = " (a rehearsal rehearses the CelebA-HQ path of notebooks 04 and 05)" if chosen == "rehearsal" else ""
            raise ValueError(f"LFM_MODE={setting}: this notebook has settings for {' and '.join(supported)} mode "
                             f"only{why}")
    return chosen


def is_quick() -> bool:
    """True in quick mode and while pretraining (``LFM_MODE=quick`` or ``pretrain``): the sizes for 2 CPU cores."""
    return mode() == "quick"


def is_rehearsal() -> bool:
    """True in a dress rehearsal (``LFM_MODE=rehearsal``): full-mode sizes, short lengths, local stand-ins."""
    return mode() == "rehearsal"


def show_progress() -> bool:
    """Whether long loops show a tqdm progress bar (``LFM_PROGRESS``, on by default)."""
    return _flag("LFM_PROGRESS", True)


def in_colab() -> bool:
    """True when running inside Google Colab."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def get_device(prefer: str | None = None) -> torch.device:
    """The device to use: ``prefer`` if given (and available), else CUDA, then Apple MPS, then CPU."""
    if prefer is not None:
        if not isinstance(prefer, (str, torch.device)):
            raise TypeError(f"prefer must be a device name such as 'cpu' or 'cuda', got {type(prefer).__name__}")
        try:
            dev = torch.device(prefer)
        except RuntimeError as exc:
            raise ValueError(f"prefer={prefer!r} is not a device ({exc})") from None
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"prefer={prefer!r}: this project runs on 'cpu', 'cuda' or 'mps'")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("prefer='cuda' but no CUDA device is available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("prefer='mps' but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed() -> int:
    """The run's base seed: ``LFM_SEED`` (a non-negative integer), 0 when unset.

    The notebooks derive every seed from it (``SEED + k``), so that ``benchmarks/notebook_seeds.py`` can rerun
    their claims with other training and sampling seeds. Data splits stay fixed.
    """
    raw = os.environ.get("LFM_SEED", "").strip()
    if raw == "":
        return 0
    if not raw.isdigit():
        raise ValueError(f"environment variable LFM_SEED={os.environ['LFM_SEED']!r} must be a non-negative integer")
    if int(raw) >= _SEED_LIMIT:
        raise ValueError(f"environment variable LFM_SEED={raw!r} must be < 2**64 (a torch seed has 64 bits)")
    return int(raw)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU ``torch.Generator`` seeded alike."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if seed >= _SEED_LIMIT:
        raise ValueError(f"seed must be < 2**64 (a torch seed has 64 bits), got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global RNG is what user code calls
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def describe(**sizes) -> str:
    """One-paragraph description of the run (mode, device, versions, sizes), for a notebook's config cell."""
    dev = get_device()
    lines = [
        f"mode     : {mode()}  (LFM_MODE={os.environ.get('LFM_MODE', '')!r}"
        + ("; writing the networks quick mode starts from)" if mode_setting() == "pretrain" else ")"),
        f"device   : {dev}" + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else ""),
        f"seed     : {seed()}  (LFM_SEED={os.environ.get('LFM_SEED', '')!r})",
        f"torch    : {torch.__version__}, {torch.get_num_threads()} CPU threads, Python {platform.python_version()}",
    ]
    if sizes:
        lines.append("sizes    : " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return "\n".join(lines)
