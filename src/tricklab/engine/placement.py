"""Where a run's data lives when it trains on a GPU, and how a conv net's tensors are laid out on a CPU.

On CUDA the whole dataset (train, validation and test tensors) is copied to the device once when it takes at
most ``fraction`` (default half) of the device's free memory: batches are then sliced on the device — no
DataLoader, no per-batch host→device copy. A dataset too large for that stays on the host and its batches are
page-locked (pinned) so their copies run asynchronously. On CPU nothing moves.

**Layout.** On CPU a model with 2-D convolutions is put in channels-last (NHWC) memory layout
(:func:`channels_last`), and so are the image splits: oneDNN's convolution and pooling kernels run on that layout
without reordering every activation, so a conv net's training step and evaluation take less time (figures in
``benchmarks/README.md``, "Channels-last on CPU"). The numbers a run computes are the same up to floating-point
rounding (another order of the same sums); the weights it saves are stored contiguous as always, and a model
handed back is still an ``nn.Module`` that takes NCHW input.

**Evaluation batches.** Evaluation needs no gradient, so its batch size changes only speed, not the numbers (up to
floating-point rounding). On CPU a conv net evaluates in batches of :data:`EVAL_BATCH_CPU_CONV`: its activations
then stay in the processor's caches, where batches of :data:`EVAL_BATCH` spill to memory and take more time per
example (``benchmarks/README.md``, "Evaluation batch on CPU"); every other model, and every model on a GPU,
evaluates in batches of :data:`EVAL_BATCH`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from tricklab.data.base import Splits, TensorData

FRACTION = 0.5
EVAL_BATCH = 1024  #: examples per evaluation batch: a GPU, or a model without 2-D convolutions
EVAL_BATCH_CPU_CONV = 128  #: examples per evaluation batch of a conv net on CPU (see the module's docstring)


def nbytes(splits: Splits) -> int:
    """Bytes of every tensor of the three splits."""
    return sum(t.numel() * t.element_size() for d in (splits.train, splits.val, splits.test) for t in (d.x, d.y))


def placement(data_bytes: int, device: torch.device, free_bytes: int | None, fraction: float = FRACTION) -> str:
    """``"host"`` (CPU training), ``"device"`` (the data fits in ``fraction`` of ``free_bytes``) or ``"pinned"``."""
    if device.type != "cuda":
        return "host"
    return "device" if free_bytes is not None and data_bytes <= fraction * free_bytes else "pinned"


def channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether ``model`` runs in channels-last layout on ``device``: on CPU, when it has a 2-D convolution."""
    return torch.device(device).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def eval_batch_size(model: nn.Module, device: torch.device) -> int:
    """Examples per evaluation batch of ``model`` on ``device``: :data:`EVAL_BATCH_CPU_CONV` for a conv net on CPU
    (:func:`channels_last`), else :data:`EVAL_BATCH`."""
    return EVAL_BATCH_CPU_CONV if channels_last(model, device) else EVAL_BATCH


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` (in place), in channels-last layout where :func:`channels_last` says so."""
    model.to(device)
    if channels_last(model, device):
        model.to(memory_format=torch.channels_last)
    return model


def place_splits(
    splits: Splits, device: torch.device, fraction: float = FRACTION, *, nhwc: bool = False
) -> tuple[Splits, str]:
    """``(splits, where)``: the splits moved to ``device`` when :func:`placement` says they fit, and where; with
    ``nhwc`` (the model's :func:`channels_last`), 4-D inputs in channels-last layout."""
    if nhwc and splits.train.x.dim() == 4:

        def nhwc_of(d: TensorData) -> TensorData:
            return TensorData(d.x.contiguous(memory_format=torch.channels_last), d.y)

        splits = replace(splits, train=nhwc_of(splits.train), val=nhwc_of(splits.val), test=nhwc_of(splits.test))
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    where = placement(nbytes(splits), device, free, fraction)
    if where != "device":
        return splits, where

    def move(d: TensorData) -> TensorData:
        return TensorData(d.x.to(device), d.y.to(device))

    return replace(splits, train=move(splits.train), val=move(splits.val), test=move(splits.test)), where
