"""The training loop: one readable ``fit()`` with a few events that tricks and callbacks hook into."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from tricklab.data.base import TensorBatches, TensorData
from tricklab.engine.guards import NonFiniteError as NonFiniteError  # raised by fit(); its home is guards
from tricklab.engine.guards import StepGuard, choose_guard
from tricklab.engine.placement import eval_batch_size
from tricklab.engine.precision import Precision, as_precision
from tricklab.engine.strategy import Batches, SingleProcess, Strategy
from tricklab.errors import TrickLabError, wrong_type
from tricklab.events import Callback, EpochTotals, FitState
from tricklab.metrics import EPOCH, EPOCH_TIME, LR, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS

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
    batch_size: int | None = None,
    precision: str | Precision = "fp32",
):
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the previous mode is restored), under the
    autocast of ``precision`` (``train.precision``). ``data``: as :func:`fit` takes it; a model that is not a
    module or data of another kind is refused in one line. ``batch_size`` (tensors only; default: chosen for the
    model and device by :func:`~tricklab.engine.placement.eval_batch_size`) changes speed, not the result."""
    if not isinstance(model, nn.Module):
        raise wrong_type("model", model, "a torch.nn.Module")
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)  # a model may hold neither
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    if batch_size is None:
        batch_size = eval_batch_size(model, device)
    batches = as_batches(data, batch_size, shuffle=False)
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


#: A run has blown up when its reported model's loss exceeds this many times ln(C), the loss of a uniform guess
#: (and its loss before training): see :func:`blown_up`.
BLOWUP_FACTOR = 100.0


class DivergedError(TrickLabError):
    """A run ended, finite but blown up (see :func:`blown_up`); raised after its results were written.

    The CLI prints ``error: diverged: ...`` and exits with code 3, as for NaN/Inf (:class:`NonFiniteError`).
    ``result``: the run's :class:`~tricklab.runner.RunResult`, its metrics marked ``diverged``.
    """

    exit_code = 3
    result = None


def blown_up(loss: float, num_classes: int, initial: float | None = None, factor: float = BLOWUP_FACTOR) -> str | None:
    """Why a run has blown up, judged by the cross-entropy ``loss`` of the model it reports (on the test set after
    training, restored or averaged weights included) over ``num_classes`` classes and by ``initial``, the same
    model's test loss before training (on the first 2,048 test examples: ``INITIAL_LOSS_EXAMPLES`` in
    :mod:`tricklab.runner`); None if it has not.

    The rule: ``loss`` is not finite, or ``loss > factor × ln(C)`` (``factor`` = :data:`BLOWUP_FACTOR` = 100) and
    ``loss > initial``. ``ln(C)`` is the loss of a uniform prediction, a model that knows nothing. A mean loss of
    ``100 ln C`` means the true class gets on average a probability below ``C**-100`` (logits off by 230 nats for
    ten classes): the weights' scale ran away, which the NaN/Inf guard misses because every number stays finite. A
    run that learned little stays far below the bound; a net that starts above it and improved did not blow up and
    is judged by its accuracy. Judging the reported model on held-out data, not the last training epoch, keeps a
    run whose early stopping restored good weights from being called diverged. The losses the bound was set against:
    ``docs/training.md``, "Exit codes".

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
    ddp: Strategy | None = None,
) -> FitState:
    """Train ``model`` on ``train`` for ``epochs`` epochs; validate on ``val`` after each.

    ``train``/``val``: a :class:`TensorData`, an ``(x, y)`` pair of tensors (batched here, shuffled by
    ``generator``; a final batch of one example joins the batch before it, since batch norm cannot train on one
    example and a lone example's step is the noisiest of the epoch) or any re-iterable of ``(x, y)`` batches such
    as a ``DataLoader`` (use its ``drop_last`` with batch norm). Works on any ``nn.Module`` that maps inputs to
    class logits (or any output ``loss_fn`` accepts). ``state``: continue from a state restored from a checkpoint
    (see :mod:`tricklab.engine.checkpoint`); a state saved mid-epoch skips the ``state.batches_done`` batches its
    epoch already trained (the same ones: the data order comes from ``generator``, restored with it).

    Two objects chosen once before the loop do what differs between runs, at fixed points of it:

    - ``ddp``, the :class:`~tricklab.engine.strategy.Strategy`: how many processes train together. None: this
      process alone (:class:`~tricklab.engine.strategy.SingleProcess`); a
      :class:`~tricklab.engine.distributed.DDP`: this process is one rank of several under torchrun, it trains on
      its shard of each global batch through ``DistributedDataParallel``, and the step totals, the NaN/Inf
      guard's verdicts and the stop decision are agreed by all ranks.
    - the NaN/Inf guard, a :class:`~tricklab.engine.guards.StepGuard` (:func:`~tricklab.engine.guards.choose_guard`):
      ``nonfinite`` (``stop`` or ``skip``) and ``nonfinite_limit`` say what it does with a NaN/Inf;
      ``deferred_check`` how it reads its check: on the host every step, or deferred on the device (None:
      deferred on CUDA for optimizers that take a ``found_inf`` flag); fp16 has its own, beside the scaler.

    ``precision``: ``fp32``, ``bf16`` or ``fp16`` (CUDA only), or a :class:`~tricklab.engine.precision.Precision`
    (see :mod:`tricklab.engine.precision`). ``pin_memory``: tensors on the host training on a GPU: page-locked
    batches (see :func:`tricklab.engine.placement.place_splits`, which puts a dataset that fits on the GPU itself).

    The loop, with its events (see :mod:`tricklab.events`)::

        net, batches = strategy.prepare(model, train)     # DDP: the wrapped model, this rank's shards
        on_fit_start
        for epoch in 1..epochs:                           # a state saved mid-epoch continues its own epoch
            on_epoch_start
            for (x, y) in batches:
                loss = loss_fn(net(x), y) under autocast; zero grads; backward (fp16: scaled, then unscaled)
                if guard.skips(state): continue           # NaN/Inf: NonFiniteError, or skip (nonfinite="skip")
                on_after_backward                         # clip, penalize, probe; may set skip_step
                guard.step(optimizer) unless skip_step    # optimizer.step() (deferred: with its found_inf flag)
                totals += strategy.reduce(guard.count(loss sum, correct))
                guard.after_step                          # deferred: read the flag every check_every steps
                on_step_end                               # per-step LR, EMA, probes; a stop signal checkpoints here
                break if state.stop
            guard.epoch_end                               # deferred: the epoch's flags, before anything sees it
            strategy.epoch_end                            # DDP: rank 0's batch-norm statistics everywhere
            validate (on state.eval_model if a callback set one, else on model)
            history += row
            on_epoch_end                                  # early stopping, per-epoch LR, logging, checkpoints
            strategy.agree_stop; stop if state.stop       # DDP: every rank stops if one does
        on_fit_end                                        # restore best weights, SWA

    Returns the final :class:`FitState` (``state.history`` holds one row per epoch with ``epoch, train_loss,
    train_acc, val_loss, val_acc, lr, epoch_time_s`` and whatever callbacks added; the names are constants in
    :mod:`tricklab.metrics`).
    """
    check_trainable(model)
    device = torch.device(device)
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    strategy = ddp or SingleProcess()
    net, batches = strategy.prepare(model, _train_batches(train, val, batch_size, generator, pin_memory))
    callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 0))
    state = _fit_state(state, model, optimizer, epochs, device, batches)
    precision = as_precision(precision, device)
    guard = choose_guard(
        model, optimizer, precision, strategy, callbacks,
        policy=nonfinite, limit=nonfinite_limit, deferred=deferred_check, device=device,
    )  # fmt: skip

    _emit(callbacks, "on_fit_start", state)
    while state.epoch < epochs and not state.stop:
        if state.batches_done == 0:  # a new epoch (a state saved mid-epoch continues its own)
            _start_epoch(state, device)
            _emit(callbacks, "on_epoch_start", state)
        totals, done = state.totals, state.batches_done
        model.train()
        for state.batch, (x, y) in islice(enumerate(batches), done, None):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out, loss = _forward(net, loss_fn, precision, x, y, state.batch, batches)
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.unscale(optimizer)
            state.loss, state.inputs, state.targets = loss, x, y
            state.batches_done = state.batch + 1
            if guard.skips(state):  # nonfinite="skip": no update, not counted
                precision.after_skipped_step(optimizer)
                continue
            _emit(callbacks, "on_after_backward", state)
            if state.skip_step:
                state.skip_step = False
                precision.after_skipped_step(optimizer)
            else:
                guard.step(optimizer, precision)
            state.step += 1
            _count(totals, guard, strategy, loss, out, y)
            guard.after_step(state)
            _emit(callbacks, "on_step_end", state)
            if state.stop:
                break
        guard.epoch_end(state)  # before validation, history and checkpoints see this epoch
        state.batches_done = 0
        strategy.epoch_end(model)
        state.metrics = row = _epoch_row(state, totals, model, val, loss_fn, device, precision)
        state.history.append(row)
        for cb in callbacks:
            cb.on_epoch_end(state)
            row.update(state.epoch_extras)
        strategy.agree_stop(state)
    _emit(callbacks, "on_fit_end", state)
    return state


def _emit(callbacks: Sequence[Callback], event: str, state: FitState) -> None:
    for cb in callbacks:
        getattr(cb, event)(state)


def _train_batches(train, val, batch_size: int, generator: torch.Generator | None, pin_memory: bool) -> Batches:
    """``train``'s batches, shuffled by ``generator`` (a final batch of one example joins the one before: batch norm
    cannot train on a lone example); ``val`` is checked now too, not after the first epoch."""
    batches = as_batches(
        train, batch_size, shuffle=True, generator=generator, merge_single=True, pin_memory=pin_memory, name="train"
    )
    if val is not None:
        as_batches(val, batch_size, shuffle=False, name="val")
    return batches


def _fit_state(state: FitState | None, model, optimizer, epochs: int, device: torch.device, batches) -> FitState:
    """A new state, or the restored ``state`` (its steps per epoch filled in if it has none)."""
    steps = len(batches) if hasattr(batches, "__len__") else None
    if state is None:
        state = FitState(model=model, optimizer=optimizer, epochs=epochs, device=device, steps_per_epoch=steps)
    state.steps_per_epoch = state.steps_per_epoch or steps
    return state


def _start_epoch(state: FitState, device: torch.device) -> None:
    """The next epoch, its extras and totals at zero."""
    state.epoch += 1
    state.epoch_extras = {}
    state.totals = EpochTotals.zeros(state.lr, device)


def _forward(net: nn.Module, loss_fn: LossFn, precision: Precision, x, y, batch: int, batches: Batches):
    """The model's output and the loss on one batch, under ``precision``'s autocast."""
    try:
        with precision.autocast():
            out = net(x)
            return out, loss_fn(out, y)
    except ValueError as e:  # torch's batch norm refuses one value per channel
        if len(x) == 1:
            raise _single_example_error(batch, batches, e) from None
        raise


def _count(totals: EpochTotals, guard: StepGuard, strategy: Strategy, loss, out, y) -> None:
    """Add this step's loss sum, correct count and examples (over all processes) to the epoch's totals, on the
    device: no host synchronisation."""
    loss_sum, correct = guard.count(loss.detach().double() * len(y), (out.detach().argmax(1) == y).sum())
    loss_sum, correct, seen = strategy.reduce(loss_sum, correct, len(y))
    totals.loss_sum += loss_sum
    totals.correct += correct
    totals.seen += seen


def _epoch_row(state: FitState, totals: EpochTotals, model: nn.Module, val, loss_fn, device, precision) -> dict:
    """The epoch's history row: its train totals, the model evaluated on ``val`` (``state.eval_model`` if a callback
    set one, else ``model``), the learning rate and the epoch's time."""
    row = {
        EPOCH: state.epoch,
        TRAIN_LOSS: totals.loss_sum.item() / max(totals.seen, 1),
        TRAIN_ACC: totals.correct.item() / max(totals.seen, 1),
    }
    if val is not None:
        v = evaluate(state.eval_model or model, val, loss_fn=loss_fn, device=device, precision=precision)
        row.update({VAL_LOSS: v["loss"], VAL_ACC: v["acc"]})
    row.update({LR: totals.lr, EPOCH_TIME: time.perf_counter() - totals.started})
    return row
