"""Each trick's config section reaches the training loop: ``run(config)`` on synthetic data does what it says.

The trick modules prove their math on their own (tests/tricks/); these tests prove the wiring: a key set in
the config changes what ``tricklab.runner.run`` trains and reports, in the way the formula predicts.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.assembly import build_model as make_model
from tricklab.assembly import load_data
from tricklab.config import Config, load_config
from tricklab.data import TensorBatches
from tricklab.engine.loop import evaluate
from tricklab.events import Callback, FitState
from tricklab.runner import run
from tricklab.tricks.averaging import evaluate_ensemble

#: 128 training examples in batches of 32 (4 steps per epoch), a 2×32 MLP, Adam at 0.01, constant LR.
BASE = {
    "data.name": "synthetic",
    "data.subset": 128,
    "data.batch_size": 32,
    "model.width": 32,
    "model.depth": 2,
    "optim.lr": 0.01,
    "schedule.name": "constant",
    "train.epochs": 3,
    "train.threads": 1,
    "train.device": "cpu",
}


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))


def config(**changes) -> Config:
    """BASE with ``changes``, written as keyword arguments with ``__`` for the dot: ``optim__lr=0.1``."""
    return load_config(overrides={**BASE, **{k.replace("__", "."): v for k, v in changes.items()}})


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def weights_l1(model: nn.Module) -> float:
    return float(sum(p.detach().abs().sum() for p in model.parameters() if p.ndim >= 2))


class Probe(Callback):
    """Records what the loop did: weights at the start of each fit, after each step and each epoch."""

    order = 10_000  # after every trick

    def __init__(self):
        self.starts: list[dict[str, torch.Tensor]] = []
        self.steps: list[dict[str, torch.Tensor]] = []
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.grad_norms: list[float] = []
        self.raw: list[nn.Module] = []

    def on_fit_start(self, state: FitState) -> None:
        self.starts.append(params(state.model))

    def on_after_backward(self, state: FitState) -> None:  # after clipping: what the optimizer sees
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    def on_step_end(self, state: FitState) -> None:
        self.steps.append(params(state.model))

    def on_epoch_end(self, state: FitState) -> None:
        self.epochs.append(params(state.model))

    def on_fit_end(self, state: FitState) -> None:
        self.raw.append(copy.deepcopy(state.model))


def trained(cfg: Config, out=None) -> tuple:
    probe = Probe()
    result = run(cfg, out, callbacks=[probe], write=out is not None)
    return result, probe


# ------------------------------------------------------------------------------------------------ schedule


def test_exponential_schedule_history_lr_is_lr_times_gamma_to_the_epoch():
    cfg = config(schedule__name="exponential", schedule__gamma=0.98, train__epochs=8)
    result, _ = trained(cfg)
    lrs = [row["lr"] for row in result.history]
    product = [0.01]
    for _ in range(7):
        product.append(product[-1] * 0.98)  # torch multiplies γ in epoch by epoch: bit for bit this
    assert lrs == product
    assert lrs == pytest.approx([0.01 * 0.98 ** (e - 1) for e in range(1, 9)], rel=1e-13, abs=0)


def test_cosine_schedule_anneals_every_step_to_min_lr():
    cfg = config(schedule__name="cosine", schedule__min_lr=1e-4, train__epochs=2)
    seen = []

    class LR(Callback):
        def on_after_backward(self, state):
            seen.append(state.lr)

    run(cfg, write=False, callbacks=[LR()])
    total = 8  # 2 epochs × 4 steps
    expected = [1e-4 + (0.01 - 1e-4) * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]
    assert seen == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------ clipping


def test_norm_clipping_bounds_the_update_gradient_and_is_recorded(tmp_path):
    cfg = config(clip__mode="norm", clip__threshold=0.05, optim__name="sgd", optim__lr=0.1)
    result, probe = trained(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert {"grad_norm", "grad_norm_max", "clip_fraction"} <= set(row)
        assert 0.05 < row["grad_norm"] <= row["grad_norm_max"]
        assert row["clip_fraction"] == 1.0  # every pre-clip norm exceeds θ = 0.05 here
    assert max(probe.grad_norms) <= 0.05 * (1 + 1e-5)
    assert rows == result.history


def test_no_clipping_leaves_the_history_without_clip_columns():
    result, _ = trained(config())
    assert not {"grad_norm", "grad_norm_max", "clip_fraction"} & set(result.history[0])


# ------------------------------------------------------------------------------------------ early stopping


def expected_stop(val_losses: list[float], patience: int, min_delta: float) -> tuple[int, int | None]:
    """(best_epoch, stopped_epoch) by the rule in the docs, on a recorded val_loss sequence."""
    best, best_epoch, bad = math.inf, 0, 0
    for epoch, v in enumerate(val_losses, start=1):
        if v < best - min_delta:
            best, best_epoch, bad = v, epoch, 0
        else:
            bad += 1
            if bad >= patience:
                return best_epoch, epoch
    return best_epoch, None


def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best_weights():
    # min_delta makes the late, small improvements count as none, so the run stops well before epoch 30
    cfg = config(
        train__epochs=30,
        early_stopping__enabled=True,
        early_stopping__patience=2,
        early_stopping__min_delta=0.02,
    )
    result, probe = trained(cfg)
    m = result.metrics
    val = [row["val_loss"] for row in result.history]
    best_epoch, stopped_epoch = expected_stop(val, 2, 0.02)
    assert stopped_epoch is not None and stopped_epoch < 30
    assert (m["best_epoch"], m["stopped_epoch"]) == (best_epoch, stopped_epoch)
    assert m["epochs_run"] == stopped_epoch
    assert len(result.history) == stopped_epoch
    assert m["restored_best"] is True and m["stop_reason"].startswith("early stopping")
    # the final weights are the best epoch's: re-evaluated, they give that epoch's val_loss bit for bit
    splits = load_data(cfg)
    assert evaluate(result.model, splits.val)["loss"] == val[best_epoch - 1]
    assert val[best_epoch - 1] != val[-1]
    assert all(torch.equal(p, probe.epochs[best_epoch - 1][n]) for n, p in params(result.model).items())


def test_best_weights_are_restored_when_early_stopping_never_triggers():
    """keras#12511: the run ends by its epoch count, and still the best epoch's weights are kept."""
    cfg = config(
        train__epochs=12,
        early_stopping__enabled=True,
        early_stopping__patience=50,
        early_stopping__min_delta=0.02,
    )
    result, _ = trained(cfg)
    val = [row["val_loss"] for row in result.history]
    best_epoch, _ = expected_stop(val, 50, 0.02)
    assert result.metrics["stopped_epoch"] is None and result.metrics["epochs_run"] == 12
    assert result.metrics["best_epoch"] == best_epoch < 12 and result.metrics["restored_best"] is True
    assert evaluate(result.model, load_data(cfg).val)["loss"] == val[best_epoch - 1]


# ------------------------------------------------------------------------------------------------ averaging


def test_ema_weights_follow_the_formula_and_are_what_is_evaluated():
    decay = 0.8
    cfg = config(averaging__ema=decay)
    result, probe = trained(cfg)
    raw, ema = probe.raw[0], result.model
    assert ema is not raw
    # avg_k = d·avg_{k−1} + (1 − d)·p_k from avg_0 = p_0, over all 12 steps
    avg = dict(probe.starts[0])
    for step in probe.steps:
        avg = {n: decay * avg[n] + (1 - decay) * step[n] for n in avg}
    for n, p in params(ema).items():
        torch.testing.assert_close(p, avg[n], rtol=1e-5, atol=1e-6)
    # validation and test ran on the average, not on the raw weights
    splits = load_data(cfg)
    assert evaluate(ema, splits.test)["loss"] == result.metrics["test_loss"]
    assert evaluate(raw, splits.test)["loss"] != result.metrics["test_loss"]
    assert evaluate(ema, splits.val)["loss"] == result.history[-1]["val_loss"]


def test_swa_averages_the_epoch_snapshots_and_recomputes_batchnorm():
    cfg = config(
        averaging__swa_start=2, train__epochs=4, model__norm="batch", optim__name="momentum", optim__lr=0.05
    )
    result, probe = trained(cfg)
    swa, raw = result.model, probe.raw[0]
    snapshots = probe.epochs[1:]  # epochs 2, 3, 4
    for n, p in params(swa).items():
        torch.testing.assert_close(p, sum(s[n] for s in snapshots) / 3, rtol=1e-5, atol=1e-6)
    splits = load_data(cfg)
    assert evaluate(swa, splits.test)["loss"] == result.metrics["test_loss"]
    assert evaluate(raw, splits.test)["loss"] != result.metrics["test_loss"]
    # BN statistics recomputed on the training set with the averaged weights: for the first BN layer,
    # the mean over the 4 equal batches of each batch's mean / unbiased variance of the first Linear's output
    linear = next(m for m in swa.modules() if isinstance(m, nn.Linear))
    bn = next(m for m in swa.modules() if isinstance(m, nn.BatchNorm1d))
    raw_bn = next(m for m in raw.modules() if isinstance(m, nn.BatchNorm1d))
    with torch.no_grad():
        h = [linear(x.flatten(1)) for x, _ in TensorBatches(splits.train.x, splits.train.y, 32)]
    mean, var = torch.stack([b.mean(0) for b in h]).mean(0), torch.stack([b.var(0) for b in h]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(bn.running_mean, raw_bn.running_mean)


def test_ensemble_of_three_members_seeded_apart_and_their_averaged_probabilities():
    cfg = config(averaging__ensemble=3, train__epochs=2)
    result, probe = trained(cfg)
    m = result.metrics
    assert m["ensemble"] == 3 and len(m["members"]) == 3 and len(result.model) == 3
    assert sorted({row["member"] for row in result.history}) == [0, 1, 2]
    # member k was initialized by seed train.seed + k
    splits = load_data(cfg)
    for k, start in enumerate(probe.starts):
        fresh = params(make_model(cfg, splits, cfg.train.seed + k)[0])
        assert all(torch.equal(start[n], fresh[n]) for n in fresh)
    assert not torch.equal(probe.starts[0]["head.weight"], probe.starts[1]["head.weight"])
    # the ensemble's test metrics are those of the members' averaged probabilities
    ens = evaluate_ensemble(result.model, TensorBatches(splits.test.x, splits.test.y, 1024))
    assert (m["test_loss"], m["test_acc"]) == (ens["loss"], ens["acc"])
    member_losses = [evaluate(model, splits.test)["loss"] for model in result.model]
    assert member_losses == pytest.approx([mm["test_loss"] for mm in m["members"]], rel=1e-12)
    with torch.no_grad():
        probs = torch.stack([F.softmax(model.eval()(splits.test.x), 1) for model in result.model]).mean(0)
    nll = float(-probs.gather(1, splits.test.y[:, None]).log().mean())
    assert m["test_loss"] == pytest.approx(nll, rel=1e-5)
    assert m["test_loss"] <= sum(member_losses) / 3  # −log of a mean ≤ mean of −log (Jensen)
    assert m["member_test_acc_mean"] == pytest.approx(sum(mm["test_acc"] for mm in m["members"]) / 3)


# ------------------------------------------------------------------------------------------ regularization


def test_l1_and_weight_decay_change_the_result_as_each_should():
    runs = {
        "none": config(train__epochs=5),
        "l1": config(train__epochs=5, optim__l1=1e-3),
        "l2": config(train__epochs=5, optim__weight_decay=0.5),
        "decoupled": config(train__epochs=5, optim__weight_decay=0.5, optim__decoupled=True),
    }
    models = {name: trained(cfg)[0].model for name, cfg in runs.items()}
    base = params(models["none"])
    for name in ("l1", "l2", "decoupled"):
        assert any(not torch.equal(p, base[n]) for n, p in params(models[name]).items()), name
        assert weights_l1(models[name]) < 0.95 * weights_l1(models["none"]), name
    assert not torch.equal(params(models["l2"])["head.weight"], params(models["decoupled"])["head.weight"])


# -------------------------------------------------------------------------------------------------- init


def test_lsuv_through_the_config_gives_unit_output_variance_per_layer():
    cfg = config(init__scheme="lsuv", data__subset=None)
    splits = load_data(cfg)
    batch = splits.train.x[:256]

    def variances(model):
        out = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: out.append(float(o.var())))
            for m in model.modules()
            if isinstance(m, nn.Linear)
        ]
        with torch.no_grad():
            model(batch)
        for h in hooks:
            h.remove()
        return out

    lsuv_model, _ = make_model(cfg, splits, cfg.train.seed)
    he_model, _ = make_model(config(data__subset=None), splits, cfg.train.seed)
    assert variances(lsuv_model) == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    assert variances(he_model) != pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    result, _ = trained(cfg)
    assert math.isfinite(result.metrics["test_loss"]) and result.metrics["test_acc"] > 0.5
