"""Small residual CNN (He et al. 2016, "Deep Residual Learning for Image Recognition") for 2-D and 1-D inputs.

With ``residual=False`` the same layers form He et al.'s "plain" baseline, so the two compare directly.
"""

from __future__ import annotations

import torch
from torch import nn

from tricklab.errors import ConfigError
from tricklab.models.blocks import Block, weight_layer
from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.dropout import make_dropout
from tricklab.tricks.norms import NORM_POSITIONS, NORMS, norm_has_bias


def conv_norm(
    in_c: int, out_c: int, dims: int, norm: str, *, kernel_size: int = 3, stride: int = 1
) -> tuple[nn.Module, nn.Module | None]:
    """A same-padded conv of ``stride`` from :func:`weight_layer`, passed through the norm factory."""
    layer = weight_layer(in_c, out_c, dims, bias=norm_has_bias(norm), kernel_size=kernel_size, stride=stride)
    return NORMS.get(norm)(layer, out_c, dims)


def _or_identity(module: nn.Module | None) -> nn.Module:
    return nn.Identity() if module is None else module


def stage_sizes(depth: int, max_stages: int = 3) -> list[int]:
    """Blocks per stage: ``depth`` blocks spread over ``min(depth, 3)`` stages, earlier stages first.

    Example: ``stage_sizes(8) == [3, 3, 2]``, ``stage_sizes(2) == [1, 1]``.
    """
    n = min(depth, max_stages)
    return [depth // n + (i < depth % n) for i in range(n)]


class BasicBlock(nn.Module):
    """Two 3×3 convs: ``y = act(s(x) + norm₂(W₂ drop(act(norm₁(W₁ x)))))``; He et al. 2016, Fig. 2.

    ``s`` is the identity, or a 1×1 conv + norm when the stride or the channels change (projection
    shortcut, the paper's option B); without ``residual`` there is no ``s`` at all. With
    ``norm_position="after_activation"`` each norm follows its activation, the second one after the sum:
    ``y = norm₂(act(s(x) + W₂ ...))``.
    """

    def __init__(
        self,
        in_c: int,
        out_c: int,
        *,
        dims: int,
        stride: int = 1,
        activation: str = "relu",
        norm: str = "batch",
        norm_position: str = "before_activation",
        dropout: float = 0.0,
        residual: bool = True,
    ):
        super().__init__()
        self.conv1, norm1 = conv_norm(in_c, out_c, dims, norm, stride=stride)
        self.conv2, norm2 = conv_norm(out_c, out_c, dims, norm)
        self.norm1, self.norm2 = _or_identity(norm1), _or_identity(norm2)
        self.act1, self.act2 = ACTIVATIONS.get(activation)(), ACTIVATIONS.get(activation)()
        self.drop = _or_identity(make_dropout(dropout, dims))
        self.norm_first = norm_position == "before_activation"
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = nn.Identity()
            if stride != 1 or in_c != out_c:
                conv, proj_norm = conv_norm(in_c, out_c, dims, norm, kernel_size=1, stride=stride)
                self.shortcut = nn.Sequential(conv, _or_identity(proj_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        h = self.act1(self.norm1(h)) if self.norm_first else self.norm1(self.act1(h))
        h = self.conv2(self.drop(h))
        if self.norm_first:
            h = self.norm2(h)
        if self.shortcut is not None:
            h = h + self.shortcut(x)
        h = self.act2(h)
        return h if self.norm_first else self.norm2(h)


class ResNet(nn.Module):
    """Small ResNet: stem → ``depth`` BasicBlocks in up to 3 stages → global average pool → linear head.

    Layout (He et al. 2016, the CIFAR-10 nets of Sec. 4.2, with ``depth`` blocks instead of 3n)::

        stem     3×3 conv, width channels → norm → act
        stage 1  width channels,   stride 1        (28×28, or length 40)
        stage 2  2·width channels, first stride 2  (14×14, or 20)
        stage 3  4·width channels, first stride 2  (7×7,   or 10)
        head     global average pool → Linear(C_last, num_classes)

    The blocks are split over ``min(depth, 3)`` stages as evenly as possible, earlier stages taking the
    remainder (depth 8 → 3, 3, 2). Each block is ``act(x + F(x))`` with F = conv → norm → act →
    [channel dropout] → conv → norm; the shortcut is a 1×1 conv + norm where a stage starts (shape
    changes). ``residual=False`` drops every shortcut, projections included, giving the paper's "plain"
    net: the same convs in the same order, so it has fewer parameters by exactly the projection convs
    and their norms (none when ``depth`` is 1). The residual sum is not scaled by 1/√L as in
    :mod:`tricklab.models.blocks`: this is the paper's block, which relies on the norm.

    Example::

        ResNet((1, 28, 28), 10, depth=6, width=16)     # 2 blocks per stage, 16/32/64 channels
        ResNet((1, 40), 10, depth=3, width=16)         # Conv1d for MNIST-1D
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        depth: int = 3,
        width: int = 16,
        activation: str = "relu",
        norm: str = "batch",
        norm_position: str = "before_activation",
        dropout: float = 0.0,
        residual: bool = True,
    ):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"resnet needs inputs shaped (C, L) or (C, H, W), got {tuple(input_shape)}")
        if depth < 1:
            raise ConfigError("model.depth", depth, "resnet needs at least 1 residual block")
        if norm_position not in NORM_POSITIONS:
            raise ConfigError("model.norm_position", norm_position, f"one of {', '.join(NORM_POSITIONS)}")
        dims = len(input_shape) - 1
        common = dict(activation=activation, norm=norm, norm_position=norm_position)
        self.stem = Block(input_shape[0], width, dims=dims, **common)
        blocks: list[nn.Module] = []
        in_c = width
        for stage, n_blocks in enumerate(stage_sizes(depth)):
            out_c = width * 2**stage
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(
                    BasicBlock(
                        in_c, out_c, dims=dims, stride=stride, dropout=dropout, residual=residual, **common
                    )
                )
                in_c = out_c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(in_c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(h.flatten(2).mean(dim=2))  # global average pool over positions
