r"""Gaussian mixtures (isotropic or diagonal) and their *exact* marginal velocity under an affine path.

For a target ``p1 = sum_k pi_k N(m_k, diag(s_k^2))`` (``s_k`` a scalar for isotropic components),
a Gaussian source ``x0 ~ N(0, s0^2 I)`` and an affine path ``x_t = a_t x0 + b_t x1 + g_t eps``
(:mod:`lfm_core.paths`), everything is Gaussian inside a component ``k``, coordinate by coordinate:

.. math::

    x_t \mid k \sim \mathcal N\bigl(b_t m_k,\; \mathrm{diag}(v_k(t))\bigr), \qquad
    v_k(t) = a_t^2 s_0^2 + b_t^2 s_k^2 + g_t^2,

    \mathrm{Cov}(u_t, x_t \mid k) = \mathrm{diag}(c_k(t)), \qquad
    c_k(t) = a_t \dot a_t s_0^2 + b_t \dot b_t s_k^2 + g_t \dot g_t .

The marginal velocity that conditional flow matching learns (Lipman et al. 2023, eq. 8) is
the posterior mean of ``u_t`` given ``x_t = x``; by Gaussian conditioning,

.. math::

    v^*(x, t) = \sum_k w_k(x, t)\Bigl[\dot b_t m_k + \frac{c_k(t)}{v_k(t)} \odot (x - b_t m_k)\Bigr],
    \qquad w_k(x, t) \propto \pi_k\,\mathcal N\bigl(x;\, b_t m_k,\, \mathrm{diag}(v_k(t))\bigr).

This closed form is what makes the mixture useful for teaching and testing: the learned
velocity can be compared with the true one, the flow's log-likelihood with the true density,
and the irreducible part of the CFM loss computed.

Copy with: utils (``torch`` only).
"""

from __future__ import annotations

import math

import torch

from .utils import (
    as_real,
    as_time,
    check_bool,
    check_finite,
    check_float_dtype,
    check_generator,
    check_nonnegative,
    check_positive_int,
    check_tensor,
    values_checked,
)

__all__ = ["GaussianMixture"]


def _as_f64(value, name: str) -> torch.Tensor:
    try:
        return as_real(value, name, torch.float64).detach().cpu()
    except RuntimeError as exc:   # e.g. a tensor on the meta device holds no values
        raise TypeError(f"{name} must be a tensor or a sequence of numbers ({exc})") from None


class GaussianMixture:
    """A mixture of Gaussians ``sum_k weights[k] N(means[k], diag(stds[k]^2))`` in ``R^D``.

    Args:
        means: ``[K, D]`` component means.
        stds: component standard deviations (> 0): a float shared by all, ``[K]`` (isotropic
            components) or ``[K, D]`` (diagonal covariances).
        weights: ``[K]`` non-negative mixture weights (normalised here); uniform if omitted.
    """

    def __init__(self, means, stds, weights=None):
        means = _as_f64(means, "means")
        if means.dim() != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        check_finite(means, "means")
        k = means.shape[0]
        stds = _as_f64(stds, "stds")
        if stds.dim() == 0:
            stds = stds.expand(k).clone()
        if stds.shape not in ((k,), (k, means.shape[1])):
            raise ValueError(f"stds must be a float or have shape [K] = [{k}] or [K, D] = [{k}, {means.shape[1]}], "
                             f"got {tuple(stds.shape)}")
        if not bool(torch.isfinite(stds).all()) or bool((stds <= 0).any()):
            raise ValueError("stds must be finite and > 0")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = _as_f64(weights, "weights")
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape [K] = [{k}], got {tuple(weights.shape)}")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be finite, >= 0, with a positive sum")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()
        self._var = (stds[:, None] if stds.dim() == 1 else stds).pow(2).expand(k, means.shape[1])  # [K, D]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[D]`` and covariance ``[D, D]`` of the whole mixture (float64)."""
        mean = (self.weights[:, None] * self.means).sum(0)
        centred = self.means - mean
        outer = centred[:, :, None] * centred[:, None, :]
        second = self.weights[:, None, None] * (torch.diag_embed(self._var) + outer)
        return mean, second.sum(0)

    def _check_x(self, x, name="x"):
        check_tensor(x, name, min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape [B, {self.dim}], got {tuple(x.shape)}")
        check_finite(x, name)

    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32,
               return_labels: bool = False):
        """Draw ``n`` points (and, with ``return_labels``, the index of the component of each)."""
        check_positive_int(n, "n")
        check_float_dtype(dtype)
        check_bool(return_labels, "return_labels")
        check_generator(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[k] + self._var[k].sqrt() * z).to(dtype)
        return (x, k) if return_labels else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the mixture at ``x`` (``[B, D]``), returned as ``[B]`` in the dtype of ``x``."""
        self._check_x(x)
        var, centers = self._var[None].to(x.device), self.means[None].to(x.device)
        z2 = ((x.double()[:, None, :] - centers).pow(2) / var).sum(-1)
        lp = self.weights.to(x.device).log() - 0.5 * z2 - 0.5 * torch.log(2 * math.pi * var).sum(-1)
        return torch.logsumexp(lp, dim=1).to(x.dtype)

    def velocity(self, path, *, source_std: float = 1.0):
        r"""The exact marginal velocity ``v*(x, t) = E[u_t | x_t = x]`` of ``path`` from ``N(0, source_std^2 I)``.

        ``path`` is any :class:`lfm_core.paths.AffinePath`. Returns a velocity in the project's convention,
        ``v(x [B, D], t [B] or float) -> [B, D]`` (shaped and typed like ``x``), usable by every solver and
        metric. See the module docstring for the formula.
        """
        if not hasattr(path, "schedule") or not hasattr(path, "validate_time"):
            raise TypeError(f"path must be an affine path from lfm_core.paths, got {type(path).__name__}")
        s0 = check_nonnegative(source_std, "source_std", strict=True)

        def velocity(x: torch.Tensor, t) -> torch.Tensor:
            self._check_x(x)
            t = as_time(t, x.shape[0], like=x)
            path.validate_time(t)
            a, b, g, da, db, dg = (c.double()[:, None, None] for c in path.schedule(t))  # [B, 1, 1] each
            s2 = self._var[None].to(x.device)  # [1, K, D]
            means = self.means.to(x.device)
            var = a**2 * s0**2 + b**2 * s2 + g**2  # [B, K, D]
            cov = a * da * s0**2 + b * db * s2 + g * dg  # [B, K, D]
            if values_checked(var) and bool((var <= 0).any()):
                raise ValueError("the path has zero variance at some t (a point mass): the marginal velocity is "
                                 "undefined there")
            xd = x.double()
            centers = b * means[None]  # [B, K, D]
            z2 = ((xd[:, None, :] - centers).pow(2) / var).sum(-1)
            logw = self.weights.to(x.device).log() - 0.5 * z2 - 0.5 * torch.log(2 * math.pi * var).sum(-1)
            w = torch.softmax(logw, dim=1)  # [B, K]
            comp = db * means[None] + (cov / var) * (xd[:, None, :] - centers)
            return (w[:, :, None] * comp).sum(1).to(x.dtype)

        return velocity

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.means.shape[0]}, D={self.dim})"
