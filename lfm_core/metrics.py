r"""Sample-based metrics of generative flows.

* :func:`wasserstein2`: the exact 2-Wasserstein distance between two empirical distributions,
  ``W2(a, b) = min_pi (sum_ij pi_ij |a_i - b_j|^2)^{1/2}`` (POT's ``emd2``, uniform weights).
  This is the W2 of the OT-CFM paper's tables (generated samples against a held-out set).
* :func:`path_energy`: ``PE = E_{x0} int_0^1 |v(x_t, t)|^2 dt``, from a trajectory.
* :func:`normalized_path_energy`: ``NPE = |PE - W2^2(q0, q1)| / W2^2(q0, q1)`` (Tong et al.,
  arXiv 2302.00482, Sec. 5.1). The dynamic OT problem's minimum of ``PE`` is ``W2^2(q0, q1)``
  (Benamou-Brenier), so NPE measures how far a flow is from the OT flow: 0 for it.
* :func:`straightness`: ``S = int_0^1 E |(x_1 - x_0) - v(x_t, t)|^2 dt`` (Liu et al. 2023,
  Rectified Flow, Def. 3.5): 0 exactly when every trajectory is a straight line travelled at
  constant speed, so that one Euler step is exact.

Trajectories are tensors ``[T + 1, B, ...]`` (the ``trajectory`` of
:func:`lfm_core.solvers.integrate`); velocities along them are taken as finite differences
``(x_{k+1} - x_k) / (t_{k+1} - t_k)``, which are the velocities the sampler actually used for
Euler trajectories and a consistent approximation for the others.

Depends on ``numpy``, ``POT``, ``torch`` and :mod:`lfm_core.utils`.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import torch

from .utils import check_finite, check_tensor

__all__ = ["wasserstein2", "path_energy", "normalized_path_energy", "straightness"]


def _as_points(x, name):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check_tensor(x, name)
    check_finite(x, name)
    return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)


def wasserstein2(a, b) -> float:
    """Exact 2-Wasserstein distance between the point clouds ``a`` ``[N, ...]`` and ``b`` ``[M, ...]``.

    Uniform weights on each cloud, squared Euclidean ground cost, network simplex
    (``ot.emd2``); returns the square root of the optimal cost. ``O(N M)`` memory; a few
    thousand points per side take well under a second.
    """
    a, b = _as_points(a, "a"), _as_points(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have points of the same dimension, got {a.shape[1]} and {b.shape[1]}")
    # direct differences, not cdist's matrix-product shortcut, which loses precision near 0
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    wa, wb = np.full(a.shape[0], 1.0 / a.shape[0]), np.full(b.shape[0], 1.0 / b.shape[0])
    w2sq = float(ot.emd2(wa, wb, cost, numItermax=max(100_000, 50 * a.shape[0] * b.shape[0])))
    return math.sqrt(max(w2sq, 0.0))


def _check_trajectory(trajectory, times):
    check_tensor(trajectory, "trajectory", min_dim=3)
    check_finite(trajectory, "trajectory")
    if trajectory.shape[0] < 2:
        raise ValueError(
            f"trajectory needs at least 2 time points [T + 1, B, ...], got shape {tuple(trajectory.shape)}"
        )
    traj = trajectory.detach().to(torch.float64)
    if times is None:
        times = torch.linspace(0.0, 1.0, traj.shape[0], dtype=torch.float64)
    else:
        times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
        if times.shape != (traj.shape[0],):
            raise ValueError(f"times must have shape [T + 1] = [{traj.shape[0]}], got {tuple(times.shape)}")
        if not bool((times[1:] > times[:-1]).all()):
            raise ValueError("times must be strictly increasing")
    dt = (times[1:] - times[:-1]).to(traj.device)
    vel = (traj[1:] - traj[:-1]) / dt.reshape(-1, *([1] * (traj.dim() - 1)))
    return traj, dt, vel


def path_energy(trajectory: torch.Tensor, times=None) -> float:
    """``E_{x0} int |v|^2 dt`` from a trajectory ``[T + 1, B, ...]`` at ``times`` (default: even in [0, 1])."""
    traj, dt, vel = _check_trajectory(trajectory, times)
    speed2 = vel.reshape(vel.shape[0], vel.shape[1], -1).pow(2).sum(-1).mean(1)  # [T]
    return float((speed2 * dt).sum())


def normalized_path_energy(trajectory: torch.Tensor, source, target, times=None) -> float:
    """``|PE - W2^2(source, target)| / W2^2(source, target)`` (OT-CFM paper, Sec. 5.1).

    ``source`` and ``target`` are samples of the two distributions the flow connects (for the
    paper's tables, the held-out test sets); ``W2^2`` between them is computed exactly.
    """
    w2sq = wasserstein2(source, target) ** 2
    if w2sq == 0:
        raise ValueError("source and target have W2 = 0: the normalised path energy is undefined")
    return abs(path_energy(trajectory, times) - w2sq) / w2sq


def straightness(trajectory: torch.Tensor, times=None) -> float:
    """Rectified Flow's ``S = int E |(x_1 - x_0) - v(x_t, t)|^2 dt`` from a trajectory ``[T + 1, B, ...]``."""
    traj, dt, vel = _check_trajectory(trajectory, times)
    total = (traj[-1] - traj[0]) / (dt.sum())
    dev = (vel - total[None]).reshape(vel.shape[0], vel.shape[1], -1).pow(2).sum(-1).mean(1)
    return float((dev * dt).sum())
