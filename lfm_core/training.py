r"""Training small flow models: the conditional flow matching loss and a seeded fit loop.

The CFM loss (Lipman et al. 2023, eq. 9; Tong et al. 2024, eq. 10) for a path ``p_t(x | z)``
with conditional velocity ``u_t(x | z)`` and a coupling ``q(z)``, ``z = (x0, x1)``:

.. math::

    \mathcal L_{CFM}(\theta) = \mathbb E_{t \sim U[0,1],\; z \sim q,\; x_t \sim p_t(\cdot | z)}
        \bigl\| v_\theta(x_t, t) - u_t(x_t | z) \bigr\|^2 .

Its gradient equals that of the (intractable) regression on the marginal velocity, so the two
losses differ by a constant (the conditional variance of ``u_t`` given ``x_t``): the CFM loss of
a perfect model is not zero.

:func:`fit` and :func:`train_cfm` serve the 2D and small models; :class:`Trainer` is the loop for
image and latent models (EMA, warmup, clipping, bf16, atomic checkpoints with exact resume,
DistributedDataParallel under torchrun).

Depends on ``torch``, ``tqdm`` and the sibling modules ``couplings``, ``runtime``, ``solvers``, ``utils``.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import couplings
from .runtime import show_progress
from .solvers import integrate
from .utils import check_positive_int, check_tensor

__all__ = ["cfm_loss", "fit", "paired_batches", "train_cfm", "reflow_pairs", "FitResult", "Trainer", "TrainerConfig",
           "init_distributed", "dist_info", "model_signature", "save_image_grid"]


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
        desc: str = "training", callback=None, grad_clip: float | None = None) -> FitResult:
    """Minimise ``loss_fn(step, generator)`` over ``model``'s parameters with AdamW for ``steps`` steps.

    ``loss_fn`` returns a scalar tensor; ``generator`` is a CPU ``torch.Generator`` seeded with
    ``seed`` so that the batches it draws, and hence the whole run, are reproducible. The learning
    rate is ``lr`` throughout (``"constant"``) or decays as ``lr (1 + cos(pi step / steps)) / 2``
    (``"cosine"``), which removes much of the SGD noise from the final model. A tqdm bar shows the
    running loss (``progress=None`` follows :func:`lfm_core.runtime.show_progress`). A non-finite
    loss stops training with an error naming the step. ``grad_clip``, if given, rescales the gradient to
    at most that global norm before each step. ``callback(step, loss)``, if given, is
    called after every step (``step`` counts from 1), e.g. to evaluate checkpoints; the model is
    in training mode when it is called.
    """
    check_positive_int(steps, "steps")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float)) and math.isfinite(grad_clip)
                                      and grad_clip > 0):
        raise ValueError(f"grad_clip must be None or a finite number > 0, got {grad_clip!r}")
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
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
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
              progress: bool | None = None, device=None, callback=None, paired: bool = False) -> FitResult:
    """Train ``model`` by conditional flow matching from ``source`` to ``target``.

    ``source`` and ``target`` are either tensors (minibatches are drawn from their rows, with
    replacement) or callables ``(n, generator) -> [n, ...]``. Each step pairs a source and a
    target batch by ``coupling`` (:func:`lfm_core.couplings.pair` with ``coupling_kwargs``, e.g.
    ``{"block_size": 128}``) and takes one AdamW step on :func:`cfm_loss` (learning-rate schedule
    as in :func:`fit`). ``prefetch`` worker threads compute the couplings of upcoming batches
    ahead (see :func:`paired_batches`); results do not depend on it. ``callback`` as in :func:`fit`.

    ``paired=True`` trains on given pairs: ``source`` and ``target`` are tensors with the same number of
    rows, and each batch takes the same rows of both (row ``i`` of ``source`` goes with row ``i`` of
    ``target``), as in rectified flow's reflow (:func:`reflow_pairs`); the coupling must then be
    ``"independent"`` (the pairs are the coupling).
    """
    check_positive_int(batch_size, "batch_size")
    if coupling not in couplings.METHODS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(couplings.METHODS)}")
    if paired:
        return _train_on_pairs(model, path, source, target, steps=steps, batch_size=batch_size, lr=lr,
                               weight_decay=weight_decay, lr_schedule=lr_schedule, coupling=coupling, seed=seed,
                               progress=progress, device=device, callback=callback)
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


def _train_on_pairs(model, path, x0, x1, *, steps, batch_size, lr, weight_decay, lr_schedule, coupling, seed,
                    progress, device, callback) -> FitResult:
    for a, name in ((x0, "source"), (x1, "target")):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"paired=True needs {name} as a tensor of points, got {type(a).__name__}")
        check_tensor(a, name)
    if x0.shape != x1.shape:
        raise ValueError(f"paired=True needs source and target of the same shape, got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    if coupling != "independent":
        raise ValueError(f"paired=True trains on the given pairs; coupling must be 'independent', got {coupling!r}")
    if device is None:
        device = next(model.parameters()).device

    def loss_fn(step, gen):
        idx = torch.randint(0, x0.shape[0], (batch_size,), generator=gen)
        return cfm_loss(model, path, x0[idx].to(device), x1[idx].to(device), generator=gen)

    return fit(model, loss_fn, steps=steps, lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule, seed=seed,
               progress=progress, desc="CFM (pairs)", callback=callback)


def reflow_pairs(model, source, n: int, *, steps: int = 100, generator: torch.Generator | None = None,
                 batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rectified flow's *reflow* coupling (Liu et al., arXiv 2209.03003, Sec. 2.3): ``(x0, x1 = Z_1(x0))``.

    Draws ``n`` points ``x0`` from ``source`` (a tensor, whose rows are sampled, or ``(n, generator) ->
    points``) and pushes them through the flow of ``model`` with ``steps`` Euler steps. Training a new
    model by CFM on these pairs (``train_cfm(..., paired=True)``) gives the 2-rectified flow: the pairs are
    deterministic, so the straight-line interpolant no longer crosses itself as often, and the new flow
    is straighter. Its quality is bounded by the first flow's (its samples are the new data).
    """
    check_positive_int(n, "n")
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    draw = _batch_sampler(source, "source")
    x0 = draw(n, generator)
    x1 = torch.cat([integrate(model, x0[s:s + batch_size], method="euler", steps=steps).x
                    for s in range(0, n, batch_size)])
    return x0, x1


# ------------------------------------------------------------------------------ the scalable trainer
@dataclass
class TrainerConfig:
    """Settings of :class:`Trainer`. ``batch_size`` is the global batch, split evenly across processes."""

    steps: int
    batch_size: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup: int = 0
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on the CPU)
    checkpoint_every: int = 0  # 0: only at the end (when the trainer has an out_dir)
    sample_every: int = 0
    seed: int = 0
    keep_checkpoints: int = 2


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside ``torch.distributed``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``nccl`` on CUDA, ``gloo`` on the CPU).

    Does nothing (and returns ``(0, 1)``) when the script was not started by torchrun.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist_info()


def model_signature(model: torch.nn.Module) -> str:
    """Class and parameter shapes of a model: a checkpoint of another configuration does not match."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return f"{type(model).__name__}|{hashlib.sha256(shapes.encode()).hexdigest()[:16]}"


class Trainer:
    r"""A training loop that scales from one CPU to several GPUs, for image and latent models.

    AdamW with linear warmup, an exponential moving average (EMA) of the weights, gradient clipping,
    bfloat16 autocast on CUDA, a NaN guard that stops every process with a message, atomic checkpoints
    (safetensors for the weights, a ``weights_only`` state file for the rest) with exact resume, a tqdm
    bar and periodic sample grids. Under ``torchrun`` the model is wrapped in
    ``DistributedDataParallel``.

    The data side is split in two so that any number of processes computes the same thing:
    ``batch_fn(step, generator) -> dict`` draws the *global* batch (data indices, times, noise: all the
    randomness) from a generator seeded identically on every process, each process keeps its slice of
    every tensor, and ``loss_fn(model, **slice) -> scalar`` is the mean loss of the slice. Averaging
    gradients over processes then gives the gradient of the global batch, exactly as one process would.
    """

    def __init__(self, model: torch.nn.Module, batch_fn, loss_fn, config: TrainerConfig, *, out_dir=None,
                 sample_fn=None, progress: bool | None = None, device=None):
        import copy

        from torch.nn.parallel import DistributedDataParallel

        check_positive_int(config.steps, "steps")
        check_positive_int(config.batch_size, "batch_size")
        if not (0.0 <= config.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
        self.rank, self.world = dist_info()
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {self.world} processes")
        self.config = config
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.wrapped = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                                else None) if self.world > 1 else self.model)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.batch_fn, self.loss_fn, self.sample_fn = batch_fn, loss_fn, sample_fn
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warm = max(config.warmup, 0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.show = (show_progress() if progress is None else progress) and self.rank == 0

    # -------------------------------------------------------------------------------- state
    def _state(self) -> dict:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "generator": self.generator.get_state(), "losses": torch.tensor(self.losses, dtype=torch.float64),
                "signature": model_signature(self.model), "config": {k: v for k, v in vars(self.config).items()
                           if v is None or isinstance(v, (int, float, bool))}}

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/ckpt-<step>`` atomically and point ``out_dir/latest`` at it (rank 0 only)."""
        from safetensors.torch import save_file

        if self.out_dir is None or self.rank != 0:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.out_dir / f"ckpt-{self.step:08d}"
        tmp = Path(tempfile.mkdtemp(dir=self.out_dir, prefix=f".{final.name}."))
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                      str(tmp / "model.safetensors"))
            save_file({k: v.detach().contiguous().cpu() for k, v in self.ema.state_dict().items()},
                      str(tmp / "ema.safetensors"))
            torch.save(self._state(), tmp / "state.pt")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        latest_tmp = self.out_dir / ".latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, self.out_dir / "latest")
        old = sorted(p for p in self.out_dir.glob("ckpt-*") if p.is_dir() and p != final)
        for p in old[: max(0, len(old) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def load_checkpoint(self, path=None) -> bool:
        """Resume from ``path`` (a ``ckpt-*`` folder) or from ``out_dir/latest``; False when there is none."""
        from safetensors.torch import load_file

        if path is None:
            if self.out_dir is None or not (self.out_dir / "latest").exists():
                return False
            path = self.out_dir / (self.out_dir / "latest").read_text().strip()
        path = Path(path)
        state = torch.load(path / "state.pt", weights_only=True)
        if state["signature"] != model_signature(self.model):
            raise ValueError(f"the checkpoint {path} was made for another model configuration "
                             f"({state['signature']} vs {model_signature(self.model)})")
        self.model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(self.device)))
        self.ema.load_state_dict(load_file(str(path / "ema.safetensors"), device=str(self.device)))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.losses = state["losses"].tolist()
        return True

    # ------------------------------------------------------------------------------ training
    @torch.no_grad()
    def _update_ema(self):
        d = self.config.ema_decay
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    def _slice(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                if v.shape[0] != self.config.batch_size:
                    raise ValueError(f"batch_fn must return the global batch: '{k}' has {v.shape[0]} rows, "
                                     f"expected {self.config.batch_size}")
                per = self.config.batch_size // self.world
                v = v[self.rank * per:(self.rank + 1) * per].to(self.device)
            out[k] = v
        return out

    def fit(self, *, resume: bool = True) -> FitResult:
        """Train until ``config.steps`` (resuming from ``out_dir/latest`` when ``resume``); returns the losses."""
        import torch.distributed as dist

        if resume:
            self.load_checkpoint()
        cfg = self.config
        autocast = cfg.bf16 and self.device.type == "cuda"
        bar = tqdm(range(self.step, cfg.steps), desc="training", disable=not self.show, mininterval=1.0,
                   initial=self.step, total=cfg.steps)
        start = time.perf_counter()
        self.model.train()
        for _ in bar:
            batch = self._slice(self.batch_fn(self.step, self.generator))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = self.loss_fn(self.wrapped, **batch)
            finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.device)
            if self.world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                raise FloatingPointError(f"the loss became non-finite at step {self.step} (on some process): "
                                         "lower the learning rate, clip gradients, or check the data")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self._update_ema()
            self.step += 1
            value = float(loss.detach())
            if self.world > 1:
                t = torch.tensor([value], device=self.device)
                dist.all_reduce(t)
                value = float(t) / self.world
            self.losses.append(value)
            if self.show and self.step % 20 == 0:
                bar.set_postfix(loss=f"{sum(self.losses[-50:]) / len(self.losses[-50:]):.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.sample_every and self.sample_fn and self.step % cfg.sample_every == 0 and self.rank == 0:
                self._save_samples()
        self.model.eval()
        if self.out_dir is not None and (not cfg.checkpoint_every or self.step % cfg.checkpoint_every):
            self.save_checkpoint()
        return FitResult(losses=list(self.losses), seconds=time.perf_counter() - start)

    def _save_samples(self):
        images = self.sample_fn(self.ema)
        if self.out_dir is not None:
            save_image_grid(images, self.out_dir / "samples" / f"step-{self.step:08d}.png")


def save_image_grid(images: torch.Tensor, path, *, nrow: int | None = None) -> Path:
    """Save ``[N, C, H, W]`` images in ``[-1, 1]`` as one PNG grid (1 or 3 channels)."""
    from PIL import Image

    check_tensor(images, "images", min_dim=4)
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + 2), nrow * (w + 2))
    for i, img in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        r, q = divmod(i, nrow)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = img
    arr = ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(path)
    return path
