r"""Velocity networks ``v(x, t)``.

:class:`MLP` is the network of the OT-CFM paper's low-dimensional experiments (Tong et al.,
arXiv 2302.00482, App. E): the time is appended to the input, ``[x, t] -> R^dim``, through
``depth`` hidden layers of width ``hidden`` with SELU activations. :class:`MLPEnsemble` evaluates
``M`` such networks in one batched pass (``torch.baddbmm``): the same functions, so training it
with a loss summed over members trains ``M`` independent models (AdamW acts elementwise), but at
the cost of about one, because tiny networks are dominated by per-call overhead. Image networks
(diffusers ``UNet2DModel`` and DiT) come with the latent issue.

Depends on ``torch`` and :mod:`lfm_core.utils`.
"""

from __future__ import annotations

import torch
from torch import nn

from .utils import as_time, check_positive_int, check_tensor

__all__ = ["MLP", "MLPEnsemble", "AffineVelocity", "ACTIVATIONS"]

ACTIVATIONS = {"selu": nn.SELU, "relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU}


class MLP(nn.Module):
    """Time-conditioned velocity network for points in ``R^dim``: ``forward(x, t) -> [B, dim]``.

    Args:
        dim: dimension of the points.
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        activation: one of :data:`ACTIVATIONS` (``"selu"`` as in the OT-CFM paper).

    ``t`` is a float or a tensor of shape ``[B]`` with values in ``[0, 1]``.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3, activation: str = "selu"):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        check_positive_int(hidden, "hidden")
        check_positive_int(depth, "depth")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "activation": activation}

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        t = as_time(t, x.shape[0], like=x, check_range=False)
        return self.net(torch.cat([x, t[:, None]], dim=1))


class MLPEnsemble(nn.Module):
    """``M`` independent :class:`MLP` s evaluated together: ``forward(x [M, B, dim], t [M, B]) -> [M, B, dim]``.

    Build it from existing networks with :meth:`from_models` (so that each member starts exactly
    like the corresponding ``MLP``), and take a member back out with :meth:`member`.
    """

    def __init__(self, n_models: int, dim: int, hidden: int = 64, depth: int = 3, activation: str = "selu"):
        super().__init__()
        self.n_models = check_positive_int(n_models, "n_models")
        template = MLP(dim, hidden, depth, activation)  # validates the configuration
        self.config = dict(template.config)
        self.dim = dim
        members = [template] + [MLP(dim, hidden, depth, activation) for _ in range(n_models - 1)]
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
        if not models or not all(isinstance(m, MLP) for m in models):
            raise TypeError("models must be a non-empty list of lfm_core.nets.MLP")
        if any(m.config != models[0].config for m in models):
            raise ValueError("all models must share one configuration (dim, hidden, depth, activation)")
        c = models[0].config
        ens = cls(len(models), c["dim"], c["hidden"], c["depth"], c["activation"])
        ens._load(models)
        return ens

    def member(self, i: int) -> MLP:
        """Member ``i`` as a stand-alone :class:`MLP` (a copy of its current weights)."""
        if not 0 <= i < self.n_models:
            raise ValueError(f"member index must be in [0, {self.n_models}), got {i}")
        c = self.config
        mlp = MLP(c["dim"], c["hidden"], c["depth"], c["activation"])
        linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[i].T)
                lin.bias.copy_(b[i, 0])
        return mlp.to(self.weights[0].device)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", min_dim=3)
        if x.dim() != 3 or x.shape[0] != self.n_models or x.shape[2] != self.dim:
            raise ValueError(f"x must have shape [M, B, dim] = [{self.n_models}, B, {self.dim}], got {tuple(x.shape)}")
        if not isinstance(t, torch.Tensor) or t.shape != x.shape[:2]:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape [M, B] = {tuple(x.shape[:2])}, got {got}")
        h = torch.cat([x, t[..., None].to(x.dtype)], dim=-1)
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if k < last:
                h = self.act(h)
        return h


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
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim * dim + dim))

    def _coeffs(self, t: torch.Tensor):
        out = self.net(t[:, None])
        return out[:, : self.dim**2].reshape(-1, self.dim, self.dim), out[:, self.dim**2:]

    def coefficients(self, t: float):
        """``(A(t), b(t))`` for a float ``t``."""
        a, b = self._coeffs(torch.tensor([float(t)], dtype=self.net[0].weight.dtype))
        return a[0], b[0]

    def lipschitz(self, n_times: int = 201) -> float:
        """``max ||A(t)||_2`` over ``n_times`` evenly spaced times in ``[0, 1]``: the Lipschitz constant in ``x``."""
        with torch.no_grad():
            a, _ = self._coeffs(torch.linspace(0, 1, n_times, dtype=self.net[0].weight.dtype))
            return float(torch.linalg.matrix_norm(a.double(), ord=2).max())

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        t = as_time(t, x.shape[0], like=x, check_range=False)
        a, b = self._coeffs(t)
        return torch.bmm(a, x[:, :, None])[:, :, 0] + b
