"""Callbacks the DDP tests put in a run's config by import path (``ddp_hooks:kill_once``): each acts on one rank.

``kill_once(rank, step, marker)``  after optimizer step ``step`` on rank ``rank``: if file ``marker`` does not
                                   exist, create it, then SIGKILL this process (a crash mid-epoch, once: the
                                   restarted job finds the marker and trains on)
``nan_at(rank, step)``             after step ``step`` on rank ``rank``: fill the first weight with NaN (that rank's
                                   next loss and gradients are NaN, the other ranks' inputs and weights are fine)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from tricklab.events import Callback


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _KillOnce(Callback):
    def __init__(self, rank: int, step: int, marker: str):
        self.rank, self.step, self.marker = rank, step, Path(marker)

    def on_step_end(self, state) -> None:
        if _rank() == self.rank and state.step == self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class _NanAt(Callback):
    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_step_end(self, state) -> None:
        if _rank() == self.rank and state.step == self.step:
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))


def kill_once(rank: int, step: int, marker: str) -> Callback:
    return _KillOnce(rank, step, marker)


def nan_at(rank: int, step: int) -> Callback:
    return _NanAt(rank, step)
