r"""The Wasserstein-2 bound of latent flow matching, and an estimator for each of its terms.

Setting, in this project's time convention (``t = 0`` noise, ``t = 1`` data; the LFM paper flips it,
``t' = 1 - t``): an encoder ``E`` and a decoder ``D``; data ``x ~ p``; latent data ``q_1 = E # p``; the
marginal velocity ``v_t`` of a probability path ``q_t`` from ``q_0 = N(0, I)`` to ``q_1``; a learned
velocity ``v^_t`` whose flow ``Phi^`` gives generated latents ``q^_1 = Phi^ # q_0`` and generated data
``p^ = D # q^_1``. The terms:

* ``R = E_x |x - D(E(x))|^2``, the reconstruction error (:func:`reconstruction_error`);
* ``L_D``, a Lipschitz constant of the decoder, and ``L``, one of ``v^_t`` in ``z`` uniformly in
  ``t`` (:func:`spectral_norm` for linear maps, :func:`jacobian_norm_lower_bound` otherwise);
* ``F = int_0^1 E_{z ~ q_t} |v_t(z) - v^_t(z)|^2 dt``, the flow matching error against the *true*
  marginal velocity (:func:`flow_matching_error`). It differs from the CFM training loss by a
  constant: the conditional variance of the regression target.

**The bound of the LFM paper** (Dao et al., arXiv 2307.08698), in the form this project works with (it is
derived below and in notebook 06 rather than quoted):

.. math:: W_2^2(p, \hat p) \le R + L_D^2\, e^{1 + 2L} F.                                   \quad\text{(sum form)}

**What the argument gives** (the proof is written out in notebook 06). Run both flows from the same
``z_0``; ``e(t) = E|z_t - z^_t|^2`` satisfies ``e' <= (1 + 2L) e + delta(t)`` with
``delta(t) = E_{q_t}|v_t - v^_t|^2``, so Grönwall's lemma gives ``W_2^2(q_1, q^_1) <= e^{1+2L} F``.
The decoder multiplies latent W2 by at most ``L_D``, and the triangle inequality adds the
reconstruction:

.. math:: W_2(p, \hat p) \le \sqrt{R} + L_D \sqrt{e^{1 + 2L} F}
          \quad\Rightarrow\quad W_2^2 \le 2R + 2 L_D^2 e^{1 + 2L} F.                     \quad\text{(triangle form)}

The sum form needs the cross term ``E<x - D(E(x)), D(z_1) - D(z^_1)>`` to vanish, which holds for a
linear autoencoder that projects orthogonally (PCA) but not in general. :func:`w2_bound` returns
both.

Copy with: utils (``torch`` only).
"""

from __future__ import annotations

import math

import torch

from .utils import check_finite, check_nonnegative, check_positive_int, check_tensor

__all__ = ["reconstruction_error", "spectral_norm", "jacobian_norm_lower_bound", "flow_matching_error",
           "gaussian_w2", "gaussian_pushforward", "latent_factor", "w2_bound"]


@torch.no_grad()
def reconstruction_error(encode, decode, x: torch.Tensor, *, batch_size: int = 4096) -> float:
    """``R = E |x - D(E(x))|^2`` over the points ``x`` ``[N, ...]`` (squared norm over all but the batch)."""
    for fn, name in ((encode, "encode"), (decode, "decode")):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    check_tensor(x, "x")
    check_finite(x, "x", boundary=True)
    total = 0.0
    for chunk in x.split(check_positive_int(batch_size, "batch_size")):
        rec = decode(encode(chunk))
        if not isinstance(rec, torch.Tensor) or rec.shape != chunk.shape:
            got = tuple(rec.shape) if isinstance(rec, torch.Tensor) else type(rec).__name__
            raise ValueError(f"decode(encode(x)) must have the shape of x {tuple(chunk.shape)}, got {got}")
        total += float((chunk - rec).reshape(chunk.shape[0], -1).pow(2).sum())
    if not math.isfinite(total):
        raise FloatingPointError("decode(encode(x)) returned non-finite values: the reconstruction error is undefined")
    return total / x.shape[0]


def spectral_norm(matrix: torch.Tensor) -> float:
    """The exact Lipschitz constant of the linear map ``z -> matrix @ z``: its largest singular value."""
    check_tensor(matrix, "matrix", min_dim=2)
    if matrix.dim() != 2:
        raise ValueError(f"matrix must have shape [m, n], got {tuple(matrix.shape)}")
    check_finite(matrix, "matrix", boundary=True)
    return float(torch.linalg.matrix_norm(matrix.detach().double(), ord=2))


def jacobian_norm_lower_bound(f, points: torch.Tensor, *, iters: int = 30,
                              generator: torch.Generator | None = None) -> float:
    r"""``max_i ||J_f(points_i)||_2`` by power iteration on ``J^T J``: a *lower* estimate of ``Lip(f)``.

    The Lipschitz constant of a differentiable ``f`` is ``sup_z ||J_f(z)||_2``. This evaluates the
    spectral norm of the Jacobian at the given points only, each by ``iters`` steps of power
    iteration (``u <- J^T J u`` with one forward-mode and one reverse-mode product, ``torch.func``),
    which approaches the norm from below. The result is therefore a lower estimate: the supremum
    over all ``z`` can be larger. ``f`` must act row by row (``f(points)[i]`` depends only on
    ``points[i]``), as a velocity network or a decoder applied to a batch does.
    """
    from torch.func import jvp, vjp

    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    check_tensor(points, "points")
    check_finite(points, "points", boundary=True)
    check_positive_int(iters, "iters")
    x = points.detach()
    u = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    u = u / u.reshape(len(u), -1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
    sigma = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for _ in range(iters):
        _, ju = jvp(f, (x,), (u,))
        _, pullback = vjp(f, x)
        (jtju,) = pullback(ju)
        sigma = ju.detach().reshape(len(x), -1).norm(dim=1)  # |J u| with |u| = 1
        jtju = jtju.detach()
        norm = jtju.reshape(len(x), -1).norm(dim=1).clamp_min(1e-30)
        u = jtju / norm.reshape(-1, *([1] * (x.dim() - 1)))
    result = float(sigma.max())
    if not math.isfinite(result):
        raise FloatingPointError("f's Jacobian-vector products are not finite at these points")
    return result


@torch.no_grad()
def flow_matching_error(v_hat, v_true, sample_zt, *, n: int = 4096, n_times: int = 32) -> tuple[float, list]:
    r"""``F = int_0^1 E_{z ~ q_t} |v_t(z) - v^_t(z)|^2 dt`` by the midpoint rule in ``t`` and Monte Carlo in ``z``.

    Args:
        v_hat, v_true: velocities ``(z [n, d], t [n]) -> [n, d]``.
        sample_zt: ``(t: float, n: int) -> [n, d]`` samples of the marginal ``q_t``.
        n: points per time; n_times: midpoint nodes ``t_k = (k + 1/2) / n_times``.

    Returns:
        ``(F, [(t_k, delta(t_k)), ...])``.
    """
    for fn, name in ((v_hat, "v_hat"), (v_true, "v_true"), (sample_zt, "sample_zt")):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    check_positive_int(n, "n")
    check_positive_int(n_times, "n_times")
    per_t = []
    for k in range(n_times):
        t = (k + 0.5) / n_times
        z = sample_zt(t, n)
        check_tensor(z, "sample_zt(t, n)")
        check_finite(z, "sample_zt(t, n)", boundary=True)
        tt = torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device)
        a, b = v_true(z, tt), v_hat(z, tt)
        for v, name in ((a, "v_true"), (b, "v_hat")):
            if not isinstance(v, torch.Tensor) or v.shape != z.shape:
                raise ValueError(f"{name}(z, t) must return a tensor shaped like z {tuple(z.shape)}")
        d = float((a - b).reshape(z.shape[0], -1).pow(2).sum(1).mean())
        if not math.isfinite(d):
            raise FloatingPointError(f"the velocities are not finite at t = {t:.3f}: v_true or v_hat returned NaN/inf")
        per_t.append((t, d))
    return sum(d for _, d in per_t) / n_times, per_t


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    w, q = torch.linalg.eigh(c)
    return (q * w.clamp_min(0).sqrt()) @ q.T


def _as_f64(v, name) -> torch.Tensor:
    if v is None or isinstance(v, (str, bytes, bool)):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(v).__name__}")
    if isinstance(v, torch.Tensor):
        check_tensor(v, name, min_dim=0, floating=False)
    try:
        out = torch.as_tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(v).__name__}") from None
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return out.cpu()


def gaussian_w2(m1, c1, m2, c2) -> float:
    r"""Exact ``W_2(N(m1, c1), N(m2, c2))`` (covariances may be singular).

    .. math:: W_2^2 = |m_1 - m_2|^2 + \mathrm{tr}\bigl(C_1 + C_2 - 2 (C_2^{1/2} C_1 C_2^{1/2})^{1/2}\bigr)

    (Dowson & Landau 1982; Givens & Shortt 1984).
    """
    m1, m2 = _as_f64(m1, "m1"), _as_f64(m2, "m2")
    c1, c2 = _as_f64(c1, "c1"), _as_f64(c2, "c2")
    if m1.dim() != 1 or m1.numel() == 0:
        raise ValueError(f"m1 must be a mean vector [d], got shape {tuple(m1.shape)}")
    d = m1.shape[0]
    for v, name, shape in ((m2, "m2", (d,)), (c1, "c1", (d, d)), (c2, "c2", (d, d))):
        if v.shape != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (m1 has d = {d}), got {tuple(v.shape)}")
    for name, c in (("c1", c1), ("c2", c2)):
        if not torch.allclose(c, c.T, atol=1e-10) or float(torch.linalg.eigvalsh(c).min()) < -1e-9:
            raise ValueError(f"{name} must be a symmetric positive semi-definite matrix")
    s2 = _sqrtm_psd(c2)
    cross = _sqrtm_psd(s2 @ c1 @ s2)
    w2sq = float((m1 - m2).pow(2).sum() + torch.trace(c1 + c2 - 2 * cross))
    return math.sqrt(max(w2sq, 0.0))


@torch.no_grad()
def gaussian_pushforward(affine_map, mean, cov, *, steps: int = 200):
    r"""Mean and covariance at ``t = 1`` of ``N(mean, cov)`` carried by an affine flow ``dz/dt = A(t) z + b(t)``.

    An affine velocity maps Gaussians to Gaussians, with ``m' = A m + b`` and ``C' = A C + C A^T``;
    both are integrated with ``steps`` RK4 steps. ``affine_map(t)`` returns ``(A [d, d], b [d])``
    for a float ``t`` (e.g. :meth:`lfm_core.nets.AffineVelocity.affine_map`).
    """
    if not callable(affine_map):
        raise TypeError(f"affine_map must be callable, got {type(affine_map).__name__}")
    check_positive_int(steps, "steps")
    m = _as_f64(mean, "mean").clone()
    c = _as_f64(cov, "cov").clone()
    if m.dim() != 1 or c.shape != (m.shape[0], m.shape[0]):
        raise ValueError(f"mean must be [d] and cov [d, d], got {tuple(m.shape)} and {tuple(c.shape)}")

    def rhs(t, m, c):
        a, b = (v.detach().double().cpu() for v in affine_map(t))
        return a @ m + b, a @ c + c @ a.T

    h = 1.0 / steps
    for k in range(steps):
        t = k * h
        k1 = rhs(t, m, c)
        k2 = rhs(t + h / 2, m + h / 2 * k1[0], c + h / 2 * k1[1])
        k3 = rhs(t + h / 2, m + h / 2 * k2[0], c + h / 2 * k2[1])
        k4 = rhs(t + h, m + h * k3[0], c + h * k3[1])
        m = m + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        c = c + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    if not (bool(torch.isfinite(m).all()) and bool(torch.isfinite(c).all())):
        raise FloatingPointError("the affine flow diverged (non-finite mean or covariance); check affine_map")
    return m, (c + c.T) / 2


def latent_factor(lipschitz_v: float) -> float:
    """The Grönwall factor ``e^{1 + 2L}`` that multiplies the flow matching error."""
    lipschitz_v = check_nonnegative(lipschitz_v, "lipschitz_v")
    if 1 + 2 * lipschitz_v > 709:
        raise ValueError(f"lipschitz_v = {lipschitz_v} makes e^(1 + 2 L) overflow a float: the bound is vacuous")
    return math.exp(1 + 2 * lipschitz_v)


def w2_bound(recon: float, lipschitz_dec: float, lipschitz_v: float, fm_error: float) -> dict:
    """Both forms of the bound on ``W_2^2(p, p^)`` (module docstring), with their terms.

    Returns a dict with ``latent`` (``e^{1+2L} F``, a bound on the latent ``W_2^2``), ``sum_form``
    (``R + L_D^2 e^{1+2L} F``) and ``triangle_form`` (``(sqrt(R) + L_D sqrt(e^{1+2L} F))^2``, which
    is at most ``2R + 2 L_D^2 e^{1+2L} F``).
    """
    recon = check_nonnegative(recon, "recon")
    lipschitz_dec = check_nonnegative(lipschitz_dec, "lipschitz_dec")
    fm_error = check_nonnegative(fm_error, "fm_error")
    latent = latent_factor(lipschitz_v) * fm_error
    return {
        "recon": recon,
        "latent": latent,
        "sum_form": recon + lipschitz_dec**2 * latent,
        "triangle_form": (math.sqrt(recon) + lipschitz_dec * math.sqrt(latent)) ** 2,
    }
