import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from lfm_core.mixtures import GaussianMixture
from lfm_core.paths import BridgePath, LinearPath, TargetPath, VPPath


@pytest.fixture
def gmm():
    return GaussianMixture(torch.tensor([[3.0, 0.0], [-2.0, 1.0], [0.0, -4.0]]), torch.tensor([0.5, 1.0, 0.8]),
                           torch.tensor([0.2, 0.5, 0.3]))


def test_log_prob_matches_scipy(gmm, gen):
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64) * 3
    dens = sum(float(w) * multivariate_normal(m.numpy(), float(s) ** 2 * np.eye(2)).pdf(x.numpy())
               for m, s, w in zip(gmm.means, gmm.stds, gmm.weights, strict=True))
    torch.testing.assert_close(gmm.log_prob(x), torch.from_numpy(np.log(dens)))


def test_sample_statistics(gmm, gen):
    x, k = gmm.sample(200_000, generator=gen, return_labels=True)
    freq = torch.bincount(k, minlength=3).double() / k.numel()
    torch.testing.assert_close(freq, gmm.weights, atol=5e-3, rtol=0)
    torch.testing.assert_close(x.double().mean(0), (gmm.weights[:, None] * gmm.means).sum(0), atol=0.03, rtol=0)


@pytest.mark.parametrize("path", [LinearPath(0.0), LinearPath(0.3), VPPath(0.1), BridgePath(1.0), TargetPath(0.05)],
                         ids=repr)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_velocity_is_the_conditional_mean(path, t, gmm, gen):
    """v*(x_t) = E[u_t | x_t]: the residual u_t - v*(x_t) has mean 0 and is uncorrelated with any g(x_t)."""
    n = 400_000
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x1 = gmm.sample(n, generator=gen, dtype=torch.float64)
    xt, ut = path.sample(x0, x1, t, generator=gen)
    r = ut - gmm.velocity(path)(xt, t)
    feats = torch.stack([torch.ones(n, dtype=torch.float64), xt[:, 0], xt[:, 1], torch.tanh(xt[:, 0] * xt[:, 1])], 1)
    moments = feats.T @ r / n  # [4, 2]
    scale = (feats.pow(2).mean(0).sqrt()[:, None] * r.pow(2).mean(0).sqrt()[None]) / math.sqrt(n)  # MC std
    assert (moments.abs() < 5 * scale).all(), (moments, scale)
    # and it is not a trivially small residual: the conditional velocity really varies given x_t
    assert float(r.pow(2).mean()) > 0.01


def test_velocity_moves_mass_from_source_to_target(gen):
    """A single Gaussian target: v* is affine, and its flow maps N(0, I) exactly onto N(m, s^2 I)."""
    g = GaussianMixture(torch.tensor([[1.0, -2.0]]), 0.5)
    x = torch.zeros(1, 2, dtype=torch.float64)
    # at the mean of x_t the velocity is the mean's rate of change, m (linear path)
    torch.testing.assert_close(g.velocity(LinearPath())(x + 0.5 * g.means, 0.5),
                               g.means.to(torch.float64))


def test_bad_inputs(gmm):
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), 1.0, torch.tensor([-1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        gmm.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        gmm.log_prob(torch.full((4, 2), float("nan")))
    with pytest.raises(TypeError, match="path"):
        gmm.velocity("linear")
    with pytest.raises(ValueError, match="open interval"):
        gmm.velocity(BridgePath(1.0))(torch.zeros(4, 2), 0.0)
    with pytest.raises(ValueError, match="source_std"):
        gmm.velocity(LinearPath(), source_std=0.0)
    with pytest.raises(ValueError, match="point mass"):  # std^2 underflows to 0: x_1 is a point mass at t = 1
        GaussianMixture(torch.zeros(1, 2), 1e-200).velocity(TargetPath(0.0))(torch.zeros(4, 2), 1.0)


@pytest.fixture
def diag_gmm():
    return GaussianMixture(torch.tensor([[2.0, 0.0, -1.0], [-1.0, 1.0, 0.5]]),
                           torch.tensor([[0.3, 1.5, 0.7], [1.0, 0.4, 2.0]]), torch.tensor([0.3, 0.7]))


def test_diagonal_log_prob_matches_scipy(diag_gmm, gen):
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64) * 2
    dens = sum(float(w) * multivariate_normal(m.numpy(), np.diag(s.numpy() ** 2)).pdf(x.numpy())
               for m, s, w in zip(diag_gmm.means, diag_gmm.stds, diag_gmm.weights, strict=True))
    torch.testing.assert_close(diag_gmm.log_prob(x), torch.from_numpy(np.log(dens)))


def test_diagonal_covariance_and_velocity(diag_gmm, gen):
    x = diag_gmm.sample(300_000, generator=gen, dtype=torch.float64)
    mean, cov = diag_gmm.covariance()
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0)
    path, t = LinearPath(0.2), 0.4
    x0 = torch.randn(300_000, 3, generator=gen, dtype=torch.float64)
    xt, ut = path.sample(x0, x, t, generator=gen)
    r = ut - diag_gmm.velocity(path)(xt, t)
    feats = torch.cat([torch.ones(len(r), 1, dtype=torch.float64), xt], 1)
    moments = feats.T @ r / len(r)
    scale = feats.pow(2).mean(0).sqrt()[:, None] * r.pow(2).mean(0).sqrt()[None] / math.sqrt(len(r))
    assert (moments.abs() < 5 * scale).all()
