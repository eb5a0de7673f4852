"""ResNet (He et al. 2016) and Inception (Szegedy et al. 2015): shapes, shortcuts, gradients, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.errors import ConfigError, UnknownNameError
from tricklab.models.inception import Inception, branch_widths
from tricklab.models.resnet import ResNet, stage_sizes
from tricklab.tricks.norms import NORMS

SHAPES = {"image": (1, 28, 28), "signal": (1, 40)}
ARCHS = {"resnet": ResNet, "inception": Inception}
NO_RESIDUAL = {"resnet": {}, "inception": {"residual": False}}


def build(arch: str, shape: str, **kwargs) -> nn.Module:
    kwargs = {"depth": 3, "width": 8, **NO_RESIDUAL[arch], **kwargs}
    return ARCHS[arch](SHAPES[shape], 10, **kwargs)


def batch(shape: str, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *SHAPES[shape])


def input_grad_norm(model: nn.Module, x: torch.Tensor) -> float:
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), torch.arange(len(x)) % 10).backward()
    return x.grad.norm().item()


@pytest.mark.parametrize("norm", NORMS.names())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_shape_for_every_norm(arch, shape, norm):
    torch.manual_seed(0)
    model = build(arch, shape, norm=norm)
    out = model(batch(shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_resnet_stages_halve_resolution_and_double_channels(shape):
    # depth 8 → stages of 3, 3, 2 blocks with 8, 16, 32 channels; 28 → 14 → 7 and 40 → 20 → 10
    model = build("resnet", shape, depth=8)
    assert stage_sizes(8) == [3, 3, 2] and stage_sizes(2) == [1, 1] and stage_sizes(1) == [1]
    assert len(model.blocks) == 8
    expected = (4, 32, 7, 7) if shape == "image" else (4, 32, 10)
    assert model.blocks(model.stem(batch(shape))).shape == expected


def test_inception_branch_split_reproduces_googlenet_3a():
    # Szegedy et al. 2015, Table 1, inception (3a): #1×1 64, #3×3 reduce 96, #3×3 128, #5×5 reduce 16,
    # #5×5 32, pool proj 32
    assert branch_widths(64) == {
        "1x1": 64,
        "3x3_reduce": 96,
        "3x3": 128,
        "5x5_reduce": 16,
        "5x5": 32,
        "pool_proj": 32,
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_inception_concatenates_4w_channels_and_pools_once(shape):
    model = build("inception", shape, depth=3)
    features = model.features(batch(shape))
    assert features.shape == ((4, 32, 14, 14) if shape == "image" else (4, 32, 20))
    kernels = {m.kernel_size[0] for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}
    assert kernels == {1, 3, 5}  # the paper's single 5×5 conv, not two 3×3


def test_inception_rejects_residual():
    with pytest.raises(ConfigError) as err:
        Inception((1, 28, 28), 10, depth=2, width=8, residual=True)
    assert err.value.key == "model.residual" and "use resnet" in str(err.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_arguments_name_the_config_key(arch):
    with pytest.raises(ConfigError, match="model.depth"):
        build(arch, "image", depth=0)
    with pytest.raises(ConfigError, match="model.norm_position"):
        build(arch, "image", norm_position="sideways")
    with pytest.raises(UnknownNameError, match="did you mean 'batch'"):
        build(arch, "image", norm="btach")


# (out, in) of each 1×1 projection at depth 3, width 8: 8 → 16 and 16 → 32
PROJECTIONS = [(16, 8), (32, 16)]


@pytest.mark.parametrize("norm", NORMS.names())
def test_plain_resnet_lacks_exactly_the_projection_shortcuts(norm):
    residual, plain = build("resnet", "image", norm=norm), build("resnet", "image", norm=norm, residual=False)
    # each projection: out·in weights plus, per output channel, a bias (none), a bias and the weight-norm
    # gain g (weight), or the norm's γ and β with no conv bias (batch, layer, group)
    extra_per_out = 1 if norm == "none" else 2
    expected = sum(o * i + extra_per_out * o for o, i in PROJECTIONS)
    n_residual = sum(p.numel() for p in residual.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_residual - n_plain == expected
    missing, unexpected = residual.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".shortcut." in k for k in missing)


@pytest.mark.parametrize("shape", SHAPES)
def test_residual_and_plain_differ_only_by_the_shortcut(shape):
    # depth 1: one stage, no projection, so both nets hold the same parameters
    torch.manual_seed(0)
    residual = build("resnet", shape, depth=1).eval()
    plain = build("resnet", shape, depth=1, residual=False).eval()
    assert sum(p.numel() for p in residual.parameters()) == sum(p.numel() for p in plain.parameters())
    plain.load_state_dict(residual.state_dict())
    x = batch(shape)
    assert not torch.allclose(residual(x), plain(x))
    # the identity shortcut is the whole difference: zero the block's input to the sum and they agree
    block = residual.blocks[0]
    stem_out = residual.stem(x)
    branch = block.norm2(block.conv2(block.drop(block.act1(block.norm1(block.conv1(stem_out))))))
    assert torch.allclose(block(stem_out), block.act2(stem_out + branch))
    assert torch.allclose(plain.blocks[0](stem_out), block.act2(branch))


def test_norm_position_moves_the_norm_after_the_activation():
    torch.manual_seed(0)
    before = build("resnet", "image", norm="layer").eval()
    after = build("resnet", "image", norm="layer", norm_position="after_activation").eval()
    with torch.no_grad():  # same parameters, in the same order; only the Sequential indices differ
        for a, b in zip(before.parameters(), after.parameters(), strict=True):
            b.copy_(a)
    x = batch("image")
    assert not torch.allclose(before(x), after(x))


def test_deep_resnet_keeps_the_input_gradient_that_a_plain_net_loses():
    # no norm, PyTorch's default init: 17 plain convs shrink the gradient by ~1e-5, the shortcuts keep it
    torch.manual_seed(0)
    x = batch("image")
    ratio = {}
    for residual in (True, False):
        deep = build("resnet", "image", depth=8, norm="none", residual=residual)
        shallow = build("resnet", "image", depth=1, norm="none", residual=residual)
        deep_grad = input_grad_norm(deep, x)
        assert torch.isfinite(torch.tensor(deep_grad))
        ratio[residual] = deep_grad / input_grad_norm(shallow, x)
    assert ratio[True] > 0.1
    assert ratio[False] < 1e-3


@pytest.mark.parametrize("norm", NORMS.names())
@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_gets_a_finite_gradient_and_moves(arch, norm):
    torch.manual_seed(0)
    model = build(arch, "image", norm=norm, dropout=0.2)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(batch("image")), torch.arange(4)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} is unused"
        assert torch.isfinite(p.grad).all(), name
    opt.step()
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert len(moved) == len(before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_is_active_in_training_and_off_in_eval(arch, shape):
    torch.manual_seed(0)
    model = build(arch, shape, dropout=0.5)
    drop = {"resnet": nn.Dropout1d if shape == "signal" else nn.Dropout2d, "inception": nn.Dropout}[arch]
    n_drop = sum(isinstance(m, drop) for m in model.modules())
    assert n_drop == (3 if arch == "resnet" else 1)  # one per residual block; one before the head
    x = batch(shape)
    assert not torch.allclose(model(x), model(x))
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(model(x), model(x))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no running-stat update
