"""Learning-rate schedules: exact LR sequences against closed forms and torch's own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from tricklab.errors import ConfigError, UnknownNameError
from tricklab.events import FitState
from tricklab.tricks.schedules import SCHEDULES, LRSchedule, build_schedule, lr_sequence

LR = 0.5


def make_state(epochs: int, steps_per_epoch: int, lr: float = LR, momentum: float = 0.0) -> FitState:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return FitState(model, optimizer, epochs, torch.device("cpu"), steps_per_epoch=steps_per_epoch)


def drive(
    callback: LRSchedule, state: FitState, metrics: list[dict[str, float]] | None = None, epochs: int = 0
) -> list[float]:
    """Call the callback as fit() does; return the LR each optimizer step was taken with."""
    lrs = []
    first = state.epoch + 1
    if first == 1:
        callback.on_fit_start(state)
    last = first + epochs - 1 if epochs else state.epochs
    for epoch in range(first, last + 1):
        state.epoch = epoch
        callback.on_epoch_start(state)
        for batch in range(state.steps_per_epoch):
            state.batch = batch
            lrs.append(state.lr)
            state.optimizer.step()
            state.step += 1
            callback.on_step_end(state)
        state.metrics = metrics[epoch - 1] if metrics else {"val_loss": 1.0, "val_acc": 0.5}
        callback.on_epoch_end(state)
    return lrs


def per_epoch(values: list[float], steps_per_epoch: int) -> list[float]:
    return [v for v in values for _ in range(steps_per_epoch)]


def test_constant_keeps_the_learning_rate():
    assert drive(LRSchedule("constant"), make_state(3, 2)) == [LR] * 6


def test_exponential_uses_lr_in_epoch_one_then_decays_by_gamma_per_epoch():
    lrs = drive(LRSchedule("exponential"), make_state(epochs=5, steps_per_epoch=3))
    expected = per_epoch([LR * 0.98**k for k in range(5)], 3)  # lr·γ^(e−1), default γ = 0.98
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_step_cuts_by_gamma_every_step_size_epochs():
    lrs = drive(LRSchedule("step", step_size=2, gamma=0.5), make_state(epochs=5, steps_per_epoch=2))
    assert lrs == pytest.approx(per_epoch([LR * 0.5 ** ((e - 1) // 2) for e in range(1, 6)], 2), rel=1e-12)


def test_step_defaults_to_two_tenfold_cuts_over_the_run():
    lrs = drive(LRSchedule("step"), make_state(epochs=9, steps_per_epoch=1))
    assert lrs == pytest.approx([LR] * 3 + [LR * 0.1] * 3 + [LR * 0.01] * 3, rel=1e-12)


def test_cosine_anneals_per_step_to_min_lr():
    min_lr, total = 0.01, 4 * 5
    lrs = drive(LRSchedule("cosine", min_lr=min_lr), make_state(epochs=4, steps_per_epoch=5))
    expected = [min_lr + (LR - min_lr) * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("warmup_epochs", [0, 1, 2])
def test_warmup_cosine_rises_linearly_then_anneals(warmup_epochs):
    epochs, spe, min_lr = 5, 4, 0.02
    warm, total = warmup_epochs * spe, epochs * spe
    lrs = drive(
        LRSchedule("warmup_cosine", warmup_epochs=warmup_epochs, min_lr=min_lr), make_state(epochs, spe)
    )
    rise = [LR * (k + 1) / warm for k in range(warm)]
    anneal = [
        min_lr + (LR - min_lr) * (1 + math.cos(math.pi * k / (total - warm))) / 2 for k in range(total - warm)
    ]
    assert lrs == pytest.approx(rise + anneal, rel=1e-9)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_onecycle_matches_torch_onecycle(momentum):
    epochs, spe = 3, 7
    state = make_state(epochs, spe, momentum=momentum)
    lrs = drive(LRSchedule("onecycle"), state)
    final_momentum = state.optimizer.param_groups[0]["momentum"]

    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR, momentum=momentum)
    torch_sched = torch.optim.lr_scheduler.OneCycleLR(
        reference, max_lr=LR, total_steps=epochs * spe, cycle_momentum=momentum > 0
    )
    expected = []
    for _ in range(epochs * spe):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        torch_sched.step()
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert max(lrs) == pytest.approx(LR, rel=1e-2)  # peaks at max_lr = the optimizer's lr
    # momentum is cycled for an optimizer that has it, and never switched on for one that has none
    assert final_momentum == pytest.approx(reference.param_groups[0]["momentum"])
    assert (final_momentum == 0.0) == (momentum == 0.0)


def test_plateau_cuts_after_patience_bad_epochs_on_val_loss():
    val_loss = [1.0, 0.8, 0.9, 0.85, 0.81, 0.7, 0.75, 0.72, 0.71]
    # epochs 3, 4, 5 fail to beat 0.8: with patience 2 the third bad epoch cuts the LR, used from epoch 6;
    # epoch 6 improves (0.7), then 7, 8, 9 are bad again and the cut after epoch 9 is not seen.
    lrs = drive(
        LRSchedule("plateau", factor=0.5, patience=2),
        make_state(epochs=9, steps_per_epoch=2),
        metrics=[{"val_loss": v} for v in val_loss],
    )
    assert lrs == pytest.approx(per_epoch([LR] * 5 + [LR * 0.5] * 4, 2), rel=1e-12)


def test_plateau_maximises_an_accuracy_metric():
    val_acc = [0.5, 0.6, 0.6, 0.55, 0.7]
    lrs = drive(
        LRSchedule("plateau", monitor="val_acc", patience=1),
        make_state(epochs=5, steps_per_epoch=1),
        metrics=[{"val_acc": v} for v in val_acc],
    )
    assert lrs == pytest.approx([LR, LR, LR, LR, LR * 0.1], rel=1e-12)


def test_plateau_without_the_monitored_metric_names_the_key():
    callback = LRSchedule("plateau", monitor="val_loss")
    with pytest.raises(ConfigError, match="schedule.monitor.*train_loss"):
        drive(callback, make_state(2, 1), metrics=[{"train_loss": 1.0}] * 2)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_builds_and_gives_finite_positive_lrs(name):
    lrs = lr_sequence(name, 0.1, epochs=4, steps_per_epoch=5, metrics=[1.0, 0.9, 0.95, 0.97])
    assert len(lrs) == 20
    assert all(math.isfinite(lr) and 0.0 < lr <= 0.1 * (1 + 1e-9) for lr in lrs)
    assert SCHEDULES.help(name)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_resuming_from_state_dict_continues_the_same_sequence(name):
    metrics = [{"val_loss": v} for v in [1.0, 0.9, 0.95, 0.97, 0.99, 0.8]]
    full = drive(LRSchedule(name, patience=1), make_state(6, 3), metrics)

    first = make_state(6, 3)
    callback = LRSchedule(name, patience=1)
    head = drive(callback, first, metrics, epochs=2)
    saved, opt_saved = callback.state_dict(), first.optimizer.state_dict()

    second = make_state(6, 3, lr=123.0)  # the optimizer's LR comes back from its state dict
    second.optimizer.load_state_dict(opt_saved)
    second.epoch, second.step = first.epoch, first.step
    resumed = LRSchedule(name, patience=1)
    resumed.load_state_dict(saved)
    resumed.on_fit_start(second)
    assert head + drive(resumed, second, metrics) == pytest.approx(full, rel=1e-12)


def test_lr_sequence_matches_the_documented_example():
    got = lr_sequence("exponential", 1.0, epochs=3, steps_per_epoch=2)
    assert got == pytest.approx([1.0, 1.0, 0.98, 0.98, 0.9604, 0.9604], rel=1e-12)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"gamma": 0.0}, "schedule.gamma"),
        ({"gamma": 1.5}, "schedule.gamma"),
        ({"step_size": 0}, "schedule.step_size"),
        ({"warmup_epochs": -1}, "schedule.warmup_epochs"),
        ({"min_lr": -0.1}, "schedule.min_lr"),
        ({"factor": 1.0}, "schedule.factor"),
        ({"patience": -1}, "schedule.patience"),
    ],
)
def test_bad_options_fail_at_config_time_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        LRSchedule("step", **options)


def test_plateau_needs_a_loss_or_accuracy_monitor():
    with pytest.raises(ConfigError, match="schedule.monitor = 'val_f1'"):
        LRSchedule("plateau", monitor="val_f1")


def test_options_that_depend_on_the_run_are_checked_when_built():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="schedule.warmup_epochs = 3.*< epochs \\(3\\)"):
        build_schedule("warmup_cosine", optimizer, epochs=3, steps_per_epoch=2, warmup_epochs=3)
    with pytest.raises(ConfigError, match="schedule.min_lr = 0.1"):
        build_schedule("cosine", optimizer, epochs=3, steps_per_epoch=2, min_lr=0.1)


def test_unknown_schedule_suggests_the_close_name():
    with pytest.raises(UnknownNameError, match="did you mean 'cosine'"):
        LRSchedule("cosin")


def test_schedules_are_listed_in_order_with_when_they_step():
    def interval(name: str) -> str:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return build_schedule(name, optimizer, epochs=3, steps_per_epoch=2).interval

    assert [(name, interval(name)) for name in SCHEDULES.names()] == [
        ("constant", "epoch"),
        ("exponential", "epoch"),
        ("step", "epoch"),
        ("cosine", "step"),
        ("warmup_cosine", "step"),
        ("onecycle", "step"),
        ("plateau", "epoch"),
    ]
