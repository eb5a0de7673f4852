"""The NaN/Inf guard of a training step: a :class:`StepGuard` chosen once (:func:`choose_guard`) and called by
:func:`~tricklab.engine.loop.fit` at fixed points of every step (Lightning's Precision idea: the step reads the
same whichever way the guard works).

It catches NaN/Inf in the loss, the gradients or the input batch before ``optimizer.step()`` applies them. The
check is one fused number: ``isfinite(loss + Σ_params sum(grad))`` (a NaN or Inf anywhere makes the sum
non-finite). On the steps where a callback's ``wants_grad_norms`` is true (the doctor's probe's is on its sampled
steps) it checks ``isfinite(loss + ‖g‖)`` from the per-parameter gradient norms instead, and the synchronous guard
hands those norms to the callbacks as ``state.grad_norms`` once they passed, so the probe does not compute them a
second time. A NaN/Inf in an input batch is caught through the loss and gradients it poisons (checking every
input element would cost more than the fused sum).

Three guards, one per way of acting on the check:

- :class:`SyncGuard` (the default on CPU): the check is read on the host every step; when it fails the guard
  looks for the culprits (the loss, the inputs, the first parameter with a non-finite gradient; a sum that merely
  overflowed on huge finite values is let through). ``policy="stop"`` raises :class:`NonFiniteError`; ``"skip"``
  drops the batch (no update, not counted in the epoch's train metrics) and raises once more than ``limit``
  batches were skipped.
- :class:`DeferredGuard` (the default on CUDA, for optimizers that accept a ``found_inf`` flag: torch's fused
  SGD, Adam and AdamW): the flag stays on the device and is handed to the optimizer, whose kernel skips the update
  on the device: no host synchronisation per step. With ``stop`` the flag is sticky: from the first bad step on
  every update is skipped, so the weights stay those before it ("stopped before the update" holds), and the host
  reads the flag every ``check_every`` steps and at the end of each epoch (before validation and checkpoints),
  then raises naming the step. With ``skip`` only the bad steps are skipped; they are left out of the epoch's train
  metrics, and the count is read at the end of the epoch. The culprit (loss, inputs or which layer) is not named in
  this mode: finding it needs the synchronisation it avoids. Optimizers without the flag (Adagrad, RMSprop, NGD,
  the decoupled variants) get the synchronous guard.
- :class:`ScalerGuard` (fp16): the gradient scaler already skips a step whose scaled gradients overflowed (its
  normal working, not an error), so the guard checks the loss alone, every step, and acts on it as the
  synchronous guard does.

Every verdict goes through the run's :class:`~tricklab.engine.strategy.Strategy`, so with several processes (DDP)
a NaN seen on one rank stops (or skips the batch on) every rank, and the error names the ranks that saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from tricklab.engine.precision import Precision
from tricklab.engine.strategy import Strategy
from tricklab.errors import ConfigError, TrickLabError
from tricklab.events import Callback, FitState, gradient_norms

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(TrickLabError):
    """NaN or Inf in the loss, an input batch or the gradients; raised before the optimizer applies it.

    The CLI prints its one-line message and exits with code 3 (distinct from 2, bad input).
    """

    exit_code = 3


@runtime_checkable
class StepGuard(Protocol):
    """What ``fit()`` asks of the NaN/Inf guard, at these points of every step."""

    def skips(self, state: FitState) -> bool:
        """After the backward pass (``state.loss``, ``state.inputs``, ``state.targets`` set): check this step; True
        drops the batch (``nonfinite="skip"``: no update, not counted); raises :class:`NonFiniteError` to stop.
        Sets ``state.grad_norms`` (None unless it hands checked norms over)."""
        ...

    def step(self, optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        """Take the optimizer step (through ``precision``: fp16's scaler)."""
        ...

    def count(self, loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What this step adds to the epoch's train totals (on the device)."""
        ...

    def after_step(self, state: FitState) -> None:
        """After the step is counted, before ``on_step_end``."""
        ...

    def epoch_end(self, state: FitState) -> None:
        """After the epoch's last step, before validation, history and checkpoints see the epoch."""
        ...


class _Guard:
    """What the three guards share: the policy and its limit, the fused check, the search for the culprit."""

    def __init__(
        self,
        model: nn.Module,
        policy: str = "stop",
        limit: int = 10,
        *,
        strategy: Strategy,
        callbacks: Sequence[Callback] = (),
    ):
        if policy not in NONFINITE_POLICIES:
            raise ConfigError("train.nonfinite", policy, f"one of {', '.join(NONFINITE_POLICIES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("train.nonfinite_limit", limit, "an integer >= 0 (batches skipped before stopping)")
        self.policy, self.limit, self.strategy = policy, limit, strategy
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.norm_wanters = [cb for cb in callbacks if hasattr(cb, "wants_grad_norms")]  # asked before every check
        self.keep_norms = False  # compute per-parameter gradient norms (for the probe) instead of sums
        # this step's (parameters, their gradient norms, the global norm), with keep_norms
        self.norms: tuple[list[nn.Parameter], list[torch.Tensor], torch.Tensor] | None = None

    def _begin(self, state: FitState) -> None:
        state.grad_norms = None
        if self.norm_wanters:
            self.keep_norms = any(cb.wants_grad_norms for cb in self.norm_wanters)

    def _total(self, loss: torch.Tensor) -> torch.Tensor:
        """The fused check's number, NaN where it is non-finite on any process."""
        total = loss.detach().float().sum()
        if self.keep_norms:
            self.norms = gradient_norms(self.params)
            total = total + self.norms[2]
        else:
            self.norms = None  # not this step's: none are handed over
            sums = [p.grad.float().sum() for p in self.params if p.grad is not None]
            if sums:
                total = total + torch.stack(sums).sum()
        return self.strategy.any_nonfinite(total)

    def culprit(self, loss: torch.Tensor, x: torch.Tensor) -> str | None:
        """What is non-finite (None when the fused check only overflowed on huge but finite gradients), and on
        which processes."""
        found = []
        if not torch.isfinite(loss.detach()).all():
            found.append(f"loss is {loss.detach().flatten()[0].item()}")
        if x.is_floating_point() and not (ok := torch.isfinite(x)).all():
            found.append(f"input batch has {int((~ok).sum())} non-finite values")
        layer = next((n for n, p in self.named if p.grad is not None and not torch.isfinite(p.grad).all()), None)
        if layer is not None:
            found.append(f"first non-finite gradient in {layer!r}")
        return self.strategy.name_ranks("; ".join(found) or None, loss.device)

    def handle(self, state: FitState) -> bool:
        """The check failed: raise, or return True to skip the batch (False: only an overflow of finite values)."""
        what = self.culprit(state.loss, state.inputs)
        if what is None:
            return False
        where = f"epoch {state.epoch}, step {state.step + 1}, batch {state.batch + 1}"
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite values at {where}: {what}; stopped before the update "
                "(train.nonfinite=stop; allowed: stop, skip)"
            )
        state.nonfinite_skipped += 1
        if state.nonfinite_skipped > self.limit:
            raise NonFiniteError(
                f"non-finite values at {where}: {what}; {state.nonfinite_skipped} batches skipped, more than "
                f"train.nonfinite_limit={self.limit}"
            )
        state.optimizer.zero_grad(set_to_none=True)
        return True

    def step(self, optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        precision.step(optimizer)

    def count(self, loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loss_sum, correct

    def after_step(self, state: FitState) -> None:
        pass

    def epoch_end(self, state: FitState) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy!r}, limit={self.limit})"


class SyncGuard(_Guard):
    """The check read on the host every step; a failure is explained (loss, inputs, first layer) and acted on."""

    def skips(self, state: FitState) -> bool:
        self._begin(state)
        if not torch.isfinite(self._total(state.loss)) and self.handle(state):
            return True
        state.grad_norms = self.norms  # checked: handed to the callbacks (None unless keep_norms)
        return False


class ScalerGuard(_Guard):
    """fp16: the gradient scaler judges the gradients (it skips an overflowed step); the guard judges the loss."""

    def skips(self, state: FitState) -> bool:
        self._begin(state)
        finite = bool(torch.isfinite(state.loss.detach()).all())
        return self.strategy.any_rank(not finite, state.loss.device) and self.handle(state)


class DeferredGuard(_Guard):
    """The check kept on the device as the optimizer's ``found_inf`` flag; the host reads it every
    ``check_every`` steps and at the end of each epoch."""

    def __init__(self, *args, check_every: int = 100, **kw):
        super().__init__(*args, **kw)
        self.check_every = check_every
        self.bad: torch.Tensor | None = None  # this step's verdict (a 0-d bool tensor on the device)
        self.bad_steps: torch.Tensor | None = None  # non-finite steps since the last host check
        self.bad_examples: torch.Tensor | None = None  # skip: their examples (out of the epoch's count)
        self.first_bad: torch.Tensor | None = None  # the global step of the first one (-1: none)
        self.flag: torch.Tensor | None = None  # this step's found_inf for the optimizer

    def skips(self, state: FitState) -> bool:
        self._begin(state)
        self.bad = self.mark(state.loss, state.step, len(state.targets))
        return False

    def mark(self, loss: torch.Tensor, step: int, examples: int) -> torch.Tensor:
        """This step's non-finite flag (a 0-d bool tensor on the device), set as the optimizer's ``found_inf``
        (sticky with ``stop``) for the coming ``step()``; ``examples``: this process's share of the batch."""
        bad = ~torch.isfinite(self._total(loss))
        if self.bad_steps is None:
            self.bad_steps = torch.zeros((), dtype=torch.long, device=bad.device)
            self.bad_examples = torch.zeros((), dtype=torch.long, device=bad.device)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
        self.first_bad = torch.where((self.first_bad < 0) & bad, step, self.first_bad)
        self.bad_steps += bad
        self.bad_examples += bad.long() * (examples * self.strategy.world)  # the global batch's (equal shards)
        skip = (self.bad_steps > 0) if self.policy == "stop" else bad
        self.flag = skip.float()
        return bad

    def step(self, optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        """``optimizer.step()`` with this step's flag (the kernel skips the update when it is set)."""
        _zero_momentum_buffers(optimizer)
        optimizer.found_inf, optimizer.grad_scale = self.flag, None
        try:
            precision.step(optimizer)
        finally:
            del optimizer.found_inf, optimizer.grad_scale

    def count(self, loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A skipped batch counts for nothing (its examples leave the count at the epoch's check)."""
        return (
            torch.where(self.bad, torch.zeros_like(loss_sum), loss_sum),
            torch.where(self.bad, torch.zeros_like(correct), correct),
        )

    def after_step(self, state: FitState) -> None:
        if state.step % self.check_every == 0:
            self.check(state, epoch_end=False)

    def epoch_end(self, state: FitState) -> None:
        self.check(state, epoch_end=True)

    def check(self, state: FitState, *, epoch_end: bool) -> None:
        """Read the flags on the host: raise with ``stop``; with ``skip``, at the end of an epoch, take the skipped
        batches out of its count and raise once more than ``limit`` were skipped."""
        if self.bad_steps is None:
            return
        n = int(self.bad_steps)
        if not n:
            return
        where = f"epoch {state.epoch}, step {int(self.first_bad) + 1}"
        if self.policy == "stop":
            raise NonFiniteError(
                f"non-finite values at {where} (found at a deferred check, epoch {state.epoch} step {state.step}); "
                "every update from that step on was skipped on the device: stopped before the update "
                "(train.nonfinite=stop; allowed: stop, skip)"
            )
        if not epoch_end:
            return
        state.nonfinite_skipped += n
        state.totals.seen -= int(self.bad_examples)  # their loss and correct counts were masked out in count()
        self.bad_steps.zero_()
        self.bad_examples.zero_()
        self.first_bad.fill_(-1)
        if state.nonfinite_skipped > self.limit:
            raise NonFiniteError(
                f"non-finite values in {n} batches of epoch {state.epoch}: {state.nonfinite_skipped} batches "
                f"skipped, more than train.nonfinite_limit={self.limit}"
            )


def _zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Fused SGD creates its momentum buffers uninitialised on its first step and fills them in the kernel, which
    a set ``found_inf`` skips: a skipped first step would leave garbage behind. Zero buffers before the first
    step give the same first update (``buf = momentum·0 + grad = grad``) and nothing to leave behind."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"]:
            for p in group["params"]:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` honours a ``found_inf`` flag on the device (torch's fused optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def choose_guard(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    strategy: Strategy,
    callbacks: Sequence[Callback] = (),
    *,
    policy: str = "stop",
    limit: int = 10,
    deferred: bool | None = None,
    device: torch.device | None = None,
) -> StepGuard:
    """The guard for this run: :class:`ScalerGuard` for fp16 (its scaler), else :class:`DeferredGuard` when
    ``deferred`` (None: when ``device``, the training device, is CUDA) and the optimizer takes a ``found_inf``
    flag, else :class:`SyncGuard`. ``policy`` (``train.nonfinite``) and ``limit`` (``train.nonfinite_limit``) are
    checked here, in one line."""
    if deferred is None:
        deferred = torch.device(device or precision.device).type == "cuda"
    if precision.scaler is not None:
        kind: type[_Guard] = ScalerGuard
    elif deferred and supports_found_inf(optimizer):
        kind = DeferredGuard
    else:
        kind = SyncGuard
    return kind(model, policy, limit, strategy=strategy, callbacks=callbacks)
