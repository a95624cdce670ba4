r"""Velocity networks ``v(x, t)``.

:class:`MLP` is the network of the OT-CFM paper's low-dimensional experiments (Tong et al.,
arXiv 2302.00482, App. E): the time is appended to the input, ``[x, t] -> R^dim``, through
``depth`` hidden layers of width ``hidden`` with SELU activations. Image networks (diffusers
``UNet2DModel`` and DiT) come with the latent issue.

Depends on ``torch`` and :mod:`lfm_core.utils`.
"""

from __future__ import annotations

import torch
from torch import nn

from .utils import as_time, check_positive_int, check_tensor

__all__ = ["MLP", "ACTIVATIONS"]

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
