r"""Straightness of a flow, and learning the interpolant that makes it straight (Shankar & Geffner, arXiv 2503.20719).

An interpolant ``x_t = phi_t(x0; x1)`` (:mod:`lfm_core.interpolants`) fixes the velocity that flow matching
learns: the minimiser of its loss. When the data are a finite set ``{x1^i}`` that minimiser has a closed form
(Proposition 1 of the paper), so how straight the flow of an interpolant is can be measured, and optimised,
without training a network:

* :func:`optimal_velocity`: the optimal velocity ``v*(x, t)`` as a velocity,

      ``v*(x, t) = sum_i w_i(x, t) u_t(x0^i; x1^i)``,  ``x0^i = phi_t^{-1}(x; x1^i)``,
      ``w_i ∝ p0(x0^i) |det d phi_t^{-1} / dx|``  (self-normalised over ``i``).

  For an affine interpolant and ``p0 = N(0, I)`` the weights are a softmax of
  ``-|x - g x1^i|^2 / (2 (1 - h)^2)``. Over the *whole* data set this is exact; over a minibatch of data
  it is a (biased, consistent) estimate, and the functions here only see what they are given.
* :func:`material_derivative` and :func:`straightness_loss`: ``D v / Dt = d v / d t + (grad_x v) v`` through
  one forward-mode JVP (``torch.func.jvp``) along the tangent ``(v, 1)``; a flow has straight
  trajectories travelled at constant speed exactly when ``D v / Dt = 0``, and ``E |D v / Dt|^2`` is the
  straightness objective.
* :func:`fit_interpolant`: minimises ``E |D v* / Dt|^2`` over the interpolant's parameters (the network is not
  involved), and :func:`fit_straight_flow` alternates it with training the velocity network by CFM on the
  interpolant, level after level.

An interpolant here is any object with ``invert(x, x1, t) -> (x0, log|det d x0 / d x|)``,
``conditional_velocity(x0, x1, t)`` and ``sample(x0, x1, t) -> (x_t, u_t)``: the
:class:`~lfm_core.interpolants.AffineInterpolant` and :class:`~lfm_core.interpolants.GlowInterpolant`.
Time runs from the source at ``t = 0`` to the data at ``t = 1``.

Copy with: utils, and for :func:`fit_interpolant` and :func:`fit_straight_flow` training, trainer, trainer_config,
batches, checkpoints, store, devices, images, image_files, hub, runtime, couplings, guidance, solvers (``torch``).
"""

from __future__ import annotations

import math

import torch

from .utils import as_time, check_finite, check_nonnegative, check_positive_int, check_tensor

__all__ = ["optimal_velocity", "material_derivative", "straightness_loss", "fit_interpolant", "fit_straight_flow"]


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

    # divergence=None: the straightness objective is heavy-tailed by design (a batch with a point near t_max can
    # score orders of magnitude above the median, notebook 03's exercise 6), so a loss-to-median rule would stop
    # healthy fits; clipped gradients keep those batches harmless, and non-finite values still stop the fit
    return fit(interpolant, loss_fn, steps=steps, lr=lr, seed=seed, progress=progress, lr_schedule="cosine",
               desc="interpolant", callback=callback, grad_clip=grad_clip, divergence=None)


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
    for name, value in (("lr", lr), ("interpolant_lr", interpolant_lr)):  # named here, not as TrainerConfig.lr
        check_nonnegative(value, name, strict=True)
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
