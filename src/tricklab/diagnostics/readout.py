"""Numbers recorded on the device, read to the host in one go: one synchronisation for a whole batch of them.

Used by the probes and the loop watch, which both keep their per-step values as tensors on the device and read them
only on sampled steps, so that a watched loop pays one host read per sample, not one per number.
"""

from __future__ import annotations

import torch
from torch import Tensor


def read_floats(values: list[Tensor | float]) -> list[float]:
    """Numbers and one-element tensors (any dtype, on one device or several) → floats, with one host read."""
    tensors = [t for t in values if isinstance(t, Tensor)]
    if not tensors:
        return [float(v) for v in values]
    device = tensors[0].device
    if not all(t.device == device and t.dim() == 0 and t.dtype == torch.float32 for t in tensors):
        tensors = [t.reshape(()).float().to(device) for t in tensors]
    read = iter(torch.stack(tensors).tolist())
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]
