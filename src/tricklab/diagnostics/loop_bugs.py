"""Loop bugs: the silent errors of a training loop, named from its invariants, and the rule "one cause, one fix".

The model checks of :mod:`~tricklab.diagnostics.verdicts` name problems of the net (vanishing, exploding, dead
units, a too-high LR). The bugs people most often write are in the loop, and nothing crashes: the run just ends
worse. Loss and gradient monitors catch few of them; checks of the loop's invariants (the gradient is zeroed
between steps, every trainable tensor is in the optimizer, the step changes the weights, ...) catch most within an
iteration (TrainCheck: Jiang et al., OSDI 2025). :class:`~tricklab.diagnostics.loop_watch.LoopWatch` records the
invariants as plain numbers (on sampled steps where it can, so the loop pays little); the checks below read them.
This module imports no torch.

===============================  ===============================================================  ====================
verdict                          fires when                                                        threshold (constant)
===============================  ===============================================================  ====================
``gradients_accumulate``         at the first backward after an audited step, some parameter's    ``ACCUM_MIN_CHECKS``
                                 ``.grad`` still holds the previous step's gradient (not None, not 2
                                 zero), at this many checks: ``zero_grad`` is missing or zeroes
                                 another optimizer's parameters
``params_not_in_optimizer``      parameters that require grad are in no param group of the        ``UNOPTIMIZED_MIN``
                                 optimizer (named, with their share of the weights)               1 tensor
``gradient_cut``                 a layer called in the forward whose ``.grad`` is None (or         ``CUT_MIN_SAMPLES``
                                 exactly 0, when no dead ReLU layer explains it) at every audited 2
                                 step, while others get one: a ``.detach()`` / ``torch.no_grad()``
                                 cuts the graph; the layer behind the cut is named
``frozen_weights``               parameters with ``requires_grad = False`` hold more than this    ``FROZEN_SHARE`` 0.5
                                 share of the weights, and the output layer (the last called
                                 with weights) is frozen whole: only a small part learns
``step_changes_nothing``         at every audited step (at least this many) the step has nothing  ``CUT_MIN_SAMPLES``
                                 to apply: every gradient None (step before backward), every      2
                                 gradient exactly 0 (zero_grad between backward and step), or the
                                 LR 0 in every param group
``eval_mode_training``           more than this share of the optimizer steps ran their forward    ``EVAL_MAX_SHARE``
                                 with the model in eval mode, and it has dropout or batch norm    0.05
``probabilities_to_loss``        the output rows are ≥ 0 and sum to 1 (probabilities) at this     ``PROB_MIN_SHARE``
                                 share of the audited steps, or the loss's autograd graph applies 0.5
                                 a log-softmax to a softmax's output (a softmax in the loss code)
``lr_schedule_runaway``          the LR the optimizer used was below this × its peak for more     ``LR_COLLAPSE`` 1e-3
                                 than this share of the sampled steps (collapsed), or reached     ``LR_COLLAPSE_SHARE``
                                 this × the LR it was built with (exploded); the schedulers       0.25; ``LR_EXPLODE``
                                 attached to the optimizer are named with their step counts (not  100
                                 judged in ``fit()``, which steps its schedules as written)
``batches_not_shuffled``         two labels of one batch are equal far more often than two of the ``SHUFFLE_EXCESS``
                                 whole stream: (c − q)/(1 − q) above, with c the within-batch     0.5
                                 rate, q = Σ p_c² (at least ``SHUFFLE_MIN_BATCHES`` = 3 batches
                                 and ``SHUFFLE_MIN_PAIRS`` = 200 label pairs)
``labels_independent_of_inputs`` the loss fell to the label-prior loss (what predicting the class   ``PRIOR_MARGIN``
                                 frequencies costs) and stays there, the weights moving and no    0.05 (verdicts.py)
                                 signal problem in the way
``weight_decay_dominates``       λ‖W‖ / ‖∇L‖ at the first sampled step (before the decay has      ``DECAY_DOMINATES``
                                 shrunk the weights: once it has, λW only balances the gradient)  10; ``DECAY_SHRINK``
                                 above (AdamW, whose decay is decoupled: λ‖W‖ / √n, n the         0.5
                                 weights' count, the norm of Adam's early ±1 steps); or ‖W‖ of
                                 the decayed weights fell to this × its first value while the
                                 loss stayed at its start level (fell < 1%, or ended at chance)
``clipping_dominates``           median ‖g‖ before clipping / after above (divided by the scale   ``CLIP_DOMINATES``
                                 of a GradScaler, whose unscale_ also divides it; a factor that   10
                                 is a power of two at every step is a scale, not clipping)
``loss_broadcasts``              an element-wise loss (F.mse_loss, l1, smooth_l1, huber, bce)     any
                                 expanded its input to its target's shape: (N, 1) against (N,)
                                 gives (N, N) (read off the loss's autograd graph)
``same_batch_every_step``        the input of step t+1 is the input of step t in at least this    ``SAME_BATCH_SHARE``
                                 share of the checked pairs (at least ``SAME_BATCH_MIN_PAIRS`` =  0.9
                                 3)
===============================  ===============================================================  ====================

Sampled steps are every ``every``-th (the LR and the input hash are read there); the checks that read every
gradient or the output run on the audited ones: the first five sampled steps, then every fifth
(:data:`~tricklab.diagnostics.loop_watch.AUDIT_FIRST`), since the bugs they look for are in the loop's code from the
start. Not checked: a fixed (unshuffled) but not sorted order that repeats every epoch, which costs little.

Log-probabilities (rows ≤ 0 that log-sum-exp to 0, ``log_softmax`` last) are recorded but not a verdict: with
``F.cross_entropy`` they give the same loss and gradient as the logits (log_softmax is idempotent), and with
``F.nll_loss`` they are what it expects.

**One cause, one fix.** When a cause is found, the symptoms it explains (:data:`EXPLAINS`) are kept as its
consequences: ``Verdict.cause`` names it, their prescription is withheld, and the cause's fix is the one given
(a missing ``zero_grad`` is not told to lower the LR). Loop bugs come first, then the model causes: a too-high LR
explains dead ReLUs and gradients that blew up or overflowed during training (not at init: that is the weights'
scale); raw inputs explain exploding gradients, overflow, a too-high LR and saturated or dead units.

Why the thresholds have their values: ``docs/verdicts-why.md``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from typing import Any

from tricklab.diagnostics.records import DEAD_FRACTION, MODEL, Findings
from tricklab.diagnostics.verdicts import (
    DEAD_MAX,
    PRIOR_MARGIN,
    SIGNAL_CHECKS,
    Check,
    Verdict,
    loss_at_start_level,
    prior_only,
)
from tricklab.registry import Registry

# --- what LoopWatch records (layer MODEL unless said) ---------------------------------------------------------------
LOOP_STEPS = "loop_steps"  # optimizer steps seen (at the last one)
LOOP_UNOPTIMIZED = "loop_unoptimized"  # once: {"names", "tensors", "of", "numel", "numel_of"}
LOOP_GRAD_STATE = "loop_grad_state"  # per module, sampled steps: 0 a gradient, 1 exactly 0, 2 None
LOOP_STEP_GRADS = "loop_step_grads"  # sampled steps, over the optimizer's parameters: 0, 1 all zero, 2 all None
LOOP_LR = "loop_lr"  # sampled steps: the largest LR of the param groups
LOOP_BASE_LR = "loop_base_lr"  # once: the LR the optimizer was built with (a scheduler's initial_lr)
LOOP_SCHEDULERS = "loop_schedulers"  # at the end, when the LR changed: [[class name, step count], ...]
LOOP_ACCUMULATED = "loop_accumulated"  # the step after a sampled one: share of tensors whose .grad was not zeroed
LOOP_EVAL = "loop_eval"  # at the end: [steps whose forward ran in eval mode, steps with a forward, first such step]
LOOP_MODE_LAYERS = "loop_mode_layers"  # once: the dropout / batch-norm modules (their names)
LOOP_OUTPUT = "loop_output_kind"  # sampled steps: 0 other, 1 probabilities, 2 log-probabilities
LOOP_LAST_MODULE = "loop_last_module"  # once: the class name of the model's last child module
LOOP_LABEL_PAIRS = "loop_label_pairs"  # sampled batches: [equal label pairs, label pairs]
LOOP_LABEL_POOLED = "loop_label_pooled"  # at the end: Σ p_c² of the labels counted
LOOP_DECAY = "loop_decay_ratio"  # audited steps: λ‖W‖ / ‖∇L‖ (decoupled: / √n)
LOOP_DECAYED_NORM = "loop_decayed_norm"  # audited steps: ‖W‖ of the parameters that decay
LOOP_DECAY_SETTING = "loop_decay_setting"  # once: {"weight_decay": the largest λ, "decoupled": bool}
LOOP_CLIP = "loop_clip_factor"  # sampled steps: ‖g‖ after backward / ‖g‖ the step used
LOOP_PRECLIP = "loop_preclip_norm"  # audited steps: ‖g‖ after backward
LOOP_AMP_SCALE = "loop_amp_scale"  # at the end, when the gradient shrank: a GradScaler's scale (its unscale_ divides)
LOOP_INPUT_HASH = "loop_input_hash"  # steps t and t+1 of each sample: a hash of the input batch
LOOP_BROADCAST = "loop_broadcast"  # once: the shape of the loss input that the loss expanded to its target's
LOOP_SOFTMAX_LOSS = "loop_softmax_in_loss"  # once: the loss's graph applies a log-softmax to a softmax's output
LOOP_FROZEN = "loop_frozen"  # once: {"modules", "param_modules", "tensors", "of", "numel", "numel_of", "in_optimizer"}

# --- verdict names (a contract: benchmarks/loop_bugs.py is written against them) ----------------------------------
GRADIENTS_ACCUMULATE = "gradients_accumulate"
PARAMS_NOT_IN_OPTIMIZER = "params_not_in_optimizer"
GRADIENT_CUT = "gradient_cut"
STEP_CHANGES_NOTHING = "step_changes_nothing"
EVAL_MODE_TRAINING = "eval_mode_training"
PROBABILITIES_TO_LOSS = "probabilities_to_loss"
LR_SCHEDULE_RUNAWAY = "lr_schedule_runaway"
BATCHES_NOT_SHUFFLED = "batches_not_shuffled"
LABELS_INDEPENDENT = "labels_independent_of_inputs"
WEIGHT_DECAY_DOMINATES = "weight_decay_dominates"
CLIPPING_DOMINATES = "clipping_dominates"
LOSS_BROADCASTS = "loss_broadcasts"
SAME_BATCH = "same_batch_every_step"
FROZEN_WEIGHTS = "frozen_weights"

# --- thresholds (see the table) -----------------------------------------------------------------------------------
ACCUM_MIN_CHECKS = 2
UNOPTIMIZED_MIN = 1
CUT_MIN_SAMPLES = 2
EVAL_MAX_SHARE = 0.05
PROB_MIN_SHARE = 0.5
PROB_TOLERANCE = 1e-3  # |Σ row − 1| (or |logsumexp row|) below this counts as a distribution
LR_COLLAPSE = 1e-3
LR_COLLAPSE_SHARE = 0.25
LR_COLLAPSE_MIN_SAMPLES = 4
LR_EXPLODE = 100.0  # reached or passed: two orders of magnitude
LR_EXPLODE_RTOL = 1e-9  # ... up to the rounding of an LR made by repeated products (1e-3 · 10 · 10)
SHUFFLE_EXCESS = 0.5
SHUFFLE_MIN_BATCHES = 3
SHUFFLE_MIN_PAIRS = 200
DECAY_DOMINATES = 10.0
DECAY_SHRINK = 0.5  # ... or ‖W‖ of the decayed weights fell to this × its first value, the loss at its start level
FROZEN_SHARE = 0.5
CLIP_DOMINATES = 10.0
CLIP_MIN_SAMPLES = 2
SAME_BATCH_SHARE = 0.9
SAME_BATCH_MIN_PAIRS = 3

#: The loop checks, run by :func:`~tricklab.diagnostics.diagnosis.diagnose` after the model checks.
LOOP_CHECKS: Registry[Check] = Registry("loop check")


def _once(f: Findings, metric: str) -> tuple[int, Any] | None:
    steps, values = f.records.series(metric, MODEL)
    return (steps[0], values[0]) if values else None


def _g(x: float) -> str:
    return f"{x:.2g}"


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return f"{shown} (+{len(names) - most} more)" if len(names) > most else shown


# --- the checks -----------------------------------------------------------------------------------------------------


@LOOP_CHECKS.register(GRADIENTS_ACCUMULATE, help="the gradient is not zeroed between steps")
def check_accumulate(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, shares = f.records.series(LOOP_ACCUMULATED, MODEL)
    hits = [(t, v) for t, v in zip(steps, shares, strict=True) if v > 0]
    if len(hits) < ACCUM_MIN_CHECKS:
        return None
    worst = max(v for _, v in hits)
    return Verdict(
        GRADIENTS_ACCUMULATE,
        f"at the first backward of {len(hits)} of {len(steps)} checked steps (first at step {hits[0][0]}), "
        f"{worst:.0%} of the parameters' .grad still held the previous step's gradient: backward adds to .grad, "
        "so each step applies the sum of every gradient since the start, a step that grows without bound",
        (MODEL,),
        {"checks": len(steps), "not_zeroed": len(hits), "share_not_zeroed": worst},
        {},
        "optimizer.zero_grad() is missing from the loop, or called on another optimizer than the one stepped "
        "(or on another model); gradients accumulated on purpose must be zeroed after each optimizer.step()",
        first_step=hits[ACCUM_MIN_CHECKS - 1][0],
        code="zero the gradients of the optimizer you step, once per step: `optimizer.zero_grad()` before "
        "`loss.backward()` (with several optimizers, each one's, or `model.zero_grad()`)",
    )


@LOOP_CHECKS.register(PARAMS_NOT_IN_OPTIMIZER, help="trainable parameters in no param group")
def check_unoptimized(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    found = _once(f, LOOP_UNOPTIMIZED)
    if found is None or found[1]["tensors"] < UNOPTIMIZED_MIN:
        return None
    step, u = found
    share = u["numel"] / u["numel_of"] if u["numel_of"] else 0.0
    names = list(u["names"])
    return Verdict(
        PARAMS_NOT_IN_OPTIMIZER,
        f"{u['tensors']} of {u['of']} parameter tensors that require grad, {share:.0%} of the weights, are in no "
        f"param group of the optimizer and are never updated: {_names(names)}",
        tuple(dict.fromkeys(n.rsplit(".", 1)[0] if "." in n else n for n in names)),
        {"tensors": u["tensors"], "of": u["of"], "weight_share": share},
        {},
        "the optimizer was built on part of the model (e.g. `model.head.parameters()`, or before a layer was "
        "added); backward still computes their gradients, but no step applies them",
        first_step=step,
        code="build the optimizer on every trainable parameter: `torch.optim.SGD(model.parameters(), ...)`, or add "
        'the rest: `optimizer.add_param_group({"params": [...]})`; if they are meant to stay fixed, '
        "`p.requires_grad_(False)` on them (which also saves their backward)",
    )


@LOOP_CHECKS.register(GRADIENT_CUT, help="layers used in the forward that never get a gradient")
def check_cut(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    called = {info.name: info.index for info in f.layers}
    if _always(f, LOOP_STEP_GRADS, lambda v: v >= 1) or not called:
        return None  # nothing at all reaches the step: step_changes_nothing
    dead = any(v > DEAD_MAX for la in f.records.layers(DEAD_FRACTION) for v in f.records.series(DEAD_FRACTION, la)[1])
    cut, nones, samples = [], 0, 0
    for layer in f.records.layers(LOOP_GRAD_STATE):
        steps, states = f.records.series(LOOP_GRAD_STATE, layer)
        if layer not in called or len(states) < CUT_MIN_SAMPLES:
            continue
        if all(v == 2 for v in states) or (not dead and all(v >= 1 for v in states)):
            cut.append(layer)
            nones += all(v == 2 for v in states)
            samples = max(samples, len(states))
    flowing = [la for la in f.records.layers(LOOP_GRAD_STATE) if la in called and la not in cut]
    if not cut or not flowing:
        return None
    cut.sort(key=called.get)
    behind = cut[-1]  # the last layer in forward order that the gradient does not reach
    steps = f.records.series(LOOP_GRAD_STATE, behind)[0]
    how = "is None" if nones == len(cut) else "is None or exactly 0"
    return Verdict(
        GRADIENT_CUT,
        f"{len(cut)} layer(s) called in the forward never got a gradient (.grad {how} at all {samples} sampled "
        f"steps) while {len(flowing)} other(s) did: the backward pass stops before them (first layer behind the cut: "
        f"{behind}; {_names(cut)})",
        tuple(cut),
        {"layers_cut": len(cut), "samples": samples},
        {},
        "a `.detach()`, `.data`, `.item()`/`.numpy()` round trip, `torch.no_grad()` or `requires_grad_(False)` on "
        f"an activation between {behind} and the loss cuts the backward pass: {behind} and the layers before it are "
        "never trained",
        first_step=steps[CUT_MIN_SAMPLES - 1],
        code=f"keep the graph from the output of {behind} to the loss in `forward`: remove the `.detach()` / `.data` / "
        "`with torch.no_grad():` there (freeze layers with `p.requires_grad_(False)` on their parameters instead)",
    )


@LOOP_CHECKS.register(FROZEN_WEIGHTS, help="most weights, the output layer's among them, frozen (requires_grad=False)")
def check_frozen(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    found = _once(f, LOOP_FROZEN)
    if found is None or not found[1]["numel_of"]:
        return None
    step, u = found
    share = u["numel"] / u["numel_of"]
    order = {info.name: info.index for info in f.layers}
    owners = list(u["param_modules"])  # registration order where the forward order is not known
    called = sorted((m for m in owners if m in order), key=order.get)
    output = (called or owners)[-1] if owners else None
    if share <= FROZEN_SHARE or output not in u["modules"]:
        return None
    given = u["in_optimizer"]
    handed = f"; the optimizer was given {given} of them" if given else ""
    return Verdict(
        FROZEN_WEIGHTS,
        f"{u['tensors']} of {u['of']} parameter tensors, {share:.0%} of the weights, have requires_grad = False, the "
        f"output layer {output} among them{handed}: they never get a gradient and keep their values, so only "
        f"{1 - share:.0%} of the weights learn (frozen: {_names(list(u['modules']))})",
        tuple(u["modules"]),
        {"tensors": u["tensors"], "of": u["of"], "weight_share": share, "in_optimizer": given},
        {},
        "the layers were frozen (`p.requires_grad = False`, `requires_grad_(False)`) and not unfrozen, or frozen "
        "after a new head was put on the model: a fine-tuning freezes the pretrained body and trains the head",
        first_step=step,
        code="unfreeze what should learn: `for p in model.parameters(): p.requires_grad_(True)` (or at least the "
        f"head's: `model.get_submodule({output!r}).requires_grad_(True)`), then build the optimizer on "
        "`[p for p in model.parameters() if p.requires_grad]`",
    )


@LOOP_CHECKS.register(STEP_CHANGES_NOTHING, help="the optimizer step has no gradient or a zero LR")
def check_step_nothing(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, grads = f.records.series(LOOP_STEP_GRADS, MODEL)
    lrs = f.records.series(LOOP_LR, MODEL)[1]
    if len(grads) < CUT_MIN_SAMPLES:
        return None
    if all(v == 2 for v in grads):
        why = (
            "every parameter's .grad is None when optimizer.step() runs: the step comes before loss.backward() (or "
            "zero_grad(set_to_none=True) runs between backward and step)"
        )
    elif all(v >= 1 for v in grads):
        why = "every gradient is exactly 0 when optimizer.step() runs: zero_grad() runs between backward and step"
    elif len(lrs) >= CUT_MIN_SAMPLES and all(v == 0 for v in lrs):
        why = "the learning rate is 0 in every param group"
    else:
        return None
    return Verdict(
        STEP_CHANGES_NOTHING,
        f"at all {len(grads)} sampled steps the optimizer step had nothing to apply, so the weights do not change: "
        f"{why}",
        (MODEL,),
        {"samples": len(grads)},
        {},
        why,
        first_step=steps[CUT_MIN_SAMPLES - 1],
        code="in this order, every step: `optimizer.zero_grad()`, `loss = loss_fn(model(x), y)`, `loss.backward()`, "
        '`optimizer.step()`; and an LR > 0 (`for g in optimizer.param_groups: print(g["lr"])`)',
    )


@LOOP_CHECKS.register(EVAL_MODE_TRAINING, help="training forwards in eval mode with dropout/batch norm")
def check_eval_mode(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    ev, modes = _once(f, LOOP_EVAL), _once(f, LOOP_MODE_LAYERS)
    if ev is None or modes is None or not modes[1]:
        return None
    evals, total, first = ev[1]
    if not total or evals / total <= EVAL_MAX_SHARE:
        return None
    return Verdict(
        EVAL_MODE_TRAINING,
        f"{evals} of {total} optimizer steps ({evals / total:.0%}, first at step {first}) ran their forward with the "
        f"model in eval mode, and it has dropout / batch norm ({_names(list(modes[1]))}): dropout is off and batch "
        "norm normalizes with its running statistics instead of the batch's",
        tuple(modes[1]),
        {"eval_steps": evals, "steps": total, "eval_share": evals / total},
        {},
        "model.eval() (for validation) is not undone before training resumes, or model.train() is never called",
        first_step=first,
        code="call `model.train()` before the training forwards of each epoch (and after every validation, which "
        "calls `model.eval()`)",
    )


@LOOP_CHECKS.register(PROBABILITIES_TO_LOSS, help="probabilities, not logits, given to a log-softmax loss")
def check_probabilities(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, kinds = f.records.series(LOOP_OUTPUT, MODEL)
    hits = [t for t, k in zip(steps, kinds, strict=True) if k == 1]
    in_loss = _once(f, LOOP_SOFTMAX_LOSS)
    rows = bool(kinds) and len(hits) / len(kinds) >= PROB_MIN_SHARE
    if not rows and in_loss is None:
        return None
    last = _once(f, LOOP_LAST_MODULE)
    hint = f" (its last module is nn.{last[1]})" if last and last[1] in ("Softmax", "Softmax2d") else ""
    seen = []
    if rows:
        seen.append(f"the model's output rows are probabilities (≥ 0, summing to 1) at {len(hits)} of {len(kinds)} "
                    f"sampled steps{hint}")  # fmt: skip
    if in_loss is not None:
        seen.append("the loss's autograd graph applies a log-softmax (F.cross_entropy's own, or F.log_softmax) to "
                    f"the output of a softmax (first seen at step {in_loss[0]})")  # fmt: skip
    first = min([*hits[:1], *([in_loss[0]] if in_loss else [])])
    return Verdict(
        PROBABILITIES_TO_LOSS,
        "; ".join(seen) + ": the log-softmax is applied to numbers already squeezed into [0, 1], so the loss cannot "
        "fall below ln((e + C − 1)/e) for C classes (1.46 for 10) and its gradient is small",
        (MODEL,),
        {"samples": len(kinds), "probability_samples": len(hits), "softmax_in_loss": in_loss is not None},
        {},
        "a softmax at the end of the model (nn.Softmax, F.softmax) or in the loss code, before F.cross_entropy / "
        "nn.CrossEntropyLoss or F.log_softmax + F.nll_loss, which expect raw scores (logits)",
        first_step=first,
        code="give the loss the logits: drop the `nn.Softmax` / `F.softmax` before it (apply softmax only when you "
        "need probabilities, e.g. `probs = model(x).softmax(-1)` at prediction); `F.cross_entropy(logits, y)` or "
        "`F.nll_loss(F.log_softmax(logits, -1), y)`",
    )


@LOOP_CHECKS.register(LR_SCHEDULE_RUNAWAY, help="the LR used collapsed or exploded (a scheduler stepped per batch)")
def check_lr_runaway(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, lrs = f.records.series(LOOP_LR, MODEL)
    base = _once(f, LOOP_BASE_LR)
    if len(lrs) < LR_COLLAPSE_MIN_SAMPLES or base is None:
        return None
    peak = max(max(lrs), base[1])
    low = [t for t, v in zip(steps, lrs, strict=True) if v < LR_COLLAPSE * peak]
    ceiling = LR_EXPLODE * base[1] * (1 - LR_EXPLODE_RTOL)
    high = [t for t, v in zip(steps, lrs, strict=True) if base[1] > 0 and v >= ceiling]
    if peak <= 0 or not (high or len(low) / len(lrs) > LR_COLLAPSE_SHARE):
        return None
    if high:
        how, first = f"rose to {_g(max(lrs))}, {_g(max(lrs) / base[1])}× the {_g(base[1])} it was built with", high[0]
    else:
        how = (
            f"fell to {_g(lrs[-1])} ({_g(lrs[-1] / peak)}× its peak {_g(peak)}) and stayed below {LR_COLLAPSE:g}× the "
            f"peak for {len(low) / len(lrs):.0%} of the run"
        )
        first = low[0]
    scheds = _once(f, LOOP_SCHEDULERS)
    n_steps = _once(f, LOOP_STEPS)
    stepped = ""
    if scheds and scheds[1]:
        total = n_steps[1] if n_steps else None
        stepped = "; " + ", ".join(f"{name} was stepped {count} times" for name, count in scheds[1])
        if total:
            stepped += f" in {total} optimizer steps"
    return Verdict(
        LR_SCHEDULE_RUNAWAY,
        f"the learning rate the optimizer used {how}{stepped}",
        (MODEL,),
        {"lr_first": lrs[0], "lr_last": lrs[-1], "lr_peak": peak, "lr_base": base[1]},
        {},
        "an LR schedule written in epochs (StepLR, ExponentialLR, CosineAnnealingLR with T_max in epochs) stepped "
        "once per batch runs through its whole schedule within the first epochs",
        first_step=first,
        code="step an epoch schedule once per epoch: `scheduler.step()` after the loop over batches, not inside it "
        "(or give it its length in batches: `T_max=epochs * len(loader)`, `step_size=... * len(loader)`)",
    )


@LOOP_CHECKS.register(BATCHES_NOT_SHUFFLED, help="batches of one class at a time (data sorted, not shuffled)")
def check_shuffled(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, pairs = f.records.series(LOOP_LABEL_PAIRS, MODEL)
    pooled = _once(f, LOOP_LABEL_POOLED)
    if pooled is None or len(pairs) < SHUFFLE_MIN_BATCHES or pooled[1] >= 1:
        return None
    q = pooled[1]
    same = total = 0
    first = None
    for i, (t, (a, b)) in enumerate(zip(steps, pairs, strict=True)):
        same, total = same + a, total + b
        certain = i + 1 >= SHUFFLE_MIN_BATCHES and total >= SHUFFLE_MIN_PAIRS
        if certain and first is None and (same / total - q) / (1 - q) > SHUFFLE_EXCESS:
            first = t
    if total < SHUFFLE_MIN_PAIRS:
        return None
    c = same / total
    excess = (c - q) / (1 - q)
    if excess <= SHUFFLE_EXCESS:
        return None
    return Verdict(
        BATCHES_NOT_SHUFFLED,
        f"two labels of the same batch are equal {c:.0%} of the time, against {q:.0%} for two labels of the whole "
        f"stream ({len(pairs)} sampled batches): each batch holds one class or a few, not a sample of all of them",
        (MODEL,),
        {"within_batch_equal": c, "stream_equal": q, "excess": excess, "batches": len(pairs)},
        {},
        "the data are ordered (sorted by class, or concatenated class by class) and the batches are taken in that "
        "order: each step pulls the net towards one class, and the loss swings from batch to batch",
        first_step=first,
        code="shuffle every epoch: `DataLoader(dataset, batch_size=..., shuffle=True)`, or `perm = "
        "torch.randperm(len(x))` each epoch and batches of `x[perm]`, `y[perm]` (the same perm for both)",
    )


@LOOP_CHECKS.register(LABELS_INDEPENDENT, help="the loss stays at the label prior: labels do not match the inputs")
def check_labels_independent(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    found = prior_only(f)
    if found is None or any(check(f, s) is not None for check in SIGNAL_CHECKS.values()):
        return None
    trend, prior = found
    return Verdict(
        LABELS_INDEPENDENT,
        f"the loss fell from {_g(trend.first)} to {_g(trend.last)} in {trend.n} steps and stays within "
        f"{abs(trend.last / prior - 1):.0%} of {_g(prior)}, the loss of predicting the label frequencies without "
        "looking at the input, while the weights move: the net learned how often each class occurs and nothing "
        "from the inputs",
        (MODEL,),
        {"loss_first": trend.first, "loss_last": trend.last, "label_prior_loss": prior},
        {},
        "the labels do not belong to their inputs: x and y shuffled or indexed separately (a `randperm` applied to "
        "one of them, two shuffled loaders zipped, a sort of one), an off-by-one between them, or inputs that do "
        "not vary; a net that learns very slowly looks the same in a short run",
        code="index inputs and labels together: one `TensorDataset(x, y)` in one `DataLoader(..., shuffle=True)`, "
        "or `perm = torch.randperm(len(x)); x, y = x[perm], y[perm]`; then look at a few pairs (`x[0]`, `y[0]`)",
    )


@LOOP_CHECKS.register(WEIGHT_DECAY_DOMINATES, help="the decay term λ‖W‖ ≫ ‖∇L‖, or the weights shrink to 0")
def check_decay(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, ratios = f.records.series(LOOP_DECAY, MODEL)
    norm_steps, norms = f.records.series(LOOP_DECAYED_NORM, MODEL)
    dominates = bool(ratios) and math.isfinite(ratios[0]) and ratios[0] > DECAY_DOMINATES
    shrunk_at = _decay_collapse(norm_steps, norms)
    flat = loss_at_start_level(f) if shrunk_at is not None else None
    if not dominates and flat is None:
        return None
    setting = (_once(f, LOOP_DECAY_SETTING) or (0, {}))[1]
    wd = setting.get("weight_decay", float("nan"))
    against = "√n (Adam's unit step; AdamW decays apart from it)" if setting.get("decoupled") else "‖∇L‖"
    ok = [(t, v) for t, v in zip(norm_steps, norms, strict=True) if math.isfinite(v)]
    shrink = ok[-1][1] / ok[0][1] if len(ok) > 1 and ok[0][1] > 0 else None
    shrunk = f"‖W‖ went from {_g(ok[0][1])} to {_g(ok[-1][1])}" if shrink is not None else ""
    pull = f"weight decay's pull λ‖W‖ was {_g(ratios[0])}× {against} at step {steps[0]}" if ratios else ""
    if dominates:
        summary = (
            f"{pull} (weight_decay = {_g(wd)}; > {DECAY_DOMINATES:g}×): the steps shrink the weights towards 0 until "
            "the decay only balances the gradient" + (f"; {shrunk}" if shrunk else "")
        )
        first = steps[0]
    else:
        trend, prior = flat
        level = f"within {PRIOR_MARGIN:.0%} of the label-prior loss {_g(prior)}" if prior else "at its start level"
        summary = (
            f"the decayed weights shrank, {shrunk} (≤ {DECAY_SHRINK:g}× by step {shrunk_at}), while the loss stayed "
            f"{level} ({_g(trend.first)} → {_g(trend.last)}; weight_decay = {_g(wd)}"
            + (f"; {pull}" if pull else "")
            + "): the loss gradient did not shrink them, the decay did, and the net is pulled towards a constant output"
        )
        first = shrunk_at
    return Verdict(
        WEIGHT_DECAY_DOMINATES,
        summary,
        (MODEL,),
        {
            **({"decay_over_grad": ratios[0]} if ratios else {}),
            "weight_decay": wd,
            **({"weight_norm_ratio": shrink} if shrink else {}),
        },
        {},
        "weight_decay is set orders of magnitude too high (a typo such as 1e-1 for 1e-4, or an L2 term added to the "
        "loss on top of the optimizer's)",
        first_step=first,
        code="a weight decay the gradient can work against: `weight_decay=5e-4` (SGD) or `1e-2` (AdamW) where you "
        "build the optimizer, and no extra L2 term in the loss",
    )


def _decay_collapse(steps: list[int], norms: list[float]) -> int | None:
    """The first step at which ‖W‖ of the decayed weights was at most ``DECAY_SHRINK`` × its first value, or None."""
    ok = [(t, v) for t, v in zip(steps, norms, strict=True) if math.isfinite(v)]
    if len(ok) < 2 or not ok[0][1] > 0:
        return None
    return next((t for t, v in ok[1:] if v <= DECAY_SHRINK * ok[0][1]), None)


@LOOP_CHECKS.register(CLIPPING_DOMINATES, help="gradient clipping rescales every step by a large factor")
def check_clipping(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, factors = f.records.series(LOOP_CLIP, MODEL)
    amp = (_once(f, LOOP_AMP_SCALE) or (0, 1.0))[1]  # a GradScaler's unscale_ divides by its scale: not clipping
    factors = [v / amp for v in factors]
    ok = [v for v in factors if math.isfinite(v) and v > 0]
    if len(ok) < CLIP_MIN_SAMPLES:
        return None
    med = statistics.median(ok)
    if med <= CLIP_DOMINATES:
        return None
    exp = math.log2(ok[0])
    if all(abs(math.log2(v) - round(exp)) < 1e-3 for v in ok):
        return None  # a scale that changed during the run (a power of two at every step), not clipping
    pre = statistics.median(v for v in f.records.series(LOOP_PRECLIP, MODEL)[1] if math.isfinite(v)) / amp
    first = next(t for t, v in zip(steps, factors, strict=True) if v > CLIP_DOMINATES)
    return Verdict(
        CLIPPING_DOMINATES,
        f"gradient clipping divides the gradient by a median {_g(med)}× at {len(ok)} sampled steps (‖g‖ {_g(pre)} "
        f"after backward, {_g(pre / med)} at the step; > {CLIP_DOMINATES:g}×): the run trains at an LR "
        f"{_g(med)}× lower than the one set",
        (MODEL,),
        {"clip_factor": med, "grad_norm_before_clip": pre},
        {},
        "max_norm (or clip_value) is orders of magnitude below the gradient's usual norm, so every step is clipped",
        first_step=first,
        code=f"clip only the rare spikes: `torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={_g(pre)})` "
        "(about the usual ‖g‖; the call returns the norm before clipping, log it), or remove the clipping",
    )


@LOOP_CHECKS.register(LOSS_BROADCASTS, help="an element-wise loss broadcast output and target")
def check_broadcast(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    found = _once(f, LOOP_BROADCAST)
    if found is None:
        return None
    step, shape = found
    shown = f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"
    return Verdict(
        LOSS_BROADCASTS,
        f"the loss broadcast its input of shape {shown} against a target of another shape (torch.broadcast_tensors "
        'in the loss\'s graph; PyTorch warns "Using a target size ... different to the input size"): with an '
        "output of (N, 1) and targets of (N,), every output is compared with every target, an (N, N) loss",
        (MODEL,),
        {"input_numel": math.prod(shape)},
        {},
        "the output keeps a trailing dimension of size 1 that the targets lack (or the reverse)",
        first_step=step,
        code="give the loss equal shapes: `loss = F.mse_loss(out.squeeze(-1), y)` (or `y.view_as(out)`)",
    )


@LOOP_CHECKS.register(SAME_BATCH, help="the same input batch every step")
def check_same_batch(f: Findings, s: Mapping[str, Any]) -> Verdict | None:
    steps, hashes = f.records.series(LOOP_INPUT_HASH, MODEL)
    by_step = dict(zip(steps, hashes, strict=True))
    pairs = [(t + 1, by_step[t] == by_step[t + 1]) for t in steps if t + 1 in by_step]
    same = [t for t, eq in pairs if eq]
    if len(pairs) < SAME_BATCH_MIN_PAIRS or len(same) / len(pairs) < SAME_BATCH_SHARE:
        return None
    return Verdict(
        SAME_BATCH,
        f"the model's input at step t+1 was the input of step t in {len(same)} of {len(pairs)} checked pairs of "
        "steps: every step trains on the same batch",
        (MODEL,),
        {"pairs": len(pairs), "same": len(same)},
        {},
        "the batch is drawn with `next(iter(loader))` inside the loop (a new iterator each time: its first batch) "
        "or outside it once; unless that batch is the whole training set (full-batch training), the net fits one "
        "batch",
        first_step=same[min(SAME_BATCH_MIN_PAIRS, len(same)) - 1],
        code="iterate the loader: `for x, y in loader:` (or `it = iter(loader)` once, before the loop, and "
        "`x, y = next(it)` inside)",
    )


def _always(f: Findings, metric: str, test: Any) -> bool:
    values = f.records.series(metric, MODEL)[1]
    return len(values) >= CUT_MIN_SAMPLES and all(test(v) for v in values)


# --- one cause, one fix ---------------------------------------------------------------------------------------------

#: cause → the symptoms (verdict names) it explains. Causes are tried in this order: loop bugs, then model causes.
EXPLAINS: dict[str, tuple[str, ...]] = {
    GRADIENTS_ACCUMULATE: (
        "exploding_gradients",
        "vanishing_gradients",
        "non_finite_values",
        "lr_too_high",
        "dead_relus",
        "saturation",
        "oscillating_loss",
        "loss_not_decreasing",
        "slow_convergence",
    ),
    STEP_CHANGES_NOTHING: ("slow_convergence", "loss_not_decreasing", LABELS_INDEPENDENT),
    # the layers left out keep their large early gradients while the trained ones fit: a first/last ratio that grows
    PARAMS_NOT_IN_OPTIMIZER: ("slow_convergence", "loss_not_decreasing", "exploding_gradients", LABELS_INDEPENDENT),
    GRADIENT_CUT: ("vanishing_gradients", "slow_convergence", "loss_not_decreasing", LABELS_INDEPENDENT),
    FROZEN_WEIGHTS: ("vanishing_gradients", "slow_convergence", "loss_not_decreasing", LABELS_INDEPENDENT),
    EVAL_MODE_TRAINING: (
        "exploding_gradients",
        "vanishing_gradients",
        "dead_relus",
        "saturation",
        "oscillating_loss",
        "loss_not_decreasing",
        "slow_convergence",
        "overfitting",
    ),
    PROBABILITIES_TO_LOSS: (
        "vanishing_gradients",
        "saturation",
        "slow_convergence",
        "loss_not_decreasing",
        LABELS_INDEPENDENT,
    ),
    LR_SCHEDULE_RUNAWAY: (
        "slow_convergence",
        "loss_not_decreasing",
        "lr_too_high",
        "oscillating_loss",
        "exploding_gradients",
        "non_finite_values",
        "dead_relus",
        LABELS_INDEPENDENT,
    ),
    # batches of one class pull the net towards that class at each step: large, alternating updates
    BATCHES_NOT_SHUFFLED: (
        "oscillating_loss",
        "loss_not_decreasing",
        "exploding_gradients",
        "lr_too_high",
        "dead_relus",
        LABELS_INDEPENDENT,
    ),
    # the weights collapse towards 0: each step shrinks them by lr·λ (a large update ratio), the signal fades
    WEIGHT_DECAY_DOMINATES: (
        "slow_convergence",
        "loss_not_decreasing",
        "vanishing_gradients",
        "lr_too_high",
        "dead_relus",
        LABELS_INDEPENDENT,
    ),
    CLIPPING_DOMINATES: ("slow_convergence", "loss_not_decreasing", LABELS_INDEPENDENT),
    LOSS_BROADCASTS: ("slow_convergence", "loss_not_decreasing", "oscillating_loss"),
    SAME_BATCH: ("overfitting", "oscillating_loss"),
    LABELS_INDEPENDENT: ("loss_not_decreasing",),
    "badly_scaled_inputs": ("exploding_gradients", "non_finite_values", "lr_too_high", "saturation", "dead_relus"),
    "lr_too_high": ("dead_relus", "exploding_gradients", "non_finite_values"),
}


#: The causes that act before the first update, so that they can explain what was wrong at init.
AT_INIT_CAUSES = ("badly_scaled_inputs", EVAL_MODE_TRAINING)


def _explains(cause: str, v: Verdict) -> bool:
    """Whether ``cause`` explains verdict ``v``: a symptom it lists, except what was already wrong before training
    (gradients exploding at init, a NaN at step 0: the weights' or the inputs' scale), which only a cause that acts
    before the first update explains (:data:`AT_INIT_CAUSES`)."""
    if v.name not in EXPLAINS.get(cause, ()):
        return False
    before_training = (v.name == "exploding_gradients" and v.figures.get("at_init")) or (
        v.name == "non_finite_values" and v.figures.get("nonfinite_step") == 0
    )
    return not before_training or cause in AT_INIT_CAUSES


def explain(verdicts: list[Verdict]) -> list[Verdict]:
    """Causes, the loop's first, each followed by the symptoms it explains as its consequences (``cause`` set,
    prescription withheld); verdicts that nothing explains are causes of their own."""
    names = {v.name for v in verdicts}
    cause_of: dict[str, str] = {}  # symptom → its cause; a cause is never itself explained (EXPLAINS lists the
    for cause in EXPLAINS:  # causes so that whatever explains a cause comes before it), so these are root causes
        if cause not in names or cause in cause_of:
            continue
        for v in verdicts:
            if v.name != cause and v.name not in cause_of and _explains(cause, v):
                cause_of[v.name] = cause
    out = []
    loop_first = sorted(verdicts, key=lambda v: v.name not in LOOP_CHECKS)  # stable: each group keeps its order
    for v in loop_first:
        if v.name in cause_of:
            continue
        out.append(v)
        for w in loop_first:
            if cause_of.get(w.name) == v.name:
                advice = f"a consequence of {v.name}: fix that first. {w.advice}"
                out.append(dataclasses.replace(w, cause=v.name, prescription={}, advice=advice))
    return out


def loop_fixes(verdicts: list[Verdict]) -> dict[str, str]:
    """The code fixes of the causes found: verdict name → the fix in PyTorch (consequences have none)."""
    return {v.name: v.code for v in verdicts if v.cause is None and v.code}
