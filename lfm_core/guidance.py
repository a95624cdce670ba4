r"""Classifier-free guidance for flow matching (Ho & Salimans 2022; on velocities as in LFM, Dao et al. 2023).

One network learns both the conditional velocity ``v_c(x, t) = v(x, t, y)`` and the unconditional one
``v_u(x, t) = v(x, t, null)``: during training each label is replaced by the *null label* with
probability ``p`` (:func:`drop_labels`, ``p = 0.1`` by default as in the paper). At sampling time the two
are mixed,

    ``v_w(x, t) = v_u(x, t) + w (v_c(x, t) - v_u(x, t))``,

``w = 1`` being the plain conditional model and ``w > 1`` pushing samples further towards what makes
``y`` likely (sharper, more recognisable, less diverse). :func:`guided_velocity` returns ``v_w`` as a
function ``(x, t) -> velocity`` usable with every solver of :mod:`lfm_core.solvers`; for ``w != 1`` it
evaluates ``v_c`` and ``v_u`` in one batched forward pass of ``2B`` rows, and for ``w = 1`` it makes a
single conditional pass.

Works with any velocity model whose ``forward`` takes ``(x, t, labels=..., cond=...)`` and that has
``num_classes`` and ``null_label`` attributes (:class:`lfm_core.nets.ImageVelocity`).

Copy with: utils (``torch`` only).
"""

from __future__ import annotations

import math

import torch

from .utils import as_time, check_bool, check_finite, check_generator, check_positive_int, check_tensor

__all__ = ["drop_labels", "check_labels", "guided_velocity"]


def _num_classes(model) -> int:
    n = getattr(model, "num_classes", None)
    if n is None or not hasattr(model, "null_label"):
        raise ValueError("guidance needs a model built with classes (num_classes=...) and a null label")
    check_positive_int(n, "model.num_classes")
    null = model.null_label
    if isinstance(null, bool) or not isinstance(null, int) or null < 0:
        raise TypeError(f"model.null_label must be an int >= 0 (the class index of 'no label'), got {null!r}")
    return n


def check_labels(labels, num_classes: int, *, allow_null: bool = False, batch: int | None = None) -> torch.Tensor:
    """Check that ``labels`` is an integer tensor ``[B]`` with values in ``[0, num_classes)``.

    With ``allow_null`` the null label ``num_classes`` is accepted as well.
    """
    check_positive_int(num_classes, "num_classes")
    check_bool(allow_null, "allow_null")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32, torch.int64, torch.int16,
                                                                    torch.uint8):
        raise TypeError(f"labels must be an integer tensor, got {type(labels).__name__}"
                        + (f" of dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else ""))
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape [B], got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("labels is empty (shape [0]): there is nothing to label")
    if batch is not None and labels.shape[0] != batch:
        raise ValueError(f"labels must have {batch} entries (one per sample), got {labels.shape[0]}")
    top = num_classes if allow_null else num_classes - 1
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > top):
        raise ValueError(f"labels must lie in [0, {top}]" + (f" ({num_classes} is the null label)" if allow_null
                                                              else f" ({num_classes} classes)")
                         + f", got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def drop_labels(labels: torch.Tensor, null_label: int, p: float = 0.1, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (training for classifier-free guidance).

    ``labels`` must lie in ``[0, null_label)``; returns a new tensor. ``p = 0`` trains a purely
    conditional model (no guidance possible), ``p = 1`` a purely unconditional one.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= float(p) <= 1.0):
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    check_positive_int(null_label, "null_label")  # an int: 3.7 is no class index
    check_generator(generator)
    if (isinstance(labels, torch.Tensor) and labels.numel() and labels.dtype != torch.bool
            and not labels.is_floating_point() and not labels.is_complex() and int(labels.max()) >= null_label):
        raise ValueError(f"labels must lie in [0, {null_label - 1}], below null_label={null_label}, got values up to "
                         f"{int(labels.max())}: null_label is among the labels (it must be a class of its own)")
    labels = check_labels(labels, null_label)
    u = torch.rand(labels.shape[0], generator=generator, device="cpu").to(labels.device)
    return torch.where(u < p, torch.full_like(labels, null_label), labels)


def guided_velocity(model, labels: torch.Tensor, scale: float = 1.0, *, cond: torch.Tensor | None = None):
    r"""The guided velocity ``v_u + scale (v_c - v_u)`` for fixed ``labels`` ``[B]``, as a function ``(x, t)``.

    ``scale`` (``w``) must be finite; ``1`` is the conditional velocity alone and ``0`` the unconditional
    one (one forward pass of ``B`` rows per call each), any other value costs one batched pass of ``2B`` rows.
    ``cond`` (extra conditioning channels, e.g. an inpainting mask) is passed to both branches. ``labels`` may
    contain the null label: those rows are unconditional whatever ``w``.
    """
    num_classes = _num_classes(model)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(float(scale)):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
    labels = check_labels(labels, num_classes, allow_null=True)
    if cond is not None:
        check_tensor(cond, "cond", min_dim=2)
        check_finite(cond, "cond", boundary=True)
        if cond.shape[0] != labels.shape[0]:
            raise ValueError(f"cond has {cond.shape[0]} rows but labels {labels.shape[0]}")
    w = float(scale)
    null = torch.full_like(labels, model.null_label)

    def velocity(x, t):
        check_tensor(x, "x")
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but {labels.shape[0]} labels were given")
        t = as_time(t, x.shape[0], like=x)
        y = labels.to(x.device)
        c = None if cond is None else cond.to(x.device)
        if w == 1.0:
            return model(x, t, labels=y, cond=c)
        if w == 0.0:
            return model(x, t, labels=null.to(x.device), cond=c)
        both = model(torch.cat([x, x]), torch.cat([t, t]), labels=torch.cat([y, null.to(x.device)]),
                     cond=None if c is None else torch.cat([c, c]))
        v_c, v_u = both.chunk(2)
        return v_u + w * (v_c - v_u)

    return velocity
