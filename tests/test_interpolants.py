"""Learned interpolants: schedules, the GLOW-style interpolant, their use as CFM paths, the fitted ones."""

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


def test_interpolants_work_as_cfm_paths():
    from lfm_core import nets, training

    interp = I.AffineInterpolant(3).requires_grad_(False)
    model = nets.MLP(2, 16, 2)
    res = training.train_cfm(model, interp, torch.randn(64, 2), torch.randn(64, 2) + 3, steps=30, batch_size=32,
                             progress=False)
    assert len(res.losses) == 30
    with pytest.raises(ValueError, match="deterministic"):
        interp.sample(torch.randn(2, 2), torch.randn(2, 2), torch.rand(2), noise=torch.randn(2, 2))


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


def test_bad_arguments_are_refused_naming_them():
    """Issue 24: load_pretrained names a bad root (an empty path would mean the current folder);
    from_coefficients names its argument when the schedule does not end at 1."""
    with pytest.raises(ValueError, match="root is an empty path"):
        I.load_pretrained("moons", root="")
    with pytest.raises(TypeError, match="root must be a path"):
        I.load_pretrained("moons", root=3)
    with pytest.raises(ValueError, match="coefficients must start at 0 and end at 1"):
        I.BernsteinSchedule.from_coefficients(torch.tensor([0.0, 0.3, 0.7, 0.9]))
