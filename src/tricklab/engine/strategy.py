"""How many processes train together: a :class:`Strategy` that :func:`~tricklab.engine.loop.fit` calls at fixed
points, chosen once before the loop (Lightning's Strategy idea: the loop reads the same for one process or N).

Its points in the loop: :meth:`~Strategy.prepare` the model and the batches before the first epoch,
:meth:`~Strategy.reduce` each step's train totals, :meth:`~Strategy.epoch_end` before validation,
:meth:`~Strategy.agree_stop` after the epoch's callbacks; and three agreements the NaN/Inf guard asks for, so
that every process reaches the same verdict (:mod:`tricklab.engine.guards`). :class:`SingleProcess` is the one
process alone, where every one of them is the identity; :class:`tricklab.engine.distributed.DDP` is one rank of
several under torchrun.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from tricklab.events import FitState

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
StepTotals = tuple[torch.Tensor, torch.Tensor, int]  # a step's loss sum, correct count, examples


@runtime_checkable
class Strategy(Protocol):
    """What ``fit()`` asks of the processes that train one model together."""

    #: how many processes train together; each step trains on ``world`` shards of one global batch
    world: int

    def prepare(self, model: nn.Module, batches: Batches) -> tuple[nn.Module, Batches]:
        """The module to run the forward pass through and this process's batches (before the first epoch)."""
        ...

    def reduce(self, loss_sum: torch.Tensor, correct: torch.Tensor, examples: int) -> StepTotals:
        """This step's loss sum, correct count and number of examples over all processes: the global batch's
        ``(loss_sum, correct, examples)``, kept on the device (no host synchronisation)."""
        ...

    def epoch_end(self, model: nn.Module) -> None:
        """After the epoch's last step, before validation: make the processes' models evaluate alike."""
        ...

    def agree_stop(self, state: FitState) -> None:
        """After the epoch's callbacks: ``state.stop`` on every process if it is set on any."""
        ...

    def any_nonfinite(self, total: torch.Tensor) -> torch.Tensor:
        """The guard's fused check ``total`` (a 0-d tensor), NaN if it is non-finite on any process."""
        ...

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every process if ``flag`` is true on any."""
        ...

    def name_ranks(self, culprit: str | None, device: torch.device) -> str | None:
        """What the guard found non-finite on this process (``culprit``, None: nothing), with the processes that
        found something; None when none did."""
        ...


class SingleProcess:
    """One process trains alone: its batches are all the batches and its verdicts everybody's."""

    world = 1

    def prepare(self, model: nn.Module, batches: Batches) -> tuple[nn.Module, Batches]:
        return model, batches

    def reduce(self, loss_sum: torch.Tensor, correct: torch.Tensor, examples: int) -> StepTotals:
        return loss_sum, correct, examples

    def epoch_end(self, model: nn.Module) -> None:
        pass

    def agree_stop(self, state: FitState) -> None:
        pass

    def any_nonfinite(self, total: torch.Tensor) -> torch.Tensor:
        return total

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        return flag

    def name_ranks(self, culprit: str | None, device: torch.device) -> str | None:
        return culprit

    def __repr__(self) -> str:
        return "SingleProcess()"
