import math

import numpy as np
import pytest
import torch

from lfm_core.metrics import normalized_path_energy, path_energy, straightness, wasserstein2


def test_w2_gaussian_closed_form(gen):
    """W2^2(N(m1, s1^2 I), N(m2, s2^2 I)) = |m1 - m2|^2 + D (s1 - s2)^2, approached by large samples."""
    n = 3000
    a = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 1.0
    b = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 2.0 + torch.tensor([3.0, -1.0], dtype=torch.float64)
    exact = math.sqrt(10.0 + 2 * 1.0**2)
    assert wasserstein2(a, b) == pytest.approx(exact, rel=0.03)


def test_w2_of_a_translation_is_exact(gen):
    """Translating a cloud by c: the identity plan is optimal and W2 = |c| exactly."""
    a = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert wasserstein2(a, a + c) == pytest.approx(float(c.norm()), rel=1e-9)
    assert wasserstein2(a, a) == pytest.approx(0.0, abs=1e-9)


def test_w2_symmetry_shapes_and_numpy(gen):
    a, b = torch.randn(40, 2, 2, generator=gen), torch.randn(30, 2, 2, generator=gen)
    assert wasserstein2(a, b) == pytest.approx(wasserstein2(b, a), rel=1e-9)
    assert wasserstein2(a.numpy(), b.numpy()) == pytest.approx(wasserstein2(a, b), rel=1e-9)


def straight_trajectory(x0, x1, steps):
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)[:, None, None]
    return (1 - t) * x0 + t * x1


def test_straight_paths(gen):
    x0 = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(200, 2, generator=gen, dtype=torch.float64) + 3
    traj = straight_trajectory(x0, x1, 10)
    assert path_energy(traj) == pytest.approx(float((x1 - x0).pow(2).sum(1).mean()), rel=1e-9)
    assert straightness(traj) == pytest.approx(0.0, abs=1e-12)


def test_quarter_circle(gen):
    """x(t) = r (cos(pi t / 2), sin(pi t / 2)): |v|^2 = (pi r / 2)^2, and S = |v|^2 - |x1 - x0|^2 = (pi^2/4 - 2) r^2."""
    r = 2.0
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    traj = torch.stack([r * torch.cos(math.pi * t / 2), r * torch.sin(math.pi * t / 2)], dim=1)[:, None, :]
    assert path_energy(traj) == pytest.approx((math.pi * r / 2) ** 2, rel=1e-5)
    assert straightness(traj) == pytest.approx((math.pi**2 / 4 - 2) * r**2, rel=1e-4)


def test_npe_zero_for_the_ot_flow(gen):
    """A translation is its own OT map: the straight flow's PE equals W2^2, so NPE = 0."""
    x0 = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    c = torch.tensor([2.0, 1.0], dtype=torch.float64)
    traj = straight_trajectory(x0, x0 + c, 20)
    assert normalized_path_energy(traj, x0, x0 + c) == pytest.approx(0.0, abs=1e-9)
    # an independent (random) pairing travels further: NPE > 0
    perm = torch.randperm(300, generator=gen)
    assert normalized_path_energy(straight_trajectory(x0, (x0 + c)[perm], 20), x0, x0 + c) > 0.5


def test_nonuniform_times():
    traj = torch.tensor([[[0.0]], [[1.0]], [[3.0]]], dtype=torch.float64)
    # speeds 1 / 0.5 = 2 on [0, 0.5] and 2 / 0.5 = 4 on [0.5, 1]: PE = 0.5 * 4 + 0.5 * 16
    assert path_energy(traj, times=[0.0, 0.5, 1.0]) == pytest.approx(10.0)
    assert path_energy(traj, times=np.array([0.0, 0.25, 1.0])) == pytest.approx(1 / 0.25 + 4 / 0.75)


@pytest.mark.parametrize(
    "fn, args, err, match",
    [
        (wasserstein2, (torch.randn(4, 2), torch.randn(4, 3)), ValueError, "same dimension"),
        (wasserstein2, (torch.full((4, 2), float("nan")), torch.randn(4, 2)), ValueError, "a contains"),
        (wasserstein2, (torch.zeros(0, 2), torch.randn(4, 2)), ValueError, "empty"),
        (wasserstein2, ([[0.0, 1.0]], torch.randn(4, 2)), TypeError, "a must be a torch.Tensor"),
        (path_energy, (torch.randn(1, 4, 2),), ValueError, "at least 2 time points"),
        (path_energy, (torch.randn(4, 2),), ValueError, "at least 3 dimension"),
        (path_energy, (torch.full((3, 4, 2), float("inf")),), ValueError, "trajectory contains"),
        (straightness, (torch.randn(3, 4, 2), [0.0, 0.5]), ValueError, "times must have shape"),
        (straightness, (torch.randn(3, 4, 2), [0.0, 0.5, 0.5]), ValueError, "strictly increasing"),
        (normalized_path_energy, (torch.randn(3, 4, 2), torch.ones(4, 2), torch.ones(4, 2)), ValueError, "undefined"),
    ],
)
def test_bad_inputs(fn, args, err, match):
    with pytest.raises(err, match=match):
        fn(*args)


@pytest.mark.parametrize("bad, exc", [("abc", TypeError), (3.0, TypeError), (torch.zeros(0, 2), ValueError),
                                      (torch.full((6, 2), float("nan")), ValueError),
                                      (torch.zeros(6, 2, dtype=torch.complex64), TypeError),
                                      (torch.zeros(6, 2, dtype=torch.bool), TypeError),
                                      (torch.zeros(6, 3), ValueError)])
def test_normalized_path_energy_names_source_and_target(bad, exc):
    traj = torch.stack([torch.zeros(6, 2), torch.ones(6, 2)])
    good = torch.randn(6, 2)
    with pytest.raises(exc, match="source"):
        normalized_path_energy(traj, bad, good)
    with pytest.raises(exc, match="target"):
        normalized_path_energy(traj, good, bad)


@pytest.mark.parametrize("bad", ["inception", 3])
def test_fid_status_refuses_a_feature_extractor_that_is_no_module(bad):
    from lfm_core.metrics import fid_status

    with pytest.raises(TypeError, match="feature_extractor"):
        fid_status(bad)
