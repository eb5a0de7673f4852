"""Convolutional net for 28×28 images (Conv2d) and 1-D signals (Conv1d), chosen by the input's shape.

``depth`` 3×3 (or 3-tap) conv blocks of ``width`` channels each, with max-pooling ×2 after the middle block
and after the last one (28×28 → 14×14 → 7×7), then a linear classifier on the flattened maps. The constant
width lets blocks 2..depth be residual, so plain and residual nets of the same depth compare directly.
"""

from __future__ import annotations

import math

from torch import nn

from tricklab.models.blocks import Block, residual_scales


class CNN(nn.Module):
    """Example: ``CNN((1, 28, 28), 10, depth=2, width=32)``; ``CNN((1, 40), 10)`` for MNIST-1D."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        depth: int = 2,
        width: int = 32,
        activation: str = "relu",
        norm: str = "none",
        norm_position: str = "before_activation",
        dropout: float = 0.0,
        residual: bool = False,
    ):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"cnn needs inputs shaped (C, L) or (C, H, W), got {tuple(input_shape)}")
        if depth < 1:
            raise ValueError("cnn needs depth >= 1")
        dims = len(input_shape) - 1
        common = dict(dims=dims, activation=activation, norm=norm, norm_position=norm_position, dropout=dropout)
        pool = nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2)
        pool_after = {max(1, depth // 2), depth} if depth > 1 else {1}
        layers: list[nn.Module] = [Block(input_shape[0], width, **common)]
        scales = residual_scales(depth - 1, residual)
        for i in range(1, depth + 1):
            if i > 1:
                layers.append(Block(width, width, residual_scale=scales[i - 2], **common))
            if i in pool_after:
                layers.append(pool)
        self.features = nn.Sequential(*layers)
        # same-padded stride-1 convolutions keep the size; each pooling floors it by half (no probe forward pass:
        # on the meta device, where the memory check builds models, that costs seconds of imports)
        spatial = list(input_shape[1:])
        for _ in pool_after:
            spatial = [s // 2 for s in spatial]
        if min(spatial) < 1:
            raise ValueError(
                f"cnn inputs shaped {tuple(input_shape)} are too small for {len(pool_after)} poolings by 2 "
                f"(model.depth={depth}): use a smaller depth"
            )
        n_flat = width * math.prod(spatial)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n_flat, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
