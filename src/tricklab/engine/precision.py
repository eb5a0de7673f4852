"""``train.precision``: fp32, bf16 autocast, or fp16 autocast with gradient scaling.

- ``fp32``: nothing changes (the default).
- ``bf16``: the forward pass and the loss run under :func:`torch.autocast` with ``torch.bfloat16`` on the
  training device (CPU or CUDA); weights, gradients and the optimizer stay fp32. bf16 keeps fp32's exponent
  range, so no loss scaling is needed. It is faster only where the hardware has bf16 matrix units (CPUs with
  AVX-512 BF16 or AMX, NVIDIA Ampere and later); on a CPU without them (AVX2 only) it is slower than fp32 —
  ``benchmarks/precision.py`` measures it.
- ``fp16``: CUDA only. Autocast with ``torch.float16`` and a :class:`torch.amp.GradScaler`: the loss is
  multiplied by a scale before ``backward()`` and the gradients divided by it (``unscale_``) before the NaN/Inf
  guard, clipping and the other tricks see them, so every trick works on true gradients. A step whose scaled
  gradients overflowed is skipped by the scaler and the scale halved — that is the scaler's normal working,
  not a NaN/Inf error; a non-finite *loss* still is (``train.nonfinite``). The scaler's state is checkpointed,
  so a resumed fp16 run continues with the same scale.

Evaluation runs under the same autocast. Resume is bit-identical within a precision (not across: a run
checkpointed in bf16 and resumed in fp32 has a different config and is refused like any changed config).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from tricklab.errors import ConfigError
from tricklab.events import Callback

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision(Callback):
    """The precision a run trains in: its autocast context and, for fp16, its gradient scaler.

    A :class:`~tricklab.events.Callback` only so the checkpointer saves the fp16 scaler's state with the tricks'
    (it hooks no event). ``Precision("fp16", "cpu")`` raises :class:`ConfigError`.
    """

    def __init__(self, name: str = "fp32", device: str | torch.device = "cpu"):
        device = torch.device(device)
        if name not in PRECISIONS:
            raise ConfigError("train.precision", name, f"one of {', '.join(PRECISIONS)}")
        if name == "fp16" and device.type != "cuda":
            raise ConfigError(
                "train.precision", name, "fp16 needs CUDA (gradient scaling); on this device use bf16 or fp32"
            )
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision", name, "this GPU has no bf16 support: use fp16 or fp32")
        self.name, self.device = name, device
        self.dtype = _DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and the loss run in (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, on the scaled loss for fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """fp16: divide the gradients by the scale, in place, before anything reads them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; for fp16 through the scaler (skipped on overflow), then the scale's update."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def after_skipped_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A step the loop did not take (a trick's ``skip_step`` or a skipped NaN batch): fp16 still needs the
        scaler's per-step bookkeeping reset, or the next ``unscale_`` refuses to run twice."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        if self.scaler is None:
            return {}
        return dict(self.scaler.state_dict())  # floats and ints: scale, growth tracker

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, {str(self.device)!r})"


def as_precision(precision: str | Precision, device: str | torch.device) -> Precision:
    return precision if isinstance(precision, Precision) else Precision(precision, device)
