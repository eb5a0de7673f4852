"""The doctor names sick nets (vanishing, saturated, exploding) and healthy ones, and its prescription cures."""

from __future__ import annotations

import pytest

from tricklab.config import load_config
from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.doctor import run_doctor
from tricklab.diagnostics.records import (
    DEAD_FRACTION,
    GLOBAL_GRAD_NORM,
    INPUT,
    INPUT_RMS,
    LOSS,
    MODEL,
    SATURATED_FRACTION,
    UPDATE_RATIO,
    WEIGHT,
    WEIGHT_GRAD_NORM,
    Findings,
    LayerInfo,
    NonFinite,
    Records,
)
from tricklab.diagnostics.verdicts import (
    BAD_INPUTS,
    DEAD_MAX,
    DEAD_RELUS,
    EXPLODING,
    GRAD_GROWTH,
    GRAD_GROWTH_MIN,
    LR_TOO_HIGH,
    NONFINITE,
    SATURATED_MAX,
    SATURATION,
    UPDATE_RATIO_MAX,
    VANISHING,
    VANISHING_RATIO,
    as_set_flags,
    merge_prescriptions,
)

FAST = [
    "data.name=synthetic",
    "train.threads=1",
    "model.width=32",
    "data.batch_size=32",
    "diagnostics.steps=30",
    "diagnostics.every=3",
]
SIGMOID_20 = ["model.depth=20", "model.activation=sigmoid"]
RELU_30 = ["model.depth=30", "model.activation=relu"]


def doctor(*overrides: str, recheck: bool = False):
    return run_doctor(load_config(overrides=FAST + list(overrides)), signal=False, recheck=recheck)


def names(verdicts) -> set[str]:
    return {v.name for v in verdicts}


# --- the nets, end to end ------------------------------------------------------------------------------------


def test_deep_sigmoid_with_standard_normal_is_saturated_with_vanishing_gradients_and_the_cure_works():
    result = doctor(*SIGMOID_20, "init.scheme=standard_normal", "model.norm=none", recheck=True)
    assert {VANISHING, SATURATION} <= names(result.verdicts)
    assert EXPLODING not in names(result.verdicts)
    vanishing = next(v for v in result.verdicts if v.name == VANISHING)
    assert vanishing.figures["grad_ratio_first_last"] < VANISHING_RATIO
    assert vanishing.layers[0] == "hidden.0.body.0"  # the first layer is named
    assert result.prescription == {"init.scheme": "glorot_normal", "model.norm": "batch"}
    assert result.recheck.healthy and result.recheck.cured


def test_deep_plain_relu_with_standard_normal_is_exploding_and_the_cure_works():
    result = doctor(*RELU_30, "init.scheme=standard_normal", "model.norm=none", recheck=True)
    assert EXPLODING in names(result.verdicts)
    assert result.prescription["init.scheme"] == "he_normal"
    assert result.prescription["model.norm"] == "batch"
    assert result.recheck.healthy


@pytest.mark.parametrize(
    "net",
    [[*SIGMOID_20, "init.scheme=glorot_normal"], [*RELU_30, "init.scheme=he_normal"]],
    ids=["sigmoid", "relu"],
)
def test_the_same_nets_with_a_matched_init_and_batch_norm_are_healthy(net):
    assert doctor(*net, "model.norm=batch").verdicts == []


# --- each check against scripted numbers (the thresholds themselves) ---------------------------------------------


def findings(series: dict[tuple[str, str], list[float]], kinds: dict[str, str], nonfinite=None) -> Findings:
    """Findings from scripted per-step series: {(metric, layer): [value at step 0, 1, ...]}."""
    r = Records()
    for (metric, layer), values in series.items():
        for step, v in enumerate(values):
            r.add(metric, layer, step, v)
    layers = [LayerInfo(name, kind, i) for i, (name, kind) in enumerate(kinds.items())]
    return Findings(r, layers, every=1, steps=max(len(v) for v in series.values()), first_nonfinite=nonfinite)


TWO_LAYERS = {"a": WEIGHT, "act": "relu", "b": WEIGHT}


@pytest.mark.parametrize("n, sick", [(GRAD_GROWTH_MIN, True), (GRAD_GROWTH_MIN - 1, False)])
def test_a_growing_gradient_norm_is_judged_on_the_sampled_steps_of_a_fit(n, sick):
    """Under fit() the global ‖g‖ is recorded on sampled steps only (every 10th here): n of them, growing from 1 to
    1e3, are exploding gradients when there are enough of them to judge."""
    r = Records()
    for i in range(n):
        r.add(GLOBAL_GRAD_NORM, MODEL, 10 * i, 10.0 ** (3 * i / (n - 1)))
    layers = [LayerInfo(name, kind, i) for i, (name, kind) in enumerate(TWO_LAYERS.items())]
    found = [v for v in diagnose(Findings(r, layers, every=10, steps=10 * n)) if v.name == EXPLODING]
    assert bool(found) is sick
    if sick:
        assert found[0].figures["grad_norm_growth"] > GRAD_GROWTH


@pytest.mark.parametrize("ratio, sick", [(VANISHING_RATIO * 0.8, True), (VANISHING_RATIO * 1.25, False)])
def test_vanishing_fires_below_its_ratio(ratio, sick):
    f = findings({(WEIGHT_GRAD_NORM, "a"): [ratio] * 5, (WEIGHT_GRAD_NORM, "b"): [1.0] * 5}, TWO_LAYERS)
    assert (VANISHING in names(diagnose(f))) is sick


def test_a_nonfinite_value_is_its_own_verdict_naming_its_step_and_layer():
    nf = NonFinite(3, "b", "backward", "weight gradient of b is nan or inf")
    f = findings({(WEIGHT_GRAD_NORM, "a"): [1.0] * 5, (WEIGHT_GRAD_NORM, "b"): [1.0] * 5}, TWO_LAYERS, nf)
    (v,) = diagnose(f, {"init.scheme": "he_normal", "model.norm": "batch", "optim.lr": 0.1})
    assert v.name == NONFINITE and v.layers == ("b",) and v.figures["nonfinite_step"] == 3
    assert v.prescription == {"clip.mode": "norm", "clip.threshold": 1.0, "optim.lr": 0.01}  # during training
    at_init = NonFinite(0, "a", "forward", "output of a is nan or inf")
    (v0,) = diagnose(findings({(WEIGHT_GRAD_NORM, "a"): [1.0] * 5}, TWO_LAYERS, at_init), {"init.scheme": "he_normal"})
    assert v0.name == NONFINITE and "optim.lr" not in v0.prescription  # at step 0: the weights' scale, not the LR
    in_data = NonFinite(2, None, "input", "the model's input is nan or inf")
    (vd,) = diagnose(findings({(WEIGHT_GRAD_NORM, "a"): [1.0] * 5}, TWO_LAYERS, in_data))
    assert vd.name == NONFINITE and vd.prescription == {} and "repair those examples" in vd.advice


def test_exploding_fires_on_a_loss_spike():
    losses = [2.3, 1.0, 0.9, 0.8, 0.8, 0.7, 0.7, 9.0, 0.7]
    (v,) = diagnose(findings({(LOSS, MODEL): losses}, TWO_LAYERS))
    assert v.name == EXPLODING and v.figures["loss_spikes"] == 1


@pytest.mark.parametrize("metric, kind, limit, verdict", [
    (DEAD_FRACTION, "relu", DEAD_MAX, DEAD_RELUS),
    (SATURATED_FRACTION, "tanh", SATURATED_MAX, SATURATION),
])  # fmt: skip
def test_fraction_checks_fire_above_their_limit_and_name_the_layer(metric, kind, limit, verdict):
    kinds = {"a": WEIGHT, "act": kind, "b": WEIGHT}
    over = findings({(metric, "act"): [limit + 0.05] * 4}, kinds)
    under = findings({(metric, "act"): [limit - 0.05] * 4}, kinds)
    assert [(v.name, v.layers) for v in diagnose(over)] == [(verdict, ("act",))]
    assert diagnose(under) == []


def test_badly_scaled_inputs_prescribe_standardization():
    (v,) = diagnose(findings({(INPUT_RMS, INPUT): [90.0] * 3}, TWO_LAYERS))
    assert v.name == BAD_INPUTS and v.prescription == {"data.scale": "standardize"}


def test_a_high_update_ratio_prescribes_a_lower_lr():
    f = findings({(UPDATE_RATIO, "a"): [UPDATE_RATIO_MAX * 10] * 4, (UPDATE_RATIO, "b"): [1e-3] * 4}, TWO_LAYERS)
    (v,) = diagnose(f, {"optim.lr": 0.1})
    assert v.name == LR_TOO_HIGH and v.layers == ("a",)
    assert v.prescription == {"optim.lr": 0.001}  # ratio 0.3 → 30× the 0.01 target → two decades lower


def test_prescriptions_merge_to_the_lowest_lr_and_print_as_set_flags():
    f = findings(
        {(UPDATE_RATIO, "a"): [0.5] * 4, (LOSS, MODEL): [2.3, 1, 1, 1, 1, 1, 30.0]},
        TWO_LAYERS,
    )
    verdicts = diagnose(f, {"optim.lr": 1.0, "init.scheme": "he_normal", "model.norm": "batch"})
    merged = merge_prescriptions(verdicts)
    # the loss spike (exploding_gradients) is lr_too_high's consequence: its own prescription is withheld
    assert [(v.name, v.cause) for v in verdicts] == [("lr_too_high", None), ("exploding_gradients", "lr_too_high")]
    assert merged["optim.lr"] == min(v.prescription["optim.lr"] for v in verdicts if v.cause is None)
    assert as_set_flags({"model.residual": True, "optim.lr": 0.01}) == "--set model.residual=true --set optim.lr=0.01"
