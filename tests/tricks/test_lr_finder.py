"""LR range test: the suggestion on a problem whose good LRs are known, clarity, restoring the model, plot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.errors import ConfigError
from tricklab.report.lr_find import plot_lr_find
from tricklab.tricks.lr_finder import clarity_of, lr_range_test, suggest_lrs

N, D = 64, 10


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)


@pytest.fixture
def regression():
    """Four batches of y = X w + noise; returns the batches and SGD's stability limit 2 / λ_max(H)."""
    torch.manual_seed(0)
    x = torch.randn(4 * N, D)
    y = x @ torch.randn(D, 1) + 0.1 * torch.randn(4 * N, 1)
    batches = [(x[i * N : (i + 1) * N], y[i * N : (i + 1) * N]) for i in range(4)]
    with_bias = torch.cat([x, torch.ones(4 * N, 1)], dim=1)
    hessian = 2 * with_bias.T @ with_bias / (4 * N)  # of the mean squared error in (w, b)
    return batches, 2 / float(torch.linalg.eigvalsh(hessian)[-1])


def test_suggestion_lands_in_the_known_good_range_of_linear_regression(regression):
    batches, stable = regression
    result = lr_range_test(nn.Linear(D, 1), batches, F.mse_loss, sgd)
    # Above 2/λ_max plain SGD diverges on this quadratic; below 1e-2 it needs ≫ 100 steps (λ_min ≈ 1.3).
    assert 1e-2 < result.suggestion < stable
    assert 1e-2 < result.lr_min_div10 < stable
    assert result.verdict == "clear" and result.clarity >= 0.6
    assert "agree" in result.reason


def test_records_geometric_lrs_and_the_bias_corrected_moving_average(regression):
    batches, _ = regression
    result = lr_range_test(nn.Linear(D, 1), batches, F.mse_loss, sgd, start_lr=1e-5, end_lr=1.0, smooth=0.9)
    n = 100
    assert result.lrs == pytest.approx([1e-5 * (1e5) ** (i / (n - 1)) for i in range(len(result.lrs))])
    for i, smoothed in enumerate(result.smoothed):
        ema = sum((1 - 0.9) * 0.9 ** (i - j) * loss for j, loss in enumerate(result.losses[: i + 1]))
        expected = ema / (1 - 0.9 ** (i + 1))
        assert smoothed == pytest.approx(expected, rel=1e-9)


def test_stops_early_once_the_loss_diverges(regression):
    batches, stable = regression
    result = lr_range_test(nn.Linear(D, 1), batches, F.mse_loss, sgd, end_lr=100.0, num_steps=60)
    assert result.diverged
    assert len(result.lrs) < 60 and result.lrs[-1] < 100.0
    assert result.lrs[-1] > stable  # it went on until the LR was really too large
    assert result.smoothed[-1] > 4.0 * min(result.smoothed)
    assert all(math.isfinite(v) for v in result.losses)


@pytest.mark.parametrize("how", ["frozen", "zero_gradients"])
def test_a_model_whose_loss_cannot_move_is_unclear(regression, how):
    batches, _ = regression
    model = nn.Linear(D, 1)
    if how == "frozen":
        model.requires_grad_(False)
    else:  # every step is a zero step, whatever the LR
        for p in model.parameters():
            p.register_hook(torch.zeros_like)
    result = lr_range_test(model, batches, F.mse_loss, sgd)
    assert result.verdict == "unclear" and result.clarity < 0.25
    assert not result.diverged and len(result.lrs) == 100
    assert "barely moved" in result.reason


def test_model_is_restored_bit_identically():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)
    batches = [(torch.randn(N, D), torch.randn(N, 1)) for _ in range(3)]

    adam = lambda params, lr: torch.optim.Adam(params, lr=lr)
    lr_range_test(model, batches, F.mse_loss, adam, num_steps=30, end_lr=1.0)

    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not model.training
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.5))
    assert model[4].weight.grad is None


def test_model_is_restored_even_when_the_loss_fails():
    model = nn.Linear(D, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing_loss(out, y):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return F.mse_loss(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        lr_range_test(model, [(torch.randn(N, D), torch.randn(N, 1))], failing_loss, sgd, end_lr=1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_suggestions_and_clarity_formula():
    lrs, smoothed = [1e-4, 1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.98, 0.6, 0.3, 0.9]
    assert suggest_lrs(lrs, smoothed) == (1e-2, 1e-2)  # steepest 0.98 → 0.3 around 1e-2; min at 0.1
    # drop 50% → full drop score; 10× disagreement → agreement 1 − log10(10/3)
    clarity, drop, agreement = clarity_of([1.0, 0.5], 0.1, 1.0)
    assert (drop, agreement) == pytest.approx((0.5, 1 - math.log10(10 / 3)))
    assert clarity == pytest.approx(0.5 + 0.5 * agreement)
    assert clarity_of([1.0, 0.9], 0.1, 0.2)[0] == pytest.approx(0.2)  # agree, 10% drop → 0.2


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"start_lr": 0.0}, "lr_find.start_lr"),
        ({"end_lr": 1e-8}, "lr_find.end_lr"),
        ({"num_steps": 1}, "lr_find.num_steps"),
        ({"smooth": 1.0}, "lr_find.smooth"),
        ({"diverge": 1.0}, "lr_find.diverge"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        lr_range_test(nn.Linear(D, 1), [(torch.randn(N, D), torch.randn(N, 1))], F.mse_loss, sgd, **kwargs)


def test_plot_writes_a_png(regression, tmp_path):
    batches, _ = regression
    result = lr_range_test(nn.Linear(D, 1), batches, F.mse_loss, sgd, num_steps=40)
    path = plot_lr_find(result, tmp_path / "plots" / "lr_find.png")
    assert path == tmp_path / "plots" / "lr_find.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
