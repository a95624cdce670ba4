r"""Spatial conditions for latent flow matching: inpainting masks and semantic maps (LFM, Dao et al. 2023).

**Inpainting.** The velocity network sees, concatenated to the noisy latent ``z_t`` (4 channels), the
latent of the masked image ``s E(x * (1 - m))`` (4 channels) and the mask ``m`` downsampled to the
latent size (1 channel): 9 input channels, as in the paper. Here ``m = 1`` marks the **hole** (pixels
to generate) and ``m = 0`` the known pixels; masked pixels are set to 0 (mid-grey in ``[-1, 1]``).
After decoding, the known pixels are copied back (:func:`composite`), so the known region is exact.
:func:`smooth_fill`, a blur of the known pixels diffused into the hole, is the baseline to beat.
Masks: rectangles (:func:`rectangle_masks`) and free-form strokes (:func:`stroke_masks`, thick random
polylines, in the spirit of the free-form masks of Yu et al. 2019).

**Semantic-to-image.** A segmentation map with ``K`` classes is one-hot encoded, downsampled to the
latent size (area averaging: each latent cell gets the class proportions of its pixels) and projected
to 4 channels by a trainable 1x1 convolution (:class:`SemanticEncoder`), then concatenated to ``z_t``
(8 input channels). The official LFM code builds this projection but leaves it frozen by mistake; ours
is trained with the velocity network (pass :meth:`SemanticEncoder.parameters` to the optimiser, as
:class:`ConditionedVelocity` does by holding it as a submodule).

Offline there are no segmentation labels, so :func:`intensity_segmentation` makes a stand-in: a fixed
rule that quantises a smoothed image into ``K`` intensity bands (dark hair and background, skin,
highlights on faces). It is stated as a stand-in wherever it is used.

Copy with: utils (``torch`` only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .utils import (
    as_real,
    check_finite,
    check_generator,
    check_nonnegative,
    check_positive_int,
    check_tensor,
    values_checked,
)

__all__ = ["check_masks", "rectangle_masks", "stroke_masks", "mask_images", "downsample_mask", "composite",
           "smooth_fill", "check_segmentation", "intensity_segmentation", "one_hot_maps", "SemanticEncoder",
           "ConditionedVelocity", "region_psnr"]


# ------------------------------------------------------------------------------------------ masks
def check_masks(masks: torch.Tensor, images: torch.Tensor | None = None, name: str = "masks") -> torch.Tensor:
    """Check that ``masks`` is ``[N, 1, H, W]``, binary (0 known, 1 hole), and matches ``images`` if given."""
    check_tensor(masks, name, min_dim=4, floating=False)
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"{name} must have shape [N, 1, H, W], got {tuple(masks.shape)}")
    if images is not None and (masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[2:]):
        raise ValueError(f"{name} {tuple(masks.shape)} do not match images {tuple(images.shape)}: need "
                         f"[{images.shape[0]}, 1, {images.shape[2]}, {images.shape[3]}]")
    if values_checked(masks) and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"{name} must be binary: 1 for the hole (to generate), 0 for known pixels")
    return masks.float()


def rectangle_masks(n: int, size: int, *, min_frac: float = 0.25, max_frac: float = 0.6,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` masks ``[n, 1, size, size]``, each one axis-aligned rectangle, sides in ``[min_frac, max_frac] * size``."""
    check_positive_int(n, "n")
    check_positive_int(size, "size")
    min_frac = check_nonnegative(min_frac, "min_frac", strict=True)
    max_frac = check_nonnegative(max_frac, "max_frac", strict=True)
    check_generator(generator)
    if not (0 < min_frac <= max_frac <= 1):
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    masks = torch.zeros(n, 1, size, size)
    lo, hi = max(1, round(min_frac * size)), max(1, round(max_frac * size))
    for i in range(n):
        hh, ww = (int(v) for v in torch.randint(lo, hi + 1, (2,), generator=generator))
        top = int(torch.randint(0, size - hh + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - ww + 1, (1,), generator=generator))
        masks[i, 0, top:top + hh, left:left + ww] = 1.0
    return masks


def stroke_masks(n: int, size: int, *, strokes: int = 3, vertices: int = 4, width_frac: float = 0.12,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` free-form masks ``[n, 1, size, size]``: ``strokes`` thick polylines of ``vertices`` random turns each."""
    check_positive_int(n, "n")
    check_positive_int(size, "size")
    check_positive_int(strokes, "strokes")
    check_positive_int(vertices, "vertices")
    width_frac = check_nonnegative(width_frac, "width_frac", strict=True)
    check_generator(generator)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2)  # pixel centres
    radius = max(1.0, width_frac * size / 2)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        hole = torch.zeros(size * size, dtype=torch.bool)
        for _ in range(strokes):
            p = torch.rand(2, generator=generator) * size
            for _ in range(vertices):
                angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
                length = (0.2 + 0.3 * float(torch.rand(1, generator=generator))) * size
                q = (p + length * torch.tensor([math.cos(angle), math.sin(angle)])).clamp(0, size)
                d = q - p  # distance of every pixel centre to the segment p-q
                s = ((pix - p) @ d / d.dot(d).clamp_min(1e-9)).clamp(0, 1)
                hole |= (pix - (p + s[:, None] * d)).norm(dim=1) <= radius
                p = q
        masks[i, 0] = hole.reshape(size, size).float()
    return masks


def mask_images(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The images with their holes set to 0 (mid-grey): ``x * (1 - m)``."""
    check_tensor(images, "images", min_dim=4)
    check_finite(images, "images")
    masks = check_masks(masks, images)
    return images * (1 - masks.to(images))


def downsample_mask(masks: torch.Tensor, size: int) -> torch.Tensor:
    """The share of hole pixels in each cell of a ``size x size`` grid (area averaging), in ``[0, 1]``."""
    masks = check_masks(masks)
    check_positive_int(size, "size")
    return F.interpolate(masks, size=(size, size), mode="area")


def composite(generated: torch.Tensor, original: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Generated pixels in the hole, the original pixels elsewhere: ``m x_gen + (1 - m) x``."""
    check_tensor(generated, "generated", min_dim=4)
    check_tensor(original, "original", min_dim=4)
    check_finite(generated, "generated")
    check_finite(original, "original")
    masks = check_masks(masks, original)
    if generated.shape != original.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and original {tuple(original.shape)} differ in shape")
    m = masks.to(original)
    return m * generated + (1 - m) * original


def _blur_weights(sigma: float, size: int, dtype, device):
    """The taps ``g(k)``, ``|k| <= m``, of a Gaussian of std ``sigma`` truncated at ``r = ceil(3 sigma)`` and
    normalised, for a signal of ``size`` samples: ``m = min(r, size - 1)``, and the mass of the taps beyond ``m``
    on each side (0 when ``r <= size - 1``).

    Under replicate padding every tap farther than ``size - 1`` reads an edge sample, whatever the output sample:
    the taps beyond ``m`` add ``tail x (first + last sample)``, so the kernel never needs more than ``2 size - 1``
    taps, exactly, however large ``sigma`` is.
    """
    r = max(1, math.ceil(3 * sigma)) if math.isfinite(3 * sigma) else math.inf
    m = min(r, size - 1)
    if r == m:
        ax = torch.arange(-r, r + 1, dtype=dtype, device=device)  # the exact taps (and sums) of a plain blur
        g1 = torch.exp(-ax**2 / (2 * sigma**2))
        return g1 / g1.sum(), m, 0.0
    g = torch.exp(-0.5 * (torch.arange(-m, m + 1, dtype=torch.float64) / sigma) ** 2)
    if r - m <= 2**20:  # sum the tail directly
        tail = float(torch.exp(-0.5 * (torch.arange(m + 1, r + 1, dtype=torch.float64) / sigma) ** 2).sum())
    else:  # sigma > 3e5: Euler-Maclaurin, sum = integral + endpoint terms (error far below float64's rounding)
        f = lambda k: math.exp(-0.5 * (k / sigma) ** 2)  # noqa: E731
        df = lambda k: -(k / sigma) / sigma * f(k) if f(k) else 0.0  # noqa: E731
        s2 = sigma * math.sqrt(2)
        integral = sigma * math.sqrt(math.pi / 2) * (math.erfc(m / s2) - math.erfc(r / s2))
        tail = integral + (f(r) - f(m)) / 2 + (df(r) - df(m)) / 12
    total = float(g.sum()) + 2 * tail
    return (g / total).to(dtype=dtype, device=device), m, tail / total


def smooth_fill(images: torch.Tensor, masks: torch.Tensor, *, sigma: float = 2.0, iterations: int = 50) -> torch.Tensor:
    r"""Fill the hole (``masks == 1``) with a blur of the known pixels: the strongest simple inpainting baseline.

    Normalised convolution, repeated: each step blurs the current image and the indicator of filled pixels with a
    Gaussian of std ``sigma`` (pixels; truncated at ``3 sigma``, replicate padding) and sets every hole pixel to
    ``blur(filled image) / blur(indicator)``, so the known pixels diffuse inwards; known pixels are never changed.
    After ``iterations`` steps a pixel deeper than about ``3 sigma sqrt(iterations)`` inside a hole still takes the
    mean of the known pixels of its image. In PSNR this beats any sharp fill, since the mean of the plausible fills
    minimises the squared error.

    Any ``sigma > 0`` is taken: a kernel wider than the image is applied exactly with at most ``2 size - 1`` taps
    per axis, since the taps that reach past the padding's edge all read the edge pixel (their mass is added to
    it), so its cost does not grow with ``sigma``. Every image needs at least one known pixel (a mask that is all
    hole leaves nothing to fill from: ``ValueError``).
    """
    check_tensor(images, "images", min_dim=4)
    check_finite(images, "images")
    masks = check_masks(masks, images)
    sigma = check_nonnegative(sigma, "sigma", strict=True)
    check_positive_int(iterations, "iterations")
    if values_checked(masks):
        empty = (masks.flatten(1) > 0).all(1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"masks of image(s) {empty[:10]} are all hole (1 everywhere): smooth_fill has no known "
                             "pixel to fill from")
    c, height, width = images.shape[1], images.shape[2], images.shape[3]
    gh, mh, tail_h = _blur_weights(sigma, height, images.dtype, images.device)
    gw, mw, tail_w = _blur_weights(sigma, width, images.dtype, images.device)
    hole = masks.to(images).expand_as(images).bool()
    known = (~hole).to(images)
    counts = known.flatten(1).sum(1)
    mean = (images * known).flatten(1).sum(1) / counts.clamp_min(1)      # per image: all its known pixels
    out = torch.where(hole, mean.view(-1, *([1] * (images.dim() - 1))), images)
    weight = known

    def blur(x):
        y = F.conv2d(F.pad(x, (mw, mw, 0, 0), mode="replicate"), gw.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        if tail_w:
            y = y + tail_w * (x[..., :1] + x[..., -1:])
        z = F.conv2d(F.pad(y, (0, 0, mh, mh), mode="replicate"), gh.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        if tail_h:
            z = z + tail_h * (y[..., :1, :] + y[..., -1:, :])
        return z

    for _ in range(iterations):
        num, den = blur(out * weight), blur(weight)
        reached = den > 1e-6
        out = torch.where(hole & reached, num / den.clamp_min(1e-6), out)
        weight = torch.where(hole & reached, torch.ones_like(weight), weight)
    return out


def region_psnr(reference: torch.Tensor, estimate: torch.Tensor, region: torch.Tensor, *,
                data_range: float = 2.0) -> float:
    """PSNR (dB) over the pixels where ``region`` is 1 (all images pooled); ``inf`` when they agree exactly."""
    check_tensor(reference, "reference", min_dim=4)
    check_tensor(estimate, "estimate", min_dim=4)
    if reference.shape != estimate.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and estimate {tuple(estimate.shape)} differ in shape")
    check_finite(reference, "reference", boundary=True)
    check_finite(estimate, "estimate", boundary=True)
    data_range = check_nonnegative(data_range, "data_range", strict=True)
    region = check_masks(region, reference, name="region").to(reference).expand_as(reference)
    n = float(region.sum())
    if n == 0:
        raise ValueError("the region is empty")
    mse = float(((reference - estimate) ** 2 * region).sum()) / n
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


# ---------------------------------------------------------------------------------- semantic maps
def check_segmentation(maps: torch.Tensor, num_classes: int, name: str = "maps") -> torch.Tensor:
    """Check that ``maps`` is a non-empty integer tensor ``[N, H, W]`` with classes in ``[0, num_classes)``."""
    check_positive_int(num_classes, "num_classes")
    if not isinstance(maps, torch.Tensor) or maps.dtype.is_floating_point or maps.dtype.is_complex \
            or maps.dtype == torch.bool:
        got = f"dtype {maps.dtype}" if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise TypeError(f"{name} (segmentation maps) must be an integer tensor [N, H, W], got {got}")
    if maps.dim() != 3:
        raise ValueError(f"{name} (segmentation maps) must have shape [N, H, W], got {tuple(maps.shape)}")
    if maps.numel() == 0:
        raise ValueError(f"{name} (segmentation maps) is empty: shape {tuple(maps.shape)}")
    if values_checked(maps) and (int(maps.min()) < 0 or int(maps.max()) >= num_classes):
        raise ValueError(f"{name} (segmentation maps) have classes in [{int(maps.min())}, {int(maps.max())}], but "
                         f"only 0..{num_classes - 1} are known")
    return maps.long()


def intensity_segmentation(images: torch.Tensor, num_classes: int = 3, *, blur: int = 3,
                           thresholds: torch.Tensor | None = None):
    """A stand-in segmentation: smoothed intensity quantised into ``num_classes`` bands.

    ``images`` ``[N, C, H, W]`` in ``[-1, 1]`` are averaged over channels and box-blurred (``blur`` pixels);
    the band edges are the ``1/K, ..., (K-1)/K`` quantiles of the pixel values of these images unless
    ``thresholds`` (``K - 1`` increasing values) are given. Returns ``(maps [N, H, W], thresholds)`` so the
    same rule can be applied to generated images.
    """
    check_tensor(images, "images", min_dim=4)
    check_finite(images, "images")
    check_positive_int(num_classes, "num_classes")
    check_positive_int(blur, "blur")
    x = images.mean(1, keepdim=True)
    if blur > 1:
        x = F.avg_pool2d(F.pad(x, (blur // 2, (blur - 1) // 2, blur // 2, (blur - 1) // 2), mode="replicate"),
                         blur, stride=1)
    x = x[:, 0]
    if thresholds is None:
        q = torch.arange(1, num_classes, dtype=x.dtype) / num_classes
        thresholds = torch.quantile(x.flatten().float(), q.float()).to(x.dtype)
    thresholds = as_real(thresholds, "thresholds", x.dtype)
    check_finite(thresholds, "thresholds")
    if thresholds.shape != (num_classes - 1,) or bool((thresholds.diff() < 0).any()):
        raise ValueError(f"thresholds must be {num_classes - 1} increasing values, got {thresholds.tolist()}")
    return torch.bucketize(x.contiguous(), thresholds), thresholds


def one_hot_maps(maps: torch.Tensor, num_classes: int, size: int | None = None) -> torch.Tensor:
    """One-hot ``[N, K, H, W]`` of integer maps, area-downsampled to ``size x size`` when given."""
    maps = check_segmentation(maps, num_classes)
    if size is not None:
        check_positive_int(size, "size")
    oh = F.one_hot(maps, num_classes).permute(0, 3, 1, 2).float()
    if size is not None:
        oh = F.interpolate(oh, size=(size, size), mode="area")
    return oh


class SemanticEncoder(nn.Module):
    """Segmentation map -> one-hot -> area-downsampled to the latent size -> trainable 1x1 conv (``out_channels``)."""

    def __init__(self, num_classes: int, latent_size: int, out_channels: int = 4):
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.latent_size = check_positive_int(latent_size, "latent_size")
        self.proj = nn.Conv2d(num_classes, check_positive_int(out_channels, "out_channels"), kernel_size=1)
        self.config = {"num_classes": num_classes, "latent_size": latent_size, "out_channels": out_channels}

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        oh = one_hot_maps(maps, self.num_classes, self.latent_size).to(self.proj.weight)
        return self.proj(oh)


class ConditionedVelocity(nn.Module):
    """A velocity network with a trainable condition encoder: ``v(x, t, maps) = net(x, t, cond=encoder(maps))``.

    Holding the encoder as a submodule puts its parameters in ``parameters()``, so the optimiser trains
    it together with the network (the projection the official LFM code leaves frozen). ``maps=None`` gives
    the unconditional velocity, with an all-zero condition; ``keep`` (``[B]`` booleans) zeroes the
    condition of the rows where it is False (condition dropout in training, as for labels in
    classifier-free guidance).
    """

    def __init__(self, net: nn.Module, encoder: nn.Module):
        super().__init__()
        for m, name in ((net, "net"), (encoder, "encoder")):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
        if not getattr(net, "cond_channels", 0):
            raise ValueError("net must be built with conditioning channels (e.g. UNetVelocity(..., cond_channels=4))")
        self.net, self.encoder = net, encoder
        self.config = {"net": {"_class_name": type(net).__name__, **getattr(net, "config", {})},
                       "encoder": {"_class_name": type(encoder).__name__, **getattr(encoder, "config", {})}}

    def forward(self, x, t, maps=None, *, keep: torch.Tensor | None = None):
        check_tensor(x, "x", min_dim=4)
        channels = self.net.cond_channels
        if maps is None:
            if keep is not None:
                raise ValueError("keep selects rows of maps: with maps=None it must be None too")
            cond = torch.zeros(x.shape[0], channels, *x.shape[2:], device=x.device, dtype=x.dtype)
        else:
            if not isinstance(maps, torch.Tensor) or maps.dim() < 1 or maps.shape[0] != x.shape[0]:
                got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise ValueError(f"maps must hold one map per row of x ({x.shape[0]}), got {got}")
            if keep is not None and (not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool
                                     or keep.shape != (x.shape[0],)):
                got = f"{keep.dtype} {tuple(keep.shape)}" if isinstance(keep, torch.Tensor) else type(keep).__name__
                raise TypeError(f"keep must be a bool tensor [B] = [{x.shape[0]}] or None, got {got}")
            cond = self.encoder(maps.to(x.device))
            if cond.shape[2:] != x.shape[2:]:
                raise ValueError(f"maps are encoded at {tuple(cond.shape[2:])} (the encoder's size) but x is "
                                 f"{tuple(x.shape[2:])}: build the encoder with x's size")
            if keep is not None:
                cond = cond * keep.to(cond)[:, None, None, None]
        return self.net(x, t, cond=cond)
