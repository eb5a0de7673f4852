"""Weight initialization: each scheme's statistics against its closed form, signal propagation, LSUV."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from tricklab.errors import ConfigError, UnknownNameError
from tricklab.tricks.init import INITIALIZERS, apply_init, fan_in_and_out, init_weight_, lsuv_

# Closed forms, written out independently of the module: (std, uniform bound or None) from (n_in, n_out).
EXPECTED = {
    "uniform": lambda i, o: (1 / math.sqrt(3 * i), 1 / math.sqrt(i)),
    "gaussian": lambda i, o: (1 / math.sqrt(i), None),
    "lecun_normal": lambda i, o: (1 / math.sqrt(i), None),
    "glorot_normal": lambda i, o: (math.sqrt(2 / (i + o)), None),
    "glorot_uniform": lambda i, o: (math.sqrt(2 / (i + o)), math.sqrt(6 / (i + o))),
    "he_normal": lambda i, o: (math.sqrt(2 / i), None),
    "he_uniform": lambda i, o: (math.sqrt(2 / i), math.sqrt(6 / i)),
    "standard_normal": lambda i, o: (1.0, None),
}

# Large layers so that sample statistics sit well inside 2%: fans (1000, 1000) and (800, 1200).
BIG_LAYERS = {"linear": lambda: nn.Linear(1000, 1000), "conv2d": lambda: nn.Conv2d(32, 48, 5)}


def mlp(width: int = 32) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
    )


def test_registry_names_in_order():
    assert INITIALIZERS.names() == [
        "default", "uniform", "gaussian", "lecun_normal", "glorot_normal", "glorot_uniform",
        "he_normal", "he_uniform", "orthogonal", "standard_normal", "lsuv",
    ]  # fmt: skip
    assert set(EXPECTED) == set(INITIALIZERS.names()) - {"default", "lsuv", "orthogonal"}
    assert all(entry.help for entry in INITIALIZERS.entries())


@pytest.mark.parametrize(
    "layer, fans",
    [
        (nn.Linear(3, 5), (3, 5)),
        (nn.Conv1d(4, 6, 3), (12, 18)),
        (nn.Conv2d(2, 8, (3, 5)), (30, 120)),
        (nn.Conv2d(4, 8, 3, groups=2), (18, 72)),
    ],
)
def test_fans_match_torch(layer, fans):
    assert fan_in_and_out(layer.weight) == fans
    assert fan_in_and_out(layer.weight) == nn.init._calculate_fan_in_and_fan_out(layer.weight)


@pytest.mark.parametrize("kind", BIG_LAYERS)
@pytest.mark.parametrize("scheme", EXPECTED)
def test_weight_statistics_match_formula(scheme, kind):
    torch.manual_seed(0)
    layer = BIG_LAYERS[kind]()
    info = apply_init(layer, scheme)
    w = layer.weight.detach()
    std, bound = EXPECTED[scheme](*fan_in_and_out(w))
    assert info == {"scheme": scheme, "layers": 1}
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert w.mean().abs().item() < 0.02 * std
    assert torch.count_nonzero(layer.bias) == 0
    if bound is not None:
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() >= 0.99 * bound
    if scheme == "lecun_normal":  # truncated at 2σ of the underlying normal: no outliers
        assert w.abs().max().item() <= 2 * std / 0.8796 + 1e-6
        assert w.abs().max().item() >= 2 * std


@pytest.mark.parametrize("kind", BIG_LAYERS)
def test_orthogonal_has_orthonormal_rows_or_columns(kind):
    torch.manual_seed(0)
    layer = BIG_LAYERS[kind]()
    apply_init(layer, "orthogonal")
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)  # torch's orthogonal_ flattens this way
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-4, rtol=0)
    assert w.std().item() == pytest.approx(1 / math.sqrt(max(w.shape)), rel=0.02)
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize(
    "scheme, reference",
    [
        ("glorot_normal", nn.init.xavier_normal_),
        ("glorot_uniform", nn.init.xavier_uniform_),
        (
            "he_normal",
            lambda w, generator: nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator),
        ),
        (
            "he_uniform",
            lambda w, generator: nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=generator),
        ),
        ("orthogonal", nn.init.orthogonal_),
    ],
)
@pytest.mark.parametrize("shape", [(64, 48), (16, 8, 3, 3)])
def test_matches_pytorch_reference_draw_for_draw(scheme, reference, shape):
    ours = init_weight_(torch.empty(shape), scheme, torch.Generator().manual_seed(3))
    theirs = reference(torch.empty(shape), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, theirs)


def test_default_leaves_pytorch_init_bit_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert apply_init(model, "default") == {"scheme": "default", "layers": 0}
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_norm_layers_untouched_and_biases_zeroed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2))
    nn.init.normal_(model[1].weight)
    nn.init.normal_(model[3].bias)
    norms = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("1.", "3."))}
    assert apply_init(model, "he_normal")["layers"] == 2
    assert torch.count_nonzero(model[0].bias) == 0 and torch.count_nonzero(model[2].bias) == 0
    for key, value in norms.items():
        assert torch.equal(model.state_dict()[key], value), key


def deep_linear_stds(scheme: str, width: int = 256, depth: int = 20) -> list[float]:
    torch.manual_seed(0)
    layers = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    apply_init(nn.Sequential(*layers), scheme)
    x = torch.randn(512, width)
    stds = [x.std().item()]
    with torch.no_grad():
        for layer in layers:
            x = layer(x)
            stds.append(x.std().item())
    return stds


def test_standard_normal_grows_activations_by_sqrt_width_per_layer():
    stds = deep_linear_stds("standard_normal")
    ratios = [b / a for a, b in zip(stds, stds[1:], strict=False)]
    assert all(r == pytest.approx(math.sqrt(256), rel=0.10) for r in ratios), ratios
    assert stds[-1] > 1e20


@pytest.mark.parametrize("scheme", ["lecun_normal", "gaussian"])
def test_variance_one_over_n_keeps_unit_scale_through_depth(scheme):
    stds = deep_linear_stds(scheme)
    assert 0.5 <= stds[-1] <= 2.0, stds


def output_variances(model: nn.Module, data: torch.Tensor) -> dict[str, float]:
    seen: dict[str, float] = {}

    def record(name: str, output: torch.Tensor) -> None:
        seen.setdefault(name, output.var().item())

    hooks = [
        m.register_forward_hook(lambda m, i, out, name=name: record(name, out))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    with torch.no_grad():
        model(data)
    for h in hooks:
        h.remove()
    return seen


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10)
    )


@pytest.mark.parametrize(
    "make, data_shape",
    [(lambda: mlp(64), (256, 10)), (small_cnn, (64, 3, 8, 8))],
    ids=["mlp", "cnn"],
)
def test_lsuv_gives_unit_output_variance_per_layer(make, data_shape):
    torch.manual_seed(0)
    model, data = make(), 3 * torch.randn(data_shape) + 1
    info = apply_init(model, "lsuv", data=data)
    measured = output_variances(model, data)
    assert info["scheme"] == "lsuv" and info["layers"] == 3
    assert measured.keys() == info["variance"].keys() == info["iterations"].keys()
    for name, var in measured.items():
        assert abs(var - 1) < 0.1, (name, var)
        assert info["variance"][name] == pytest.approx(var, rel=1e-5)
    assert sum(info["iterations"].values()) >= 1  # the input was not unit-scale, so something was rescaled
    assert all(torch.count_nonzero(m.bias) == 0 for m in model if isinstance(m, (nn.Linear, nn.Conv2d)))


def test_lsuv_max_iter_caps_the_rescalings():
    torch.manual_seed(0)
    model, data = mlp(), 5 * torch.randn(128, 10)
    capped = lsuv_(model, data, max_iter=0)  # orthogonal only: the input's scale 5 passes through
    assert list(capped["iterations"].values()) == [0, 0, 0]
    assert capped["variance"] == pytest.approx(output_variances(model, data), rel=1e-5)
    assert capped["variance"]["0"] > 5
    one = lsuv_(model, data, max_iter=1)  # bias-free layers are linear in W: one rescaling reaches 1
    assert list(one["iterations"].values()) == [1, 1, 1]
    assert all(abs(v - 1) < 1e-3 for v in one["variance"].values())


def test_lsuv_restores_mode_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 2))
    model.eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    apply_init(model, "lsuv", data=torch.randn(64, 10))
    assert not model.training
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key


def test_lsuv_without_data_names_the_key():
    with pytest.raises(ConfigError, match=r"init\.scheme = 'lsuv': needs a data batch"):
        apply_init(mlp(), "lsuv")


@pytest.mark.parametrize("scheme", ["he_normal", "glorot_uniform", "orthogonal"])
def test_weight_normalized_linear_gets_the_effective_weight(scheme):
    layer = weight_norm(nn.Linear(400, 300))
    apply_init(layer, scheme, generator=torch.Generator().manual_seed(1))
    expected = init_weight_(torch.empty(300, 400), scheme, torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=1e-5, atol=1e-7)
    g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    torch.testing.assert_close(g.detach().squeeze(1), expected.norm(dim=1))
    torch.testing.assert_close(v.detach(), expected)
    assert torch.count_nonzero(layer.bias) == 0


def test_lsuv_on_weight_normalized_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(10, 32)), nn.ReLU(), weight_norm(nn.Linear(32, 4)))
    data = 4 * torch.randn(128, 10)
    apply_init(model, "lsuv", data=data)
    assert all(abs(v - 1) < 0.1 for v in output_variances(model, data).values())


def test_parametrization_that_rewrites_the_weight_is_refused():
    with pytest.raises(ConfigError, match=r"init\.scheme = 'he_normal': layer '0'"):
        apply_init(nn.Sequential(spectral_norm(nn.Linear(20, 30))), "he_normal")


@pytest.mark.parametrize("scheme", INITIALIZERS.names())
def test_every_scheme_initializes_an_mlp(scheme):
    data = torch.randn(32, 10)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = mlp()
        info = apply_init(model, scheme, data=data, generator=torch.Generator().manual_seed(7))
        models.append(model)
    assert info["scheme"] == scheme
    assert all(torch.isfinite(p).all() for p in models[0].parameters())
    assert torch.isfinite(models[0](data)).all()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)  # a seeded generator makes the init reproducible
    if scheme != "default":
        assert info["layers"] == 3
        assert all(torch.count_nonzero(m.bias) == 0 for m in models[0] if isinstance(m, nn.Linear))


def test_unknown_scheme_suggests_the_closest_name():
    with pytest.raises(UnknownNameError, match="did you mean 'glorot_uniform'"):
        apply_init(mlp(), "glorot_unifrom")
    with pytest.raises(UnknownNameError, match="unknown init scheme 'xavier'"):
        init_weight_(torch.empty(3, 3), "xavier")


@pytest.mark.parametrize("scheme", ["default", "lsuv"])
def test_init_weight_refuses_model_level_schemes(scheme):
    with pytest.raises(ConfigError, match="use apply_init"):
        init_weight_(torch.empty(3, 3), scheme)
