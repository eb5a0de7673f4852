"""Probes record the right numbers, only on sampled steps, and find the first non-finite value."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.diagnostics.probes import Probe, ProbeCallback
from tricklab.diagnostics.records import (
    ACT_HIST,
    ACT_MEAN,
    ACT_STD,
    DEAD_FRACTION,
    GLOBAL_GRAD_NORM,
    GRAD_STD,
    INPUT,
    INPUT_RMS,
    LOSS,
    MODEL,
    PRIOR_LOSS,
    SATURATED_FRACTION,
    UPDATE_RATIO,
    WEIGHT_GRAD_NORM,
)
from tricklab.engine import fit
from tricklab.errors import ConfigError, TrickLabError
from tricklab.events import Callback, FitState


def mlp(act: type[nn.Module] = nn.ReLU, width: int = 8) -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, width), act(), nn.Linear(width, width), act(), nn.Linear(width, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def test_records_match_a_hand_computed_step(batch):
    torch.manual_seed(0)
    x, y = batch
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outputs, out_grad = {}, {}

    def keep_output(m, i, o):
        outputs["relu"] = o.detach().clone()

    def keep_grad(m, i, o):
        o.register_hook(lambda g: out_grad.update(lin=g.clone()))

    model[1].register_forward_hook(keep_output)
    model[2].register_forward_hook(keep_grad)
    with Probe(model, every=1, optimizer=opt) as p:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters()}
        before = model[2].weight.detach().clone()
        opt.step()
    r = p.findings().records
    h = outputs["relu"]
    assert r.get(ACT_MEAN, "1", 0) == pytest.approx(h.mean().item(), rel=1e-5)
    assert r.get(ACT_STD, "1", 0) == pytest.approx(h.std(correction=0).item(), rel=1e-5)
    assert r.get(DEAD_FRACTION, "1", 0) == pytest.approx(1 - (h > 0).any(0).float().mean().item())
    assert r.get(WEIGHT_GRAD_NORM, "2", 0) == pytest.approx(grads["2.weight"].norm().item(), rel=1e-5)
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads.values()))
    assert r.get(GLOBAL_GRAD_NORM, "(model)", 0) == pytest.approx(total, rel=1e-5)
    ratio = (model[2].weight.detach() - before).norm() / before.norm()
    assert r.get(UPDATE_RATIO, "2", 0) == pytest.approx(ratio.item(), rel=1e-4)
    assert r.get(GRAD_STD, "2", 0) == pytest.approx(out_grad["lin"].std(correction=0).item(), rel=1e-5)
    assert r.get(INPUT_RMS, INPUT, 0) == pytest.approx(x.pow(2).mean().sqrt().item(), rel=1e-5)
    hist = r.get(ACT_HIST, "1", 0)
    assert len(hist) == 40 and sum(hist) == pytest.approx(1.0)


def test_dead_units_and_saturation_are_counted_exactly():
    relu_in = torch.ones(16, 10)
    relu_in[:, :3] = -1.0  # 3 of 10 units are 0 for the whole batch
    relu_in[0, 3] = -1.0  # unit 3 is 0 for one example only: alive
    sig_in = torch.zeros(16, 10)
    sig_in[:, :4] = 20.0  # 4 of 10 columns saturated high, 1 low
    sig_in[:, 4] = -20.0
    model = nn.ModuleDict({"r": nn.ReLU(), "s": nn.Sigmoid(), "t": nn.Tanh()})
    with Probe(model["r"], every=1) as pr:
        model["r"](relu_in)
    with Probe(model["s"], every=1) as ps:
        model["s"](sig_in)
    with Probe(model["t"], every=1) as pt:
        model["t"](sig_in)
    assert pr.findings().records.get(DEAD_FRACTION, "ReLU", 0) == pytest.approx(0.3)
    assert ps.findings().records.get(SATURATED_FRACTION, "Sigmoid", 0) == pytest.approx(0.5)
    assert pt.findings().records.get(SATURATED_FRACTION, "Tanh", 0) == pytest.approx(0.5)


def test_only_sampled_training_steps_are_recorded_and_hooks_are_removed(batch):
    x, y = batch
    model = mlp()
    with Probe(model, every=3) as p:
        for _ in range(7):
            F.cross_entropy(model(x), y).backward()
        model.eval()
        model(x)  # an eval forward is neither a step nor recorded
    r = p.findings().records
    assert r.steps(ACT_STD) == [0, 3, 6]
    assert r.steps(WEIGHT_GRAD_NORM) == [0, 3, 6]
    assert p.findings().steps == 7
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert all(not m._forward_hooks for m in model.modules())


def test_callback_records_the_loss_every_step_and_samples_the_rest(batch):
    x, y = batch
    torch.manual_seed(0)
    cb = ProbeCallback(every=4)
    fit(mlp(), (x, y), epochs=2, batch_size=8, callbacks=[cb])  # 4 steps per epoch
    r = cb.findings().records
    assert r.series(LOSS)[0] == list(range(8))
    assert r.series(GLOBAL_GRAD_NORM)[0] == [0, 4]  # fit()'s guard checks the other steps' gradients
    assert r.steps(UPDATE_RATIO) == [0, 4]
    assert r.steps(ACT_MEAN) == [0, 4]


def test_every_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="diagnostics.every"):
        ProbeCallback(every=0)


# --- the first non-finite value ------------------------------------------------------------------------------------


class Poison(nn.Module):
    """Identity, except at training step ``at``: NaN in the output (``forward``) or in the gradient (``backward``)."""

    def __init__(self, at: int, where: str):
        super().__init__()
        self.at, self.where, self.step = at, where, 0

    def forward(self, x):
        if self.step != self.at:
            return x
        return x * float("nan") if self.where == "forward" else _NaNGrad.apply(x)


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class TellStep(Callback):
    def __init__(self, poison: Poison):
        self.poison = poison

    def on_step_end(self, state):
        self.poison.step = state.step


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("at", [4, 7])  # a sampled step (every 4) and one in between
def test_nan_is_located_in_its_layer_and_step(batch, where, at):
    x, y = batch
    torch.manual_seed(0)
    poison = Poison(at, where)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), poison, nn.Tanh(), nn.Linear(8, 3))
    cb = ProbeCallback(every=4, stop_on_nonfinite=True)
    opt = torch.optim.Adam(model.parameters())
    state = FitState(model=model, optimizer=opt, epochs=3, device=torch.device("cpu"))
    try:
        fit(
            model,
            (x, y),
            epochs=3,
            batch_size=8,
            optimizer=opt,
            callbacks=[cb, TellStep(poison)],
            state=state,
        )
    except TrickLabError:  # the loop's own non-finite guard stopped before the probe's event
        cb.after_failure(state)
    nf = cb.findings().first_nonfinite
    assert nf is not None
    assert (nf.step, nf.layer, nf.where) == (at, "3", where)


def test_nan_in_the_input_is_named_as_the_input():
    model = mlp()
    x = torch.randn(8, 4)
    x[2, 1] = float("inf")
    with Probe(model, every=1) as p:
        model(x)
    nf = p.findings().first_nonfinite
    assert (nf.step, nf.layer, nf.where) == (0, None, "input")


def test_the_callback_records_the_label_prior_loss_for_cross_entropy_only():
    """−Σ p ln p of the labels trained on (of every ``every``-th batch): the loss of predicting the class frequencies
    (ln 4 for 4 balanced)."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 4  # balanced
    cb = ProbeCallback(every=1)
    fit(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)), (x, y), epochs=2, batch_size=16, callbacks=[cb])
    (prior,) = cb.findings().records.series(PRIOR_LOSS, MODEL)[1]
    assert prior == pytest.approx(math.log(4))
    y = torch.tensor([0] * 48 + [1] * 16)  # p = 3/4, 1/4
    cb = ProbeCallback(every=1)
    fit(mlp(), (x, y), epochs=1, batch_size=16, callbacks=[cb])
    assert cb.findings().records.series(PRIOR_LOSS, MODEL)[1] == [
        pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    ]
    mse = ProbeCallback(every=5, loss_fn=F.mse_loss)  # no class labels: no prior
    fit(nn.Linear(4, 1), (x, torch.randn(64, 1)), epochs=1, batch_size=16, loss_fn=F.mse_loss, callbacks=[mse])
    assert mse.findings().records.series(PRIOR_LOSS, MODEL)[1] == []


# --- the cheaper measurements are still the right numbers -------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.randn(64, 100, generator=g),  # plain path, one-pass variance
        lambda g: 1.0 + 1e-5 * torch.randn(64, 100, generator=g),  # the mean dominates: two-pass variance
        lambda g: 1e25 * torch.randn(64, 100, generator=g),  # squares overflow float32: on y / max|y|
        lambda g: 1e-20 * torch.randn(64, 100, generator=g),  # squares underflow float32: on y / max|y|
        lambda g: torch.zeros(64, 100),
    ],
    ids=["plain", "mean-dominated", "huge", "tiny", "zeros"],
)
def test_stats_match_a_float64_reference_on_every_path(make):
    from tricklab.diagnostics.probes import scaled_stats

    y = make(torch.Generator().manual_seed(0))
    std, mean, norm, peak = scaled_stats(y)
    ref = y.double()
    assert std == pytest.approx(ref.std(correction=0).item(), rel=1e-4, abs=1e-30)
    assert mean == pytest.approx(ref.mean().item(), rel=1e-4, abs=1e-3 * ref.std(correction=0).item() + 1e-30)
    assert norm == pytest.approx(ref.norm().item(), rel=1e-4, abs=1e-30)
    assert peak == pytest.approx(ref.abs().max().item(), rel=1e-6, abs=1e-30)
    # without the peak (sum and norm only, when they allow it): the same statistics, a finite stand-in for the peak
    std2, mean2, norm2, witness = scaled_stats(y, with_peak=False)
    assert (std2, mean2, norm2) == pytest.approx((std, mean, norm), rel=1e-5, abs=1e-30)
    assert math.isfinite(witness)


@pytest.mark.parametrize("with_peak", [True, False])
def test_a_non_finite_element_makes_the_peak_non_finite(with_peak):
    from tricklab.diagnostics.probes import scaled_stats

    for bad in (math.nan, math.inf, -math.inf):
        for scale in (1.0, 1e25, 1e-20):  # each path: plain, huge, tiny
            y = scale * torch.randn(10, 10)
            y[3, 4] = bad
            assert not math.isfinite(scaled_stats(y, with_peak=with_peak)[3])


def test_the_update_ratio_of_a_large_weight_is_estimated_within_a_few_percent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))  # 262,144 weights: sampled
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    with Probe(model, every=1, optimizer=opt) as p:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = model[0].weight.detach().clone()
        opt.step()
    exact = ((model[0].weight.detach() - before).norm() / before.norm()).item()
    assert p.findings().records.get(UPDATE_RATIO, "0", 0) == pytest.approx(exact, rel=0.05)


def test_unsampled_steps_run_without_per_layer_hooks(batch):
    x, y = batch
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def layer_hooks() -> int:
        return sum(len(m._forward_hooks) for m in model.modules())

    seen = []
    with Probe(model, every=3, optimizer=opt):
        for _ in range(6):
            loss = F.cross_entropy(model(x), y)
            seen.append(layer_hooks())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [n > 0 for n in seen] == [True, False, False, True, False, False]
    assert layer_hooks() == 0


def test_fit_hands_the_guards_gradient_norms_to_the_probe_on_sampled_steps(batch):
    """In fit() the NaN/Inf guard computes the gradient norms on the probe's sampled steps and hands them over (no
    second pass); on the other steps it checks its cheaper sums and the probe records the loss alone."""
    from tricklab.events import ORDER_PROBE

    class TrueNorm(Callback):
        order = ORDER_PROBE + 1

        def __init__(self):
            self.norms, self.handed = [], []

        def on_after_backward(self, state):
            grads = [p.grad for p in state.model.parameters() if p.grad is not None]
            self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
            self.handed.append(state.grad_norms is not None)

    torch.manual_seed(0)
    probe, truth = ProbeCallback(every=4), TrueNorm()
    fit(mlp(), batch, epochs=3, batch_size=8, callbacks=[probe, truth])
    sampled = [0, 4, 8]
    assert truth.handed == [step in sampled for step in range(12)]
    steps, norms = probe.findings().records.series(GLOBAL_GRAD_NORM, MODEL)
    assert steps == sampled and norms == pytest.approx([truth.norms[t] for t in sampled], rel=1e-5)
    assert len(probe.findings().records.series(LOSS, MODEL)[1]) == 12


def test_a_doctor_in_your_own_loop_records_the_gradient_norm_of_every_step(batch):
    """Without fit()'s guard, the probe checks every step itself, and so records every step's ‖g‖."""
    import tricklab

    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch
    with tricklab.Doctor(model, opt, every=4) as doctor:
        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert doctor.findings().records.series(GLOBAL_GRAD_NORM, MODEL)[0] == list(range(6))
