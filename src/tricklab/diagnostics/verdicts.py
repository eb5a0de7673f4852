"""Verdicts: name the problem behind a probe's numbers, the layers and figures that show it, and the fix.

Each check in :data:`CHECKS` reads :class:`~tricklab.diagnostics.records.Findings` and returns a
:class:`Verdict` or None. "First" and "last" are the first and last Linear/Conv layers in forward order; a
"median" is over the sampled steps, so that one odd batch decides nothing.

===========================  ========================================================  ======================
verdict                      fires when                                                threshold (constant)
===========================  ========================================================  ======================
``non_finite_values``        a NaN/inf anywhere (input, forward, loss, backward,       any
                             weights): its step, where and first layer
``exploding_gradients``      median ‖∂L/∂W_first‖ / ‖∂L/∂W_last‖ above                 ``EXPLODING_RATIO`` 1e3
                             std of the last layer's output / the first's above        ``ACT_RANGE`` 1e3
                             global ‖g‖: median of the last tenth of steps / first     ``GRAD_GROWTH`` 100
                             tenth above (the steps where it was recorded: every step
                             in a loop of your own, the sampled ones in ``fit()``; at
                             least 10 of them)
                             a batch loss above 10× the median of the 20 before it     ``LOSS_SPIKE`` 10
                             (and above the untrained loss)
``vanishing_gradients``      median ‖∂L/∂W_first‖ / ‖∂L/∂W_last‖ below                 ``VANISHING_RATIO`` 0.1
                             and the same ratio per √fan-in below (each norm divided   ``VANISHING_PER_FAN_IN``
                             by √ of its layer's inputs per unit, where recorded)      0.3
                             std of the last layer's output / the first's below        1 / ``ACT_RANGE``
``saturation``               a sigmoid/tanh layer's median fraction of outputs in the  ``SATURATED_MAX`` 0.25
                             tails (sigmoid y ∉ [0.01, 0.99], tanh |y| > 0.99) above
``dead_relus``               a ReLU layer's fraction of units that are 0 on the whole  ``DEAD_MAX`` 0.5
                             batch (median over the last half of the samples) above
``badly_scaled_inputs``      median input RMS sqrt(E[x²]) above                        ``INPUT_RMS_MAX`` 10
``lr_too_high``              a layer's median update ratio ‖ΔW‖/‖W‖ over the first     ``UPDATE_RATIO_MAX``
                             half of the samples (a diverged net stops updating) above 0.03
                             or a batch loss of the first tenth of the run above       ``LR_LOSS_RISE`` 3
                             this many times the untrained loss (step 0)
``oscillating_loss``         median |L_t − L_{t−1}| over the second half of the run,   ``OSC_AMPLITUDE`` 0.3
                             relative to the initial loss L₀, above, with the sign of
                             L_t − L_{t−1} flipping in at least                        ``OSC_MIN_FLIPS`` 0.5
                             (of the second half's steps);
                             or the loss smoothed by medians of 10 steps going up and  ``OSC_REGAIN`` 0.1
                             down again, each by more than this × L₀ in all (the legs
                             of its zigzag, turning on moves beyond 4 standard errors  ``OSC_SE`` 4
                             of a difference of medians)
                             and the loss L_end has not halved: (L₀ − L_end)/L₀ below  ``OSC_MAX_DROP`` 0.5
``slow_convergence``         (L₀ − L_end)/L₀ below                                     ``SLOW_MAX_DROP`` 0.1
                             and the fastest layer's median ‖ΔW‖/‖W‖ below             ``UPDATE_RATIO_MIN``
                                                                                       1e-4
``loss_not_decreasing``      (L₀ − L_end)/L₀ below (a rise included),                  ``FLAT_MAX_DROP`` 0.01
                             or, for cross-entropy on class labels, L_end within ±     ``PRIOR_MARGIN`` 0.05
                             this × the label-prior loss H = −Σ p_c ln p_c (chance);
                             the loss not oscillating and the weights not frozen (else
                             the two verdicts above name the cause)
``overfitting``              validation loss above its minimum by more than            ``OVERFIT_RISE`` 0.1
                             the minimum at least k evaluations old, each since above  ``OVERFIT_PATIENCE`` 3
                             it, and the training loss fell since then by at least     ``OVERFIT_TRAIN_FALL``
                                                                                       0.05
===========================  ========================================================  ======================

L₀ and L_end are the medians of the first and last tenth (≥ 5 values; L₀ over at most the first
``LOSS_HEAD`` = 10, so that it is the loss before training also in a long run) of the batch losses (one per
step from ``fit()``, or ``Doctor.observe(loss=...)``). The rules assume the doctor watches from the start, as
``tricklab doctor`` does: a net that starts out converged (resumed, fine-tuned) looks flat. The loss checks
need ``DYNAMICS_MIN_STEPS`` = 50 of them and overfitting ``OVERFIT_MIN_EVALS`` = 5 validation losses (one per
epoch from ``fit()``, or ``Doctor.observe(val_loss=...)``), so a short run raises none of them. A NaN/inf is
reported by ``non_finite_values`` with its step and first layer (forward values are checked before
gradients, a gradient attributed to the layer whose backward produced it, see
:mod:`~tricklab.diagnostics.probes`); one in the input batch itself prescribes no training change.

Each verdict prescribes catalog tricks as config overrides (``init.scheme``, ``model.norm``,
``model.residual``, ``model.activation``, ``clip.mode``/``clip.threshold``, ``optim.lr``, ``data.scale``,
``optim.weight_decay``, ``early_stopping.enabled``), chosen from the run's settings when given::

    verdicts = diagnose(findings, settings={"model.activation": "sigmoid", "init.scheme": "standard_normal"})
    merge_prescriptions(verdicts)       # {"init.scheme": "glorot_normal", "model.norm": "batch"}

(:func:`~tricklab.diagnostics.diagnosis.diagnose` runs these checks and the loop checks.) Why each threshold has its
value, the measurements behind it, and how the rules compare with other tools: ``docs/verdicts-why.md``, shown
beside each verdict on the documentation site's "Every verdict" page.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tricklab.diagnostics.records import (
    ACT_STD,
    ACTIVATIONS,
    DEAD_FRACTION,
    GLOBAL_GRAD_NORM,
    INPUT,
    INPUT_ABS_MAX,
    INPUT_MEAN,
    INPUT_RMS,
    LOSS,
    MODEL,
    PRIOR_LOSS,
    SATURATED_FRACTION,
    UPDATE_RATIO,
    WEIGHT,
    WEIGHT_FAN_IN,
    WEIGHT_GRAD_NORM,
    WHERE_INPUT,
    Findings,
)
from tricklab.metrics import TRAIN_LOSS, VAL_LOSS
from tricklab.registry import Registry

VANISHING_RATIO = 0.1
VANISHING_PER_FAN_IN = 0.3  # ... and the same ratio per √fan-in below this (not an effect of the layers' sizes)
EXPLODING_RATIO = 1e3
ACT_RANGE = 1e3
GRAD_GROWTH = 100.0
GRAD_GROWTH_MIN = 10  # ... judged on at least this many recorded norms (100 steps at every=10 in fit())
LOSS_SPIKE = 10.0
LOSS_WINDOW = 20
DEAD_MAX = 0.5
SATURATED_MAX = 0.25
INPUT_RMS_MAX = 10.0
UPDATE_RATIO_MAX = 0.03
UPDATE_RATIO_TARGET = 0.01  # the LR prescribed brings the worst layer's ratio to about this
# training dynamics, read off the batch-loss series (and, for overfitting, the validation loss per evaluation)
DYNAMICS_MIN_STEPS = 50  # loss values needed before any loss-trend check may fire
LOSS_HEAD = 10  # L₀, the initial loss: the median of the first tenth of the losses, at most this many
OSC_AMPLITUDE = 0.3  # median |L_t − L_{t−1}| over the second half, as a fraction of the initial loss
OSC_MAX_DROP = 0.5  # ... while the smoothed loss has not fallen by half
OSC_MIN_FLIPS = 0.5  # ... and the step-to-step changes alternate in sign at least this often (a bounce, not a climb)
SLOW_MAX_DROP = 0.1  # slow convergence: the smoothed loss fell by less than this fraction ...
UPDATE_RATIO_MIN = 1e-4  # ... and even the fastest layer's median ‖ΔW‖/‖W‖ is below this
UPDATE_RATIO_HEALTHY = 1e-3  # the LR prescribed for slow convergence brings the fastest layer to about this
LR_RAISE_MAX = 1e6  # ... raised by at most this factor in one prescription (the re-check shows the rest)
FLAT_MAX_DROP = 0.01  # loss not decreasing: the smoothed loss fell by less than 1% of its initial level ...
PRIOR_MARGIN = 0.05  # ... or, with class labels, it ended within ± this fraction of the label-prior loss (chance)
LR_LOSS_RISE = 3.0  # LR too high: a batch loss of the first tenth above this × the untrained loss (step 0)
OSC_WINDOW = 10  # oscillating: the loss smoothed by medians of this many steps ...
OSC_SE = 4.0  # ... up and down by more than this many standard errors of a difference of two medians ...
OSC_REGAIN = 0.1  # ... by this fraction of the initial loss in all
OVERFIT_MIN_EVALS = 5  # validation evaluations needed
OVERFIT_PATIENCE = 3  # the best validation loss is at least this many evaluations old, each one since above it
OVERFIT_RISE = 0.1  # the last validation loss is this fraction above its minimum (Prechelt's GL > 10)
OVERFIT_TRAIN_FALL = 0.05  # while the training loss fell by at least this fraction since the best evaluation
WEIGHT_DECAY = 5e-4  # prescribed for overfitting when the run has none

VANISHING, EXPLODING, DEAD_RELUS, SATURATION, BAD_INPUTS, LR_TOO_HIGH = (
    "vanishing_gradients",
    "exploding_gradients",
    "dead_relus",
    "saturation",
    "badly_scaled_inputs",
    "lr_too_high",
)
NONFINITE = "non_finite_values"
OSCILLATING, SLOW_CONVERGENCE, NOT_DECREASING, OVERFITTING = (
    "oscillating_loss",
    "slow_convergence",
    "loss_not_decreasing",
    "overfitting",
)

#: Inits made for each activation (He et al. 2015 for ReLU-like, Glorot & Bengio 2010 for sigmoid/tanh);
#: the first is the one prescribed.
GOOD_INITS: dict[str, tuple[str, ...]] = {
    "relu": ("he_normal", "he_uniform", "lsuv"),
    "gelu": ("he_normal", "he_uniform", "lsuv"),
    "sigmoid": ("glorot_normal", "glorot_uniform", "lsuv"),
    "tanh": ("glorot_normal", "glorot_uniform", "lsuv", "orthogonal", "gaussian", "lecun_normal"),
}


@dataclass(frozen=True)
class Verdict:
    """One problem: its name, a one-line summary with the figures, the layers behind it, and the fix."""

    name: str
    summary: str
    layers: tuple[str, ...] = ()
    figures: dict[str, float] = field(default_factory=dict)
    prescription: dict[str, Any] = field(default_factory=dict)  # config overrides, e.g. {"model.norm": "batch"}
    advice: str = ""
    first_step: int | None = None  # the step at which the rule was first certain (None: judged on the whole run)
    code: str = ""  # the fix as PyTorch code, for a bug of the loop itself (no config override cures it)
    cause: str | None = None  # the verdict that explains this one: a consequence, its prescription withheld

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "layers": list(self.layers)}


Check = Callable[[Findings, Mapping[str, Any]], "Verdict | None"]
CHECKS: Registry[Check] = Registry("doctor check")


def merge_prescriptions(verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """One set of overrides for all verdicts: the lowest ``optim.lr``, else the first verdict's value wins."""
    out: dict[str, Any] = {}
    for v in verdicts:
        for key, value in v.prescription.items():
            if key == "optim.lr" and key in out:
                out[key] = min(out[key], value)
            else:
                out.setdefault(key, value)
    return out


def as_set_flags(overrides: Mapping[str, Any]) -> str:
    """``{"model.norm": "batch", "model.residual": True}`` → ``--set model.norm=batch --set model.residual=true``."""

    def text(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return " ".join(f"--set {k}={text(v)}" for k, v in overrides.items())


def settings_of(config: Any) -> dict[str, Any]:
    """The settings :func:`diagnose` reads, from a :class:`tricklab.config.Config`."""
    return {
        "model.activation": config.model.activation,
        "model.norm": config.model.norm,
        "model.residual": config.model.residual,
        "init.scheme": config.init.scheme,
        "optim.lr": config.optim.lr,
        "clip.mode": config.clip.mode,
        "data.scale": config.data.scale,
        "optim.weight_decay": config.optim.weight_decay,
        "early_stopping.enabled": config.early_stopping.enabled,
    }


# --- the checks ---------------------------------------------------------------------------------------------------


@CHECKS.register(
    EXPLODING,
    help=f"‖g_first‖/‖g_last‖ > {EXPLODING_RATIO:g}; forward std ×{ACT_RANGE:g}; "
    f"‖g‖ ×{GRAD_GROWTH:g}; loss spike ×{LOSS_SPIKE:g}; Pascanu et al. 2013",
)
def check_exploding(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    evidence, layers, figures = [], [], {}
    at_init = dynamic = False
    depth = _depth_ratio(f, WEIGHT_GRAD_NORM)
    if depth is not None and depth[0] > EXPLODING_RATIO:
        evidence.append(
            f"gradient norm grows {_g(depth[0])}× from the last layer to the first (> {EXPLODING_RATIO:g}×)"
        )
        layers += _layers_beyond(f, WEIGHT_GRAD_NORM, EXPLODING_RATIO)
        figures["grad_ratio_first_last"] = depth[0]
        at_init = at_init or depth[1] > EXPLODING_RATIO
    fwd = _depth_ratio(f, ACT_STD, last_over_first=True)
    if fwd is not None and fwd[0] > ACT_RANGE:
        evidence.append(f"forward signal std grows {_g(fwd[0])}× from the first layer to the last (> {ACT_RANGE:g}×)")
        figures["act_std_ratio_last_first"] = fwd[0]
        layers += _layers_vs_first(f, ACT_STD, lambda r: r > ACT_RANGE)
        at_init = at_init or fwd[1] > ACT_RANGE
    _, norms = f.records.series(GLOBAL_GRAD_NORM, MODEL)
    finite = [v for v in norms if math.isfinite(v)]
    if len(finite) >= GRAD_GROWTH_MIN:
        k = max(2, len(finite) // 10)
        early, late = statistics.median(finite[:k]), statistics.median(finite[-k:])
        if early > 0 and late / early > GRAD_GROWTH:
            evidence.append(f"global gradient norm grew {_g(late / early)}× during training (> {GRAD_GROWTH:g}×)")
            figures["grad_norm_growth"] = late / early
            dynamic = True
    spikes = _loss_spikes(f)
    if spikes:
        evidence.append(
            f"{len(spikes)} loss spike(s), first at step {spikes[0][0]} ({_g(spikes[0][1])}× the median before)"
        )
        figures["loss_spikes"] = len(spikes)
        dynamic = True
    if not evidence:
        return None
    figures["at_init"] = float(at_init)
    fix: dict[str, Any] = {}
    if at_init or not dynamic:
        fix.update(_signal_fix(s))
    if dynamic:
        if s.get("clip.mode", "none") == "none":
            fix.update({"clip.mode": "norm", "clip.threshold": 1.0})
        fix.update(_lower_lr(s, 10.0))
    return Verdict(
        EXPLODING,
        "; ".join(evidence),
        tuple(dict.fromkeys(layers)),
        figures,
        fix,
        "values that grow layer after layer overflow; at init the scale of the weights is wrong (He/Glorot init, "
        "batch norm, residual connections keep it); during training, clip the gradient norm and lower the LR",
    )


@CHECKS.register(NONFINITE, help="the first NaN/inf: its step, where (input, forward, loss, backward) and first layer")
def check_nonfinite(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    """A NaN or inf anywhere stops learning at once (the NaN guard refuses the update); the verdict locates the first
    one — its step, where it appeared (the input batch, a layer's forward output, the loss, a gradient, the
    weights) and the first layer — because the cure depends on where: bad data is repaired, not trained around;
    at step 0 the weights' scale is wrong (init); later, the updates grew too large (clip, lower the LR)."""
    nf = f.first_nonfinite
    if nf is None:
        return None
    bad_data = nf.where == WHERE_INPUT
    fix: dict[str, Any] = {}
    if not bad_data:
        if nf.step == 0:
            fix.update(_signal_fix(s))
        else:
            if s.get("clip.mode", "none") == "none":
                fix.update({"clip.mode": "norm", "clip.threshold": 1.0})
            fix.update(_lower_lr(s, 10.0))
    return Verdict(
        NONFINITE,
        f"first non-finite value at {nf}" + (f" (first layer: {nf.layer})" if nf.layer else ""),
        (nf.layer,) if nf.layer else (),
        {"nonfinite_step": nf.step},
        fix,
        "the input batch itself holds a NaN/inf: drop or repair those examples (no training setting cures it)"
        if bad_data
        else "a value overflowed: at step 0 the scale of the weights is wrong (He/Glorot init, batch norm); "
        "later the updates grew too large: clip the gradient norm and lower the LR",
        first_step=nf.step,
    )


@CHECKS.register(
    VANISHING,
    help=f"‖g_first‖/‖g_last‖ < {VANISHING_RATIO:g} or forward std ÷{ACT_RANGE:g}; Glorot & Bengio 2010",
)
def check_vanishing(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    evidence, layers, figures = [], [], {}
    depth, per_fan_in = _depth_ratio(f, WEIGHT_GRAD_NORM), _depth_ratio(f, WEIGHT_GRAD_NORM, per_fan_in=True)
    if depth is not None and depth[0] < VANISHING_RATIO and per_fan_in[0] < VANISHING_PER_FAN_IN:
        evidence.append(
            f"first-layer gradient norm is {_g(depth[0])}× the last layer's (< {VANISHING_RATIO:g}×, median over "
            f"{depth[2]} samples), {_g(per_fan_in[0])}× per √fan-in (< {VANISHING_PER_FAN_IN:g}×: not the layers' "
            "sizes)"
        )
        layers += _layers_below(f, WEIGHT_GRAD_NORM, VANISHING_RATIO)
        figures["grad_ratio_first_last"] = depth[0]
        figures["grad_ratio_per_fan_in"] = per_fan_in[0]
    fwd = _depth_ratio(f, ACT_STD, last_over_first=True)
    if fwd is not None and fwd[0] < 1 / ACT_RANGE:
        evidence.append(f"forward signal std shrinks to {_g(fwd[0])}× from the first layer to the last")
        figures["act_std_ratio_last_first"] = fwd[0]
        layers += _layers_vs_first(f, ACT_STD, lambda r: r < 1 / ACT_RANGE)
    if not evidence:
        return None
    return Verdict(
        VANISHING,
        "; ".join(evidence),
        tuple(dict.fromkeys(layers)),
        figures,
        _signal_fix(s),
        "the early layers get almost no gradient and barely learn; an init matched to the activation and batch "
        "norm keep the backward signal in range (residual connections give it a shortcut)",
    )


@CHECKS.register(SATURATION, help=f"> {SATURATED_MAX:g} of sigmoid/tanh outputs in the flat tails; LeCun et al. 1998")
def check_saturation(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    med = _layer_medians(f, SATURATED_FRACTION)
    bad = {name: v for name, v in med.items() if v > SATURATED_MAX}
    if not bad:
        return None
    worst = max(bad, key=bad.get)
    fix = _signal_fix(s, residual=False) or {"model.activation": "relu", "init.scheme": "he_normal"}
    return Verdict(
        SATURATION,
        f"{len(bad)} of {len(med)} sigmoid/tanh layers have over {SATURATED_MAX:.0%} of outputs in the flat tails "
        f"(worst {worst}: {bad[worst]:.0%})",
        tuple(bad),
        {"worst_fraction": bad[worst], "layers": len(bad)},
        fix,
        "saturated units have a derivative near 0 and pass back almost no gradient; smaller initial weights "
        "(Glorot) and batch norm keep inputs to the activation near 0 (or use ReLU with He init)",
    )


@CHECKS.register(
    DEAD_RELUS, help=f"> {DEAD_MAX:g} of a ReLU layer's units output 0 for the whole batch; Lu et al. 2019"
)
def check_dead_relus(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    med = _layer_medians(f, DEAD_FRACTION, last_half=True)
    bad = {name: v for name, v in med.items() if v > DEAD_MAX}
    if not bad:
        return None
    worst = max(bad, key=bad.get)
    fix = _signal_fix(s, residual=False) or {"model.activation": "gelu"}
    return Verdict(
        DEAD_RELUS,
        f"{len(bad)} of {len(med)} ReLU layers have over {DEAD_MAX:.0%} dead units (worst {worst}: {bad[worst]:.0%})",
        tuple(bad),
        {"worst_fraction": bad[worst], "layers": len(bad)},
        fix,
        "a ReLU whose input is negative for every example gets no gradient; batch norm centres its input, He init "
        "scales it, a lower LR avoids knocking units out, GELU passes a gradient for negative inputs",
    )


@CHECKS.register(BAD_INPUTS, help=f"input RMS sqrt(E[x²]) > {INPUT_RMS_MAX:g}; LeCun et al. 1998")
def check_inputs(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    rms = _median(f.records.series(INPUT_RMS, INPUT)[1])
    if rms is None or rms <= INPUT_RMS_MAX:
        return None
    mean = _median(f.records.series(INPUT_MEAN, INPUT)[1]) or float("nan")
    peak = _median(f.records.series(INPUT_ABS_MAX, INPUT)[1]) or float("nan")
    return Verdict(
        BAD_INPUTS,
        f"inputs have RMS {_g(rms)} (mean {_g(mean)}, max |x| {_g(peak)}), far outside [-1, 1] "
        f"(RMS > {INPUT_RMS_MAX:g})",
        (INPUT,),
        {"input_rms": rms, "input_mean": mean, "input_abs_max": peak},
        {"data.scale": "standardize"},
        "large inputs give the first layer huge pre-activations and gradients; standardize them (zero mean, unit "
        "variance, statistics from the training split)",
    )


@CHECKS.register(
    LR_TOO_HIGH,
    help=f"median update ratio ‖ΔW‖/‖W‖ > {UPDATE_RATIO_MAX:g} (healthy ~1e-3), or an early batch loss "
    f"> {LR_LOSS_RISE:g}× the untrained loss; Karpathy CS231n",
)
def check_lr(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    med = _layer_medians(f, UPDATE_RATIO, first_half=True)
    bad = {name: v for name, v in med.items() if v > UPDATE_RATIO_MAX}
    rise = _early_rise(f)
    if not bad and rise is None:
        return None
    evidence, figures, factor = [], {}, 10.0
    if bad:
        worst = max(bad, key=bad.get)
        factor = max(factor, 10.0 ** math.ceil(math.log10(bad[worst] / UPDATE_RATIO_TARGET) - 1e-9))
        evidence.append(
            f"update-to-weight ratio ‖ΔW‖/‖W‖ is {_g(bad[worst])} per step in {worst} "
            f"(> {UPDATE_RATIO_MAX:g}; healthy ~1e-3){f'; {len(bad)} layers above' if len(bad) > 1 else ''}"
        )
        figures.update({"worst_update_ratio": bad[worst], "layers": len(bad)})
    if rise is not None:
        evidence.append(
            f"the batch loss rose to {_g(rise[1])}× the untrained loss at step {rise[0]} (> {LR_LOSS_RISE:g}×)"
        )
        figures["early_loss_rise"] = rise[1]
    return Verdict(
        LR_TOO_HIGH,
        "; ".join(evidence),
        tuple(bad) or (MODEL,),
        figures,
        _lower_lr(s, factor),
        f"each step rewrites a large part of the weights or climbs out of the valley; lower the learning rate about "
        f"{factor:g}×",
    )


#: The checks whose problem starves the gradient: with one of them, tiny steps are its symptom, not a low LR's.
SIGNAL_CHECKS: dict[str, Check] = {
    VANISHING: check_vanishing,
    DEAD_RELUS: check_dead_relus,
    SATURATION: check_saturation,
}


# --- training dynamics: the loss over the run ----------------------------------------------------------------------


@CHECKS.register(
    OSCILLATING,
    help=f"median |ΔL| > {OSC_AMPLITUDE:g}× the initial loss, bouncing, or the {OSC_WINDOW}-step median loss "
    f"climbing back {OSC_REGAIN:g}× of it; not halved; AUTOTRAINER (Zhang et al. 2021)",
)
def check_oscillating(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    trend = _loss_trend(f)
    if trend is None or not _oscillates(trend):
        return None
    if trend.amplitude > OSC_AMPLITUDE and trend.flips >= OSC_MIN_FLIPS:
        how = (
            f"the batch loss jumps by a median {_g(trend.amplitude)}× its initial level {_g(trend.first)} from one "
            f"step to the next (> {OSC_AMPLITUDE:g}×)"
        )
    else:
        how = (
            f"the loss, smoothed over {OSC_WINDOW} steps, went back up and down again by {_g(trend.regain)}× its "
            f"initial level {_g(trend.first)} in all (> {OSC_REGAIN:g}×, beyond minibatch noise)"
        )
    return Verdict(
        OSCILLATING,
        f"{how} and fell only {trend.drop:.0%} in {trend.n} steps (< {OSC_MAX_DROP:.0%})",
        (MODEL,),
        {
            "loss_amplitude": trend.amplitude,
            "loss_drop": trend.drop,
            "sign_flips": trend.flips,
            "loss_regain": trend.regain,
        },
        _lower_lr(s, 10.0),
        "each step overshoots the valley it is in, so the loss bounces instead of going down; lower the LR 10×",
    )


@CHECKS.register(
    SLOW_CONVERGENCE,
    help=f"loss fell < {SLOW_MAX_DROP:.0%} and every layer's ‖ΔW‖/‖W‖ < {UPDATE_RATIO_MIN:g}; Karpathy CS231n",
)
def check_slow_convergence(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    trend, fastest = _loss_trend(f), _fastest_update(f)
    if trend is None or fastest is None or trend.drop >= SLOW_MAX_DROP or fastest[1] >= UPDATE_RATIO_MIN:
        return None
    factor = min(10.0 ** math.ceil(math.log10(UPDATE_RATIO_HEALTHY / max(fastest[1], 1e-12)) - 1e-9), LR_RAISE_MAX)
    lr = s.get("optim.lr")
    fix = {"optim.lr": float(f"{lr * factor:.3g}")} if isinstance(lr, int | float) else {}
    advice = f"the steps are too small to get anywhere in this budget; raise the learning rate about {factor:g}×"
    starved = [name for name, check in SIGNAL_CHECKS.items() if check(f, s) is not None]
    if starved:  # the gradient does not get through: the steps are small for that reason, not the LR's
        fix, advice = (
            {},
            (
                f"the steps are small because the gradient does not get through ({', '.join(starved)}): fix that "
                f"first, then see whether the learning rate is still too low (it would take about {factor:g}× more)"
            ),
        )
    return Verdict(
        SLOW_CONVERGENCE,
        f"the loss fell only {trend.drop:.0%} in {trend.n} steps (< {SLOW_MAX_DROP:.0%}) and even the fastest layer, "
        f"{fastest[0]}, changes by {_g(fastest[1])} of its norm per step (< {UPDATE_RATIO_MIN:g}; healthy ~1e-3)",
        (fastest[0],),
        {"loss_drop": trend.drop, "fastest_update_ratio": fastest[1]},
        fix,
        advice,
    )


def prior_only(f: Findings) -> tuple[_Trend, float] | None:
    """(trend, label-prior loss) when the loss fell to the label prior with moderate steps: the output layer learned
    the class frequencies and nothing came from the inputs; None otherwise (or when the weights barely move, or the
    loss bounces: the verdicts of those name the cause)."""
    trend, fastest = _loss_trend(f), _fastest_update(f)
    if trend is None or _oscillates(trend) or (fastest is not None and fastest[1] < UPDATE_RATIO_MIN):
        return None
    prior = _median(f.records.series(PRIOR_LOSS, MODEL)[1])
    if prior is None or not prior > 0 or abs(trend.last / prior - 1) > PRIOR_MARGIN:
        return None
    wild = fastest is not None and fastest[1] > UPDATE_RATIO_MAX
    return (trend, prior) if not wild and trend.drop >= FLAT_MAX_DROP else None


def loss_at_start_level(f: Findings) -> tuple[_Trend, float | None] | None:
    """(trend, label-prior loss or None) when the batch loss has not left its initial level: it fell by less than
    ``FLAT_MAX_DROP``, or it ended within ``PRIOR_MARGIN`` of the label-prior loss (chance); None otherwise or with
    too short a run. Bouncing losses count too: this reads only where the loss is, not how it got there."""
    trend = _loss_trend(f)
    if trend is None:
        return None
    prior = _median(f.records.series(PRIOR_LOSS, MODEL)[1])
    at_chance = prior is not None and prior > 0 and abs(trend.last / prior - 1) <= PRIOR_MARGIN
    return (trend, prior if at_chance else None) if trend.drop < FLAT_MAX_DROP or at_chance else None


@CHECKS.register(
    NOT_DECREASING,
    help=f"loss fell < {FLAT_MAX_DROP:.0%} over ≥ {DYNAMICS_MIN_STEPS} steps, or ended within ±{PRIOR_MARGIN:.0%} "
    "of the label-prior loss (chance); DeepDiagnosis (2022)",
)
def check_not_decreasing(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    trend, fastest = _loss_trend(f), _fastest_update(f)
    if trend is None or _oscillates(trend):
        return None  # a bouncing loss is oscillating_loss
    prior = _median(f.records.series(PRIOR_LOSS, MODEL)[1])
    at_chance = prior is not None and prior > 0 and abs(trend.last / prior - 1) <= PRIOR_MARGIN
    if trend.drop >= FLAT_MAX_DROP and not at_chance:
        return None
    if fastest is not None and fastest[1] < UPDATE_RATIO_MIN:
        return None  # the weights barely move: slow_convergence names the cause
    moving = f", though the weights move ({fastest[0]}: {_g(fastest[1])} of their norm per step)" if fastest else ""
    if at_chance:
        how = (
            f"the loss ended at {_g(trend.last)}, within {PRIOR_MARGIN:.0%} of {_g(prior)}, the loss of predicting "
            f"the label frequencies without looking at the input ({_g(trend.first)} at the start)"
        )
    else:
        how = (
            f"the loss did not go down in {trend.n} steps: {_g(trend.first)} at the start, {_g(trend.last)} at the "
            f"end (fell {trend.drop:.1%}, < {FLAT_MAX_DROP:.0%})"
        )
    wild = fastest is not None and fastest[1] > UPDATE_RATIO_MAX  # the steps are huge: the LR first
    # fell to the prior: the output learned the class frequencies (its gradient arrives, the optimizer works), and
    # nothing came from the inputs: a data problem no training setting cures
    prior_only = at_chance and not wild and trend.drop >= FLAT_MAX_DROP
    figures = {"loss_drop": trend.drop, "loss_first": trend.first, "loss_last": trend.last}
    if prior is not None:
        figures["label_prior_loss"] = prior
    if prior_only:
        fix, advice = (
            {},
            (
                "the net learned the class frequencies and nothing from the inputs: when a signal verdict is also "
                "given (saturation, vanishing gradients, dead ReLUs), the inputs do not get through: fix that first; "
                "otherwise check that each label belongs to its input (labels shuffled or misaligned with the "
                "examples) and that the inputs vary, which no training setting cures; if they do, it learns too "
                "slowly to show in this run (a longer run, a higher LR)"
            ),
        )
    else:
        fix = _lower_lr(s, 10.0) if wild else _signal_fix(s) or _lower_lr(s, 10.0)
        advice = (
            "the weights change but the loss does not follow: the signal does not reach the early layers (init, "
            "batch norm) or each step overshoots (a lower LR); also check that labels match the inputs and the loss "
            "fits the output"
        )
    return Verdict(NOT_DECREASING, how + moving, (MODEL,), figures, fix, advice)


@CHECKS.register(
    OVERFITTING,
    help=f"val loss {OVERFIT_RISE:.0%} above its minimum, rising {OVERFIT_PATIENCE} evaluations, train loss falling; "
    "Prechelt 1998",
)
def check_overfitting(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, val = _finite_series(f, VAL_LOSS)
    if len(val) < OVERFIT_MIN_EVALS:
        return None
    best = min(range(len(val)), key=val.__getitem__)
    since = len(val) - 1 - best
    if since < OVERFIT_PATIENCE or not val[best] > 0 or any(v <= val[best] for v in val[best + 1 :]):
        return None
    rise = val[-1] / val[best] - 1
    train = _train_loss_at(f, steps)
    if rise <= OVERFIT_RISE or train[best] is None or train[-1] is None or not train[best] > 0:
        return None
    fall = 1 - train[-1] / train[best]
    if fall < OVERFIT_TRAIN_FALL:
        return None
    fix: dict[str, Any] = {}
    if not s.get("early_stopping.enabled"):
        fix["early_stopping.enabled"] = True
    if not s.get("optim.weight_decay"):
        fix["optim.weight_decay"] = WEIGHT_DECAY
    return Verdict(
        OVERFITTING,
        f"validation loss is {rise:.0%} above its minimum {_g(val[best])} (step {steps[best]}) and rose for {since} "
        f"evaluations, while the training loss fell another {fall:.0%}",
        (MODEL,),
        {"val_rise": rise, "train_fall": fall, "evaluations_since_best": since, "best_step": steps[best]},
        fix,
        "the net now memorizes the training set; stop at the best validation loss (early stopping restores those "
        "weights) and regularize (weight decay; dropout or more data)",
    )


# --- helpers ------------------------------------------------------------------------------------------------------


def _g(x: float) -> str:
    return f"{x:.2g}"


def _median(values: Iterable[Any]) -> float | None:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def main_activation(f: Findings) -> str:
    """The activation most of the net's recorded activation layers use (``relu`` when none is recorded)."""
    kinds = [info.kind for info in f.layers if info.kind in ACTIVATIONS]
    return max(set(kinds), key=kinds.count) if kinds else "relu"


def _depth_ratio(
    f: Findings, metric: str, last_over_first: bool = False, per_fan_in: bool = False
) -> tuple[float, float, int] | None:
    """(median, first-sample value, samples) of metric[first] / metric[last] over the sampled steps (or the
    inverse), between the first and last Linear/Conv layers; None with fewer than two such layers.

    ``per_fan_in``: each layer's value divided by √(its fan-in) first, where recorded (:data:`WEIGHT_FAN_IN`): for
    y = Wx, ∂L/∂W = δxᵀ summed over the batch (and a conv's positions), so ‖∂L/∂W‖ grows with √fan_in for the same
    backward signal δ, and a 3×3 conv on one channel (fan-in 9) looks starved beside a head on 32×7×7 maps (fan-in
    1568) that gets the same signal."""
    weights = f.layers_of(WEIGHT)
    if len(weights) < 2:
        return None
    first, last = weights[0].name, weights[-1].name
    scale = 1.0
    if per_fan_in:
        fans = [f.records.get(WEIGHT_FAN_IN, name, 0) for name in (first, last)]
        if all(isinstance(v, int | float) and v > 0 for v in fans):
            scale = math.sqrt(fans[1] / fans[0])
    ratios = []
    for step in f.records.steps(metric):
        a, b = f.records.get(metric, first, step), f.records.get(metric, last, step)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        num, den = (b, a) if last_over_first else (a, b)
        if den > 0:
            ratios.append(num / den * scale)
    return (statistics.median(ratios), ratios[0], len(ratios)) if ratios else None


def _layer_medians(f: Findings, metric: str, *, last_half: bool = False, first_half: bool = False) -> dict[str, float]:
    out = {}
    for layer in f.records.layers(metric):
        values = f.records.series(metric, layer)[1]
        if last_half:
            values = values[len(values) // 2 :]
        if first_half:
            values = values[: (len(values) + 1) // 2]
        med = _median(values)
        if med is not None:
            out[layer] = med
    return out


def _layers_below(f: Findings, metric: str, ratio: float) -> list[str]:
    med = _layer_medians(f, metric)
    last = f.layers_of(WEIGHT)[-1].name
    return [info.name for info in f.layers_of(WEIGHT) if info.name in med and med[info.name] < ratio * med.get(last, 0)]


def _layers_beyond(f: Findings, metric: str, ratio: float) -> list[str]:
    med = _layer_medians(f, metric)
    last = f.layers_of(WEIGHT)[-1].name
    return [info.name for info in f.layers_of(WEIGHT) if info.name in med and med[info.name] > ratio * med.get(last, 0)]


def _layers_vs_first(f: Findings, metric: str, beyond: Callable[[float], bool]) -> list[str]:
    """The Linear/Conv layers whose median ``metric`` relative to the first layer's satisfies ``beyond``."""
    med = _layer_medians(f, metric)
    weights = [info.name for info in f.layers_of(WEIGHT) if info.name in med]
    if not weights or not med[weights[0]] > 0:
        return []
    return [name for name in weights if beyond(med[name] / med[weights[0]])]


def _loss_spikes(f: Findings) -> list[tuple[int, float]]:
    steps, losses = f.records.series(LOSS, MODEL)
    if len(losses) < 5 or not math.isfinite(losses[0]):
        return []
    spikes = []
    for i in range(5, len(losses)):
        before = _median(losses[max(0, i - LOSS_WINDOW) : i])
        if before and math.isfinite(losses[i]) and losses[i] > LOSS_SPIKE * before and losses[i] > losses[0]:
            spikes.append((steps[i], losses[i] / before))
    return spikes


@dataclass(frozen=True)
class _Trend:
    """The batch loss over a run: its initial and final levels (medians), the step-to-step amplitude."""

    n: int  # finite loss values
    first: float  # median of the first tenth (5 to LOSS_HEAD values): the loss before training
    last: float  # median of the last tenth
    drop: float  # (first − last) / first: the fraction of the initial loss gone
    amplitude: float  # median |L_t − L_{t−1}| over the second half, / first
    flips: float  # fraction of successive differences over the second half that change sign
    regain: float = 0.0  # the OSC_WINDOW-step median loss: the lesser of its rises and falls beyond noise, / first


def _loss_trend(f: Findings) -> _Trend | None:
    """The batch loss's trend, or None with fewer than ``DYNAMICS_MIN_STEPS`` finite values or a loss ≤ 0 at the
    start (the ratios assume a loss bounded below by 0, as cross-entropy and squared error are)."""
    losses = _finite_series(f, LOSS)[1]
    n = len(losses)
    if n < DYNAMICS_MIN_STEPS:
        return None
    w = max(5, n // 10)
    first, last = statistics.median(losses[: min(w, LOSS_HEAD)]), statistics.median(losses[-w:])
    if not first > 0:
        return None
    half = losses[n // 2 :]
    diffs = [b - a for a, b in zip(half, half[1:], strict=False)]
    flips = [d1 * d2 < 0 for d1, d2 in zip(diffs, diffs[1:], strict=False)]
    return _Trend(
        n,
        first,
        last,
        (first - last) / first,
        statistics.median(abs(d) for d in diffs) / first,
        sum(flips) / max(len(flips), 1),
        _regain(losses) / first,
    )


def _regain(losses: list[float]) -> float:
    """How far the loss went both up and down, beyond minibatch noise: the smaller of the summed rising and falling
    legs of the zigzag through the medians M_j of ``OSC_WINDOW`` steps. A leg turns where the medians move back
    from their extreme by more than k = ``OSC_SE`` standard errors of the difference, a median's being
    1.25·σ_j/√w with σ_j = 1.4826·MAD, the MAD relative to M_j pooled (median) over the windows, since minibatch
    noise scales with the loss. A descent only falls and a climb only rises: both give 0."""
    w = OSC_WINDOW
    windows = [losses[i : i + w] for i in range(0, len(losses) - w + 1, w)]
    med = [statistics.median(x) for x in windows]
    if len(med) < 2:
        return 0.0
    spread = statistics.median(
        statistics.median(abs(v - m) for v in x) / m if m > 0 else 0.0 for x, m in zip(windows, med, strict=True)
    )
    se = [1.2533 * 1.4826 * spread * m / math.sqrt(w) for m in med]

    def moved(a: int, b: int) -> float:  # how far med[b] is from med[a], beyond noise (signed, 0 within it)
        d, noise = med[b] - med[a], OSC_SE * math.hypot(se[a], se[b])
        return d if abs(d) > noise else 0.0

    legs = {1: 0.0, -1: 0.0}
    trend, pivot, lo, hi = 0, 0, 0, 0
    for j in range(1, len(med)):
        if trend == 0:  # no move beyond noise yet: from the lowest or highest median so far
            lo, hi = (j if med[j] < med[lo] else lo), (j if med[j] > med[hi] else hi)
            if moved(lo, j) > 0:
                trend, pivot, ext = 1, lo, j
            elif moved(hi, j) < 0:
                trend, pivot, ext = -1, hi, j
            continue
        if (med[j] - med[ext]) * trend >= 0:
            ext = j  # the leg goes on
        elif moved(ext, j) * trend < 0:  # turned beyond noise
            legs[trend] += abs(med[ext] - med[pivot])
            trend, pivot, ext = -trend, ext, j
    if trend:
        legs[trend] += abs(med[ext] - med[pivot])
    return min(legs.values())


def _oscillates(t: _Trend) -> bool:
    bounces = t.amplitude > OSC_AMPLITUDE and t.flips >= OSC_MIN_FLIPS
    return (bounces or t.regain > OSC_REGAIN) and t.drop < OSC_MAX_DROP


def _early_rise(f: Findings) -> tuple[int, float] | None:
    """(step, ratio) of the highest batch loss in the first tenth of the run (at least 5 steps) over the untrained
    loss of step 0, when above ``LR_LOSS_RISE``; None otherwise."""
    steps, losses = _finite_series(f, LOSS)
    if len(losses) < 5 or not steps or steps[0] != 0 or not losses[0] > 0:
        return None
    head = max(5, len(losses) // 10)
    i = max(range(1, min(head, len(losses))), key=losses.__getitem__)
    ratio = losses[i] / losses[0]
    return (steps[i], ratio) if ratio > LR_LOSS_RISE else None


def _finite_series(f: Findings, metric: str) -> tuple[list[int], list[float]]:
    steps, values = f.records.series(metric, MODEL)
    kept = [(t, v) for t, v in zip(steps, values, strict=True) if isinstance(v, int | float) and math.isfinite(v)]
    return [t for t, _ in kept], [float(v) for _, v in kept]


def _fastest_update(f: Findings) -> tuple[str, float] | None:
    """The layer with the largest median update ratio ‖ΔW‖/‖W‖, and that median; None when none was recorded."""
    med = _layer_medians(f, UPDATE_RATIO)
    if not med:
        return None
    name = max(med, key=med.get)
    return name, med[name]


def _train_loss_at(f: Findings, steps: list[int]) -> list[float | None]:
    """The training loss at each evaluation step: the epoch's ``train_loss`` when recorded there (``fit()``), else
    the median batch loss since the previous evaluation (a loop of your own with ``Doctor.observe(loss=...)``)."""
    epoch = dict(zip(*_finite_series(f, TRAIN_LOSS), strict=True))
    if all(t in epoch for t in steps):
        return [epoch[t] for t in steps]
    batch_steps, batch = _finite_series(f, LOSS)
    out: list[float | None] = []
    for i, t in enumerate(steps):
        start = steps[i - 1] if i else -1
        out.append(_median(v for u, v in zip(batch_steps, batch, strict=True) if start < u <= t))
    return out


def _signal_fix(s: Mapping[str, Any], residual: bool = True) -> dict[str, Any]:
    """Init matched to the activation and batch norm; residual connections once both are in place."""
    good = GOOD_INITS.get(s.get("model.activation", "relu"), GOOD_INITS["relu"])
    fix: dict[str, Any] = {}
    if s.get("init.scheme") not in good:
        fix["init.scheme"] = good[0]
    if s.get("model.norm", "none") == "none":
        fix["model.norm"] = "batch"
    if residual and not fix and not s.get("model.residual"):
        fix["model.residual"] = True
    return fix


def _lower_lr(s: Mapping[str, Any], factor: float) -> dict[str, Any]:
    lr = s.get("optim.lr")
    return {"optim.lr": float(f"{lr / factor:.3g}")} if isinstance(lr, int | float) else {}
