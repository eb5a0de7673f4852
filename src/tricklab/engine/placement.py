"""Where a run's data lives when it trains on a GPU: on the GPU itself when it fits, else pinned host memory.

On CUDA the whole dataset (train, validation and test tensors) is copied to the device once when it takes at
most ``fraction`` (default half) of the device's free memory: batches are then sliced on the device — no
DataLoader, no per-batch host→device copy. A dataset too large for that stays on the host and its batches are
page-locked (pinned) so their copies run asynchronously. On CPU nothing moves.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tricklab.data.base import Splits, TensorData

FRACTION = 0.5


def nbytes(splits: Splits) -> int:
    """Bytes of every tensor of the three splits."""
    return sum(t.numel() * t.element_size() for d in (splits.train, splits.val, splits.test) for t in (d.x, d.y))


def placement(data_bytes: int, device: torch.device, free_bytes: int | None, fraction: float = FRACTION) -> str:
    """``"host"`` (CPU training), ``"device"`` (the data fits in ``fraction`` of ``free_bytes``) or ``"pinned"``."""
    if device.type != "cuda":
        return "host"
    return "device" if free_bytes is not None and data_bytes <= fraction * free_bytes else "pinned"


def place_splits(splits: Splits, device: torch.device, fraction: float = FRACTION) -> tuple[Splits, str]:
    """``(splits, where)``: the splits moved to ``device`` when :func:`placement` says they fit, and where."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    where = placement(nbytes(splits), device, free, fraction)
    if where != "device":
        return splits, where

    def move(d: TensorData) -> TensorData:
        return TensorData(d.x.to(device), d.y.to(device))

    return replace(splits, train=move(splits.train), val=move(splits.val), test=move(splits.test)), where
