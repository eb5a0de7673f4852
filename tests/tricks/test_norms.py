"""Group norm's groups: several features each over dense features, so that a narrow MLP can still learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tricklab.config import load_config
from tricklab.models import build_model
from tricklab.runner import run
from tricklab.tricks.norms import MIN_DENSE_GROUP, NORMS, group_count


@pytest.mark.parametrize(("width", "groups"), [(8, 1), (16, 2), (32, 4), (64, 8), (100, 10), (256, 32), (512, 32)])
def test_dense_groups_hold_at_least_eight_features(width, groups):
    _, norm = NORMS.get("group")(nn.Linear(4, width), width, 0)
    assert (norm.num_groups, norm.num_channels // norm.num_groups) == (groups, width // groups)
    assert width // groups >= MIN_DENSE_GROUP


@pytest.mark.parametrize("dims", [1, 2])
def test_conv_channels_keep_up_to_32_groups(dims):
    _, norm = NORMS.get("group")(nn.Conv2d(3, 32, 3), 32, dims)  # a channel holds all its positions
    assert norm.num_groups == 32


def test_group_count_is_the_largest_divisor_that_keeps_the_minimum():
    for features in range(1, 300):
        for least in (1, 8):
            g = group_count(features, min_per_group=least)
            assert features % g == 0 and g <= 32
            if features >= least:
                assert features // g >= least
                assert not any(features % h == 0 and features // h >= least for h in range(g + 1, 33))
            else:
                assert g == 1


@pytest.mark.parametrize("width", [8, 16, 32])
def test_a_narrow_mlp_with_group_norm_keeps_several_features_a_group(width):
    model = build_model("mlp", (1, 8, 8), 4, depth=2, width=width, norm="group")
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 2 and all(m.num_channels // m.num_groups >= MIN_DENSE_GROUP for m in norms)
    features = model.hidden[0](torch.randn(16, 64))  # the first block: weights, group norm, ReLU
    assert features.std(0).mean() > 0.1  # its features still differ between examples (one a group: all constant)


def test_a_width_32_mlp_with_group_norm_learns(tmp_path):
    cfg = load_config(
        overrides=[
            "data.name=synthetic",
            "model.width=32",
            "model.depth=2",
            "model.norm=group",
            "train.epochs=3",
            "train.threads=1",
            "train.device=cpu",
            "data.batch_size=32",
            "optim.lr=0.01",
        ]
    )
    metrics = run(cfg, write=False).metrics
    assert metrics["test_acc"] > 0.8, metrics  # 4 classes: chance is 0.25 (one feature a group: exactly that)
