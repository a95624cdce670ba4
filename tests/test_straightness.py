"""The optimal velocity of Proposition 1, the JVP straightness objective, and fitting an interpolant to it."""

import numpy as np
import pytest
import torch
from test_interpolants import _randomise

from lfm_core import interpolants as I
from lfm_core import straightness as S


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
    v_star = S.optimal_velocity(interp, data, chunk=1 << 16)
    good = _orthogonality(interp, data, v_star, n=60_000 if kind == "glow" else 200_000)
    bad = _orthogonality(interp, data, lambda x, t: torch.zeros_like(x), n=60_000)
    assert good < 0.015 and bad > 0.03  # 0.9 v* scores about 0.04-0.09 here


def test_optimal_velocity_affine_is_a_softmax_over_data():
    data = torch.randn(5, 2, dtype=torch.float64)
    interp = I.AffineInterpolant(3).double()  # fresh: the straight line h = g = t
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    v_star = S.optimal_velocity(interp, data)
    v, w = v_star(x, t), v_star.weights(x, t)
    logits = -((x[:, None, :] - 0.3 * data[None]) ** 2).sum(-1) / (2 * 0.7**2)
    torch.testing.assert_close(w, torch.softmax(logits, 1))
    expected = (w[:, :, None] * (data[None] - (x[:, None, :] - 0.3 * data[None]) / 0.7)).sum(1)
    torch.testing.assert_close(v, expected)
    with pytest.raises(ValueError, match="same shape"):
        S.optimal_velocity(interp, torch.randn(5, 3))(x, t)


# --------------------------------------------------------------------------------------- straightness
def test_material_derivative_against_finite_differences():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    velocity = lambda x, t: net(torch.cat([x, t[:, None]], 1))
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    v, dv = S.material_derivative(velocity, x, t)
    eps = 1e-5
    fd = (velocity(x + eps * v, t + eps) - velocity(x - eps * v, t - eps)) / (2 * eps)
    torch.testing.assert_close(dv, fd, atol=1e-8, rtol=1e-6)
    # a field with straight constant-speed trajectories has zero material derivative: v(x, t) = x1 - x0 along
    # x_t = x0 + t (x1 - x0) for a single x1, i.e. v(x, t) = (x1 - x) / (1 - t)
    x1 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    straight = lambda x, t: (x1 - x) / (1 - t)[:, None]
    assert float(S.straightness_loss(straight, x, t * 0.9)) < 1e-20
    assert float(S.straightness_loss(velocity, x, t).detach()) > 1e-4


def test_material_derivative_shape_error():
    with pytest.raises(ValueError, match="shaped like x"):
        S.material_derivative(lambda x, t: x.sum(1), torch.randn(3, 2), torch.rand(3))


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
        return float(S.straightness_loss(S.optimal_velocity(interp, data), xt.detach(), t))

    before = measure()
    assert before > 1e-2  # bent schedules are not straight (and the measurement sees it)
    res = S.fit_interpolant(interp, lambda n, gen: torch.randn(n, 2, generator=gen), data, steps=150,
                            n_reference=1, t_max=0.9, lr=0.05, progress=False)
    after = measure()
    assert after < 0.05 * before, (before, after)
    assert res.losses[-1] < res.losses[0]
    with pytest.raises(ValueError, match="t_max"):
        S.fit_interpolant(interp, torch.randn(4, 2), data, steps=1, t_max=1.0)
    for bad in [-1.0, float("nan"), "2"]:
        with pytest.raises((ValueError, TypeError), match="weight_power"):
            S.fit_interpolant(interp, torch.randn(4, 2), data, steps=1, weight_power=bad)
    weighted = S.fit_interpolant(interp, torch.randn(64, 2), data, steps=3, weight_power=2.0, n_reference=1,
                                 progress=False)
    assert all(np.isfinite(weighted.losses))


def test_glow_material_derivative_of_v_star_with_and_without_grad():
    torch.manual_seed(0)
    interp = _randomise(I.GlowInterpolant(2, layers=2, hidden=8), scale=0.3).double()
    data = torch.randn(8, 2, dtype=torch.float64)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64) * 0.8
    with torch.no_grad():
        v, dv = S.material_derivative(S.optimal_velocity(interp, data), x, t)
    v2, dv2 = S.material_derivative(S.optimal_velocity(interp, data, differentiable=True), x, t)
    torch.testing.assert_close(dv, dv2.detach())
    eps = 1e-5
    f = S.optimal_velocity(interp, data)
    fd = (f(x + eps * v, t + eps) - f(x - eps * v, t - eps)) / (2 * eps)
    torch.testing.assert_close(dv, fd, atol=1e-6, rtol=1e-5)


def test_fit_interpolant_turns_the_loss_to_median_guard_off(monkeypatch):
    # the straightness objective is heavy-tailed: a 1000x-the-median batch is expected, not a divergence
    seen = {}
    from lfm_core import training

    monkeypatch.setattr(training, "fit", lambda *a, **kw: seen.update(kw))
    S.fit_interpolant(I.AffineInterpolant(), lambda n, g: torch.randn(n, 2, generator=g), torch.randn(32, 2),
                      steps=1, batch_size=4, n_reference=8)
    assert seen["divergence"] is None and seen["grad_clip"] is not None


@pytest.mark.parametrize("bad, exc", [("0.5", TypeError), (-1.0, ValueError), (float("nan"), ValueError),
                                      (True, TypeError), (0.5j, TypeError), (0.0, ValueError),
                                      (float("inf"), ValueError)])
def test_fit_straight_flow_names_its_learning_rates(bad, exc):
    from lfm_core.nets import MLP

    for name in ("interpolant_lr", "lr"):
        with pytest.raises(exc, match=f"^{name}"):
            S.fit_straight_flow(I.AffineInterpolant(2), MLP(2, hidden=8), torch.randn(8, 2), torch.randn(8, 2),
                                levels=1, interpolant_steps=1, model_steps=1, batch_size=4, progress=False,
                                **{name: bad})
