r"""The project's one training loop, :class:`Trainer`: from a 2D MLP on one CPU to a latent DiT on several GPUs.

Each step ``k`` (counting from 0, of ``K = config.steps``) takes one AdamW step on the loss of a batch, with
the learning rate

.. math::

    \eta_k = \eta \,\min\Bigl(1, \frac{k + 1}{W}\Bigr) \times
        \begin{cases} 1 & \text{constant} \\ \tfrac12 \bigl(1 + \cos(\pi k / K)\bigr) & \text{cosine} \end{cases}

(a linear warmup over ``W = config.warmup`` steps, :meth:`TrainerConfig.lr_at`). The gradient is rescaled to
a global norm of at most ``c = config.grad_clip``, ``g <- g min(1, c / |g|)``, and an exponential moving
average (EMA) of the weights follows the model, ``theta_ema <- d theta_ema + (1 - d) theta`` with
``d = config.ema_decay``; samples are usually drawn from the EMA.

**Precision** is chosen by the device (:func:`lfm_core.devices.resolve_precision`): fp32 on the CPU, bf16 or
fp16 autocast on a GPU. **Several processes** (``torchrun``) each take their slice of the same global batch
and average their gradients, which gives the gradient of the global batch, as one process would.

**The non-finite guard.** The loss and the gradient norm of each step stay where they were computed and are
read back together (one synchronisation with an accelerator) every ``config.log_every`` steps, before a
checkpoint, at the end, and after every step when there is a callback. The first step whose loss or gradient
norm is not finite stops training with a :class:`NonFiniteError` naming it, before anything after it is saved;
a checkpoint with non-finite weights is refused too, so every checkpoint can be resumed.

**Checkpoints** (:mod:`lfm_core.checkpoints`): atomic, checksummed, resumed bit for bit, refused on resume
when the settings that change the optimisation differ (unless ``override=True``).

Copy with: checkpoints, store, devices, images, hub, runtime, utils (``torch``, ``numpy``, ``safetensors``,
``tqdm``, ``Pillow``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints
from .devices import PRECISIONS, autocast, dist_info, resolve_precision
from .runtime import show_progress
from .utils import check_nonnegative, check_nonnegative_int, check_positive_int

__all__ = ["FitResult", "TrainerConfig", "Trainer", "NonFiniteError", "SCHEDULES"]

SCHEDULES = ("constant", "cosine")


@dataclass
class FitResult:
    """Loss history (one value per step, from step 0), the seconds this call trained, and the EMA model if any."""

    losses: list = field(default_factory=list)
    seconds: float = 0.0
    ema: torch.nn.Module | None = None

    def smoothed(self, window: int = 50) -> list:
        """Running mean of the losses over ``window`` steps."""
        check_positive_int(window, "window")
        out, acc = [], 0.0
        for i, v in enumerate(self.losses):
            acc += v
            if i >= window:
                acc -= self.losses[i - window]
            out.append(acc / min(i + 1, window))
        return out


def _check_opt_float(value, name, *, allow_none=False, strict=True, upper=None):
    if value is None and allow_none:
        return None
    if value is None:
        raise TypeError(f"{name} must be a number, got None")
    v = check_nonnegative(value, name, strict=strict)
    if upper is not None and v >= upper:
        raise ValueError(f"{name} must be < {upper}, got {v}")
    return v


@dataclass
class TrainerConfig:
    """Settings of :class:`Trainer`; every field is validated when the config is made.

    ``batch_size`` is the global batch, split evenly across processes (``None``: the batch is not split,
    for a loss that draws its own data; one process only). ``lr_schedule``: ``"constant"`` or ``"cosine"``
    (from ``lr`` at step 0 to 0 at ``steps``), multiplied by a linear warmup over the first ``warmup``
    steps. ``ema_decay`` ``None`` keeps no EMA. ``grad_clip`` rescales the gradient to at most that global
    norm (``None``: no clipping). ``precision``: see :func:`lfm_core.devices.resolve_precision`.
    ``checkpoint_every`` 0 saves only at the end (when the trainer has an ``out_dir``). ``log_every``: how
    often the losses are read back (and the progress bar and the non-finite guard updated).
    """

    steps: int
    batch_size: int | None
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup: int = 0
    ema_decay: float | None = 0.999
    grad_clip: float | None = 1.0
    precision: str = "auto"
    checkpoint_every: int = 0
    sample_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0

    # fields that change the optimisation: a resume must match them (or override); the rest is bookkeeping
    OPTIMISATION = ("batch_size", "lr", "weight_decay", "lr_schedule", "warmup", "ema_decay", "grad_clip",
                    "precision", "seed")

    def __post_init__(self):
        check_positive_int(self.steps, "TrainerConfig.steps")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "TrainerConfig.batch_size")
        self.lr = _check_opt_float(self.lr, "TrainerConfig.lr")
        self.weight_decay = _check_opt_float(self.weight_decay, "TrainerConfig.weight_decay", strict=False)
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"TrainerConfig.lr_schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{self.lr_schedule!r}")
        check_nonnegative_int(self.warmup, "TrainerConfig.warmup")
        if self.ema_decay is not None:
            self.ema_decay = _check_opt_float(self.ema_decay, "TrainerConfig.ema_decay", strict=False, upper=1.0)
        self.grad_clip = _check_opt_float(self.grad_clip, "TrainerConfig.grad_clip", allow_none=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainerConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("checkpoint_every", "sample_every"):
            check_nonnegative_int(getattr(self, name), f"TrainerConfig.{name}")
        check_positive_int(self.keep_checkpoints, "TrainerConfig.keep_checkpoints")
        check_positive_int(self.log_every, "TrainerConfig.log_every")
        check_nonnegative_int(self.seed, "TrainerConfig.seed")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def must_match(self) -> tuple:
        """The fields a resume must keep; ``steps`` too when the schedule depends on it (cosine)."""
        return self.OPTIMISATION + (("steps",) if self.lr_schedule == "cosine" else ())

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (counting from 0)."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.lr_schedule == "cosine":
            factor *= 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps))
        return self.lr * factor


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter; nothing of it was saved."""


class Trainer:
    r"""The training loop of the project, from one CPU to several GPUs under ``torchrun``.

    The data side is split in two so that any number of processes computes the same thing:
    ``batch_fn(step, generator) -> dict`` draws the *global* batch of step ``step`` (data, times, noise: all
    the randomness) from ``generator`` (a CPU generator seeded with ``config.seed``, the same on every
    process, saved in checkpoints); each process keeps its slice of every tensor (rows), and
    ``loss_fn(model, **slice) -> scalar`` is the mean loss of the slice. Averaging gradients over processes
    then gives the gradient of the global batch, exactly as one process would. Values that are not tensors
    pass through unsplit.

    ``sample_fn(model) -> images [N, C, H, W]`` (the EMA model when there is one) is called every
    ``config.sample_every`` steps and its images saved under ``out_dir/samples``. ``callback(step, loss)``
    is called after every step (``step`` counts from 1; on a GPU each call synchronises).
    """

    def __init__(self, model: torch.nn.Module, batch_fn, loss_fn, config: TrainerConfig, *, out_dir=None,
                 sample_fn=None, callback=None, progress: bool | None = None, device=None, desc: str = "training"):
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig, got {type(config).__name__}")
        for fn, name in ((batch_fn, "batch_fn"), (loss_fn, "loss_fn")):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        for fn, name in ((sample_fn, "sample_fn"), (callback, "callback")):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
        params = list(model.parameters())
        if not any(p.requires_grad for p in params):
            raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        self.rank, self.world = dist_info()
        if config.batch_size is None and self.world > 1:
            raise ValueError("batch_size=None (an unsplit batch) works in one process only")
        if config.batch_size is not None and config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {self.world} processes")
        self.device = torch.device(device) if device is not None else params[0].device
        if self.device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {self.device} is not supported: use 'cpu', 'cuda' or 'mps'")
        self.precision = resolve_precision(config.precision, self.device)
        self.config = config
        self.model = model.to(self.device)
        self.wrapped = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                                else None) if self.world > 1 else self.model)
        self.ema = (copy.deepcopy(self.model).eval().requires_grad_(False) if config.ema_decay is not None else None)
        self.batch_fn, self.loss_fn, self.sample_fn, self.callback = batch_fn, loss_fn, sample_fn, callback
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # foreach: one kernel per operation over all the parameters (not the default on a CPU); the learning
        # rate and the weight decay are set from the config before every step (_set_hyperparameters)
        self.opt = torch.optim.AdamW(self.params, foreach=True)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.history: list[dict] = []  # configuration changes applied on resume
        self.show = (show_progress() if progress is None else progress) and self.rank == 0
        self.desc = desc
        self._pending: list = []  # (loss, gradient norm) of the steps not read back yet
        self._ema_pairs = None
        self._set_hyperparameters(0)
        if self.out_dir is not None and self.rank == 0:
            checkpoints.clean_partial(self.out_dir)

    def fit(self, *, resume: bool = True, override: bool = False) -> FitResult:
        """Train until ``config.steps``, resuming from ``out_dir`` when ``resume``; returns the losses.

        With ``override=True`` a checkpoint trained with other settings is resumed with this trainer's
        (learning rate, weight decay, warmup, schedule, EMA, clipping, precision, seed), and the change is
        recorded in the next checkpoints' ``config.json``.
        """
        import torch.distributed as dist

        if resume:
            self.load_checkpoint(override=override)
        cfg = self.config
        if self.step > cfg.steps:
            raise ValueError(f"the checkpoint in {self.out_dir} is at step {self.step}, beyond steps = {cfg.steps}: "
                             "raise steps to train further, or pass resume=False to start again")
        bar = tqdm(range(self.step, cfg.steps), desc=self.desc, disable=not self.show, mininterval=1.0,
                   initial=self.step, total=cfg.steps)
        start = time.perf_counter()
        self.model.train()
        self._pending = []
        for step in bar:
            try:
                self._pending.append(self._step(step))
            except Exception:
                if self.world == 1:  # a non-finite step before this one is the cause to report
                    self._read_back()
                raise
            self.step = step + 1
            saving = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
            if self.callback is not None or saving or self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._read_back()
            if self.callback is not None:
                self.callback(self.step, self.losses[-1])
            if self.show and self.step % 20 == 0 and self.losses:
                recent = self.losses[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if saving:
                self.save_checkpoint()
            if cfg.sample_every and self.sample_fn and self.step % cfg.sample_every == 0 and self.rank == 0:
                self._save_samples()
        bar.close()
        self.model.eval()
        self._check_parameters_finite("training ended")
        if self.out_dir is not None and (not cfg.checkpoint_every or self.step % cfg.checkpoint_every):
            self.save_checkpoint()
        if self.world > 1:
            dist.barrier()
        return FitResult(losses=list(self.losses), seconds=time.perf_counter() - start, ema=self.ema)

    def _step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: forward, backward, clipping, AdamW, EMA. Returns the loss and the gradient norm, not read back."""
        clip = self.config.grad_clip
        self._set_hyperparameters(step)
        batch = self._slice(self.batch_fn(step, self.generator))
        with autocast(self.precision, self.device):
            loss = self.loss_fn(self.wrapped, **batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"loss_fn must return a scalar tensor, got "
                            f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        loss = loss.reshape(())
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        gnorm = _total_norm(self.params) if clip is not None else _norm_sum(self.params)
        if clip is not None:
            _clip(self.params, clip, gnorm)
        if self.scaler is not None:  # skips the update (and lowers its scale) when the fp16 gradient overflowed
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.ema is not None:
            self._update_ema()
        return loss.detach(), gnorm.detach()

    def _set_hyperparameters(self, step: int) -> None:
        """The learning rate of ``step`` and the weight decay, from the config (a resumed optimiser state carries the
        checkpoint's)."""
        lr = self.config.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"], group["weight_decay"] = lr, self.config.weight_decay

    def _slice(self, batch) -> dict:
        if not isinstance(batch, dict):
            raise TypeError(f"batch_fn must return a dict of keyword arguments for loss_fn, got "
                            f"{type(batch).__name__}")
        out = {}
        bs = self.config.batch_size
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                if bs is not None and v.shape[0] != bs:
                    raise ValueError(f"batch_fn must return the global batch: '{k}' has {v.shape[0]} rows, "
                                     f"expected batch_size = {bs}")
                if self.world > 1:
                    per = bs // self.world
                    v = v[self.rank * per:(self.rank + 1) * per]
                if v.device != self.device:
                    v = v.to(self.device, non_blocking=True)
            out[k] = v
        return out

    @torch.no_grad()
    def _update_ema(self):
        if self._ema_pairs is None:
            self._ema_pairs = ([p for p in self.ema.parameters()], [p.detach() for p in self.model.parameters()],
                               list(zip(self.ema.buffers(), self.model.buffers(), strict=True)))
        ema_p, model_p, buffers = self._ema_pairs
        torch._foreach_lerp_(ema_p, model_p, 1.0 - self.config.ema_decay)
        for e, b in buffers:
            e.copy_(b)

    # ------------------------------------------------------------------------------ the non-finite guard
    def _read_back(self) -> None:
        """Read the buffered losses back (one synchronisation) and stop at the first non-finite step.

        A step fails when its loss is not finite, or its gradient norm without a gradient scaler (with one, an
        overflowing fp16 step is skipped by the scaler). Across processes the losses are averaged, so a
        non-finite loss on any process shows; the gradient norm is the same on every process.
        """
        import torch.distributed as dist

        if not self._pending:
            return
        first = self.step - len(self._pending)
        losses = torch.stack([v for v, _ in self._pending]).double()
        norms = torch.stack([g for _, g in self._pending]).double()
        self._pending = []
        if self.world > 1:
            dist.all_reduce(losses)
            losses = losses / self.world
        losses, norms = losses.tolist(), norms.tolist()
        where = " on some process" if self.world > 1 else ""
        for i, (v, g) in enumerate(zip(losses, norms, strict=True)):
            if not math.isfinite(v):
                self._stop(first + i, f"the loss was {v}{where}")
            if self.scaler is None and not math.isfinite(g):
                self._stop(first + i, f"the gradient norm was {g} (the loss was finite, {v:.4g}){where}")
        self.losses.extend(losses)

    def _check_parameters_finite(self, when: str) -> None:
        for name, module in (("model", self.model), ("EMA", self.ema)):
            if module is None:
                continue
            for k, v in module.state_dict().items():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    self._stop(self.step, f"the {name} parameter {k!r} holds non-finite values ({when})")

    def _stop(self, step: int, what: str) -> None:
        """Raise the :class:`NonFiniteError` of ``step``, saying where the last good checkpoint is."""
        latest = checkpoints.newest(self.out_dir)
        where = f"The last good checkpoint is {latest}" if latest is not None else "No checkpoint was written"
        raise NonFiniteError(f"training stopped at step {step}: {what}; nothing was saved after this point. {where}. "
                             "Lower the learning rate (resume with override=True to change it), clip gradients "
                             "(grad_clip), or check the data.")

    # ------------------------------------------------------------------------------ checkpoints, samples
    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/ckpt-<step>`` (:func:`lfm_core.checkpoints.save`; rank 0 only).

        Refuses (:class:`NonFiniteError`) when a parameter is not finite: a checkpoint is always resumable.
        """
        if self.out_dir is None or self.rank != 0:
            return None
        self._check_parameters_finite("checkpoint refused")
        return checkpoints.save(self)

    def load_checkpoint(self, path=None, *, override: bool = False) -> bool:
        """Resume from ``path`` or the newest good checkpoint in ``out_dir`` (:func:`lfm_core.checkpoints.load`)."""
        return checkpoints.load(self, path, override=override)

    def _save_samples(self):
        from .images import save_image_grid

        module = self.ema if self.ema is not None else self.model
        images = self.sample_fn(module)
        if self.out_dir is not None:
            save_image_grid(images, self.out_dir / "samples" / f"step-{self.step:08d}.png")


# ------------------------------------------------------------------------------------ gradients
def _total_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device)
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _norm_sum(params) -> torch.Tensor:
    """The sum of the gradients' norms: finite exactly when every gradient is; cheaper than the total norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device)
    return torch.stack(torch._foreach_norm(grads)).sum()


def _clip(params, max_norm: float, total: torch.Tensor) -> None:
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))
