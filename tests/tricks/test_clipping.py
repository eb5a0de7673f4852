import math

import pytest
import torch
from torch import nn

from tricklab.errors import ConfigError, UnknownNameError
from tricklab.events import FitState
from tricklab.tricks.clipping import (
    CLIP_FRACTION,
    CLIP_MODES,
    GRAD_NORM,
    GRAD_NORM_MAX,
    GradClip,
    adaptive_clip_,
    agc_parameters,
    clip_by_norm_,
    clip_by_value_,
    global_grad_norm,
    unitwise_norm,
)


def _params(scale: float, seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(5, 3, generator=gen)), nn.Parameter(torch.randn(5, generator=gen))]
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=gen)
    return params


def _grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


def _state(model: nn.Module) -> FitState:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return FitState(model=model, optimizer=opt, epochs=1, device=torch.device("cpu"))


def test_registry_names():
    assert CLIP_MODES.names() == ["none", "norm", "value", "agc"]


@pytest.mark.parametrize("mode", CLIP_MODES.names())
def test_every_mode_leaves_small_gradients_and_reports_what_it_changed(mode):
    clip = CLIP_MODES.get(mode)
    small = _params(1e-6)
    before = _grads(small)
    assert clip(small, 1.0) is False
    assert all(torch.equal(p.grad, b) for p, b in zip(small, before, strict=True))

    large = _params(100.0)
    pre = global_grad_norm(large)
    changed = clip(large, 1.0)
    assert changed is (mode != "none")
    assert (global_grad_norm(large) < pre) is changed


def test_global_norm_is_one_vector_norm_and_keeps_inf_and_nan():
    params = _params(1.0)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    assert global_grad_norm(params) == pytest.approx(flat.norm().item(), rel=1e-6)
    params[1].grad[0] = math.inf
    assert global_grad_norm(params) == math.inf
    params[1].grad[0] = math.nan
    assert math.isnan(global_grad_norm(params))


@pytest.mark.parametrize("threshold", [1.0, 10.0])
def test_norm_clipping_bounds_the_norm_and_matches_torch(threshold):
    ours, ref = _params(20.0), _params(20.0)
    pre = clip_by_norm_(ours, threshold)
    ref_pre = torch.nn.utils.clip_grad_norm_(ref, threshold)
    assert pre == pytest.approx(ref_pre.item(), rel=1e-6)
    assert pre > threshold
    assert global_grad_norm(ours) <= threshold * (1 + 1e-6)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)


def test_norm_clipping_leaves_a_small_gradient_unchanged():
    params = _params(0.01)
    before = _grads(params)
    pre = clip_by_norm_(params, 1.0)
    assert pre < 1.0
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))


def test_norm_clipping_keeps_the_direction():
    params = _params(20.0)
    before = torch.cat([g.reshape(-1) for g in _grads(params)])
    clip_by_norm_(params, 1.0)
    after = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.nn.functional.cosine_similarity(before, after, dim=0).item() == pytest.approx(1.0, abs=1e-6)


def test_value_clipping_bounds_every_element_and_keeps_the_small_ones():
    params = _params(5.0)
    before = _grads(params)
    largest = clip_by_value_(params, 1.0)
    assert largest == pytest.approx(max(b.abs().max().item() for b in before))
    for p, b in zip(params, before, strict=True):
        assert p.grad.abs().max().item() <= 1.0
        small = b.abs() <= 1.0
        assert torch.equal(p.grad[small], b[small])
        assert torch.equal(p.grad[~small], b[~small].sign())


def test_agc_bounds_every_unit_ratio_and_leaves_small_units_alone():
    lam, eps = 0.1, 1e-3
    w = nn.Parameter(torch.randn(6, 4))
    b = nn.Parameter(torch.zeros(6))  # ‖w‖ = 0, so its bound is λ·ε
    torch.manual_seed(0)
    w.grad = torch.randn(6, 4) * torch.tensor([0.001, 0.01, 0.5, 1.0, 0.02, 3.0]).unsqueeze(1)
    b.grad = torch.full((6,), 1e-3)
    before_w, before_b = w.grad.clone(), b.grad.clone()
    ratio_before = unitwise_norm(before_w) / unitwise_norm(w.detach()).clamp_min(eps)
    n = adaptive_clip_([w, b], lam, eps)

    ratio = unitwise_norm(w.grad) / unitwise_norm(w.detach()).clamp_min(eps)
    assert (ratio <= lam * (1 + 1e-5)).all()
    over = (ratio_before > lam).squeeze(1)
    assert 0 < over.sum() < 6  # the scripted gradients straddle the threshold
    assert torch.equal(w.grad[~over], before_w[~over])
    assert torch.allclose(ratio[over], torch.full_like(ratio[over], lam), rtol=1e-5)
    assert torch.linalg.vector_norm(b.grad).item() == pytest.approx(lam * eps, rel=1e-5)  # whole-vector unit
    assert torch.allclose(b.grad / b.grad.norm(), before_b / before_b.norm())
    assert n == int(over.sum()) + 1


def test_agc_skips_the_last_linear_by_default():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in agc_parameters(model)) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert sorted(names[id(p)] for p in agc_parameters(model, skip=["0"])) == [
        "2.bias",
        "2.weight",
        "4.bias",
        "4.weight",
    ]
    assert len(agc_parameters(model, skip=())) == 6
    with pytest.raises(ConfigError) as err:
        agc_parameters(model, skip=["fc"])
    assert err.value.key == "clip.agc_skip"


def test_agc_callback_leaves_the_classifier_gradient_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    GradClip("agc", 0.01).on_after_backward(_state(model))
    assert torch.equal(model[1].weight.grad, torch.full_like(model[1].weight, 100.0))
    assert (model[0].weight.grad.abs() < 100.0).all()


def _scripted(model: nn.Module, clip: GradClip, rows: list[list[float]]) -> FitState:
    """One epoch in which each step's weight gradient is a scripted row (bias gradient 0)."""
    state = _state(model)
    clip.on_epoch_start(state)
    for row in rows:
        model.weight.grad = torch.tensor([row])
        model.bias.grad = torch.zeros(1)
        clip.on_after_backward(state)
    clip.on_epoch_end(state)
    return state


def test_callback_records_norms_and_exact_clip_fraction():
    model = nn.Linear(2, 1)
    clip = GradClip("norm", 1.0)
    # norms 0.5, 2, 1 (at θ: not clipped), 5 (3-4-5), 0
    state = _scripted(model, clip, [[0.5, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert state.epoch_extras[CLIP_FRACTION] == 2 / 5
    assert state.epoch_extras[GRAD_NORM] == pytest.approx((0.5 + 2 + 1 + 5 + 0) / 5)
    assert state.epoch_extras[GRAD_NORM_MAX] == pytest.approx(5.0)
    # a new epoch starts from zero
    state = _scripted(model, clip, [[0.1, 0.0], [0.2, 0.0]])
    assert state.epoch_extras[CLIP_FRACTION] == 0.0
    assert state.epoch_extras[GRAD_NORM_MAX] == pytest.approx(0.2)


def test_value_mode_clip_fraction_counts_steps_with_an_element_over_theta():
    model = nn.Linear(2, 1)
    state = _scripted(model, GradClip("value", 1.0), [[0.5, -1.0], [0.5, -1.5], [3.0, 0.0], [0.9, 0.9]])
    assert state.epoch_extras[CLIP_FRACTION] == 2 / 4
    assert state.epoch_extras[GRAD_NORM_MAX] == pytest.approx(3.0)


def test_none_mode_records_the_norm_and_changes_nothing():
    model = nn.Linear(2, 1)
    state = _scripted(model, GradClip("none"), [[30.0, 40.0]])
    assert torch.equal(model.weight.grad, torch.tensor([[30.0, 40.0]]))
    assert state.epoch_extras == {GRAD_NORM: 50.0, GRAD_NORM_MAX: 50.0, CLIP_FRACTION: 0.0}


def test_nan_norm_is_recorded_not_hidden():
    model = nn.Linear(2, 1)
    state = _scripted(model, GradClip("norm", 1.0), [[0.5, 0.0], [math.nan, 0.0], [0.2, 0.0]])
    assert math.isnan(state.epoch_extras[GRAD_NORM])
    assert math.isnan(state.epoch_extras[GRAD_NORM_MAX])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_threshold_names_the_config_key(bad):
    with pytest.raises(ConfigError) as err:
        GradClip("norm", bad)
    assert err.value.key == "clip.threshold"


def test_unknown_mode_suggests_a_valid_one():
    with pytest.raises(UnknownNameError, match="did you mean 'norm'"):
        GradClip("nrom", 1.0)
