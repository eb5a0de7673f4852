"""Small Inception net (Szegedy et al. 2015, "Going Deeper with Convolutions") for 2-D and 1-D inputs."""

from __future__ import annotations

import torch
from torch import nn

from tricklab.errors import ConfigError
from tricklab.models.blocks import Block
from tricklab.tricks.dropout import make_dropout
from tricklab.tricks.norms import NORM_POSITIONS


def branch_widths(width: int) -> dict[str, int]:
    """Channels of each branch, GoogLeNet's inception (3a) scaled so that ``width=64`` reproduces it.

    ``1x1`` w · ``3x3_reduce`` 1.5w → ``3x3`` 2w · ``5x5_reduce`` w/4 → ``5x5`` w/2 · ``pool_proj`` w/2;
    the module outputs w + 2w + w/2 + w/2 = 4w channels when ``width`` is a multiple of 4 (fractions are
    rounded down, to at least one channel per conv).

    Example: ``branch_widths(64)`` gives 64, 96→128, 16→32, 32 (Szegedy et al. 2015, Table 1).
    """
    split = {"1x1": 1.0, "3x3_reduce": 1.5, "3x3": 2.0, "5x5_reduce": 0.25, "5x5": 0.5, "pool_proj": 0.5}
    return {name: max(1, int(f * width)) for name, f in split.items()}


def out_channels(width: int) -> int:
    """Channels an Inception module of ``width`` outputs: the four branches concatenated (4·width)."""
    w = branch_widths(width)
    return w["1x1"] + w["3x3"] + w["5x5"] + w["pool_proj"]


class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels (Szegedy et al. 2015, Fig. 2b).

    ``[1×1 | 1×1 → 3×3 | 1×1 → 5×5 | 3×3 max-pool → 1×1]``, every conv followed by norm and activation
    (in the ``norm_position`` order). The 5×5 branch is the paper's single 5×5 conv, not the two 3×3 of
    Inception-v2/v3; on 1-D signals the kernels are 1, 3 and 5 taps.
    """

    def __init__(self, in_c: int, width: int, *, dims: int, **conv):
        super().__init__()
        w = branch_widths(width)

        def unit(i: int, o: int, k: int) -> Block:
            return Block(i, o, dims=dims, kernel_size=k, **conv)

        pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        self.b1 = unit(in_c, w["1x1"], 1)
        self.b3 = nn.Sequential(unit(in_c, w["3x3_reduce"], 1), unit(w["3x3_reduce"], w["3x3"], 3))
        self.b5 = nn.Sequential(unit(in_c, w["5x5_reduce"], 1), unit(w["5x5_reduce"], w["5x5"], 5))
        self.bpool = nn.Sequential(pool(3, stride=1, padding=1), unit(in_c, w["pool_proj"], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bpool(x)], dim=1)


class Inception(nn.Module):
    """Small GoogLeNet: stem → ``depth`` Inception modules → global average pool → dropout → linear head.

    Layout (Szegedy et al. 2015, reduced to MNIST size)::

        stem     3×3 conv, width channels → norm → act
        modules  depth × InceptionModule, each 4·width channels out (split in :func:`branch_widths`)
                 with a 2×2 max-pool after module ⌈depth/2⌉ (28×28 → 14×14, or 40 → 20)
        head     global average pool → dropout (dense, as in the paper) → Linear(4·width, num_classes)

    ``residual`` exists only to share the model signature: Inception has no shortcuts, so True is an error.

    Example::

        Inception((1, 28, 28), 10, depth=2, width=16)   # two modules of 64 channels
        Inception((1, 40), 10, depth=2, width=16)       # Conv1d for MNIST-1D
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        depth: int = 2,
        width: int = 16,
        activation: str = "relu",
        norm: str = "batch",
        norm_position: str = "before_activation",
        dropout: float = 0.0,
        residual: bool = False,
    ):
        super().__init__()
        if residual:
            raise ConfigError("model.residual", True, "inception has no residual variant; use resnet")
        if len(input_shape) not in (2, 3):
            raise ValueError(f"inception needs inputs shaped (C, L) or (C, H, W), got {tuple(input_shape)}")
        if depth < 1:
            raise ConfigError("model.depth", depth, "inception needs at least 1 module")
        if norm_position not in NORM_POSITIONS:
            raise ConfigError("model.norm_position", norm_position, f"one of {', '.join(NORM_POSITIONS)}")
        dims = len(input_shape) - 1
        conv = dict(activation=activation, norm=norm, norm_position=norm_position)
        layers: list[nn.Module] = [Block(input_shape[0], width, dims=dims, **conv)]
        in_c = width
        for i in range(1, depth + 1):
            layers.append(InceptionModule(in_c, width, dims=dims, **conv))
            in_c = out_channels(width)
            if i == (depth + 1) // 2:
                layers.append(nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        drop = make_dropout(dropout, 0)
        self.head = nn.Sequential(*([drop] if drop is not None else []), nn.Linear(in_c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(2).mean(dim=2))  # global average pool over positions
