"""The building block every model shares: weights → norm → activation → dropout, optionally residual.

The lesson places batch norm after the weights and before the activation; ``norm_position`` lets the
placement itself be compared. A residual block adds its input back, with the branch scaled by 1/√L for L
residual blocks so that the signal variance stays bounded with depth (Hayou et al. 2021, "Stable ResNet");
without that scale, x + f(x) doubles the variance at every block under He initialization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.dropout import make_dropout
from tricklab.tricks.norms import NORMS, norm_has_bias


def weight_layer(in_f: int, out_f: int, dims: int, bias: bool, kernel_size: int = 3) -> nn.Module:
    """A Linear layer (``dims`` 0) or a same-padded Conv1d/Conv2d (``dims`` 1 or 2)."""
    if dims == 0:
        return nn.Linear(in_f, out_f, bias=bias)
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    return conv(in_f, out_f, kernel_size, padding=kernel_size // 2, bias=bias)


class Block(nn.Module):
    """``y = drop(act(norm(W x)))`` (or norm after the activation); residual: ``y = x + f(x)/√L``."""

    def __init__(
        self,
        in_f: int,
        out_f: int,
        *,
        dims: int = 0,
        activation: str = "relu",
        norm: str = "none",
        norm_position: str = "before_activation",
        dropout: float = 0.0,
        residual_scale: float | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        layer, norm_mod = NORMS.get(norm)(
            weight_layer(in_f, out_f, dims, bias=norm_has_bias(norm), kernel_size=kernel_size), out_f, dims
        )
        act = ACTIVATIONS.get(activation)()
        parts = [layer]
        parts += [norm_mod, act] if norm_position == "before_activation" else [act, norm_mod]
        parts.append(make_dropout(dropout, dims))
        self.body = nn.Sequential(*[p for p in parts if p is not None])
        if residual_scale is not None and in_f != out_f:
            raise ValueError(f"a residual block needs in == out features, got {in_f} → {out_f}")
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if self.residual_scale is None else x + self.residual_scale * y


def residual_scales(n_blocks: int, residual: bool) -> list[float | None]:
    """Branch scale per block: None for plain blocks, 1/√L for each of L residual blocks."""
    return [1.0 / math.sqrt(n_blocks) if residual else None] * n_blocks
