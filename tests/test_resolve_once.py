"""Names are resolved once per run: validation turns ``data.name``, ``model.name`` and each callback's name into the
callables the run uses, and assembly and the memory check take them from the validated config."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from torch import nn

import tricklab
from tricklab import plugins
from tricklab.assembly import assemble
from tricklab.catalog import family
from tricklab.cli.main import main
from tricklab.config import load_config, validate

PKG = Path(__file__).parent / "plugins" / "pkg"
TINY = ["train.epochs=1", "train.threads=1", "train.device=cpu", "data.batch_size=32"]


@pytest.fixture
def resolutions(monkeypatch) -> Counter:
    """Every lookup of a name (registry, entry point or import path) while the test runs, by (family, name)."""
    monkeypatch.syspath_prepend(str(PKG))
    counts: Counter = Counter()
    resolve = plugins.resolve

    def counting(registry, family_name, name, key):
        counts[(family_name, name)] += 1
        return resolve(registry, family_name, name, key)

    monkeypatch.setattr(plugins, "resolve", counting)
    return counts


def _train(tmp_path: Path, *overrides: str) -> None:
    sets = [a for o in [*TINY, *overrides] for a in ("--set", o)]
    assert main(["train", *sets, "--out", str(tmp_path / "run")]) == 0


def test_a_train_run_resolves_the_builtin_dataset_and_model_once(tmp_path, resolutions):
    _train(tmp_path, "data.name=synthetic", "model.width=8", "model.depth=1")
    assert dict(resolutions) == {("datasets", "synthetic"): 1, ("models", "mlp"): 1}


def test_a_train_run_resolves_each_import_path_once(tmp_path, resolutions):
    _train(
        tmp_path,
        "data.name=tricklab_testplugin:blobs",
        "model.name=tricklab_testplugin:small_mlp",
        "callbacks=[{name: 'tricklab_testplugin:CountSteps'}]",
    )
    assert dict(resolutions) == {
        ("datasets", "tricklab_testplugin:blobs"): 1,
        ("models", "tricklab_testplugin:small_mlp"): 1,
        ("callbacks", "tricklab_testplugin:CountSteps"): 1,
    }


def test_an_ensemble_resolves_its_names_once_for_all_members(tmp_path, resolutions):
    _train(tmp_path, "data.name=synthetic", "model.width=8", "model.depth=1", "averaging.ensemble=2")
    assert dict(resolutions) == {("datasets", "synthetic"): 1, ("models", "mlp"): 1}


def test_a_config_with_overrides_reuses_the_names_it_resolved(resolutions):
    cfg = load_config(overrides=["data.name=synthetic"])
    resolutions.clear()
    cfg.with_overrides(["optim.lr=0.01", "model.width=4"])
    assert not resolutions
    cfg.with_overrides(["model.name=cnn"])
    assert dict(resolutions) == {("models", "cnn"): 1}  # only the name that changed


def test_assembly_builds_what_validation_resolved(resolutions):
    """A plugin registered again under the same name after validation does not change the run being built: the
    validated config holds the factory it checked."""

    def first(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def second(input_shape, num_classes):
        raise AssertionError("the config was validated with the first factory")

    tricklab.register_model("resolve_once_net", first)
    try:
        cfg = load_config(overrides=["model.name=resolve_once_net", "data.name=synthetic", *TINY])
        tricklab.register_model("resolve_once_net", second)
        parts = assemble(cfg)
    finally:
        family("models").unregister("resolve_once_net")
    assert isinstance(parts.model, nn.Sequential) and parts.model[1].out_features == 4
    assert cfg.model.factory is first


def test_an_ensemble_checks_its_memory_with_one_model_built_on_meta(tmp_path, resolutions, monkeypatch):
    """The first check counts every member's weights: the later members are not built a second time to count."""
    from tricklab import memory

    builds = []
    count = memory.count_on_meta
    monkeypatch.setattr(memory, "count_on_meta", lambda *a, **k: builds.append(1) or count(*a, **k))
    _train(tmp_path, "data.name=synthetic", "model.width=8", "model.depth=1", "averaging.ensemble=3")
    assert len(builds) == 1


def test_a_resumed_run_resolves_its_stored_names_once(tmp_path, resolutions):
    """``--resume`` validates the run folder's config.yaml, and checks it again against the checkpoint, with one
    lookup of each name."""
    _train(tmp_path, "data.name=synthetic", "model.width=8", "model.depth=1")
    resolutions.clear()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert dict(resolutions) == {("datasets", "synthetic"): 1, ("models", "mlp"): 1}


@pytest.mark.parametrize("section", ["model", "data"])
def test_a_name_that_is_no_string_is_one_line_naming_its_key_not_a_crash_of_the_memo(section):
    from tricklab.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{section}\.name = \[\]: "):
        validate({section: {"name": []}})
