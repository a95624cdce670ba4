import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lfm_core import paths
from lfm_core.paths import BridgePath, LinearPath, TargetPath, VPPath

ALL_PATHS = [LinearPath(0.0), LinearPath(0.3), TargetPath(1e-4), TargetPath(0.1), VPPath(0.0), VPPath(0.2),
             BridgePath(1.0), BridgePath(0.0)]


def autograd_dxdt(path, x0, x1, t, noise):
    """d x_t / dt by autograd, holding x0, x1 and the noise fixed (x_t[i] depends on t[i] only)."""
    t = t.clone().requires_grad_(True)
    xt, _ = path.sample(x0, x1, t, noise=noise)
    flat = xt.reshape(xt.shape[0], -1)
    cols = []
    for j in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, j].sum(), t, retain_graph=True)
        cols.append(g)
    return torch.stack(cols, dim=1).reshape(xt.shape)


@pytest.mark.parametrize("path", ALL_PATHS, ids=repr)
def test_ut_is_time_derivative_of_xt(path, gen):
    x0 = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    x1 = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(16, generator=gen, dtype=torch.float64)
    _, ut = path.sample(x0, x1, t, noise=noise)
    torch.testing.assert_close(ut, autograd_dxdt(path, x0, x1, t, noise), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", [LinearPath(0.0), VPPath(0.0), BridgePath(0.0), BridgePath(2.0)], ids=repr)
def test_endpoints_are_source_and_target(path, gen):
    x0 = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    if not isinstance(path, BridgePath) or path.sigma == 0:
        torch.testing.assert_close(path.sample(x0, x1, 0.0)[0], x0)
        torch.testing.assert_close(path.sample(x0, x1, 1.0)[0], x1)
    # the bridge with noise pins both ends: the noise term vanishes as t -> 0 and t -> 1
    for t, end in [(1e-9, x0), (1 - 1e-9, x1)]:
        torch.testing.assert_close(path.sample(x0, x1, t, generator=gen)[0], end, atol=1e-3, rtol=0)
        assert not torch.equal(path.sample(x0, x1, 0.5, generator=gen)[0], x0)


def test_target_path_endpoints_and_source_restriction(gen):
    x0, x1 = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    p = TargetPath(sigma_min=0.1)
    torch.testing.assert_close(p.sample(x0, x1, 0.0)[0], x0)
    torch.testing.assert_close(p.sample(x0, x1, 1.0)[0], x1 + 0.1 * x0)
    assert p.gaussian_source_only and not LinearPath().gaussian_source_only
    assert "standard normal source" in TargetPath.__doc__


def test_noise_widths_match_their_definitions(gen):
    n, t = 200_000, 0.3
    x0, x1 = torch.zeros(n, 1), torch.zeros(n, 1)
    for path, std in [(LinearPath(0.5), 0.5), (VPPath(0.2), 0.2), (BridgePath(1.5), 1.5 * math.sqrt(t * (1 - t)))]:
        xt, _ = path.sample(x0, x1, t, generator=gen)
        assert abs(float(xt.std()) - std) < 0.01 * std + 1e-3, path


def test_bridge_velocity_matches_the_xt_form(gen):
    """u_t = x1 - x0 + (1 - 2t) / (2 t (1 - t)) (x_t - mu_t): the form of the SB-CFM paper."""
    p = BridgePath(0.7)
    x0 = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    t = p.sample_time(32, generator=gen, dtype=torch.float64)
    xt, ut = p.sample(x0, x1, t, generator=gen)
    mu = (1 - t)[:, None] * x0 + t[:, None] * x1
    expected = x1 - x0 + ((1 - 2 * t) / (2 * t * (1 - t)))[:, None] * (xt - mu)
    torch.testing.assert_close(ut, expected)


def test_sample_time_ranges(gen):
    t = LinearPath().sample_time(10_000, generator=gen)
    assert t.shape == (10_000,) and float(t.min()) >= 0 and float(t.max()) < 1
    b = BridgePath(1.0, t_min=0.01).sample_time(10_000, generator=gen)
    assert float(b.min()) >= 0.01 and float(b.max()) <= 0.99


def test_float_time_is_broadcast_and_noise_is_reproducible():
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    a = LinearPath(0.1).sample(x0, x1, 0.5, generator=torch.Generator().manual_seed(0))
    b = LinearPath(0.1).sample(x0, x1, torch.full((4,), 0.5), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 6), rest=shapes, which=st.integers(0, len(ALL_PATHS) - 1), seed=st.integers(0, 2**16))
def test_property_any_shape(batch, rest, which, seed):
    """For any shape [B, ...]: outputs shaped like x0, finite, and u_t is the derivative of x_t."""
    path = ALL_PATHS[which]
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *rest)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x1 = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    t = path.sample_time(batch, generator=g, dtype=torch.float64).clamp(0.01, 0.99)
    xt, ut = path.sample(x0, x1, t, noise=noise)
    assert xt.shape == ut.shape == shape
    assert torch.isfinite(xt).all() and torch.isfinite(ut).all()
    torch.testing.assert_close(ut, autograd_dxdt(path, x0, x1, t, noise), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(x1=torch.randn(5, 2)), ValueError, "same shape"),
        (dict(x1=torch.randn(4, 3)), ValueError, "same shape"),
        (dict(t=1.5), ValueError, r"\[0, 1\]"),
        (dict(t=-0.1), ValueError, r"\[0, 1\]"),
        (dict(t=torch.rand(3)), ValueError, "shape"),
        (dict(t=torch.rand(4, 1)), ValueError, "shape"),
        (dict(t="0.5"), TypeError, "t must be"),
        (dict(t=float("nan")), ValueError, "non-finite"),
        (dict(x0=torch.tensor([[float("nan"), 0.0]] * 4)), ValueError, "x0 contains"),
        (dict(x1=torch.tensor([[float("inf"), 0.0]] * 4)), ValueError, "x1 contains"),
        (dict(x0=[[0.0, 0.0]] * 4), TypeError, "x0 must be a torch.Tensor"),
        (dict(x0=torch.zeros(4, 2, dtype=torch.long)), TypeError, "floating"),
        (dict(x0=torch.zeros(0, 2), x1=torch.zeros(0, 2), t=torch.zeros(0)), ValueError, "empty"),
        (dict(noise=torch.randn(3, 2)), ValueError, "noise"),
    ],
)
def test_bad_inputs_are_rejected(kwargs, err, match):
    args = dict(x0=torch.randn(4, 2), x1=torch.randn(4, 2), t=0.5)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        LinearPath(0.1).sample(args["x0"], args["x1"], args["t"], noise=args.get("noise"))


@pytest.mark.parametrize("cls", [LinearPath, VPPath, BridgePath])
@pytest.mark.parametrize("sigma, err", [(-0.1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                         ("0.1", TypeError), (True, TypeError)])
def test_bad_sigma(cls, sigma, err):
    with pytest.raises(err, match="sigma"):
        cls(sigma)


def test_bad_target_and_bridge_parameters():
    with pytest.raises(ValueError, match="sigma_min"):
        TargetPath(sigma_min=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        TargetPath(sigma_min=-1e-3)
    with pytest.raises(ValueError, match="t_min"):
        BridgePath(1.0, t_min=0.6)


def test_bridge_refuses_endpoints_when_noisy():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="open interval"):
        BridgePath(1.0).sample(x, x, torch.tensor([0.5, 0.0, 0.3]))
    with pytest.raises(ValueError, match="open interval"):
        BridgePath(1.0).sample(x, x, 1.0)
    BridgePath(0.0).sample(x, x, 1.0)  # without noise the bridge is the straight line: fine


def test_random_draws_follow_the_generator_device():
    """A CPU generator seeds reproducible runs even for GPU tensors: draws happen on its device, then move."""
    from lfm_core.utils import draw_device

    g = torch.Generator()
    assert draw_device(g, torch.device("cuda")) == torch.device("cpu")
    assert draw_device(None, "cpu") == "cpu"
    a = LinearPath().sample_time(5, generator=torch.Generator().manual_seed(0), device="cpu")
    b = LinearPath().sample_time(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.device.type == "cpu"


def test_value_checks_stay_off_accelerators_inside_loops():
    """Reading a value back from a GPU synchronises it: value checks run on CPU tensors, at boundaries, or in debug
    mode (utils.debug_checks), never per step on an accelerator."""
    from types import SimpleNamespace

    from lfm_core import utils

    on_gpu = SimpleNamespace(device=torch.device("cuda", 0))
    assert utils.values_checked(torch.zeros(1))
    assert not utils.values_checked(on_gpu)
    assert utils.values_checked(on_gpu, boundary=True)
    with utils.debug_checks():
        assert utils.values_checked(on_gpu)
    assert not utils.values_checked(on_gpu)
    with utils.debug_checks(), utils.debug_checks(False):   # the innermost block decides
        assert not utils.values_checked(on_gpu)


@pytest.mark.parametrize("generator", ["g", 42])
def test_paths_refuse_a_generator_that_is_not_one(generator):
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="generator"):
        paths.LinearPath(0.1).sample(x, x, 0.5, generator=generator)
    for path in (paths.VPPath(), paths.BridgePath()):
        with pytest.raises(TypeError, match="generator"):
            path.sample_time(4, generator=generator)


@pytest.mark.parametrize("kw, exc, name", [({"dtype": torch.int64}, TypeError, "dtype"),
                                           ({"dtype": torch.complex64}, TypeError, "dtype"),
                                           ({"dtype": "float32"}, TypeError, "dtype"),
                                           ({"device": "gpu9"}, ValueError, "device"),
                                           ({"device": 3.5}, TypeError, "device")])
def test_sample_time_checks_dtype_and_device(kw, exc, name):
    for path in (paths.VPPath(), paths.BridgePath(), paths.LinearPath()):
        with pytest.raises(exc, match=name):
            path.sample_time(4, **kw)
    assert paths.VPPath().sample_time(3, device="cpu", dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("t", [torch.full((3,), 0.5, dtype=torch.complex64), torch.ones(3, dtype=torch.bool)])
def test_schedule_refuses_complex_and_bool_times(t):
    for path in (paths.TargetPath(), paths.LinearPath(), paths.VPPath(), paths.BridgePath()):
        with pytest.raises(TypeError, match="t must hold real numbers"):
            path.schedule(t)
