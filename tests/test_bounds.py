import math

import pytest
import torch

from lfm_core.bounds import (
    flow_matching_error,
    gaussian_pushforward,
    gaussian_w2,
    jacobian_norm_lower_bound,
    latent_factor,
    reconstruction_error,
    spectral_norm,
    w2_bound,
)
from lfm_core.metrics import wasserstein2
from lfm_core.nets import AffineVelocity


def test_spectral_norm_is_the_largest_singular_value(gen):
    a = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    assert spectral_norm(a) == pytest.approx(float(torch.linalg.svdvals(a)[0]), rel=1e-12)
    assert spectral_norm(torch.diag(torch.tensor([3.0, -1.0]))) == pytest.approx(3.0)


def test_power_iteration_recovers_a_linear_maps_norm(gen):
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    est = jacobian_norm_lower_bound(lambda x: x @ a.T, torch.randn(16, 4, generator=gen, dtype=torch.float64),
                                    iters=200, generator=gen)
    assert est == pytest.approx(spectral_norm(a), rel=1e-6)


def test_power_iteration_is_a_lower_estimate_for_a_nonlinear_map(gen):
    """f(x) = 2 sin(x) elementwise: J = diag(2 cos x), so ||J(x)|| = 2 max_i |cos x_i| <= 2 = Lip(f)."""
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 3
    est = jacobian_norm_lower_bound(lambda z: 2 * torch.sin(z), x, iters=100, generator=gen)
    exact_at_points = float((2 * torch.cos(x).abs()).amax(1).max())
    assert est == pytest.approx(exact_at_points, rel=1e-6)
    assert est <= 2.0


def test_gaussian_w2_formula(gen):
    m1, m2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    c1 = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    c2 = torch.tensor([[1.0, -0.3], [-0.3, 0.5]])
    # isotropic case: |m1 - m2|^2 + d (s1 - s2)^2
    assert gaussian_w2(m1, 4 * torch.eye(2), m2, torch.eye(2)) == pytest.approx(math.sqrt(8 + 2 * 1.0))
    assert gaussian_w2(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-6)
    assert gaussian_w2(m1, c1, m2, c2) == pytest.approx(gaussian_w2(m2, c2, m1, c1), rel=1e-9)
    # against exact OT between large samples
    n = 3000
    l1, l2 = torch.linalg.cholesky(c1.double()), torch.linalg.cholesky(c2.double())
    a = m1.double() + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ l1.T
    b = m2.double() + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ l2.T
    assert wasserstein2(a, b) == pytest.approx(gaussian_w2(m1, c1, m2, c2), rel=0.05)
    # a singular covariance (a Gaussian on a line) is fine
    line = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert math.isfinite(gaussian_w2(m1, line, m2, c2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        gaussian_w2(m1, torch.tensor([[1.0, 2.0], [2.0, 1.0]]), m2, c2)
    with pytest.raises(ValueError, match=r"c1 must have shape \[2, 2\]"):
        gaussian_w2(m1, torch.eye(3), m2, c2)


def test_gaussian_pushforward_of_a_constant_linear_flow(gen):
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 0.5
    m0, c0 = torch.randn(3, generator=gen, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    m1, c1 = gaussian_pushforward(lambda t: (a, torch.zeros(3, dtype=torch.float64)), m0, c0, steps=100)
    e = torch.linalg.matrix_exp(a)
    torch.testing.assert_close(m1, e @ m0)
    torch.testing.assert_close(c1, e @ c0 @ e.T)


def test_flow_matching_error_of_a_shifted_field(gen):
    v = lambda z, t: -z * t[:, None]  # noqa: E731
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    sample = lambda t, n: torch.randn(n, 2, generator=gen, dtype=torch.float64)  # noqa: E731
    assert flow_matching_error(v, v, sample)[0] == pytest.approx(0.0, abs=1e-12)
    err, per_t = flow_matching_error(lambda z, t: v(z, t) + c, v, sample, n_times=8)
    assert err == pytest.approx(0.25) and len(per_t) == 8 and per_t[0][0] == pytest.approx(1 / 16)


def test_reconstruction_error_of_a_projection(gen):
    """Projecting onto the first coordinate loses exactly the variance of the others."""
    x = torch.randn(20_000, 3, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5, 0.3], dtype=torch.float64)
    enc = lambda x: x[:, :1]  # noqa: E731
    dec = lambda z: torch.cat([z, torch.zeros(len(z), 2, dtype=z.dtype)], 1)  # noqa: E731
    assert reconstruction_error(enc, dec, x) == pytest.approx(0.25 + 0.09, rel=0.03)
    with pytest.raises(ValueError, match="shape of x"):
        reconstruction_error(enc, lambda z: z, x)


def test_w2_bound_forms():
    b = w2_bound(recon=0.5, lipschitz_dec=2.0, lipschitz_v=0.5, fm_error=0.01)
    assert b["latent"] == pytest.approx(math.e**2 * 0.01)
    assert b["sum_form"] == pytest.approx(0.5 + 4 * b["latent"])
    assert b["sum_form"] <= b["triangle_form"] <= 2 * b["sum_form"]
    assert latent_factor(0.0) == pytest.approx(math.e)
    with pytest.raises(ValueError, match="fm_error"):
        w2_bound(0.1, 1.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="lipschitz_v"):
        latent_factor(float("nan"))


def test_affine_velocity(gen):
    torch.manual_seed(0)
    v = AffineVelocity(3, hidden=8)
    x, t = torch.randn(6, 3, generator=gen), torch.rand(6, generator=gen)
    out = v(x, t)
    for i in range(6):
        a, b = v.affine_map(float(t[i]))
        torch.testing.assert_close(out[i], a @ x[i] + b, rtol=1e-5, atol=1e-6)
    grid_max = max(spectral_norm(v.affine_map(s)[0]) for s in torch.linspace(0, 1, 201).tolist())
    assert v.lipschitz() == pytest.approx(grid_max, rel=1e-5)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 3\]"):
        v(torch.randn(4, 2), 0.5)
