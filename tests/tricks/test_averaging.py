import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.errors import ConfigError
from tricklab.events import FitState
from tricklab.tricks.averaging import (
    EMA,
    SWA,
    average_probabilities,
    ema_decay,
    ema_update_,
    ensemble_predict,
    evaluate_ensemble,
)


def make_state(model: nn.Module, epochs: int = 5, lr: float = 0.1) -> FitState:
    return FitState(model, torch.optim.SGD(model.parameters(), lr=lr), epochs, torch.device("cpu"))


def set_params(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(v)


def random_params(model: nn.Module) -> list[torch.Tensor]:
    return [torch.randn_like(p) for p in model.parameters()]


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


# ------------------------------------------------------------------------------------------ EMA


def ema_closed_form(p0: list[torch.Tensor], steps: list[list[torch.Tensor]], d: float) -> list[torch.Tensor]:
    k = len(steps)
    return [
        sum((1 - d) * d ** (k - i) * steps[i - 1][j] for i in range(1, k + 1)) + d**k * p0[j]
        for j in range(len(p0))
    ]


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_ema_update_matches_closed_form(decay):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    avg = copy.deepcopy(model)
    p0 = [p.detach().clone() for p in model.parameters()]
    steps = [random_params(model) for _ in range(6)]
    for values in steps:
        set_params(model, values)
        ema_update_(avg, model, decay)
    for got, want in zip(avg.parameters(), ema_closed_form(p0, steps, decay), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_ema_update_copies_buffers():
    torch.manual_seed(0)
    model, avg = bn_net(), bn_net()
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(7.0)
    model[1].num_batches_tracked.fill_(11)
    ema_update_(avg, model, 0.9)
    assert torch.equal(avg[1].running_mean, model[1].running_mean)  # copied, not averaged with zeros
    assert torch.equal(avg[1].running_var, model[1].running_var)
    assert int(avg[1].num_batches_tracked) == 11


def test_ema_callback_evaluates_the_average():
    torch.manual_seed(1)
    state = make_state(nn.Linear(3, 2))
    callback = EMA(decay=0.8)
    p0 = [p.detach().clone() for p in state.model.parameters()]
    callback.on_fit_start(state)
    assert state.eval_model is callback.average and state.eval_model is not state.model
    steps = [random_params(state.model) for _ in range(5)]
    for values in steps:
        set_params(state.model, values)  # what optimizer.step() would have done
        callback.on_step_end(state)
    for got, want in zip(state.eval_model.parameters(), ema_closed_form(p0, steps, 0.8), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for got, want in zip(state.model.parameters(), steps[-1], strict=True):
        assert torch.equal(got, want)  # training weights untouched
    assert not any(p.requires_grad for p in state.eval_model.parameters())


def test_ema_state_dict_resumes_the_average():
    torch.manual_seed(2)
    state = make_state(nn.Linear(3, 2))
    first = EMA(0.9)
    first.on_fit_start(state)
    set_params(state.model, random_params(state.model))
    first.on_step_end(state)
    saved = copy.deepcopy(first.state_dict())
    resumed = EMA(0.9)
    resumed.load_state_dict(saved)  # before on_fit_start, as a resuming trainer would
    state2 = make_state(copy.deepcopy(state.model))
    resumed.on_fit_start(state2)
    for a, b in zip(resumed.average.parameters(), first.average.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ema_warmup_uses_the_smaller_decay_and_resumes_its_count():
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.1, 1) == 0.1  # the nominal decay once it is the smaller one
    assert ema_decay(0.999, 10**6) == 0.999
    torch.manual_seed(3)
    state = make_state(nn.Linear(3, 2))
    cb = EMA(0.999, warmup=True)
    p0 = [p.detach().clone() for p in state.model.parameters()]
    cb.on_fit_start(state)
    steps = [random_params(state.model) for _ in range(3)]
    want = p0
    for k, values in enumerate(steps, start=1):
        set_params(state.model, values)
        cb.on_step_end(state)
        d = (1 + k) / (10 + k)
        want = [d * w + (1 - d) * v for w, v in zip(want, values, strict=True)]
    for got, w in zip(cb.average.parameters(), want, strict=True):
        torch.testing.assert_close(got, w, atol=1e-6, rtol=0)
    resumed = EMA(0.999, warmup=True)
    resumed.load_state_dict(copy.deepcopy(cb.state_dict()))
    assert resumed.updates == 3


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, math.nan, True, "0.9"])
def test_ema_bad_decay_names_the_key(decay):
    with pytest.raises(ConfigError, match="averaging.ema"):
        EMA(decay)
    with pytest.raises(ConfigError, match="averaging.ema"):
        ema_update_(nn.Linear(1, 1), nn.Linear(1, 1), decay)


# ------------------------------------------------------------------------------------------ SWA


def run_swa(callback: SWA, state: FitState, epochs: int) -> list[list[torch.Tensor]]:
    """Script epochs 1..epochs, each ending with fresh random weights; return every epoch's weights."""
    callback.on_fit_start(state)
    seen = []
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        callback.on_epoch_start(state)
        values = random_params(state.model)
        set_params(state.model, values)
        seen.append(values)
        callback.on_epoch_end(state)
    callback.on_fit_end(state)
    return seen


def test_swa_is_the_mean_of_its_snapshots_and_recomputes_bn():
    torch.manual_seed(0)
    state = make_state(bn_net(), epochs=5)
    batches = [(torch.randn(8, 3) * 2 + 1, torch.randint(0, 2, (8,))) for _ in range(3)]
    callback = SWA(swa_start=3, bn_batches=batches)
    seen = run_swa(callback, state, epochs=5)

    swa = state.eval_model
    assert swa is callback.averaged.module and swa is not state.model
    assert callback.n_snapshots == 3 and "3 epoch snapshots" in callback.note
    for j, p in enumerate(swa.parameters()):
        mean = torch.stack([seen[e][j] for e in (2, 3, 4)]).mean(dim=0)
        torch.testing.assert_close(p, mean, atol=1e-6, rtol=0)

    # BN statistics: update_bn's cumulative average of per-batch mean and unbiased variance, computed by hand
    with torch.no_grad():
        h = [swa[0](x) for x, _ in batches]
    want_mean = torch.stack([hb.mean(0) for hb in h]).mean(0)
    want_var = torch.stack([hb.var(0, unbiased=True) for hb in h]).mean(0)
    torch.testing.assert_close(swa[1].running_mean, want_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swa[1].running_var, want_var, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(swa[1].running_mean, state.model[1].running_mean)
    assert swa[1].momentum == state.model[1].momentum == 0.1  # restored after update_bn


def test_swa_without_batchnorm_needs_no_batches():
    torch.manual_seed(0)
    state = make_state(nn.Linear(3, 2), epochs=4)
    callback = SWA(swa_start=4)
    seen = run_swa(callback, state, epochs=4)
    for p, want in zip(state.eval_model.parameters(), seen[-1], strict=True):
        assert torch.equal(p, want)  # one snapshot: the average is that snapshot
    assert "recomputed" not in callback.note


def test_swa_run_ending_before_swa_start_changes_nothing():
    state = make_state(bn_net(), epochs=2)
    callback = SWA(swa_start=3, bn_batches=[])
    run_swa(callback, state, epochs=2)
    assert state.eval_model is None and callback.averaged is None
    assert "before swa_start=3" in callback.note and "no SWA snapshot" in callback.note


def test_swa_with_batchnorm_and_no_batches_is_a_config_error():
    with pytest.raises(ConfigError, match="averaging.bn_batches"):
        SWA(swa_start=1).on_fit_start(make_state(bn_net()))


@pytest.mark.filterwarnings("error")  # no "lr_scheduler.step() before optimizer.step()" warning
@pytest.mark.parametrize(
    "anneal, want", [(1, [0.1, 0.1, 0.01, 0.01, 0.01]), (2, [0.1, 0.1, 0.055, 0.01, 0.01])]
)
def test_swa_lr_anneals_from_swa_start(anneal, want):
    state = make_state(nn.Linear(3, 2), epochs=5, lr=0.1)
    callback = SWA(swa_start=3, swa_lr=0.01, swa_anneal_epochs=anneal)
    callback.on_fit_start(state)
    lrs = []
    for epoch in range(1, 6):
        state.epoch = epoch
        callback.on_epoch_start(state)
        lrs.append(state.lr)
        state.optimizer.step()  # the epoch's updates
        callback.on_epoch_end(state)
    assert lrs == pytest.approx(want, abs=1e-12)  # cosine: halfway is (0.1 + 0.01) / 2


def test_swa_state_dict_resumes_the_average():
    torch.manual_seed(3)
    state = make_state(nn.Linear(3, 2), epochs=4)
    first = SWA(swa_start=1)
    first.on_fit_start(state)
    snaps = []
    for epoch in (1, 2):
        state.epoch = epoch
        snaps.append(random_params(state.model))
        set_params(state.model, snaps[-1])
        first.on_epoch_end(state)
    resumed = SWA(swa_start=1)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    resumed.on_fit_start(state)
    state.epoch = 3
    snaps.append(random_params(state.model))
    set_params(state.model, snaps[-1])
    resumed.on_epoch_end(state)
    resumed.on_fit_end(state)
    assert resumed.n_snapshots == 3
    for j, p in enumerate(state.eval_model.parameters()):
        torch.testing.assert_close(p, torch.stack([s[j] for s in snaps]).mean(0), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"swa_start": 0}, "averaging.swa_start"),
        ({"swa_start": 2.0}, "averaging.swa_start"),
        ({"swa_start": 2, "swa_lr": 0.0}, "averaging.swa_lr"),
        ({"swa_start": 2, "swa_lr": math.inf}, "averaging.swa_lr"),
        ({"swa_start": 2, "swa_lr": 0.1, "swa_anneal_epochs": 0}, "averaging.swa_anneal_epochs"),
    ],
)
def test_swa_bad_arguments_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        SWA(**kwargs)
    assert info.value.key == key


# ------------------------------------------------------------------------------------ ensembles


def test_average_probabilities_by_hand():
    z1 = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    z2 = torch.tensor([[math.log(3.0), 0.0]])  # softmax = [3/4, 1/4]
    z3 = torch.tensor([[0.0, 0.0]])  # softmax = [1/2, 1/2]
    torch.testing.assert_close(average_probabilities([z1, z2]), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(average_probabilities([z1, z3]), torch.tensor([[0.375, 0.625]]))
    # probabilities are averaged, not logits: for z1 and a sharper 4*z1 (softmax [1/82, 81/82]) the two differ
    got = average_probabilities([z1, 4 * z1])
    torch.testing.assert_close(got, torch.tensor([[(1 / 4 + 1 / 82) / 2, (3 / 4 + 81 / 82) / 2]]))
    assert not torch.allclose(got, torch.softmax((z1 + 4 * z1) / 2, dim=1), atol=1e-3)


def test_average_probabilities_rejects_empty_and_mismatched():
    with pytest.raises(ConfigError, match="averaging.ensemble"):
        average_probabilities([])
    with pytest.raises(ConfigError, match="averaging.ensemble"):
        average_probabilities([torch.zeros(2, 3), torch.zeros(2, 4)])


def test_ensemble_of_identical_models_equals_one_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    x = torch.randn(5, 4)
    probs = ensemble_predict([model, copy.deepcopy(model), copy.deepcopy(model)], x)
    model.eval()
    with torch.no_grad():
        want = torch.softmax(model(x), dim=1)
    torch.testing.assert_close(probs, want)  # eval mode: dropout off, so copies agree exactly
    assert not probs.requires_grad


def test_ensemble_predict_restores_training_mode():
    model = nn.Linear(2, 2)
    model.train()
    ensemble_predict([model], torch.zeros(1, 2))
    assert model.training


def test_evaluate_ensemble_nll_of_averaged_probabilities():
    torch.manual_seed(0)
    models = [nn.Linear(4, 3) for _ in range(3)]
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))), (torch.randn(2, 4), torch.randint(0, 3, (2,)))]
    got = evaluate_ensemble(models, batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in models]).mean(0)
        member_nll = torch.stack([F.cross_entropy(m(x), y) for m in models]).mean()
    want_nll = F.nll_loss(probs.log(), y)  # per sample over all 7, not a mean of batch means
    assert got["loss"] == pytest.approx(float(want_nll), rel=1e-6)
    assert got["acc"] == pytest.approx(float((probs.argmax(1) == y).float().mean()))
    assert got["loss"] <= float(member_nll) + 1e-6  # Jensen: log of the mean >= mean of the logs


def test_evaluate_ensemble_one_model_matches_cross_entropy():
    torch.manual_seed(1)
    model = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    got = evaluate_ensemble([model], [(x, y)])
    with torch.no_grad():
        logits = model(x)
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert got["acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
