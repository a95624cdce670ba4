"""Input checks and the one time-reshaping helper that every module shares.

Conventions (the README's "Time convention" section): tensors are batch first; time ``t`` has shape
``[B]`` (a Python float is broadcast to the batch); ``t = 0`` is the source (noise) and ``t = 1`` the
target (data). Bad input raises ``ValueError`` / ``TypeError`` naming the argument, before any work is
done.

**Checks on values and the GPU.** A check of a tensor's *values* (finite, in range) reads a
result back to the host; on a GPU that synchronisation stalls the pipeline, so inside loops it
would cost more than the work it guards. :func:`check_finite` and the range check of
:func:`as_time` therefore inspect CPU tensors always, and accelerator tensors only at the
boundaries of the library (``boundary=True``: once per call of a solver, an encoder, a
metric) or inside a :func:`debug_checks` block. Shape, dtype and device checks cost nothing
and always run.

**Output folders.** :func:`check_writable_dir` checks that an output folder can be written to (or created)
before any work is done. **Norms** of many tensors at once (:func:`global_norm`, :func:`grad_norm_sum`,
:func:`clip_grads_`), the median of a sliding window (:class:`RunningMedian`), and :func:`with_context`, an
exception that says where it happened.

Copy with: nothing else (depends on ``torch`` only).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import math
import os
import uuid
from numbers import Real
from pathlib import Path

import torch

__all__ = [
    "check_tensor",
    "check_finite",
    "check_same_batch",
    "check_positive_int",
    "check_nonnegative_int",
    "check_nonnegative",
    "check_probability",
    "check_bool",
    "check_seed",
    "check_real_tensor",
    "check_in_range",
    "check_generator",
    "check_float_dtype",
    "check_device",
    "as_time",
    "expand_like",
    "randn_like",
    "draw_device",
    "debug_checks",
    "values_checked",
    "check_writable_dir",
    "global_norm",
    "grad_norm_sum",
    "clip_grads_",
    "with_context",
    "RunningMedian",
]

_DEBUG = [False]  # set by debug_checks


def _debug_on() -> bool:
    return _DEBUG[0]


@contextlib.contextmanager
def debug_checks(enabled: bool = True):
    """Within the block, check the values of accelerator tensors everywhere (or, with ``False``, only at boundaries)."""
    old = _DEBUG[0]
    _DEBUG[0] = bool(enabled)
    try:
        yield
    finally:
        _DEBUG[0] = old


def values_checked(x: torch.Tensor, boundary: bool = False) -> bool:
    """Whether a value check of ``x`` runs: always on the CPU; on an accelerator at a boundary or in debug mode."""
    return x.device.type == "cpu" or boundary or _debug_on()


def check_tensor(x, name: str, *, min_dim: int = 1, floating: bool = True) -> torch.Tensor:
    """Return ``x`` if it is a tensor with at least ``min_dim`` dimensions and a non-empty batch.

    Tensors without storage (the ``meta`` device) are refused: nothing can be computed from them.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device (shape only, no values): move it to 'cpu' or 'cuda' first")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) [B, ...], got shape {tuple(x.shape)}")
    if x.dim() > 0 and x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"{name} has no elements (shape {tuple(x.shape)})")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.is_complex():  # never made real in silence: the imaginary part would be dropped
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x


def check_finite(x: torch.Tensor, name: str, *, boundary: bool = False) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (see the module docstring for the GPU)."""
    if values_checked(x, boundary) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    return x


def check_same_batch(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, *, same_shape: bool = True) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same batch size (and shape, by default)."""
    if same_shape and a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same batch size, got {a.shape[0]} and {b.shape[0]}")


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an int if it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_nonnegative_int(value, name: str) -> int:
    """Return ``value`` as an int if it is an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_nonnegative(value, name: str, *, strict: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number >= 0 (> 0 when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if strict and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """Return ``value`` if it is a real ``bool`` (``'yes'``, ``1`` or ``None`` are refused: each reads as a switch)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


#: one past the largest seed a ``torch.Generator`` takes (it keeps 64 bits)
SEED_LIMIT = 2**64


def check_seed(value, name: str) -> int:
    """Return ``value`` if it is an integer seed in ``[0, 2**64)``, the range ``torch.Generator.manual_seed`` keeps
    (it folds negative seeds onto large ones and overflows beyond)."""
    check_nonnegative_int(value, name)
    if value >= SEED_LIMIT:
        raise ValueError(f"{name} must be < 2**64 (a torch seed has 64 bits), got {value}")
    return value


def check_real_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` if it is a tensor of real numbers (integers or floats: not complex, not bool), of any shape."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x


def as_real(value, name: str, dtype: torch.dtype) -> torch.Tensor:
    """``value`` (a tensor, an array or a sequence of real numbers) as a tensor of ``dtype``; ``TypeError`` naming
    ``name`` for anything else (a string, a lone bool, ``None``, complex or bool tensors and arrays, ragged
    lists). A list of Python bools converts as 0 and 1, as ``torch.as_tensor`` converts it."""
    if value is None or isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(value).__name__}")
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # a NumPy array's
    if isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool) or kind in ("c", "b"):
        raise TypeError(f"{name} must hold real numbers (not complex or bool), got dtype {value.dtype}")
    try:
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or a sequence of numbers ({exc})") from None


def check_in_range(x: torch.Tensor, name: str, low: float, high: float, *, high_open: bool = False,
                   boundary: bool = False) -> torch.Tensor:
    """Raise ``ValueError`` unless every value of ``x`` is finite and in ``[low, high]`` (``[low, high)`` with
    ``high_open``); value checks on accelerators as in the module docstring."""
    if values_checked(x, boundary) and x.numel():
        lo, hi = torch.aminmax(x.detach().reshape(-1))
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(x, name, boundary=True)
        if lo < low or hi > high or (high_open and hi >= high):
            span = f"[{low:g}, {high:g}{')' if high_open else ']'}"
            got = f"{lo:.4g}" if lo == hi else f"values in [{lo:.4g}, {hi:.4g}]"
            raise ValueError(f"{name} must lie in {span}, got {got}")
    return x


def check_generator(generator, name: str = "generator"):
    """Return ``generator`` if it is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_float_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is a floating-point ``torch.dtype`` (an integer one would round the values in silence)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def check_device(device, name: str = "device") -> torch.device:
    """``device`` (a ``torch.device``, a name such as ``"cuda:0"``, or an index) as a ``torch.device``."""
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"{name} must be a torch.device, a name such as 'cpu' or 'cuda:0', or an index, got "
                        f"{type(device).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{name} {device!r} is not a device name ('cpu', 'cuda', 'cuda:1', 'mps', ...)") from exc


def check_probability(value, name: str) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1]``."""
    value = check_nonnegative(value, name)
    if value > 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def as_time(t, batch: int, *, like: torch.Tensor, name: str = "t", check_range: bool = True,
            boundary: bool = False) -> torch.Tensor:
    """Validate a time argument and return it as a tensor of shape ``[batch]``.

    ``t`` may be a Python number (broadcast to the batch), a 0-d tensor, or a tensor of
    shape ``[batch]``. The result has the dtype and device of ``like``. With
    ``check_range`` the values must lie in ``[0, 1]`` (value checks on accelerators: see the
    module docstring).
    """
    check_positive_int(batch, "batch")
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"like must be a torch.Tensor (the times take its dtype and device), got {type(like).__name__}")
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor of shape [B], got bool")
    if isinstance(t, Real):
        value = float(t)
        if not math.isfinite(value):
            raise ValueError(f"{name} is non-finite ({value}): times must be finite")
        if check_range and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value:.4g}")
        return torch.full((batch,), value, dtype=like.dtype, device=like.device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor of shape [B], got {type(t).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device (shape only, no values)")
    if t.dim() == 0:
        t = t.reshape(1).expand(batch)
    elif t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}] (or be a scalar), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dtype != like.dtype or t.device != like.device:
        t = t.to(device=like.device, dtype=like.dtype)
    if values_checked(t, boundary):
        lo, hi = torch.aminmax(t.detach())
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(t, name, boundary=True)
        if check_range and (lo < 0 or hi > 1):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return t


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor ``t`` of shape ``[B]`` to ``[B, 1, ..., 1]`` so it broadcasts against ``x``."""
    if not isinstance(t, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise TypeError(f"t and x must be torch.Tensors, got {type(t).__name__} and {type(x).__name__}")
    if t.dim() != 1 or x.dim() < 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape [B] (x's batch), got t {tuple(t.shape)} for x {tuple(x.shape)}")
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def draw_device(generator: torch.Generator | None, device):
    """The device to draw random numbers on: the generator's if there is one, else ``device``.

    Random draws happen there and are then moved, which lets a CPU ``torch.Generator`` (the one that
    seeds a reproducible run) drive the noise of tensors that live on a GPU.
    """
    return check_generator(generator).device if generator is not None else device


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (drawn on :func:`draw_device`, returned on ``x``'s device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=draw_device(generator, x.device))
    return noise.to(x.device)


# ------------------------------------------------------------------------------------------ files and folders
def check_writable_dir(path, name: str) -> Path:
    """Return ``path`` as a ``Path`` if it is a folder that can be written to, or one that can be created.

    A folder that does not exist yet is checked through its nearest existing parent (which must be a folder);
    writing is tested by creating and removing an empty file, so it holds for every user (root too) and every
    file system (read-only mounts too). Raises ``ValueError`` naming ``name`` and the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError(f"{name} is an empty path: name a folder")
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "is not a folder (a file?)" if probe == path else f"cannot be created: {probe} is not a folder"
        raise ValueError(f"{name} {path} {where}")
    test = probe / f".tmp-writable-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(test, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(test)
    except OSError as exc:
        where = "" if probe == path else f" (its nearest existing folder {probe} cannot be written to)"
        raise ValueError(f"{name} {path} cannot be written to{where}: {exc.strerror or exc}") from exc
    return path


# ------------------------------------------------------------------------------------------ norms, errors
def global_norm(tensors) -> torch.Tensor:
    """The 2-norm of all the values of ``tensors`` (a non-empty list) together, as a 0-d tensor, not read back."""
    tensors = list(tensors) if not isinstance(tensors, (str, bytes)) and hasattr(tensors, "__iter__") else [tensors]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"tensors must be a list of torch.Tensors, got {sorted({type(t).__name__ for t in tensors})}")
    tensors = [t.detach() for t in tensors]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def grad_norm_sum(params) -> torch.Tensor:
    """The sum of the norms of the gradients of ``params``: finite exactly when every gradient is, and cheaper than
    their global norm (0 when there is no gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device)
    return torch.stack(torch._foreach_norm(grads)).sum()


def clip_grads_(params, max_norm: float, total: torch.Tensor) -> None:
    """Rescale the gradients of ``params``, whose global norm is ``total``, to a global norm of at most ``max_norm``."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))


class RunningMedian:
    """The median of the last ``window`` finite values added (non-finite ones are left out); each :meth:`add` costs
    a binary search and a move of at most ``window`` references."""

    def __init__(self, window: int, values=()):
        self.window, self.recent, self.sorted = check_positive_int(window, "window"), collections.deque(), []
        for v in values:
            self.add(v)

    def add(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"value must be a real number (a loss), got {value!r} ({type(value).__name__})")
        if math.isfinite(value):
            self.recent.append(value)
            bisect.insort(self.sorted, value)
            if len(self.recent) > self.window:
                del self.sorted[bisect.bisect_left(self.sorted, self.recent.popleft())]

    def __len__(self) -> int:
        return len(self.sorted)

    def median(self) -> float:
        """The median (the mean of the middle two for an even count; NaN when empty)."""
        s, n = self.sorted, len(self.sorted)
        return (s[(n - 1) // 2] + s[n // 2]) / 2 if n else float("nan")


def with_context(exc: Exception, text: str) -> Exception:
    """``exc`` saying ``text`` first: a new exception of the same type (raise it ``from exc``) for a plain
    ``ValueError``, ``TypeError`` or ``RuntimeError``, else ``exc`` itself with ``text`` added as a note."""
    if type(exc) in (ValueError, TypeError, RuntimeError):
        return type(exc)(f"{text}: {exc}")
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    return exc
