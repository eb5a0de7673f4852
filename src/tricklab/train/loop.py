"""The training loop: one readable ``fit()`` with a few events that tricks and callbacks hook into."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tricklab.data.base import TensorBatches, TensorData
from tricklab.errors import ConfigError, TrickLabError, wrong_type
from tricklab.events import Callback, EpochTotals, FitState, gradient_norms
from tricklab.metrics import EPOCH, EPOCH_TIME, LR, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from tricklab.train.precision import Precision, as_precision

if TYPE_CHECKING:
    from tricklab.train.distributed import DDP

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_batches(
    data,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    merge_single: bool = False,
    pin_memory: bool = False,
    name: str = "data",
) -> Batches:
    """Accept a TensorData, an ``(x, y)`` pair of tensors, or any re-iterable of batches (e.g. a DataLoader);
    anything else is refused in one line naming the argument ``name``."""
    if isinstance(data, TensorData):
        data = (data.x, data.y)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        kw = {"shuffle": shuffle, "generator": generator, "merge_single": merge_single, "pin_memory": pin_memory}
        return TensorBatches(data[0], data[1], batch_size, **kw)
    if not isinstance(data, Iterable) or isinstance(data, str | bytes | torch.Tensor):
        raise wrong_type(
            name, data, "a TensorData, an (x, y) pair of tensors or an iterable of (x, y) batches such as a DataLoader"
        )
    return data


def check_trainable(model: object) -> None:
    """Refuse, in one line, a model that is not an ``nn.Module`` or has no trainable parameter (nothing to fit)."""
    if not isinstance(model, nn.Module):
        raise wrong_type("model", model, "a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise TrickLabError(
            f"model: the {type(model).__name__} has no trainable parameter (requires_grad): there is nothing to train"
        )


def _single_example_error(batch: int, batches: Batches, error: ValueError) -> TrickLabError:
    """The model refused a batch of one example (batch norm does): a batch size of 1, a training set of 1, or a
    batch of one from the caller's own iterable (a DataLoader without ``drop_last``)."""
    if not isinstance(batches, TensorBatches):
        why = f"training batch {batch + 1} holds 1 example"
    else:
        why = "data.batch_size = 1" if batches.batch_size == 1 else "the training set holds 1 example"
    return TrickLabError(
        f"{why}: the model cannot train on a batch of one example ({error}); batch norm needs at least 2: use "
        "data.batch_size >= 2 and at least 2 training examples (a DataLoader: drop_last=True), or model.norm=layer"
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    *,
    loss_fn: LossFn = F.cross_entropy,
    device=None,
    batch_size: int = 1024,
    precision: str | Precision = "fp32",
):
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the previous mode is restored), under the
    autocast of ``precision`` (``train.precision``). ``data``: as :func:`fit` takes it; a model that is not a
    module or data of another kind is refused in one line."""
    if not isinstance(model, nn.Module):
        raise wrong_type("model", model, "a torch.nn.Module")
    batches = as_batches(data, batch_size, shuffle=False)
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)  # a model may hold neither
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    autocast = as_precision(precision, device).autocast
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
            loss = loss_fn(out, y)
        loss_sum += loss.double() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(TrickLabError):
    """NaN or Inf in the loss, an input batch or the gradients; raised before the optimizer applies it.

    The CLI prints its one-line message and exits with code 3 (distinct from 2, bad input).
    """

    exit_code = 3


class NonFiniteGuard:
    """Catch NaN/Inf in the loss, the gradients or the input batch before ``optimizer.step()`` applies them.

    The per-step cost is one fused check: ``isfinite(loss + Σ_params sum(grad))`` (a NaN or Inf anywhere makes
    the sum non-finite), about 1% of an MNIST MLP step. With ``keep_norms`` (set on the steps where a callback's
    ``wants_grad_norms`` is true, as the doctor's probe's is on its sampled steps) it checks ``isfinite(loss + ‖g‖)``
    from the per-parameter gradient norms instead (about twice the sums' cost after a backward), and hands them to
    the callbacks as ``state.grad_norms`` once they passed, so the probe does not compute them a second time. A
    NaN/Inf in an input batch is caught through the loss and gradients it poisons (checking every input element
    would cost 4% per step).

    Two ways to act on the check:

    - **synchronous** (the default on CPU): the check's result is read on the host every step; when it fails
      :meth:`handle` looks for the culprits (the loss, the inputs, the first parameter with a non-finite
      gradient; a sum that merely overflowed on huge finite values is let through). ``policy="stop"`` raises
      :class:`NonFiniteError`; ``"skip"`` drops the batch (no update, not counted in the epoch's train metrics)
      and raises once more than ``limit`` batches were skipped.
    - **deferred** (the default on CUDA, for optimizers that accept a ``found_inf`` flag: torch's fused SGD,
      Adam and AdamW): the flag stays on the device and is handed to the optimizer, whose kernel skips the
      update on the device — no host synchronisation per step. With ``stop`` the flag is sticky: from the first
      bad step on every update is skipped, so the weights stay those before it ("stopped before the update"
      holds), and the host reads the flag every ``check_every`` steps and at the end of each epoch (before
      validation and checkpoints), then raises naming the step. With ``skip`` only the bad steps are skipped;
      they are left out of the epoch's train metrics, and the count is read at the end of the epoch. The
      culprit (loss, inputs or which layer) is not named in this mode: finding it needs the synchronisation
      it avoids. Optimizers without the flag (Adagrad, RMSprop, NGD, the decoupled variants) use the
      synchronous check.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: str = "stop",
        limit: int = 10,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        deferred: bool = False,
        check_every: int = 100,
    ):
        if policy not in NONFINITE_POLICIES:
            raise ConfigError("train.nonfinite", policy, f"one of {', '.join(NONFINITE_POLICIES)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("train.nonfinite_limit", limit, "an integer >= 0 (batches skipped before stopping)")
        self.policy, self.limit, self.check_every = policy, limit, check_every
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named]
        self.deferred = bool(deferred and optimizer is not None and supports_found_inf(optimizer))
        self.bad_steps: torch.Tensor | None = None  # deferred: non-finite steps since the last host check
        self.bad_examples: torch.Tensor | None = None  # deferred, skip: their examples (out of the epoch's count)
        self.first_bad: torch.Tensor | None = None  # deferred: the global step of the first one (-1: none)
        self.flag: torch.Tensor | None = None  # deferred: this step's found_inf for the optimizer
        self.keep_norms = False  # compute per-parameter gradient norms (for the probe) instead of sums
        # this step's (parameters, their gradient norms, the global norm), with keep_norms
        self.norms: tuple[list[nn.Parameter], list[torch.Tensor], torch.Tensor] | None = None

    def _total(self, loss: torch.Tensor) -> torch.Tensor:
        total = loss.detach().float().sum()
        if self.keep_norms:
            self.norms = gradient_norms(self.params)
            return total + self.norms[2]
        self.norms = None  # not this step's: none are handed over
        sums = [p.grad.float().sum() for p in self.params if p.grad is not None]
        if sums:
            total = total + torch.stack(sums).sum()
        return total

    def all_finite(self, loss: torch.Tensor) -> bool:
        return bool(torch.isfinite(self._total(loss)))

    def loss_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss alone is finite (fp16: the grad scaler judges the gradients)."""
        return bool(torch.isfinite(loss.detach()).all())

    # -- deferred mode ------------------------------------------------------------------------------------------
    def mark(self, loss: torch.Tensor, step: int, examples: int) -> torch.Tensor:
        """Deferred: this step's non-finite flag (a 0-d bool tensor on the device), set as the optimizer's
        ``found_inf`` (sticky with ``stop``) for the coming ``step()``."""
        bad = ~torch.isfinite(self._total(loss))
        if self.bad_steps is None:
            self.bad_steps = torch.zeros((), dtype=torch.long, device=bad.device)
            self.bad_examples = torch.zeros((), dtype=torch.long, device=bad.device)
            self.first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
        self.first_bad = torch.where((self.first_bad < 0) & bad, step, self.first_bad)
        self.bad_steps += bad
        self.bad_examples += bad.long() * examples
        skip = (self.bad_steps > 0) if self.policy == "stop" else bad
        self.flag = skip.float()
        return bad

    def step(self, optimizer: torch.optim.Optimizer, precision: Precision) -> None:
        """Deferred: ``optimizer.step()`` with this step's flag (the kernel skips the update when it is set)."""
        _zero_momentum_buffers(optimizer)
        optimizer.found_inf, optimizer.grad_scale = self.flag, None
        try:
            precision.step(optimizer)
        finally:
            del optimizer.found_inf, optimizer.grad_scale

    def check(self, state: FitState, *, epoch_end: bool) -> None:
        """Deferred: read the flags on the host (every ``check_every`` steps and at the end of an epoch)."""
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
        state.totals.seen -= int(self.bad_examples)  # their loss and correct counts were masked out in fit
        self.bad_steps.zero_()
        self.bad_examples.zero_()
        self.first_bad.fill_(-1)
        if state.nonfinite_skipped > self.limit:
            raise NonFiniteError(
                f"non-finite values in {n} batches of epoch {state.epoch}: {state.nonfinite_skipped} batches "
                f"skipped, more than train.nonfinite_limit={self.limit}"
            )

    # -- synchronous mode ---------------------------------------------------------------------------------------
    def culprit(self, loss: torch.Tensor, x: torch.Tensor) -> str | None:
        """What is non-finite (None when the fused check only overflowed on huge but finite gradients)."""
        found = []
        if not torch.isfinite(loss.detach()).all():
            found.append(f"loss is {loss.detach().flatten()[0].item()}")
        if x.is_floating_point() and not (ok := torch.isfinite(x)).all():
            found.append(f"input batch has {int((~ok).sum())} non-finite values")
        layer = next((n for n, p in self.named if p.grad is not None and not torch.isfinite(p.grad).all()), None)
        if layer is not None:
            found.append(f"first non-finite gradient in {layer!r}")
        return "; ".join(found) or None

    def handle(self, state: FitState, loss: torch.Tensor, x: torch.Tensor) -> bool:
        """Called when :meth:`all_finite` failed: raise, or return True to skip the batch."""
        what = self.culprit(loss, x)
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


#: A run has blown up when its reported model's loss exceeds this many times ln(C), the loss of a uniform guess
#: (and its loss before training): see :func:`blown_up`.
BLOWUP_FACTOR = 100.0


class DivergedError(TrickLabError):
    """A run ended, finite but blown up (see :func:`blown_up`); raised after its results were written.

    The CLI prints ``error: diverged: ...`` and exits with code 3, as for NaN/Inf (:class:`NonFiniteError`).
    ``result``: the run's :class:`~tricklab.train.run.RunResult`, its metrics marked ``diverged``.
    """

    exit_code = 3
    result = None


def blown_up(loss: float, num_classes: int, initial: float | None = None, factor: float = BLOWUP_FACTOR) -> str | None:
    """Why a run has blown up, judged by the cross-entropy ``loss`` of the model it reports (on the test set after
    training, restored or averaged weights included) over ``num_classes`` classes and by ``initial``, the same
    model's test loss before training (on the first 2,048 test examples: ``INITIAL_LOSS_EXAMPLES`` in
    :mod:`tricklab.train.run`); None if it has not.

    The rule: ``loss`` is not finite, or ``loss > factor × ln(C)`` (``factor`` = :data:`BLOWUP_FACTOR` = 100) and
    ``loss > initial``. ``ln(C)`` is the loss of a uniform prediction, a model that knows nothing. A mean loss of
    ``100 ln C`` means the true class gets on average a probability below ``C**-100`` (logits off by 230 nats for
    ten classes): the weights' scale ran away, as with Adam at lr 1e10 (test loss 3e34 on MNIST-1D, 2.9 before
    training), which the NaN/Inf guard misses because every number stays finite. A run that learned little stays
    far below: a 2×256 MLP that memorized 1,000 MNIST-1D examples (the ``overfitting`` study) ends near 2.2 ≈ ln
    10, a 10-layer tanh net at N(0, 1) weights near 3.8, a dead net at chance near ln 10 (its accuracy says so).
    Some nets start above the bound -- raw 0–255 inputs (238 on the synthetic set), a ReLU net at N(0, 1) weights
    (12,000 on MNIST-1D, 2,300 after 5 epochs) -- and did not blow up: training made them better, so they are
    judged by their accuracy. Judging the reported model on held-out data, not the last training epoch, keeps a
    run whose early stopping restored good weights from being called diverged.

    Example::

        blown_up(3e34, 10, initial=2.9)   # "test loss 3e+34 > 100 × ln(10) = 230 (and 2.9 before training)"
        blown_up(2.2, 10, initial=2.9)    # None
        blown_up(2300, 10, initial=12000) # None: it started there and improved
    """
    bound = factor * math.log(num_classes)
    if not math.isfinite(loss):
        return f"test loss is {loss}"
    if loss > bound and (initial is None or not loss <= initial):
        before = f" (and {initial:.3g} before training)" if initial is not None else ""
        return f"test loss {loss:.3g} > {factor:g} × ln({num_classes}) = {bound:.3g}{before}"
    return None


def _emit(callbacks: Sequence[Callback], event: str, state: FitState) -> None:
    for cb in callbacks:
        getattr(cb, event)(state)


def fit(
    model: nn.Module,
    train,
    val=None,
    *,
    epochs: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn = F.cross_entropy,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    state: FitState | None = None,
    nonfinite: str = "stop",
    nonfinite_limit: int = 10,
    precision: str | Precision = "fp32",
    deferred_check: bool | None = None,
    pin_memory: bool = False,
    ddp: DDP | None = None,
) -> FitState:
    """Train ``model`` on ``train`` for ``epochs`` epochs; validate on ``val`` after each.

    ``train``/``val``: a :class:`TensorData`, an ``(x, y)`` pair of tensors (batched here, shuffled by
    ``generator``; a final batch of one example joins the batch before it, since batch norm cannot train on one
    example and a lone example's step is the noisiest of the epoch) or any re-iterable of ``(x, y)`` batches such
    as a ``DataLoader`` (use its ``drop_last`` with batch norm). Works on any ``nn.Module`` that maps inputs to
    class logits (or any output ``loss_fn`` accepts). ``state``: continue
    from a state restored from a checkpoint (see :mod:`tricklab.train.checkpoint`); a state saved mid-epoch
    skips the ``state.batches_done`` batches its epoch already trained (the same ones: the data order comes
    from ``generator``, restored with it). ``ddp``: this process is one rank of several under torchrun
    (:mod:`tricklab.train.distributed`): it trains on its shard of each global batch through
    ``DistributedDataParallel``, and the step totals, the NaN/Inf guard and the stop decision are agreed by all ranks.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` (CUDA only), or a :class:`~tricklab.train.precision.Precision`
    (see :mod:`tricklab.train.precision`). ``deferred_check``: how the NaN/Inf guard acts (see
    :class:`NonFiniteGuard`); None: deferred on CUDA for optimizers that take a ``found_inf`` flag, synchronous
    otherwise. ``pin_memory``: tensors on the host training on a GPU: page-locked batches (see
    :func:`tricklab.train.placement.place_splits`, which puts a dataset that fits on the GPU itself).

    The loop, with its events (see :mod:`tricklab.events`)::

        on_fit_start
        for epoch in 1..epochs:
            on_epoch_start
            for (x, y) in train:
                loss = loss_fn(model(x), y) under autocast; zero grads; loss.backward() (fp16: scaled, unscaled)
                NaN/Inf in loss, x or grads: raise NonFiniteError, or skip the batch (nonfinite="skip")
                on_after_backward                 # clip, penalize, probe; may set skip_step
                optimizer.step() unless skip_step
                on_step_end                       # per-step LR, EMA, probes; a stop signal checkpoints here
            validate (on state.eval_model if a callback set one, else on model)
            history += row
            on_epoch_end                          # early stopping, per-epoch LR, logging, checkpoints
            stop if state.stop
        on_fit_end                                # restore best weights, SWA

    Returns the final :class:`FitState` (``state.history`` holds one row per epoch with ``epoch, train_loss,
    train_acc, val_loss, val_acc, lr, epoch_time_s`` and whatever callbacks added; the names are constants in
    :mod:`tricklab.metrics`).
    """
    check_trainable(model)
    device = torch.device(device)
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    # a final batch of one example joins the one before: batch norm cannot train on a lone example
    train_batches = as_batches(
        train, batch_size, shuffle=True, generator=generator, merge_single=True, pin_memory=pin_memory, name="train"
    )
    if val is not None:
        as_batches(val, batch_size, shuffle=False, name="val")  # refused now, not after the first epoch
    net = model
    if ddp is not None:  # DDP: this rank's shard of every global batch; forward through the DDP wrapper
        train_batches, net = ddp.shard(train_batches), ddp.wrap(model)
    callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 0))
    steps = len(train_batches) if hasattr(train_batches, "__len__") else None
    if state is None:
        state = FitState(model=model, optimizer=optimizer, epochs=epochs, device=device, steps_per_epoch=steps)
    state.steps_per_epoch = state.steps_per_epoch or steps
    precision = as_precision(precision, device)
    if deferred_check is None:
        deferred_check = device.type == "cuda"
    guard_type = NonFiniteGuard if ddp is None else ddp.guard  # DDP: its verdicts are agreed by all ranks
    guard = guard_type(model, nonfinite, nonfinite_limit, optimizer=optimizer, deferred=deferred_check)
    if guard.deferred and precision.scaler is not None:
        guard.deferred = False  # fp16: the scaler already skips non-finite steps; the loss is checked per step
    norm_wanters = [cb for cb in callbacks if hasattr(cb, "wants_grad_norms")]  # asked again before every check

    _emit(callbacks, "on_fit_start", state)
    while state.epoch < epochs and not state.stop:
        if state.batches_done == 0:  # a new epoch (a state saved mid-epoch continues its own)
            state.epoch += 1
            state.epoch_extras = {}
            state.totals = EpochTotals.zeros(state.lr, device)
            _emit(callbacks, "on_epoch_start", state)
        totals, done = state.totals, state.batches_done
        model.train()
        for state.batch, (x, y) in islice(enumerate(train_batches), done, None):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            try:
                with precision.autocast():
                    out = net(x)
                    loss = loss_fn(out, y)
            except ValueError as e:  # torch's batch norm refuses one value per channel
                if len(x) == 1:
                    raise _single_example_error(state.batch, train_batches, e) from None
                raise
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.unscale(optimizer)
            state.loss, state.inputs, state.targets = loss, x, y
            state.batches_done = state.batch + 1
            state.grad_norms, bad = None, None
            if norm_wanters:
                guard.keep_norms = any(cb.wants_grad_norms for cb in norm_wanters)
            if guard.deferred:
                bad = guard.mark(loss, state.step, len(y))
            elif precision.scaler is not None:  # fp16: non-finite gradients are the scaler's; the loss is ours
                if not guard.loss_finite(loss) and guard.handle(state, loss, x):
                    precision.after_skipped_step(optimizer)
                    continue
            elif not guard.all_finite(loss) and guard.handle(state, loss, x):
                continue  # nonfinite="skip": no update, not counted
            else:
                state.grad_norms = guard.norms  # checked by the guard (None unless keep_norms)
            _emit(callbacks, "on_after_backward", state)
            if state.skip_step:
                state.skip_step = False
                precision.after_skipped_step(optimizer)
            elif bad is not None:
                guard.step(optimizer, precision)
            else:
                precision.step(optimizer)
            state.step += 1
            batch_loss = loss.detach().double() * len(y)
            batch_correct = (out.detach().argmax(1) == y).sum()
            if bad is not None:  # deferred: a skipped batch counts for nothing (its examples: see guard.check)
                batch_loss = torch.where(bad, torch.zeros_like(batch_loss), batch_loss)
                batch_correct = torch.where(bad, torch.zeros_like(batch_correct), batch_correct)
            if ddp is not None:  # DDP: the global batch's sums (the shards are equal: len(y) × world examples)
                batch_loss, batch_correct = ddp.reduce_totals(batch_loss, batch_correct)
            totals.loss_sum += batch_loss
            totals.correct += batch_correct
            totals.seen += len(y) * (1 if ddp is None else ddp.world)
            if bad is not None and state.step % guard.check_every == 0:
                guard.check(state, epoch_end=False)
            _emit(callbacks, "on_step_end", state)
            if state.stop:
                break
        if guard.deferred:  # before validation, history and checkpoints see this epoch
            guard.check(state, epoch_end=True)
        state.batches_done = 0
        row = {
            EPOCH: state.epoch,
            TRAIN_LOSS: totals.loss_sum.item() / max(totals.seen, 1),
            TRAIN_ACC: totals.correct.item() / max(totals.seen, 1),
        }
        if ddp is not None:  # DDP: rank 0's batch-norm statistics on every rank, so all evaluate alike
            ddp.epoch_end(model)
        if val is not None:
            v = evaluate(state.eval_model or model, val, loss_fn=loss_fn, device=device, precision=precision)
            row.update({VAL_LOSS: v["loss"], VAL_ACC: v["acc"]})
        row.update({LR: totals.lr, EPOCH_TIME: time.perf_counter() - totals.started})
        state.metrics = row
        state.history.append(row)
        for cb in callbacks:
            cb.on_epoch_end(state)
            row.update(state.epoch_extras)
        if ddp is not None:  # DDP: every rank stops if one does
            ddp.agree_stop(state)
    _emit(callbacks, "on_fit_end", state)
    return state
