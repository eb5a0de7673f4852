"""Signal propagation at init: the measured per-layer std follows the closed form (n_in · Var(W))^depth."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tricklab.diagnostics.signal import compare_inits, signal_profile
from tricklab.tricks.init import INITIALIZERS, apply_init

WIDTH, DEPTH = 64, 8


def linear_stack(act: type[nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH)] + ([act()] if act else [])
    return nn.Sequential(*layers, nn.Linear(WIDTH, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, WIDTH, generator=g), torch.randint(0, 3, (512,), generator=g)


def growth_per_layer(stds: list[float]) -> float:
    return math.exp((math.log(stds[DEPTH - 1]) - math.log(stds[0])) / (DEPTH - 1))


@pytest.mark.parametrize("scheme, factor", [("standard_normal", math.sqrt(WIDTH)), ("gaussian", 1.0)])
def test_forward_std_grows_by_sqrt_n_in_var_w_per_linear_layer(batch, scheme, factor):
    torch.manual_seed(0)
    model = linear_stack()
    apply_init(model, scheme, generator=torch.Generator().manual_seed(0))
    profile = signal_profile(model, *batch)
    assert len(profile.layers) == DEPTH + 1
    assert growth_per_layer(profile.forward_std) == pytest.approx(factor, rel=0.15)
    hidden = profile.backward_std[:DEPTH]  # ∂L/∂z_l = W_{l+1}ᵀ ∂L/∂z_{l+1}: the same factor, input-wards
    assert growth_per_layer(hidden[::-1]) == pytest.approx(factor, rel=0.15)


def test_he_keeps_relu_nets_flat_and_standard_normal_explodes(batch):
    profiles = {
        p.scheme: p for p in compare_inits(lambda: linear_stack(nn.ReLU), *batch, ["he_normal", "standard_normal"])
    }
    assert growth_per_layer(profiles["he_normal"].forward_std) == pytest.approx(1.0, rel=0.15)
    assert growth_per_layer(profiles["standard_normal"].forward_std) == pytest.approx(math.sqrt(WIDTH / 2), rel=0.15)


def test_every_init_scheme_is_profiled_and_the_model_is_left_untouched(batch):
    model = nn.Sequential(nn.Linear(WIDTH, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    signal_profile(model, *batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics restored
    assert all(p.grad is None for p in model.parameters())
    profiles = compare_inits(lambda: nn.Sequential(nn.Linear(WIDTH, 16), nn.Tanh(), nn.Linear(16, 3)), *batch)
    assert [p.scheme for p in profiles] == INITIALIZERS.names()
    assert all(p.error is None and len(p.forward_std) == 2 for p in profiles)
