r"""Training small flow models: the conditional flow matching loss and a seeded fit loop.

The CFM loss (Lipman et al. 2023, eq. 9; Tong et al. 2024, eq. 10) for a path ``p_t(x | z)``
with conditional velocity ``u_t(x | z)`` and a coupling ``q(z)``, ``z = (x0, x1)``:

.. math::

    \mathcal L_{CFM}(\theta) = \mathbb E_{t \sim U[0,1],\; z \sim q,\; x_t \sim p_t(\cdot | z)}
        \bigl\| v_\theta(x_t, t) - u_t(x_t | z) \bigr\|^2 .

Its gradient equals that of the (intractable) regression on the marginal velocity, so the two
losses differ by a constant (the conditional variance of ``u_t`` given ``x_t``): the CFM loss of
a perfect model is not zero.

The heavy trainer for image models (EMA, checkpoints, DDP) comes with the latent issue; this
module is for the 2D and small models of the first notebooks.

Depends on ``torch``, ``tqdm`` and the sibling modules ``couplings``, ``runtime``, ``utils``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import couplings
from .runtime import show_progress
from .utils import check_positive_int, check_tensor

__all__ = ["cfm_loss", "fit", "paired_batches", "train_cfm", "FitResult"]


def cfm_loss(model, path, x0: torch.Tensor, x1: torch.Tensor, *, t=None, noise=None, coupling: str = "independent",
             coupling_kwargs: dict | None = None, generator: torch.Generator | None = None, cond: dict | None = None):
    """One Monte Carlo estimate of the CFM loss on a minibatch.

    Pairs ``x0`` with ``x1`` by ``coupling`` (:func:`lfm_core.couplings.pair`), draws ``t`` (if not
    given) with ``path.sample_time`` and ``(x_t, u_t)`` with ``path.sample``, and returns
    ``mean over the batch of |model(x_t, t) - u_t|^2`` (summed over the point's dimensions).
    """
    check_tensor(x0, "x0")
    check_tensor(x1, "x1")
    if coupling != "independent":
        x0, x1 = couplings.pair(x0, x1, coupling, generator=generator, **(coupling_kwargs or {}))
    if t is None:
        t = path.sample_time(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    xt, ut = path.sample(x0, x1, t, noise=noise, generator=generator)
    v = model(xt, t, **(cond or {}))
    return (v - ut).pow(2).reshape(v.shape[0], -1).sum(1).mean()


@dataclass
class FitResult:
    """Loss history of :func:`fit` (one value per step) and the wall time in seconds."""

    losses: list = field(default_factory=list)
    seconds: float = 0.0

    def smoothed(self, window: int = 50) -> list:
        """Running mean of the losses over ``window`` steps."""
        out, acc = [], 0.0
        for i, v in enumerate(self.losses):
            acc += v
            if i >= window:
                acc -= self.losses[i - window]
            out.append(acc / min(i + 1, window))
        return out


SCHEDULES = ("constant", "cosine")


def fit(model: torch.nn.Module, loss_fn, *, steps: int, lr: float = 1e-3, weight_decay: float = 0.0,
        lr_schedule: str = "constant", seed: int | None = 0, progress: bool | None = None,
        desc: str = "training", callback=None) -> FitResult:
    """Minimise ``loss_fn(step, generator)`` over ``model``'s parameters with AdamW for ``steps`` steps.

    ``loss_fn`` returns a scalar tensor; ``generator`` is a CPU ``torch.Generator`` seeded with
    ``seed`` so that the batches it draws, and hence the whole run, are reproducible. The learning
    rate is ``lr`` throughout (``"constant"``) or decays as ``lr (1 + cos(pi step / steps)) / 2``
    (``"cosine"``), which removes much of the SGD noise from the final model. A tqdm bar shows the
    running loss (``progress=None`` follows :func:`lfm_core.runtime.show_progress`). A non-finite
    loss stops training with an error naming the step. ``callback(step, loss)``, if given, is
    called after every step (``step`` counts from 1), e.g. to evaluate checkpoints; the model is
    in training mode when it is called.
    """
    import time

    check_positive_int(steps, "steps")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
        torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    factor = (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if lr_schedule == "cosine" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    result = FitResult()
    show = show_progress() if progress is None else progress
    bar = tqdm(range(steps), desc=desc, disable=not show, mininterval=0.5, leave=False)
    start = time.perf_counter()
    model.train()
    for step in bar:
        loss = loss_fn(step, gen)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        result.losses.append(value)
        if callback is not None:
            callback(step + 1, value)
        if show and step % 50 == 0:
            bar.set_postfix(loss=f"{result.smoothed(50)[-1]:.4f}")
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _batch_sampler(source, name):
    """Turn a tensor (a data set) or a callable ``(n, generator) -> tensor`` into a batch sampler."""
    if isinstance(source, torch.Tensor):
        check_tensor(source, name)

        def draw(n, gen):
            idx = torch.randint(0, source.shape[0], (n,), generator=gen)
            return source[idx.to(source.device)]

        return draw
    if callable(source):
        return source
    raise TypeError(
        f"{name} must be a tensor of points or a callable (n, generator) -> tensor, got {type(source).__name__}"
    )


def paired_batches(draw0, draw1, batch_size: int, generator: torch.Generator, *, coupling: str = "independent",
                   coupling_kwargs: dict | None = None, prefetch: int = 0):
    """Endless iterator of coupled minibatches ``(x0, x1)``, optionally computed ahead in worker threads.

    ``draw0`` / ``draw1`` are callables ``(n, generator) -> [n, ...]``. Each batch's points and a
    seed for its coupling are drawn from ``generator`` in the calling thread, in order, so the
    sequence of pairs does not depend on ``prefetch``. With ``prefetch = k > 0``, ``k`` worker
    threads compute the couplings of the next batches while the caller trains on the current
    one; POT's exact solver releases the GIL, so this overlaps with the network's work and, on
    two or more cores, solves several plans at once. Close the iterator (or let it be garbage
    collected) to stop the workers.
    """
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
    kwargs = dict(coupling_kwargs or {})

    def draw():
        x0, x1 = draw0(batch_size, generator), draw1(batch_size, generator)
        return x0, x1, int(torch.randint(0, 2**62, (1,), generator=generator))

    def couple(x0, x1, seed):
        if coupling == "independent":
            return x0, x1
        return couplings.pair(x0, x1, coupling, generator=torch.Generator().manual_seed(seed), **kwargs)

    if prefetch == 0:
        while True:
            yield couple(*draw())
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=prefetch, thread_name_prefix="coupling")
    try:
        queue = deque(pool.submit(couple, *draw()) for _ in range(prefetch))
        while True:
            queue.append(pool.submit(couple, *draw()))
            yield queue.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def train_cfm(model, path, source, target, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
              weight_decay: float = 0.0, lr_schedule: str = "constant", coupling: str = "independent",
              coupling_kwargs: dict | None = None, prefetch: int = 0, seed: int | None = 0,
              progress: bool | None = None, device=None, callback=None) -> FitResult:
    """Train ``model`` by conditional flow matching from ``source`` to ``target``.

    ``source`` and ``target`` are either tensors (minibatches are drawn from their rows, with
    replacement) or callables ``(n, generator) -> [n, ...]``. Each step pairs a source and a
    target batch by ``coupling`` (:func:`lfm_core.couplings.pair` with ``coupling_kwargs``, e.g.
    ``{"block_size": 128}``) and takes one AdamW step on :func:`cfm_loss` (learning-rate schedule
    as in :func:`fit`). ``prefetch`` worker threads compute the couplings of upcoming batches
    ahead (see :func:`paired_batches`); results do not depend on it. ``callback`` as in :func:`fit`.
    """
    check_positive_int(batch_size, "batch_size")
    if coupling not in couplings.METHODS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(couplings.METHODS)}")
    draw0, draw1 = _batch_sampler(source, "source"), _batch_sampler(target, "target")
    if device is None:
        device = next(model.parameters()).device
    batches = None

    def loss_fn(step, gen):
        nonlocal batches
        if batches is None:  # created on the first step, from fit's seeded generator
            # batches get a generator of their own: drawing ahead must not shift the times and noise
            batch_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            batches = paired_batches(draw0, draw1, batch_size, batch_gen, coupling=coupling,
                                     coupling_kwargs=coupling_kwargs, prefetch=prefetch)
        x0, x1 = next(batches)
        return cfm_loss(model, path, x0.to(device), x1.to(device), generator=gen)

    try:
        return fit(model, loss_fn, steps=steps, lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule,
                   seed=seed, progress=progress, desc=f"CFM ({coupling})", callback=callback)
    finally:
        if batches is not None:
            batches.close()
