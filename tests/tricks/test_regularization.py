import math

import pytest
import torch
from torch import nn

from tricklab.errors import ConfigError
from tricklab.events import FitState
from tricklab.tricks.clipping import GradClip
from tricklab.tricks.regularization import L1Penalty, add_l1_grad_, l1_penalty


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0  # sign(0) = 0: no pull on a weight that is already zero
        model[1].weight.uniform_(0.5, 1.5)
    return model


def _random_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_penalty_is_the_sum_of_absolute_weights_only():
    model = _model()
    expected = model[0].weight.abs().sum() + model[2].weight.abs().sum()
    assert torch.allclose(l1_penalty(model), expected)
    assert l1_penalty(model.parameters()).item() == pytest.approx(expected.item())


def test_added_gradient_equals_autograd_of_the_penalty():
    l1 = 3e-2
    model = _model()
    (l1 * l1_penalty(model)).backward()
    autograd = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(autograd) == {"0.weight", "2.weight"}

    before = _random_grads(model)
    add_l1_grad_(model, l1)
    for n, p in model.named_parameters():
        if n in autograd:
            assert torch.equal(p.grad, before[n] + autograd[n]), n
        else:  # biases and the BatchNorm weight/bias
            assert torch.equal(p.grad, before[n]), n
    assert model[0].weight.grad[0, 0] == before["0.weight"][0, 0]


def test_weight_without_a_gradient_gets_the_penalty_gradient():
    model = _model()
    add_l1_grad_(model, 0.5)
    assert torch.equal(model[2].weight.grad, 0.5 * torch.sign(model[2].weight.detach()))
    assert model[2].bias.grad is None


def test_callback_adds_l1_after_backward_before_clipping():
    model = _model()
    state = FitState(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        device=torch.device("cpu"),
    )
    before = _random_grads(model)
    L1Penalty(0.1).on_after_backward(state)
    expected = before["2.weight"] + 0.1 * torch.sign(model[2].weight.detach())
    assert torch.equal(model[2].weight.grad, expected)
    assert torch.equal(model[2].bias.grad, before["2.bias"])
    assert L1Penalty.order < GradClip.order


def test_l1_shrinks_a_weight_with_no_loss_gradient_to_zero():
    w = nn.Parameter(torch.tensor([[0.3, -0.2]]))
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(10):
        w.grad = torch.zeros_like(w)
        add_l1_grad_([w], 0.5)
        opt.step()
    # each step moves |w| by 0.05 toward 0 until it crosses, then it oscillates within one step of 0
    assert w.detach().abs().max().item() <= 0.05 + 1e-6


@pytest.mark.parametrize("bad", [-1e-4, math.nan, math.inf])
def test_bad_l1_names_the_config_key(bad):
    with pytest.raises(ConfigError) as err:
        L1Penalty(bad)
    assert err.value.key == "optim.l1"
    with pytest.raises(ConfigError):
        add_l1_grad_(_model(), bad)
