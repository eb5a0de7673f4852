"""Multi-layer perceptron: flatten → ``depth`` hidden blocks of ``width`` units → linear classifier."""

from __future__ import annotations

import math

from torch import nn

from tricklab.models.blocks import Block, residual_scales


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units; residual connections on hidden layers 2..depth.

    Example::

        MLP((1, 28, 28), 10, depth=2, width=512)   # the lesson's 784-512-512-10 net
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        depth: int = 2,
        width: int = 512,
        activation: str = "relu",
        norm: str = "none",
        norm_position: str = "before_activation",
        dropout: float = 0.0,
        residual: bool = False,
    ):
        super().__init__()
        common = dict(dims=0, activation=activation, norm=norm, norm_position=norm_position, dropout=dropout)
        in_f = math.prod(input_shape)
        blocks: list[nn.Module] = []
        if depth > 0:
            blocks.append(Block(in_f, width, **common))
            blocks += [Block(width, width, residual_scale=s, **common) for s in residual_scales(depth - 1, residual)]
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(*blocks)
        self.head = nn.Linear(width if depth > 0 else in_f, num_classes)

    def forward(self, x):
        return self.head(self.hidden(self.flatten(x)))
