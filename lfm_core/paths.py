r"""Conditional probability paths: ``(x0, x1, t) -> (x_t, u_t)``.

Time runs from the source ``x0`` (noise) at ``t = 0`` to the target ``x1`` (data) at
``t = 1``. Every path here is *affine Gaussian*:

.. math::

    x_t = \alpha_t\,x_0 + \beta_t\,x_1 + \gamma_t\,\varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),

and its conditional velocity is the time derivative of that expression with
``x0``, ``x1`` and ``eps`` held fixed:

.. math::

    u_t = \dot\alpha_t\,x_0 + \dot\beta_t\,x_1 + \dot\gamma_t\,\varepsilon .

Conditional flow matching (Lipman et al. 2023, eq. 9; Tong et al. 2024, eq. 10) regresses a
network ``v(x_t, t)`` on ``u_t``; the minimiser is the marginal velocity
``E[u_t | x_t]`` whose flow carries the source distribution to the target.

The LFM paper (Dao et al. 2023) and its code use the flipped convention (data at
``t' = 0``, noise at ``t' = 1``). To read their equations here, substitute
``t' = 1 - t`` and ``v' = -v``.

Copy with: utils (``torch`` only).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .utils import (
    as_time,
    check_device,
    check_finite,
    check_float_dtype,
    check_generator,
    check_nonnegative,
    check_positive_int,
    check_real_tensor,
    check_same_batch,
    check_tensor,
    draw_device,
    expand_like,
    randn_like,
    values_checked,
)

__all__ = ["Schedule", "AffinePath", "LinearPath", "TargetPath", "VPPath", "BridgePath"]


def _schedule_time(t) -> torch.Tensor:
    """``t`` if it is a tensor of real times (a schedule of complex or boolean times is meaningless)."""
    check_real_tensor(t, "t")
    return t


def _time_draw(n, generator, device, dtype):
    """Check the arguments of ``sample_time``; returns ``device`` as a ``torch.device`` (or None)."""
    check_positive_int(n, "n")
    check_generator(generator)
    check_float_dtype(dtype)
    return None if device is None else check_device(device)


class Schedule(NamedTuple):
    """The time functions of an affine path at times ``t``: ``x_t = alpha x0 + beta x1 + gamma eps`` and their
    derivatives in ``t``; each entry is shaped like ``t``."""

    alpha: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor
    d_alpha: torch.Tensor
    d_beta: torch.Tensor
    d_gamma: torch.Tensor


class AffinePath:
    r"""Base class of the affine Gaussian paths ``x_t = alpha_t x0 + beta_t x1 + gamma_t eps``.

    Subclasses implement :meth:`schedule`. ``sample`` and ``sample_time`` are shared.
    """

    #: True when the path is only a valid probability path from a standard normal source.
    gaussian_source_only: bool = False

    def schedule(self, t: torch.Tensor) -> Schedule:
        """The :class:`Schedule` ``(alpha, beta, gamma, d_alpha, d_beta, d_gamma)`` at times ``t``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    def validate_time(self, t: torch.Tensor) -> None:
        """Raise ``ValueError`` if the path is undefined at some of the times ``t`` (see :class:`BridgePath`)."""

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t, *, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None):
        r"""Draw ``x_t`` on the path between ``x0`` and ``x1`` and return ``(x_t, u_t)``.

        Args:
            x0: source points, shape ``[B, ...]``.
            x1: target points, same shape as ``x0``.
            t: times in ``[0, 1]``, shape ``[B]`` (a float is broadcast).
            noise: the ``eps`` of the path, same shape as ``x0``. Drawn from
                ``N(0, I)`` (with ``generator``) when omitted and the path has noise.
            generator: random generator used to draw ``noise``.

        Returns:
            ``(x_t, u_t)``, both shaped like ``x0``; ``u_t = d x_t / dt``.
        """
        check_tensor(x0, "x0")
        check_tensor(x1, "x1")
        check_same_batch(x0, x1, "x0", "x1")
        check_generator(generator)
        t = as_time(t, x0.shape[0], like=x0)
        self.validate_time(t)
        check_finite(x0, "x0")
        check_finite(x1, "x1")
        a, b, g, da, db, dg = (expand_like(c, x0) for c in self.schedule(t))
        xt = a * x0 + b * x1
        ut = da * x0 + db * x1
        if self.has_noise:
            if noise is None:
                noise = randn_like(x0, generator)
            else:
                check_tensor(noise, "noise")
                check_same_batch(noise, x0, "noise", "x0")
                check_finite(noise, "noise")
            xt = xt + g * noise
            ut = ut + dg * noise
        if values_checked(xt) and not (bool(torch.isfinite(xt).all()) and bool(torch.isfinite(ut).all())):
            raise ValueError(f"x_t or u_t overflowed to non-finite values in {x0.dtype}: the inputs x0, x1, noise or "
                             f"the path's parameters ({self!r}) are too large")
        return xt, ut

    @property
    def has_noise(self) -> bool:
        return False

    def sample_time(self, n: int, *, generator: torch.Generator | None = None, device=None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw training times ``t ~ U[0, 1)`` of shape ``[n]`` (on the generator's device, then ``device``)."""
        device = _time_draw(n, generator, device, dtype)
        t = torch.rand(n, generator=generator, device=draw_device(generator, device), dtype=dtype)
        return t if device is None else t.to(device)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearPath(AffinePath):
    r"""Straight line with constant Gaussian width: rectified flow / I-CFM.

    .. math:: x_t = (1 - t)\,x_0 + t\,x_1 + \sigma\varepsilon, \qquad u_t = x_1 - x_0 .

    ``sigma = 0`` is rectified flow (Liu et al. 2023) and the linear path of Lipman et al.
    with ``sigma_min = 0``; ``sigma > 0`` is I-CFM (Tong et al. 2024, eq. 14-15), valid
    for any source distribution.
    """

    def __init__(self, sigma: float = 0.0):
        self.sigma = check_nonnegative(sigma, "sigma")

    @property
    def has_noise(self) -> bool:
        return self.sigma > 0

    def schedule(self, t):
        t = _schedule_time(t)
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        return Schedule(1 - t, t, self.sigma * one, -one, one, zero)


class TargetPath(AffinePath):
    r"""The optimal-transport path of Lipman et al. (2023, eq. 20-21), conditioned on ``x1`` only.

    .. math:: x_t = t\,x_1 + \bigl(1 - (1 - \sigma_{min})\,t\bigr)\,x_0, \qquad
              u_t = x_1 - (1 - \sigma_{min})\,x_0 .

    **Valid only from a standard normal source** ``x0 ~ N(0, I)``: the path
    ``N(t x1, (1 - (1 - sigma_min) t)^2 I)`` it describes is built from that source, and with
    any other source the learned flow does not reach the target's distribution
    (``gaussian_source_only`` is True). At ``t = 1`` the sample is ``x1 + sigma_min x0``.
    """

    gaussian_source_only = True

    def __init__(self, sigma_min: float = 1e-4):
        self.sigma_min = check_nonnegative(sigma_min, "sigma_min")
        if self.sigma_min >= 1:
            raise ValueError(f"sigma_min must be < 1, got {self.sigma_min}")

    def schedule(self, t):
        t = _schedule_time(t)
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        k = 1.0 - self.sigma_min
        return Schedule(1 - k * t, t, zero, -k * one, one, zero)


class VPPath(AffinePath):
    r"""Trigonometric (variance-preserving) interpolant (Albergo & Vanden-Eijnden 2023; Tong et al. 2024).

    .. math:: x_t = \cos(\tfrac{\pi t}{2})\,x_0 + \sin(\tfrac{\pi t}{2})\,x_1 + \sigma\varepsilon,
              \qquad u_t = \tfrac{\pi}{2}\bigl(\cos(\tfrac{\pi t}{2})\,x_1 - \sin(\tfrac{\pi t}{2})\,x_0\bigr).
    """

    def __init__(self, sigma: float = 0.0):
        self.sigma = check_nonnegative(sigma, "sigma")

    @property
    def has_noise(self) -> bool:
        return self.sigma > 0

    def schedule(self, t):
        t = _schedule_time(t)
        h = 0.5 * math.pi
        c, s = torch.cos(h * t), torch.sin(h * t)
        zero = torch.zeros_like(t)
        return Schedule(c, s, self.sigma * torch.ones_like(t), -h * s, h * c, zero)


class BridgePath(AffinePath):
    r"""Brownian bridge between ``x0`` and ``x1``: the path of SB-CFM (Tong et al. 2024, Prop. 3.4).

    .. math::

        x_t = (1 - t)\,x_0 + t\,x_1 + \sigma\sqrt{t(1 - t)}\,\varepsilon, \qquad
        u_t = x_1 - x_0 + \sigma\,\frac{1 - 2t}{2\sqrt{t(1 - t)}}\,\varepsilon
            = x_1 - x_0 + \frac{1 - 2t}{2t(1 - t)}\bigl(x_t - (1 - t)x_0 - t x_1\bigr).

    The conditional velocity is unbounded at ``t = 0`` and ``t = 1`` when ``sigma > 0``, so
    ``sample`` refuses those two times and :meth:`sample_time` draws from
    ``[t_min, 1 - t_min]``. Pair it with Sinkhorn couplings at ``reg = 2 sigma^2`` for SB-CFM.
    """

    def __init__(self, sigma: float = 1.0, t_min: float = 1e-4):
        self.sigma = check_nonnegative(sigma, "sigma")
        self.t_min = check_nonnegative(t_min, "t_min", strict=True)
        if self.t_min >= 0.5:
            raise ValueError(f"t_min must be < 0.5, got {self.t_min}")

    @property
    def has_noise(self) -> bool:
        return self.sigma > 0

    def validate_time(self, t):
        if self.sigma > 0 and values_checked(t) and bool(((t <= 0) | (t >= 1)).any()):
            raise ValueError(
                "t must lie in the open interval (0, 1) for BridgePath with sigma > 0: its conditional "
                "velocity is unbounded at t = 0 and t = 1; draw times with BridgePath.sample_time"
            )

    def schedule(self, t):
        t = _schedule_time(t)
        one = torch.ones_like(t)
        s = torch.sqrt((t * (1 - t)).clamp_min(0))
        if self.sigma > 0:
            dg = self.sigma * (1 - 2 * t) / (2 * s)
        else:
            dg = torch.zeros_like(t)
        return Schedule(1 - t, t, self.sigma * s, -one, one, dg)

    def sample_time(self, n, *, generator=None, device=None, dtype=torch.float32):
        """Draw ``t ~ U[t_min, 1 - t_min)`` of shape ``[n]``."""
        device = _time_draw(n, generator, device, dtype)
        u = torch.rand(n, generator=generator, device=draw_device(generator, device), dtype=dtype)
        u = u if device is None else u.to(device)
        return self.t_min + (1 - 2 * self.t_min) * u
