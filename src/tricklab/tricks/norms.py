"""Normalization layers, placed after the weights and before the activation (Ioffe & Szegedy 2015).

Every norm is a factory ``(layer, features, dims) -> (layer, norm)``: it receives the weight layer
(``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``) and returns the layer to use (weight norm reparametrizes it) and
the module to insert after it (``None`` for none/weight). ``dims`` is 0 for dense features, 1 or 2 for
conv feature maps.

======== ============================================================ ===========================
name     formula                                                      reference
======== ============================================================ ===========================
none     identity
batch    y = γ (x − μ_B)/√(σ²_B + ε) + β, statistics per feature over the batch   Ioffe & Szegedy 2015
layer    same, statistics per example over all features               Ba et al. 2016
weight   w = g · v/‖v‖ per output unit (torch parametrization)        Salimans & Kingma 2016
group    statistics per example over ≤ 32 groups of channels      Wu & He 2018
         (dense features: ≥ 8 a group, see group_count)
======== ============================================================ ===========================

Example::

    layer, norm = NORMS.get("batch")(nn.Linear(784, 512), 512, 0)   # norm is BatchNorm1d(512)
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from tricklab.registry import Registry
from tricklab.tricks.family import TRICKS, Prescription, TrickFamily, cite, layers_phrase, names_phrase

NORMS: Registry = Registry("norm")


@NORMS.register("none", help="no normalization")
def no_norm(layer: nn.Module, features: int, dims: int):
    return layer, None


@NORMS.register("batch", help="γ(x−μ_B)/√(σ²_B+ε)+β over the batch per feature; Ioffe & Szegedy 2015")
def batch_norm(layer: nn.Module, features: int, dims: int):
    cls = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    return layer, cls(features)


class ChannelLayerNorm(nn.GroupNorm):
    """Layer norm over (channels, positions) of a conv feature map: GroupNorm with one group."""

    def __init__(self, channels: int):
        super().__init__(1, channels)


@NORMS.register("layer", help="(x−μ)/σ per example over all features; Ba et al. 2016")
def layer_norm(layer: nn.Module, features: int, dims: int):
    return layer, (nn.LayerNorm(features) if dims == 0 else ChannelLayerNorm(features))


@NORMS.register("weight", help="w = g·v/‖v‖ per output unit; Salimans & Kingma 2016")
def weight_normalization(layer: nn.Module, features: int, dims: int):
    return weight_norm(layer, name="weight", dim=0), None


#: The fewest dense features a group norm group holds (see :func:`group_count`).
MIN_DENSE_GROUP = 8


def group_count(features: int, max_groups: int = 32, min_per_group: int = 1) -> int:
    """The largest divisor ``g`` of ``features`` with ``g ≤ max_groups`` and ``features / g ≥ min_per_group`` (1 if
    ``features < min_per_group``: one group, which is layer norm).

    Wu & He 2018 use 32 groups of several channels each, and find one channel a group (instance norm) the worst of
    their sweep (their Table 3). A conv channel still has all its positions to normalize over; a dense feature has
    one number per example, so a group of ``k`` dense features is ``k`` numbers: normalizing them removes their mean
    and scale, 2 of ``k`` degrees of freedom: a group of 1 is a constant (only β passes: the net cannot learn), a
    group of 2 only its sign. Dense layers therefore use groups of at least :data:`MIN_DENSE_GROUP` = 8 features
    (three quarters of each group's numbers kept, as many groups as 32 still allow at width 256 and above):
    width 32 → 4 groups of 8, width 16 → 2, width 8 or less → 1.

    >>> group_count(512), group_count(32), group_count(32, min_per_group=8), group_count(6, min_per_group=8)
    (32, 32, 4, 1)
    """
    most = min(max_groups, max(features // max(min_per_group, 1), 1))
    return max(g for g in range(1, most + 1) if features % g == 0)


@NORMS.register("group", help="(x−μ)/σ per example over ≤32 groups (dense: ≥8 features each); Wu & He 2018")
def group_norm(layer: nn.Module, features: int, dims: int):
    return layer, nn.GroupNorm(group_count(features, min_per_group=MIN_DENSE_GROUP if dims == 0 else 1), features)


NORM_POSITIONS = ("before_activation", "after_activation")


def norm_has_bias(name: str) -> bool:
    """Whether the weight layer before this norm needs its own bias (batch/layer/group norm add β)."""
    return name in ("none", "weight")


__all__ = ["NORMS", "NORM_POSITIONS", "MIN_DENSE_GROUP", "group_count", "norm_has_bias", "ChannelLayerNorm"]


# --- the family: its keys live in the model section; what it is in plain PyTorch -----------------------------


def norm_in_pytorch(value: str, p: Prescription) -> str:
    """``model.norm`` in plain PyTorch: insert nn.BatchNorm1d/LayerNorm/GroupNorm after the hidden layers."""
    NORMS.get(value)
    cited = cite(NORMS.help(value))
    if value == "none":
        return "remove the normalization layers (nn.BatchNorm1d/2d, nn.LayerNorm, nn.GroupNorm) from the model"
    hidden = p.weight_layers()[:-1]  # not after the output layer
    if value == "weight":
        return (
            f"reparametrize {layers_phrase(hidden, 'hidden ')} as w = g·v/‖v‖: "
            f"`m = torch.nn.utils.parametrizations.weight_norm(m)` for each{cited}"
        )
    if not hidden:
        generic = {
            "batch": "`nn.BatchNorm1d(out_features)` (`nn.BatchNorm2d(out_channels)` after a Conv2d)",
            "layer": "`nn.LayerNorm(out_features)` (`nn.GroupNorm(1, out_channels)` after a Conv)",
            "group": "`nn.GroupNorm(groups, out_channels)` (groups: the largest divisor ≤ 32; after a Linear, one "
            f"that leaves ≥ {MIN_DENSE_GROUP} features a group)",
        }[value]
        return f"insert {generic} after each hidden Linear/Conv layer, before its activation{cited}"
    by_module: dict[str, list[str]] = {}
    for name, m in hidden:
        by_module.setdefault(norm_module(value, m), []).append(name)
    where = "; ".join(f"`{module}` after {names_phrase(names)}" for module, names in by_module.items())
    return f"insert a norm layer after each hidden Linear/Conv layer, before its activation: {where}{cited}"


def norm_module(value: str, m: nn.Module) -> str:
    """The norm layer to insert after ``m`` (as tricklab's norm of that name builds it)."""
    conv2d = isinstance(m, nn.Conv2d)
    n = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    if value == "batch":
        return f"nn.BatchNorm{'2d' if conv2d else '1d'}({n})"
    if value == "layer":
        return f"nn.LayerNorm({n})" if isinstance(m, nn.Linear) else f"nn.GroupNorm(1, {n})"
    dense = isinstance(m, nn.Linear)
    return f"nn.GroupNorm({group_count(n, min_per_group=MIN_DENSE_GROUP if dense else 1)}, {n})"


TRICKS.register(
    "norm",
    TrickFamily(None, translations={"model.norm": norm_in_pytorch}),
    help="normalization layers (model.norm, model.norm_position): batch, layer, group, weight",
)
