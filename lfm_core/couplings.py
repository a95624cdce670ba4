r"""Minibatch couplings: which source point ``x0`` is paired with which target point ``x1``.

Conditional flow matching needs pairs ``(x0, x1)`` drawn from a *coupling* ``q(x0, x1)`` whose
marginals are the source and the target. Tong et al. (arXiv 2302.00482, Sec. 3.2-3.4) compare:

* ``"independent"`` (I-CFM): ``q = q0 x q1``; the batches are already independent draws, so the
  pairing is the identity.
* ``"ot"`` (OT-CFM): the exact optimal-transport plan of the minibatch for the squared Euclidean
  cost ``C_ij = |x0_i - x1_j|^2``, solved by POT's network simplex (``ot.emd``). With equal
  batch sizes and uniform weights the plan is a permutation matrix (a vertex of the Birkhoff
  polytope), i.e. an assignment.
* ``"sinkhorn"`` (SB-CFM with :class:`lfm_core.paths.BridgePath`): the entropic plan
  ``argmin <pi, C> - reg H(pi)``, solved by POT's log-domain Sinkhorn
  (``ot.sinkhorn(method="sinkhorn_log")``) on torch tensors, so that no ``exp(-C / reg)``
  underflows however large the costs are (on a 2-core CPU at B = 512: about 40 ms at reg = 2 and
  150 ms at reg = 0.5; the iterations grow like ``max C / reg``, so very small ``reg`` is slow
  and POT warns when it stops before converging). ``reg`` is on the scale of the
  squared distances; the Schrödinger bridge of noise level ``sigma`` uses ``reg = 2 sigma^2``.

``replace`` chooses how pairs are read off the plan ``pi``:

* ``replace=False`` (default): the result keeps ``x1`` in its order and permutes ``x0``. No point
  is duplicated or dropped. For ``"ot"`` this is the assignment itself; for ``"sinkhorn"`` each
  ``x1_j`` (in random order) draws its partner from column ``j`` of ``pi`` restricted to the
  ``x0`` not taken yet, a permutation that follows the plan (exact when the plan is a
  permutation, approximate otherwise).
* ``replace=True``: ``B`` pairs ``(i, j)`` are drawn from ``pi`` with replacement, as the OT-CFM
  paper's code does; points of both batches can then appear twice or not at all.

``labels`` (of ``x1``) restricts the pairing to points of the same class, for conditional
models: ``x0`` is split at random into groups of the sizes of the classes in ``x1`` and each
group is coupled with its class. Output position ``k`` always holds an ``x1`` of class
``labels[k]``, with or without replacement.

Depends on ``numpy``, ``POT``, ``torch`` and :mod:`lfm_core.utils`.
"""

from __future__ import annotations

import numpy as np
import ot
import torch

from .utils import check_finite, check_nonnegative, check_same_batch, check_tensor

__all__ = ["METHODS", "pair", "pair_indices", "plan"]

METHODS = ("independent", "ot", "sinkhorn")


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return np.random.default_rng(seed)


def _cost(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    a = x0.detach().reshape(x0.shape[0], -1).to("cpu", torch.float64)
    b = x1.detach().reshape(x1.shape[0], -1).to("cpu", torch.float64)
    return torch.cdist(a, b).pow(2)


def plan(x0: torch.Tensor, x1: torch.Tensor, method: str = "ot", *, reg: float = 0.05) -> np.ndarray:
    r"""The coupling matrix ``pi`` (``[B, B]``, entries summing to 1) of a minibatch.

    ``"independent"`` gives ``1 / B^2`` everywhere; ``"ot"`` the exact plan; ``"sinkhorn"`` the
    entropic plan at ``reg``. Inputs are validated as in :func:`pair`.
    """
    _check_inputs(x0, x1, method, reg)
    return _plan(x0, x1, method, reg)


def _plan(x0, x1, method, reg) -> np.ndarray:
    n = x0.shape[0]
    if method == "independent":
        return np.full((n, n), 1.0 / n**2)
    cost = _cost(x0, x1)
    if method == "ot":
        w = np.full(n, 1.0 / n)
        pi = ot.emd(w, w, cost.numpy(), numItermax=max(100_000, 50 * n * n))
    else:  # POT's torch backend: vectorised, far faster than its numpy path for the log-domain updates
        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        pi = ot.sinkhorn(w, w, cost, reg, method="sinkhorn_log", numItermax=10_000, stopThr=1e-6).numpy()
    if not np.isfinite(pi).all() or pi.sum() <= 0:
        raise RuntimeError(f"the {method} plan has non-finite entries or no mass (reg={reg}); try a larger reg")
    return pi


def _check_inputs(x0, x1, method, reg):
    check_tensor(x0, "x0")
    check_tensor(x1, "x1")
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown coupling method {method!r}; choose one of {', '.join(METHODS)}")
    check_same_batch(x0, x1, "x0", "x1", same_shape=False)
    if x0.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"x0 and x1 must have the same point shape, got {tuple(x0.shape[1:])} and {tuple(x1.shape[1:])}"
        )
    check_finite(x0, "x0")
    check_finite(x1, "x1")
    check_nonnegative(reg, "reg", strict=True)


def _permutation_from_plan(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``perm`` with ``perm[j]`` the row paired with column ``j``, following the plan ``pi``."""
    n = pi.shape[0]
    cols = pi.argmax(axis=0)
    # A permutation plan: one positive entry per column, and all rows distinct.
    if np.unique(cols).size == n and np.count_nonzero(pi > 1e-12 * pi.max()) == n:
        return cols
    perm = np.empty(n, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    for j in rng.permutation(n):
        col = np.where(free, pi[:, j], 0.0)
        total = col.sum()
        if total <= 0:  # the column's mass is all taken: any free row
            col, total = free.astype(np.float64), float(free.sum())
        i = int(np.searchsorted(np.cumsum(col), rng.random() * total, side="right"))
        i = min(i, n - 1)
        while not free[i]:  # guard against round-off at the end of the cumulative sum
            i -= 1
        perm[j] = i
        free[i] = False
    return perm


def _pair_group(x0, x1, method, reg, replace, rng):
    """Indices (into x0 and x1) of the pairs of one group."""
    n = x0.shape[0]
    if method == "independent" and not replace:
        return np.arange(n), np.arange(n)
    pi = _plan(x0, x1, method, reg)
    if replace:
        p = pi.ravel() / pi.sum()
        flat = rng.choice(n * n, size=n, replace=True, p=p)
        return flat // n, flat % n
    return _permutation_from_plan(pi, rng), np.arange(n)


def pair_indices(x0: torch.Tensor, x1: torch.Tensor, method: str = "independent", *, reg: float = 0.05,
                 replace: bool = False, labels=None, generator: torch.Generator | None = None):
    """Index form of :func:`pair`: returns ``(i0, i1)`` such that the pairs are ``(x0[i0], x1[i1])``.

    With ``replace=False``, ``i1`` is ``arange(B)`` and ``i0`` a permutation.
    """
    _check_inputs(x0, x1, method, reg)
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
    n = x0.shape[0]
    rng = _numpy_rng(generator)
    if labels is None:
        i0, i1 = _pair_group(x0, x1, method, reg, replace, rng)
    else:
        labels = _check_labels(labels, n)
        order = rng.permutation(n)  # x0 split at random into groups
        i0, i1 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        start = 0
        for c in np.unique(labels):
            slots = np.flatnonzero(labels == c)  # positions of class c in x1 (and in the output)
            rows = order[start:start + slots.size]
            start += slots.size
            g0, g1 = _pair_group(x0[torch.as_tensor(rows, device=x0.device)],
                                 x1[torch.as_tensor(slots, device=x1.device)], method, reg, replace, rng)
            i0[slots] = rows[g0]
            i1[slots] = slots[g1]
    return (torch.as_tensor(np.asarray(i0), dtype=torch.long, device=x0.device),
            torch.as_tensor(np.asarray(i1), dtype=torch.long, device=x1.device))


def _check_labels(labels, n: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must hold integers, got dtype {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integers, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [B] = [{n}] (one label per x1), got {labels.shape}")
    return labels


def pair(x0: torch.Tensor, x1: torch.Tensor, method: str = "independent", *, reg: float = 0.05,
         replace: bool = False, labels=None, generator: torch.Generator | None = None):
    """Pair a source batch with a target batch under a minibatch coupling; returns ``(x0, x1)``.

    Args:
        x0: source batch ``[B, ...]``.
        x1: target batch ``[B, ...]`` (same shape).
        method: ``"independent"``, ``"ot"`` (exact) or ``"sinkhorn"`` (entropic, at ``reg``).
        reg: entropic regularisation for ``"sinkhorn"``, on the scale of squared distances (> 0).
        replace: ``False`` keeps ``x1`` in order and permutes ``x0`` (no point duplicated or
            dropped); ``True`` samples ``B`` pairs from the plan with replacement, as the OT-CFM
            paper's code does.
        labels: integer classes of ``x1`` (``[B]``); pairs are then formed within classes and
            output position ``k`` keeps class ``labels[k]``.
        generator: random generator (for the Sinkhorn permutation, sampling with replacement,
            and the split of ``x0`` into classes).

    See the module docstring for the mathematics.
    """
    i0, i1 = pair_indices(x0, x1, method, reg=reg, replace=replace, labels=labels, generator=generator)
    return x0[i0], x1[i1]
