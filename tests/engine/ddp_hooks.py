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
import sys
from pathlib import Path

import torch

import tricklab
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


@tricklab.callback
def kill_once(rank: int, step: int, marker: str) -> Callback:
    return _KillOnce(rank, step, marker)


@tricklab.callback
def nan_at(rank: int, step: int) -> Callback:
    return _NanAt(rank, step)


# ------------------------------------------------------------ run as a torchrun script: the deferred NaN/Inf guard


def _deferred(policy: str, bad_step: int) -> str:
    """Train a small MLP with fit(ddp=...) and the deferred guard (fused Adam's found_inf, as on CUDA); rank 1's
    loss is NaN at step ``bad_step``. Returns what happened, as one line."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from tricklab.engine.distributed import DDP
    from tricklab.engine.loop import NonFiniteError, fit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 8, generator=g), torch.randint(0, 3, (128,), generator=g)
    calls = [0]

    def loss_fn(out, target):
        calls[0] += 1
        loss = F.cross_entropy(out, target)
        return loss * float("nan") if _rank() == 1 and calls[0] == bad_step + 1 else loss

    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    try:
        state = fit(
            model, (x, y), epochs=2, optimizer=opt, loss_fn=loss_fn, batch_size=16, generator=torch.Generator(),
            nonfinite=policy, deferred_check=True, ddp=DDP(torch.device("cpu")),
        )  # fmt: skip
    except NonFiniteError as e:
        return f"{policy}: NonFiniteError: {e}"
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    others = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(others, flat)
    same = all(torch.equal(o, flat) for o in others)
    return f"{policy}: done steps={state.step} skipped={state.nonfinite_skipped} same_weights={same}"


if __name__ == "__main__":
    import gc

    import torch.distributed as dist

    from tricklab.engine import distributed

    with distributed.session():
        for policy in ("skip", "stop"):
            sys.stdout.write(f"rank {_rank()} {_deferred(policy, bad_step=3)}\n")  # one write: lines never interleave
            sys.stdout.flush()
            gc.collect()  # the DDP wrapper a NonFiniteError left behind goes now, not at interpreter exit
            dist.barrier()
    distributed.leave_process(0)  # without the interpreter's teardown, as the command line's entry does (see there)
