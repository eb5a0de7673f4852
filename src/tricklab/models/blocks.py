"""The building block every model shares: weights → norm → activation → dropout, optionally residual.

The lesson places batch norm after the weights and before the activation; ``norm_position`` lets the
placement itself be compared. A residual block uses the pre-activation form of He et al. 2016 ("Identity
mappings in deep residual networks"): ``y = x + s · W(drop(act(norm(x))))``, so each branch ends in its weight
layer and adds a zero-mean increment to the residual stream. The branch is scaled by s = 1/√L for L residual
blocks, which bounds the signal's variance growth by (1 + 1/L)^L ≤ e under He initialization (Hayou et al.
2021, "Stable ResNet"); without it, x + f(x) doubles the variance at every block.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.dropout import make_dropout
from tricklab.tricks.norms import NORMS, norm_has_bias


def weight_layer(
    in_f: int, out_f: int, dims: int, bias: bool, kernel_size: int = 3, stride: int = 1
) -> nn.Module:
    """A Linear layer (``dims`` 0) or a same-padded Conv1d/Conv2d (``dims`` 1 or 2) of ``stride``."""
    if dims == 0:
        return nn.Linear(in_f, out_f, bias=bias)
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    return conv(in_f, out_f, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


class Block(nn.Module):
    """``y = drop(act(norm(W x)))`` (or norm after the activation); residual: ``y = x + W(drop(act(norm(x))))/√L``."""

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
        if residual_scale is not None and in_f != out_f:
            raise ValueError(f"a residual block needs in == out features, got {in_f} → {out_f}")
        pre_activation = residual_scale is not None
        # the norm's features: the weight layer's output, or in a pre-activation block the block's input
        bias = norm_has_bias(norm) or pre_activation
        layer, norm_mod = NORMS.get(norm)(
            weight_layer(in_f, out_f, dims, bias=bias, kernel_size=kernel_size), out_f, dims
        )
        act = ACTIVATIONS.get(activation)()
        normed = [norm_mod, act] if norm_position == "before_activation" else [act, norm_mod]
        drop = make_dropout(dropout, dims)
        parts = [*normed, drop, layer] if pre_activation else [layer, *normed, drop]
        self.body = nn.Sequential(*[p for p in parts if p is not None])
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y if self.residual_scale is None else x + self.residual_scale * y


def residual_scales(n_blocks: int, residual: bool) -> list[float | None]:
    """Branch scale per block: None for plain blocks, 1/√L for each of L residual blocks."""
    return [1.0 / math.sqrt(n_blocks) if residual else None] * n_blocks
