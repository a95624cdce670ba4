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
  ``argmin <pi, C> - reg H(pi)``, solved by :func:`sinkhorn`, a log-domain Sinkhorn in torch
  (no ``exp(-C / reg)`` can underflow, however large the costs), which solves all blocks of a call
  in one batch. ``reg`` is on the scale of the squared distances; the Schrödinger bridge of noise
  level ``sigma`` uses ``reg = 2 sigma^2``. The iteration count grows like ``max C / reg``: on
  the moons -> 8 Gaussians task (costs up to ~1000) at ``reg = 2`` a 512-point plan takes a few
  hundred iterations.

``replace`` chooses how pairs are read off the plan ``pi``:

* ``replace=False`` (default): the result keeps ``x1`` in its order and permutes ``x0``. No point
  is duplicated or dropped. For ``"ot"`` this is the assignment itself; for ``"sinkhorn"`` each
  ``x1_j`` draws its partner from column ``j`` of ``pi`` restricted to the ``x0`` not taken yet
  (collisions settled by a random priority, in vectorised rounds): a permutation that follows
  the plan, approximately (its mean cost is within a few percent of the plan's in our tests).
* ``replace=True``: ``B`` pairs ``(i, j)`` are drawn from ``pi`` with replacement, as the OT-CFM
  paper's code does; points of both batches can then appear twice or not at all.

``labels`` (of ``x1``) restricts the pairing to points of the same class, for conditional
models: ``x0`` is split at random into groups of the sizes of the classes in ``x1`` and each
group is coupled with its class. Output position ``k`` always holds an ``x1`` of class
``labels[k]``, with or without replacement.

``block_size`` solves the coupling on random sub-batches: both batches are shuffled, cut into
blocks of ``block_size`` points, and each ``x0`` block is coupled with one ``x1`` block. The
exact solver's cost grows faster than quadratically in the batch, so ``k`` blocks cost far less
than one plan of ``k`` times their size (``benchmarks/results/couplings_cost.md``). The price is a
coarser coupling, the one of batch ``block_size``; notebook 02 and ``benchmarks/ot_cfm_2d.py``
measure what it costs in training time, straightness (NPE) and sample quality (W2).

Copy with: utils (``numpy``, ``POT`` for the exact plans, ``torch``).
"""

from __future__ import annotations

import numpy as np
import torch

from .utils import (
    check_finite,
    check_generator,
    check_nonnegative,
    check_positive_int,
    check_same_batch,
    check_tensor,
)

__all__ = ["METHODS", "ConvergenceError", "SINKHORN_MAX_POINTS", "pair", "pair_indices", "plan", "sinkhorn"]

METHODS = ("independent", "ot", "sinkhorn")


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return np.random.default_rng(seed)


def _cost(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    a = x0.detach().reshape(x0.shape[0], -1).to("cpu", torch.float64)
    b = x1.detach().reshape(x1.shape[0], -1).to("cpu", torch.float64)
    return torch.cdist(a, b).pow(2)


def _logsumexp(x: torch.Tensor, dim: int, floor: float) -> torch.Tensor:
    """log-sum-exp along ``dim`` (kept), with exponents below ``floor`` clamped to it.

    The clamp changes nothing measurable (a term ``exp(floor)`` times smaller than the largest one
    is far below the precision of the sum) but keeps ``exp`` off its very slow path for arguments
    that underflow.
    """
    m = x.amax(dim=dim, keepdim=True)
    return (x - m).clamp_(min=floor).exp_().sum(dim=dim, keepdim=True).log_() + m


class ConvergenceError(RuntimeError):
    """Sinkhorn did not reach its tolerance: the plan is not a coupling of the two batches."""


#: the largest block Sinkhorn solves in one piece (larger ones take minutes on a CPU: use ``block_size``)
SINKHORN_MAX_POINTS = 2048


def sinkhorn(cost: torch.Tensor, reg: float, *, tol: float = 1e-6, max_iter: int = 10_000) -> torch.Tensor:
    r"""Entropic OT plans with uniform marginals for a batch of cost matrices ``[K, n, m]`` (or ``[n, m]``).

    Log-domain Sinkhorn (Peyré & Cuturi, *Computational Optimal Transport*, Sec. 4.4): with
    potentials ``f`` and ``g``, ``log pi_ij = (f_i + g_j - C_ij) / reg + log a_i + log b_j``, and
    the updates

    .. math:: f_i = -reg \log\sum_j e^{(g_j - C_{ij}) / reg + \log b_j}, \qquad
              g_j = -reg \log\sum_i e^{(f_i - C_{ij}) / reg + \log a_i}

    alternately make the row and the column sums exact. Nothing is exponentiated outside a
    log-sum-exp, so large ``C / reg`` cannot underflow. All ``K`` problems advance together (one
    tensor operation per half-iteration), which is what makes many small blocks cheap. Stops when
    every row sum is within a relative ``tol`` of ``1 / n`` (the columns are exact after each
    ``g`` update).

    **When it cannot converge, it says so.** The iterations needed grow in proportion to ``max C / reg``
    (``benchmarks/results/couplings_cost.md``), so a ``reg`` with ``max C / reg > 4 max_iter`` is refused at
    once (``ValueError``, naming the smallest ``reg`` that can work); a run that ends above ``tol`` raises
    :class:`ConvergenceError` with the marginal error reached.

    Precision: the iterations run in float32 when ``tol >= 1e-3`` and float32's rounding of
    ``C / reg`` stays below ``tol / 10`` (faster; enough to pair points), else in float64.
    The plans are returned in float64.
    """
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    squeeze = cost.dim() == 2
    c = cost[None] if squeeze else cost
    if c.dim() != 3:
        raise ValueError(f"cost must have shape [K, n, m] or [n, m], got {tuple(cost.shape)}")
    check_tensor(c, "cost", min_dim=3)
    check_finite(c, "cost", boundary=True)
    reg = check_nonnegative(reg, "reg", strict=True)
    tol = check_nonnegative(tol, "tol", strict=True)
    check_positive_int(max_iter, "max_iter")
    c = c.detach().cpu()
    cmax = float(c.max()) - min(float(c.min()), 0.0)
    if cmax / reg > 4 * max_iter:
        raise ValueError(f"reg = {reg:g} is too small for costs up to {cmax:.3g}: Sinkhorn would need about "
                         f"{0.5 * cmax / reg:.2g} iterations (max_iter = {max_iter}). Use reg >= "
                         f"{cmax / (4 * max_iter):.3g}, raise max_iter, or the exact plan (method='ot')")
    single_ok = tol >= 1e-3 and torch.finfo(torch.float32).eps * cmax / reg < tol / 10
    dtype, floor = (torch.float32, -80.0) if single_ok else (torch.float64, -700.0)
    k, n, m = c.shape
    neg = (-c / reg).to(dtype)  # [K, n, m]; potentials below are in units of reg
    log_a, log_b = -float(np.log(n)), -float(np.log(m))
    f = torch.zeros(k, n, 1, dtype=dtype)
    g = torch.zeros(k, 1, m, dtype=dtype)
    err = float("inf")
    for it in range(1, max_iter + 1):
        f = -_logsumexp(neg + g, 2, floor) - log_b
        g = -_logsumexp(neg + f, 1, floor) - log_a
        if it % 10 == 0 or it == max_iter:
            row = _logsumexp(neg + f + g, 2, floor) + log_b  # log(row sum / a_i): 0 when exact
            err = float(row.abs().max())
            if err < tol:
                break
    else:
        raise ConvergenceError(f"Sinkhorn did not converge: after {max_iter} iterations the relative marginal error "
                               f"is {err:.2e} > tol = {tol:g} (reg = {reg:g}, costs up to {cmax:.3g}); raise reg or "
                               "max_iter, loosen tol, or use the exact plan (method='ot')")
    plans = (neg + f + g + log_a + log_b).double().exp()
    return plans[0] if squeeze else plans


def plan(x0: torch.Tensor, x1: torch.Tensor, method: str = "ot", *, reg: float = 0.05, tol: float = 1e-6) -> np.ndarray:
    r"""The coupling matrix ``pi`` (``[B, B]``, entries summing to 1) of a minibatch.

    ``"independent"`` gives ``1 / B^2`` everywhere; ``"ot"`` the exact plan; ``"sinkhorn"`` the
    entropic plan at ``reg``, to a relative marginal error ``tol`` (:func:`sinkhorn`). Inputs are
    validated as in :func:`pair`.
    """
    _check_inputs(x0, x1, method, reg, tol)
    return _plans(x0, x1, [(np.arange(x0.shape[0]), np.arange(x1.shape[0]))], method, reg, tol)[0]


def _plans(x0, x1, subsets, method, reg, tol) -> list:
    """The plan of each subset ``(rows of x0, slots of x1)`` (equal lengths), as numpy arrays."""
    if method == "independent":
        return [np.full((len(r), len(r)), 1.0 / len(r) ** 2) for r, _ in subsets]
    cost = _cost(x0, x1)
    out = [None] * len(subsets)
    if method == "ot":
        import ot  # POT; imported here because it takes seconds to import (it loads scikit-learn)

        for i, (r, c) in enumerate(subsets):
            k = len(r)
            w = np.full(k, 1.0 / k)
            out[i] = ot.emd(w, w, cost[np.ix_(r, c)].numpy(), numItermax=max(100_000, 50 * k * k))
    else:  # subsets of one size are solved together, as a batch
        by_size = {}
        for i, (r, _) in enumerate(subsets):
            by_size.setdefault(len(r), []).append(i)
        largest = max(len(r) for r, _ in subsets)
        if largest > SINKHORN_MAX_POINTS:
            raise ValueError(f"Sinkhorn on {largest} points at once takes minutes on a CPU ({largest}^2 entries per "
                             f"iteration); pass block_size <= {SINKHORN_MAX_POINTS} (e.g. 512) to couple random "
                             "sub-batches, or use method='ot'")
        for idx in by_size.values():
            blocks = torch.stack([cost[np.ix_(subsets[i][0], subsets[i][1])] for i in idx])
            for i, p in zip(idx, sinkhorn(blocks, reg, tol=tol).numpy(), strict=True):
                out[i] = p
    for p in out:
        if not np.isfinite(p).all() or p.sum() <= 0:
            raise RuntimeError(f"the {method} plan has non-finite entries or no mass (reg={reg}); try a larger reg")
    return out


def _check_inputs(x0, x1, method, reg, tol):
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
    check_finite(x0, "x0", boundary=True)
    check_finite(x1, "x1", boundary=True)
    check_nonnegative(reg, "reg", strict=True)
    check_nonnegative(tol, "tol", strict=True)


def _permutation_from_plan(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``perm`` with ``perm[j]`` the row paired with column ``j``, following the plan ``pi``.

    A permutation plan (exact OT) is read off directly. Otherwise, in rounds: every column still
    unpaired draws a row from its column of ``pi`` restricted to the rows still free (uniformly
    when that column has no free mass left); a row drawn by several columns goes to the one first
    in a random priority order, and the others draw again in the next round. Each round is one
    vectorised pass over the remaining columns.
    """
    n = pi.shape[0]
    cols = pi.argmax(axis=0)
    # A permutation plan: one positive entry per column, and all rows distinct.
    if np.unique(cols).size == n and np.count_nonzero(pi > 1e-12 * pi.max()) == n:
        return cols
    perm = np.full(n, -1, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    todo = rng.permutation(n)  # columns in priority order
    while todo.size:
        mass = pi[:, todo] * free[:, None]  # [n, k]
        total = mass.sum(axis=0)
        empty = total <= 0
        if empty.any():
            mass[:, empty] = free[:, None]
            total[empty] = free.sum()
        cum = np.cumsum(mass, axis=0)
        u = rng.random(todo.size) * total
        rows = np.minimum((cum <= u[None, :]).sum(axis=0), n - 1)
        rows = np.where(free[rows], rows, np.argmax(free))  # round-off at the top of a column: any free row
        _, first = np.unique(rows, return_index=True)  # the first column (in priority order) per row wins
        won = np.zeros(todo.size, dtype=bool)
        won[first] = True
        perm[todo[won]] = rows[won]
        free[rows[won]] = False
        todo = todo[~won]
    return perm


def pair_indices(x0: torch.Tensor, x1: torch.Tensor, method: str = "independent", *, reg: float = 0.05,
                 tol: float = 1e-3, replace: bool = False, labels=None, groups=None, block_size: int | None = None,
                 generator: torch.Generator | None = None):
    """Index form of :func:`pair`: returns ``(i0, i1)`` such that the pairs are ``(x0[i0], x1[i1])``.

    With ``replace=False``, ``i1`` is ``arange(B)`` and ``i0`` a permutation.
    """
    _check_inputs(x0, x1, method, reg, tol)
    check_generator(generator)
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be a bool, got {type(replace).__name__}")
    if block_size is not None:
        check_positive_int(block_size, "block_size")
    n = x0.shape[0]
    rng = _numpy_rng(generator)
    if labels is not None and groups is not None:
        raise ValueError("pass labels or groups, not both")
    if labels is not None:
        labels = _check_labels(labels, n, "labels")
    if groups is not None:
        groups = _check_labels(groups, n, "groups")
    if method == "independent" and not replace:
        return (torch.arange(n, device=x0.device), torch.arange(n, device=x1.device))
    # 1. sets of (rows of x0, slots of x1) to couple with each other: the whole batch, one set per
    #    class of x1 (x0 split at random) or one per group (of both batches); then cut into blocks
    if groups is not None:
        sets = [(rng.permutation(idx), idx) for idx in (np.flatnonzero(groups == c) for c in np.unique(groups))]
    elif labels is not None:
        order, sets, start = rng.permutation(n), [], 0
        for slots in (np.flatnonzero(labels == c) for c in np.unique(labels)):
            sets.append((order[start:start + slots.size], slots))
            start += slots.size
    elif block_size is not None and block_size < n:
        sets = [(rng.permutation(n), np.arange(n))]
    else:
        sets = [(np.arange(n), np.arange(n))]
    subsets = []
    for rows, slots in sets:  # rows are in random order whenever they will be cut
        if block_size is not None and block_size < slots.size:
            slots = rng.permutation(slots)
            subsets += [(rows[b:b + block_size], slots[b:b + block_size]) for b in range(0, slots.size, block_size)]
        else:
            subsets.append((rows, slots))
    # 2. their plans, 3. pairs read off each plan
    i0, i1 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for (rows, slots), pi in zip(subsets, _plans(x0, x1, subsets, method, reg, tol), strict=True):
        k = len(rows)
        if replace:
            flat = rng.choice(k * k, size=k, replace=True, p=(pi / pi.sum()).ravel())
            g0, g1 = flat // k, flat % k
        else:
            g0, g1 = _permutation_from_plan(pi, rng), np.arange(k)
        i0[slots] = rows[g0]
        i1[slots] = slots[g1]
    return (torch.as_tensor(i0, dtype=torch.long, device=x0.device),
            torch.as_tensor(i1, dtype=torch.long, device=x1.device))


def _check_labels(labels, n: int, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"{name} must hold integers, got dtype {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape [B] = [{n}] (one per point), got {labels.shape}")
    return labels


def pair(x0: torch.Tensor, x1: torch.Tensor, method: str = "independent", *, reg: float = 0.05,
         tol: float = 1e-3, replace: bool = False, labels=None, groups=None, block_size: int | None = None,
         generator: torch.Generator | None = None):
    """Pair a source batch with a target batch under a minibatch coupling; returns ``(x0, x1)``.

    Args:
        x0: source batch ``[B, ...]``.
        x1: target batch ``[B, ...]`` (same shape).
        method: ``"independent"``, ``"ot"`` (exact) or ``"sinkhorn"`` (entropic, at ``reg``).
        reg: entropic regularisation for ``"sinkhorn"``, on the scale of squared distances (> 0).
        tol: Sinkhorn's stopping threshold, the relative error of the plan's marginals
            (:func:`sinkhorn`); looser is faster, and a plan that only pairs points needs little.
        replace: ``False`` keeps ``x1`` in order and permutes ``x0`` (no point duplicated or
            dropped); ``True`` samples ``B`` pairs from the plan with replacement, as the OT-CFM
            paper's code does.
        labels: integer classes of ``x1`` (``[B]``); pairs are then formed within classes and
            output position ``k`` keeps class ``labels[k]``.
        groups: integer group of each row of *both* batches (``[B]``): points pair only within their
            group. Several independent minibatches (e.g. the per-seed batches of an ensemble)
            are then coupled in one call, and all their Sinkhorn problems solved as one batch.
        block_size: couple random sub-batches of this many points instead of the whole batch
            (faster, coarser; see the module docstring).
        generator: random generator (for the Sinkhorn permutation, sampling with replacement,
            and the random splits into classes and blocks).

    See the module docstring for the mathematics.
    """
    i0, i1 = pair_indices(x0, x1, method, reg=reg, tol=tol, replace=replace, labels=labels, groups=groups,
                          block_size=block_size, generator=generator)
    return x0[i0], x1[i1]
