r"""Conditional flow matching (CFM): its loss, and training by it with :class:`lfm_core.trainer.Trainer`.

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

**Training.** :func:`train_cfm` minimises it from two samplers (the batches of :class:`lfm_core.batches.CFMBatches`:
couplings, paired data, labels with dropout for classifier-free guidance, ensembles), :func:`reflow_pairs` makes
rectified flow's reflow pairs, and :func:`fit` trains any loss that draws its own batch. All three leave the
loop to the :class:`lfm_core.trainer.Trainer` (AdamW, EMA, clipping, mixed precision, the non-finite guard,
checkpoints); its settings are passed once, as :class:`lfm_core.trainer.TrainerConfig` field names
(``lr=..., ema_decay=..., warmup=...``) or a whole ``config``, over :data:`DEFAULTS`.

Copy with: trainer, trainer_config, batches, checkpoints, store, devices, images, image_files, hub, runtime, couplings,
guidance, solvers, utils (``torch``, ``numpy``, ``safetensors``, ``tqdm``, ``Pillow``; ``POT`` for the exact
couplings).
"""

from __future__ import annotations

from dataclasses import fields

import torch

from . import couplings
from .batches import COUPLING_KWARGS, CFMBatches, _check_coupling, _Sampler
from .guidance import check_labels
from .solvers import integrate
from .trainer import FitResult, Trainer, TrainerConfig
from .utils import (
    check_bool,
    check_finite,
    check_generator,
    check_nonnegative_int,
    check_positive_int,
    check_probability,
    check_seed,
    check_tensor,
)

__all__ = ["cfm_loss", "train_cfm", "reflow_pairs", "fit", "DEFAULTS"]

# the settings of train_cfm and fit where they differ from TrainerConfig's: small models trained from scratch
DEFAULTS = {"lr": 1e-3, "ema_decay": None, "grad_clip": None, "precision": "fp32"}


# ----------------------------------------------------------------------------------------- the loss
def cfm_loss(model, path, x0: torch.Tensor, x1: torch.Tensor, *, t=None, noise=None, coupling: str = "independent",
             coupling_kwargs: dict | None = None, generator: torch.Generator | None = None, cond: dict | None = None):
    """One Monte Carlo estimate of the CFM loss on a minibatch: ``mean((v(x_t, t, **cond) - u_t)^2)``.

    Pairs ``x0`` with ``x1`` by ``coupling`` (:func:`lfm_core.couplings.pair`), draws ``t`` (if not given)
    with ``path.sample_time`` and ``(x_t, u_t)`` with ``path.sample``, and returns the mean over all elements
    (the module docstring explains the scaling).
    """
    if not callable(model):
        raise TypeError(f"model must be callable (a velocity network), got {type(model).__name__}")
    check_tensor(x0, "x0")
    check_tensor(x1, "x1")
    if not isinstance(coupling, str) or coupling not in couplings.METHODS:
        raise ValueError(f"coupling must be one of {', '.join(couplings.METHODS)}, got {coupling!r}")
    coupling_kwargs = _check_coupling(coupling, coupling_kwargs)
    if cond is not None and not isinstance(cond, dict):
        raise TypeError(f"cond must be a dict of keyword arguments for the model, got {type(cond).__name__}")
    if not hasattr(path, "sample") or not hasattr(path, "sample_time"):
        raise TypeError(f"path must have sample(x0, x1, t) and sample_time(n) (lfm_core.paths or an interpolant), "
                        f"got {type(path).__name__}")
    check_generator(generator)
    if coupling != "independent":
        x0, x1 = couplings.pair(x0, x1, coupling, generator=generator, **coupling_kwargs)
    if t is None:
        t = path.sample_time(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
    xt, ut = path.sample(x0, x1, t, noise=noise, generator=generator)
    v = model(xt, t, **(cond or {}))
    if not isinstance(v, torch.Tensor) or v.shape != ut.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"the model must return a velocity shaped like x_t {tuple(ut.shape)}, got {got}")
    return (v - ut).pow(2).mean()


def _trainer_config(caller: str, config, trainer_fields: dict, *, defaults: dict = DEFAULTS,
                    **fixed) -> TrainerConfig:
    """``config`` (or ``defaults`` over TrainerConfig's defaults) with ``trainer_fields`` applied over it, then
    ``fixed`` (the caller's own arguments: ``steps``, ``batch_size``, ``seed``)."""
    if config is not None and not isinstance(config, TrainerConfig):
        raise TypeError(f"config must be a TrainerConfig or None, got {type(config).__name__}")
    names = {f.name for f in fields(TrainerConfig)}
    for name in trainer_fields:
        if name not in names:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r} (neither its own argument nor a "
                            f"TrainerConfig field: {', '.join(sorted(names - set(fixed)))})")
        if name in fixed:
            raise TypeError(f"{caller}() sets TrainerConfig.{name} itself; {name!r} cannot be passed")
    settings = dict(defaults) if config is None else config.to_dict()
    settings.update(trainer_fields)
    settings.update(fixed)
    return TrainerConfig(**settings)


def _per_member(value, members: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != members:
            raise ValueError(f"{name} must be one sampler, or a list of one per ensemble member ({members}), got "
                             f"{len(value)}")
        return list(value)
    return [value] * members


def train_cfm(model, path, source, target, *, steps: int, batch_size: int = 256, coupling: str = "independent",
              coupling_kwargs: dict | None = None, prefetch: int = 0, sampling: str = "replacement",
              paired: bool = False, labels=None, label_dropout: float = 0.0, progress: bool | None = None,
              device=None, callback=None, out_dir=None, sample_fn=None, resume: bool = True, override: bool = False,
              config: TrainerConfig | None = None, **trainer_fields) -> FitResult:
    """Train ``model`` by conditional flow matching from ``source`` to ``target`` (:class:`lfm_core.trainer.Trainer`).

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
    is what it would be alone.

    The optimisation settings are :class:`lfm_core.trainer.TrainerConfig` fields, passed by name (``lr``,
    ``weight_decay``, ``lr_schedule``, ``warmup``, ``ema_decay``, ``grad_clip``, ``precision``, ``seed``,
    ``checkpoint_every``, ...) over ``config`` (default: :data:`DEFAULTS`, then TrainerConfig's); ``steps`` and
    ``batch_size`` are this function's. ``out_dir`` keeps checkpoints, ``sample_fn`` and ``callback`` are the
    Trainer's. Returns the :class:`lfm_core.trainer.FitResult`.
    """
    check_positive_int(batch_size, "batch_size")
    if not isinstance(coupling, str) or coupling not in couplings.METHODS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(couplings.METHODS)}")
    _check_coupling(coupling, coupling_kwargs, tuple(k for k in COUPLING_KWARGS if k != "labels"))
    check_nonnegative_int(prefetch, "prefetch")
    if sampling not in ("replacement", "epochs"):
        raise ValueError(f"sampling must be 'replacement' or 'epochs', got {sampling!r}")
    check_bool(paired, "paired")
    check_bool(resume, "resume")
    check_bool(override, "override")
    label_dropout = check_probability(label_dropout, "label_dropout")
    if label_dropout > 0 and labels is None:
        raise ValueError(f"label_dropout={label_dropout} drops labels to the null label, but no labels were given: "
                         f"pass labels (the classes of the target rows) or leave label_dropout at 0")
    if not hasattr(path, "sample") or not hasattr(path, "sample_time"):
        raise TypeError(f"path must have sample(x0, x1, t) and sample_time(n) (lfm_core.paths or an interpolant), "
                        f"got {type(path).__name__}")
    members = getattr(model, "n_members", 1)
    cfg = _trainer_config("train_cfm", config, trainer_fields, steps=steps, batch_size=batch_size * members)
    sources, targets = _per_member(source, members, "source"), _per_member(target, members, "target")
    label_list = None if labels is None else _per_member(labels, members, "labels")
    for a, b in zip(sources, targets, strict=True):  # named here, not as the couplings' x0 / x1 at step 0
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape[1:] != b.shape[1:]:
            raise ValueError(f"source and target must hold points of one shape, got {tuple(a.shape[1:])} and "
                             f"{tuple(b.shape[1:])}")
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
        if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 1:
            raise TypeError(f"model.null_label must be an int >= 1 (the class index of 'no label'), got "
                            f"{null_label!r}")
        for y, x in zip(label_list, targets, strict=True):
            if not isinstance(x, torch.Tensor):
                raise TypeError("labels need target as a tensor of points (labels are its rows' classes)")
            if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != x.shape[:1]:
                raise ValueError(f"labels must be an integer tensor of shape [N] = [{x.shape[0]}] (one per target row)")
            check_labels(y, null_label)
    if device is None:
        device = next(model.parameters()).device
    batches = CFMBatches(path, sources, targets, batch_size, coupling=coupling, coupling_kwargs=coupling_kwargs,
                         prefetch=prefetch, seed=cfg.seed, paired=paired, labels=label_list,
                         label_dropout=label_dropout, null_label=null_label, sampling=sampling)

    def loss_fn(m, x0, x1, t, noise=None, labels=None):
        cond = None if labels is None else {"labels": labels}
        return cfm_loss(m, path, x0, x1, t=t, noise=noise, cond=cond) * members

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
    if not callable(model):
        raise TypeError(f"model must be callable (a velocity network), got {type(model).__name__}")
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    check_generator(generator)
    if n is None:
        if not isinstance(source, torch.Tensor):
            raise TypeError(f"source must be a tensor when n is None (every row is taken), got "
                            f"{type(source).__name__}: pass n to draw from a sampler")
        x0 = check_tensor(source, "source", min_dim=2)
        check_finite(x0, "source", boundary=True)
    else:
        check_positive_int(n, "n")
        x0 = _Sampler(source, "source", "replacement", 0).draw(n, 0, generator)
    x1 = torch.cat([integrate(model, x0[s:s + batch_size], method="euler", steps=steps).x
                    for s in range(0, x0.shape[0], batch_size)])
    return x0, x1


def fit(model: torch.nn.Module, loss_fn, *, steps: int, seed: int | None = 0, progress: bool | None = None,
        desc: str = "training", callback=None, device=None, out_dir=None, resume: bool = True,
        override: bool = False, config: TrainerConfig | None = None, **trainer_fields) -> FitResult:
    """Minimise ``loss_fn(step, generator)`` over ``model``'s parameters with AdamW: the
    :class:`lfm_core.trainer.Trainer` for a loss that draws its own batch (not split across processes).

    ``generator`` is the trainer's CPU generator (seeded with ``seed``, saved in checkpoints), so the batches
    it draws, and hence the whole run, are reproducible and resumable. ``seed`` also seeds torch's global
    generator first (``None``: neither is seeded). The optimisation settings are passed as in :func:`train_cfm`:
    TrainerConfig field names (``lr``, ``weight_decay``, ``lr_schedule``, ``warmup``, ``grad_clip``,
    ``ema_decay``, ``checkpoint_every``, ...) over ``config`` or :data:`DEFAULTS`.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    check_bool(resume, "resume")
    check_bool(override, "override")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    else:
        check_seed(seed, "seed")
        torch.manual_seed(seed)
    cfg = _trainer_config("fit", config, trainer_fields, steps=steps, batch_size=None, seed=seed)
    trainer = Trainer(model, lambda step, g: {"step": step, "generator": g},
                      lambda m, step, generator: loss_fn(step, generator), cfg, out_dir=out_dir, callback=callback,
                      progress=progress, device=device, desc=desc)
    return trainer.fit(resume=resume, override=override)
