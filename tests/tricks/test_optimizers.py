import math

import pytest
import torch
from torch import nn

from tricklab.errors import ConfigError, UnknownNameError
from tricklab.tricks.optimizers import OPTIMIZERS, NormalizedGD, build_optimizer, weight_decay_groups


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _set_grads(params, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def test_registry_names_in_order():
    assert OPTIMIZERS.names() == ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "ngd"]


# Adagrad's steps shrink like 1/√t and NGD's have fixed length η: both need a larger η to travel as far.
QUADRATIC_LR = {"adagrad": 0.5, "ngd": 0.2}


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_decreases_a_convex_quadratic(name):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4) + 2.0)
    b = nn.Parameter(torch.randn(3) - 2.0)
    curvature = torch.linspace(0.5, 2.0, 15)

    def loss() -> torch.Tensor:
        return 0.5 * (curvature * torch.cat([w.reshape(-1), b]) ** 2).sum()

    opt = build_optimizer(name, [w, b], lr=QUADRATIC_LR.get(name, 0.05), momentum=0.9)
    start = loss().item()
    for _ in range(50):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.25 * start


def test_ngd_step_has_length_lr_over_all_tensors():
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(5))
    opt = build_optimizer("ngd", [w, b], lr=0.037)
    _set_grads([w, b])
    before = _flat([w, b])
    opt.step()
    step = _flat([w, b]) - before
    assert torch.linalg.vector_norm(step).item() == pytest.approx(0.037, abs=1e-6)
    grad = _flat([w.grad, b.grad])
    assert torch.allclose(step, -0.037 * grad / grad.norm(), atol=1e-7)  # along −∇L, one global norm


def test_ngd_global_norm_spans_param_groups():
    w, b = nn.Parameter(torch.randn(4, 2)), nn.Parameter(torch.randn(4))
    opt = NormalizedGD([{"params": [w]}, {"params": [b]}], lr=0.5)
    _set_grads([w, b], seed=3)
    before = _flat([w, b])
    opt.step()
    assert torch.linalg.vector_norm(_flat([w, b]) - before).item() == pytest.approx(0.5, abs=1e-6)


def test_ngd_zero_gradient_takes_no_step():
    w = nn.Parameter(torch.randn(3, 3))
    opt = build_optimizer("ngd", [w], lr=0.1)
    w.grad = torch.zeros_like(w)
    before = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize(
    ("name", "flags"),
    [("sgd", {}), ("momentum", {"momentum": 0.8}), ("nesterov", {"momentum": 0.8, "nesterov": True})],
)
def test_sgd_family_matches_torch_sgd(name, flags):
    torch.manual_seed(0)
    ours, ref = _model(), _model()
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer(name, ours, lr=0.1, momentum=0.8, weight_decay=1e-2)
    # torch's SGD with the same flags; decay on weights only, like ours
    ref_opt = torch.optim.SGD(weight_decay_groups(ref.parameters(), 1e-2), lr=0.1, **flags)
    for group in opt.param_groups:
        assert group["momentum"] == flags.get("momentum", 0)
        assert group["nesterov"] == flags.get("nesterov", False)
    for step in range(3):
        _set_grads(ours.parameters(), seed=step)
        _set_grads(ref.parameters(), seed=step)
        opt.step()
        ref_opt.step()
    assert torch.equal(_flat(ours.parameters()), _flat(ref.parameters()))


def test_adam_coupled_decay_moves_a_zero_gradient_weight_by_about_lr():
    lr, wd = 1e-3, 1e-2
    w = nn.Parameter(torch.tensor([[2.0, -0.5, 3.0]]))
    w0 = w.detach().clone()
    opt = build_optimizer("adam", [w], lr=lr, weight_decay=wd)
    w.grad = torch.zeros_like(w)  # the loss does not depend on w
    opt.step()
    g = wd * w0  # the L2 gradient, which Adam then normalizes: m̂/√v̂ = g/|g|
    expected = w0 - lr * g / (g.abs() + 1e-8)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-7)
    assert torch.allclose((w0 - w.detach()).abs(), torch.full_like(w0, lr), rtol=1e-4)


def test_adam_decoupled_decay_moves_a_zero_gradient_weight_by_lr_wd_w():
    lr, wd = 1e-3, 1e-2
    w = nn.Parameter(torch.tensor([[2.0, -0.5, 3.0]]))
    w0 = w.detach().clone()
    opt = build_optimizer("adam", [w], lr=lr, weight_decay=wd, decoupled=True)
    assert isinstance(opt, torch.optim.AdamW)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.allclose(w.detach(), w0 - lr * wd * w0, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["sgd", "momentum"])
def test_sgd_coupled_and_decoupled_decay_coincide_for_one_step(name):
    torch.manual_seed(0)
    a, b = _model(), _model()
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(name, a, lr=0.1, weight_decay=0.05)
    opt_b = build_optimizer(name, b, lr=0.1, weight_decay=0.05, decoupled=True)
    _set_grads(a.parameters())
    _set_grads(b.parameters())
    weight = a[0].weight.detach().clone()
    opt_a.step()
    opt_b.step()
    assert torch.allclose(_flat(a.parameters()), _flat(b.parameters()), atol=1e-7)
    assert torch.allclose(a[0].weight.detach(), weight - 0.1 * (b[0].weight.grad + 0.05 * weight), atol=1e-7)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_decoupled_step_is_shrink_then_plain_step(name):
    """decoupled = multiply weights by (1 − ηλ), then the same optimizer without decay."""
    torch.manual_seed(0)
    lr, wd = 0.05, 0.3
    ours, ref = _model(), _model()
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer(name, ours, lr=lr, momentum=0.9, weight_decay=wd, decoupled=True)
    ref_opt = build_optimizer(name, ref, lr=lr, momentum=0.9)
    for step in range(3):
        _set_grads(ours.parameters(), seed=step)
        _set_grads(ref.parameters(), seed=step)
        with torch.no_grad():
            for p in ref.parameters():
                if p.ndim >= 2:
                    p.mul_(1 - lr * wd)
        opt.step()
        ref_opt.step()
    assert torch.allclose(_flat(ours.parameters()), _flat(ref.parameters()), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "decoupled"),
    [(n, d) for n in OPTIMIZERS.names() for d in (False, True) if (n, d) != ("adamw", False)],
)
def test_biases_and_norm_parameters_are_not_decayed(name, decoupled):
    torch.manual_seed(0)
    model = _model()
    opt = build_optimizer(name, model, lr=0.1, weight_decay=0.5, decoupled=decoupled)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only the decay can move anything
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        if p.ndim >= 2:
            assert not torch.equal(p.detach(), before[n]), n
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_decay_groups_split_weights_from_biases_and_norm_parameters():
    model = _model()
    decay, no_decay = weight_decay_groups(model.parameters(), 0.1)
    assert [id(p) for p in decay["params"]] == [id(model[0].weight), id(model[2].weight)]
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[2].bias),
    }
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_frozen_parameters_are_left_out():
    model = _model()
    model[0].requires_grad_(False)
    opt = build_optimizer("sgd", model, lr=0.1)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model[0].weight) not in held and id(model[2].weight) in held


def test_closure_is_evaluated_and_returned():
    model = _model()
    x = torch.randn(8, 4)
    opt = build_optimizer("sgd", model, lr=0.1, weight_decay=0.1, decoupled=True)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    first = opt.step(closure).item()
    assert opt.step(closure).item() < first


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"lr": 0.0}, "optim.lr"),
        ({"lr": -0.1}, "optim.lr"),
        ({"lr": math.nan}, "optim.lr"),
        ({"lr": math.inf}, "optim.lr"),
        ({"lr": 0.1, "momentum": 1.0}, "optim.momentum"),
        ({"lr": 0.1, "momentum": -0.1}, "optim.momentum"),
        ({"lr": 0.1, "weight_decay": -1e-4}, "optim.weight_decay"),
        ({"lr": 0.1, "weight_decay": math.nan}, "optim.weight_decay"),
    ],
)
def test_bad_arguments_name_the_config_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        build_optimizer("momentum", _model(), **kwargs)
    assert err.value.key == key
    assert key in str(err.value)


def test_adamw_refuses_coupled_decay():
    with pytest.raises(ConfigError) as err:
        build_optimizer("adamw", _model(), lr=1e-3, weight_decay=1e-2, decoupled=False)
    assert err.value.key == "optim.decoupled"
    assert isinstance(build_optimizer("adamw", _model(), lr=1e-3), torch.optim.AdamW)


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError) as err:
        build_optimizer("nesterov", _model(), lr=0.1, momentum=0.0)
    assert err.value.key == "optim.momentum"


def test_unknown_name_suggests_a_valid_one():
    with pytest.raises(UnknownNameError, match="did you mean 'adamw'"):
        build_optimizer("adamww", _model(), lr=0.1)


@pytest.mark.parametrize(
    "name, device, fused",
    [
        ("adam", "cpu", True),
        ("adamw", "cpu", True),
        ("momentum", "cpu", True),
        ("adagrad", "cpu", True),
        ("adagrad", "cuda", False),  # torch has no fused Adagrad kernel on CUDA
        ("rmsprop", "cpu", False),  # no fused kernel at all
        ("ngd", "cpu", False),
    ],
)
def test_fused_kernel_is_taken_where_torch_has_one_for_the_device(name, device, fused):
    opt = build_optimizer(name, nn.Linear(3, 2), lr=0.1, fused=True, device=device)
    assert all(bool(g.get("fused")) is fused for g in opt.param_groups)


def test_the_decoupled_variants_keep_their_own_step_when_fused_is_asked():
    opt = build_optimizer("momentum", nn.Linear(3, 2), lr=0.1, weight_decay=1e-2, decoupled=True, fused=True)
    assert not any(g.get("fused") for g in opt.param_groups)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw", "adagrad"])
def test_fused_and_unfused_steps_agree(name):
    """The fused kernel is a faster way to take the same step: 20 steps on the same gradients end within float32
    rounding of each other."""
    torch.manual_seed(0)
    a, b = nn.Linear(16, 4), nn.Linear(16, 4)
    b.load_state_dict(a.state_dict())
    decay = {"weight_decay": 1e-3, "decoupled": name == "adamw"}
    opts = [build_optimizer(name, m, lr=0.01, fused=f, **decay) for m, f in ((a, False), (b, True))]
    assert opts[1].param_groups[0].get("fused") and not opts[0].param_groups[0].get("fused")
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    for _ in range(20):
        for m, opt in zip((a, b), opts, strict=True):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_assembly_builds_fused_optimizers_on_cpu():
    from tricklab.assembly import build_optimizer as from_config
    from tricklab.config import load_config

    for name, fused in (("adam", True), ("rmsprop", False)):
        cfg = load_config(overrides={"optim.name": name, "train.device": "cpu"})
        opt = from_config(cfg, nn.Sequential(nn.Linear(4, 3)))
        assert bool(opt.param_groups[0].get("fused")) is fused
