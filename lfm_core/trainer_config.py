r"""The :class:`lfm_core.trainer.Trainer`'s settings (:class:`TrainerConfig`), what its ``fit`` returns
(:class:`FitResult`), and the rules of its guard (:func:`failure`, :class:`NonFiniteError`).

The guard's rules, for one step's loss ``L``, gradient norm ``g`` and root mean square ``r`` of the parameters
after the update: training stops when ``L`` or ``g`` is not finite; with ``divergence = f`` (1000 by default),
also when ``L > f x median`` of the (up to :data:`DIVERGENCE_WINDOW`) losses before it, once
:data:`DIVERGENCE_WARMUP` are known and the median is positive, or when ``r > f x max(1, r0)`` (``r0``: when
``fit`` began). The margin is wide on purpose: noise moves a loss by a few times, not a thousand, and weights of
order one that grow a thousandfold are no longer training.

Copy with: devices, utils (``torch``, ``numpy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from . import utils
from .devices import PRECISIONS
from .utils import check_nonnegative, check_nonnegative_int, check_positive_int, check_seed

__all__ = ["FitResult", "TrainerConfig", "NonFiniteError", "SCHEDULES", "failure", "DIVERGENCE_WINDOW",
           "DIVERGENCE_WARMUP"]

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
        check_seed(self.seed, "TrainerConfig.seed")
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
        check_nonnegative_int(step, "step")
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


# ------------------------------------------------------------------------------------ the guard's rules
DIVERGENCE_WINDOW, DIVERGENCE_WARMUP = 1000, 20


def failure(loss: float, gnorm: float, rms: float, rms0: float, seen: utils.RunningMedian, factor: float | None):
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
