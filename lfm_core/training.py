r"""The project's one training loop, :class:`Trainer`, and conditional flow matching on top of it.

**The CFM loss** (Lipman et al. 2023, eq. 9; Tong et al. 2024, eq. 10) for a path ``p_t(x | z)`` with
conditional velocity ``u_t(x | z)`` and a coupling ``q(z)``, ``z = (x0, x1)``:

.. math::

    \mathcal L_{CFM}(\theta) = \frac1d\,\mathbb E_{t \sim U[0,1],\; z \sim q,\; x_t \sim p_t(\cdot | z)}
        \bigl\| v_\theta(x_t, t) - u_t(x_t | z) \bigr\|^2 .

**One loss scaling everywhere:** the mean over every element of the batch, i.e. the squared error per
coordinate (the papers' ``E |v - u|^2`` divided by the dimension ``d``), as in TorchCFM's and Meta
flow_matching's examples and diffusers. Its gradient equals that of the (intractable) regression on the
marginal velocity, so the two losses differ by a constant (the conditional variance of ``u_t`` given
``x_t``, per coordinate): the CFM loss of a perfect model is not zero.

**The loop.** :class:`Trainer` trains every model of the project, from a 2D MLP (or an ensemble of
them, one per seed) to a latent DiT on several GPUs: AdamW with linear warmup and a constant or cosine
learning rate, an exponential moving average (EMA) of the weights, gradient clipping, mixed precision
chosen by the device (:func:`resolve_precision`), a guard that stops at the first non-finite loss,
gradient or parameter (naming the step) before anything is saved, and checkpoints that are atomic,
checksummed and resumable bit for bit. :func:`fit` (a loss of ``(step, generator)``) and
:func:`train_cfm` (conditional flow matching from two samplers) are thin wrappers of it.

**Checkpoints** (``out_dir/ckpt-<step>/``): ``model.safetensors``, ``ema.safetensors``, ``state.pt``
(optimiser, gradient scaler, every random state, losses; read back with ``weights_only=True``),
``config.json`` (the model's and the training configuration, diffusers-style) and ``checksums.json``
(SHA-256 of the others, written last). A folder is written under a hidden temporary name and renamed
when complete; ``latest`` names the newest. Loading takes the newest checkpoint that verifies, warns
about each corrupt one it skips (naming its path), and removes partial folders left by killed writes.
Resuming compares the stored configuration with the new one and refuses differences (listing them)
unless ``override=True``, which applies and records them.

Copy with: utils, couplings, runtime, solvers (and their own dependencies: none beyond utils).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import couplings
from .runtime import show_progress
from .solvers import integrate
from .utils import (
    check_finite,
    check_nonnegative,
    check_nonnegative_int,
    check_positive_int,
    check_probability,
    check_tensor,
)

__all__ = ["cfm_loss", "FitResult", "TrainerConfig", "Trainer", "CheckpointError", "NonFiniteError", "fit",
           "CFMBatches", "train_cfm", "reflow_pairs", "measure_step", "model_config", "resolve_precision",
           "init_distributed", "dist_info", "save_image_grid", "SCHEDULES", "PRECISIONS"]

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORMAT = "lfm_core.checkpoint/1"


# ----------------------------------------------------------------------------------------- the loss
def cfm_loss(model, path, x0: torch.Tensor, x1: torch.Tensor, *, t=None, noise=None, coupling: str = "independent",
             coupling_kwargs: dict | None = None, generator: torch.Generator | None = None, cond: dict | None = None):
    """One Monte Carlo estimate of the CFM loss on a minibatch: ``mean((v(x_t, t, **cond) - u_t)^2)``.

    Pairs ``x0`` with ``x1`` by ``coupling`` (:func:`lfm_core.couplings.pair`), draws ``t`` (if not given)
    with ``path.sample_time`` and ``(x_t, u_t)`` with ``path.sample``, and returns the mean over all elements
    (the module docstring explains the scaling).
    """
    check_tensor(x0, "x0")
    check_tensor(x1, "x1")
    if not isinstance(coupling, str) or coupling not in couplings.METHODS:
        raise ValueError(f"coupling must be one of {', '.join(couplings.METHODS)}, got {coupling!r}")
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments for the model, got {type(cond).__name__}")
    if coupling != "independent":
        x0, x1 = couplings.pair(x0, x1, coupling, generator=generator, **(coupling_kwargs or {}))
    if t is None:
        t = path.sample_time(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    xt, ut = path.sample(x0, x1, t, noise=noise, generator=generator)
    v = model(xt, t, **(cond or {}))
    if not isinstance(v, torch.Tensor) or v.shape != ut.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"the model must return a velocity shaped like x_t {tuple(ut.shape)}, got {got}")
    return (v - ut).pow(2).mean()


# ---------------------------------------------------------------------------------- configuration
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
    norm (``None``: no clipping). ``precision``: see :func:`resolve_precision`. ``checkpoint_every`` 0 saves
    only at the end (when the trainer has an ``out_dir``). ``log_every``: how often losses are read back
    from an accelerator (and the progress bar and the non-finite guard updated); on the CPU every step.
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


def resolve_precision(precision: str, device) -> str:
    """The precision a run uses: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient scaler).

    ``"auto"``: fp32 on the CPU and Apple MPS; on CUDA bf16 where the GPU supports it (Ampere and newer),
    else fp16 with a gradient scaler (e.g. a T4). Asking for bf16 on a GPU without it, or for bf16 / fp16
    on a CPU, is an error: the CPU would silently run far slower or less precisely than asked.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision={precision!r} needs a CUDA GPU; this run is on {device.type!r}: use 'fp32' "
                             "or 'auto'")
        return "fp32"
    bf16_ok = torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if bf16_ok else "fp16"
    if precision == "bf16" and not bf16_ok:
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"precision='bf16' is not supported by this GPU ({name}); use 'fp16' (with a gradient "
                         "scaler) or 'auto'")
    return precision


def model_config(model: torch.nn.Module) -> dict:
    """The model's configuration as JSON-ready data: ``{"_class_name": ..., **model.config}`` (diffusers-style).

    Models of this project, like diffusers models, carry a ``config`` mapping; for others only the class
    name is known.
    """
    cfg = getattr(model, "config", None)
    out = {"_class_name": type(model).__name__}
    if isinstance(cfg, dict) or hasattr(cfg, "items"):
        out.update({str(k): _jsonable(v) for k, v in dict(cfg).items() if not str(k).startswith("_")})
    return out


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    return repr(v)


def _parameter_signature(model: torch.nn.Module) -> str:
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(shapes.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ distribution
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


# -------------------------------------------------------------------------------------- errors
class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be used (corrupt, truncated, incomplete), with its path."""


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter; nothing of it was saved."""


# ------------------------------------------------------------------------------------ file helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 - user code may draw from the legacy global generator
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                     float(np_state[4]))}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _total_norm(params) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _norm_sum(params) -> torch.Tensor:
    """The sum of the gradients' norms: finite exactly when every gradient is; cheaper than the total norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(grads)).sum()


def _clip(params, max_norm: float, total: torch.Tensor) -> None:
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    else:
        grads = [p.grad for p in params if p.grad is not None]
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))


# -------------------------------------------------------------------------------------- the loop
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
        # foreach: one kernel per operation over all parameters; on a CPU it is not the default, and for the
        # small networks of the notebooks it takes a fifth off each step's time
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.history: list[dict] = []  # configuration changes applied on resume
        self.show = (show_progress() if progress is None else progress) and self.rank == 0
        self.desc = desc
        self._ema_pairs = None
        if self.out_dir is not None and self.rank == 0:
            self._clean_partial()

    # ------------------------------------------------------------------------------------ state
    def _config_json(self) -> dict:
        return {"format": FORMAT, "step": self.step, "model": model_config(self.model),
                "parameter_signature": _parameter_signature(self.model), "training": self.config.to_dict(),
                "precision_used": self.precision, "world_size": self.world, "history": self.history,
                "torch": torch.__version__}

    def _state(self) -> dict:
        return {"step": self.step, "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "generator": self.generator.get_state(), "rng": _rng_state(self.device),
                "losses": torch.tensor(self.losses, dtype=torch.float64)}

    def _check_parameters_finite(self, what: str) -> None:
        for name, module in (("model", self.model), ("EMA", self.ema)):
            if module is None:
                continue
            for k, v in module.state_dict().items():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise NonFiniteError(f"{what}: the {name} parameter {k!r} holds non-finite values at step "
                                         f"{self.step}; nothing was saved. {self._advice()}")

    def _advice(self) -> str:
        latest = self._newest_folder()
        where = f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint was written"
        return (f"{where.capitalize()}. Lower the learning rate (resume with override=True to change it), clip "
                "gradients (grad_clip), or check the data.")

    def _newest_folder(self) -> Path | None:
        if self.out_dir is None or not self.out_dir.exists():
            return None
        folders = sorted((p for p in self.out_dir.glob("ckpt-*") if p.is_dir()), key=_step_of)
        return folders[-1] if folders else None

    def _clean_partial(self) -> None:
        """Remove temporary folders and files left by writes that were killed."""
        if not self.out_dir.exists():
            return
        for p in self.out_dir.glob(".tmp-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/ckpt-<step>`` atomically and point ``out_dir/latest`` at it (rank 0 only).

        Refuses (:class:`NonFiniteError`) when a parameter is not finite: a checkpoint is always resumable.
        """
        from safetensors.torch import save_file

        if self.out_dir is None or self.rank != 0:
            return None
        self._check_parameters_finite("checkpoint refused")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.out_dir / f"ckpt-{self.step:08d}"
        tmp = self.out_dir / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            files = {"model.safetensors": self.model}
            if self.ema is not None:
                files["ema.safetensors"] = self.ema
            for name, module in files.items():
                save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp / name))
            torch.save(self._state(), tmp / "state.pt")
            (tmp / "config.json").write_text(json.dumps(self._config_json(), indent=1) + "\n")
            names = sorted(p.name for p in tmp.iterdir())
            for name in names:
                _fsync_file(tmp / name)
            (tmp / "checksums.json").write_text(json.dumps({n: _sha256(tmp / n) for n in names}, indent=1) + "\n")
            _fsync_file(tmp / "checksums.json")
            _fsync_dir(tmp)
            if final.exists():  # the same step saved again (e.g. after an override): replace it
                old = self.out_dir / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        latest_tmp = self.out_dir / f".tmp-latest-{uuid.uuid4().hex[:8]}"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, self.out_dir / "latest")
        folders = sorted((p for p in self.out_dir.glob("ckpt-*") if p.is_dir() and p != final), key=_step_of)
        for p in folders[: max(0, len(folders) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    @staticmethod
    def verify_checkpoint(path) -> dict:
        """Check a checkpoint folder's files against its checksums; return its ``config.json``.

        Raises :class:`CheckpointError` naming the folder and what is wrong.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a checkpoint folder")
        sums_path = path / "checksums.json"
        try:
            sums = json.loads(sums_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: checksums.json is missing or unreadable ({exc}); the write was "
                                  "interrupted or the folder was changed") from None
        for name in ("model.safetensors", "state.pt", "config.json"):
            if name not in sums:
                raise CheckpointError(f"{path}: checksums.json does not list {name}")
        for name, digest in sums.items():
            f = path / name
            if not f.exists():
                raise CheckpointError(f"{path}: {name} is missing")
            if _sha256(f) != digest:
                raise CheckpointError(f"{path}: {name} does not match its checksum (truncated or corrupted)")
        try:
            cfg = json.loads((path / "config.json").read_text())
        except ValueError as exc:
            raise CheckpointError(f"{path}: config.json is not valid JSON ({exc})") from None
        if cfg.get("format") != FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {cfg.get('format')!r} (expected {FORMAT!r})")
        return cfg

    def _compare(self, stored: dict, path: Path, override: bool) -> dict:
        new_model = model_config(self.model)
        if stored["model"] != new_model or stored["parameter_signature"] != _parameter_signature(self.model):
            diff = {k: (stored["model"].get(k), new_model.get(k)) for k in set(stored["model"]) | set(new_model)
                    if stored["model"].get(k) != new_model.get(k)}
            raise ValueError(f"the checkpoint {path} was made for another model configuration "
                             f"(stored vs now: {diff or 'parameter shapes differ'}): build the model as stored, or "
                             "train into another out_dir")
        old = stored["training"]
        new = self.config.to_dict()
        changed = {k: (old.get(k), new[k]) for k in self.config.must_match() if old.get(k) != new[k]}
        if changed and not override:
            listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"the checkpoint {path} was trained with another configuration ({listing}); pass "
                             "override=True to apply the new values from here on, or use another out_dir")
        return changed

    def load_checkpoint(self, path=None, *, override: bool = False) -> bool:
        """Resume from ``path`` (a ``ckpt-*`` folder) or from the newest good checkpoint in ``out_dir``.

        Returns False when there is none. Each corrupt checkpoint on the way is skipped with a warning that
        names it; a corrupt ``path`` given explicitly raises :class:`CheckpointError`. The stored configuration
        is compared with this trainer's (:meth:`fit`).
        """
        from safetensors.torch import load_file

        if path is not None:
            candidates, explicit = [Path(path)], True
        else:
            if self.out_dir is None or not self.out_dir.exists():
                return False
            candidates = sorted((p for p in self.out_dir.glob("ckpt-*") if p.is_dir()), key=_step_of, reverse=True)
            explicit = False
        problems = []
        for cand in candidates:
            try:
                stored = self.verify_checkpoint(cand)
                changed = self._compare(stored, cand, override)
                try:
                    model_sd = load_file(str(cand / "model.safetensors"), device=str(self.device))
                    ema_sd = (load_file(str(cand / "ema.safetensors"), device=str(self.device))
                              if (cand / "ema.safetensors").exists() else None)
                    state = torch.load(cand / "state.pt", weights_only=True, map_location="cpu")
                except Exception as exc:  # unreadable although the checksums match (e.g. written by another version)
                    raise CheckpointError(f"{cand}: cannot be read ({type(exc).__name__}: {exc})") from exc
            except CheckpointError as exc:
                if explicit:
                    raise
                problems.append(str(exc))
                nxt = candidates[candidates.index(cand) + 1] if cand != candidates[-1] else None
                warnings.warn(f"skipping a corrupt checkpoint: {exc}; "
                              + (f"falling back to {nxt}" if nxt else "no older checkpoint is left"),
                              RuntimeWarning, stacklevel=2)
                continue
            self.model.load_state_dict(model_sd)
            if self.ema is not None:
                self.ema.load_state_dict(ema_sd if ema_sd is not None else model_sd)
            self.opt.load_state_dict(state["optimizer"])
            for group in self.opt.param_groups:
                group["weight_decay"] = self.config.weight_decay
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.generator.set_state(state["generator"])
            _set_rng_state(state["rng"], self.device)
            self.step = int(state["step"])
            self.losses = state["losses"].tolist()
            self.history = list(stored.get("history", []))
            if changed:
                self.history.append({"step": self.step, "changes": {k: list(v) for k, v in changed.items()}})
            return True
        if problems:
            raise CheckpointError("no usable checkpoint in " + str(self.out_dir) + ":\n  " + "\n  ".join(problems)
                                  + "\nremove them, or pass resume=False to start again")
        return False

    # --------------------------------------------------------------------------------- training
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

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    @torch.no_grad()
    def _update_ema(self):
        if self._ema_pairs is None:
            self._ema_pairs = ([p for p in self.ema.parameters()], [p.detach() for p in self.model.parameters()],
                               list(zip(self.ema.buffers(), self.model.buffers(), strict=True)))
        ema_p, model_p, buffers = self._ema_pairs
        torch._foreach_lerp_(ema_p, model_p, 1.0 - self.config.ema_decay)
        for e, b in buffers:
            e.copy_(b)

    def _fail(self, step: int, what: str, value) -> None:
        raise NonFiniteError(f"training stopped at step {step}: {what} was {value}; the model was not saved after "
                             f"this point. {self._advice()}")

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
        for group in self.opt.param_groups:
            group["weight_decay"] = cfg.weight_decay
        on_cpu = self.device.type == "cpu" and self.world == 1
        sync_every = 1 if on_cpu else cfg.log_every
        clip = cfg.grad_clip
        bar = tqdm(range(self.step, cfg.steps), desc=self.desc, disable=not self.show, mininterval=1.0,
                   initial=self.step, total=cfg.steps)
        start = time.perf_counter()
        self.model.train()
        pending, bad_at = [], None  # accelerator: losses and the first non-finite step, read back every sync_every
        lr_now = None
        for step in bar:
            lr = cfg.lr_at(step)
            if lr != lr_now:
                for group in self.opt.param_groups:
                    group["lr"] = lr
                lr_now = lr
            batch = self._slice(self.batch_fn(step, self.generator))
            with self._autocast():
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
            if on_cpu:
                value, g = float(loss.detach()), float(gnorm)
                if not math.isfinite(value):
                    self._fail(step, "the loss", value)
                if not math.isfinite(g):
                    self._fail(step, "the gradient norm", f"{g} (the loss was finite, {value:.4g})")
            if clip is not None:
                _clip(self.params, clip, gnorm)
            if self.scaler is not None:  # skips the update (and lowers its scale) when the fp16 gradient overflowed
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            if self.ema is not None:
                self._update_ema()
            self.step = step + 1
            if on_cpu:
                self.losses.append(value)
            else:
                flag = ~torch.isfinite(loss.detach())
                if self.scaler is None:
                    flag = flag | ~torch.isfinite(gnorm)
                pending.append((loss.detach().float(), flag))
                due = (self.step % sync_every == 0 or self.step == cfg.steps or self.callback is not None
                       or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0))
                if due:
                    bad_at = self._flush(pending, step)
                    pending = []
                    if bad_at is not None:
                        self._fail(bad_at[0], bad_at[1], "non-finite")
            if self.callback is not None:
                self.callback(self.step, self.losses[-1])
            if self.show and self.step % 20 == 0 and self.losses:
                recent = self.losses[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
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

    def _flush(self, pending, last_step):
        """Read back the pending losses (one synchronisation); return ``(step, what)`` of the first non-finite one."""
        import torch.distributed as dist

        first = last_step - len(pending) + 1
        values = torch.stack([v for v, _ in pending])
        flags = torch.stack([f for _, f in pending]).to(torch.float32)
        if self.world > 1:
            dist.all_reduce(values)
            values = values / self.world
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        values, flags = values.cpu().tolist(), flags.cpu().tolist()
        for i, (v, f) in enumerate(zip(values, flags, strict=True)):
            if f:
                what = "the loss" if not math.isfinite(v) else "the gradient norm (the loss was finite)"
                return first + i, what + (" on some process" if self.world > 1 else "")
        self.losses.extend(values)
        return None

    def _save_samples(self):
        module = self.ema if self.ema is not None else self.model
        images = self.sample_fn(module)
        if self.out_dir is not None:
            save_image_grid(images, self.out_dir / "samples" / f"step-{self.step:08d}.png")


# ---------------------------------------------------------------------------------- thin wrappers
def fit(model: torch.nn.Module, loss_fn, *, steps: int, lr: float = 1e-3, weight_decay: float = 0.0,
        lr_schedule: str = "constant", warmup: int = 0, seed: int | None = 0, progress: bool | None = None,
        desc: str = "training", callback=None, grad_clip: float | None = None, ema_decay: float | None = None,
        device=None, out_dir=None, checkpoint_every: int = 0, resume: bool = True,
        override: bool = False) -> FitResult:
    """Minimise ``loss_fn(step, generator)`` over ``model``'s parameters with AdamW: :class:`Trainer` for a loss
    that draws its own batch.

    ``generator`` is the trainer's CPU generator (seeded with ``seed``, saved in checkpoints), so the batches
    it draws, and hence the whole run, are reproducible and resumable. ``seed`` also seeds torch's global
    generator first (``None``: neither is seeded). The other arguments are those of :class:`TrainerConfig`
    and :class:`Trainer`; the loss is not split across processes.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    else:
        check_nonnegative_int(seed, "seed")
        torch.manual_seed(seed)
    cfg = TrainerConfig(steps=steps, batch_size=None, lr=lr, weight_decay=weight_decay, lr_schedule=lr_schedule,
                        warmup=warmup, ema_decay=ema_decay, grad_clip=grad_clip, precision="fp32",
                        checkpoint_every=checkpoint_every, seed=seed)
    trainer = Trainer(model, lambda step, g: {"step": step, "generator": g},
                      lambda m, step, generator: loss_fn(step, generator), cfg, out_dir=out_dir, callback=callback,
                      progress=progress, device=device, desc=desc)
    return trainer.fit(resume=resume, override=override)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so that each step gets an independent stream."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class _Sampler:
    """Rows of a tensor (with replacement, or in epochs of shuffled batches) or a callable ``(n, generator)``."""

    def __init__(self, source, name: str, sampling: str, seed: int):
        self.name = name
        if isinstance(source, torch.Tensor):
            check_tensor(source, name, min_dim=2)
            check_finite(source, name, boundary=True)
            self.data = source
        elif callable(source):
            self.data = None
            self.fn = source
        else:
            raise TypeError(f"{name} must be a tensor of points or a callable (n, generator) -> tensor, got "
                            f"{type(source).__name__}")
        self.sampling, self.seed, self._perm = sampling, seed, (None, None)

    def indices(self, n: int, step: int, g: torch.Generator) -> torch.Tensor:
        size = self.data.shape[0]
        if self.sampling == "replacement":
            return torch.randint(0, size, (n,), generator=g)
        per_epoch = size // n
        if per_epoch == 0:
            raise ValueError(f"sampling='epochs' needs at least one full batch: {self.name} has {size} rows, "
                             f"batch {n}")
        epoch, i = divmod(step, per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(size, generator=torch.Generator().manual_seed(_mix(self.seed, epoch))))
        return self._perm[1][i * n:(i + 1) * n]

    def draw(self, n: int, step: int, g: torch.Generator) -> torch.Tensor:
        if self.data is None:
            x = self.fn(n, g)
            if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != n:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{self.name}(n, generator) must return a tensor of n = {n} rows, got {got}")
            return x
        idx = self.indices(n, step, g)
        return self.data[idx.to(self.data.device)]


class CFMBatches:
    """The batch function of :func:`train_cfm`, ``(step) -> {"x0", "x1", "t", "noise"?, "labels"?}``.

    Batch ``k`` is a pure function of ``(seed, k)``.

    Each step gets its own generator seeded from ``(seed, step)``; points, coupling seeds, times and noise
    are drawn from it, so batches can be computed ahead in worker threads (``prefetch``) and a resumed run
    draws exactly what an uninterrupted one would.
    """

    def __init__(self, path, sources, targets, batch_size, *, coupling="independent", coupling_kwargs=None,
                 prefetch=0, seed=0, paired=False, labels=None, label_dropout=0.0, null_label=None,
                 sampling="replacement"):
        self.path, self.b, self.seed = path, batch_size, seed
        self.members = len(targets)
        self.coupling, self.kwargs = coupling, dict(coupling_kwargs or {})
        self.paired, self.labels, self.p_drop, self.null = paired, labels, label_dropout, null_label
        self.src = [_Sampler(s, "source", sampling, _mix(seed, 1, m)) for m, s in enumerate(sources)]
        self.tgt = [_Sampler(s, "target", sampling, _mix(seed, 2, m)) for m, s in enumerate(targets)]
        self.prefetch = prefetch
        self.pool, self.queue, self.next_step = None, {}, None

    def _draw(self, step: int):
        g = torch.Generator().manual_seed(_mix(self.seed, step))
        jobs = []
        for m in range(self.members):
            if self.paired:
                idx = self.tgt[m].indices(self.b, step, g)
                x0, x1 = self.src[m].data[idx.to(self.src[m].data.device)], self.tgt[m].data[idx.to(
                    self.tgt[m].data.device)]
                y = None
            else:
                x0 = self.src[m].draw(self.b, step, g)
                if self.labels is not None:
                    idx = self.tgt[m].indices(self.b, step, g)
                    x1, y = self.tgt[m].data[idx.to(self.tgt[m].data.device)], self.labels[m][idx.to(
                        self.labels[m].device)]
                else:
                    x1, y = self.tgt[m].draw(self.b, step, g), None
            seed = int(torch.randint(0, 2**62, (1,), generator=g)) if self.coupling != "independent" else 0
            jobs.append((x0, x1, y, seed))
        n = self.b * self.members
        t = self.path.sample_time(n, generator=g, dtype=jobs[0][0].dtype)
        noise = (torch.randn((n, *jobs[0][0].shape[1:]), generator=g, dtype=jobs[0][0].dtype)
                 if getattr(self.path, "has_noise", False) else None)
        drop = (torch.rand(n, generator=g) < self.p_drop) if self.labels is not None and self.p_drop > 0 else None
        return jobs, t, noise, drop

    def _couple(self, x0, x1, y, seed):
        if self.coupling == "independent":
            return x0, x1, y
        gen = torch.Generator().manual_seed(seed)
        kwargs = dict(self.kwargs)
        if y is not None:
            kwargs["labels"] = y
        i0, i1 = couplings.pair_indices(x0, x1, self.coupling, generator=gen, **kwargs)
        return x0[i0], x1[i1], None if y is None else y[i1.to(y.device)]

    def _submit(self, step):
        jobs, t, noise, drop = self._draw(step)
        if self.pool is None:
            return [self._couple(*j) for j in jobs], t, noise, drop
        return [self.pool.submit(self._couple, *j) for j in jobs], t, noise, drop

    def __call__(self, step: int, generator=None) -> dict:
        if self.prefetch and self.coupling != "independent":
            if self.pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self.pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="coupling")
            if self.next_step != step:  # first call, or a jump (resume): start the queue here
                self.queue = {}
            for k in range(step, step + self.prefetch + 1):
                if k not in self.queue:
                    self.queue[k] = self._submit(k)
            futures, t, noise, drop = self.queue.pop(step)
            parts = [f.result() for f in futures]
            self.next_step = step + 1
        else:
            parts, t, noise, drop = self._submit(step)
        x0 = torch.cat([p[0] for p in parts]) if self.members > 1 else parts[0][0]
        x1 = torch.cat([p[1] for p in parts]) if self.members > 1 else parts[0][1]
        out = {"x0": x0, "x1": x1, "t": t}
        if noise is not None:
            out["noise"] = noise
        if self.labels is not None:
            y = torch.cat([p[2] for p in parts]).long()
            if drop is not None:
                y = torch.where(drop.to(y.device), torch.full_like(y, self.null), y)
            out["labels"] = y
        return out

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _per_member(value, members: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != members:
            raise ValueError(f"{name} must be one sampler, or a list of one per ensemble member ({members}), got "
                             f"{len(value)}")
        return list(value)
    return [value] * members


def train_cfm(model, path, source, target, *, steps: int, batch_size: int = 256, lr: float = 1e-3,
              weight_decay: float = 0.0, lr_schedule: str = "constant", warmup: int = 0,
              coupling: str = "independent", coupling_kwargs: dict | None = None, prefetch: int = 0,
              sampling: str = "replacement", paired: bool = False, labels=None, label_dropout: float = 0.0,
              seed: int = 0, grad_clip: float | None = None, ema_decay: float | None = None,
              precision: str = "fp32", progress: bool | None = None, device=None, callback=None, out_dir=None,
              checkpoint_every: int = 0, sample_fn=None, sample_every: int = 0, resume: bool = True,
              override: bool = False) -> FitResult:
    """Train ``model`` by conditional flow matching from ``source`` to ``target`` with :class:`Trainer`.

    ``source`` and ``target`` are tensors of points (batches are their rows: drawn with replacement, or with
    ``sampling="epochs"`` in shuffled epochs that drop the last incomplete batch, as the OT-CFM code does) or
    callables ``(n, generator) -> [n, ...]``. Each step pairs a source and a target batch by ``coupling``
    (:func:`lfm_core.couplings.pair_indices` with ``coupling_kwargs``, e.g. ``{"block_size": 128}``) and
    takes one AdamW step on :func:`cfm_loss`. ``prefetch`` worker threads compute the couplings of the
    next steps ahead; results do not depend on it (every step's randomness comes from ``(seed, step)``).

    ``paired=True`` trains on given pairs: row ``i`` of ``source`` goes with row ``i`` of ``target`` (rectified
    flow's reflow, :func:`reflow_pairs`); the coupling must be ``"independent"``. ``labels`` (integer classes
    of the rows of ``target``) trains a class-conditional model, called ``model(x, t, labels=y)``: with
    ``label_dropout`` ``p`` each label becomes ``model.null_label`` with probability ``p`` (classifier-free
    guidance), and couplings pair within classes.

    An ensemble (a model with ``n_members``, e.g. :class:`lfm_core.nets.MLPEnsemble`) is trained as that many
    independent models: each member gets its own batch of ``batch_size`` (``source`` / ``target`` may then be
    lists of one sampler per member), the loss is the sum of the members' losses, so each member's gradient
    is what it would be alone. The other arguments are those of :class:`TrainerConfig` and :class:`Trainer`
    (checkpoints with ``out_dir``; ``precision="auto"`` for mixed precision on a GPU). Returns the :class:`FitResult`.
    """
    check_positive_int(batch_size, "batch_size")
    check_nonnegative_int(seed, "seed")
    if not isinstance(coupling, str) or coupling not in couplings.METHODS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(couplings.METHODS)}")
    if coupling_kwargs is not None and not isinstance(coupling_kwargs, dict):
        raise TypeError(f"coupling_kwargs must be a dict or None, got {type(coupling_kwargs).__name__}")
    check_nonnegative_int(prefetch, "prefetch")
    if sampling not in ("replacement", "epochs"):
        raise ValueError(f"sampling must be 'replacement' or 'epochs', got {sampling!r}")
    if not isinstance(paired, bool):
        raise TypeError(f"paired must be a bool, got {type(paired).__name__}")
    label_dropout = check_probability(label_dropout, "label_dropout")
    if not hasattr(path, "sample") or not hasattr(path, "sample_time"):
        raise TypeError(f"path must have sample(x0, x1, t) and sample_time(n) (lfm_core.paths or an interpolant), "
                        f"got {type(path).__name__}")
    members = getattr(model, "n_members", 1)
    sources, targets = _per_member(source, members, "source"), _per_member(target, members, "target")
    label_list = None if labels is None else _per_member(labels, members, "labels")
    if paired:
        if coupling != "independent":
            raise ValueError(f"paired=True trains on the given pairs; coupling must be 'independent', got {coupling!r}")
        for a, b in zip(sources, targets, strict=True):
            for arr, name in ((a, "source"), (b, "target")):
                if not isinstance(arr, torch.Tensor):
                    raise TypeError(f"paired=True needs {name} as a tensor of points, got {type(arr).__name__}")
                check_tensor(arr, name)
            if a.shape != b.shape:
                raise ValueError(f"paired=True needs source and target of the same shape, got {tuple(a.shape)} and "
                                 f"{tuple(b.shape)}")
    null_label = None
    if label_list is not None:
        null_label = getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError("labels need a class-conditional model with a null_label (e.g. nets.UNetVelocity("
                             "..., num_classes=K))")
        for y, x in zip(label_list, targets, strict=True):
            if not isinstance(x, torch.Tensor):
                raise TypeError("labels need target as a tensor of points (labels are its rows' classes)")
            if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != x.shape[:1]:
                raise ValueError(f"labels must be an integer tensor of shape [N] = [{x.shape[0]}] (one per target row)")
    if device is None:
        device = next(model.parameters()).device
    batches = CFMBatches(path, sources, targets, batch_size, coupling=coupling, coupling_kwargs=coupling_kwargs,
                          prefetch=prefetch, seed=seed, paired=paired, labels=label_list, label_dropout=label_dropout,
                          null_label=null_label, sampling=sampling)

    def loss_fn(m, x0, x1, t, noise=None, labels=None):
        cond = None if labels is None else {"labels": labels}
        return cfm_loss(m, path, x0, x1, t=t, noise=noise, cond=cond) * members

    cfg = TrainerConfig(steps=steps, batch_size=batch_size * members, lr=lr, weight_decay=weight_decay,
                        lr_schedule=lr_schedule, warmup=warmup, ema_decay=ema_decay, grad_clip=grad_clip,
                        precision=precision, checkpoint_every=checkpoint_every, sample_every=sample_every, seed=seed)
    trainer = Trainer(model, batches, loss_fn, cfg, out_dir=out_dir, sample_fn=sample_fn, callback=callback,
                      progress=progress, device=device, desc=f"CFM ({coupling}{', pairs' if paired else ''})")
    try:
        return trainer.fit(resume=resume, override=override)
    finally:
        batches.close()


def reflow_pairs(model, source, n: int | None = None, *, steps: int = 100, generator: torch.Generator | None = None,
                 batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rectified flow's *reflow* coupling (Liu et al., arXiv 2209.03003, Sec. 2.3): ``(x0, x1 = Z_1(x0))``.

    ``x0``: ``n`` points drawn from ``source`` (a tensor, whose rows are sampled with replacement, or
    ``(n, generator) -> points``), or every row of a tensor ``source`` in order when ``n`` is None. They
    are pushed through the flow of ``model`` with ``steps`` Euler steps. Training a new model by CFM on these
    pairs (``train_cfm(..., paired=True)``) gives the 2-rectified flow: the pairs are deterministic, so the
    straight-line interpolant crosses itself less, and the new flow is straighter. Its quality is bounded
    by the first flow's (its samples are the new data).
    """
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if n is None:
        if not isinstance(source, torch.Tensor):
            raise TypeError("n=None takes every row of source, which must then be a tensor")
        x0 = check_tensor(source, "source", min_dim=2)
        check_finite(x0, "source", boundary=True)
    else:
        check_positive_int(n, "n")
        x0 = _Sampler(source, "source", "replacement", 0).draw(n, 0, generator)
    x1 = torch.cat([integrate(model, x0[s:s + batch_size], method="euler", steps=steps).x
                    for s in range(0, x0.shape[0], batch_size)])
    return x0, x1


# ------------------------------------------------------------------------------------- measuring
def measure_step(model: torch.nn.Module, batch_fn, loss_fn, *, repeats: int = 5, warmup: int = 2,
                 device=None, precision: str = "fp32") -> dict:
    """Time and memory of one training step (forward, backward, AdamW) of ``loss_fn(model, **batch_fn(i))``.

    ``precision`` as in :class:`TrainerConfig` (:func:`resolve_precision`): the step runs under the same
    autocast, with a gradient scaler for fp16, as the :class:`Trainer`'s.

    Returns ``ms`` (the median over ``repeats`` steps after ``warmup``), ``activations_mb`` (the tensors
    autograd keeps for the backward pass, parameters excluded: what grows with the batch on any device) and
    ``peak_mb`` (CUDA's peak allocation; ``None`` elsewhere).
    """
    check_positive_int(repeats, "repeats")
    check_nonnegative_int(warmup, "warmup")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(precision, device)
    autocast = (contextlib.nullcontext if precision == "fp32" else
                lambda: torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen, saved = set(), [0]

    def pack(tensor):
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key not in seen and tensor.data_ptr() not in param_ptrs:
            seen.add(key)
            saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, activations = [], 0
    for i in range(warmup + repeats):
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch_fn(i).items()}
        sync()
        start = time.perf_counter()
        seen.clear()
        saved[0] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), autocast():
            loss = loss_fn(model, **batch)
        activations = max(activations, saved[0])
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"ms": 1000 * float(np.median(times)), "activations_mb": activations / 2**20, "peak_mb": peak}


def save_image_grid(images: torch.Tensor, path, *, nrow: int | None = None) -> Path:
    """Save ``[N, C, H, W]`` images in ``[-1, 1]`` as one PNG grid (1 or 3 channels)."""
    from PIL import Image

    check_tensor(images, "images", min_dim=4)
    n, c, h, w = images.shape
    if images.dim() != 4 or c not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {tuple(images.shape)}")
    if nrow is not None:
        check_positive_int(nrow, "nrow")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + 2), nrow * (w + 2))
    for i, img in enumerate(images.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1)):
        r, q = divmod(i, nrow)
        grid[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = img
    arr = ((grid + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(path)
    return path

