r"""Velocity networks ``v(x, t)``.

:class:`MLP` is the network of the OT-CFM paper's low-dimensional experiments (Tong et al.,
arXiv 2302.00482, App. E): the time is appended to the input, ``[x, t] -> R^dim``, through
``depth`` hidden layers of width ``hidden`` with SELU activations.

:class:`MLPEnsemble` evaluates ``M`` such networks in one batched pass (``torch.baddbmm``), the members' points
one after the other in the batch: training it with a loss summed over members trains ``M`` independent
models (AdamW acts elementwise) at the cost of about one, because tiny networks are dominated by per-call
overhead.

:class:`UNetVelocity` and :class:`DiTVelocity` wrap diffusers' ``UNet2DModel`` (ADM-like) and
``DiTTransformer2DModel`` for images and latents (:class:`ImageVelocity` explains the interface).

Every network is a velocity in the project's one convention: ``v(x, t, **cond)`` with ``t`` of shape ``[B]``
(a float is broadcast), returning a tensor shaped like ``x``; each carries a ``config`` dict that checkpoints
store (:func:`lfm_core.checkpoints.model_config`).

Copy with: utils (``torch``; the image networks import ``diffusers`` when built).
"""

from __future__ import annotations

import torch
from torch import nn

from .utils import as_time, check_finite, check_positive_int, check_tensor, values_checked

__all__ = ["MLP", "MLPEnsemble", "AffineVelocity", "ImageVelocity", "UNetVelocity", "DiTVelocity", "ACTIVATIONS",
           "UNET_PRESETS", "DIT_PRESETS"]

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU}


class MLP(nn.Module):
    """Time-conditioned velocity network for points in ``R^dim``: ``forward(x, t) -> [B, dim]``.

    Args:
        dim: dimension of the points.
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        activation: one of :data:`ACTIVATIONS` (``"selu"`` as in the OT-CFM paper).
        cond_channels: number of extra inputs ``cond`` (``[B, cond_channels]``) appended to ``[x, t]``, as the
            image networks concatenate their ``cond`` channels; 0 for none. An average-velocity model
            (:class:`lfm_core.average_velocity.AverageVelocity`) passes its second time there.

    ``t`` is a float or a tensor of shape ``[B]`` with values in ``[0, 1]``.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3, activation: str = "selu", cond_channels: int = 0):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        check_positive_int(hidden, "hidden")
        check_positive_int(depth, "depth")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if isinstance(cond_channels, bool) or not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be an int >= 0, got {cond_channels!r}")
        self.cond_channels = cond_channels
        layers: list[nn.Module] = []
        width = dim + 1 + cond_channels
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "activation": activation}
        if cond_channels:
            self.config["cond_channels"] = cond_channels

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        check_finite(x, "x")
        t = as_time(t, x.shape[0], like=x)
        parts = [x, t[:, None]]
        if self.cond_channels:
            if cond is None:
                raise ValueError(f"this model needs cond: [B, {self.cond_channels}] extra inputs")
            check_tensor(cond, "cond", min_dim=2)
            if cond.shape != (x.shape[0], self.cond_channels):
                raise ValueError(f"cond must have shape {(x.shape[0], self.cond_channels)}, got {tuple(cond.shape)}")
            check_finite(cond, "cond")
            parts.append(cond.to(x.dtype))
        elif cond is not None:
            raise ValueError("this model was built without extra inputs (cond_channels=0): cond must be None")
        return self.net(torch.cat(parts, dim=1))


class MLPEnsemble(nn.Module):
    """``M`` independent :class:`MLP` s evaluated together, called like any velocity: ``forward(x, t) -> like x``.

    The batch holds the members' points one after the other: rows ``[m B, (m + 1) B)`` of ``x`` (``[M B, dim]``)
    and ``t`` (``[M B]``) belong to member ``m``. So a solver integrates all members at once, and
    :func:`lfm_core.training.train_cfm` trains them as ``M`` separate models (each with its own batches; the
    loss is the sum of the members' losses, so each gets exactly the gradient it would get alone). Build it
    from existing networks with :meth:`from_models` (each member then starts exactly like the corresponding
    ``MLP``), and take a member back out with :meth:`member`.
    """

    def __init__(self, n_members: int, dim: int, hidden: int = 64, depth: int = 3, activation: str = "selu"):
        super().__init__()
        self.n_members = check_positive_int(n_members, "n_members")
        template = MLP(dim, hidden, depth, activation)  # validates the configuration
        self.config = {"n_members": n_members, **template.config}
        self.dim = dim
        members = [template] + [MLP(dim, hidden, depth, activation) for _ in range(n_members - 1)]
        self._load(members)

    def _load(self, members):
        layers = [[m for m in mlp.net if isinstance(m, nn.Linear)] for mlp in members]
        per_layer = list(zip(*layers, strict=True))  # per_layer[k]: layer k of every member
        # weights [M, in, out] and biases [M, 1, out], for h @ W + b with h of shape [M, B, in]
        self.weights = nn.ParameterList(nn.Parameter(torch.stack([lin.weight.detach().T for lin in ls]).clone())
                                        for ls in per_layer)
        self.biases = nn.ParameterList(nn.Parameter(torch.stack([lin.bias.detach()[None] for lin in ls]).clone())
                                       for ls in per_layer)
        self.act = ACTIVATIONS[self.config["activation"]]()

    @classmethod
    def from_models(cls, models: list) -> MLPEnsemble:
        """An ensemble whose members are copies of ``models`` (all :class:`MLP` with one configuration)."""
        if not isinstance(models, (list, tuple)) or not models or not all(isinstance(m, MLP) for m in models):
            raise TypeError("models must be a non-empty list of lfm_core.nets.MLP")
        if any(m.config != models[0].config for m in models):
            raise ValueError("all models must share one configuration (dim, hidden, depth, activation)")
        if models[0].cond_channels:
            raise ValueError("an ensemble takes no extra inputs: models must be built with cond_channels=0")
        c = models[0].config
        ens = cls(len(models), c["dim"], c["hidden"], c["depth"], c["activation"])
        ens._load(models)
        return ens.to(models[0].net[0].weight.device)

    def member(self, i: int) -> MLP:
        """Member ``i`` as a stand-alone :class:`MLP` (a copy of its current weights)."""
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"i must be an int, got {type(i).__name__}")
        if not 0 <= i < self.n_members:
            raise ValueError(f"i (the member index) must be in [0, {self.n_members}), got {i}")
        c = self.config
        mlp = MLP(c["dim"], c["hidden"], c["depth"], c["activation"])
        linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[i].T)
                lin.bias.copy_(b[i, 0])
        return mlp.to(self.weights[0].device)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        m = self.n_members
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [M B, {self.dim}] (members one after the other), got {tuple(x.shape)}")
        if x.shape[0] % m:
            raise ValueError(f"x has {x.shape[0]} rows, not a multiple of the {m} members (each gets B rows)")
        check_finite(x, "x")
        t = as_time(t, x.shape[0], like=x)
        h = torch.cat([x, t[:, None]], dim=1).reshape(m, x.shape[0] // m, self.dim + 1)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = self.act(h)
        return h.reshape(x.shape[0], self.dim)


class AffineVelocity(nn.Module):
    r"""A velocity field affine in ``x`` with time-dependent coefficients: ``v(x, t) = A(t) x + b(t)``.

    ``A(t)`` (``[dim, dim]``) and ``b(t)`` (``[dim]``) are given by small MLPs of ``t``. Such a field
    can represent the exact marginal velocity between two Gaussians (which is affine), its flow maps
    Gaussians to Gaussians (:func:`lfm_core.bounds.gaussian_pushforward`), and its Lipschitz
    constant in ``x`` is exactly ``sup_t ||A(t)||_2``: the setting of notebook 06 in which every term
    of the LFM paper's W2 bound can be computed exactly.
    """

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        check_positive_int(hidden, "hidden")
        self.config = {"dim": dim, "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim * dim + dim))

    def _coeffs(self, t: torch.Tensor):
        out = self.net(t[:, None])
        return out[:, : self.dim**2].reshape(-1, self.dim, self.dim), out[:, self.dim**2:]

    def affine_map(self, t: float):
        """``(A(t), b(t))`` for a float ``t`` in ``[0, 1]``."""
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must be a float in [0, 1], got {t!r}")
        w = self.net[0].weight
        a, b = self._coeffs(torch.tensor([float(t)], dtype=w.dtype, device=w.device))
        return a[0], b[0]

    def lipschitz(self, n_times: int = 201) -> float:
        """``max ||A(t)||_2`` over ``n_times`` evenly spaced times in ``[0, 1]``: the Lipschitz constant in ``x``."""
        check_positive_int(n_times, "n_times")
        w = self.net[0].weight
        with torch.no_grad():
            a, _ = self._coeffs(torch.linspace(0, 1, n_times, dtype=w.dtype, device=w.device))
            return float(torch.linalg.matrix_norm(a.double(), ord=2).max())

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        check_finite(x, "x")
        t = as_time(t, x.shape[0], like=x)
        a, b = self._coeffs(t)
        return torch.bmm(a, x[:, :, None])[:, :, 0] + b


# --------------------------------------------------------------------------------------- images
UNET_PRESETS = {
    # tiny: for 2 CPU cores (quick mode, tests); small: a GPU in minutes; adm: ADM-like (LFM's UNet baseline)
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, attention_levels=(False, True), head_dim=16,
                 norm_num_groups=8),
    "small": dict(block_out_channels=(64, 128, 256), layers_per_block=2, attention_levels=(False, True, True),
                  head_dim=32, norm_num_groups=32),
    "adm": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                attention_levels=(False, True, True, True), head_dim=64, norm_num_groups=32),
}
DIT_PRESETS = {
    # heads x head_dim = hidden width; DiT-B/2 and DiT-L/2 as in Peebles & Xie (2023), used by LFM on 4x32x32
    "tiny": dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, patch_size=2),
    "DiT-S/2": dict(num_attention_heads=6, attention_head_dim=64, num_layers=12, patch_size=2),
    "DiT-B/2": dict(num_attention_heads=12, attention_head_dim=64, num_layers=12, patch_size=2),
    "DiT-L/2": dict(num_attention_heads=16, attention_head_dim=64, num_layers=24, patch_size=2),
}


class ImageVelocity(nn.Module):
    """Common interface of the image velocity networks: ``forward(x, t, labels=None, cond=None)``.

    * ``x``: ``[B, channels, H, W]`` (images or latents); ``t``: float or ``[B]`` in ``[0, 1]``,
      passed to the diffusers model as the timestep ``1000 t``.
    * ``labels``: integer classes ``[B]`` in ``[0, num_classes)``, or the null label ``num_classes``
      (classifier-free guidance, :mod:`lfm_core.guidance`); ``None`` means the null label. Only for
      models built with ``num_classes``.
    * ``cond``: ``[B, cond_channels, H, W]`` concatenated to ``x`` (inpainting: masked latent and mask;
      semantic maps), required when the model has ``cond_channels``.

    Returns the velocity, shaped like ``x``.
    """

    def __init__(self, channels: int, sample_size: int, num_classes: int | None, cond_channels: int):
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.sample_size = check_positive_int(sample_size, "sample_size")
        if num_classes is not None:
            check_positive_int(num_classes, "num_classes")
        if isinstance(cond_channels, bool) or not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"cond_channels must be an int >= 0, got {cond_channels!r}")
        self.num_classes, self.cond_channels = num_classes, cond_channels
        self.config = {"channels": channels, "sample_size": sample_size, "num_classes": num_classes,
                       "cond_channels": cond_channels}

    @property
    def null_label(self) -> int:
        return self.num_classes if self.num_classes is not None else 0

    def _inputs(self, x, t, labels, cond):
        check_tensor(x, "x", min_dim=4)
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape [B, {self.channels}, H, W], got {tuple(x.shape)}")
        check_finite(x, "x")
        t = as_time(t, x.shape[0], like=x)
        if self.cond_channels:
            if cond is None:
                raise ValueError(f"this model needs cond: [B, {self.cond_channels}, H, W] conditioning channels")
            check_tensor(cond, "cond", min_dim=4)
            if cond.shape != (x.shape[0], self.cond_channels, *x.shape[2:]):
                raise ValueError(f"cond must have shape {(x.shape[0], self.cond_channels, *x.shape[2:])}, "
                                 f"got {tuple(cond.shape)}")
            check_finite(cond, "cond")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("this model was built without conditioning channels (cond_channels=0)")
        if labels is None:
            labels = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        else:
            if self.num_classes is None:
                raise ValueError("this model was built without classes (num_classes=None): labels must be None")
            if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32, torch.int64):
                raise TypeError("labels must be an integer tensor of shape [B]")
            if labels.shape != (x.shape[0],):
                raise ValueError(f"labels must have shape [B] = [{x.shape[0]}], got {tuple(labels.shape)}")
            if values_checked(labels) and (bool((labels < 0).any()) or bool((labels > self.num_classes).any())):
                raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} is the null label), "
                                 f"got values in [{int(labels.min())}, {int(labels.max())}]")
            labels = labels.to(x.device, torch.long)
        return x, 1000.0 * t, labels


class UNetVelocity(ImageVelocity):
    """diffusers ``UNet2DModel`` (ADM-like) as a velocity network; ``preset`` one of :data:`UNET_PRESETS`."""

    def __init__(self, channels: int, sample_size: int, *, preset: str = "tiny", num_classes: int | None = None,
                 cond_channels: int = 0):
        super().__init__(channels, sample_size, num_classes, cond_channels)
        from diffusers import UNet2DModel

        if not isinstance(preset, str) or preset not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {preset!r}; choose one of {', '.join(UNET_PRESETS)}")
        p = UNET_PRESETS[preset]
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in p["attention_levels"])
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p["attention_levels"]))
        self.model = UNet2DModel(
            sample_size=sample_size, in_channels=channels + cond_channels, out_channels=channels,
            down_block_types=down, up_block_types=up, block_out_channels=p["block_out_channels"],
            layers_per_block=p["layers_per_block"], attention_head_dim=p["head_dim"],
            norm_num_groups=p["norm_num_groups"],
            num_class_embeds=None if num_classes is None else num_classes + 1)  # + the null label
        self.preset = preset
        self.config["preset"] = preset

    def forward(self, x, t, labels=None, cond=None):
        x_in, timestep, labels = self._inputs(x, t, labels, cond)
        class_labels = labels if self.num_classes is not None else None
        return self.model(x_in, timestep, class_labels=class_labels).sample


class DiTVelocity(ImageVelocity):
    """diffusers ``DiTTransformer2DModel`` as a velocity network; ``preset`` one of :data:`DIT_PRESETS`.

    DiT always embeds a class: an unconditional model has one class, the null label. diffusers' label
    embedding would also replace 10% of the labels by the null one during training; that dropout is
    switched off here, so that label dropout stays under the caller's control (:mod:`lfm_core.guidance`).
    """

    def __init__(self, channels: int, sample_size: int, *, preset: str = "tiny", num_classes: int | None = None,
                 cond_channels: int = 0):
        super().__init__(channels, sample_size, num_classes, cond_channels)
        from diffusers import DiTTransformer2DModel
        from diffusers.models.embeddings import LabelEmbedding

        if not isinstance(preset, str) or preset not in DIT_PRESETS:
            raise ValueError(f"unknown DiT preset {preset!r}; choose one of {', '.join(DIT_PRESETS)}")
        p = DIT_PRESETS[preset]
        if sample_size % p["patch_size"]:
            raise ValueError(f"sample_size must be a multiple of the patch size {p['patch_size']}, got {sample_size}")
        self.model = DiTTransformer2DModel(
            in_channels=channels + cond_channels, out_channels=channels, sample_size=sample_size,
            num_embeds_ada_norm=num_classes if num_classes is not None else 1, **p)
        for m in self.model.modules():  # keep the null-label row, drop the built-in label dropout
            if isinstance(m, LabelEmbedding):
                m.dropout_prob = 0.0
        self.preset = preset
        self.config["preset"] = preset

    @property
    def null_label(self) -> int:
        return self.num_classes if self.num_classes is not None else 1

    def forward(self, x, t, labels=None, cond=None):
        x_in, timestep, labels = self._inputs(x, t, labels, cond)
        return self.model(x_in, timestep=timestep, class_labels=labels).sample
