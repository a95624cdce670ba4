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

Copy with: trainer_config, checkpoints, store, devices, images, image_files, hub, runtime, utils (``torch``, ``numpy``,
``safetensors``, ``tqdm``, ``Pillow``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints, utils
from .devices import autocast, dist_info, resolve_precision
from .runtime import show_progress
from .trainer_config import DIVERGENCE_WINDOW, SCHEDULES, FitResult, NonFiniteError, TrainerConfig, failure

__all__ = ["FitResult", "TrainerConfig", "Trainer", "NonFiniteError", "SCHEDULES"]

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
        if progress is not None:
            utils.check_bool(progress, "progress")
        if not isinstance(desc, str):
            raise TypeError(f"desc must be a str, got {type(desc).__name__}")
        params = list(model.parameters())
        if not any(p.requires_grad for p in params):
            raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        self.rank, self.world = dist_info()
        if config.batch_size is None and self.world > 1:
            raise ValueError("batch_size=None (an unsplit batch) works in one process only")
        if config.batch_size is not None and config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {self.world} processes")
        self.device = utils.check_device(device) if device is not None else params[0].device
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

        utils.check_bool(resume, "resume")
        utils.check_bool(override, "override")
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
                what, met = failure(loss, gnorm if self.scaler is None else 0.0, pnorm / self._numel**0.5,
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
        if isinstance(path, str) and not path:  # not taken as the current folder
            raise ValueError(f"path is empty ({path!r}): name a checkpoint folder, or pass None for the newest "
                             f"good checkpoint in out_dir")
        return checkpoints.load(self, path, override=override)

    def _save_samples(self):
        from .images import save_image_grid

        module = self.ema if self.ema is not None else self.model
        images = self.sample_fn(module)
        if self.out_dir is not None:
            save_image_grid(images, self.out_dir / "samples" / f"step-{self.step:08d}.png")
