"""A small image classifier whose features rank generated images: the Frechet distance in a data set's own features.

FID (Heusel et al. 2017) fits a Gaussian to the Inception-v3 features of real and of generated images and reports::

    FD = |m_r - m_g|^2 + tr(C_r + C_g - 2 (C_r C_g)^{1/2}).

Inception was trained on ImageNet photographs; on 28 x 28 grayscale garments its features say little, and its
weights are a download. The same computation in the penultimate features of a classifier trained on the data set
itself (Fashion-MNIST here) needs neither: a generator whose samples the classifier cannot tell from held-out
images of the same classes, in the same proportions, scores near the held-out-vs-held-out value, and blurry or
collapsed samples score far above it.

:class:`SmallClassifier` is a three-block convolutional network (``features`` returns its ``dim`` penultimate
values); :func:`train_classifier` fits it with cross-entropy and AdamW; :func:`accuracy` scores it;
:class:`Features` adapts it to :func:`lfm_core.metrics.fid` (images in ``[0, 1]``, three channels, as torchmetrics
passes them); :func:`frechet_distance` is the formula above on two feature matrices, in float64; :func:`load`
reads the one that ships (``scripts/train_classifier.py`` wrote it, the command and the test accuracy in its
record).

Copy with: utils, store, runtime (``torch``, ``tqdm`` for the progress bar).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from . import store
from .runtime import show_progress
from .utils import check_finite, check_positive_int, check_seed, check_tensor

__all__ = ["SmallClassifier", "Features", "train_classifier", "accuracy", "features", "frechet_distance", "load",
           "SHIPPED"]

#: the classifiers that ship with the package: data set name -> store folder
SHIPPED = {"fashion_mnist": store.ASSETS / "classifier_fashion_mnist"}


class SmallClassifier(torch.nn.Module):
    """Images ``[N, in_channels, size, size]`` in ``[-1, 1]`` -> logits ``[N, num_classes]``.

    Three blocks of (3 x 3 convolution, group norm, SiLU, 2 x 2 average pooling) of ``width``, ``2 width``,
    ``4 width`` channels, global average pooling, a linear layer to ``dim`` features with SiLU (:meth:`features`),
    then a linear layer to the classes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dim: int = 128):
        super().__init__()
        for value, name in ((in_channels, "in_channels"), (num_classes, "num_classes"), (width, "width"),
                            (dim, "dim")):
            check_positive_int(value, name)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if width % 8:
            raise ValueError(f"width must be a multiple of 8 (the group norm's 8 groups), got {width}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "dim": dim}
        blocks, c = [], in_channels
        for k in (1, 2, 4):
            blocks += [torch.nn.Conv2d(c, k * width, 3, padding=1), torch.nn.GroupNorm(8, k * width),
                       torch.nn.SiLU(), torch.nn.AvgPool2d(2, ceil_mode=True)]
            c = k * width
        self.body = torch.nn.Sequential(*blocks)
        self.proj = torch.nn.Linear(c, dim)
        self.head = torch.nn.Linear(dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        check_tensor(x, "x", min_dim=4)
        if x.dim() != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"x must have shape [N, {self.config['in_channels']}, H, W], got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``dim`` penultimate features ``[N, dim]`` of images ``x`` in ``[-1, 1]``."""
        self._check(x)
        return F.silu(self.proj(self.body(x.float()).mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Features(torch.nn.Module):
    """A classifier's :meth:`~SmallClassifier.features` as :func:`lfm_core.metrics.fid`'s ``feature_extractor``:
    images ``[N, 3, H, W]`` in ``[0, 1]`` (``metrics.fid`` repeats a grayscale channel three times; this module
    averages them back) -> ``[N, dim]``."""

    def __init__(self, classifier: SmallClassifier):
        super().__init__()
        if not isinstance(classifier, SmallClassifier):
            raise TypeError(f"classifier must be a SmallClassifier, got {type(classifier).__name__}")
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.config["dim"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.classifier.config["in_channels"]
        x = x.float() * 2 - 1
        return self.classifier.features(x.mean(1, keepdim=True) if c == 1 and x.shape[1] != 1 else x)


def _check_labelled(images, labels, num_classes: int) -> None:
    check_tensor(images, "images", min_dim=4)
    check_finite(images, "images")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.is_complex() or labels.shape != (len(images),):
        raise TypeError(f"labels must be an integer tensor of shape [{len(images)}], got "
                        + (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                           else type(labels).__name__))
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")


def train_classifier(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, *, steps: int,
                     batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                     shift: int = 2, progress: bool | None = None) -> dict:
    """Fit ``model`` to ``(images, labels)`` with cross-entropy, AdamW and a cosine learning rate.

    Each step draws ``batch_size`` images with replacement from a generator seeded by ``seed`` and shifts the batch
    by up to ``shift`` pixels in each direction (one random shift per step, replicate padding), an augmentation
    that keeps garments garments. ``progress``: a tqdm
    bar (default: ``LFM_PROGRESS``). Returns ``{"losses": [...], "seconds": s}``.
    """
    if not isinstance(model, SmallClassifier):
        raise TypeError(f"model must be a SmallClassifier, got {type(model).__name__}")
    _check_labelled(images, labels, model.config["num_classes"])
    for value, name in ((steps, "steps"), (batch_size, "batch_size")):
        check_positive_int(value, name)
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be an int >= 0, got {shift!r}")
    for value, name in ((lr, "lr"), (weight_decay, "weight_decay")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    g = torch.Generator().manual_seed(check_seed(seed, "seed"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses, start = [], time.perf_counter()
    bar = range(steps)
    if show_progress() if progress is None else progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="classifier", leave=False)
    model.train()
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = images[idx].float()
        if shift:
            h, w = x.shape[-2:]
            x = F.pad(x, (shift,) * 4, mode="replicate")
            dy, dx = torch.randint(0, 2 * shift + 1, (2,), generator=g).tolist()
            x = x[..., dy:dy + h, dx:dx + w]
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - start}


@torch.no_grad()
def accuracy(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """The share of ``images`` whose arg-max class is their label."""
    if not isinstance(model, SmallClassifier):
        raise TypeError(f"model must be a SmallClassifier, got {type(model).__name__}")
    _check_labelled(images, labels, model.config["num_classes"])
    check_positive_int(batch_size, "batch_size")
    model.eval()
    right = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                for i in range(0, len(images), batch_size))
    return right / len(images)


@torch.no_grad()
def features(model: SmallClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The penultimate features ``[N, dim]`` of ``images`` in ``[-1, 1]``, in batches."""
    if not isinstance(model, SmallClassifier):
        raise TypeError(f"model must be a SmallClassifier, got {type(model).__name__}")
    check_tensor(images, "images", min_dim=4)
    check_finite(images, "images")
    check_positive_int(batch_size, "batch_size")
    model.eval()
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})`` between Gaussians fitted to feature rows ``a``
    ``[N, D]`` and ``b`` ``[M, D]`` (float64). ``tr (C_a C_b)^{1/2}`` is computed as the trace of
    ``(C_a^{1/2} C_b C_a^{1/2})^{1/2}``, which has the same eigenvalues and is symmetric."""
    for x, name in ((a, "a"), (b, "b")):
        check_tensor(x, name, min_dim=2)
        if x.dim() != 2 or len(x) < 2:
            raise ValueError(f"{name} must be feature rows [N >= 2, D], got shape {tuple(x.shape)}")
        check_finite(x, name)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same number of features, got {a.shape[1]} and {b.shape[1]}")
    a, b = a.double().cpu(), b.double().cpu()
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ra = _sqrtm_psd(ca)
    cross = torch.linalg.eigvalsh(ra @ cb @ ra).clamp_min(0).sqrt().sum()
    return max(float((ma - mb).pow(2).sum() + ca.trace() + cb.trace() - 2 * cross), 0.0)


def load(name: str = "fashion_mnist") -> tuple[SmallClassifier, dict]:
    """The classifier that ships for data set ``name`` and its record (command, test accuracy)."""
    if name not in SHIPPED:
        raise ValueError(f"name must be one of {sorted(SHIPPED)}, got {name!r}")
    model, record = store.load(SHIPPED[name])
    return model.eval(), record

