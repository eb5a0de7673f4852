"""In-memory tensor datasets and fast batching (an index permutation per epoch, no per-sample collation)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[str, ...] = ()


@dataclass
class TensorData:
    """Inputs ``x`` (N, ...) and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} examples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class RawDataset:
    """What a dataset source returns: the official train and test sets, unscaled."""

    train: TensorData
    test: TensorData
    info: DatasetInfo


@dataclass
class Splits:
    """Train / validation / test splits ready for training; ``scaler`` was fitted on ``train`` only."""

    train: TensorData
    val: TensorData
    test: TensorData
    info: DatasetInfo
    scaler: object = None
    notes: list[str] = field(default_factory=list)


class TensorBatches:
    """Iterate over ``(x, y)`` mini-batches of in-memory tensors.

    Each pass draws one index permutation from ``generator`` (when ``shuffle``) and slices the tensors with
    it: no Python-level per-sample work, which is what makes an MNIST epoch as fast as a hand-written loop.

    Example::

        for x, y in TensorBatches(data.x, data.y, batch_size=128, shuffle=True, generator=g): ...
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            for i in range(len(self)):
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(len(self)):
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.x[sl], self.y[sl]
