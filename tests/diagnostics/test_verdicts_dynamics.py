"""The training-dynamics verdicts (oscillating loss, slow convergence, loss not decreasing, overfitting) fire just
past their thresholds and not just before, stay quiet on healthy noisy runs and short ones, and name a NaN's step
and first layer."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklab
from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.in_pytorch import in_pytorch
from tricklab.diagnostics.probes import ProbeCallback
from tricklab.diagnostics.records import (
    LOSS,
    MODEL,
    PRIOR_LOSS,
    UPDATE_RATIO,
    WEIGHT,
    WEIGHT_GRAD_NORM,
    Findings,
    LayerInfo,
    NonFinite,
    Records,
)
from tricklab.diagnostics.verdicts import (
    DYNAMICS_MIN_STEPS,
    FLAT_MAX_DROP,
    LR_LOSS_RISE,
    LR_TOO_HIGH,
    NONFINITE,
    NOT_DECREASING,
    OSC_AMPLITUDE,
    OSC_MAX_DROP,
    OSC_REGAIN,
    OSCILLATING,
    OVERFIT_MIN_EVALS,
    OVERFIT_RISE,
    OVERFITTING,
    PRIOR_MARGIN,
    SLOW_CONVERGENCE,
    SLOW_MAX_DROP,
    UPDATE_RATIO_MIN,
    WEIGHT_DECAY,
    merge_prescriptions,
)
from tricklab.engine.loop import fit
from tricklab.metrics import TRAIN_LOSS, VAL_LOSS

DYNAMICS = {OSCILLATING, SLOW_CONVERGENCE, NOT_DECREASING, OVERFITTING}
LAYERS = [LayerInfo("a", WEIGHT, 0), LayerInfo("act", "relu", 1), LayerInfo("b", WEIGHT, 2)]
L0 = math.log(10)  # the untrained loss of 10 classes


def findings(
    loss=(), ratio: float | None = None, val=(), train=(), every_epoch: int = 10, prior: float | None = None
) -> Findings:
    """Findings with a batch loss per step, one update ratio for both layers (every 10 steps), per-epoch
    validation/training losses at the last step of each ``every_epoch``-step epoch, and the label-prior loss."""
    r = Records()
    if prior is not None:
        r.add(PRIOR_LOSS, MODEL, max(len(loss) - 1, 0), prior)
    for step, v in enumerate(loss):
        r.add(LOSS, MODEL, step, v)
    if ratio is not None:
        for step in range(0, max(len(loss), 1), 10):
            r.add(UPDATE_RATIO, "a", step, ratio)
            r.add(UPDATE_RATIO, "b", step, ratio / 2)
    for metric, series in ((VAL_LOSS, val), (TRAIN_LOSS, train)):
        for epoch, v in enumerate(series):
            r.add(metric, MODEL, (epoch + 1) * every_epoch - 1, v)
    return Findings(r, LAYERS, every=10, steps=max(len(loss), len(val) * every_epoch))


def names(f: Findings, settings=None) -> set[str]:
    return {v.name for v in diagnose(f, settings)} & DYNAMICS


def verdict(f: Findings, name: str, settings=None):
    (v,) = [v for v in diagnose(f, settings) if v.name == name]
    return v


def plateau(first: float, last: float, n: int = 100) -> list[float]:
    """First tenth at ``first``, last tenth at ``last``, a straight line between: the measured drop is exact."""
    w = n // 10
    return [first] * w + [first + (last - first) * i / (n - 2 * w - 1) for i in range(n - 2 * w)] + [last] * w


def bouncing(amplitude: float, center: float = L0, n: int = 100) -> list[float]:
    """A calm first half at ``center``, then ±amplitude/2 about it every step: |ΔL| = amplitude."""
    return [center] * (n // 2) + [center + (amplitude / 2 if i % 2 else -amplitude / 2) for i in range(n - n // 2)]


def healthy(n: int, noise: float, seed: int) -> list[float]:
    """A decreasing loss with multiplicative minibatch noise (lognormal, σ = ``noise``)."""
    rng = random.Random(seed)
    return [(L0 * math.exp(-t / (n / 5)) + 0.05) * math.exp(rng.gauss(0, noise)) for t in range(n)]


# --- oscillating loss -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor, sick", [(1.1, True), (0.9, False)])
def test_oscillating_fires_above_its_amplitude(factor, sick):
    f = findings(bouncing(OSC_AMPLITUDE * factor * L0), ratio=1e-3)
    assert (OSCILLATING in names(f)) is sick
    if sick:
        v = verdict(f, OSCILLATING, {"optim.lr": 0.5})
        assert v.prescription == {"optim.lr": 0.05} and v.figures["sign_flips"] == 1.0


@pytest.mark.parametrize("drop, sick", [(OSC_MAX_DROP * 0.9, True), (OSC_MAX_DROP * 1.1, False)])
def test_a_bouncing_loss_that_has_halved_is_not_oscillating(drop, sick):
    """A net near convergence has a batch loss noisy relative to its level; only a loss still high counts."""
    center = L0 * (1 - drop)
    loss = [L0] * 10 + [center] * 40 + bouncing(OSC_AMPLITUDE * 1.5 * L0, center, 100)[50:]
    assert (OSCILLATING in names(findings(loss, ratio=1e-3))) is sick


def zigzag(regain: float, n: int = 200) -> list[float]:
    """L0 for 20 steps, down to 0.6 L0 and flat, up by ``regain``·L0 and flat, back down to 0.6 L0: one rising leg
    of ``regain``·L0 (the falling legs are longer), the loss not halved."""
    low, high = 0.6 * L0, (0.6 + regain) * L0

    def ramp(a: float, b: float, k: int) -> list[float]:
        return [a + (b - a) * (i + 1) / k for i in range(k)]

    out = [L0] * 20 + ramp(L0, low, 40) + [low] * 40 + ramp(low, high, 20) + [high] * 30 + ramp(high, low, 20)
    return out + [low] * (n - len(out))


@pytest.mark.parametrize("factor, sick", [(1.1, True), (0.9, False)])
def test_oscillating_fires_when_the_smoothed_loss_goes_back_up_and_down_by_its_regain(factor, sick):
    """A 10-step median that climbs back and falls again, beyond noise: the loss is not descending."""
    f = findings(zigzag(OSC_REGAIN * factor), ratio=1e-3)
    assert (OSCILLATING in names(f)) is sick
    if sick:
        assert verdict(f, OSCILLATING).figures["loss_regain"] == pytest.approx(OSC_REGAIN * factor, rel=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_noise_alone_does_not_make_a_zigzag(seed):
    """Batch-to-batch noise (lognormal σ 0.3) on a flat or a falling loss turns no leg of the 10-step medians."""
    rng = random.Random(seed)
    flat = [L0 * math.exp(rng.gauss(0, 0.3)) for _ in range(200)]
    assert OSCILLATING not in names(findings(flat, ratio=1e-3))
    assert names(findings(healthy(200, 0.3, seed), ratio=1e-3)) == set()


# --- slow convergence / LR too low ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drop, ratio, sick",
    [
        (SLOW_MAX_DROP * 0.9, UPDATE_RATIO_MIN * 0.5, True),
        (SLOW_MAX_DROP * 1.1, UPDATE_RATIO_MIN * 0.5, False),  # the loss is getting somewhere
        (SLOW_MAX_DROP * 0.9, UPDATE_RATIO_MIN * 1.1, False),  # the steps are not tiny
    ],
)
def test_slow_convergence_needs_both_a_small_drop_and_tiny_updates(drop, ratio, sick):
    f = findings(plateau(L0, L0 * (1 - drop)), ratio=ratio)
    assert (SLOW_CONVERGENCE in names(f)) is sick


def test_slow_convergence_raises_the_lr_to_bring_the_fastest_layer_near_1e_3():
    v = verdict(findings(plateau(L0, L0 * 0.95), ratio=5e-6), SLOW_CONVERGENCE, {"optim.lr": 1e-5})
    assert v.layers == ("a",) and v.prescription == {"optim.lr": 0.01}  # 5e-6 → 1e-3 is 200×: a power of 10, 1000×
    said = in_pytorch(v.prescription, settings={"optim.lr": 1e-5})
    assert "raise the learning rate from 1e-05 to 0.01" in said["optim.lr"]


def test_slow_convergence_from_a_starved_gradient_leaves_the_lr_to_the_signal_fix():
    """Vanishing gradients make the steps tiny too; raising the LR with the init fix overshoots once the gradient
    gets through, so slow convergence then prescribes nothing and the signal verdict's fix goes alone."""
    f = findings(plateau(L0, L0 * 0.95), ratio=5e-6)
    for step in range(0, 100, 10):
        f.records.add(WEIGHT_GRAD_NORM, "a", step, 1e-4)
        f.records.add(WEIGHT_GRAD_NORM, "b", step, 1.0)
    settings = {"optim.lr": 1e-3, "init.scheme": "default", "model.norm": "none"}
    v = verdict(f, SLOW_CONVERGENCE, settings)
    assert v.prescription == {} and "vanishing_gradients" in v.advice
    assert merge_prescriptions(diagnose(f, settings)) == {"init.scheme": "he_normal", "model.norm": "batch"}


def test_slow_convergence_raises_the_lr_as_far_as_the_ratio_says_beyond_a_thousandfold():
    """SGD lr 1e-7 on a tanh net moves its weights by ~2e-9 per step: 1e-3 is 10⁶× away (the step is linear in lr)."""
    v = verdict(findings(plateau(L0, L0), ratio=2e-9), SLOW_CONVERGENCE, {"optim.lr": 1e-7})
    assert v.prescription == {"optim.lr": 0.1}


def test_without_update_ratios_slow_convergence_cannot_be_told():
    assert SLOW_CONVERGENCE not in names(findings(plateau(L0, L0 * 0.95)))


# --- loss not decreasing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop, sick", [(FLAT_MAX_DROP * 0.5, True), (FLAT_MAX_DROP * 2, False), (-0.2, True)])
def test_not_decreasing_fires_below_its_drop(drop, sick):
    f = findings(plateau(L0, L0 * (1 - drop)), ratio=1e-3)
    assert (NOT_DECREASING in names(f)) is sick


@pytest.mark.parametrize(
    "end, sick",
    [
        (1 - PRIOR_MARGIN * 0.9, True),
        (1 - PRIOR_MARGIN * 1.1, False),  # below chance: learned something
        (1 + PRIOR_MARGIN * 0.9, True),
        (1 + PRIOR_MARGIN * 1.1, False),  # still above chance and falling: on its way
    ],
)
def test_with_class_labels_not_decreasing_means_ending_at_the_label_prior(end, sick):
    """From above chance down to chance (random labels: ln C) is a 20% drop, but nothing learned."""
    prior = L0
    f = findings(plateau(1.3 * prior, end * prior), ratio=1e-3, prior=prior)
    assert (NOT_DECREASING in names(f)) is sick
    if sick:
        v = verdict(f, NOT_DECREASING, {"init.scheme": "default", "model.norm": "none", "optim.lr": 0.1})
        assert v.prescription == {} and "labels" in v.advice  # it fell to the prior: the data, not the training
        assert v.figures["label_prior_loss"] == prior


def test_not_decreasing_at_the_prior_prescribes_the_signal_when_flat_and_the_lr_when_the_steps_are_huge():
    settings = {"init.scheme": "default", "model.norm": "none", "optim.lr": 0.1}
    flat = findings(plateau(L0, L0), ratio=1e-3, prior=L0)
    assert verdict(flat, NOT_DECREASING, settings).prescription == {"init.scheme": "he_normal", "model.norm": "batch"}
    wild = findings(plateau(1.3 * L0, L0), ratio=0.1, prior=L0)
    assert verdict(wild, NOT_DECREASING, settings).prescription == {"optim.lr": 0.01}


@pytest.mark.parametrize("factor, sick", [(1.1, True), (0.9, False)])
def test_lr_too_high_when_an_early_step_climbs_far_above_the_untrained_loss(factor, sick):
    """Adam at a far too high LR: the update ratios look moderate after the weights blew up, the loss shows it."""
    loss = [L0, L0 * LR_LOSS_RISE * factor, 2 * L0] + plateau(L0, 0.5 * L0, 97)
    found = {v.name: v for v in diagnose(findings(loss, ratio=1e-3), {"optim.lr": 0.1})}
    assert (LR_TOO_HIGH in found) is sick
    if sick:
        assert found[LR_TOO_HIGH].prescription == {"optim.lr": 0.01}
        assert found[LR_TOO_HIGH].figures["early_loss_rise"] == pytest.approx(LR_LOSS_RISE * factor)


def test_a_loss_climbing_in_big_steps_is_not_oscillating_but_not_decreasing():
    climb = [L0] * 50 + [L0 * (1 + 0.5 * k) for k in range(50)]  # |ΔL| = 0.5 L0, never changing direction
    assert names(findings(climb, ratio=1e-3)) == {NOT_DECREASING}


def test_not_decreasing_is_told_apart_from_slow_convergence_and_oscillation():
    flat = plateau(L0, L0 * (1 - FLAT_MAX_DROP / 2))
    assert names(findings(flat, ratio=UPDATE_RATIO_MIN / 10)) == {SLOW_CONVERGENCE}  # tiny steps: the LR
    assert names(findings(bouncing(OSC_AMPLITUDE * 2 * L0), ratio=1e-3)) == {OSCILLATING}
    v = verdict(findings(flat, ratio=1e-3), NOT_DECREASING, {"init.scheme": "he_normal", "model.norm": "none"})
    assert v.prescription == {"model.norm": "batch"}
    v = verdict(findings(flat, ratio=1e-3), NOT_DECREASING, {"init.scheme": "he_normal", "model.norm": "batch",
                                                             "model.residual": True, "optim.lr": 0.1})  # fmt: skip
    assert v.prescription == {"optim.lr": 0.01}


# --- overfitting ------------------------------------------------------------------------------------------------------

TRAIN = [1.0, 0.7, 0.5, 0.4, 0.3, 0.2]


@pytest.mark.parametrize("factor, sick", [(1.02, True), (0.98, False)])
def test_overfitting_fires_above_its_rise(factor, sick):
    best = 0.7
    val = [1.0, 0.8, best, 0.72, 0.75, best * (1 + OVERFIT_RISE * factor)]
    assert (OVERFITTING in names(findings(val=val, train=TRAIN))) is sick


def test_overfitting_needs_patience_a_falling_train_loss_and_enough_evaluations():
    rising = [1.0, 0.8, 0.75, 0.7, 0.75, 0.9]  # the best is only 2 evaluations old
    assert OVERFITTING not in names(findings(val=rising, train=TRAIN))
    val = [1.0, 0.8, 0.7, 0.72, 0.75, 0.9]
    assert OVERFITTING not in names(findings(val=val, train=[1.0, 0.7, 0.5, 0.5, 0.49, 0.49]))  # train flat
    assert OVERFITTING not in names(findings(val=val[: OVERFIT_MIN_EVALS - 1], train=TRAIN))
    dip = [1.0, 0.8, 0.7, 0.72, 0.7, 0.9]  # back to the best in between: not a steady rise
    assert OVERFITTING not in names(findings(val=dip, train=TRAIN))
    v = verdict(findings(val=val, train=TRAIN), OVERFITTING)
    assert v.prescription == {"early_stopping.enabled": True, "optim.weight_decay": WEIGHT_DECAY}
    assert v.figures["best_step"] == 29 and v.figures["evaluations_since_best"] == 3
    v = verdict(findings(val=val, train=TRAIN), OVERFITTING, {"early_stopping.enabled": True,
                                                              "optim.weight_decay": 1e-4})  # fmt: skip
    assert v.prescription == {}
    said = in_pytorch({"early_stopping.enabled": True, "optim.weight_decay": WEIGHT_DECAY})
    assert "load_state_dict(best_state)" in said["early_stopping.enabled"]
    assert "weight_decay=0.0005" in said["optim.weight_decay"]


def test_overfitting_reads_the_batch_loss_when_no_epoch_train_loss_was_recorded():
    """A loop of your own observes the batch loss each step and the validation loss each epoch."""
    batch = [v for level in TRAIN for v in [level] * 10]
    val = [1.0, 0.8, 0.7, 0.72, 0.75, 0.9]
    assert OVERFITTING in names(findings(loss=batch, val=val))


# --- healthy and short runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", [0.1, 0.3])
@pytest.mark.parametrize("n", [300, 2000])  # in a long run the first tenth has already fallen far
def test_a_healthy_noisy_decreasing_loss_fires_none(seed, noise, n):
    val = [1.0, 0.8, 0.7, 0.65, 0.63, 0.64, 0.62]  # flattening, with epoch-to-epoch wiggle
    f = findings(healthy(n, noise, seed), ratio=1e-3, val=val, every_epoch=n // 7)
    assert names(f) == set()


def test_a_short_run_fires_none():
    n = DYNAMICS_MIN_STEPS - 1
    assert names(findings([L0] * n, ratio=1e-6)) == set()  # flat and tiny steps, but too little evidence
    assert names(findings(bouncing(L0, n=n), ratio=1e-3)) == set()
    assert names(findings(val=[0.5, 0.4, 0.9, 1.2], train=[1.0, 0.5, 0.2, 0.1])) == set()


# --- NaN / inf -------------------------------------------------------------------------------------------------------


def test_a_nonfinite_value_names_its_step_and_first_layer_and_an_input_one_prescribes_no_training_fix():
    good = {"optim.lr": 0.1, "init.scheme": "he_normal", "model.norm": "batch"}
    f = findings()
    f.first_nonfinite = NonFinite(7, "b", "forward", "output of b is nan or inf")
    v = verdict(f, NONFINITE, good)
    assert "step 7" in v.summary and "first layer: b" in v.summary and v.layers == ("b",)
    assert v.prescription == {"clip.mode": "norm", "clip.threshold": 1.0, "optim.lr": 0.01}
    f.first_nonfinite = NonFinite(3, None, "input", "the model's input is nan or inf")
    v = verdict(f, NONFINITE, good)
    assert "step 3, input" in v.summary and v.prescription == {} and "input batch" in v.advice


def test_every_prescription_of_the_dynamics_verdicts_has_a_pytorch_sentence():
    flat = plateau(L0, L0 * 0.999)
    sick = [
        findings(bouncing(L0), ratio=1e-3),
        findings(flat, ratio=1e-6),
        findings(flat, ratio=1e-3),
        findings(val=[1.0, 0.8, 0.7, 0.72, 0.75, 0.9], train=TRAIN),
    ]
    keys = set()
    for norm in ("none", "batch"):
        settings = {"optim.lr": 0.01, "init.scheme": "default", "model.norm": norm, "model.residual": False}
        for f in sick:
            for v in diagnose(f, settings):
                if v.name in DYNAMICS:
                    said = in_pytorch(v.prescription, model=mlp(), settings=settings)
                    assert all(sentence.count("`") >= 2 for sentence in said.values()), said
                    keys |= set(v.prescription)
    assert keys == {"optim.lr", "init.scheme", "model.norm", "early_stopping.enabled", "optim.weight_decay"}


# --- real (tiny) trainings -------------------------------------------------------------------------------------------


def blobs(n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return x, x[:, :4].argmax(1)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def loop(model, opt, data, steps, doctor, batch=32):
    x, y = data
    for step in range(steps):
        i = (step * batch) % len(x)
        loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        doctor.observe(loss=loss.detach())


def test_a_real_loop_with_a_tiny_lr_converges_slowly_and_a_good_one_is_healthy():
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=1e-5)
    with tricklab.Doctor(net, opt) as doctor:
        loop(net, opt, blobs(), 80, doctor)
    assert {v.name for v in doctor.verdicts()} & DYNAMICS == {SLOW_CONVERGENCE}
    assert doctor.overrides()["optim.lr"] > 1e-5
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with tricklab.Doctor(net, opt) as doctor:
        loop(net, opt, blobs(), 80, doctor)
    assert {v.name for v in doctor.verdicts()} & DYNAMICS == set()


def test_a_real_loop_with_an_lr_past_the_stable_limit_oscillates():
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    with tricklab.Doctor(net, opt) as doctor:
        loop(net, opt, blobs(), 150, doctor)
    (v,) = [v for v in doctor.verdicts() if v.name in DYNAMICS]
    assert v.name == OSCILLATING and v.prescription == {"optim.lr": 0.05}


def test_fit_records_the_epoch_losses_and_a_memorizing_net_is_overfitting():
    torch.manual_seed(0)
    x, y = blobs(32)
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(1))  # labels to memorize
    val = blobs(256, seed=2)
    net = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4))
    cb = ProbeCallback(every=10)
    fit(net, (x, y), val, epochs=60, optimizer=torch.optim.Adam(net.parameters(), 1e-2), callbacks=[cb],
        batch_size=32)  # fmt: skip
    f = cb.findings()
    steps, vals = f.records.series(VAL_LOSS, MODEL)
    assert steps[:2] == [0, 1] and len(vals) == 60 and len(f.records.series(TRAIN_LOSS, MODEL)[1]) == 60
    assert OVERFITTING in names(f)


def test_a_loop_that_already_decays_its_weights_is_not_told_to():
    import torch

    from tricklab.diagnostics.doctor import model_settings

    net = torch.nn.Linear(3, 2)
    assert model_settings(net, torch.optim.SGD(net.parameters(), lr=0.1))["optim.weight_decay"] == 0.0
    decayed = model_settings(net, torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05))
    assert decayed["optim.weight_decay"] == 0.05
    f = findings(val=[1.0, 0.8, 0.7, 0.72, 0.75, 0.9], train=TRAIN)
    assert "optim.weight_decay" in verdict(f, OVERFITTING, {"optim.weight_decay": 0.0}).prescription
    assert "optim.weight_decay" not in verdict(f, OVERFITTING, decayed).prescription
