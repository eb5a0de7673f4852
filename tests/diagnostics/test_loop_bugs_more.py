"""The loop bugs the doctor names beyond its first thirteen rules (issue 21): weights left frozen, a softmax in the
loss code, an LR schedule that reaches two orders of magnitude, and weight decay that shrinks the weights while the
loss stays at chance; each rule on both sides of its threshold, in a tiny loop or on hand-made records."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklab
from tricklab.diagnostics import loop_bugs as lb
from tricklab.diagnostics.loop_watch import softmax_in_loss
from tricklab.diagnostics.records import LOSS, MODEL, PRIOR_LOSS, Findings, LayerInfo, Records

N, D, C = 512, 16, 4


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, x[:, :C].argmax(1)


def net(norm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    mid = [nn.BatchNorm1d(32)] if norm else []
    return nn.Sequential(nn.Linear(D, 32), *mid, nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, C))


def train(model, opt, loss_fn=F.cross_entropy, steps: int = 60, every: int = 2):
    """A plain loop under the Doctor, the loss passed as computed (its graph readable)."""
    x, y = data()
    with tricklab.Doctor(model, opt, every=every) as doctor:
        for step in range(steps):
            i = (step * 32) % N
            loss = loss_fn(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.observe(loss=loss, labels=y[i : i + 32])
    return doctor


def verdict(doctor, name: str):
    return next((v for v in doctor.verdicts() if v.name == name), None)


# --- frozen weights -------------------------------------------------------------------------------------------------


def test_a_model_frozen_but_its_batch_norm_is_named_with_its_share_and_the_output_layer():
    model = net(norm=True)
    for name, p in model.named_parameters():
        if not name.startswith("1."):  # the BatchNorm1d
            p.requires_grad = False
    doctor = train(model, torch.optim.SGD(model.parameters(), lr=0.1))
    v = verdict(doctor, lb.FROZEN_WEIGHTS)
    assert v is not None and v.cause is None and v.first_step == 0
    assert v.figures["weight_share"] > 0.95 and v.figures["in_optimizer"] == 6
    assert "output layer 5" in v.summary and "get_submodule('5').requires_grad_(True)" in v.code
    assert lb.GRADIENT_CUT not in [w.name for w in doctor.verdicts()]


def test_a_frozen_body_with_a_trained_head_is_a_fine_tuning_not_a_verdict():
    model = net()
    for p in [*model[0].parameters(), *model[2].parameters()]:  # 96% of the weights; the head learns
        p.requires_grad = False
    doctor = train(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    found = doctor.findings().records.series(lb.LOOP_FROZEN, MODEL)[1]
    assert found and found[0]["numel"] / found[0]["numel_of"] > lb.FROZEN_SHARE
    assert verdict(doctor, lb.FROZEN_WEIGHTS) is None


def frozen_findings(share: float, output_frozen: bool = True) -> Findings:
    f = Findings(Records(), [LayerInfo("body", "weight", 0), LayerInfo("head", "weight", 1)], 10, 50)
    frozen = ["body", "head"] if output_frozen else ["body"]
    u = {"modules": frozen, "param_modules": ["head", "body"], "tensors": 2, "of": 4,  # registered out of order
         "numel": round(share * 1000), "numel_of": 1000, "in_optimizer": 2}  # fmt: skip
    f.records.add(lb.LOOP_FROZEN, MODEL, 0, u)
    return f


def test_the_frozen_rule_asks_for_more_than_half_the_weights_and_the_output_layer_in_forward_order():
    assert lb.check_frozen(frozen_findings(0.501), {}) is not None
    assert lb.check_frozen(frozen_findings(lb.FROZEN_SHARE), {}) is None
    assert lb.check_frozen(frozen_findings(0.9, output_frozen=False), {}) is None  # "head" is called last


# --- a softmax in the loss code -------------------------------------------------------------------------------------


def softmax_twice(out, y):
    return F.nll_loss(F.log_softmax(F.softmax(out, dim=1), dim=1), y)


@pytest.mark.parametrize("loss_fn", [softmax_twice, lambda out, y: F.cross_entropy(out.softmax(1), y)])
def test_a_softmax_in_the_loss_code_is_named_from_the_losss_graph(loss_fn):
    model = net()
    doctor = train(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=loss_fn)
    v = verdict(doctor, lb.PROBABILITIES_TO_LOSS)
    assert v is not None and v.cause is None and v.first_step == 0
    assert v.figures["softmax_in_loss"] is True and v.figures["probability_samples"] == 0  # the output: logits


@pytest.mark.parametrize(
    "loss_fn",
    [
        F.cross_entropy,
        lambda out, y: F.nll_loss(F.softmax(out, dim=1).clamp_min(1e-9).log(), y),  # log of probabilities: right
        lambda out, y: F.cross_entropy(F.log_softmax(out, dim=1), y),  # redundant, the same loss: no bug
    ],
)
def test_logits_or_log_probabilities_given_to_the_loss_are_not_named(loss_fn):
    model = net()
    doctor = train(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=loss_fn)
    assert doctor.findings().records.series(lb.LOOP_SOFTMAX_LOSS, MODEL)[1] == []
    assert verdict(doctor, lb.PROBABILITIES_TO_LOSS) is None


def test_the_graph_search_needs_the_softmax_directly_under_the_log_softmax():
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    assert softmax_in_loss((F.cross_entropy(F.softmax(z * 2, 1), y) / 4).grad_fn)  # behind a scaling of the loss
    assert not softmax_in_loss(F.cross_entropy(F.softmax(z, 1) * 3, y).grad_fn)  # rescaled: not probabilities
    assert not softmax_in_loss(F.cross_entropy(z, y).grad_fn)


# --- an LR that reaches two orders of magnitude -------------------------------------------------------------------


def lr_findings(lrs: list[float], base: float = 1e-3) -> Findings:
    f = Findings(Records(), [], 10, 10 * len(lrs))
    for t, lr in enumerate(lrs):
        f.records.add(lb.LOOP_LR, MODEL, 10 * t, lr)
    f.records.add(lb.LOOP_BASE_LR, MODEL, 0, base)
    return f


def test_an_lr_that_reaches_100x_the_one_set_is_runaway_and_99x_is_not():
    reached = 1e-3 * 10.0 * 10.0  # MultiStepLR(gamma=10) at its second milestone, rounded as products are
    v = lb.check_lr_runaway(lr_findings([1e-3, 1e-3, 1e-2, 1e-2, reached]), {})
    assert v is not None and v.first_step == 40
    assert lb.check_lr_runaway(lr_findings([1e-3, 1e-3, 1e-2, 1e-2, 0.099]), {}) is None


def test_a_multistep_schedule_with_gamma_10_in_a_loop_is_named():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[20, 40], gamma=10.0)
    x, y = data()
    with tricklab.Doctor(model, opt, every=2) as doctor:
        for step in range(60):
            i = (step * 32) % N
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            doctor.observe(loss=loss, labels=y[i : i + 32])
    v = verdict(doctor, lb.LR_SCHEDULE_RUNAWAY)
    assert v is not None and v.first_step == 40 and "MultiStepLR was stepped 60 times" in v.summary


# --- weight decay that shrinks the weights while the loss stays at chance -----------------------------------------


def test_weights_shrinking_while_the_loss_stays_at_chance_name_the_decay_below_the_ratio_rule():
    model = net()
    doctor = train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5))
    v = verdict(doctor, lb.WEIGHT_DECAY_DOMINATES)
    assert v is not None and v.cause is None
    assert v.figures["decay_over_grad"] <= lb.DECAY_DOMINATES  # the ratio rule alone would not fire
    assert v.figures["weight_norm_ratio"] < lb.DECAY_SHRINK and "shrank" in v.summary
    healthy = net()
    assert verdict(train(healthy, torch.optim.SGD(healthy.parameters(), lr=0.1, weight_decay=5e-4)), v.name) is None


def decay_findings(norms: list[float], loss_last: float, prior: float | None = 1.386) -> Findings:
    f = Findings(Records(), [], 10, 100)
    for t, w in zip(range(0, 100, 10), norms, strict=False):
        f.records.add(lb.LOOP_DECAYED_NORM, MODEL, t, w)
        f.records.add(lb.LOOP_DECAY, MODEL, t, 5.0)
    for t in range(100):  # 1.39 at the start, then a straight line to loss_last
        f.records.add(LOSS, MODEL, t, 1.39 + (loss_last - 1.39) * t / 99)
    if prior is not None:
        f.records.add(PRIOR_LOSS, MODEL, 99, prior)
    f.records.add(lb.LOOP_DECAY_SETTING, MODEL, 0, {"weight_decay": 0.5, "decoupled": False})
    return f


def test_the_shrink_rule_asks_for_half_the_norm_and_a_loss_at_its_start_level():
    v = lb.check_decay(decay_findings([4.0, 3.0, 2.0, 1.0], loss_last=1.39), {})
    assert v is not None and v.first_step == 20  # ‖W‖ at half its first value
    assert lb.check_decay(decay_findings([4.0, 3.0, 2.04, 2.1], loss_last=1.39), {}) is None  # not halved
    assert lb.check_decay(decay_findings([4.0, 2.0, 1.0], loss_last=0.6), {}) is None  # the loss fell: it learns
    assert lb.check_decay(decay_findings([4.0, 2.0, 1.0], loss_last=1.385, prior=None), {}) is not None  # flat
