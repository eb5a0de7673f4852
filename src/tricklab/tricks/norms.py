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
group    statistics per example over groups of channels (32 or fewer) Wu & He 2018
======== ============================================================ ===========================

Example::

    layer, norm = NORMS.get("batch")(nn.Linear(784, 512), 512, 0)   # norm is BatchNorm1d(512)
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from tricklab.registry import Registry

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


def group_count(features: int, max_groups: int = 32) -> int:
    """The largest divisor of ``features`` that is ≤ ``max_groups`` (Wu & He 2018 use 32 groups)."""
    return max(g for g in range(1, min(max_groups, features) + 1) if features % g == 0)


@NORMS.register("group", help="(x−μ)/σ per example over groups of ≤32 channels; Wu & He 2018")
def group_norm(layer: nn.Module, features: int, dims: int):
    return layer, nn.GroupNorm(group_count(features), features)


NORM_POSITIONS = ("before_activation", "after_activation")


def norm_has_bias(name: str) -> bool:
    """Whether the weight layer before this norm needs its own bias (batch/layer/group norm add β)."""
    return name in ("none", "weight")


__all__ = ["NORMS", "NORM_POSITIONS", "group_count", "norm_has_bias", "ChannelLayerNorm"]
