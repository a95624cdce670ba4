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

Copy with: nothing else (depends on ``torch`` only).
"""

from __future__ import annotations

import contextlib
import math
from numbers import Real

import torch

__all__ = [
    "check_tensor",
    "check_finite",
    "check_same_batch",
    "check_positive_int",
    "check_nonnegative_int",
    "check_nonnegative",
    "check_probability",
    "as_time",
    "expand_like",
    "randn_like",
    "draw_device",
    "debug_checks",
    "values_checked",
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
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def draw_device(generator: torch.Generator | None, device):
    """The device to draw random numbers on: the generator's if there is one, else ``device``.

    Random draws happen there and are then moved, which lets a CPU ``torch.Generator`` (the one that
    seeds a reproducible run) drive the noise of tensors that live on a GPU.
    """
    return generator.device if generator is not None else device


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (drawn on :func:`draw_device`, returned on ``x``'s device)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=draw_device(generator, x.device))
    return noise.to(x.device)
