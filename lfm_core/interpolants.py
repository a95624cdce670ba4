r"""Learned interpolants for straight flows (after Shankar & Geffner, arXiv 2503.20719).

Flow matching regresses a velocity onto the time derivative of an *interpolant* ``x_t = phi_t(x0; x1)``
between a source point ``x0 ~ p0`` and a data point ``x1``. With independent pairs and the straight line
``(1 - t) x0 + t x1`` the resulting marginal flow is curved, and few-step samplers pay for it. The idea
of the paper is to *learn* the interpolant so that the optimal velocity it induces is as straight as
possible (the objective and the fitting: :mod:`lfm_core.straightness`). This module holds the interpolants:

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
* :func:`load_pretrained`: the GLOW interpolants fitted for N(0, I) -> 8 Gaussians and -> moons by
  ``scripts/fit_interpolants.py`` (shipped in ``lfm_core/assets`` as :mod:`lfm_core.store` folders), which
  notebook 03's quick mode loads.

Both interpolants also give ``invert(x, x1, t)`` (the preimage ``x0`` and ``log|det d x0 / d x|``) and
``conditional_velocity(x0, x1, t)``, what the optimal velocity of :mod:`lfm_core.straightness` needs.
Time runs from the source at ``t = 0`` to the data at ``t = 1``.

Copy with: utils, store (for :func:`load_pretrained` only) (``torch``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .utils import (
    as_real,
    as_time,
    check_finite,
    check_float_dtype,
    check_generator,
    check_in_range,
    check_positive_int,
    check_real_tensor,
    check_same_batch,
    check_tensor,
    expand_like,
)

__all__ = ["BernsteinSchedule", "AffineSchedule", "AffineInterpolant", "GlowInterpolant", "load_pretrained",
           "PRETRAINED_TASKS"]


def _no_noise(noise):
    if noise is not None:
        raise ValueError("learned interpolants are deterministic: noise must be None")


def _check_invertible(t: torch.Tensor) -> None:
    """``phi_1`` maps every ``x0`` to ``x1``: the preimage exists only for ``t < 1``."""
    check_in_range(t, "t", 0.0, 1.0, high_open=True)


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
        c = as_real(coefficients, "coefficients", torch.float32)
        if c.dim() != 1 or c.numel() < 2:
            raise ValueError(f"coefficients must be a 1-D sequence of at least 2 values, got shape {tuple(c.shape)}")
        if not bool(torch.isfinite(c).all()):
            raise ValueError("coefficients must be finite")
        if abs(float(c[0])) > 1e-6 or abs(float(c[-1]) - 1) > 1e-6:
            raise ValueError(f"coefficients must start at 0 and end at 1 (a schedule), got c_0 = {float(c[0]):g}, "
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
        """``(s(t), s'(t))`` for a floating-point tensor ``t`` of any shape with values in ``[0, 1]`` (outside, the
        polynomial is no schedule: it leaves ``[0, 1]`` and stops increasing)."""
        check_real_tensor(t, "t")
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
        check_in_range(t, "t", 0.0, 1.0)
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
        return torch.rand(check_positive_int(n, "n"), generator=check_generator(generator),
                          dtype=check_float_dtype(dtype))

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
        """``x0`` with ``phi_t(x0; x1) = x`` and ``log|det d x0 / d x|`` for ``t`` in ``[0, 1)``; x1 broadcasts
        against x, t is a float or ``[B]``."""
        check_tensor(x, "x")
        check_tensor(x1, "x1")
        try:
            fits = torch.broadcast_shapes(x1.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"x1 {tuple(x1.shape)} must broadcast against x {tuple(x.shape)}")
        check_finite(x, "x")
        check_finite(x1, "x1")
        t = as_time(t, x.shape[0], like=x)
        _check_invertible(t)
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

    def _check(self, x, x1, t, name="x0"):
        check_tensor(x, name, min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GlowInterpolant works on vectors [B, {self.dim}]: {name} has shape {tuple(x.shape)}")
        check_tensor(x1, "x1", min_dim=2)
        check_same_batch(x, x1, name, "x1")
        check_finite(x, name)
        check_finite(x1, "x1")
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
        t = self._check(y, x1, t, "y")
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
        return torch.rand(check_positive_int(n, "n"), generator=check_generator(generator),
                          dtype=check_float_dtype(dtype))

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t, *, noise=None, generator=None):
        """``(x_t, u_t)`` with ``u_t = d phi_t / dt`` by one forward-mode JVP in ``t``."""
        _no_noise(noise)
        t = self._check(x0, x1, t)
        xt, ut = torch.func.jvp(lambda tt: self.forward(x0, x1, tt), (t,), (torch.ones_like(t),))
        return xt, ut

    def invert(self, x: torch.Tensor, x1: torch.Tensor, t: torch.Tensor):
        """``x0 = phi_t^{-1}(x; x1)`` and ``log|det d x0 / d x|`` for ``t`` in ``[0, 1)``."""
        t = self._check(x, x1, t, "x")
        _check_invertible(t)
        y = (x - t[:, None] * x1) / (1 - t)[:, None]
        x0, logdet = self.psi_inverse(y, x1, t)
        return x0, logdet - self.dim * torch.log(1 - t)

    def conditional_velocity(self, x0, x1, t) -> torch.Tensor:
        return self.sample(x0, x1, t)[1]


# ------------------------------------------------------------------------------------ fitted ones
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
    folder = (store.ASSETS if root is None else store.check_path(root, "root")) / f"interpolant_{task}"
    try:
        interp, record = store.load(folder)
    except FileNotFoundError:
        raise FileNotFoundError(f"no fitted interpolant in {folder}: run python scripts/fit_interpolants.py") from None
    if not isinstance(interp, GlowInterpolant):
        raise store.StoreError(f"{folder / 'config.json'} holds class {type(interp).__name__}, not GlowInterpolant")
    return interp.requires_grad_(False), record
