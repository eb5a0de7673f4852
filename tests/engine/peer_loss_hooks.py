"""A callback the peer-loss tests put in a run's config by import path (``peer_loss_hooks:kill_at``).

``kill_at(rank, step)``  after optimizer step ``step`` on rank ``rank``: SIGKILL this process (a rank lost mid-run,
                         for good: no marker, so a restarted job would die again)
"""

from __future__ import annotations

import os
import signal

import tricklab
from tricklab.events import Callback


class _KillAt(Callback):
    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_step_end(self, state) -> None:
        if int(os.environ.get("RANK", "0")) == self.rank and state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


@tricklab.callback
def kill_at(rank: int, step: int) -> Callback:
    return _KillAt(rank, step)
