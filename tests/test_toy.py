import math

import pytest
import torch

from lfm_core import toy


@pytest.mark.parametrize("name", toy.NAMES)
def test_shape_dtype_and_reproducibility(name):
    a = toy.sample(name, 257, generator=torch.Generator().manual_seed(3))
    b = toy.sample(name, 257, generator=torch.Generator().manual_seed(3))
    c = toy.sample(name, 257, generator=torch.Generator().manual_seed(4))
    assert a.shape == (257, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eight_gaussians_is_the_papers_ring(gen):
    """Centres at radius 5 on the 8 compass angles, std 1 (the OT-CFM paper's `gaussians` data)."""
    x = toy.sample("8gaussians", 80_000, generator=gen).double()
    angles = torch.atan2(x[:, 1], x[:, 0])
    k = torch.round(angles / (2 * math.pi / 8)) % 8
    # E|x|^2 = r^2 + 2 sigma^2 = 27 and E x = 0 for radius 5 and std 1
    assert abs(float(x.pow(2).sum(1).mean()) - 27.0) < 0.2
    assert float(x.mean(0).abs().max()) < 0.05
    torch.testing.assert_close(torch.bincount(k.long(), minlength=8).double() / 80_000,
                               torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01, rtol=0)


def test_twodim_moons_are_standardised_then_scaled(gen):
    """Pooled mean 0 and pooled std 7, as the paper's `twodim` data module standardises."""
    x = toy.sample("twodim_moons", 200_000, generator=gen).double()
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 7.0) < 0.05


def test_population_stats_formula_matches_samples(gen):
    mean, std = toy._moons_population_stats(0.1)
    raw = toy._moons(400_000, 0.1, gen)
    assert abs(float(raw.mean()) - mean) < 2e-3
    assert abs(float(raw.std()) - std) < 2e-3


def test_moons_scurve_checkerboard_ranges(gen):
    m = toy.sample("moons", 20_000, generator=gen)
    assert -3.4 < float(m[:, 0].min()) and float(m[:, 0].max()) < 3.4  # (2 * [-1, 2]) - 1 plus noise
    assert abs(float(m[:, 1].mean()) - 0.5) < 0.03
    s = toy.sample("scurve", 20_000, generator=gen)
    assert float(s[:, 0].abs().max()) < 1.5 * 1.0 + 0.5 and float(s[:, 1].abs().max()) < 1.5 * 2 + 0.5
    c = toy.sample("checkerboard", 20_000, generator=gen)
    assert float(c.abs().max()) <= 2.0
    # dark squares only: floor(x) + floor(y) is even for every point
    assert bool(((torch.floor(c[:, 0]) + torch.floor(c[:, 1])) % 2 == 0).all())


def test_gaussian_mixture_objects():
    g = toy.gaussian_mixture("8gaussians")
    assert g.means.shape == (8, 2)
    torch.testing.assert_close(g.means.norm(dim=1), torch.full((8,), 5.0, dtype=torch.float64))
    assert toy.gaussian_mixture("twodim_8gaussians").stds[0] == 1.5
    with pytest.raises(ValueError, match="name must be one of the Gaussian mixtures"):
        toy.gaussian_mixture("moons")


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown toy data set name 'spirals'"):
        toy.sample("spirals", 10)
    with pytest.raises(TypeError, match="name"):
        toy.sample(3, 10)
    with pytest.raises(ValueError, match="n must be >= 1"):
        toy.sample("moons", 0)
    with pytest.raises(TypeError, match="n must be an int"):
        toy.sample("moons", 10.0)


def test_sample_draws_from_the_public_mixture_and_callers_cannot_change_it():
    """sample() keeps its mixtures private: changing the object gaussian_mixture() hands out changes nothing."""
    for name in ("gaussian", "8gaussians", "twodim_8gaussians"):
        expected = toy.gaussian_mixture(name).sample(64, generator=torch.Generator().manual_seed(3),
                                                     dtype=torch.float64).float()
        assert torch.equal(toy.sample(name, 64, generator=torch.Generator().manual_seed(3)), expected)
        handed_out = toy.gaussian_mixture(name)
        handed_out.means.add_(100.0)
        assert torch.equal(toy.sample(name, 64, generator=torch.Generator().manual_seed(3)), expected)
