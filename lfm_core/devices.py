r"""Where a training step runs: its precision, the processes it is split across, and what one step costs.

**Precision.** A run asks for ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (:data:`PRECISIONS`) and
:func:`resolve_precision` says what the device gives: fp32 on the CPU and Apple MPS; on CUDA bf16 where the
GPU has it (Ampere and newer), else fp16, whose gradients need a scaler (their small values underflow).
:func:`autocast` is the context a forward pass runs in for that precision: ``torch.autocast`` for bf16 and
fp16, nothing for fp32. The :class:`lfm_core.trainer.Trainer` and :func:`measure_step` use both, so a
measured step is a trained one.

**Processes.** Under ``torchrun`` each of ``W`` processes holds a rank ``r``; :func:`init_distributed`
starts ``torch.distributed`` from torchrun's environment and :func:`dist_info` returns ``(r, W)``,
``(0, 1)`` for a plain run.

**Cost.** :func:`measure_step` times one training step (forward, backward, AdamW) and measures its memory:
the tensors autograd keeps for the backward pass (what grows with the batch, on any device) and CUDA's peak.

Copy with: utils (``torch``, ``numpy``).
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import torch

from .utils import check_device, check_nonnegative_int, check_positive_int

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "dist_info", "init_distributed", "measure_step"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device) -> str:
    """The precision a run uses: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient scaler).

    ``"auto"``: fp32 on the CPU and Apple MPS; on CUDA bf16 where the GPU supports it (Ampere and newer),
    else fp16 with a gradient scaler (e.g. a T4). Asking for bf16 on a GPU without it, or for bf16 / fp16
    on a CPU, is an error: the CPU would silently run far slower or less precisely than asked.
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = check_device(device)
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


def autocast(precision: str, device):
    """The context of a forward pass in ``precision`` (a resolved one: ``"fp32"``, ``"bf16"`` or ``"fp16"``)."""
    if not isinstance(precision, str) or precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be a resolved one, 'fp32', 'bf16' or 'fp16' (resolve_precision gives it), "
                         f"got {precision!r}")
    device = check_device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


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


def measure_step(model: torch.nn.Module, batch_fn, loss_fn, *, repeats: int = 5, warmup: int = 2,
                 device=None, precision: str = "fp32") -> dict:
    """Time and memory of one training step (forward, backward, AdamW) of ``loss_fn(model, **batch_fn(i))``.

    ``precision`` as in :class:`lfm_core.trainer.TrainerConfig` (:func:`resolve_precision`): the step runs under
    the same :func:`autocast`, with a gradient scaler for fp16, as the Trainer's.

    Returns ``ms`` (the median over ``repeats`` steps after ``warmup``), ``activations_mb`` (the tensors
    autograd keeps for the backward pass, parameters excluded: what grows with the batch on any device) and
    ``peak_mb`` (CUDA's peak allocation; ``None`` elsewhere).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for fn, name in ((batch_fn, "batch_fn"), (loss_fn, "loss_fn")):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    check_positive_int(repeats, "repeats")
    check_nonnegative_int(warmup, "warmup")
    device = check_device(device) if device is not None else next(model.parameters()).device
    precision = resolve_precision(precision, device)
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
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), autocast(precision, device):
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
