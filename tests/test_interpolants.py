"""Learned interpolants, the optimal velocity of Proposition 1, and the JVP straightness objective."""

import numpy as np
import pytest
import torch

from lfm_core import interpolants as I


def _randomise(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return module


# --------------------------------------------------------------------------------------- schedules
def test_bernstein_schedule_boundaries_monotone_and_derivative():
    s = _randomise(I.BernsteinSchedule(7), scale=2.0)
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    with torch.no_grad():
        val, der = s.double()(t)
    assert float(val[0]) == 0.0 and abs(float(val[-1]) - 1.0) < 1e-12
    assert bool((val.diff() > 0).all()) and bool((der > 0).all())
    tt = t[1:-1].clone().requires_grad_(True)
    v, d = s(tt)
    (auto,) = torch.autograd.grad(v.sum(), tt)
    torch.testing.assert_close(d, auto)
    fresh, fresh_d = I.BernsteinSchedule(5).double()(t)
    torch.testing.assert_close(fresh, t)  # equal logits: the identity
    torch.testing.assert_close(fresh_d, torch.ones_like(t))


@pytest.mark.parametrize("coeffs, match", [
    ([0.0, 0.6, 0.4, 1.0], "strictly increasing"),
    ([0.1, 0.5, 1.0], "start at 0 and end at 1"),
    ([0.0, 0.5, 0.9], "start at 0 and end at 1"),
    ([0.0], "at least 2"),
    ([[0.0, 1.0]], "1-D"),
    ([0.0, float("nan"), 1.0], "finite"),
])
def test_bad_schedules_are_rejected(coeffs, match):
    with pytest.raises(ValueError, match=match):
        I.BernsteinSchedule.from_coefficients(coeffs)


def test_from_coefficients_round_trip():
    c = [0.0, 0.1, 0.5, 1.0]
    s = I.BernsteinSchedule.from_coefficients(c)
    torch.testing.assert_close(s.coefficients(), torch.tensor(c))


def test_affine_interpolant_endpoints_and_velocity():
    interp = _randomise(I.AffineInterpolant(6), scale=1.5)
    x0, x1 = torch.randn(5, 3), torch.randn(5, 3)
    xt0, _ = interp.sample(x0, x1, torch.zeros(5))
    xt1, _ = interp.sample(x0, x1, torch.ones(5))
    torch.testing.assert_close(xt0, x0)
    torch.testing.assert_close(xt1, x1)
    t = torch.rand(5, dtype=torch.float64)
    interp = interp.double()
    x0, x1 = x0.double(), x1.double()
    _, ut = interp.sample(x0, x1, t)
    eps = 1e-6
    fd = (interp.sample(x0, x1, t + eps)[0] - interp.sample(x0, x1, t - eps)[0]) / (2 * eps)
    torch.testing.assert_close(ut, fd, atol=1e-7, rtol=1e-6)
    x0b, logdet = interp.invert(interp.sample(x0, x1, t)[0], x1, t)
    torch.testing.assert_close(x0b, x0)


def test_affine_interpolant_shapes_are_checked():
    interp = I.AffineInterpolant()
    with pytest.raises(ValueError):
        interp.sample(torch.randn(4, 2), torch.randn(3, 2), torch.rand(4))
    with pytest.raises(ValueError):
        interp.sample(torch.randn(4, 2), torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError):
        interp.sample(torch.randn(4, 2), torch.randn(4, 2), torch.full((4,), 1.5))


# ------------------------------------------------------------------------------------------- GLOW
def test_glow_interpolant_endpoints_invertibility_and_logdet():
    torch.manual_seed(0)
    interp = _randomise(I.GlowInterpolant(2, layers=3, hidden=16), scale=0.4).double()
    x0, x1 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    torch.testing.assert_close(interp(x0, x1, torch.zeros(6, dtype=torch.float64)), x0)
    torch.testing.assert_close(interp(x0, x1, torch.ones(6, dtype=torch.float64)), x1)
    t = torch.rand(6, dtype=torch.float64) * 0.9
    y, logdet = interp.psi(x0, x1, t)
    back, inv_logdet = interp.psi_inverse(y, x1, t)
    torch.testing.assert_close(back, x0)
    torch.testing.assert_close(inv_logdet, -logdet)
    assert float((y - x0).detach().abs().max()) > 1e-2  # the random map is not the identity
    for i in range(6):  # log-determinant against the autograd Jacobian of phi_t in x0
        jac = torch.autograd.functional.jacobian(lambda a, i=i: interp(a[None], x1[i:i + 1], t[i:i + 1])[0], x0[i])
        _, ld = interp.invert(interp(x0[i:i + 1], x1[i:i + 1], t[i:i + 1]), x1[i:i + 1], t[i:i + 1])
        torch.testing.assert_close(-ld[0], torch.linalg.slogdet(jac)[1])
    xt = interp(x0, x1, t)
    x0b, _ = interp.invert(xt, x1, t)
    torch.testing.assert_close(x0b, x0)


def test_glow_velocity_is_the_time_derivative():
    interp = _randomise(I.GlowInterpolant(3, layers=2, hidden=8), scale=0.3, seed=1).double()
    x0, x1 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.rand(4, dtype=torch.float64) * 0.8 + 0.1
    _, ut = interp.sample(x0, x1, t)
    eps = 1e-6
    fd = (interp(x0, x1, t + eps) - interp(x0, x1, t - eps)) / (2 * eps)
    torch.testing.assert_close(ut, fd, atol=1e-7, rtol=1e-6)


def test_glow_bad_shapes():
    with pytest.raises(ValueError, match="dim >= 2"):
        I.GlowInterpolant(1)
    interp = I.GlowInterpolant(2)
    with pytest.raises(ValueError, match=r"vectors \[B, 2\]"):
        interp(torch.randn(3, 3), torch.randn(3, 3), torch.rand(3))
    with pytest.raises(ValueError):
        interp(torch.randn(3, 2), torch.randn(2, 2), torch.rand(3))


# ------------------------------------------------------------------------------- optimal velocity
def _orthogonality(interp, data, v_fn, n=200_000, t0=0.5, seed=0):
    """E[(u - v(x_t)) f(x_t)] for f = 1, x: zero exactly for the conditional expectation E[u | x_t]."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, data.shape[1], generator=g, dtype=torch.float64)
    x1 = data[torch.randint(0, len(data), (n,), generator=g)]
    t = torch.full((n,), t0, dtype=torch.float64)
    with torch.no_grad():
        xt, ut = interp.sample(x0, x1, t)
    r = ut - v_fn(xt, t)
    feats = torch.cat([torch.ones(n, 1, dtype=torch.float64), xt], 1)
    return (r[:, :, None] * feats[:, None, :]).mean(0).abs().max()


@pytest.mark.parametrize("kind", ["affine", "glow"])
def test_optimal_velocity_matches_a_monte_carlo_regression(kind):
    torch.manual_seed(0)
    data = torch.tensor([[2.0, 0.0], [-2.0, 0.5], [0.0, -2.0]], dtype=torch.float64)
    if kind == "affine":
        interp = _randomise(I.AffineInterpolant(4), scale=1.0).double()
    else:
        interp = _randomise(I.GlowInterpolant(2, layers=2, hidden=8), scale=0.3).double()
    v_star = I.optimal_velocity(interp, data, chunk=1 << 16)
    good = _orthogonality(interp, data, v_star, n=60_000 if kind == "glow" else 200_000)
    bad = _orthogonality(interp, data, lambda x, t: torch.zeros_like(x), n=60_000)
    assert good < 0.015 and bad > 0.03  # 0.9 v* scores about 0.04-0.09 here


def test_optimal_velocity_affine_is_a_softmax_over_data():
    data = torch.randn(5, 2, dtype=torch.float64)
    interp = I.AffineInterpolant(3).double()  # fresh: the straight line h = g = t
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    v_star = I.optimal_velocity(interp, data)
    v, w = v_star(x, t), v_star.weights(x, t)
    logits = -((x[:, None, :] - 0.3 * data[None]) ** 2).sum(-1) / (2 * 0.7**2)
    torch.testing.assert_close(w, torch.softmax(logits, 1))
    expected = (w[:, :, None] * (data[None] - (x[:, None, :] - 0.3 * data[None]) / 0.7)).sum(1)
    torch.testing.assert_close(v, expected)
    with pytest.raises(ValueError, match="same shape"):
        I.optimal_velocity(interp, torch.randn(5, 3))(x, t)


# --------------------------------------------------------------------------------------- straightness
def test_material_derivative_against_finite_differences():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    velocity = lambda x, t: net(torch.cat([x, t[:, None]], 1))
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    v, dv = I.material_derivative(velocity, x, t)
    eps = 1e-5
    fd = (velocity(x + eps * v, t + eps) - velocity(x - eps * v, t - eps)) / (2 * eps)
    torch.testing.assert_close(dv, fd, atol=1e-8, rtol=1e-6)
    # a field with straight constant-speed trajectories has zero material derivative: v(x, t) = x1 - x0 along
    # x_t = x0 + t (x1 - x0) for a single x1, i.e. v(x, t) = (x1 - x) / (1 - t)
    x1 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    straight = lambda x, t: (x1 - x) / (1 - t)[:, None]
    assert float(I.straightness_loss(straight, x, t * 0.9)) < 1e-20
    assert float(I.straightness_loss(velocity, x, t).detach()) > 1e-4


def test_material_derivative_shape_error():
    with pytest.raises(ValueError, match="shaped like x"):
        I.material_derivative(lambda x, t: x.sum(1), torch.randn(3, 2), torch.rand(3))


def test_fit_interpolant_straightens_a_bent_schedule():
    """One data point: the straight line (h = g = t) is exactly straight; bent schedules are not."""
    torch.manual_seed(0)
    interp = I.AffineInterpolant(4)
    with torch.no_grad():
        interp.h.logits.copy_(torch.tensor([2.0, 0.0, -1.0, 0.5]))
        interp.g.logits.copy_(torch.tensor([-1.0, 1.5, 0.0, 2.0]))
    data = torch.tensor([[1.5, -0.5]])
    g = torch.Generator().manual_seed(0)
    x0, t = torch.randn(256, 2, generator=g), torch.rand(256, generator=g) * 0.9

    def measure():
        xt, _ = interp.sample(x0, data.expand(256, 2), t)
        return float(I.straightness_loss(I.optimal_velocity(interp, data), xt.detach(), t))

    before = measure()
    assert before > 1e-2  # bent schedules are not straight (and the measurement sees it)
    res = I.fit_interpolant(interp, lambda n, gen: torch.randn(n, 2, generator=gen), data, steps=150,
                            n_reference=1, t_max=0.9, lr=0.05, progress=False)
    after = measure()
    assert after < 0.05 * before, (before, after)
    assert res.losses[-1] < res.losses[0]
    with pytest.raises(ValueError, match="t_max"):
        I.fit_interpolant(interp, torch.randn(4, 2), data, steps=1, t_max=1.0)
    for bad in [-1.0, float("nan"), "2"]:
        with pytest.raises((ValueError, TypeError), match="weight_power"):
            I.fit_interpolant(interp, torch.randn(4, 2), data, steps=1, weight_power=bad)
    weighted = I.fit_interpolant(interp, torch.randn(64, 2), data, steps=3, weight_power=2.0, n_reference=1,
                                 progress=False)
    assert all(np.isfinite(weighted.losses))


def test_interpolants_work_as_cfm_paths():
    from lfm_core import nets, training

    interp = I.AffineInterpolant(3).requires_grad_(False)
    model = nets.MLP(2, 16, 2)
    res = training.train_cfm(model, interp, torch.randn(64, 2), torch.randn(64, 2) + 3, steps=30, batch_size=32,
                             progress=False)
    assert len(res.losses) == 30
    with pytest.raises(ValueError, match="deterministic"):
        interp.sample(torch.randn(2, 2), torch.randn(2, 2), torch.rand(2), noise=torch.randn(2, 2))


def test_glow_material_derivative_of_v_star_with_and_without_grad():
    torch.manual_seed(0)
    interp = _randomise(I.GlowInterpolant(2, layers=2, hidden=8), scale=0.3).double()
    data = torch.randn(8, 2, dtype=torch.float64)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64) * 0.8
    with torch.no_grad():
        v, dv = I.material_derivative(I.optimal_velocity(interp, data), x, t)
    v2, dv2 = I.material_derivative(I.optimal_velocity(interp, data, differentiable=True), x, t)
    torch.testing.assert_close(dv, dv2.detach())
    eps = 1e-5
    f = I.optimal_velocity(interp, data)
    fd = (f(x + eps * v, t + eps) - f(x - eps * v, t - eps)) / (2 * eps)
    torch.testing.assert_close(dv, fd, atol=1e-6, rtol=1e-5)


def test_glow_linear_map_matches_its_matrix_and_inverts_in_higher_dimensions():
    interp = _randomise(I.GlowInterpolant(7, layers=1, hidden=8), scale=0.4, seed=3).double()
    x, t = torch.randn(5, 7, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    l0, u0 = interp._strict(0)
    eye = torch.eye(7, dtype=torch.float64)
    for b in range(5):
        w = (eye + t[b] * l0) @ (t[b] * u0 + torch.diag(torch.exp(t[b] * interp.log_diag[0])))
        torch.testing.assert_close(interp._apply_linear(0, x, t)[b], w @ x[b])
        expected = float(t[b] * interp.log_diag[0].sum().detach())
        assert float(torch.linalg.slogdet(w.detach())[1]) == pytest.approx(expected)
    torch.testing.assert_close(interp._solve_linear(0, interp._apply_linear(0, x, t), t), x)
    # and the whole map in 7 dimensions: psi_inverse(psi(x)) = x with opposite log-determinants
    x1 = torch.randn(5, 7, dtype=torch.float64)
    y, ld = interp.psi(x, x1, t)
    back, ld_inv = interp.psi_inverse(y, x1, t)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld_inv, -ld)


def test_load_pretrained_gives_the_committed_fits_and_refuses_what_it_cannot_load(tmp_path):
    from lfm_core import interpolants as I
    from lfm_core import store

    for task in I.PRETRAINED_TASKS:
        interp, record = I.load_pretrained(task)
        assert isinstance(interp, I.GlowInterpolant) and not any(p.requires_grad for p in interp.parameters())
        assert record["task"] == task and record["command"].startswith("python scripts/fit_interpolants.py")
        assert record["fit"]["steps"] >= 800 and record["seconds"] > 0
        assert any(float(p.abs().max()) > 0 for p in interp.parameters()), "a fitted interpolant is not the line"
        x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
        with torch.no_grad():
            assert torch.allclose(interp(x0, x1, torch.zeros(16)), x0, atol=1e-5)
            assert torch.allclose(interp(x0, x1, torch.ones(16)), x1, atol=1e-5)
    with pytest.raises(ValueError, match="task"):
        I.load_pretrained("swissroll")
    with pytest.raises(FileNotFoundError, match="fit_interpolants"):
        I.load_pretrained("moons", root=tmp_path)
    store.save(tmp_path / "interpolant_moons", I.AffineInterpolant(3), {"task": "moons"})
    with pytest.raises(store.StoreError, match="config.json holds class AffineInterpolant, not GlowInterpolant"):
        I.load_pretrained("moons", root=tmp_path)
    glow = I.GlowInterpolant(2, layers=1, hidden=4)
    store.save(tmp_path / "interpolant_moons", glow, {"task": "moons"})        # what fit_interpolants.py writes
    loaded, record = I.load_pretrained("moons", root=tmp_path)
    assert record == {"task": "moons"} and loaded.config == glow.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), glow.parameters(), strict=True))
