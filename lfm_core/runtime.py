"""Quick or full mode, device choice, seeding, and whether to show progress bars.

* Mode: the environment variable ``LFM_QUICK`` set to ``1`` / ``true`` / ``yes`` / ``on``
  selects *quick* mode (sizes for 2 CPU cores: CI and the test command); unset, empty or
  ``0`` / ``false`` / ``no`` / ``off`` selects *full* mode (sizes for a GPU, e.g. Colab).
  Anything else is an error, not a silent guess.
* Progress bars: ``LFM_PROGRESS`` (same spellings) turns them on or off; by default they are on.
  The test command turns them off so that logs stay short.
* :func:`pick` chooses a value by mode: ``steps = pick(quick=500, full=20_000)``.
* Rehearsal: ``LFM_REHEARSAL=1`` runs the full-mode configuration (sizes, architectures, data path) with
  only its lengths shortened (steps, images, samples: ``pick(..., rehearsal=...)``), on local stand-ins of
  the downloads; ``python3 tasks.py rehearse`` sets it. It cannot be combined with quick mode.

Copy with: nothing else (``torch``, ``numpy``).
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

__all__ = ["is_quick", "is_rehearsal", "mode", "pick", "get_device", "seed", "seed_everything", "show_progress",
           "in_colab", "describe"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


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


def is_quick() -> bool:
    """True in quick mode (``LFM_QUICK=1``)."""
    return _flag("LFM_QUICK", False)


def is_rehearsal() -> bool:
    """True in a dress rehearsal (``LFM_REHEARSAL=1``): full-mode sizes, short lengths, local stand-ins."""
    rehearsal = _flag("LFM_REHEARSAL", False)
    if rehearsal and is_quick():
        raise ValueError("LFM_REHEARSAL=1 rehearses full mode: unset LFM_QUICK (or set it to 0)")
    return rehearsal


def mode() -> str:
    """``"quick"``, ``"full"`` or ``"rehearsal"``."""
    return "rehearsal" if is_rehearsal() else "quick" if is_quick() else "full"


_UNSET = object()


def pick(*, quick, full, rehearsal=_UNSET):
    """``quick`` in quick mode, ``rehearsal`` (when given) in a rehearsal, else ``full``."""
    if is_quick():
        return quick
    if rehearsal is not _UNSET and is_rehearsal():
        return rehearsal
    return full


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
    return int(raw)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU ``torch.Generator`` seeded alike."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
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
        f"mode     : {mode()}  (LFM_QUICK={os.environ.get('LFM_QUICK', '')!r}, "
        f"LFM_REHEARSAL={os.environ.get('LFM_REHEARSAL', '')!r})",
        f"device   : {dev}" + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else ""),
        f"seed     : {seed()}  (LFM_SEED={os.environ.get('LFM_SEED', '')!r})",
        f"torch    : {torch.__version__}, {torch.get_num_threads()} CPU threads, Python {platform.python_version()}",
    ]
    if sizes:
        lines.append("sizes    : " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return "\n".join(lines)
