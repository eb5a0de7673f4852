import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tricklab.data.base import TensorData
from tricklab.engine import evaluate, fit
from tricklab.events import EVENTS, Callback


def boring_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_fit_learns_separable_blobs(blobs):
    x, y, xv, yv = blobs
    model = boring_model()
    state = fit(
        model,
        (x, y),
        (xv, yv),
        epochs=15,
        batch_size=32,
        generator=torch.Generator().manual_seed(0),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
    )
    assert len(state.history) == 15
    assert state.history[-1]["val_acc"] >= 0.95
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    row = state.history[0]
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"} <= set(row)
    assert state.step == 15 * 8  # 240 examples / batch 32 → 8 steps per epoch


def test_fit_is_deterministic_on_cpu(blobs):
    x, y, xv, yv = blobs
    runs = []
    for _ in range(2):
        model = boring_model(seed=1)
        fit(
            model,
            (x, y),
            (xv, yv),
            epochs=3,
            batch_size=16,
            generator=torch.Generator().manual_seed(5),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        )
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_fit_accepts_a_dataloader_and_any_module(blobs):
    x, y, xv, yv = blobs
    loader = DataLoader(TensorDataset(x, y), batch_size=40, shuffle=True)
    model = boring_model()
    state = fit(model, loader, TensorData(xv, yv), epochs=5, optimizer=torch.optim.Adam(model.parameters(), 1e-2))
    assert state.steps_per_epoch == 6
    assert state.history[-1]["val_acc"] > 0.8


class Recorder(Callback):
    def __init__(self, name, log, order=0):
        self.name, self.log, self.order = name, log, order

    def __getattribute__(self, attr):
        if attr in EVENTS:
            log = object.__getattribute__(self, "log")
            name = object.__getattribute__(self, "name")
            return lambda state: log.append((name, attr))
        return object.__getattribute__(self, attr)


def test_events_fire_in_documented_order(blobs):
    x, y, _, _ = blobs
    log = []
    fit(
        boring_model(),
        (x[:64], y[:64]),
        epochs=1,
        batch_size=32,
        callbacks=[Recorder("late", log, 5), Recorder("early", log, -5)],
    )
    events = [e for n, e in log if n == "early"]
    assert events == [
        "on_fit_start",
        "on_epoch_start",
        "on_after_backward",
        "on_step_end",
        "on_after_backward",
        "on_step_end",
        "on_epoch_end",
        "on_fit_end",
    ]
    # lower order runs first at every event
    assert log[0] == ("early", "on_fit_start") and log[1] == ("late", "on_fit_start")


class StopAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            state.stop, state.stop_reason = True, "test"
        state.epoch_extras["seen"] = state.epoch


class SkipAll(Callback):
    def on_after_backward(self, state):
        state.skip_step = True


def test_callbacks_stop_skip_and_extras(blobs):
    x, y, xv, yv = blobs
    state = fit(boring_model(), (x, y), (xv, yv), epochs=10, callbacks=[StopAfter(3)])
    assert state.epoch == 3 and state.stop_reason == "test"
    assert [r["seen"] for r in state.history] == [1, 2, 3]
    model = boring_model()
    before = [p.clone() for p in model.parameters()]
    fit(model, (x, y), epochs=2, callbacks=[SkipAll()])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))


class SwapEval(Callback):
    def __init__(self, other):
        self.other = other

    def on_fit_start(self, state):
        state.eval_model = self.other


def test_validation_uses_eval_model(blobs):
    x, y, xv, yv = blobs
    other = boring_model(seed=3)
    expected = evaluate(other, (xv, yv))
    state = fit(boring_model(), (x, y), (xv, yv), epochs=1, callbacks=[SwapEval(other)], optimizer=None)
    assert abs(state.history[0]["val_loss"] - expected["loss"]) < 1e-9


def test_evaluate_restores_mode(blobs):
    _, _, xv, yv = blobs
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5))
    model.train()
    r = evaluate(model, (xv, yv))
    assert model.training and 0 <= r["acc"] <= 1
