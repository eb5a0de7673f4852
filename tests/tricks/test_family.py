"""A trick is one unit: its module owns its config section, builder, checks and PyTorch translation, and the config,
the assembly and the doctor's translations read them from the registry of families."""

from __future__ import annotations

import pytest
import torch

from tricklab.assembly import build_callbacks, step_callbacks
from tricklab.catalog import family
from tricklab.config import Config, load_config
from tricklab.config_reference import annotated_yaml
from tricklab.data import Splits, TensorData, split_and_scale
from tricklab.data.base import DatasetInfo, RawDataset
from tricklab.diagnostics.in_pytorch import TRANSLATIONS
from tricklab.errors import ConfigError
from tricklab.tricks.averaging import EMA
from tricklab.tricks.clipping import CLIP_MODES, GradClip, clip_by_norm_
from tricklab.tricks.early_stopping import EarlyStopping
from tricklab.tricks.family import TRICKS
from tricklab.tricks.regularization import L1Penalty
from tricklab.tricks.schedules import LRSchedule


def _splits() -> Splits:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    raw = RawDataset(TensorData(x[:48], y[:48]), TensorData(x[48:], y[48:]), DatasetInfo("tiny", (1, 4, 4), 2))
    return split_and_scale(raw, val_fraction=0.25, scale="none", subset=None, seed=0)


def test_every_family_is_a_section_of_the_config_with_its_own_class():
    for entry in TRICKS.entries():
        if entry.obj.section is None:  # its keys live in another section (model.norm, data.scale)
            continue
        assert entry.name in Config.model_fields, f"family {entry.name!r} is not composed into Config"
        assert Config.model_fields[entry.name].annotation is entry.obj.section


def test_the_families_build_the_callbacks_in_the_order_checkpoints_key_them():
    cfg = load_config(
        overrides=[
            "optim.l1=1e-4",
            "clip.mode=norm",
            "schedule.name=step",
            "early_stopping.enabled=true",
            "averaging.ema=0.9",
            "train.epochs=3",
        ]
    )
    kinds = [type(cb) for cb in build_callbacks(cfg, _splits())]
    assert kinds == [L1Penalty, GradClip, LRSchedule, EarlyStopping, EMA]
    assert [type(cb) for cb in step_callbacks(cfg)] == [L1Penalty, GradClip]  # what the doctor's short run needs


def test_each_family_check_refuses_its_cross_section_setting():
    with pytest.raises(ConfigError, match="schedule.warmup_epochs"):
        load_config(overrides=["schedule.name=warmup_cosine", "schedule.warmup_epochs=5", "train.epochs=5"])
    with pytest.raises(ConfigError, match="averaging.swa_lr"):
        load_config(overrides=["averaging.swa_start=1", "averaging.swa_lr=0.01", "schedule.name=cosine"])


def test_the_translations_of_every_family_are_the_doctors():
    keys = [(key, fn) for e in TRICKS.entries() for key, fn in e.obj.translations.items()]
    assert {
        "init.scheme", "optim.lr", "optim.weight_decay", "clip.mode", "clip.threshold", "early_stopping.enabled",
        "model.norm", "data.scale",
    } == {k for k, _ in keys}  # fmt: skip
    for key, fn in keys:
        assert TRANSLATIONS.get(key) is fn


@pytest.fixture
def halving_mode():
    """A new clipping mode, registered as the clipping module would register it."""

    def halve(params: list[torch.Tensor], threshold: float) -> bool:
        return clip_by_norm_(params, threshold / 2) > threshold / 2

    CLIP_MODES.register("half_norm", halve, help="g clipped at θ/2", source="test")
    yield halve
    CLIP_MODES.unregister("half_norm")


def test_a_new_clipping_mode_is_one_registration_in_its_module(halving_mode):
    """Config validation, the assembly, `tricklab list` and `config --defaults` all take it from the registry."""
    cfg = load_config(overrides=["clip.mode=half_norm", "clip.threshold=2"])
    (clip,) = step_callbacks(cfg)
    assert isinstance(clip, GradClip) and clip.clip is halving_mode
    assert "half_norm" in family("clip_modes").names()
    assert "half_norm" in annotated_yaml(Config())
