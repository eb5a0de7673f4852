"""The training loop: one readable ``fit()`` with a few events that tricks and callbacks hook into."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tricklab.data.base import TensorBatches, TensorData
from tricklab.events import Callback, FitState

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_batches(data, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Batches:
    """Accept a TensorData, an ``(x, y)`` pair of tensors, or any re-iterable of batches (e.g. a DataLoader)."""
    if isinstance(data, TensorData):
        data = (data.x, data.y)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorBatches(data[0], data[1], batch_size, shuffle=shuffle, generator=generator)
    return data


@torch.no_grad()
def evaluate(model: nn.Module, data, *, loss_fn: LossFn = F.cross_entropy, device=None, batch_size: int = 1024):
    """Mean loss and accuracy of ``model`` on ``data`` (eval mode; the previous mode is restored)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    for x, y in as_batches(data, batch_size, shuffle=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += loss_fn(out, y).double() * len(y)
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


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
) -> FitState:
    """Train ``model`` on ``train`` for ``epochs`` epochs; validate on ``val`` after each.

    ``train``/``val``: a :class:`TensorData`, an ``(x, y)`` pair of tensors (batched here, shuffled by
    ``generator``) or any re-iterable of ``(x, y)`` batches such as a ``DataLoader``. Works on any
    ``nn.Module`` that maps inputs to class logits (or any output ``loss_fn`` accepts).

    The loop, with its events (see :mod:`tricklab.events`)::

        on_fit_start
        for epoch in 1..epochs:
            on_epoch_start
            for (x, y) in train:
                loss = loss_fn(model(x), y); zero grads; loss.backward()
                on_after_backward                 # clip, penalize, probe; may set skip_step
                optimizer.step() unless skip_step
                on_step_end                       # per-step LR, EMA, probes
            validate (on state.eval_model if a callback set one, else on model)
            on_epoch_end                          # early stopping, per-epoch LR, logging
            history += row; stop if state.stop
        on_fit_end                                # restore best weights, SWA

    Returns the final :class:`FitState` (``state.history`` holds one row per epoch with ``epoch, train_loss,
    train_acc, val_loss, val_acc, lr, epoch_time_s`` and whatever callbacks added).
    """
    device = torch.device(device)
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
    train_batches = as_batches(train, batch_size, shuffle=True, generator=generator)
    callbacks = sorted(callbacks, key=lambda c: getattr(c, "order", 0))
    steps = len(train_batches) if hasattr(train_batches, "__len__") else None
    if state is None:
        state = FitState(model=model, optimizer=optimizer, epochs=epochs, device=device, steps_per_epoch=steps)

    _emit(callbacks, "on_fit_start", state)
    while state.epoch < epochs and not state.stop:
        state.epoch += 1
        state.epoch_extras = {}
        lr = state.lr
        start = time.perf_counter()
        _emit(callbacks, "on_epoch_start", state)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for state.batch, (x, y) in enumerate(train_batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.loss, state.inputs, state.targets = loss, x, y
            _emit(callbacks, "on_after_backward", state)
            if state.skip_step:
                state.skip_step = False
            else:
                optimizer.step()
            state.step += 1
            _emit(callbacks, "on_step_end", state)
            loss_sum += loss.detach().double() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if state.stop:
                break
        row = {
            "epoch": state.epoch,
            "train_loss": loss_sum.item() / max(seen, 1),
            "train_acc": correct.item() / max(seen, 1),
        }
        if val is not None:
            v = evaluate(state.eval_model or model, val, loss_fn=loss_fn, device=device)
            row.update(val_loss=v["loss"], val_acc=v["acc"])
        row.update(lr=lr, epoch_time_s=time.perf_counter() - start)
        state.metrics = row
        for cb in callbacks:
            cb.on_epoch_end(state)
            row.update(state.epoch_extras)
        state.history.append(row)
    _emit(callbacks, "on_fit_end", state)
    return state
