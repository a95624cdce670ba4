"""Average-velocity models and MeanFlow (lfm_core.average_velocity)."""

import math

import pytest
import torch

from lfm_core import average_velocity as AV
from lfm_core import nets, solvers
from lfm_core.trainer import TrainerConfig

MEAN, STD = torch.tensor([3.0, -1.0]), 0.5


def _model(seed=0, hidden=32):
    torch.manual_seed(seed)
    return AV.AverageVelocity(nets.MLP(2, hidden, 2, cond_channels=1))


def _paper_gaussian_u(z, r, t):
    """The paper's average velocity for N(MEAN, STD^2 I) data (its time 0) and N(0, I) noise (its time 1), written
    from the paper's definitions alone: z_tau = (1 - tau) x + tau eps, z_r = z_t - (t - r) u(z_t, r, t)."""
    r, t = torch.as_tensor(r, dtype=z.dtype).reshape(-1, 1), torch.as_tensor(t, dtype=z.dtype).reshape(-1, 1)
    mean = lambda tau: (1 - tau) * MEAN  # noqa: E731
    scale = lambda tau: ((1 - tau) ** 2 * STD**2 + tau**2).sqrt()  # noqa: E731
    z_r = mean(r) + scale(r) / scale(t) * (z - mean(t))
    return (z - z_r) / (t - r)


# ------------------------------------------------------------------------------------ closed form
def test_gaussian_flow_average_velocity_is_the_ode_chord():
    g = AV.GaussianFlow(MEAN, STD)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * 2
    for r, t in [(0.0, 1.0), (0.2, 0.7), (0.5, 0.5)]:
        exact = AV.exact_average_velocity(g.velocity, x, r, t)
        assert torch.allclose(g(x, r, t), exact, atol=1e-4), (r, t)


def test_meanflow_identity_holds_for_the_exact_average_velocity():
    g = AV.GaussianFlow(MEAN, STD)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=gen) * 2
    r = torch.rand(64, generator=gen) * 0.6
    t = r + torch.rand(64, generator=gen) * (1 - r)
    u, target = AV.meanflow_target(g, x, r, t, g.velocity(x, r))
    assert torch.allclose(u, target, atol=1e-4)
    # a wrong velocity in the tangent breaks it: the check can fail
    _, wrong = AV.meanflow_target(g, x, r, t, g.velocity(x, r) + 1.0)
    assert (wrong - u).abs().max() > 0.1


def test_paper_convention_maps_to_ours():
    g = AV.GaussianFlow(MEAN, STD)
    ours = AV.from_paper_convention(_paper_gaussian_u)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    for r, t in [(0.0, 1.0), (0.1, 0.4), (0.3, 0.9)]:
        assert torch.allclose(ours(x, r, t), g(x, r, t), atol=1e-5), (r, t)
    # without the sign flip or with the times not mirrored the map is wrong
    assert not torch.allclose(_paper_gaussian_u(x, 0.1, 0.4), g(x, 0.1, 0.4), atol=1e-2)
    with pytest.raises(ValueError, match="r must not exceed t"):
        ours(x, 0.6, 0.2)


def test_one_jump_of_the_exact_average_velocity_is_the_ode_solution():
    g = AV.GaussianFlow(MEAN, STD)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    one = AV.sample(g, x, steps=1)
    ode = solvers.integrate(g.velocity, x, method="dopri5", atol=1e-7, rtol=1e-7)
    assert one.nfe == 1
    assert torch.allclose(one.x, ode.x, atol=1e-4)


# ------------------------------------------------------------------------------------- the wrapper
def test_wrapper_passes_the_interval_and_exposes_the_velocity():
    m = _model()
    x = torch.randn(5, 2)
    r, t = torch.full((5,), 0.2), torch.full((5,), 0.7)
    expected = m.net(x, r, cond=torch.full((5, 1), 0.5))
    assert torch.allclose(m(x, r, t), expected, atol=1e-6)
    assert torch.allclose(m.velocity(x, 0.3), m(x, 0.3, 0.3))
    assert not torch.allclose(m(x, 0.2, 0.7), m(x, 0.2, 0.2))


def test_wrapper_bad_inputs():
    with pytest.raises(ValueError, match="no input for the second time"):
        AV.AverageVelocity(nets.MLP(2, 16, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        AV.AverageVelocity(lambda x, t: x)
    m = _model()
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="r must not exceed t"):
        m(x, 0.8, 0.3)
    with pytest.raises(ValueError, match="r must lie in"):
        m(x, -0.1, 0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        m(x, 0.1, 1.5)
    with pytest.raises(ValueError, match="cond must be None"):
        m(x, 0.1, 0.5, cond=torch.zeros(3, 1))


def test_wrapper_keeps_the_callers_conditioning_channels():
    torch.manual_seed(0)
    m = AV.AverageVelocity(nets.MLP(2, 16, 2, cond_channels=3))
    assert m.cond_channels == 2
    x, c = torch.randn(4, 2), torch.randn(4, 2)
    assert m(x, 0.1, 0.6, cond=c).shape == (4, 2)
    with pytest.raises(ValueError, match="needs cond"):
        m(x, 0.1, 0.6)


def test_wrapper_on_an_image_network():
    pytest.importorskip("diffusers")
    torch.manual_seed(0)
    m = AV.AverageVelocity(nets.UNetVelocity(4, 8, preset="tiny", cond_channels=1))
    x = torch.randn(2, 4, 8, 8)
    u = m(x, torch.tensor([0.0, 0.3]), torch.tensor([1.0, 0.3]))
    assert u.shape == x.shape
    assert AV.sample(m, x, steps=2).x.shape == x.shape


def test_mlp_extra_inputs_are_checked():
    net = nets.MLP(2, 16, 2, cond_channels=2)
    x = torch.randn(3, 2)
    assert net(x, 0.5, cond=torch.zeros(3, 2)).shape == (3, 2)
    with pytest.raises(ValueError, match="needs cond"):
        net(x, 0.5)
    with pytest.raises(ValueError, match="cond must have shape"):
        net(x, 0.5, cond=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="cond must be None"):
        nets.MLP(2, 16, 2)(x, 0.5, cond=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="cond_channels must be an int >= 0"):
        nets.MLP(2, 16, 2, cond_channels=-1)
    with pytest.raises(ValueError, match="ensemble takes no extra inputs"):
        nets.MLPEnsemble.from_models([net, nets.MLP(2, 16, 2, cond_channels=2)])


# ------------------------------------------------------------------------------------ time pairs
def test_time_pairs_order_fraction_and_mirror_of_the_paper():
    tp = AV.TimePairs()
    r, t = tp.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert bool((r <= t).all()) and bool((r >= 0).all()) and bool((t <= 1).all())
    equal = (r == t).float().mean().item()
    assert abs(equal - 0.75) < 0.02
    # the paper's logit-normal(-0.4, 1) in its time (data at 0) is logit-normal(+0.4, 1) here: median of the
    # earlier time of distinct pairs below 1/2 like that of the paper's later (noisier) time above 1/2
    distinct = r != t
    assert r[distinct].median() < 0.5 < t[distinct].median()
    assert torch.logit(r[~distinct]).mean() < 0.4  # the kept time of equal pairs is the earlier of two draws
    uni = AV.TimePairs(equal_fraction=0.0, distribution="uniform").sample(20_000,
                                                                         generator=torch.Generator().manual_seed(1))
    assert abs(float((uni[1] - uni[0]).mean()) - 1 / 3) < 0.01  # E|a - b| of two uniforms
    stacked = tp.sample_time(7, generator=torch.Generator().manual_seed(0))
    assert stacked.shape == (7, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(equal_fraction=1.5), "equal_fraction"),
    (dict(distribution="beta"), "unknown distribution"),
    (dict(std=0.0), "std must be > 0"),
    (dict(mean=float("nan")), "mean must be a finite"),
])
def test_time_pairs_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AV.TimePairs(**kwargs)


# ------------------------------------------------------------------------------------------ loss
def test_loss_is_the_weighted_squared_error_to_the_detached_target():
    m = _model()
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(32, 2, generator=gen), torch.randn(32, 2, generator=gen) + 2
    r, t = torch.rand(32, generator=gen) * 0.5, 0.5 + torch.rand(32, generator=gen) * 0.5
    v = x1 - x0
    u, target = AV.meanflow_target(m, x0 + r[:, None] * v, r, t, v)
    err = (u - target.detach()).pow(2).sum(1)
    plain = AV.meanflow_loss(m, x0, x1, r=r, t=t, power=0.0)
    assert torch.allclose(plain, err.mean(), rtol=1e-5)
    robust = AV.meanflow_loss(m, x0, x1, r=r, t=t, power=1.0, eps=1e-3)
    assert torch.allclose(robust, (err / (err.detach() + 1e-3)).mean(), rtol=1e-5)
    plain.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    # with r = t the target is the conditional velocity: flow matching
    same = AV.meanflow_loss(m, x0, x1, r=r, t=r, power=0.0)
    assert torch.allclose(same, (m.velocity(x0 + r[:, None] * v, r) - v).pow(2).sum(1).mean(), rtol=1e-5)


def test_loss_bad_inputs():
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(TypeError, match="second time input"):
        AV.meanflow_loss(nets.MLP(2, 8, 1), x0, x1)
    m = _model()
    with pytest.raises(ValueError, match="r must not exceed t"):
        AV.meanflow_loss(m, x0, x1, r=torch.full((4,), 0.9), t=torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="t must lie in"):
        AV.meanflow_loss(m, x0, x1, r=torch.zeros(4), t=torch.full((4,), 1.2))
    with pytest.raises(ValueError, match="give both r and t"):
        AV.meanflow_loss(m, x0, x1, r=torch.zeros(4))
    with pytest.raises(ValueError, match="same shape"):
        AV.meanflow_loss(m, x0, x1[:3])
    with pytest.raises(ValueError, match="tangent must be"):
        AV.meanflow_loss(m, x0, x1, tangent="exact")
    with pytest.raises(ValueError, match="eps must be > 0"):
        AV.meanflow_loss(m, x0, x1, eps=0.0)


def test_model_tangent_uses_the_networks_own_velocity():
    m = _model()
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(16, 2, generator=gen), torch.randn(16, 2, generator=gen)
    r, t = torch.full((16,), 0.2), torch.full((16,), 0.8)
    v = x1 - x0
    xr = x0 + 0.2 * v
    u, target = AV.meanflow_target(m, xr, r, t, v, tangent=m.velocity(xr, r).detach())
    expected = (u - target.detach()).pow(2).sum(1).mean()
    got = AV.meanflow_loss(m, x0, x1, r=r, t=t, power=0.0, tangent="model")
    assert torch.allclose(got, expected, rtol=1e-5)
    assert not torch.allclose(got, AV.meanflow_loss(m, x0, x1, r=r, t=t, power=0.0), rtol=1e-3)


# -------------------------------------------------------------------------------------- training
def test_training_learns_a_one_step_map_to_a_gaussian():
    m = _model(hidden=32)

    def source(n, g):
        return torch.randn(n, 2, generator=g)

    def target(n, g):
        return MEAN + STD * torch.randn(n, 2, generator=g)

    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(10))
    exact = AV.GaussianFlow(MEAN, STD)(z, 0.0, 1.0)  # the chord from noise to data, in closed form
    with torch.no_grad():
        before = float((m(z, 0.0, 1.0) - exact).pow(2).sum(1).mean().sqrt())
    times = AV.TimePairs(equal_fraction=0.5, distribution="uniform")
    res = AV.train_meanflow(m, source, target, steps=1500, batch_size=128, lr=3e-3, power=0.0, times=times,
                            progress=False)
    assert len(res.losses) == 1500
    x = AV.sample(m.eval(), torch.randn(4000, 2, generator=torch.Generator().manual_seed(9)), steps=1).x
    assert (x.mean(0) - MEAN).abs().max() < 0.15, x.mean(0)
    assert (x.std(0) - STD).abs().max() < 0.2, x.std(0)  # the spread is learnt last (0.35-0.39 at this length)
    with torch.no_grad():
        after = float((m(z, 0.0, 1.0) - exact).pow(2).sum(1).mean().sqrt())
    assert after < 0.35 and after < 0.1 * before, (before, after)


def test_training_is_reproducible_and_checks_its_arguments(tmp_path):
    data = torch.randn(256, 2) + 3
    runs = []
    for _ in range(2):
        m = _model(seed=4)
        AV.train_meanflow(m, lambda n, g: torch.randn(n, 2, generator=g), data, steps=5, batch_size=16,
                          progress=False, seed=3)
        runs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(runs[0], runs[1])
    m = _model(seed=4)  # the same settings as a whole TrainerConfig (train_meanflow's own steps and batch over it)
    cfg = TrainerConfig(steps=99, batch_size=99, lr=1e-3, ema_decay=None, grad_clip=None, seed=3)
    AV.train_meanflow(m, lambda n, g: torch.randn(n, 2, generator=g), data, steps=5, batch_size=16,
                      progress=False, config=cfg)
    assert torch.equal(torch.cat([p.detach().flatten() for p in m.parameters()]), runs[0])
    m = _model()
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        AV.train_meanflow(m, data, data, steps=2, learning_rate=1e-3)
    with pytest.raises(TypeError, match="second time input"):
        AV.train_meanflow(nets.MLP(2, 8, 1), data, data, steps=2)
    with pytest.raises(TypeError, match="times must be a TimePairs"):
        AV.train_meanflow(m, data, data, steps=2, times=(0.5, 0.5))
    with pytest.raises(ValueError, match="unknown coupling"):
        AV.train_meanflow(m, data, data, steps=2, coupling="sinkhorn-ish")


# -------------------------------------------------------------------------------------- sampling
def test_sampler_steps_trajectory_and_bad_inputs():
    m = _model()
    x = torch.randn(6, 2)
    sol = AV.sample(m, x, steps=3, return_trajectory=True)
    assert sol.nfe == 3 and sol.trajectory.shape == (4, 6, 2)
    assert torch.allclose(sol.t, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    with torch.no_grad():
        manual = x + m(x, 0.0, 1.0)
    assert torch.allclose(AV.sample(m, x).x, manual)
    with pytest.raises(ValueError, match="cannot run backwards"):
        AV.sample(m, x, t_span=(1.0, 0.0))
    with pytest.raises(ValueError, match="cannot run backwards"):
        AV.sample(m, x, t_span=(0.0, 1.5))
    with pytest.raises(TypeError, match="second time input"):
        AV.sample(nets.MLP(2, 8, 1), x)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        AV.sample(m, x, steps=0)
    # the instantaneous velocity works with every solver of the project
    assert solvers.integrate(m.velocity, x, method="rk4", steps=4).x.shape == x.shape


def test_exact_average_velocity_bad_inputs():
    g = AV.GaussianFlow(MEAN, STD)
    x = torch.randn(2, 2)
    with pytest.raises(ValueError, match="r must not exceed t"):
        AV.exact_average_velocity(g.velocity, x, 0.7, 0.2)
    with pytest.raises(ValueError, match="t must be a float in"):
        AV.exact_average_velocity(g.velocity, x, 0.1, 1.3)
    with pytest.raises(ValueError, match="std must be > 0"):
        AV.GaussianFlow(MEAN, 0.0)
    assert math.isfinite(float(AV.exact_average_velocity(g.velocity, x, 0.4, 0.4).sum()))


@pytest.mark.parametrize("generator", ["g", 42])
def test_time_pairs_and_the_loss_refuse_a_generator_that_is_not_one(generator):
    with pytest.raises(TypeError, match="generator"):
        AV.TimePairs().sample(4, generator=generator)
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="generator"):
        AV.meanflow_loss(AV.AverageVelocity(nets.MLP(2, 8, 2, cond_channels=1)), x, x, generator=generator)


@pytest.mark.parametrize("kw, exc, name", [({"dtype": torch.int64}, TypeError, "dtype"),
                                           ({"dtype": torch.complex64}, TypeError, "dtype"),
                                           ({"device": "gpu9"}, ValueError, "device")])
def test_time_pairs_check_dtype_and_device(kw, exc, name):
    with pytest.raises(exc, match=name):
        AV.TimePairs().sample(4, **kw)
    r, t = AV.TimePairs().sample(4, device="cpu", dtype=torch.float64)
    assert r.dtype == torch.float64 and bool((r <= t).all())


def test_sample_return_trajectory_must_be_a_bool_and_gaussian_flow_mean_finite():
    model = AV.AverageVelocity(nets.MLP(2, 8, 2, cond_channels=1))
    for bad in ("yes", 2, 1.0):
        with pytest.raises(TypeError, match="return_trajectory"):
            AV.sample(model, torch.zeros(3, 2), return_trajectory=bad)
    with pytest.raises(ValueError, match="mean"):
        AV.GaussianFlow(torch.full((2,), float("nan")), 0.5)
