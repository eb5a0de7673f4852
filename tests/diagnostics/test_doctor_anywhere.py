"""The doctor in a hand-written loop: same verdicts as tricklab's own runs, hooks that only read and always go,
and a prescription a PyTorch user can follow (every key the verdicts can prescribe has a sentence)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklab
from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.in_pytorch import INIT_CALLS, TRANSLATIONS, in_pytorch
from tricklab.diagnostics.records import (
    DEAD_FRACTION,
    INPUT,
    INPUT_RMS,
    LOSS,
    MODEL,
    PRIOR_LOSS,
    RELU,
    SATURATED_FRACTION,
    SIGMOID,
    UPDATE_RATIO,
    WEIGHT,
    WEIGHT_GRAD_NORM,
    Findings,
    LayerInfo,
    NonFinite,
    Records,
)
from tricklab.diagnostics.verdicts import GOOD_INITS
from tricklab.errors import TrickLabError, UnknownNameError
from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.clipping import CLIP_MODES
from tricklab.tricks.init import INITIALIZERS, init_weight_
from tricklab.tricks.norms import NORMS
from tricklab.tricks.scaling import SCALINGS

SIGNAL_VERDICTS = {"vanishing_gradients", "exploding_gradients", "saturation", "dead_relus"}


def sick_net() -> nn.Sequential:
    """12 sigmoid layers with N(0, 1) weights: saturated units, vanishing gradients (Glorot & Bengio 2010)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(12):
        layers += [nn.Linear(16 if i == 0 else 64, 64), nn.Sigmoid()]
    net = nn.Sequential(*layers, nn.Linear(64, 4))
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0)
    return net


def healthy_net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    return x, x[:, :4].argmax(1)


def train(model, opt, data, steps=40, doctor=None, batch=32, loss_scale=None):
    """A plain loop; returns the losses. ``loss_scale(step)``: multiplies what is observed (a fake spike)."""
    x, y = data
    losses = []
    for step in range(steps):
        i = (step * batch) % len(x)
        loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if doctor is not None:
            doctor.observe(loss=loss.detach() * (loss_scale(step) if loss_scale else 1.0))
    return losses


def hooks_left(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    n += sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    if opt is not None:
        n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    return n


def test_a_sick_loop_gets_the_verdicts_and_a_pytorch_prescription(data):
    net = sick_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with tricklab.Doctor(net, opt) as doctor:
        train(net, opt, data, doctor=doctor)
    names = {v.name for v in doctor.verdicts()}
    assert {"vanishing_gradients", "saturation"} <= names
    assert doctor.steps == 40
    said = doctor.prescription()
    assert "nn.init.xavier_normal_(m.weight)" in said["init.scheme"] and "0, 2, 4, 6 and 9 more" in said["init.scheme"]
    assert "nn.BatchNorm1d(64)" in said["model.norm"]
    assert "--set init.scheme=glorot_normal" in doctor.set_flags()
    text = doctor.report()
    assert "vanishing_gradients" in text and "xavier_normal_" in text and "--set model.norm=batch" in text


def test_a_healthy_relu_net_gets_no_verdict(data):
    net = healthy_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    with tricklab.Doctor(net, opt) as doctor:
        train(net, opt, data, doctor=doctor)
    assert doctor.verdicts() == [] and doctor.prescription() == {}
    assert doctor.report().startswith("tricklab doctor: healthy")


def test_the_loop_is_bit_identical_with_and_without_the_doctor(data):
    plain_net = healthy_net(dropout=0.3)
    plain_opt = torch.optim.Adam(plain_net.parameters(), lr=1e-3)
    torch.manual_seed(1)
    plain = train(plain_net, plain_opt, data, steps=12)
    net = healthy_net(dropout=0.3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    torch.manual_seed(1)
    with tricklab.Doctor(net, opt, every=1) as doctor:  # every step sampled: every hook busy
        probed = train(net, opt, data, steps=12, doctor=doctor)
    assert probed == plain  # dropout masks too: the hooks draw no random numbers
    after, plain_after = net.state_dict(), plain_net.state_dict()
    assert all(torch.equal(after[k], plain_after[k]) for k in plain_after)


def test_every_hook_is_removed_after_the_block_and_after_an_exception(data):
    net = sick_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with tricklab.Doctor(net, opt, every=1) as doctor:
        assert hooks_left(net, opt) > 0
        train(net, opt, data, steps=2, doctor=doctor)
    assert hooks_left(net, opt) == 0
    with pytest.raises(ValueError, match="boom"), tricklab.Doctor(net, opt, every=1) as doctor:
        train(net, opt, data, steps=2, doctor=doctor)
        raise ValueError("boom")
    assert hooks_left(net, opt) == 0
    assert doctor.steps == 2  # what was seen before the exception stays readable


def test_observe_feeds_the_loss_checks(data):
    net = healthy_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    with tricklab.Doctor(net, opt) as doctor:
        train(net, opt, data, doctor=doctor, loss_scale=lambda step: 1000.0 if step == 30 else 1.0)
        doctor.observe(acc=0.5, val_loss=torch.tensor(1.2), val_acc=0.4)
    steps, losses = doctor.findings().records.series(LOSS, MODEL)
    assert steps == list(range(40)) and losses[30] > 100 * losses[29]
    (verdict,) = doctor.verdicts()
    assert verdict.name == "exploding_gradients" and "loss spike" in verdict.summary
    said = doctor.prescription()
    assert "clip_grad_norm_(model.parameters(), max_norm=1)" in said["clip.mode"]
    assert 'g["lr"] = 0.002' in said["optim.lr"] and "from 0.02" in said["optim.lr"]
    assert doctor.findings().records.get("val_loss", MODEL, 39) == pytest.approx(1.2)
    with pytest.raises(TrickLabError, match=r"observe\(loss=...\): got a Tensor of shape \(3,\)"):
        doctor.observe(loss=torch.ones(3))


def test_a_nonfinite_input_is_located(data):
    net = healthy_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    x, y = data
    x = x.clone()
    x[32 * 3, 0] = float("inf")  # in the 4th batch
    with tricklab.Doctor(net, opt) as doctor:
        train(net, opt, (x, y), steps=6)
    nf = doctor.findings().first_nonfinite
    assert nf is not None and nf.step == 3 and nf.where == "input"
    assert "non_finite_values" in {v.name for v in doctor.verdicts()}


def test_without_an_optimizer_each_training_forward_is_a_step(data):
    net = sick_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with tricklab.Doctor(net, every=5) as doctor:
        train(net, opt, data, steps=20)
        net.eval()
        with torch.no_grad():
            net(data[0])  # an eval forward is not a step
        net.train()
    assert doctor.steps == 20
    assert {"vanishing_gradients", "saturation"} <= {v.name for v in doctor.verdicts()}
    assert "optim.lr" not in doctor.result().settings


def test_bad_use_fails_in_one_line(data, tmp_path):
    net = sick_net()
    with pytest.raises(TrickLabError, match="holds none of the model's parameters"):
        tricklab.Doctor(net, torch.optim.SGD(healthy_net().parameters(), lr=0.1))
    with pytest.raises(tricklab.ConfigError, match="diagnostics.every"):
        tricklab.Doctor(net, every=0)
    with tricklab.Doctor(net) as doctor:
        pass
    with pytest.raises(TrickLabError, match="no forward of the Sequential in training mode"):
        doctor.verdicts()
    with pytest.raises(TrickLabError, match="make a new Doctor"):
        doctor.attach()


def test_save_writes_the_report_and_refuses_a_foreign_folder(data, tmp_path):
    net = sick_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with tricklab.Doctor(net, opt) as doctor:
        train(net, opt, data, steps=20)
    page = doctor.save(tmp_path / "new" / "report")
    assert page.name == "index.html" and "vanishing_gradients" in page.read_text()
    summary = json.loads((page.parent / "doctor.json").read_text())
    assert "xavier_normal_" in summary["pytorch"]["init.scheme"] and not summary["healthy"]
    html = page.read_text()  # the page says it in PyTorch too, then as tricklab flags
    assert "In PyTorch" in html and "nn.init.xavier_normal_" in html
    assert html.index("In PyTorch") < html.index("With tricklab: <code>--set init.scheme=")
    assert doctor.save(page.parent) == page  # a doctor report folder may be written again
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrickLabError, match="already exists and is not empty"):
        doctor.save(tmp_path / "other")


# --- the prescription in PyTorch terms ------------------------------------------------------------------------


def _findings(layers, data=(), nonfinite=None) -> Findings:
    records = Records()
    for metric, layer, values in data:
        for step, v in zip((0, 10, 20, 30), values, strict=False):
            records.add(metric, layer, step, v)
    infos = [LayerInfo(name, kind, i) for i, (name, kind) in enumerate(layers)]
    return Findings(records, infos, every=10, steps=40, first_nonfinite=nonfinite)


NET = [("0", WEIGHT), ("1", RELU), ("2", WEIGHT), ("3", SIGMOID), ("4", WEIGHT)]
#: Findings that trigger each check (exploding both at init and during training, to get every part of its fix).
SICK = [
    _findings(
        NET,
        [(WEIGHT_GRAD_NORM, "0", [1e5] * 4), (WEIGHT_GRAD_NORM, "4", [1.0] * 4)],
        NonFinite(15, "2", "backward", "x"),
    ),
    _findings(NET, [(WEIGHT_GRAD_NORM, "0", [1e-4] * 4), (WEIGHT_GRAD_NORM, "4", [1.0] * 4)]),
    _findings(NET, [(SATURATED_FRACTION, "3", [0.9] * 4)]),
    _findings(NET, [(DEAD_FRACTION, "1", [0.9] * 4)]),
    _findings(NET, [(INPUT_RMS, INPUT, [100.0] * 4)]),
    _findings(NET, [(UPDATE_RATIO, "0", [0.5] * 4)]),
]


def prescribed() -> dict[str, set]:
    """Every (key, value) the verdicts prescribe, over the settings a run can have."""
    out: dict[str, set] = {}
    for act, norm, residual, good_init in itertools.product(ACTIVATIONS, ("none", "batch"), (False, True), (0, 1)):
        settings = {
            "model.activation": act,
            "model.norm": norm,
            "model.residual": residual,
            "init.scheme": GOOD_INITS[act][0] if good_init else "default",
            "optim.lr": 0.1,
            "clip.mode": "none",
            "data.scale": "none",
        }
        for findings in SICK:
            for verdict in diagnose(findings, settings):
                for key, value in verdict.prescription.items():
                    out.setdefault(key, set()).add(value)
    return out


def test_every_prescribed_key_and_value_has_a_pytorch_sentence():
    keys = prescribed()
    assert set(keys) == {
        "init.scheme", "model.norm", "model.residual", "model.activation",
        "clip.mode", "clip.threshold", "optim.lr", "data.scale",
    }  # fmt: skip
    assert set(keys) <= set(TRANSLATIONS)
    model = sick_net()
    for key, values in keys.items():
        for value in values:
            said = in_pytorch({key: value}, model=model, settings={"optim.lr": 0.1})
            assert said[key].count("`") >= 2, (key, value, said)  # says it in code


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("init.scheme", INITIALIZERS),
        ("model.norm", NORMS),
        ("model.activation", ACTIVATIONS),
        ("clip.mode", CLIP_MODES),
        ("data.scale", SCALINGS),
    ],
)
def test_every_registered_value_translates(key, names):
    for name in names:
        for model in (None, nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2))):
            assert in_pytorch({key: name}, model=model)[key]
    with pytest.raises(UnknownNameError, match="did you mean"):
        in_pytorch({key: "nope_" + next(iter(names))})


def test_clip_threshold_joins_the_clip_sentence_and_an_unknown_key_fails():
    said = in_pytorch({"clip.mode": "value", "clip.threshold": 5.0})
    assert list(said) == ["clip.mode"] and "clip_grad_value_(model.parameters(), clip_value=5)" in said["clip.mode"]
    assert "max_norm=2" in in_pytorch({"clip.threshold": 2.0})["clip.threshold"]
    with pytest.raises(UnknownNameError, match="unknown prescription key 'model.depth'"):
        in_pytorch({"model.depth": 3})


@pytest.mark.parametrize("scheme", [s for s in INIT_CALLS if s not in ("default", "lsuv")])
@pytest.mark.parametrize("make", [lambda: nn.Linear(300, 200), lambda: nn.Conv2d(16, 32, 3)])
def test_each_init_call_draws_as_tricklab_s_scheme(scheme, make):
    torch.manual_seed(0)
    m = make()
    exec(INIT_CALLS[scheme], {"m": m, "nn": nn})
    ref = init_weight_(torch.empty_like(m.weight), scheme, torch.Generator().manual_seed(1))
    w = m.weight.detach()
    assert w.std().item() == pytest.approx(ref.std().item(), rel=0.05)
    assert w.abs().max().item() == pytest.approx(ref.abs().max().item(), rel=0.25)


# --- observe(labels=): the label-prior rule in a loop of your own ----------------------------------------------


def random_label_loop(with_labels: bool):
    """Labels independent of the inputs, a head biased far from their frequencies: the loss falls (to chance) but
    the net learns nothing from its inputs."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2048, 16, generator=g), torch.randint(0, 4, (2048,), generator=g)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        net[2].bias.copy_(torch.tensor([3.0, -1.0, -1.0, -1.0]))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with tricklab.Doctor(net, opt) as doctor:
        for step in range(150):
            i = (step * 64) % 2048
            loss = F.cross_entropy(net(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.observe(loss=loss.detach(), labels=y[i : i + 64] if with_labels else None)
    return doctor


def test_observed_labels_let_the_loop_be_judged_against_the_label_prior():
    doctor = random_label_loop(with_labels=True)
    prior = doctor.findings().records.series(PRIOR_LOSS, MODEL)[1]
    assert len(prior) == 1 and prior[0] == pytest.approx(math.log(4), abs=0.01)  # 4 balanced classes
    assert "loss_not_decreasing" in [v.name for v in doctor.verdicts()]
    unlabelled = random_label_loop(with_labels=False)  # its loss fell (to chance): the older rule sees no problem
    assert unlabelled.findings().records.series(PRIOR_LOSS, MODEL)[1] == []
    assert "loss_not_decreasing" not in [v.name for v in unlabelled.verdicts()]


@pytest.mark.parametrize(
    "labels", [torch.zeros(4), torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, dtype=torch.bool), [0, 1]]
)
def test_observe_refuses_labels_that_are_not_a_1d_integer_tensor(labels):
    net = nn.Linear(4, 2)
    with tricklab.Doctor(net) as doctor, pytest.raises(TrickLabError, match="1-D integer tensor"):
        doctor.observe(labels=labels)


def test_observed_labels_of_any_integer_dtype_are_counted_and_negative_ones_refused():
    net = nn.Linear(4, 3)
    with tricklab.Doctor(net, every=1) as doctor:
        net(torch.randn(8, 4))
        doctor.observe(labels=torch.tensor([0, 1, 2, 2], dtype=torch.uint8))
    prior = doctor.findings().records.series(PRIOR_LOSS, MODEL)[1]
    assert prior == [pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))]
    with tricklab.Doctor(net, every=1) as doctor, pytest.raises(TrickLabError, match="class labels must be >= 0"):
        doctor.observe(labels=torch.tensor([0, -1]))
