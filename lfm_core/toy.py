r"""Two-dimensional toy distributions, defined as in the OT-CFM paper's experiments.

``sample(name, n, generator=...)`` draws ``n`` points as a ``[n, 2]`` float32 tensor. The
definitions follow the code behind Table 2 of Tong et al. (arXiv 2302.00482), read from its
``runner/`` data modules; where we differ, it says so below.

================== ===========================================================================
name               definition
================== ===========================================================================
gaussian           ``N(0, I_2)``, the source of the ``N -> *`` tasks.
8gaussians         8 equally weighted ``N(m_k, 1^2 I)``, ``m_k = 5 (cos 2 pi k / 8, sin 2 pi k / 8)``
                   (the paper's ``gaussians`` data module: torchdyn's ring, radius 5, std 1).
moons              two interleaved half circles with Gaussian noise of std 0.05 per coordinate,
                   scaled by 2 and shifted by -1 along x (the paper's sklearn ``moons``).
scurve             the S curve in the (x, z) plane with noise std 0.05, scaled by 1.5
                   (the paper's sklearn ``scurve``).
checkerboard       uniform on the 8 dark squares of a 4 x 4 board over ``[-2, 2]^2`` (FFJORD's
                   checkerboard; not in the paper's table).
twodim_moons       the source of the paper's ``moons -> 8gaussians`` task: moons with noise std
                   0.1, standardised (one scalar mean and std over both coordinates) and
                   scaled by 7.
twodim_8gaussians  the target of that task: 8 Gaussians of std 1.5 at radius 12.
================== ===========================================================================

Two deliberate differences from scikit-learn's generators: points sit at *uniformly random*
positions along the curves (sklearn spaces them evenly; the limit distribution is the same, and
minibatches drawn independently are then truly independent), and the standardisation of
``twodim_moons`` uses the population mean and std (computed in closed form below) rather than
those of each sample, so the distribution does not depend on ``n``. Everything is drawn with
``torch`` from the given generator, so a seed fixes the sample.

Copy with: mixtures, utils (``torch`` only).
"""

from __future__ import annotations

import math

import torch

from .mixtures import GaussianMixture
from .utils import check_positive_int

__all__ = ["NAMES", "sample", "gaussian_mixture"]

NAMES = ("gaussian", "8gaussians", "moons", "scurve", "checkerboard", "twodim_moons", "twodim_8gaussians")


def _ring(radius: float, std: float) -> GaussianMixture:
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, std)


def gaussian_mixture(name: str) -> GaussianMixture:
    """The toy distributions that are Gaussian mixtures, as :class:`GaussianMixture` objects.

    ``"gaussian"``, ``"8gaussians"`` and ``"twodim_8gaussians"``: their densities and exact
    marginal velocities are then available in closed form.
    """
    if name == "gaussian":
        return GaussianMixture(torch.zeros(1, 2), 1.0)
    if name == "8gaussians":
        return _ring(5.0, 1.0)
    if name == "twodim_8gaussians":
        return _ring(12.0, 1.5)
    raise ValueError(
        f"name must be one of the Gaussian mixtures 'gaussian', '8gaussians', 'twodim_8gaussians', got {name!r}"
    )


def _moons(n: int, noise: float, generator) -> torch.Tensor:
    """sklearn's make_moons with uniform positions along each half circle."""
    n_out = n // 2
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    outer = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    inner = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    is_outer = (torch.arange(n) < n_out)[:, None]
    x = torch.where(is_outer, outer, inner)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x[torch.randperm(n, generator=generator)]


def _moons_population_stats(noise: float) -> tuple[float, float]:
    """Mean and std over both coordinates of make_moons(noise), pooled (as the paper standardises).

    With theta ~ U(0, pi): E cos = 0, E cos^2 = E sin^2 = 1/2, E sin = 2/pi. The outer arc is
    (cos, sin), the inner (1 - cos, 1/2 - sin), each half of the points. Pooling x and y:
    mean = (E x + E y) / 2 = (1/2 + 1/4) / 2; E x^2 = 1; E y^2 = (1/2 + 3/4 - 2/pi) / 2; noise adds
    noise^2 to each second moment.
    """
    mean = (0.5 + 0.25) / 2
    ex2 = 1.0 + noise**2
    ey2 = (0.5 + 0.75 - 2 / math.pi) / 2 + noise**2
    var = (ex2 + ey2) / 2 - mean**2
    return mean, math.sqrt(var)


def _scurve(n: int, noise: float, generator) -> torch.Tensor:
    """sklearn's make_s_curve, keeping the x and z coordinates."""
    t = 3 * math.pi * (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5)
    x = torch.sin(t)
    z = torch.sign(t) * (torch.cos(t) - 1)
    pts = torch.stack([x, z], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def _checkerboard(n: int, generator) -> torch.Tensor:
    x1 = 4 * torch.rand(n, generator=generator, dtype=torch.float64) - 2
    x2 = torch.rand(n, generator=generator, dtype=torch.float64)
    x2 = x2 - 2 * torch.randint(0, 2, (n,), generator=generator).double() + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1)


_SAMPLERS: dict = {}  # the mixtures behind sample(), private so that no caller can change them


def sample(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points of the toy distribution ``name`` (one of :data:`NAMES`) as ``[n, 2]`` float32."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in NAMES:
        raise ValueError(f"unknown toy data set name {name!r}; choose one of {', '.join(NAMES)}")
    check_positive_int(n, "n")
    if name in ("gaussian", "8gaussians", "twodim_8gaussians"):
        if name not in _SAMPLERS:  # built once: its checks cost as much as the draw itself
            _SAMPLERS[name] = gaussian_mixture(name)
        x = _SAMPLERS[name].sample(n, generator=generator, dtype=torch.float64)
    elif name == "moons":
        x = _moons(n, 0.05, generator) * 2
        x[:, 0] -= 1
    elif name == "twodim_moons":
        mean, std = _moons_population_stats(0.1)
        x = (_moons(n, 0.1, generator) - mean) / std * 7
    elif name == "scurve":
        x = _scurve(n, 0.05, generator) * 1.5
    else:  # checkerboard
        x = _checkerboard(n, generator)
    return x.float()
