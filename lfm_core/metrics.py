r"""Sample-based metrics of generative flows.

* :func:`wasserstein2`: the exact 2-Wasserstein distance between two empirical distributions,
  ``W2(a, b) = min_pi (sum_ij pi_ij |a_i - b_j|^2)^{1/2}`` (POT's ``emd2``, uniform weights).
  This is the W2 of the OT-CFM paper's tables (generated samples against a held-out set).
* :func:`path_energy`: ``PE = E_{x0} int_0^1 |v(x_t, t)|^2 dt``, from a trajectory.
* :func:`normalized_path_energy`: ``NPE = |PE - W2^2(q0, q1)| / W2^2(q0, q1)`` (Tong et al.,
  arXiv 2302.00482, Sec. 5.1). The dynamic OT problem's minimum of ``PE`` is ``W2^2(q0, q1)``
  (Benamou-Brenier), so NPE measures how far a flow is from the OT flow: 0 for it.
* :func:`psnr`: peak signal-to-noise ratio of reconstructions, ``10 log10(range^2 / MSE)``.
* :func:`nearest_neighbour_distance`: distance of each generated sample to its nearest training sample
  (a memorisation check: copies of training images sit at distance ~0).
* :func:`fid_status` / :func:`fid`: the Frechet Inception distance through ``torchmetrics`` (with
  ``torch-fidelity``'s Inception weights, the extra ``fid``: ``torch-fidelity`` needs ``torchvision``, and the
  weights are downloaded on first use); ``fid_status`` says, within seconds, whether FID can be computed here
  and why not. :class:`StandinFeatures` runs the same computation with a fixed random feature extractor
  where Inception cannot be had (the dress rehearsal), giving a number of no meaning but exercising the path.
* :func:`straightness`: ``S = int_0^1 E |(x_1 - x_0) - v(x_t, t)|^2 dt`` (Liu et al. 2023,
  Rectified Flow, Def. 3.5): 0 exactly when every trajectory is a straight line travelled at
  constant speed, so that one Euler step is exact.

Trajectories are tensors ``[T + 1, B, ...]`` (the ``trajectory`` of
:func:`lfm_core.solvers.integrate`); velocities along them are taken as finite differences
``(x_{k+1} - x_k) / (t_{k+1} - t_k)``, which are the velocities the sampler actually used for
Euler trajectories and a consistent approximation for the others.

Copy with: utils, hub (``numpy``, ``POT``, ``torch``; FID also ``torchmetrics`` and ``torch-fidelity``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .utils import check_device, check_finite, check_nonnegative, check_positive_int, check_seed, check_tensor

__all__ = ["wasserstein2", "path_energy", "normalized_path_energy", "straightness", "psnr",
           "nearest_neighbour_distance", "fid_status", "fid", "StandinFeatures"]

FID_INSTALL = "pip install torch-fidelity, or lfm-core[fid]"
FID_WEIGHTS_HOST = "github.com"  # torch-fidelity downloads its Inception weights from GitHub releases


def _as_points(x, name):
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check_tensor(x, name)
    check_finite(x, name, boundary=True)
    return x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)


def wasserstein2(a, b) -> float:
    """Exact 2-Wasserstein distance between the point clouds ``a`` ``[N, ...]`` and ``b`` ``[M, ...]``.

    Uniform weights on each cloud, squared Euclidean ground cost, network simplex
    (``ot.emd2``); returns the square root of the optimal cost. ``O(N M)`` memory; a few
    thousand points per side take well under a second.
    """
    return _wasserstein2(a, b, "a", "b")


def _wasserstein2(a, b, name_a: str, name_b: str) -> float:
    """:func:`wasserstein2`, its errors naming the arguments ``name_a`` and ``name_b``."""
    import ot  # POT; imported here because it takes seconds to import (it loads scikit-learn)

    a, b = _as_points(a, name_a), _as_points(b, name_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have points of the same dimension, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    # W2 is positively homogeneous: W2(a, b) = s W2(a / s, b / s). Dividing by the largest coordinate keeps
    # the squared distances far from float64's overflow (|x| ~ 1e200 would square to inf) and underflow.
    scale = float(max(a.abs().max(), b.abs().max()))
    if scale == 0.0:
        return 0.0
    a, b = a / scale, b / scale
    # direct differences, not cdist's matrix-product shortcut, which loses precision near 0
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    wa, wb = np.full(a.shape[0], 1.0 / a.shape[0]), np.full(b.shape[0], 1.0 / b.shape[0])
    w2sq = float(ot.emd2(wa, wb, cost, numItermax=max(100_000, 50 * a.shape[0] * b.shape[0])))
    return scale * math.sqrt(max(w2sq, 0.0))


def _check_trajectory(trajectory, times):
    check_tensor(trajectory, "trajectory", min_dim=3)
    check_finite(trajectory, "trajectory", boundary=True)
    if trajectory.shape[0] < 2:
        raise ValueError(
            f"trajectory needs at least 2 time points [T + 1, B, ...], got shape {tuple(trajectory.shape)}"
        )
    traj = trajectory.detach().to(torch.float64)
    if times is None:
        times = torch.linspace(0.0, 1.0, traj.shape[0], dtype=torch.float64)
    else:
        kind = getattr(getattr(times, "dtype", None), "kind", None)  # a NumPy array's
        if isinstance(times, torch.Tensor) and (times.is_complex() or times.dtype == torch.bool) or kind in ("c", "b"):
            raise TypeError(f"times must hold real numbers, got dtype {times.dtype}")
        try:
            times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"times must be a sequence or tensor of numbers, got {type(times).__name__}") from None
        if not bool(torch.isfinite(times).all()):
            raise ValueError("times contains non-finite values")
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
    w2sq = _wasserstein2(source, target, "source", "target") ** 2
    if w2sq == 0:
        raise ValueError("source and target have W2 = 0: the normalised path energy is undefined")
    return abs(path_energy(trajectory, times) - w2sq) / w2sq


def straightness(trajectory: torch.Tensor, times=None) -> float:
    """Rectified Flow's ``S = int E |(x_1 - x_0) - v(x_t, t)|^2 dt`` from a trajectory ``[T + 1, B, ...]``."""
    traj, dt, vel = _check_trajectory(trajectory, times)
    total = (traj[-1] - traj[0]) / (dt.sum())
    dev = (vel - total[None]).reshape(vel.shape[0], vel.shape[1], -1).pow(2).sum(-1).mean(1)
    return float((dev * dt).sum())


def psnr(reference: torch.Tensor, estimate: torch.Tensor, *, data_range: float = 2.0) -> float:
    """Mean over images of ``10 log10(data_range^2 / MSE)`` in dB (``data_range`` 2 for images in ``[-1, 1]``)."""
    check_tensor(reference, "reference")
    check_tensor(estimate, "estimate")
    if reference.shape != estimate.shape:
        raise ValueError(f"reference and estimate must have the same shape, got {tuple(reference.shape)} and "
                         f"{tuple(estimate.shape)}")
    check_finite(reference, "reference", boundary=True)
    check_finite(estimate, "estimate", boundary=True)
    data_range = check_nonnegative(data_range, "data_range", strict=True)
    mse = (reference.double() - estimate.double()).reshape(len(reference), -1).pow(2).mean(1).clamp_min(1e-20)
    return float((10 * torch.log10(data_range**2 / mse)).mean())


def nearest_neighbour_distance(samples: torch.Tensor, train: torch.Tensor, *, candidates: int = 8,
                               chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from each of ``samples`` ``[N, ...]`` to its nearest point of ``train`` ``[M, ...]``.

    The search runs as matrix products, ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` (fast, but it loses digits where two
    points are close); the ``candidates`` nearest points it finds for each sample are then measured exactly, so the
    distance returned is exact unless more than ``candidates`` training points tie within that rounding. ``chunk``
    samples are searched at a time, which bounds the memory to ``chunk x M`` distances.
    """
    a, b = _as_points(samples, "samples"), _as_points(train, "train")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples and train must have points of the same size, got {a.shape[1]} and {b.shape[1]}")
    check_positive_int(candidates, "candidates")
    check_positive_int(chunk, "chunk")
    scale = float(max(a.abs().max(), b.abs().max())) or 1.0  # homogeneous: no overflow for huge coordinates
    a, b = a / scale, b / scale
    k = min(candidates, len(b))
    out = []
    for part in a.split(chunk):
        near = torch.cdist(part, b, compute_mode="use_mm_for_euclid_dist").topk(k, dim=1, largest=False).indices
        out.append((part[:, None, :] - b[near]).norm(dim=-1).min(dim=1).values)   # exact, on the candidates
    return scale * torch.cat(out)


def _fid_weights_cached() -> bool:
    from pathlib import Path

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return any(hub.glob("*inception*")) if hub.is_dir() else False


def fid_status(feature_extractor=None) -> tuple[bool, str]:
    """``(True, "")`` when :func:`fid` can run here, else ``(False, why)``; never downloads anything.

    FID with Inception-v3 needs ``torchmetrics`` and ``torch-fidelity`` installed and the Inception weights
    either in torch's hub cache or downloadable (GitHub reachable, :mod:`lfm_core.hub`). With a
    ``feature_extractor`` of one's own, ``torchmetrics`` alone.
    """
    import importlib.util

    if feature_extractor is not None and not isinstance(feature_extractor, torch.nn.Module):
        raise TypeError(f"feature_extractor must be a torch.nn.Module or None (None: Inception-v3), got "
                        f"{type(feature_extractor).__name__}")
    needed = ("torchmetrics",) if feature_extractor is not None else ("torchmetrics", "torch_fidelity")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed ({FID_INSTALL}; torch-fidelity needs torchvision)"
    if feature_extractor is None and not _fid_weights_cached():
        from . import hub

        reason = hub.probe(FID_WEIGHTS_HOST)
        if reason is not None:
            return False, (f"the Inception weights are not cached in {torch.hub.get_dir()} and {FID_WEIGHTS_HOST} "
                           f"cannot be reached ({reason})")
    return True, ""


class StandinFeatures(torch.nn.Module):
    """A fixed, randomly initialised convolutional feature extractor: FID's computation without Inception's weights.

    Maps images ``[N, 3, H, W]`` in ``[0, 1]`` to ``dim`` features (three stride-2 convolutions with ReLU, global
    average pooling). The FID it gives is a number of no meaning; it lets the dress rehearsal and the tests run
    :func:`fid`'s exact code path (torchmetrics' custom-feature hook) where the Inception weights cannot be
    downloaded.
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(check_seed(seed, "seed"))
        self.num_features = check_positive_int(dim, "dim")
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, stride=2, padding=1)
                                         for a, b in ((3, 16), (16, 32), (32, dim)))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5)
                conv.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        for conv in self.convs:
            h = torch.relu(conv(h))
        return h.mean((2, 3))


def fid(real: torch.Tensor, fake: torch.Tensor, *, device=None, batch_size: int = 64,
        feature_extractor: torch.nn.Module | None = None) -> float:
    """Frechet Inception distance between two sets of images ``[N, C, H, W]`` in ``[-1, 1]`` (1 or 3 channels).

    ``torchmetrics.image.fid.FrechetInceptionDistance``: the Frechet distance between Gaussians fitted to the
    features of the two sets, ``|m_r - m_f|^2 + tr(C_r + C_f - 2 (C_r C_f)^{1/2})`` (Heusel et al. 2017), with
    the 2048 features of Inception-v3 (images resized to 299 x 299 inside). FID on a few hundred images is
    biased upwards and only comparable at equal counts; the papers use 50k (LFM: against the full CelebA-HQ
    data set). ``feature_extractor``: another module mapping images in ``[0, 1]`` to features (e.g.
    :class:`StandinFeatures`), through the same computation. Raises ``RuntimeError`` with the reason (see
    :func:`fid_status`) when it cannot run here.
    """
    check_positive_int(batch_size, "batch_size")
    if feature_extractor is not None and not isinstance(feature_extractor, torch.nn.Module):
        raise TypeError(f"feature_extractor must be a torch.nn.Module or None, got {type(feature_extractor).__name__}")
    for x, name in ((real, "real"), (fake, "fake")):
        check_tensor(x, name, min_dim=4)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{name} images must have 1 or 3 channels, got {x.shape[1]}")
        check_finite(x, name, boundary=True)
        if x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3:
            raise ValueError(f"{name} images must lie in [-1, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        if len(x) < 2:
            raise ValueError(f"{name} needs at least 2 images (FID fits a covariance), got {len(x)}")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake images must have one shape, got {tuple(real.shape[1:])} and "
                         f"{tuple(fake.shape[1:])}")
    ok, why = fid_status(feature_extractor)
    if not ok:
        raise RuntimeError(f"FID cannot be computed here: {why}")
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = check_device(device) if device is not None else real.device
    if feature_extractor is None:
        metric = FrechetInceptionDistance(feature=2048, normalize=True)
    else:
        metric = FrechetInceptionDistance(feature=feature_extractor.eval(), normalize=True,
                                          input_img_size=(3, *real.shape[2:]))
    metric = metric.to(device)
    for x, is_real in ((real, True), (fake, False)):
        for i in range(0, len(x), batch_size):
            b = x[i:i + batch_size].to(device).float().clamp(-1, 1)
            b = b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b
            metric.update((b + 1) / 2, real=is_real)
    return max(float(metric.compute()), 0.0)  # rounding can leave -1e-8 for identical sets
