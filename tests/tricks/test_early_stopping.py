import math

import pytest
import torch
from torch import nn

from tricklab.errors import ConfigError
from tricklab.events import FitState
from tricklab.tricks.early_stopping import EarlyStopper, EarlyStopping


def run(stopper: EarlyStopper, values: list[float]) -> int | None:
    """Feed epochs 1, 2, ... to the stopper; the epoch it stopped at, or None."""
    for epoch, value in enumerate(values, start=1):
        if stopper.update(value, epoch):
            return epoch
    return None


@pytest.mark.parametrize(
    "monitor, values, patience, min_delta, stop_epoch, best_epoch",
    [
        ("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97], 3, 0.0, 5, 2),
        ("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97], 4, 0.0, None, 2),
        ("val_loss", [1.0, 0.9, 0.95, 0.96, 0.97], 0, 0.0, 3, 2),
        ("val_loss", [1.0, 0.9, 0.95, 0.8, 0.85, 0.86], 2, 0.0, 6, 4),  # improvement resets the count
        ("val_loss", [1.0, 0.98, 0.97, 0.96], 2, 0.05, 3, 1),  # gains below min_delta do not count
        ("val_loss", [1.0, 0.98, 0.97, 0.96], 2, 0.0, None, 4),
        ("val_acc", [0.5, 0.6, 0.6, 0.55, 0.7], 2, 0.0, 4, 2),  # a tie is not an improvement
        ("val_acc", [0.5, 0.6, 0.6, 0.55, 0.7, 0.65, 0.64], 3, 0.0, None, 5),
        ("val_acc", [0.5, 0.52, 0.53, 0.56], 2, 0.05, 3, 1),
    ],
)
def test_stops_at_the_right_epoch(monitor, values, patience, min_delta, stop_epoch, best_epoch):
    stopper = EarlyStopper(monitor, patience=patience, min_delta=min_delta)
    assert run(stopper, values) == stop_epoch
    assert stopper.stopped_epoch == stop_epoch
    assert stopper.best_epoch == best_epoch
    assert stopper.best == values[best_epoch - 1]
    assert (stopper.reason is not None) == (stop_epoch is not None)


def test_min_delta_is_measured_from_the_best_not_the_last_value():
    # best 1.0, min_delta 0.375: 0.625 is not an improvement (strictly more is needed), 0.5 is, and it is
    # compared with 1.0 (the best), not with 0.75 (the previous epoch).
    stopper = EarlyStopper("val_loss", patience=5, min_delta=0.375)
    assert run(stopper, [1.0, 0.625, 0.75, 0.5]) is None
    assert (stopper.best_epoch, stopper.best, stopper.bad_epochs) == (4, 0.5, 0)
    stopper = EarlyStopper("val_acc", patience=5, min_delta=0.25)
    assert run(stopper, [0.5, 0.75, 0.625, 0.875]) is None
    assert (stopper.best_epoch, stopper.best) == (4, 0.875)


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_stops_at_once(monitor, bad):
    stopper = EarlyStopper(monitor, patience=10)
    assert run(stopper, [0.5, 0.4, bad, 0.3]) == 3
    assert "non-finite" in stopper.reason and "epoch 3" in stopper.reason
    assert stopper.best_epoch in (1, 2)  # the NaN never became the best


def test_state_dict_resumes_exactly():
    values = [1.0, 0.9, 0.95, 0.85, 0.9, 0.91, 0.92]
    whole = EarlyStopper("val_loss", patience=3)
    first = EarlyStopper("val_loss", patience=3)
    for epoch, v in enumerate(values[:4], start=1):
        first.update(v, epoch)
    resumed = EarlyStopper("val_loss", patience=3)
    resumed.load_state_dict(first.state_dict())
    stop = next(e for e, v in enumerate(values[4:], start=5) if resumed.update(v, e))
    assert stop == run(whole, values) == 7
    assert resumed.state_dict() == whole.state_dict()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"monitor": "train_loss"}, "early_stopping.monitor"),
        ({"patience": -1}, "early_stopping.patience"),
        ({"patience": 2.5}, "early_stopping.patience"),
        ({"patience": True}, "early_stopping.patience"),
        ({"min_delta": -0.1}, "early_stopping.min_delta"),
        ({"min_delta": math.nan}, "early_stopping.min_delta"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        EarlyStopper(**kwargs)
    assert info.value.key == key and key in str(info.value)
    with pytest.raises(ConfigError):
        EarlyStopping(**kwargs)


# ----------------------------------------------------------------------------- the callback


def make_state(epochs: int) -> FitState:
    model = nn.Linear(2, 1)
    return FitState(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs, torch.device("cpu"))


def drive(callback: EarlyStopping, state: FitState, metric: str, values: list[float]) -> None:
    """A loop in miniature: epoch e's weights are all e, its metric is values[e-1]."""
    for epoch, value in enumerate(values, start=1):
        state.epoch = epoch
        with torch.no_grad():
            state.model.weight.fill_(epoch)  # in place: a snapshot that is not a copy would change too
            state.model.bias.fill_(-epoch)
        state.metrics = {metric: value}
        callback.on_epoch_end(state)
        if state.stop:
            break
    callback.on_fit_end(state)


def assert_weights_of_epoch(model: nn.Module, epoch: int) -> None:
    assert torch.equal(model.weight, torch.full_like(model.weight, epoch))
    assert torch.equal(model.bias, torch.full_like(model.bias, -epoch))


def test_callback_stops_and_restores_best_weights():
    state = make_state(epochs=10)
    callback = EarlyStopping("val_loss", patience=2)
    drive(callback, state, "val_loss", [1.0, 0.5, 0.7, 0.6, 0.4, 0.3])
    assert state.stop and "early stopping" in state.stop_reason
    assert state.epoch == 4
    assert_weights_of_epoch(state.model, 2)
    assert (callback.best_epoch, callback.stopped_epoch, callback.restored) == (2, 4, True)
    assert "did not improve" in callback.reason


def test_callback_restores_best_weights_when_run_ends_without_stopping():
    # keras#12511: restore_best_weights did nothing when patience never ran out
    state = make_state(epochs=5)
    callback = EarlyStopping("val_acc", patience=10)
    drive(callback, state, "val_acc", [0.5, 0.8, 0.7, 0.75, 0.6])
    assert not state.stop
    assert_weights_of_epoch(state.model, 2)
    assert (callback.best_epoch, callback.stopped_epoch, callback.restored) == (2, None, True)
    assert "ran all 5 epochs" in callback.reason


def test_callback_without_restore_keeps_last_weights():
    state = make_state(epochs=3)
    callback = EarlyStopping("val_loss", patience=10, restore_best=False)
    drive(callback, state, "val_loss", [0.5, 0.9, 0.8])
    assert_weights_of_epoch(state.model, 3)
    assert (callback.best_epoch, callback.restored) == (1, False)


def test_callback_nan_in_first_epoch_stops_without_restoring():
    state = make_state(epochs=5)
    callback = EarlyStopping("val_loss", patience=3)
    drive(callback, state, "val_loss", [math.nan, 0.1])
    assert state.stop and state.epoch == 1 and "non-finite" in state.stop_reason
    assert (callback.best_epoch, callback.stopped_epoch, callback.restored) == (None, 1, False)


def test_callback_snapshots_and_restores_the_evaluated_model():
    # With EMA/SWA-style evaluation (state.eval_model set), the metric belongs to eval_model's weights.
    state = make_state(epochs=4)
    state.eval_model = nn.Linear(2, 1)
    callback = EarlyStopping("val_loss", patience=10)
    for epoch, value in enumerate([0.9, 0.2, 0.5, 0.6], start=1):
        state.epoch = epoch
        with torch.no_grad():
            state.eval_model.weight.fill_(10 * epoch)
        state.metrics = {"val_loss": value}
        callback.on_epoch_end(state)
    callback.on_fit_end(state)
    assert torch.equal(state.eval_model.weight, torch.full((1, 2), 20.0))


def test_callback_missing_metric_is_a_config_error():
    state = make_state(epochs=2)
    state.epoch, state.metrics = 1, {"train_loss": 0.3}
    with pytest.raises(ConfigError, match="early_stopping.monitor"):
        EarlyStopping("val_loss").on_epoch_end(state)


def test_callback_state_dict_resumes_with_best_weights():
    state = make_state(epochs=6)
    first = EarlyStopping("val_loss", patience=3)
    for epoch, value in enumerate([1.0, 0.3, 0.5], start=1):
        state.epoch, state.metrics = epoch, {"val_loss": value}
        with torch.no_grad():
            state.model.weight.fill_(epoch)
            state.model.bias.fill_(-epoch)
        first.on_epoch_end(state)
    resumed = EarlyStopping("val_loss", patience=3)
    resumed.load_state_dict(first.state_dict())
    drive_from = [(4, 0.6), (5, 0.7)]
    for epoch, value in drive_from:
        state.epoch, state.metrics = epoch, {"val_loss": value}
        with torch.no_grad():
            state.model.weight.fill_(epoch)
            state.model.bias.fill_(-epoch)
        resumed.on_epoch_end(state)
    assert state.stop and state.epoch == 5
    resumed.on_fit_end(state)
    assert_weights_of_epoch(state.model, 2)
