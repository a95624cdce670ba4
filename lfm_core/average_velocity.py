r"""Average-velocity models and MeanFlow (Geng et al., arXiv 2505.13447): flows that jump instead of integrate.

A flow matching model learns the instantaneous velocity ``v(x, t)`` and needs many small steps. Let
``phi_{r->t}`` be its flow map (the solution of ``dx/dtau = v(x, tau)`` from time ``r`` to time ``t``). The
*average velocity* over ``[r, t]``, seen from the point ``x`` at the start ``r``, is the chord's slope

.. math::

    u(x, r, t) = \frac{\phi_{r\to t}(x) - x}{t - r} = \frac{1}{t - r}\int_r^t v(x_\tau, \tau)\,d\tau,
    \qquad u(x, t, t) = v(x, t),

so one jump ``x_t = x_r + (t - r) u(x_r, r, t)`` is exact, and one network evaluation maps noise to data:
``x_1 = x_0 + u(x_0, 0, 1)``.

**The MeanFlow identity.** Differentiate ``(t - r) u(x_r, r, t) = int_r^t v(x_tau, tau) dtau`` in ``r`` with
``t`` fixed, the point ``x_r`` moving along its trajectory (``dx_r/dr = v``):

.. math::

    u(x_r, r, t) = v(x_r, r) + (t - r)\,\frac{d}{dr} u(x_r, r, t), \qquad
    \frac{d}{dr} u = \partial_x u\; v + \partial_r u,

and the total derivative is one forward-mode Jacobian-vector product of ``u`` along the tangent
``(v, 1, 0)`` of its inputs ``(x, r, t)``. MeanFlow regresses ``u_theta`` on the right-hand side with the
network's own derivative inside a stopped gradient, and the conditional velocity ``x1 - x0`` in place of
``v`` (its expectation given ``x_r`` is the marginal velocity, as in conditional flow matching):

.. math::

    \mathcal{L} = \mathbb{E}\, w\,\big\| u_\theta(x_r, r, t) - \mathrm{sg}\big(v + (t - r)\,
    \tfrac{d}{dr} u_\theta\big) \big\|^2, \qquad x_r = (1 - r) x_0 + r x_1,\; v = x_1 - x_0,

with the paper's adaptive weight ``w = sg(1 / (||delta||^2 + c)^p)`` (``p = 1``, ``c = 1e-3``), which turns the
squared error into a robust loss. Pairs with ``r = t`` reduce it to plain flow matching: :class:`TimePairs`
draws a fraction of them (the paper's ablation, its Table 1, prefers 75 %) and sorts two draws of a
logit-normal distribution for the others.

**Conventions.** Here ``t = 0`` is noise and ``t = 1`` is data (the project's convention). The paper puts data
at 0 and noise at 1: ``z_tau = (1 - tau) x + tau eps``, its velocity is ``eps - x`` and its ``u_p(z, r, t)``
(``r < t``) averages over ``[r, t]`` seen from the *noisier* end ``t``. With ``tau = 1 - t`` both describe the
same chords, and

.. math::

    u(x, r, t) = -u_p(x, 1 - t, 1 - r),

which :func:`from_paper_convention` applies (``tests/test_average_velocity.py`` checks it on a closed-form
flow). The paper's time sampler, logit-normal with mean ``-0.4`` in its time, is logit-normal with mean
``+0.4`` here (``1 - sigmoid(a) = sigmoid(-a)``).

**Networks.** :class:`AverageVelocity` gives a velocity network a second time input through the extra inputs
it already has: the interval ``h = t - r`` goes in as the first ``cond`` channel of a network built with one
more conditioning channel (``nets.MLP(dim, cond_channels=1)``, ``nets.UNetVelocity(..., cond_channels=1)``),
and the network's own time input gets ``r``, the time of the point ``x`` (the paper's best embedding,
``(t, t - r)`` in its Table 1, in our letters). At ``h = 0`` the network is an ordinary velocity, which
:meth:`AverageVelocity.velocity` exposes for every solver of :mod:`lfm_core.solvers`.

Copy with: utils, solvers, training, trainer, trainer_config, batches, checkpoints, store, devices, images,
image_files, hub, runtime, couplings, guidance (``torch``; ``torchdiffeq`` for adaptive solvers; ``safetensors``,
``tqdm``, ``Pillow``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import solvers, utils
from .utils import (
    as_time,
    check_finite,
    check_nonnegative,
    check_positive_int,
    check_probability,
    check_tensor,
    draw_device,
    expand_like,
    values_checked,
)

__all__ = ["AverageVelocity", "TimePairs", "meanflow_target", "meanflow_loss", "train_meanflow", "sample",
           "is_average_model", "from_paper_convention", "exact_average_velocity", "GaussianFlow", "TIME_DISTRIBUTIONS",
           "DEFAULTS"]

TIME_DISTRIBUTIONS = ("logit_normal", "uniform")
# the settings of train_meanflow where they differ from TrainerConfig's (its precision stays TrainerConfig's "auto")
DEFAULTS = {"lr": 1e-3, "ema_decay": None, "grad_clip": None}


def _check_order(r: torch.Tensor, t: torch.Tensor) -> None:
    if values_checked(r) and bool((r > t).any()):
        k = int(torch.nonzero(r > t)[0, 0])
        raise ValueError(f"r must not exceed t (u(x, r, t) averages the velocity from the point's time r forward to "
                         f"t; t = 0 is noise): got r = {float(r[k]):.4g} > t = {float(t[k]):.4g} at row {k}")


class AverageVelocity(nn.Module):
    """``u(x, r, t)`` (``r <= t``, ``x`` at time ``r``) from a velocity network with one extra input channel.

    Args:
        net: a network ``net(x, t, cond=...)`` built with ``cond_channels >= 1`` (:class:`lfm_core.nets.MLP`,
            :class:`lfm_core.nets.UNetVelocity`, :class:`lfm_core.nets.DiTVelocity`). The first conditioning
            channel carries ``t - r`` (a constant channel for images); the others stay for the caller's
            ``cond`` (e.g. an inpainting mask).

    ``forward(x, r, t, cond=None, **kw)`` returns the average velocity shaped like ``x``; ``r`` and ``t`` are
    floats or ``[B]`` tensors in ``[0, 1]`` with ``r <= t``. :meth:`velocity` is ``u(x, t, t)``, the instantaneous
    velocity, a plain ``v(x, t, **cond)`` for :func:`lfm_core.solvers.integrate`.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module (a velocity network), got {type(net).__name__}")
        channels = getattr(net, "cond_channels", 0)
        if not channels:
            raise ValueError(f"net ({type(net).__name__}) has no input for the second time: build it with one more "
                             "conditioning channel, e.g. nets.MLP(dim, cond_channels=1) or "
                             "nets.UNetVelocity(..., cond_channels=1)")
        self.net = net
        self.cond_channels = channels - 1  # left for the caller's own conditioning
        self.config = {"net": {"_class_name": type(net).__name__, **getattr(net, "config", {})}}

    def forward(self, x: torch.Tensor, r, t, cond: torch.Tensor | None = None, **kw) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        r = as_time(r, x.shape[0], like=x, name="r")
        t = as_time(t, x.shape[0], like=x, name="t")
        _check_order(r, t)
        h = expand_like(t - r, x)
        h = h.expand(x.shape[0], 1, *x.shape[2:])
        if cond is None:
            if self.cond_channels:
                raise ValueError(f"this model needs cond: {self.cond_channels} conditioning channel(s) besides t - r")
            cond = h
        else:
            if not self.cond_channels:
                raise ValueError("this model's only extra input is t - r: cond must be None")
            check_tensor(cond, "cond", min_dim=2)
            cond = torch.cat([h, cond.to(x.dtype)], dim=1)
        return self.net(x, r, cond=cond, **kw)

    def velocity(self, x: torch.Tensor, t, **kw) -> torch.Tensor:
        """The instantaneous velocity ``v(x, t) = u(x, t, t)``, for any solver."""
        return self(x, t, t, **kw)


@dataclass
class TimePairs:
    """The distribution of the interval ``(r, t)`` that MeanFlow trains on.

    With probability ``equal_fraction`` the pair is ``r = t`` (a flow matching sample); otherwise two times
    are drawn from ``distribution`` and sorted, ``r <= t``. ``"logit_normal"``: ``sigmoid(N(mean, std^2))``
    (``mean = 0.4`` here is the paper's ``-0.4`` in its flipped time); ``"uniform"``: ``U[0, 1)``.
    :meth:`sample_time` returns them stacked as ``[n, 2]``, the form :class:`lfm_core.batches.CFMBatches`
    passes on as a batch's ``"t"``.
    """

    equal_fraction: float = 0.75
    distribution: str = "logit_normal"
    mean: float = 0.4
    std: float = 1.0

    def __post_init__(self):
        self.equal_fraction = check_probability(self.equal_fraction, "equal_fraction")
        if self.distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; choose one of "
                             f"{', '.join(TIME_DISTRIBUTIONS)}")
        if isinstance(self.mean, bool) or not isinstance(self.mean, (int, float)) or not math.isfinite(self.mean):
            raise ValueError(f"mean must be a finite real number, got {self.mean!r}")
        self.std = check_nonnegative(self.std, "std", strict=True)

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, t)``, each of shape ``[n]``, with ``r <= t``."""
        check_positive_int(n, "n")
        utils.check_generator(generator)
        utils.check_float_dtype(dtype)
        device = None if device is None else utils.check_device(device)
        dev = draw_device(generator, device)
        if self.distribution == "uniform":
            a = torch.rand(n, 2, generator=generator, device=dev, dtype=dtype)
        else:
            a = torch.sigmoid(self.mean + self.std * torch.randn(n, 2, generator=generator, device=dev, dtype=dtype))
        r, t = a.min(dim=1).values, a.max(dim=1).values
        equal = torch.rand(n, generator=generator, device=dev) < self.equal_fraction
        t = torch.where(equal, r, t)  # the paper keeps its later (noisier) time: our earlier one
        return (r, t) if device is None else (r.to(device), t.to(device))

    def sample_time(self, n: int, *, generator: torch.Generator | None = None, device=None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """:meth:`sample` stacked as ``[n, 2]`` (columns ``r``, ``t``)."""
        return torch.stack(self.sample(n, generator=generator, device=device, dtype=dtype), dim=1)


def is_average_model(model) -> bool:
    """Whether ``model`` is called ``(x, r, t)``: an :class:`AverageVelocity` or marked ``average_velocity = True``."""
    return isinstance(model, AverageVelocity) or getattr(model, "average_velocity", False) is True


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    if not is_average_model(model):
        raise TypeError(f"model must take a second time input, u(x, r, t): wrap the network in "
                        f"average_velocity.AverageVelocity (got {type(model).__name__}, a plain velocity v(x, t)?)")


def meanflow_target(model, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor, *,
                    tangent: torch.Tensor | None = None, cond: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u(x, r, t), v + (t - r) du/dr)``: the model's output and the right-hand side of the MeanFlow identity,
    ``du/dr = d_x u tangent + d_r u`` being one ``torch.func.jvp`` along ``(tangent, 1, 0)`` (``tangent``
    defaults to ``v``). With the exact average velocity and the marginal velocity ``v`` the two agree; the loss
    uses the conditional velocity and detaches the target."""
    kw = cond or {}
    u, du_dr = torch.func.jvp(lambda xx, rr, tt: model(xx, rr, tt, **kw), (x, r, t),
                              (v if tangent is None else tangent, torch.ones_like(r), torch.zeros_like(t)))
    if not isinstance(u, torch.Tensor) or u.shape != x.shape:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"the model must return an average velocity shaped like x {tuple(x.shape)}, got {got}")
    return u, v + expand_like(t - r, x) * du_dr


def meanflow_loss(model, x0: torch.Tensor, x1: torch.Tensor, *, r=None, t=None, times: TimePairs | None = None,
                  power: float = 1.0, eps: float = 1e-3, tangent: str = "conditional", cond: dict | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    r"""One Monte Carlo estimate of the MeanFlow loss on a minibatch of pairs ``(x0, x1)`` (noise, data).

    ``r`` and ``t`` (``[B]``, ``r <= t``) are drawn from ``times`` (default :class:`TimePairs`) unless given.
    The target ``v + (t - r) du/dr`` comes from one ``torch.func.jvp`` of ``model`` along ``(v, 1, 0)`` and is
    detached. Each sample's squared error ``||delta||^2`` (summed over its elements) is weighted by
    ``1 / (||delta||^2 + eps)^power`` (detached; ``power = 0`` is the plain squared error); returns the mean.
    """
    _check_model(model)
    check_tensor(x0, "x0", min_dim=2)
    check_tensor(x1, "x1", min_dim=2)
    utils.check_generator(generator)
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    check_finite(x0, "x0")
    check_finite(x1, "x1")
    power = check_nonnegative(power, "power")
    eps = check_nonnegative(eps, "eps", strict=True)
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments for the model, got {type(cond).__name__}")
    if (r is None) != (t is None):
        raise ValueError("give both r and t, or neither (then they are drawn from times)")
    if r is None:
        if times is not None and not isinstance(times, TimePairs):
            raise TypeError(f"times must be a TimePairs, got {type(times).__name__}")
        r, t = (times or TimePairs()).sample(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    r = as_time(r, x0.shape[0], like=x0, name="r")
    t = as_time(t, x0.shape[0], like=x0, name="t")
    _check_order(r, t)
    v = x1 - x0
    xr = x0 + expand_like(r, x0) * v
    if tangent == "model":
        with torch.no_grad():
            tangent = model(xr, r, r, **(cond or {}))
    elif tangent == "conditional":
        tangent = None
    else:
        raise ValueError(f"tangent must be 'conditional' or 'model', got {tangent!r}")
    u, target = meanflow_target(model, xr, r, t, v, tangent=tangent, cond=cond)
    err = (u - target.detach()).pow(2).flatten(1).sum(dim=1)
    weight = (err.detach() + eps).pow(-power) if power else torch.ones_like(err)
    return (weight * err).mean()


def train_meanflow(model, source, target, *, steps: int, batch_size: int = 256, times: TimePairs | None = None,
                   power: float = 1.0, eps: float = 1e-3, tangent: str = "conditional", coupling: str = "independent",
                   coupling_kwargs: dict | None = None, progress: bool | None = None, device=None, callback=None,
                   out_dir=None, resume: bool = True, config=None, **trainer_fields):
    """Train an :class:`AverageVelocity` by :func:`meanflow_loss` with :class:`lfm_core.trainer.Trainer`.

    The batches are those of :func:`lfm_core.training.train_cfm` (``source`` / ``target`` tensors or samplers
    ``(n, generator) -> points``, pairs by ``coupling``, batch ``k`` a function of ``(seed, k)``, so runs
    resume exactly), with the pair ``(r, t)`` drawn from ``times`` in place of CFM's single time. The Trainer's
    settings are passed as to ``train_cfm``: ``TrainerConfig`` field names (``lr``, ``seed``, ...) over ``config``
    or :data:`DEFAULTS`. Returns the :class:`lfm_core.trainer.FitResult` (its losses are the weighted loss, which
    with ``power = 1`` stays near 1 while the error is above ``eps``).
    """
    from . import couplings
    from .batches import CFMBatches
    from .trainer import Trainer
    from .training import _trainer_config

    _check_model(model)
    check_positive_int(batch_size, "batch_size")
    if times is None:
        times = TimePairs()
    if not isinstance(times, TimePairs):
        raise TypeError(f"times must be a TimePairs, got {type(times).__name__}")
    if not isinstance(coupling, str) or coupling not in couplings.METHODS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(couplings.METHODS)}")
    check_nonnegative(power, "power")
    check_nonnegative(eps, "eps", strict=True)
    cfg = _trainer_config("train_meanflow", config, trainer_fields, defaults=DEFAULTS, steps=steps,
                          batch_size=batch_size)
    if device is None:
        device = next(model.parameters()).device
    batches = CFMBatches(times, [source], [target], batch_size, coupling=coupling,
                         coupling_kwargs=coupling_kwargs, seed=cfg.seed)

    def loss_fn(m, x0, x1, t):
        return meanflow_loss(m, x0, x1, r=t[:, 0], t=t[:, 1], power=power, eps=eps, tangent=tangent)

    trainer = Trainer(model, batches, loss_fn, cfg, out_dir=out_dir, callback=callback, progress=progress,
                      device=device, desc=f"MeanFlow ({coupling})")
    try:
        return trainer.fit(resume=resume)
    finally:
        batches.close()


@torch.no_grad()
def sample(model, x: torch.Tensor, *, steps: int = 1, t_span=(0.0, 1.0), return_trajectory: bool = False,
           cond: dict | None = None) -> solvers.Solution:
    """Jump from ``t_span[0]`` to ``t_span[1]`` in ``steps`` equal intervals: ``x <- x + (t' - t) u(x, t, t')``.

    ``steps`` network evaluations (one for one-step generation), returned as a
    :class:`lfm_core.solvers.Solution` like :func:`lfm_core.solvers.integrate`'s. Only forward in time
    (``t_span[0] < t_span[1]``): the average velocity is known at the start of an interval, not at its end.
    """
    _check_model(model)
    check_tensor(x, "x")
    check_finite(x, "x", boundary=True)
    check_positive_int(steps, "steps")
    utils.check_bool(return_trajectory, "return_trajectory")
    t0, t1 = solvers._check_t_span(t_span)
    if not (0.0 <= t0 < t1 <= 1.0):
        raise ValueError(f"t_span must go forward within [0, 1] (t0 < t1; t = 0 is noise), got {t_span!r}: an "
                         "average velocity model jumps from the start of an interval, so it cannot run backwards")
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments, got {type(cond).__name__}")
    grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    states = [x] if return_trajectory else None
    for k in range(steps):
        a, b = float(grid[k]), float(grid[k + 1])
        u = model(x, a, b, **(cond or {}))
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"the model must return an average velocity shaped like x {tuple(x.shape)}, got {got}")
        x = x + (b - a) * u
        if return_trajectory:
            states.append(x)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"the samples have non-finite values after {steps} jump(s): the model diverges")
    return solvers.Solution(x=x, nfe=steps, t=grid.to(x.dtype) if return_trajectory else None,
                            trajectory=torch.stack(states) if return_trajectory else None)


def from_paper_convention(u_paper):
    """An average velocity in this project's convention from one in the paper's: ``u(x, r, t) = -u_p(x, 1 - t, 1 - r)``.

    ``u_paper(z, r, t)`` (``r <= t``, ``z`` at the paper's time ``t``, data at 0) as in Geng et al. eq. (3);
    the result is called ``(x, r, t)`` with ``r <= t``, ``x`` at time ``r``, noise at 0. Floats or ``[B]``
    tensors for the times.
    """
    if not callable(u_paper):
        raise TypeError(f"u_paper must be callable, got {type(u_paper).__name__}")

    def u(x, r, t, **kw):
        r = as_time(r, x.shape[0], like=x, name="r")
        t = as_time(t, x.shape[0], like=x, name="t")
        _check_order(r, t)
        return -u_paper(x, 1.0 - t, 1.0 - r, **kw)

    u.average_velocity = True
    return u


def exact_average_velocity(velocity, x: torch.Tensor, r: float, t: float, *, method: str = "dopri5",
                           atol: float = 1e-7, rtol: float = 1e-7) -> torch.Tensor:
    """``(phi_{r->t}(x) - x) / (t - r)`` for a velocity ``v(x, t)`` by an ODE solve (``v(x, r)`` when ``t = r``):
    the quantity an average-velocity model learns, for checking one."""
    check_tensor(x, "x")
    for value, name in ((r, "r"), (t, "t")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")
    if r > t:
        raise ValueError(f"r must not exceed t, got r = {r} > t = {t}")
    if r == t:
        return velocity(x, torch.full((x.shape[0],), float(r), dtype=x.dtype, device=x.device))
    end = solvers.integrate(velocity, x, t_span=(float(r), float(t)), method=method, atol=atol, rtol=rtol).x
    return (end - x) / (t - r)


class GaussianFlow:
    r"""The marginal flow of the straight path from ``N(0, I)`` to ``N(mean, std^2 I)`` with independent pairs, in
    closed form: a test bed for average velocities.

    ``x_t = (1 - t) x0 + t x1`` has the law ``N(t mean, s_t^2 I)`` with ``s_t^2 = (1 - t)^2 + t^2 std^2``, and the
    flow is affine: ``phi_{r->t}(x) = t mean + (s_t / s_r)(x - r mean)``. Hence
    ``v(x, t) = mean + (s_t' / s_t)(x - t mean)`` with ``s_t' = (t std^2 - (1 - t)) / s_t``, and
    ``u(x, r, t) = (phi_{r->t}(x) - x) / (t - r)``.
    """

    def __init__(self, mean: torch.Tensor, std: float):
        check_finite(check_tensor(mean, "mean"), "mean", boundary=True)
        if mean.dim() != 1:
            raise ValueError(f"mean must be a vector [dim], got shape {tuple(mean.shape)}")
        self.mean = mean
        self.std = check_nonnegative(std, "std", strict=True)
        self.average_velocity = True

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return ((1 - t) ** 2 + t**2 * self.std**2).sqrt()

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        t = as_time(t, x.shape[0], like=x)[:, None]
        s = self.scale(t)
        ds = (t * self.std**2 - (1 - t)) / s
        return self.mean + ds / s * (x - t * self.mean)

    def __call__(self, x: torch.Tensor, r, t) -> torch.Tensor:
        r = as_time(r, x.shape[0], like=x, name="r")[:, None]
        t = as_time(t, x.shape[0], like=x, name="t")[:, None]
        _check_order(r[:, 0], t[:, 0])
        h = t - r
        end = t * self.mean + self.scale(t) / self.scale(r) * (x - r * self.mean)
        safe = torch.where(h > 0, h, torch.ones_like(h))
        return torch.where(h > 0, (end - x) / safe, self.velocity(x, r[:, 0]))
