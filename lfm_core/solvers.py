r"""Integrating the flow ODE ``dx/dt = v(x, t)`` and the log-likelihood of the flow.

:func:`integrate` solves ``x(t1)`` from ``x(t0)``: fixed-step Euler, midpoint, Heun and classic
RK4 are written out here (so each step's evaluations are plain to read), adaptive methods
(``dopri5`` and the others of torchdiffeq) go through ``torchdiffeq.odeint``, told to end a step
exactly at ``t1`` so that the velocity is never evaluated outside ``t_span``. Every call to the
velocity is counted, so ``nfe`` is exact. A decreasing ``t_span`` integrates backwards.

:func:`log_likelihood` uses the instantaneous change of variables (Chen et al. 2018, Thm. 1):
along a trajectory, ``d/dt log p_t(x_t) = -div v(x_t, t)``, hence for data ``x1``

.. math::

    \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(x_t, t)\,dt,

with ``x0`` found by integrating the ODE backwards from ``x1``. The divergence is exact (one
backward pass per dimension) or Hutchinson's estimate ``E[eps^T (dv/dx) eps]`` with a Rademacher
``eps`` held fixed along the trajectory (Grathwohl et al. 2019, FFJORD).

Time convention: ``t = 0`` source (noise), ``t = 1`` target (data). The velocity is any callable
``velocity(x, t, **cond)`` that takes ``t`` as a tensor of shape ``[B]``.

A velocity that returns NaN or infinite values stops the integration with a ``FloatingPointError`` naming
the time ``t`` of the first such evaluation: at once for adaptive methods (whose step control would
otherwise shrink the step to zero) and for CPU tensors; on a GPU, fixed-step methods record it without
synchronising and report it at the end. Adaptive methods also stop after ``max_nfe`` evaluations.

Copy with: utils (``torch``; ``torchdiffeq`` for the adaptive methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

from .utils import (
    check_bool,
    check_finite,
    check_generator,
    check_nonnegative,
    check_positive_int,
    check_tensor,
    draw_device,
)

__all__ = ["FIXED_STEP", "ADAPTIVE", "Solution", "integrate", "log_likelihood", "standard_normal_log_prob"]

#: fixed-step methods and their velocity evaluations per step
FIXED_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
#: adaptive torchdiffeq methods accepted by :func:`integrate`
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@dataclass
class Solution:
    """Result of :func:`integrate`.

    Attributes:
        x: the state at ``t_span[1]``, shaped like the initial state.
        nfe: the number of velocity evaluations made.
        t: the times of ``trajectory`` (``[steps + 1]``), or ``None``.
        trajectory: the states at ``t`` (``[steps + 1, B, ...]``), when asked for.
    """

    x: torch.Tensor
    nfe: int
    t: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None


class _Counted:
    """Wraps the velocity: counts calls, broadcasts ``t`` to ``[B]``, checks the output's shape and values."""

    def __init__(self, velocity, cond, eager: bool, max_nfe: int | None):
        self.velocity, self.cond, self.nfe = velocity, cond, 0
        self.eager, self.max_nfe, self.flags = eager, max_nfe, []

    def __call__(self, t, x):
        self.nfe += 1
        if self.max_nfe is not None and self.nfe > self.max_nfe:
            raise RuntimeError(f"the adaptive solver made more than max_nfe = {self.max_nfe} velocity evaluations "
                               f"(now at t = {float(t):.6g}): the flow is too stiff for these tolerances; loosen "
                               "atol / rtol, raise max_nfe, or use a fixed-step method")
        tb = t.reshape(1).expand(x.shape[0]).to(x.dtype)
        v = self.velocity(x, tb, **self.cond)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity(x, t) must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        if v.dtype != x.dtype:  # else the solution would be promoted (or truncated) to the velocity's dtype in silence
            raise TypeError(f"velocity(x, t) returned dtype {v.dtype} for x of dtype {x.dtype}: return x's dtype "
                            "(e.g. .to(x.dtype)), or integrate x in the velocity's dtype")
        if self.eager:
            if not bool(torch.isfinite(v).all()):
                raise FloatingPointError(_nonfinite_message(float(t), self.nfe))
        else:
            self.flags.append((t.detach(), torch.isfinite(v).all()))
        return v

    def first_bad(self):
        """``(t, nfe)`` of the first non-finite evaluation recorded lazily, or None."""
        for k, (t, ok) in enumerate(self.flags):
            if not bool(ok):
                return float(t), k + 1
        return None


def _nonfinite_message(t: float, nfe: int) -> str:
    return (f"the velocity returned non-finite values (NaN or inf) at t = {t:.6g} (evaluation {nfe}); the "
            "model may be diverging there: check its weights and inputs, or train with a smaller learning rate")


def _step(f, method, t, x, h):
    if method == "euler":
        return x + h * f(t, x)
    if method == "midpoint":
        k1 = f(t, x)
        return x + h * f(t + h / 2, x + h / 2 * k1)
    if method == "heun":
        k1 = f(t, x)
        k2 = f(t + h, x + h * k1)
        return x + h / 2 * (k1 + k2)
    k1 = f(t, x)  # rk4
    k2 = f(t + h / 2, x + h / 2 * k1)
    k3 = f(t + h / 2, x + h / 2 * k2)
    k4 = f(t + h, x + h * k3)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def _check_t_span(t_span):
    if not isinstance(t_span, (tuple, list)) or len(t_span) != 2:
        raise ValueError(f"t_span must be a pair (t0, t1), got {t_span!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in t_span):
        raise TypeError(f"t_span must hold two real numbers, got {t_span!r}")
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"t_span must be finite, got {t_span!r}")
    if t0 == t1:
        raise ValueError(f"t_span must have t0 != t1, got {t_span!r}")
    return t0, t1


def integrate(velocity, x: torch.Tensor, *, t_span=(0.0, 1.0), method: str = "euler", steps: int = 100,
              atol: float = 1e-5, rtol: float = 1e-5, return_trajectory: bool = False, cond: dict | None = None,
              enable_grad: bool = False, max_nfe: int | None = 100_000) -> Solution:
    """Integrate ``dx/dt = velocity(x, t, **cond)`` from ``t_span[0]`` to ``t_span[1]``.

    Args:
        velocity: callable ``(x, t, **cond) -> tensor shaped like x``; ``t`` has shape ``[B]``.
        x: the initial state ``[B, ...]``.
        t_span: ``(t0, t1)``; ``t1 < t0`` integrates backwards.
        method: a fixed-step method of :data:`FIXED_STEP` or an adaptive one of :data:`ADAPTIVE`.
        steps: number of steps for fixed-step methods; for adaptive methods, the number of
            intervals of the returned trajectory (the solver picks its own steps).
        atol, rtol: tolerances of adaptive methods.
        return_trajectory: also return the states at the ``steps + 1`` evenly spaced times.
        cond: keyword arguments passed on to ``velocity`` (labels, conditioning images).
        enable_grad: keep the autograd graph (off by default: sampling needs no gradients).
        max_nfe: adaptive methods stop with an error after this many evaluations (``None``: no limit).

    Returns:
        a :class:`Solution` with ``x``, the exact ``nfe``, and ``t`` / ``trajectory`` if asked.
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
    check_tensor(x, "x")
    check_finite(x, "x", boundary=True)
    t0, t1 = _check_t_span(t_span)
    if not isinstance(method, str) or (method not in FIXED_STEP and method not in ADAPTIVE):
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join([*FIXED_STEP, *ADAPTIVE])}")
    check_positive_int(steps, "steps")
    check_nonnegative(atol, "atol", strict=True)
    check_nonnegative(rtol, "rtol", strict=True)
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments, got {type(cond).__name__}")
    if max_nfe is not None:
        check_positive_int(max_nfe, "max_nfe")
    check_bool(return_trajectory, "return_trajectory")
    check_bool(enable_grad, "enable_grad")
    adaptive = method in ADAPTIVE
    f = _Counted(velocity, cond or {}, eager=adaptive or x.device.type == "cpu", max_nfe=max_nfe if adaptive else None)
    times = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    with torch.set_grad_enabled(enable_grad):
        if method in FIXED_STEP:
            states = [x] if return_trajectory else None
            h = (t1 - t0) / steps
            for k in range(steps):
                tk = torch.as_tensor(times[k].item(), dtype=x.dtype, device=x.device)
                x = _step(f, method, tk, x, h)
                if return_trajectory:
                    states.append(x)
            traj = torch.stack(states) if return_trajectory else None
        else:
            from torchdiffeq import odeint

            grid = times if return_trajectory else torch.tensor([t0, t1], dtype=torch.float64)
            grid = grid.to(device=x.device, dtype=x.dtype if x.dtype == torch.float64 else torch.float32)
            # step_t: steps stop at t1 instead of overshooting it and interpolating back, so the
            # velocity is never evaluated outside t_span (torchdiffeq's default overshoots).
            try:
                out = odeint(f, x, grid, method=method, atol=atol, rtol=rtol, options={"step_t": grid[-1:]})
            except AssertionError as exc:  # torchdiffeq's step-size underflow
                raise FloatingPointError(f"the adaptive solver failed after {f.nfe} evaluations ({exc}): the step "
                                         "size underflowed; the flow is too stiff or diverging") from None
            x, traj = out[-1], (out if return_trajectory else None)
    bad = f.first_bad()
    if bad is not None:
        raise FloatingPointError(_nonfinite_message(*bad))
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"the ODE solution has non-finite values after {f.nfe} evaluations (method={method}); "
            "the velocity may be diverging: try more steps or an adaptive method"
        )
    return Solution(x=x, nfe=f.nfe, t=times.to(x.dtype) if return_trajectory else None, trajectory=traj)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """``log N(x; 0, I)`` summed over all but the batch dimension: ``[B, ...] -> [B]``."""
    check_finite(check_tensor(x, "x"), "x")
    d = x[0].numel()
    return -0.5 * x.reshape(x.shape[0], -1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def _divergence_exact(v, x):
    flat_v = v.reshape(v.shape[0], -1)
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat_v.shape[1]):
        (g,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        div = div + g.reshape(g.shape[0], -1)[:, i]
    return div


def _divergence_hutchinson(v, x, eps):
    (g,) = torch.autograd.grad((v * eps).sum(), x)
    return (g * eps).reshape(x.shape[0], -1).sum(1)


def log_likelihood(velocity, x: torch.Tensor, source_log_prob=standard_normal_log_prob, *, method: str = "dopri5",
                   steps: int = 100, divergence: str = "exact", atol: float = 1e-5, rtol: float = 1e-5,
                   cond: dict | None = None, generator: torch.Generator | None = None,
                   return_nfe: bool = False):
    r"""Log density of the data points ``x`` under the flow of ``velocity`` from the source at ``t = 0``.

    Integrates the augmented ODE ``d/dt [x, delta] = [v, div v]`` backwards from ``t = 1``
    (``delta = 0``) to ``t = 0`` and returns ``log p_0(x_0) + delta(0)``, which equals
    ``log p_0(x_0) - int_0^1 div v dt`` (module docstring).

    Args:
        velocity: callable ``(x, t, **cond)``.
        x: data points ``[B, ...]``.
        source_log_prob: callable ``x0 -> [B]``, the source log density (standard normal by default).
        method, steps, atol, rtol: as in :func:`integrate`.
        divergence: ``"exact"`` (one backward pass per dimension) or ``"hutchinson"`` (one pass,
            unbiased, noisier).
        generator: draws Hutchinson's Rademacher vectors.
        return_nfe: also return the number of velocity evaluations.

    Returns:
        ``[B]`` log densities (and the NFE when ``return_nfe``).
    """
    check_bool(return_nfe, "return_nfe")
    check_generator(generator)
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments, got {type(cond).__name__}")
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if not callable(source_log_prob):
        raise TypeError(f"source_log_prob must be callable, got {type(source_log_prob).__name__}")
    if not callable(velocity):
        raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
    check_tensor(x, "x")
    check_finite(x, "x", boundary=True)
    shape, b = x.shape, x.shape[0]
    d = x[0].numel()
    eps = None
    if divergence == "hutchinson":
        eps = torch.randint(0, 2, shape, generator=generator, dtype=x.dtype, device=draw_device(generator, x.device))
        eps = (2 * eps - 1).to(x.device)
    cond = cond or {}

    def augmented(z, t):
        with torch.enable_grad():
            xs = z[:, :d].detach().reshape(shape).requires_grad_(True)
            v = velocity(xs, t, **cond)
            if not isinstance(v, torch.Tensor) or v.shape != shape:
                raise ValueError(f"velocity(x, t) must return a tensor shaped like x {tuple(shape)}")
            if v.dtype != x.dtype:
                raise TypeError(f"velocity(x, t) returned dtype {v.dtype} for x of dtype {x.dtype}: return x's dtype")
            div = _divergence_exact(v, xs) if eps is None else _divergence_hutchinson(v, xs, eps)
        return torch.cat([v.detach().reshape(b, d), div.detach()[:, None]], dim=1)

    z1 = torch.cat([x.detach().reshape(b, d), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], dim=1)
    sol = integrate(augmented, z1, t_span=(1.0, 0.0), method=method, steps=steps, atol=atol, rtol=rtol)
    x0 = sol.x[:, :d].reshape(shape)
    base = source_log_prob(x0)
    if not isinstance(base, torch.Tensor) or base.shape != (b,):
        raise ValueError(f"source_log_prob(x0) must return a tensor of shape [B] = [{b}]")
    logp = base + sol.x[:, d]
    return (logp, sol.nfe) if return_nfe else logp
