"""Classifier-free guidance, inpainting masks and semantic maps (lfm_core.guidance, lfm_core.conditioning)."""

import math

import pytest
import torch
from torch import nn

from lfm_core import conditioning as C
from lfm_core import guidance, solvers
from lfm_core.nets import UNetVelocity


class LinearLabelled(nn.Module):
    """v(x, t, y) = a_y x + b_y: the guided velocity has a closed form; counts forward calls and rows."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes, self.null_label = num_classes, num_classes
        self.a = torch.linspace(0.5, 1.5, num_classes + 1)
        self.b = torch.linspace(-1.0, 1.0, num_classes + 1)
        self.calls, self.rows = 0, 0

    def forward(self, x, t, labels=None, cond=None):
        self.calls += 1
        self.rows += x.shape[0]
        out = self.a[labels][:, None] * x + self.b[labels][:, None]
        return out if cond is None else out + cond


def test_guided_velocity_formula_one_pass_and_scale_one():
    m = LinearLabelled()
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 3])
    for w in [0.0, 1.0, 1.5, 4.0, -1.0]:
        m.calls = m.rows = 0
        v = guidance.guided_velocity(m, y, w)(x, t)
        v_c = m.a[y][:, None] * x + m.b[y][:, None]
        v_u = m.a[3] * x + m.b[3]
        torch.testing.assert_close(v, v_u + w * (v_c - v_u))
        # one batched pass of both branches; w = 1 (conditional) and w = 0 (unconditional) one branch only
        assert m.calls == 1 and m.rows == (4 if w in (0.0, 1.0) else 8)
    torch.testing.assert_close(v[3], (m.a[3] * x[3] + m.b[3]))  # the null label is unconditional for any w
    m.calls = 0
    torch.testing.assert_close(guidance.guided_velocity(m, y, 0)(x, t), m.a[3] * x + m.b[3])  # an int 0 too
    assert m.calls == 1


def test_guided_velocity_with_every_solver_and_cond():
    m = LinearLabelled()
    y, cond = torch.tensor([0, 2]), torch.ones(2, 2)
    v = guidance.guided_velocity(m, y, 2.0, cond=cond)
    for method in ["euler", "heun", "dopri5"]:
        m.calls = 0
        res = solvers.integrate(v, torch.zeros(2, 2), method=method, steps=10)
        assert res.x.shape == (2, 2) and bool(torch.isfinite(res.x).all())
        assert res.nfe == m.calls  # every velocity evaluation is one batched forward pass
    m.calls = 0
    res = solvers.integrate(v, torch.zeros(2, 2), method="euler", steps=7)
    assert res.nfe == 7 == m.calls


def test_guidance_with_a_real_image_network():
    torch.manual_seed(0)
    net = UNetVelocity(4, 8, preset="tiny", num_classes=10).eval()
    x, y = torch.randn(3, 4, 8, 8), torch.tensor([1, 5, 10])
    with torch.no_grad():
        v_c, v_u = net(x, 0.3, labels=y), net(x, 0.3, labels=torch.full_like(y, 10))
        torch.testing.assert_close(guidance.guided_velocity(net, y, 3.0)(x, 0.3), v_u + 3 * (v_c - v_u),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scale", [math.inf, math.nan, "2", True, None])
def test_guidance_scale_must_be_finite(scale):
    with pytest.raises(ValueError, match="finite"):
        guidance.guided_velocity(LinearLabelled(), torch.tensor([0]), scale)


def test_guidance_label_errors():
    m = LinearLabelled(3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\] \(3 is the null label\)"):
        guidance.guided_velocity(m, torch.tensor([0, 4]), 2.0)
    with pytest.raises(ValueError, match=r"lie in \[0, 3\]"):
        guidance.guided_velocity(m, torch.tensor([-1]), 2.0)
    with pytest.raises(TypeError, match="integer tensor"):
        guidance.guided_velocity(m, torch.tensor([0.0]), 2.0)
    with pytest.raises(ValueError, match="shape"):
        guidance.guided_velocity(m, torch.tensor([[0]]), 2.0)
    v = guidance.guided_velocity(m, torch.tensor([0, 1]), 2.0)
    with pytest.raises(ValueError, match="2 labels"):
        v(torch.zeros(3, 2), torch.rand(3))
    with pytest.raises(ValueError, match="num_classes"):
        guidance.guided_velocity(UNetVelocity(4, 8, preset="tiny"), torch.tensor([0]), 2.0)


def test_drop_labels():
    y = torch.arange(10).repeat(1000)
    out = guidance.drop_labels(y, 10, 0.1, generator=torch.Generator().manual_seed(0))
    frac = float((out == 10).float().mean())
    assert 0.09 < frac < 0.11
    assert torch.equal(out[out != 10], y[out != 10])
    assert torch.equal(guidance.drop_labels(y, 10, 0.0), y)
    assert bool((guidance.drop_labels(y, 10, 1.0) == 10).all())
    for p in [-0.1, 1.5, math.nan, "0.1"]:
        with pytest.raises(ValueError, match="probability"):
            guidance.drop_labels(y, 10, p)
    with pytest.raises(ValueError, match=r"lie in \[0, 9\]"):
        guidance.drop_labels(torch.tensor([10]), 10, 0.1)


# ------------------------------------------------------------------------------------------- masks
def test_masks_are_binary_and_sized():
    g = torch.Generator().manual_seed(0)
    r = C.rectangle_masks(20, 32, generator=g)
    s = C.stroke_masks(20, 32, generator=g)
    for m in (r, s):
        assert m.shape == (20, 1, 32, 32)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        frac = m.mean((1, 2, 3))
        assert bool((frac > 0.01).all()) and bool((frac < 0.9).all())
    # rectangles really are rectangles: the hole is its bounding box
    for m in r[:, 0]:
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        box = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert bool((box == 1).all())


def test_mask_helpers_and_composite():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, 2:6, 2:6] = 1
    xm = C.mask_images(x, m)
    assert bool((xm[:, :, 2:6, 2:6] == 0).all()) and torch.equal(xm[:, :, 0], x[:, :, 0])
    gen = torch.zeros_like(x)
    out = C.composite(gen, x, m)
    assert torch.equal(out[:, :, 0], x[:, :, 0]) and bool((out[:, :, 2:6, 2:6] == 0).all())
    d = C.downsample_mask(m, 4)
    assert d.shape == (2, 1, 4, 4) and float(d[0, 0, 1, 1]) == 1.0 and float(d[0, 0, 0, 0]) == 0.0
    assert C.region_psnr(x, out, 1 - m) == math.inf
    assert C.region_psnr(x, x + 0.2 * m, m) == pytest.approx(20.0)


@pytest.mark.parametrize("bad, match", [
    (torch.full((2, 1, 8, 8), 0.5), "binary"),
    (torch.zeros(2, 8, 8), "at least 4 dimension"),
    (torch.zeros(2, 2, 8, 8), r"\[N, 1, H, W\]"),
    (torch.zeros(3, 1, 8, 8), "do not match"),
    (torch.zeros(2, 1, 4, 4), "do not match"),
])
def test_bad_masks(bad, match):
    with pytest.raises(ValueError, match=match):
        C.mask_images(torch.zeros(2, 3, 8, 8), bad)


# ------------------------------------------------------------------------------------ semantic maps
def test_intensity_segmentation_and_one_hot():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(2, 1, 1, 1)
    maps, th = C.intensity_segmentation(x, 4, blur=1)
    assert maps.shape == (2, 8, 8) and maps.dtype == torch.long and th.shape == (3,)
    counts = torch.bincount(maps.flatten(), minlength=4)
    assert bool((counts == 32).all())  # quantile bands: equal shares
    again, _ = C.intensity_segmentation(x, 4, blur=1, thresholds=th)
    assert torch.equal(again, maps)
    oh = C.one_hot_maps(maps, 4, size=4)
    assert oh.shape == (2, 4, 4, 4)
    torch.testing.assert_close(oh.sum(1), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="increasing"):
        C.intensity_segmentation(x, 3, thresholds=torch.tensor([0.5, 0.1]))


@pytest.mark.parametrize("maps, err, match", [
    (torch.tensor([[[0, 5]]]), ValueError, "only 0..3 are known"),
    (torch.tensor([[[-1, 0]]]), ValueError, "only 0..3 are known"),
    (torch.zeros(1, 2, 2), TypeError, "integer tensor"),
    (torch.zeros(2, 2, dtype=torch.long), ValueError, r"\[N, H, W\]"),
])
def test_bad_segmentation_maps(maps, err, match):
    with pytest.raises(err, match=match):
        C.one_hot_maps(maps, 4)


def test_semantic_encoder_is_trained_with_the_network():
    torch.manual_seed(0)
    enc = C.SemanticEncoder(3, 4, out_channels=4)
    model = C.ConditionedVelocity(UNetVelocity(4, 4, preset="tiny", cond_channels=4), enc)
    assert any(p is enc.proj.weight for p in model.parameters())  # the projection is not frozen
    before = enc.proj.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    maps = torch.randint(0, 3, (4, 16, 16))
    x, t = torch.randn(4, 4, 4, 4), torch.rand(4)
    loss = (model(x, t, maps) - 1).pow(2).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, enc.proj.weight)
    out_none = model(x, t, None)
    out_dropped = model(x, t, maps, keep=torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(out_none, out_dropped)  # dropping the condition = no condition


def test_smooth_fill_keeps_known_pixels_fills_holes_smoothly_and_beats_grey_on_smooth_images():
    from lfm_core import conditioning as C

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    smooth = torch.stack([0.6 * xx + 0.3 * yy, 0.5 * torch.sin(2 * xx), -0.4 * yy])[None].repeat(4, 1, 1, 1)
    masks = C.rectangle_masks(4, 32, generator=g)
    filled = C.smooth_fill(smooth, masks)
    known = (1 - masks).bool().expand_as(smooth)
    assert torch.equal(filled[known], smooth[known])
    assert torch.isfinite(filled).all()
    grey = C.region_psnr(smooth, C.composite(torch.zeros_like(smooth), smooth, masks), masks)
    ours = C.region_psnr(smooth, filled, masks)
    assert ours > grey + 10, (ours, grey)   # a smooth image is predictable from its surroundings
    # a hole that covers everything: no known pixel to fill from, refused (it used to return a grey image)
    everything = torch.ones(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"masks of image\(s\) \[0\] are all hole"):
        C.smooth_fill(smooth[:1, :, :8, :8], everything)


def test_smooth_fill_kernel_wider_than_the_image_is_exact_and_cheap():
    """Taps past the replicate padding's edge all read the edge pixel: folded into it, the blur is the same (to
    rounding) as the full kernel, and sigma = 1e6 (6 million taps, which used to hang) takes no longer than 2."""
    import time

    from lfm_core import conditioning as C

    def reference(images, masks, sigma, iterations=50):  # the plain blur with the whole kernel
        r = max(1, math.ceil(3 * sigma))
        ax = torch.arange(-r, r + 1, dtype=images.dtype)
        g1 = torch.exp(-ax**2 / (2 * sigma**2))
        g1 = g1 / g1.sum()
        c = images.shape[1]
        hole = masks.expand_as(images).bool()
        weight = (~hole).to(images)
        mean = (images * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)
        out = torch.where(hole, mean.view(-1, 1, 1, 1), images)

        def blur(x):
            x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate"),
                                           g1.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
            return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate"),
                                              g1.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)

        for _ in range(iterations):
            num, den = blur(out * weight), blur(weight)
            reached = den > 1e-6
            out = torch.where(hole & reached, num / den.clamp_min(1e-6), out)
            weight = torch.where(hole & reached, torch.ones_like(weight), weight)
        return out

    g = torch.Generator().manual_seed(0)
    for h, w, sigma in [(8, 8, 5.0), (6, 11, 3.0), (5, 9, 40.0), (1, 6, 3.0)]:
        x = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64)
        m = (torch.rand(2, 1, h, w, generator=g) > 0.6).double()
        m[:, :, 0, 0] = 0
        torch.testing.assert_close(C.smooth_fill(x, m, sigma=sigma), reference(x, m, sigma), rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 1, 8, 8, generator=g)
    m = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    m[:, :, 0, 0] = 0
    for sigma in (1e6, 1e300):
        start = time.perf_counter()
        out = C.smooth_fill(x, m, sigma=sigma)
        assert time.perf_counter() - start < 5 and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs, match", [({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"),
                                           ({"iterations": 0}, "iterations"), ({"iterations": 1.5}, "iterations")])
def test_smooth_fill_refuses_bad_arguments(kwargs, match):
    from lfm_core import conditioning as C

    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises((ValueError, TypeError), match=match):
        C.smooth_fill(x, torch.zeros(2, 1, 8, 8), **kwargs)
    with pytest.raises((ValueError, TypeError), match="masks"):
        C.smooth_fill(x, torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises((ValueError, TypeError), match="images"):
        C.smooth_fill(torch.full((2, 1, 8, 8), float("nan")), torch.zeros(2, 1, 8, 8))


def test_guidance_names_null_label_and_allow_null():
    with pytest.raises(ValueError, match="null_label"):
        guidance.drop_labels(torch.tensor([0, 1, 2]), 1, 0.2)
    for bad in ("yes", 2, 1.0):
        with pytest.raises(TypeError, match="allow_null"):
            guidance.check_labels(torch.tensor([0, 1]), 3, allow_null=bad)
    assert torch.equal(guidance.check_labels(torch.tensor([0, 3]), 3, allow_null=True), torch.tensor([0, 3]))
