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

**The guard.** The loss, gradient norm and parameter norm of each step stay where they were computed and are
read back together (one synchronisation with an accelerator) every ``config.log_every`` steps, before a
checkpoint, at the end, and after every step when there is a callback. The first step whose loss or gradient
norm is not finite, or that diverges, stops training with a :class:`NonFiniteError` naming the step and its
batch, before anything after it is saved. Divergence (``config.divergence = f``, 1000 by default; ``None``: off):
a loss above ``f`` x the median of the (up to 1000) losses before it, once 20 are known (and the median is
positive), or an update that takes the root mean square of the parameters above ``f x max(1, r0)`` (``r0``: when
``fit`` began). The margin is wide on purpose: noise moves a loss by a few times, not a thousand, and weights of
order one that grow a thousandfold are no longer training. A checkpoint with non-finite weights is refused, and
one whose weights met a failing loss set aside (:func:`lfm_core.checkpoints.set_aside`), so the newest can
always be resumed. The error says how to go on (a lower learning rate with ``override=True``, or
``config.skip_steps`` past a bad batch); an exception from ``batch_fn`` or ``loss_fn`` names its step too.

**Checkpoints** (:mod:`lfm_core.checkpoints`): atomic, checksummed, resumed bit for bit, refused on resume
when the settings that change the optimisation differ (unless ``override=True``).

Copy with: checkpoints, store, devices, images, hub, runtime, utils (``torch``, ``numpy``, ``safetensors``,
``tqdm``, ``Pillow``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints, utils
from .devices import PRECISIONS, autocast, dist_info, resolve_precision
from .runtime import show_progress
from .utils import check_nonnegative, check_nonnegative_int, check_positive_int

__all__ = ["FitResult", "TrainerConfig", "Trainer", "NonFiniteError", "SCHEDULES"]

SCHEDULES = ("constant", "cosine")


@dataclass
class FitResult:
    """Loss history (one value per step, from step 0; NaN for a skipped step), the seconds this call trained, and
    the EMA model if any."""

    losses: list = field(default_factory=list)
    seconds: float = 0.0
    ema: torch.nn.Module | None = None

    def smoothed(self, window: int = 50) -> list:
        """Running mean of the losses over ``window`` steps (skipped steps left out)."""
        check_positive_int(window, "window")
        out, acc, n = [], 0.0, 0
        for i, v in enumerate(self.losses):
            acc, n = (acc + v, n + 1) if v == v else (acc, n)
            if i >= window and (old := self.losses[i - window]) == old:
                acc, n = acc - old, n - 1
            out.append(acc / n if n else float("nan"))
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
    often the losses are read back (and the progress bar and the guard updated). ``divergence``: the factor of
    the divergence guard (the module docstring; ``None``: only non-finite values stop training).
    ``skip_steps``: steps whose batch is drawn and dropped, without training (to resume past a bad batch; a
    skipped step's loss is NaN). Neither changes what a resume must match.
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
    divergence: float | None = 1e3
    skip_steps: tuple = ()

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
        if check_nonnegative_int(self.seed, "TrainerConfig.seed") >= 2**64:
            raise ValueError(f"TrainerConfig.seed must be < 2**64, got {self.seed}")
        self.divergence = _check_opt_float(self.divergence, "TrainerConfig.divergence", allow_none=True)
        if self.divergence is not None and self.divergence <= 1:
            raise ValueError(f"TrainerConfig.divergence must be > 1 (a factor) or None, got {self.divergence}")
        if isinstance(self.skip_steps, (str, bytes)) or not hasattr(self.skip_steps, "__iter__"):
            raise TypeError(f"TrainerConfig.skip_steps must be a tuple of steps, got {type(self.skip_steps).__name__}")
        self.skip_steps = tuple(sorted({check_nonnegative_int(k, "TrainerConfig.skip_steps") for k in self.skip_steps}))

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
    """Training produced a non-finite or diverged loss, gradient or parameter; nothing of it was saved. ``step``:
    the step that failed; ``generator_state``: the trainer's generator before that step drew its batch (or None)."""

    def __init__(self, message: str, step: int | None = None, generator_state: torch.Tensor | None = None):
        super().__init__(message)
        self.step, self.generator_state = step, generator_state


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
    is called after every step (``step`` counts from 1; on a GPU each call synchronises). ``out_dir`` (for
    checkpoints) is checked at once: a file, or a folder that cannot be written to, is a ``ValueError``.
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
        self.out_dir = (None if out_dir is None else utils.check_writable_dir(out_dir, "out_dir") if self.rank == 0
                        else Path(out_dir))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # foreach: one kernel per operation over all the parameters (not the default on a CPU); the learning
        # rate and the weight decay are set from the config before every step (_set_hyperparameters)
        self.opt = torch.optim.AdamW(self.params, foreach=True)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.history: list[dict] = []  # configuration changes applied on resume
        self.global_rng = None  # the global random states of a loaded checkpoint, set by fit
        self.show = (show_progress() if progress is None else progress) and self.rank == 0
        self.desc = desc
        self._pending: list = []  # (step, generator state, [loss, gradient norm, parameter norm]) not read back yet
        self._numel = sum(p.numel() for p in self.params)
        self._rms0, self._median = 0.0, utils.RunningMedian(DIVERGENCE_WINDOW)  # the guard's references
        self._ema_pairs = None
        self._set_hyperparameters(0)
        if self.out_dir is not None and self.rank == 0:
            checkpoints.clean_partial(self.out_dir)

    def fit(self, *, resume: bool = True, override: bool = False) -> FitResult:
        """Train until ``config.steps``, resuming from ``out_dir`` when ``resume``; returns the losses.

        With ``override=True`` a checkpoint trained with other settings is resumed with this trainer's
        (learning rate, weight decay, warmup, schedule, EMA, clipping, precision, seed), and the change is
        recorded in the next checkpoints' ``config.json``. A run that is already at ``config.steps`` is not saved
        again.
        """
        import torch.distributed as dist

        if resume:
            self.load_checkpoint(override=override)
        if self.global_rng is not None:  # the loaded run's global random states: a loss may draw from them
            checkpoints.set_rng_state(self.global_rng, self.device)
            self.global_rng = None
        cfg, begin = self.config, self.step
        if self.step > cfg.steps:
            raise ValueError(f"the checkpoint in {self.out_dir} is at step {self.step}, beyond steps = {cfg.steps}: "
                             "raise steps to train further, or pass resume=False to start again")
        bar = tqdm(range(self.step, cfg.steps), desc=self.desc, disable=not self.show, mininterval=1.0,
                   initial=self.step, total=cfg.steps)
        start = time.perf_counter()
        self.model.train()
        self._pending = []
        self._rms0 = float(utils.global_norm(self.params)) / self._numel**0.5 if cfg.divergence else 0.0
        self._median = utils.RunningMedian(DIVERGENCE_WINDOW, self.losses[-DIVERGENCE_WINDOW:])
        for step in bar:
            try:
                if step in cfg.skip_steps:  # drawn and dropped: the later batches are those of an uninterrupted run
                    with contextlib.suppress(Exception):
                        self.batch_fn(step, self.generator)
                    self._pending.append((step, None, None))
                else:
                    self._pending.append((step, self.generator.get_state(), self._step(step)))
            except Exception as exc:
                if self.world == 1:  # a non-finite step before this one is the cause to report
                    self._read_back()
                named = utils.with_context(exc, f"training stopped at step {step} (its batch: batch_fn({step}, "
                                           f"generator); if that batch is bad, TrainerConfig(skip_steps=({step},)) "
                                           "skips it on resume)")
                if named is exc:
                    raise
                raise named from exc
            self.step = step + 1
            saving = bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
            if self.callback is not None or saving or self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._read_back()
            if self.callback is not None:
                self.callback(self.step, self.losses[-1])
            if self.show and self.step % 20 == 0 and (recent := [v for v in self.losses[-50:] if v == v]):
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if saving:
                self.save_checkpoint()
            if cfg.sample_every and self.sample_fn and self.step % cfg.sample_every == 0 and self.rank == 0:
                self._save_samples()
        bar.close()
        self.model.eval()
        self._check_parameters_finite("training ended")
        saved = self.step == begin or cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
        if self.out_dir is not None and not (saved and (self.out_dir / f"ckpt-{self.step:08d}").is_dir()):
            self.save_checkpoint()
        if self.world > 1:
            dist.barrier()
        return FitResult(losses=list(self.losses), seconds=time.perf_counter() - start, ema=self.ema)

    def _step(self, step: int) -> tuple:
        """One step: forward, backward, clipping, AdamW, EMA. Returns the loss, the gradient norm and the parameter
        norm after the update (0 without the divergence guard), not read back."""
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
        if clip is not None:
            grads = [p.grad for p in self.params if p.grad is not None]
            gnorm = utils.global_norm(grads) if grads else torch.zeros((), device=self.device)
            utils.clip_grads_(self.params, clip, gnorm)
        else:
            gnorm = utils.grad_norm_sum(self.params)
        if self.scaler is not None:  # skips the update (and lowers its scale) when the fp16 gradient overflowed
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.ema is not None:
            self._update_ema()
        pnorm = utils.global_norm(self.params) if self.config.divergence else gnorm.new_zeros(())
        return loss.detach(), gnorm.detach(), pnorm

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

    # ------------------------------------------------------------------------------ the guard
    def _read_back(self) -> None:
        """Read the buffered steps back (one synchronisation) and stop at the first that fails (module docstring).

        A gradient norm counts without a gradient scaler only (with one, an overflowing fp16 step is skipped by the
        scaler). Across processes the losses are averaged, so a non-finite loss on any process shows; the gradient
        and parameter norms are the same on every process.
        """
        import torch.distributed as dist

        if not self._pending:
            return
        pending, self._pending = self._pending, []
        done = [v for _, _, v in pending if v is not None]
        cols = [torch.stack([v[i] for v in done]).double() if done else torch.zeros(0) for i in range(3)]
        if self.world > 1:
            dist.all_reduce(cols[0])
            cols[0] = cols[0] / self.world
        values, losses = iter(zip(*(c.tolist() for c in cols), strict=True)), []
        where = " on some process" if self.world > 1 else ""
        for step, state, v in pending:
            if v is not None:
                loss, gnorm, pnorm = next(values)
                what, met = _failure(loss, gnorm if self.scaler is None else 0.0, pnorm / self._numel**0.5,
                                     self._rms0, self._median, self.config.divergence)
                if what:
                    self._stop(step, what + (where if met else ""), state, met_loss=met)
                self._median.add(loss)
            losses.append(loss if v is not None else float("nan"))
        self.losses.extend(losses)

    def _check_parameters_finite(self, when: str) -> None:
        for name, module in (("model", self.model), ("EMA", self.ema)):
            if module is None:
                continue
            for k, v in module.state_dict().items():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    self._stop(self.step, f"the {name} parameter {k!r} holds non-finite values ({when})")

    def _stop(self, step: int, what: str, state=None, *, met_loss: bool = False) -> None:
        """Raise the :class:`NonFiniteError` of ``step``: its batch, the last good checkpoint and how to go on
        (:func:`lfm_core.checkpoints.after_failure`, which sets aside a checkpoint of ``step`` that met its loss)."""
        batch = f"Its batch is batch_fn({step}, generator)" + (
            ", the trainer's generator in the state err.generator_state" if state is not None else "")
        raise NonFiniteError(f"training stopped at step {step}: {what}; nothing after it was saved. {batch}. "
                             + checkpoints.after_failure(self.out_dir, step, met_loss, self.rank == 0),
                             step=step, generator_state=state)

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


# ------------------------------------------------------------------------------------ the guard's rules
DIVERGENCE_WINDOW, DIVERGENCE_WARMUP = 1000, 20


def _failure(loss: float, gnorm: float, rms: float, rms0: float, seen: utils.RunningMedian, factor: float | None):
    """What is wrong with a step (its loss, gradient norm, parameters' root mean square after the update), or None;
    and whether its loss is what failed."""
    if not math.isfinite(loss):
        return f"the loss was {loss}", True
    if not math.isfinite(gnorm):
        return f"the gradient norm was {gnorm} (the loss was finite, {loss:.4g})", False
    if factor and len(seen) >= DIVERGENCE_WARMUP and (median := seen.median()) > 0 and loss > factor * median:
        return (f"the loss diverged: {loss:.4g}, over {factor:g} x the median {median:.4g} of the {len(seen)} "
                "losses before it (TrainerConfig.divergence)"), True
    if factor and not rms <= factor * max(1.0, rms0):
        return (f"its update took the parameters' root mean square to {rms:.4g}, over {factor:g} x max(1, {rms0:.4g}) "
                "(their value when fit began; TrainerConfig.divergence)"), False
    return None, False
