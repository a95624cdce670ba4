import math

import pytest
import torch

from lfm_core.mixtures import GaussianMixture
from lfm_core.paths import LinearPath
from lfm_core.solvers import ADAPTIVE, FIXED_STEP, integrate, log_likelihood, standard_normal_log_prob


def rhs(x, t):
    """dx/dt = -2 t x, solved by x(t) = x(0) exp(-t^2): time-dependent, so t handling is tested."""
    return -2 * t[:, None] * x


def exact(x0, t):
    return x0 * math.exp(-(t**2))


@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_order_of_accuracy(method, order):
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    errs = [float((integrate(rhs, x0, method=method, steps=n).x - exact(x0, 1.0)).abs().max()) for n in (16, 32)]
    rate = math.log2(errs[0] / errs[1])
    assert abs(rate - order) < 0.25, (method, errs, rate)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_meet_tolerance(method):
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    sol = integrate(rhs, x0, method=method, atol=1e-8, rtol=1e-8)
    assert float((sol.x - exact(x0, 1.0)).abs().max()) < 1e-5
    assert sol.nfe > 0


@pytest.mark.parametrize("method", list(FIXED_STEP))
def test_nfe_is_exact_for_fixed_steps(method):
    calls = []

    def v(x, t):
        calls.append(t.shape)
        return -x

    sol = integrate(v, torch.ones(3, 2), method=method, steps=7)
    assert sol.nfe == len(calls) == 7 * FIXED_STEP[method]
    assert all(s == (3,) for s in calls)  # t arrives as [B]


def test_nfe_is_exact_for_dopri5():
    count = [0]

    def v(x, t):
        count[0] += 1
        return rhs(x, t)

    sol = integrate(v, torch.ones(2, 2, dtype=torch.float64), method="dopri5")
    assert sol.nfe == count[0] > 6


def test_backwards_integration_inverts_forwards():
    x0 = torch.randn(5, 2, dtype=torch.float64)
    fwd = integrate(rhs, x0, method="rk4", steps=50)
    back = integrate(rhs, fwd.x, t_span=(1.0, 0.0), method="rk4", steps=50)
    torch.testing.assert_close(back.x, x0, atol=1e-7, rtol=0)
    back5 = integrate(rhs, fwd.x, t_span=(1.0, 0.0), method="dopri5", atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(back5.x, x0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_trajectory(method):
    x0 = torch.randn(4, 3, 2)
    sol = integrate(lambda x, t: torch.ones_like(x), x0, method=method, steps=10, return_trajectory=True)
    assert sol.trajectory.shape == (11, 4, 3, 2) and sol.t.shape == (11,)
    torch.testing.assert_close(sol.trajectory[0], x0)
    torch.testing.assert_close(sol.trajectory[-1], sol.x)
    torch.testing.assert_close(sol.trajectory[5], x0 + 0.5, atol=1e-5, rtol=0)


def test_cond_is_passed_and_no_graph_by_default():
    w = torch.tensor(2.0, requires_grad=True)
    sol = integrate(lambda x, t, scale: scale * w * x, torch.ones(2, 1), cond={"scale": 0.5}, method="euler", steps=100)
    torch.testing.assert_close(sol.x, torch.full((2, 1), math.exp(1.0)), rtol=1e-2, atol=0)
    assert not sol.x.requires_grad
    assert integrate(lambda x, t: w * x, torch.ones(2, 1), steps=2, enable_grad=True).x.requires_grad


def test_log_likelihood_of_a_linear_flow():
    """v = A x: x1 = exp(A) x0, so log p1(x) = log N(exp(-A) x; 0, I) - tr(A) for any A."""
    a = torch.tensor([[0.3, 0.8], [-0.5, -0.2]], dtype=torch.float64)
    v = lambda x, t: x @ a.T  # noqa: E731
    x = torch.randn(64, 2, dtype=torch.float64)
    expected = standard_normal_log_prob(x @ torch.linalg.matrix_exp(-a).T) - torch.trace(a)
    got = log_likelihood(v, x, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # Hutchinson is unbiased: averaged over many draws it matches, one draw alone does not
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([log_likelihood(v, x, divergence="hutchinson", generator=g) for _ in range(200)])
    torch.testing.assert_close(draws.mean(0), expected, atol=0.06, rtol=0)
    assert float((draws[0] - expected).abs().max()) > 0.05


def test_log_likelihood_gaussian_to_gaussian():
    """The exact marginal velocity from N(0, I) to N(m, s^2 I) gives back the analytic density."""
    target = GaussianMixture(torch.tensor([[2.0, -1.0]]), 0.6)
    path = LinearPath()
    v = target.velocity(path)
    x = target.sample(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ll, nfe = log_likelihood(v, x, atol=1e-7, rtol=1e-7, return_nfe=True)
    torch.testing.assert_close(ll, target.log_prob(x), atol=1e-4, rtol=0)
    assert nfe > 0
    # the velocity's Jacobian is a multiple of I here, so Hutchinson is exact
    hutch = log_likelihood(v, x, divergence="hutchinson", atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(hutch, ll, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(method="rk45"), ValueError, "unknown method 'rk45'"),
        (dict(steps=0), ValueError, "steps must be >= 1"),
        (dict(steps=2.5), TypeError, "steps must be an int"),
        (dict(t_span=(0.0, 0.0)), ValueError, "t0 != t1"),
        (dict(t_span=(0.0,)), ValueError, "pair"),
        (dict(t_span=(0.0, float("nan"))), ValueError, "finite"),
        (dict(t_span=("0", 1)), TypeError, "real numbers"),
        (dict(atol=0.0), ValueError, "atol"),
        (dict(rtol=-1.0), ValueError, "rtol"),
        (dict(cond=[1]), TypeError, "cond"),
        (dict(x=torch.tensor([[float("nan")]])), ValueError, "x contains"),
        (dict(x=[[0.0]]), TypeError, "x must be a torch.Tensor"),
        (dict(velocity=3), TypeError, "velocity must be callable"),
        (dict(velocity=lambda x, t: x[:, :1]), ValueError, "shaped like x"),
    ],
)
def test_bad_inputs(kwargs, err, match):
    args = dict(velocity=lambda x, t: -x, x=torch.ones(2, 2))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        integrate(args.pop("velocity"), args.pop("x"), **args)


def test_diverging_flow_is_reported():
    with pytest.raises(FloatingPointError, match="non-finite"):
        integrate(lambda x, t: x.pow(2) * 1e30, torch.ones(2, 1) * 10, method="euler", steps=20)


def test_log_likelihood_bad_inputs():
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(lambda x, t: x, torch.ones(2, 2), divergence="trace")
    with pytest.raises(TypeError, match="source_log_prob"):
        log_likelihood(lambda x, t: x, torch.ones(2, 2), source_log_prob=None)
    with pytest.raises(ValueError, match="x contains"):
        log_likelihood(lambda x, t: x, torch.full((2, 2), float("inf")))


def _turns_nan_after(t_bad):
    def v(x, t):
        return torch.where((t > t_bad)[:, None], torch.full_like(x, float("nan")), -x)

    return v


@pytest.mark.parametrize("method", ["dopri5", "euler", "rk4"])
def test_a_velocity_that_turns_nan_is_reported_with_its_time(method):
    """dopri5 used to raise 'AssertionError: underflow in dt 0.0' here (and to hang under python -O)."""
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"non-finite values \(NaN or inf\) at t = 0\.[5-9]"):
        integrate(_turns_nan_after(0.5), x, method=method, steps=20)


def test_adaptive_solver_stops_at_max_nfe():
    stiff = lambda x, t: -1e5 * (x - torch.cos(50 * t)[:, None])  # noqa: E731
    with pytest.raises(RuntimeError, match="max_nfe = 200"):
        integrate(stiff, torch.ones(2, 1), method="dopri5", max_nfe=200)


def test_nan_velocity_under_python_optimisations_does_not_hang():
    import subprocess
    import sys

    code = ("import torch; from lfm_core.solvers import integrate\n"
            "v = lambda x, t: torch.where((t > 0.5)[:, None], torch.full_like(x, float('nan')), -x)\n"
            "try:\n    integrate(v, torch.ones(4, 2), method='dopri5')\n"
            "except FloatingPointError as e:\n    print('stopped:', e)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "stopped: the velocity returned non-finite values" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("x, exc", [(3.0, TypeError), ("abc", TypeError), (torch.zeros(0, 2), ValueError),
                                    (torch.tensor([[0.0, float("nan")]]), ValueError),
                                    (torch.tensor([[0.0, float("inf")]]), ValueError),
                                    (torch.zeros(2, 2, dtype=torch.complex64), TypeError)])
def test_standard_normal_log_prob_refuses_bad_x(x, exc):
    with pytest.raises(exc, match="x"):
        standard_normal_log_prob(x)
    assert standard_normal_log_prob(torch.zeros(2, 3)).shape == (2,)
