"""The doctor names the bugs of a training loop (issue 21): each one in a plain tiny loop under ``tricklab.Doctor``,
beside its healthy twin that differs only by the fix; one cause, one fix; and the vanishing rule that ignored layer
sizes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklab
from tricklab.diagnostics import loop_bugs as lb
from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.records import MODEL, WEIGHT, WEIGHT_FAN_IN, WEIGHT_GRAD_NORM, Findings, LayerInfo, Records

N, D, C = 512, 16, 4


def data(seed: int = 0, sort: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = x[:, :C].argmax(1)
    if sort:
        order = y.argsort(stable=True)
        x, y = x[order], y[order]
    return x, y


def net(dropout: float = 0.0, softmax: bool = False, out: int = C) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(D, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, out)]
    return nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else []))


def run(
    bug: str | None = None,
    *,
    steps: int = 60,
    every: int = 2,
    batch: int = 32,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    max_norm: float | None = None,
    sort: bool = False,
    softmax: bool = False,
    dropout: float = 0.0,
    labels: bool = True,
):
    """A plain loop over ``data()`` with at most one bug; returns the Doctor after it."""
    x, y = data(sort=sort)
    model = net(dropout=dropout, softmax=softmax)
    params = list(model.parameters())
    if bug == "partial_optimizer":
        params = list(model[-1].parameters())
    opt = torch.optim.SGD(params, lr=0.0 if bug == "lr_zero" else lr, weight_decay=weight_decay)
    other = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1) if bug == "per_batch_scheduler" else None
    if bug == "detach":
        model[2].register_forward_hook(lambda m, i, o: o.detach())
    model.train()
    with tricklab.Doctor(model, opt, every=every) as doctor:
        for step in range(steps):
            i = 0 if bug == "same_batch" else (step * batch) % N
            xb, yb = x[i : i + batch], y[i : i + batch]
            if bug == "eval_mode" and step == 1:
                model.eval()
            out = model(xb)
            loss = F.nll_loss(out.clamp_min(1e-9).log(), yb) if softmax and bug is None else F.cross_entropy(out, yb)
            if bug == "step_before_backward":
                opt.zero_grad()
                opt.step()
                loss.backward()
            else:
                if bug == "no_zero_grad":
                    pass
                elif bug == "other_optimizer":
                    other_params = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
                    other_params.zero_grad()
                else:
                    opt.zero_grad()
                loss.backward()
                if max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                opt.step()
            if sched is not None:
                sched.step()
            doctor.observe(loss=loss.detach(), labels=yb if labels else None)
    del other
    return doctor


def names(doctor) -> list[str]:
    return [v.name for v in doctor.verdicts()]


def causes(doctor) -> list[str]:
    return [v.name for v in doctor.verdicts() if v.cause is None]


def test_a_healthy_loop_gets_no_verdict_of_any_kind():
    assert names(run()) == []


# --- 1. gradients accumulate --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bug", ["no_zero_grad", "other_optimizer"])
def test_gradients_that_accumulate_are_the_verdict_and_the_lr_is_not_blamed(bug):
    doctor = run(bug)
    v = {v.name: v for v in doctor.verdicts()}
    assert causes(doctor)[0] == lb.GRADIENTS_ACCUMULATE
    assert v[lb.GRADIENTS_ACCUMULATE].figures["share_not_zeroed"] == 1.0
    assert v[lb.GRADIENTS_ACCUMULATE].first_step == 3  # checks at the first backward after steps 0, 2: 1 and 3
    for other in v.values():  # the symptoms are its consequences, with no fix of their own
        assert other.name == lb.GRADIENTS_ACCUMULATE or (
            other.cause == lb.GRADIENTS_ACCUMULATE and not other.prescription
        )
    said = doctor.prescription()
    assert "optim.lr" not in said and "zero_grad()" in said[lb.GRADIENTS_ACCUMULATE]
    assert "lower the learning rate" not in doctor.report()


def test_one_check_that_finds_an_old_gradient_is_not_yet_a_verdict():
    # steps=3, every=2: the only check is at step 1 (after the sampled step 0), one short of ACCUM_MIN_CHECKS
    doctor = run("no_zero_grad", steps=3)
    found = doctor.findings().records.series(lb.LOOP_ACCUMULATED, MODEL)[1]
    assert found == [1.0] and lb.ACCUM_MIN_CHECKS == 2
    assert lb.GRADIENTS_ACCUMULATE not in names(doctor)


def test_gradient_accumulation_over_micro_batches_is_not_flagged():
    x, y = data()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tricklab.Doctor(model, opt, every=1) as doctor:
        for step in range(20):
            for k in range(2):  # two micro-batches per step, zeroed after the step: legitimate
                i = (step * 64 + k * 32) % N
                (F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]) / 2).backward()
            opt.step()
            opt.zero_grad()
    # checked after the audited steps 0-5, 10, 15 (loop_watch.AUDIT_FIRST, AUDIT_EVERY)
    assert doctor.findings().records.series(lb.LOOP_ACCUMULATED, MODEL)[1] == [0.0] * 8
    assert names(doctor) == []


# --- 2. parameters in no param group ------------------------------------------------------------------------------


def test_parameters_left_out_of_the_optimizer_are_named_with_their_share():
    doctor = run("partial_optimizer")
    v = next(v for v in doctor.verdicts() if v.name == lb.PARAMS_NOT_IN_OPTIMIZER)
    assert v.figures["tensors"] == 4 and v.figures["of"] == 6
    assert v.figures["weight_share"] == pytest.approx(
        (16 * 32 + 32 + 32 * 32 + 32) / (16 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4)
    )
    assert "0.weight" in v.summary and v.first_step == 0
    frozen = net()
    for p in frozen[:4].parameters():
        p.requires_grad_(False)  # frozen on purpose: not a bug
    opt = torch.optim.SGD(frozen[-1].parameters(), lr=0.05)
    x, y = data()
    with tricklab.Doctor(frozen, opt, every=2) as doctor:
        for step in range(10):
            loss = F.cross_entropy(frozen(x[step * 32 : step * 32 + 32]), y[step * 32 : step * 32 + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert lb.PARAMS_NOT_IN_OPTIMIZER not in names(doctor)


# --- 3. a cut graph -----------------------------------------------------------------------------------------------


def test_a_detach_in_forward_is_named_with_the_layer_behind_the_cut():
    doctor = run("detach")
    v = next(v for v in doctor.verdicts() if v.name == lb.GRADIENT_CUT)
    assert "first layer behind the cut: 0" in v.summary and v.layers == ("0",)  # 0 feeds the detached dropout
    assert v.first_step == 2
    assert lb.GRADIENT_CUT not in names(run())


# --- 4. a step that changes nothing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("bug", "said"), [("step_before_backward", "None"), ("lr_zero", "learning rate is 0")])
def test_a_step_that_changes_nothing_says_why(bug, said):
    doctor = run(bug)
    v = next(v for v in doctor.verdicts() if v.name == lb.STEP_CHANGES_NOTHING)
    assert said in v.summary and v.cause is None
    assert all(w.cause == lb.STEP_CHANGES_NOTHING for w in doctor.verdicts() if w.name != v.name)


# --- 5. training in eval mode -------------------------------------------------------------------------------------


def test_training_in_eval_mode_with_dropout_is_a_verdict_not_an_exception():
    doctor = run("eval_mode", dropout=0.3)
    assert causes(doctor) == [lb.EVAL_MODE_TRAINING]
    v = doctor.verdicts()[0]
    assert v.figures["eval_steps"] == 59 and v.first_step == 1 and "2" in v.layers
    text = doctor.report()  # the report renders, with the fix
    assert "model.train()" in text
    assert names(run(dropout=0.3)) == []  # the same net and loop in training mode


def test_a_model_in_eval_mode_for_every_step_still_gets_its_verdict():
    x, y = data()
    model = net(dropout=0.3).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(10):
            loss = F.cross_entropy(model(x[step * 32 : step * 32 + 32]), y[step * 32 : step * 32 + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert doctor.steps == 0  # no training-mode forward, yet no exception:
    assert names(doctor) == [lb.EVAL_MODE_TRAINING]
    assert "eval mode" in doctor.report()
    plain = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, C)).eval()  # eval mode changes nothing here,
    opt = torch.optim.SGD(plain.parameters(), lr=0.05)  # and the probes saw no training forward: it says so
    with tricklab.Doctor(plain, opt, every=2) as doctor:
        for step in range(4):
            loss = F.cross_entropy(plain(x[step * 32 : step * 32 + 32]), y[step * 32 : step * 32 + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with pytest.raises(tricklab.TrickLabError, match="saw 4 optimizer steps but no forward .* in training mode"):
        doctor.verdicts()


def test_eval_mode_below_the_share_is_not_flagged():
    x, y = data()
    model = net(dropout=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(40):
            model.train(step != 7)  # 1 of 40 steps (2.5% ≤ EVAL_MAX_SHARE) ...
            i = (step * 32) % N
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert doctor.findings().records.series(lb.LOOP_EVAL, MODEL)[1] == [[1, 40, 7]]
    assert lb.EVAL_MODE_TRAINING not in names(doctor)


# --- 6. probabilities fed to a loss that expects logits -----------------------------------------------------------


def test_a_softmax_before_cross_entropy_is_named_and_log_probabilities_are_not():
    doctor = run("softmax_ce", softmax=True)
    v = next(v for v in doctor.verdicts() if v.name == lb.PROBABILITIES_TO_LOSS)
    assert "nn.Softmax" in v.summary and v.first_step == 0
    assert lb.PROBABILITIES_TO_LOSS not in names(run())  # logits
    x, y = data()
    model = nn.Sequential(net(), nn.LogSoftmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(10):
            i = step * 32
            loss = F.nll_loss(model(x[i : i + 32]), y[i : i + 32])  # log-probabilities with nll_loss: right
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert set(doctor.findings().records.series(lb.LOOP_OUTPUT, MODEL)[1]) == {2}
    assert lb.PROBABILITIES_TO_LOSS not in names(doctor)


# --- 7. a scheduler stepped per batch -----------------------------------------------------------------------------


def test_a_scheduler_stepped_per_batch_is_named_with_its_step_count():
    doctor = run("per_batch_scheduler")
    v = next(v for v in doctor.verdicts() if v.name == lb.LR_SCHEDULE_RUNAWAY)
    assert "StepLR was stepped 60 times in 60 optimizer steps" in v.summary
    assert v.first_step == 12  # 0.1 × 0.1⁴ at step 12: the first sample below 1e-3 × the peak 0.1
    assert "scheduler.step()" in doctor.prescription()[lb.LR_SCHEDULE_RUNAWAY]


def test_a_schedule_that_reaches_zero_only_at_the_end_is_no_runaway():
    x, y = data()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)  # per batch, written in batches: right
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(60):
            i = (step * 32) % N
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    assert lb.LR_SCHEDULE_RUNAWAY not in names(doctor)


# --- 8. batches not shuffled --------------------------------------------------------------------------------------


def test_data_sorted_by_class_is_named_and_shuffled_data_is_not():
    doctor = run(sort=True)
    v = next(v for v in doctor.verdicts() if v.name == lb.BATCHES_NOT_SHUFFLED)
    assert v.figures["within_batch_equal"] > 0.9 and v.figures["stream_equal"] < 0.35
    assert v.cause is None
    healthy = run().findings().records
    assert lb.BATCHES_NOT_SHUFFLED not in names(run())
    pairs = healthy.series(lb.LOOP_LABEL_PAIRS, MODEL)[1]
    within = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    assert within == pytest.approx(healthy.series(lb.LOOP_LABEL_POOLED, MODEL)[1][0], abs=0.05)


# --- 9. labels that do not belong to the inputs -------------------------------------------------------------------


def test_labels_shuffled_apart_from_the_inputs_are_named_in_a_users_words():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2048, 16, generator=g), torch.randint(0, 4, (2048,), generator=g)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([3.0, -1.0, -1.0, -1.0]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tricklab.Doctor(model, opt) as doctor:
        for step in range(150):
            i = (step * 64) % 2048
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.observe(loss=loss.detach(), labels=y[i : i + 64])
    v = {v.name: v for v in doctor.verdicts()}
    assert v[lb.LABELS_INDEPENDENT].cause is None and "shuffled" in v[lb.LABELS_INDEPENDENT].advice
    assert v["loss_not_decreasing"].cause == lb.LABELS_INDEPENDENT
    assert lb.LABELS_INDEPENDENT not in names(run())


# --- 10. weight decay that dominates ------------------------------------------------------------------------------


def test_weight_decay_far_above_the_gradient_is_named():
    doctor = run(weight_decay=3.0, lr=0.01)
    v = next(v for v in doctor.verdicts() if v.name == lb.WEIGHT_DECAY_DOMINATES)
    assert v.figures["decay_over_grad"] > lb.DECAY_DOMINATES and v.figures["weight_decay"] == 3.0
    healthy = run(weight_decay=5e-4)
    ratios = healthy.findings().records.series(lb.LOOP_DECAY, MODEL)[1]
    assert max(ratios) < 1 and names(healthy) == []


def test_the_decay_rule_reads_the_first_sample_before_the_decay_has_shrunk_the_weights():
    def findings(ratios):
        f = Findings(Records(), [], 10, 50)
        for t, r in zip(range(0, 50, 10), ratios, strict=False):
            f.records.add(lb.LOOP_DECAY, MODEL, t, r)
        f.records.add(lb.LOOP_DECAY_SETTING, MODEL, 0, {"weight_decay": 1.0, "decoupled": False})
        return f

    assert lb.check_decay(findings([11.0, 1.0, 1.0]), {}).first_step == 0  # then λW only balances the gradient
    assert lb.check_decay(findings([9.0, 1.0, 1.0]), {}) is None
    assert lb.check_decay(findings([0.01, 11.0, 12.0]), {}) is None  # a gradient that fell later: not the decay


# --- 11. clipping that dominates ----------------------------------------------------------------------------------


def test_clipping_every_step_by_a_large_factor_is_named():
    doctor = run(max_norm=1e-3)
    v = next(v for v in doctor.verdicts() if v.name == lb.CLIPPING_DOMINATES)
    assert v.figures["clip_factor"] > 100
    healthy = run(max_norm=5.0)  # clips a spike now and then, if ever
    assert names(healthy) == []
    assert max(healthy.findings().records.series(lb.LOOP_CLIP, MODEL)[1]) == pytest.approx(1.0)


def test_a_grad_scalers_constant_power_of_two_is_not_clipping():
    f = Findings(Records(), [], 1, 10)
    for t, factor in enumerate([65536.0] * 5):
        f.records.add(lb.LOOP_CLIP, MODEL, t, factor)
        f.records.add(lb.LOOP_PRECLIP, MODEL, t, 65536.0)
    assert lb.check_clipping(f, {}) is None
    f.records.add(lb.LOOP_CLIP, MODEL, 2, 3000.0)
    assert lb.check_clipping(f, {}) is not None


@pytest.mark.parametrize(("max_norm", "named"), [(1e-3, True), (5.0, False)])
def test_clipping_behind_a_grad_scalers_unscale_is_judged_without_the_scale(max_norm, named):
    x, y = data()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")  # backward sees the loss × 65536; unscale_ divides the gradient back
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(40):
            i = (step * 32) % N
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(opt)
            scaler.update()
    if named:
        assert causes(doctor) == [lb.CLIPPING_DOMINATES]
        assert doctor.findings().records.series(lb.LOOP_AMP_SCALE, MODEL)[1] == [65536.0]
    else:
        assert names(doctor) == []


# --- 12. shapes that broadcast, the same batch every step ---------------------------------------------------------


def regression(broadcast: bool):
    x, _ = data()
    y = x[:, 0] * 2.0  # (N,)
    model = net(out=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tricklab.Doctor(model, opt, every=2) as doctor, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns of the broadcast once; the doctor makes it a verdict
        for step in range(10):
            i = step * 32
            out = model(x[i : i + 32])
            loss = F.mse_loss(out if broadcast else out.squeeze(-1), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.observe(loss=loss)  # the tensor: its graph shows the broadcast
    return doctor


def test_an_output_of_n_by_1_against_targets_of_n_is_named():
    doctor = regression(broadcast=True)
    v = doctor.verdicts()[0]
    assert v.name == lb.LOSS_BROADCASTS and "(32, 1)" in v.summary and v.first_step == 0
    assert names(regression(broadcast=False)) == []  # the output squeezed: the same shapes


def test_the_same_batch_every_step_is_named():
    doctor = run("same_batch")
    v = next(v for v in doctor.verdicts() if v.name == lb.SAME_BATCH)
    assert v.figures["pairs"] == 59 and v.figures["same"] == 59 and v.first_step == 3  # hashed at t, t+1 for even t
    assert lb.SAME_BATCH not in names(run())


def test_tricklabs_own_loop_raises_none_of_the_loop_verdicts():
    """fit() zeroes, shuffles and trains in training mode: on a one-batch dataset it trains on the same batch every
    step by design, and none of the loop verdicts may fire."""
    from tricklab.diagnostics.doctor import diagnose_model

    x, y = data()
    result = diagnose_model(net(), (x[:64], y[:64]), steps=30, every=2, batch_size=64, recheck=False, signal=False)
    assert not {v.name for v in result.verdicts} & set(lb.LOOP_CHECKS.names()) - {lb.LABELS_INDEPENDENT}
    assert result.findings.records.series(lb.LOOP_INPUT_HASH, MODEL)[1] == []
    assert result.findings.records.series(lb.LOOP_BASE_LR, MODEL)[1] == []  # its schedules are stepped as written


def test_tricklab_diagnose_names_an_optimizer_whose_lr_is_zero():
    from tricklab.diagnostics.doctor import diagnose_model

    x, y = data()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = diagnose_model(model, (x, y), optimizer=opt, steps=20, every=2, batch_size=64, recheck=False, signal=False)
    assert [v.name for v in result.verdicts if v.cause is None] == [lb.STEP_CHANGES_NOTHING]
    assert "learning rate is 0" in result.verdicts[0].summary


def test_a_model_of_your_own_that_outputs_probabilities_is_named_by_tricklab_diagnose():
    from tricklab.diagnostics.doctor import diagnose_model

    x, y = data()
    result = diagnose_model(net(softmax=True), (x, y), steps=20, every=2, batch_size=64, recheck=False, signal=False)
    assert lb.PROBABILITIES_TO_LOSS in [v.name for v in result.verdicts]
    assert lb.PROBABILITIES_TO_LOSS in result.pytorch


# --- one cause, one fix for the model problems --------------------------------------------------------------------


def verdict(name: str, **figures) -> object:
    from tricklab.diagnostics.verdicts import Verdict

    return Verdict(
        name, name, (), figures, {"optim.lr": 0.01} if name != "badly_scaled_inputs" else {"data.scale": "standardize"}
    )


def test_a_too_high_lr_explains_dead_relus_and_growing_gradients_but_not_an_explosion_at_init():
    out = lb.explain([verdict("exploding_gradients", at_init=0.0), verdict("dead_relus"), verdict("lr_too_high")])
    assert [(v.name, v.cause) for v in out] == [
        ("lr_too_high", None),
        ("exploding_gradients", "lr_too_high"),
        ("dead_relus", "lr_too_high"),
    ]
    assert all(not v.prescription for v in out[1:])
    at_init = lb.explain([verdict("exploding_gradients", at_init=1.0), verdict("lr_too_high")])
    assert [v.cause for v in at_init] == [None, None]


def test_raw_inputs_are_the_cause_and_the_explosion_their_consequence():
    out = lb.explain(
        [verdict("exploding_gradients", at_init=1.0), verdict("badly_scaled_inputs"), verdict("lr_too_high")]
    )
    assert [(v.name, v.cause) for v in out] == [
        ("badly_scaled_inputs", None),
        ("exploding_gradients", "badly_scaled_inputs"),
        ("lr_too_high", "badly_scaled_inputs"),
    ]
    from tricklab.diagnostics.verdicts import merge_prescriptions

    assert merge_prescriptions(out) == {"data.scale": "standardize"}


def test_raw_pixels_in_a_loop_of_your_own_prescribe_scaling_not_clipping():
    x, y = data()
    x = (x * 60 + 120).clamp(0, 255)  # raw 0–255 inputs
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(30):
            i = (step * 32) % N
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert causes(doctor)[0] == "badly_scaled_inputs"
    assert set(doctor.overrides()) == {"data.scale"}


# --- the vanishing rule and layer sizes ---------------------------------------------------------------------------


def sized(first_norm: float, fan_in_first: int | None, fan_in_last: int | None) -> Findings:
    """Two weight layers with gradient norms first_norm and 1.0, and the given fan-ins."""
    r = Records()
    for t in range(0, 50, 10):
        r.add(WEIGHT_GRAD_NORM, "conv", t, first_norm)
        r.add(WEIGHT_GRAD_NORM, "head", t, 1.0)
    for name, fan in (("conv", fan_in_first), ("head", fan_in_last)):
        if fan is not None:
            r.add(WEIGHT_FAN_IN, name, 0, fan)
    return Findings(r, [LayerInfo("conv", WEIGHT, 0), LayerInfo("head", WEIGHT, 1)], 10, 50)


def test_the_vanishing_rule_compares_gradients_per_fan_in_not_raw_norms():
    # a 3×3 conv on 1 channel (fan-in 9) against a head on 32×7×7 maps (fan-in 1568), as in the MNIST CNN whose
    # raw ratio 0.087 was a false alarm: per √fan-in it is 0.087 × √(1568/9) ≈ 1.15
    assert "vanishing_gradients" not in [v.name for v in diagnose(sized(0.087, 9, 1568))]
    assert "vanishing_gradients" in [v.name for v in diagnose(sized(0.087, None, None))]  # no sizes: the raw rule
    # the raw ratio's threshold on both sides (equal fan-ins) ...
    assert "vanishing_gradients" in [v.name for v in diagnose(sized(0.09, 64, 64))]
    assert "vanishing_gradients" not in [v.name for v in diagnose(sized(0.11, 64, 64))]
    # ... and the per-fan-in one: 0.05 × √(64/16) = 0.1 < 0.3, 0.05 × √(640/16) ≈ 0.32 > 0.3
    v = next(v for v in diagnose(sized(0.05, 16, 64)) if v.name == "vanishing_gradients")
    assert v.figures["grad_ratio_per_fan_in"] == pytest.approx(0.1)
    assert "vanishing_gradients" not in [v.name for v in diagnose(sized(0.05, 16, 640))]


def test_a_probed_cnn_records_the_fan_in_of_its_layers():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with tricklab.Doctor(model, opt, every=1) as doctor:
        for _ in range(2):
            loss = F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    r = doctor.findings().records
    assert r.series(WEIGHT_FAN_IN, "0")[1] == [9] and r.series(WEIGHT_FAN_IN, "3")[1] == [8 * 26 * 26]


# --- the end of a user's loop never raises for what the doctor can describe ---------------------------------------


@pytest.mark.parametrize(
    "bug", ["no_zero_grad", "partial_optimizer", "detach", "step_before_backward", "lr_zero", "eval_mode", "same_batch"]
)
def test_the_doctors_output_never_raises_for_a_bug_it_can_describe(bug, tmp_path):
    doctor = run(bug, dropout=0.3, steps=20)
    assert doctor.verdicts()
    assert doctor.report().startswith("tricklab doctor:")
    result = doctor.result()
    assert result.to_dict()["verdicts"][0]["first_step"] is not None
    assert doctor.save(tmp_path / "report").is_file()
    assert not math.isnan(len(doctor.prescription()))


# --- the Lightning callback ---------------------------------------------------------------------------------------


def test_the_lightning_callback_names_a_loop_bug_and_its_healthy_twin_gets_none():
    pl = pytest.importorskip("lightning")
    from tricklab.integrations.lightning import TrickLabDoctor

    class Lit(pl.LightningModule):
        def __init__(self, partial: bool):
            super().__init__()
            self.net, self.partial = net(), partial

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):  # the bug: an optimizer over the last layer only
            return torch.optim.SGD(self.net[-1].parameters() if self.partial else self.parameters(), lr=0.1)

    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    found = {}
    for partial in (True, False):
        doctor = TrickLabDoctor(every=2, verbose=False)
        trainer = pl.Trainer(
            max_epochs=4,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[doctor],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Lit(partial), loader)
        found[partial] = doctor.verdicts()
    assert found[True][0].name == lb.PARAMS_NOT_IN_OPTIMIZER and "net.0.weight" in found[True][0].summary
    assert found[False] == []
