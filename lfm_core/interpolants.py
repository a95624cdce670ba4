r"""Learned interpolants for straight flows (after Shankar & Geffner, arXiv 2503.20719).

Flow matching regresses a velocity onto the time derivative of an *interpolant* ``x_t = phi_t(x0; x1)``
between a source point ``x0 ~ p0`` and a data point ``x1``. With independent pairs and the straight line
``(1 - t) x0 + t x1`` the resulting marginal flow is curved, and few-step samplers pay for it. The idea
of the paper is to *learn* the interpolant so that the optimal velocity it induces is as straight as
possible. This module holds the pieces:

* :class:`BernsteinSchedule`: a monotone schedule ``s : [0, 1] -> [0, 1]`` with ``s(0) = 0`` and
  ``s(1) = 1`` **by construction**: a Bernstein polynomial ``s(t) = sum_k c_k b_{k,n}(t)`` whose
  coefficients ``0 = c_0 <= c_1 <= ... <= c_n = 1`` are cumulative sums of a softmax. It is smooth,
  strictly increasing, and the identity ``s(t) = t`` when the logits are equal (the initialisation).
* :class:`AffineInterpolant`: ``x_t = (1 - h(t)) x0 + g(t) x1`` with two learned schedules; same
  ``sample(x0, x1, t) -> (x_t, u_t)`` interface as :mod:`lfm_core.paths`.
* :class:`GlowInterpolant`: a general learned interpolant ``phi_t(x0; x1) = (1 - t) psi_{t, x1}(x0) + t x1``
  where ``psi_{t, x1}`` is an invertible GLOW-style map of ``x0`` (actnorm, an invertible linear map in LU
  form, affine couplings) conditioned on ``(t, x1)`` whose every layer is the identity at ``t = 0``.
  So ``phi_0 = x0`` and ``phi_1 = x1`` exactly, ``phi_t`` is invertible in ``x0`` for ``t < 1``, and its
  log-determinant is exact: ``d log(1 - t) + log|det d psi / d x0|``.
* :func:`optimal_velocity`: the minimiser of the flow matching loss of an interpolant when the data
  are a finite set ``{x1^i}`` (Proposition 1 of the paper), as a velocity ``v*(x, t)``:

      ``v*(x, t) = sum_i w_i(x, t) u_t(x0^i; x1^i)``,  ``x0^i = phi_t^{-1}(x; x1^i)``,
      ``w_i ∝ p0(x0^i) |det d phi_t^{-1} / dx|``  (self-normalised over ``i``).

  For an affine interpolant and ``p0 = N(0, I)`` the weights are a softmax of
  ``-|x - g x1^i|^2 / (2 (1 - h)^2)``. Over the *whole* data set this is exact; over a minibatch of data
  it is a (biased, consistent) estimate, and the functions here only see what they are given.
* :func:`material_derivative` and :func:`straightness_loss`: ``D v / Dt = d v / d t + (grad_x v) v`` through
  one forward-mode JVP (``torch.func.jvp``) along the tangent ``(v, 1)``; a flow has straight
  trajectories travelled at constant speed exactly when ``D v / Dt = 0``, and ``E |D v / Dt|^2`` is the
  straightness objective.
* :func:`load_pretrained`: the GLOW interpolants fitted for N(0, I) -> 8 Gaussians and -> moons by
  ``scripts/fit_interpolants.py`` (shipped in ``lfm_core/assets`` as :mod:`lfm_core.store` folders), which
  notebook 03's quick mode loads.

Time runs from the source at ``t = 0`` to the data at ``t = 1``.

Copy with: utils, training, trainer, batches, checkpoints, devices, images, hub, runtime, couplings, guidance,
solvers (all but utils for :func:`fit_interpolant` and :func:`fit_straight_flow` only), store (for
:func:`load_pretrained` only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .utils import (
    as_time,
    check_finite,
    check_nonnegative,
    check_positive_int,
    check_same_batch,
    check_tensor,
    expand_like,
)

__all__ = ["BernsteinSchedule", "AffineSchedule", "AffineInterpolant", "GlowInterpolant", "optimal_velocity",
           "material_derivative", "straightness_loss", "fit_interpolant", "fit_straight_flow"]


def _no_noise(noise):
    if noise is not None:
        raise ValueError("learned interpolants are deterministic: noise must be None")


# ------------------------------------------------------------------------------------------ schedules
class BernsteinSchedule(nn.Module):
    r"""A learnable monotone schedule on ``[0, 1]`` with ``s(0) = 0`` and ``s(1) = 1`` exactly.

    ``s(t) = sum_{k=0}^{n} c_k binom(n, k) t^k (1 - t)^{n - k}`` with ``c_0 = 0``, ``c_k = p_0 + ... + p_{k-1}``
    and ``p = softmax(logits)`` (``n`` entries): the coefficients increase from 0 to 1, so ``s`` is
    increasing with ``s'(t) = n sum_k p_k b_{k, n-1}(t) > 0``. Equal logits give ``s(t) = t``.
    """

    def __init__(self, degree: int = 8):
        super().__init__()
        self.degree = check_positive_int(degree, "degree")
        self.logits = nn.Parameter(torch.zeros(self.degree))

    @classmethod
    def from_coefficients(cls, coefficients) -> BernsteinSchedule:
        """A schedule with the given Bernstein coefficients ``c_0 = 0 <= ... <= c_n = 1`` (strictly increasing)."""
        c = torch.as_tensor(coefficients, dtype=torch.float32)
        if c.dim() != 1 or c.numel() < 2:
            raise ValueError(f"coefficients must be a 1-D sequence of at least 2 values, got shape {tuple(c.shape)}")
        if not bool(torch.isfinite(c).all()):
            raise ValueError("coefficients must be finite")
        if abs(float(c[0])) > 1e-6 or abs(float(c[-1]) - 1) > 1e-6:
            raise ValueError(f"a schedule must start at 0 and end at 1, got c_0 = {float(c[0]):g}, "
                             f"c_n = {float(c[-1]):g}")
        steps = c.diff()
        if bool((steps <= 0).any()):
            raise ValueError(f"a schedule must be strictly increasing: coefficients {c.tolist()} are not")
        s = cls(len(c) - 1)
        with torch.no_grad():
            s.logits.copy_(torch.log(steps / steps.sum()))
        return s

    def coefficients(self) -> torch.Tensor:
        p = torch.softmax(self.logits, 0)
        return torch.cat([p.new_zeros(1), torch.cumsum(p, 0)[:-1], p.new_ones(1)])

    @staticmethod
    def _basis(t: torch.Tensor, n: int) -> torch.Tensor:
        k = torch.arange(n + 1, dtype=t.dtype, device=t.device)
        logc = torch.lgamma(torch.tensor(n + 1.0, dtype=t.dtype)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        tt = t[..., None]
        return torch.exp(logc) * tt**k * (1 - tt) ** (n - k)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s(t), s'(t))`` for ``t`` of any shape in ``[0, 1]``."""
        c = self.coefficients().to(t.dtype)
        n = self.degree
        s = (self._basis(t, n) * c).sum(-1)
        ds = n * (self._basis(t, n - 1) * c.diff()).sum(-1) if n > 1 else n * c.diff()[0] * torch.ones_like(t)
        return s, ds


class AffineSchedule(NamedTuple):
    """The time functions of an :class:`AffineInterpolant` at times ``t``, each shaped like ``t``."""

    h: torch.Tensor
    d_h: torch.Tensor
    g: torch.Tensor
    d_g: torch.Tensor


class AffineInterpolant(nn.Module):
    r"""``x_t = (1 - h(t)) x0 + g(t) x1``, ``u_t = -h'(t) x0 + g'(t) x1``, with learned monotone ``h``, ``g``.

    Both schedules start as the identity, i.e. the straight line of rectified flow / I-CFM. The endpoint
    conditions ``x_0 = x0`` and ``x_1 = x1`` hold for every parameter value.
    """

    def __init__(self, degree: int = 8):
        super().__init__()
        self.h, self.g = BernsteinSchedule(degree), BernsteinSchedule(degree)
        self.config = {"degree": degree}

    def schedule(self, t: torch.Tensor) -> AffineSchedule:
        """The :class:`AffineSchedule` ``(h, h', g, g')`` at times ``t``."""
        h, dh = self.h(t)
        g, dg = self.g(t)
        return AffineSchedule(h, dh, g, dg)

    def sample_time(self, n: int, *, generator=None, dtype=torch.float32) -> torch.Tensor:
        """Uniform times in ``[0, 1)`` (the interface of :mod:`lfm_core.paths`)."""
        return torch.rand(n, generator=generator, dtype=dtype)

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t, *, noise=None, generator=None):
        """``(x_t, u_t)``; deterministic (no noise), ``noise`` must be None."""
        _no_noise(noise)
        check_tensor(x0, "x0")
        check_tensor(x1, "x1")
        check_same_batch(x0, x1, "x0", "x1")
        check_finite(x0, "x0")
        check_finite(x1, "x1")
        t = as_time(t, x0.shape[0], like=x0)
        h, dh, g, dg = (expand_like(c, x0) for c in self.schedule(t))
        return (1 - h) * x0 + g * x1, -dh * x0 + dg * x1

    def invert(self, x: torch.Tensor, x1: torch.Tensor, t: torch.Tensor):
        """``x0`` with ``phi_t(x0; x1) = x`` and ``log|det d x0 / d x|`` (``t < 1``); x1 and t broadcast against x."""
        h, _, g, _ = self.schedule(t)
        h, g = expand_like(h, x), expand_like(g, x)
        x0 = (x - g * x1) / (1 - h)
        d = x[0].numel() if x.dim() > 1 else 1
        return x0, -d * torch.log(1 - h).reshape(x.shape[0], -1)[:, 0]

    def conditional_velocity(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, dh, _, dg = (expand_like(c, x0) for c in self.schedule(t))
        return -dh * x0 + dg * x1


# ------------------------------------------------------------------------------ GLOW-style interpolant
class _Conditioner(nn.Module):
    def __init__(self, d_in: int, d_cond: int, d_out: int, hidden: int):
        super().__init__()
        # tanh, not SiLU: PyTorch has no forward-mode derivative of silu_backward, which the material
        # derivative of v* (a JVP over the JVP that gives u_t) needs outside grad mode
        self.net = nn.Sequential(nn.Linear(d_in + d_cond + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 2 * d_out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, xa, x1, t):
        out = self.net(torch.cat([xa, x1, t[:, None]], dim=1))
        log_s, shift = out.chunk(2, dim=1)
        return torch.tanh(log_s), shift


class GlowInterpolant(nn.Module):
    r"""``phi_t(x0; x1) = (1 - t) psi_{t, x1}(x0) + t x1`` with an invertible GLOW-style ``psi`` (vectors ``[B, d]``).

    ``psi`` is a stack of ``layers`` blocks, each: actnorm ``x -> x * exp(t a) + t b``, an invertible
    linear map ``W(t) = L(t) U(t)`` (unit lower-triangular ``L(t) = I + t L0``, upper-triangular
    ``U(t) = I + t U0`` with diagonal ``exp(t s)``), and an affine coupling that rescales and shifts one half of
    the coordinates by ``t * (tanh-bounded log-scale, shift)`` computed from the other half, ``x1`` and ``t``;
    the halves alternate between blocks. Every block is the identity at ``t = 0``; every block is
    invertible with an exact log-determinant. The couplings start at zero output, so a fresh interpolant
    is the straight line.
    """

    def __init__(self, dim: int, layers: int = 4, hidden: int = 64):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        if dim < 2:
            raise ValueError("GlowInterpolant needs dim >= 2 (couplings split the coordinates)")
        self.layers = check_positive_int(layers, "layers")
        self.config = {"dim": dim, "layers": layers, "hidden": check_positive_int(hidden, "hidden")}
        self.an_log = nn.Parameter(torch.zeros(layers, dim))
        self.an_bias = nn.Parameter(torch.zeros(layers, dim))
        self.l0 = nn.Parameter(torch.zeros(layers, dim, dim))
        self.u0 = nn.Parameter(torch.zeros(layers, dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(layers, dim))
        self.register_buffer("lower", torch.tril(torch.ones(dim, dim), -1))
        self.register_buffer("upper", torch.triu(torch.ones(dim, dim), 1))
        half = dim // 2
        self.splits = [(half, dim - half) if k % 2 == 0 else (dim - half, half) for k in range(layers)]
        self.couplings = nn.ModuleList(_Conditioner(a, dim, b, hidden) for a, b in self.splits)

    def _strict(self, k: int):
        """The strictly lower ``L0`` and strictly upper ``U0`` of block ``k``."""
        return self.l0[k] * self.lower, self.u0[k] * self.upper

    def _apply_linear(self, k: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``W(t) x = L(t) U(t) x`` per sample, with shared matrix products (no per-sample matrices)."""
        l0, u0 = self._strict(k)
        tt = t[:, None]
        y = torch.exp(tt * self.log_diag[k]) * x + tt * (x @ u0.T)
        return y + tt * (y @ l0.T)

    def _solve_linear(self, k: int, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``W(t)^{-1} y`` per sample: forward substitution through ``L(t)``, then back substitution through ``U(t)``.

        ``d`` vectorised steps each; cheaper than batched triangular solves of ``[B, d, d]`` matrices, which
        the optimal velocity (``B N`` inversions inside nested JVPs) cannot afford in 64 dimensions.
        """
        l0, u0 = self._strict(k)
        d = self.dim
        z = [y[:, 0]]
        for i in range(1, d):
            z.append(y[:, i] - t * (torch.stack(z, 1) @ l0[i, :i]))
        x = [None] * d
        for i in reversed(range(d)):
            xi = z[i] if i == d - 1 else z[i] - t * (torch.stack(x[i + 1:], 1) @ u0[i, i + 1:])
            x[i] = xi * torch.exp(-t * self.log_diag[k, i])
        return torch.stack(x, 1)

    def _check(self, x, x1, t):
        check_tensor(x, "x0", min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GlowInterpolant works on vectors [B, {self.dim}], got {tuple(x.shape)}")
        check_same_batch(x, x1, "x0", "x1")
        return as_time(t, x.shape[0], like=x)

    def psi(self, x0: torch.Tensor, x1: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``psi_{t, x1}(x0)`` and ``log|det d psi / d x0|`` ``[B]``."""
        t = self._check(x0, x1, t)
        x, logdet = x0, torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for k, (a, _) in enumerate(self.splits):
            x = x * torch.exp(t[:, None] * self.an_log[k]) + t[:, None] * self.an_bias[k]
            logdet = logdet + t * self.an_log[k].sum()
            x = self._apply_linear(k, x, t)
            logdet = logdet + t * self.log_diag[k].sum()
            xa, xb = x[:, :a], x[:, a:]
            log_s, shift = self.couplings[k](xa, x1, t)
            log_s, shift = t[:, None] * log_s, t[:, None] * shift
            x = torch.cat([xa, xb * torch.exp(log_s) + shift], dim=1)
            logdet = logdet + log_s.sum(1)
        return x, logdet

    def psi_inverse(self, y: torch.Tensor, x1: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``psi_{t, x1}^{-1}(y)`` and ``log|det d psi^{-1} / d y|``."""
        t = self._check(y, x1, t)
        x, logdet = y, torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for k in reversed(range(self.layers)):
            a = self.splits[k][0]
            xa, xb = x[:, :a], x[:, a:]
            log_s, shift = self.couplings[k](xa, x1, t)
            log_s, shift = t[:, None] * log_s, t[:, None] * shift
            x = torch.cat([xa, (xb - shift) * torch.exp(-log_s)], dim=1)
            logdet = logdet - log_s.sum(1)
            x = self._solve_linear(k, x, t)
            logdet = logdet - t * self.log_diag[k].sum()
            x = (x - t[:, None] * self.an_bias[k]) * torch.exp(-t[:, None] * self.an_log[k])
            logdet = logdet - t * self.an_log[k].sum()
        return x, logdet

    def forward(self, x0, x1, t) -> torch.Tensor:
        t = self._check(x0, x1, t)
        y, _ = self.psi(x0, x1, t)
        return (1 - t)[:, None] * y + t[:, None] * x1

    def sample_time(self, n: int, *, generator=None, dtype=torch.float32) -> torch.Tensor:
        return torch.rand(n, generator=generator, dtype=dtype)

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t, *, noise=None, generator=None):
        """``(x_t, u_t)`` with ``u_t = d phi_t / dt`` by one forward-mode JVP in ``t``."""
        _no_noise(noise)
        t = self._check(x0, x1, t)
        check_finite(x0, "x0")
        check_finite(x1, "x1")
        xt, ut = torch.func.jvp(lambda tt: self.forward(x0, x1, tt), (t,), (torch.ones_like(t),))
        return xt, ut

    def invert(self, x: torch.Tensor, x1: torch.Tensor, t: torch.Tensor):
        """``x0 = phi_t^{-1}(x; x1)`` and ``log|det d x0 / d x|`` for ``t < 1``."""
        t = self._check(x, x1, t)
        y = (x - t[:, None] * x1) / (1 - t)[:, None]
        x0, logdet = self.psi_inverse(y, x1, t)
        return x0, logdet - self.dim * torch.log(1 - t)

    def conditional_velocity(self, x0, x1, t) -> torch.Tensor:
        return self.sample(x0, x1, t)[1]


# ----------------------------------------------------------------------------- optimal velocity
def _std_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1)
    return -0.5 * (x**2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def optimal_velocity(interpolant, data: torch.Tensor, *, source_log_prob=None, t_max: float = 1 - 1e-4,
                     chunk: int = 4096, differentiable: bool = False):
    r"""The optimal velocity ``v*(x, t)`` of ``interpolant`` for the data set ``data`` ``[N, ...]``, as a velocity.

    Proposition 1 of Shankar & Geffner: ``v*(x, t) = sum_i w_i u_t(x0^i; x1^i)`` with ``x0^i`` the preimage of
    ``x`` under ``phi_t(.; x1^i)`` and ``w_i ∝ p0(x0^i) |det d x0^i / dx|`` normalised over the ``N`` data
    points (a softmax in log space). ``source_log_prob`` defaults to the standard normal. Exact when
    ``data`` is the whole (finite) data set; with a minibatch it is a self-normalised estimate. ``t`` is
    clamped to ``t_max`` (the preimage is singular at ``t = 1``). Each call costs ``B N`` interpolant
    inversions, in chunks of about ``chunk`` rows.

    Returns a callable ``v(x [B, ...], t) -> like x`` (the project's velocity convention, for solvers and
    metrics) that also has ``v.weights(x, t) -> [B, N]``, the posterior weights ``w_i``. With
    ``differentiable=True`` its result keeps its graph (in ``x``, ``t`` and the interpolant's parameters)
    and works inside ``torch.func.jvp``: that is how :func:`fit_interpolant` minimises the straightness of
    ``v*`` over the interpolant. Otherwise it runs without gradients.
    """
    check_tensor(data, "data", min_dim=2)
    check_finite(data, "data")
    t_max = check_nonnegative(t_max, "t_max", strict=True)
    if t_max >= 1:
        raise ValueError(f"t_max must be < 1 (the preimage is singular at t = 1), got {t_max}")
    check_positive_int(chunk, "chunk")
    if not (hasattr(interpolant, "invert") and hasattr(interpolant, "conditional_velocity")):
        raise TypeError(f"interpolant must have invert and conditional_velocity (AffineInterpolant, GlowInterpolant), "
                        f"got {type(interpolant).__name__}")
    if source_log_prob is not None and not callable(source_log_prob):
        raise TypeError(f"source_log_prob must be callable or None, got {type(source_log_prob).__name__}")
    return _OptimalVelocity(interpolant, data, source_log_prob or _std_normal_log_prob, t_max, chunk, differentiable)


class _OptimalVelocity:
    def __init__(self, interpolant, data, logp, t_max, chunk, differentiable):
        self.interpolant, self.data, self.logp = interpolant, data, logp
        self.t_max, self.chunk, self.differentiable = t_max, chunk, differentiable

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        return self._run(x, t)[0]

    def weights(self, x: torch.Tensor, t) -> torch.Tensor:
        """The posterior weights ``w_i(x, t)`` ``[B, N]`` of the data points."""
        return self._run(x, t)[1]

    def _run(self, x, t):
        if not self.differentiable:
            with torch.no_grad():
                return self._compute(x, t)
        return self._compute(x, t)

    def _compute(self, x, t):
        check_tensor(x, "x", min_dim=2)
        data = self.data
        if data.shape[1:] != x.shape[1:]:
            raise ValueError(f"data points {tuple(data.shape[1:])} and x {tuple(x.shape[1:])} must have the same "
                             "shape")
        data = data.to(device=x.device, dtype=x.dtype)
        t = as_time(t, x.shape[0], like=x).clamp(max=self.t_max)
        B, N = x.shape[0], data.shape[0]
        rep = lambda a, n: a.repeat_interleave(n, dim=0)  # noqa: E731
        til = lambda a, n: a.repeat(n, *([1] * (a.dim() - 1)))  # noqa: E731
        logw, vel = [], []
        rows = max(1, self.chunk // N)
        for s in range(0, B, rows):
            xb, tb = x[s:s + rows], t[s:s + rows]
            b = xb.shape[0]
            xx, tt, x1 = rep(xb, N), rep(tb, N), til(data, b)
            x0, logdet = self.interpolant.invert(xx, x1, tt)
            logw.append((self.logp(x0) + logdet).reshape(b, N))
            # no .detach() anywhere: it would drop the forward-mode tangents of material_derivative
            vel.append(self.interpolant.conditional_velocity(x0, x1, tt).reshape(b, N, *x.shape[1:]))
        w = torch.softmax(torch.cat(logw), dim=1)
        v = (w.reshape(B, N, *([1] * (x.dim() - 1))) * torch.cat(vel)).sum(1)
        return v, w


# ------------------------------------------------------------------------------------- straightness
def material_derivative(velocity, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(v, Dv/Dt)`` with ``Dv/Dt = dv/dt + (grad_x v) v``, by one JVP of ``(x, t) -> v(x, t)`` along ``(v, 1)``.

    The velocity is evaluated once without the tangent to get ``v`` (the direction), then once more inside
    ``torch.func.jvp``. Differentiable, so ``E |Dv/Dt|^2`` can be minimised.
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
    check_tensor(x, "x")
    check_finite(x, "x")
    t = as_time(t, x.shape[0], like=x)
    v = velocity(x, t)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        raise ValueError(f"the velocity must return a tensor shaped like x {tuple(x.shape)}, got "
                         f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    _, dv = torch.func.jvp(velocity, (x, t), (v, torch.ones_like(t)))
    return v, dv


def straightness_loss(velocity, x: torch.Tensor, t) -> torch.Tensor:
    """``mean |Dv/Dt|^2`` per dimension (0 exactly when trajectories are straight at constant speed)."""
    _, dv = material_derivative(velocity, x, t)
    return dv.pow(2).reshape(dv.shape[0], -1).mean()


# ------------------------------------------------------------------------------------------ training
def _draw(source, n, g):
    if isinstance(source, torch.Tensor):
        return source[torch.randint(0, source.shape[0], (n,), generator=g)]
    return source(n, g)


def fit_interpolant(interpolant, source, data: torch.Tensor, *, steps: int, batch_size: int = 128,
                    n_reference: int = 256, t_max: float = 0.9, lr: float = 1e-2, seed: int | None = 0,
                    weight_power: float = 0.0, grad_clip: float | None = 1.0, progress: bool | None = None,
                    callback=None):
    r"""Make ``interpolant`` straighter: minimise ``E_{t, x_t} |D v* / Dt|^2`` over its parameters.

    Each step draws ``x0`` from ``source`` (a tensor of points or ``(n, generator) -> points``), ``x1`` and a
    *reference set* of ``n_reference`` points from ``data``, times uniform in ``[0, t_max]``, and points
    ``x_t = phi_t(x0; x1)`` (a reparameterised sample, so the gradient also sees how ``x_t`` moves); ``v*``
    is the closed-form optimal velocity of the interpolant over the reference set
    (:func:`optimal_velocity`, differentiable), and ``D v*/Dt`` its material derivative by one JVP.
    The velocity network is not involved: the inner regression problem is solved in closed form.

    Safeguards. (1) ``t <= t_max < 1``: near ``t = 1`` the optimal velocity over a finite reference set
    becomes a sum of near-delta posteriors and its material derivative has a heavy tail, which would dominate
    the loss; the window still has to reach close to ``t = 1``, where the flow chooses its mode, so lowering the
    objective on a short window does not straighten the flow (the default 0.9 is the compromise; the runs behind
    it: ``benchmarks/results/straight_flows_probe.md``). (2) The schedules and maps are exact at the endpoints by
    construction, so straightness cannot be bought by not arriving. (3) The reference set is redrawn every
    step, so the interpolant cannot overfit one set of data points. (4) Optionally each point's
    ``|Dv*/Dt|^2`` is weighted by ``(1 - t)^weight_power``, which tames the tail near ``t_max`` further.
    (5) The gradient is clipped to the global norm ``grad_clip`` (``None`` turns it off): rare reference sets
    with a near-delta posterior give occasional huge gradients, which make the fit unstable for a window
    close to 1.

    Returns the
    :class:`lfm_core.trainer.FitResult`.
    """
    from .training import fit

    check_positive_int(batch_size, "batch_size")
    check_positive_int(n_reference, "n_reference")
    t_max = check_nonnegative(t_max, "t_max", strict=True)
    if t_max >= 1:
        raise ValueError(f"t_max must lie in (0, 1), got {t_max}")
    weight_power = check_nonnegative(weight_power, "weight_power")
    check_tensor(data, "data", min_dim=2)
    check_finite(data, "data")
    if isinstance(source, torch.Tensor):
        check_tensor(source, "source", min_dim=2)
        check_finite(source, "source")
    elif not callable(source):
        raise TypeError(f"source must be a tensor of points or a callable (n, generator) -> points, got "
                        f"{type(source).__name__}")

    def loss_fn(step, g):
        x0 = _draw(source, batch_size, g)
        x1 = _draw(data, batch_size, g)
        ref = _draw(data, n_reference, g)
        t = torch.rand(batch_size, generator=g, dtype=x0.dtype) * t_max
        xt, _ = interpolant.sample(x0, x1, t)

        def v_star(x, tt):
            return optimal_velocity(interpolant, ref, differentiable=True, chunk=1 << 20)(x, tt)

        if not weight_power:
            return straightness_loss(v_star, xt, t)
        _, dv = material_derivative(v_star, xt, t)
        per_point = dv.pow(2).reshape(dv.shape[0], -1).mean(1)
        return (per_point * (1 - t) ** weight_power).mean()

    return fit(interpolant, loss_fn, steps=steps, lr=lr, seed=seed, progress=progress, lr_schedule="cosine",
               desc="interpolant", callback=callback, grad_clip=grad_clip)


def fit_straight_flow(interpolant, model, source, data: torch.Tensor, *, levels: int = 2, interpolant_steps: int = 300,
                      model_steps: int = 1000, batch_size: int = 256, lr: float = 1e-3, interpolant_lr: float = 1e-2,
                      seed: int = 0, progress: bool | None = None, **interpolant_kwargs) -> dict:
    r"""The multi-level procedure: for each level, straighten the interpolant, then train the velocity network.

    Level ``l``: :func:`fit_interpolant` for ``interpolant_steps`` (warm-started from level ``l - 1``), then
    conditional flow matching of ``model`` on the current interpolant for ``model_steps``
    (:func:`lfm_core.training.train_cfm` with the interpolant as the path; the interpolant is frozen while the
    network trains, and the network is warm-started too). Returns the loss histories per level.
    """
    from .training import train_cfm

    check_positive_int(levels, "levels")
    for name, value in (("interpolant_steps", interpolant_steps), ("model_steps", model_steps)):
        check_positive_int(value, name)
    history = {"interpolant": [], "model": []}
    for level in range(levels):
        interpolant.requires_grad_(True)
        r = fit_interpolant(interpolant, source, data, steps=interpolant_steps, lr=interpolant_lr,
                            seed=seed + 1000 * level, progress=progress, **interpolant_kwargs)
        history["interpolant"].append(r.losses)
        interpolant.requires_grad_(False)
        r = train_cfm(model, interpolant, source, data, steps=model_steps, batch_size=batch_size, lr=lr,
                      lr_schedule="cosine", seed=seed + 1000 * level + 1, progress=progress)
        history["model"].append(r.losses)
    return history


PRETRAINED_TASKS = ("8gaussians", "moons")


def load_pretrained(task: str, root=None) -> tuple[GlowInterpolant, dict]:
    """The GLOW interpolant fitted for straightness on ``N(0, I) -> task`` and its record.

    ``task`` is one of :data:`PRETRAINED_TASKS`; ``root`` the folder that holds ``interpolant_<task>/`` (default:
    the package's :data:`lfm_core.store.ASSETS`), a network stored by :func:`lfm_core.store.save` in
    ``scripts/fit_interpolants.py``, whose command, settings, loss and seconds the record holds; every file is
    verified against its checksum. The interpolant is returned frozen (``requires_grad_(False)``), in float32.
    """
    from . import store

    if task not in PRETRAINED_TASKS:
        raise ValueError(f"task must be one of {PRETRAINED_TASKS}, got {task!r}")
    folder = Path(root if root is not None else store.ASSETS) / f"interpolant_{task}"
    try:
        interp, record = store.load(folder)
    except FileNotFoundError:
        raise FileNotFoundError(f"no fitted interpolant in {folder}: run python scripts/fit_interpolants.py") from None
    if not isinstance(interp, GlowInterpolant):
        raise store.StoreError(f"{folder / 'config.json'} holds class {type(interp).__name__}, not GlowInterpolant")
    return interp.requires_grad_(False), record
