"""Every registered name trains: one deterministic step of each, on synthetic data (STYLE.md point 5).

The cases are read from the registries of :data:`tricklab.catalog.FAMILIES` when the tests are collected,
so registering a new name enrols it here without touching this file; a new family must say, in ``SELECT``,
which config key selects its names (the enrolment test fails until it does). Each case builds a config
through :func:`tricklab.config.load_config` overrides on ``data.name=synthetic`` with a small net, runs
:func:`tricklab.runner.run` for one epoch of two batches, and checks that the loss is finite, that every
parameter moved, and that a second run with the same seed gives bit-identical weights and numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from tricklab.catalog import FAMILIES
from tricklab.config import load_config
from tricklab.events import Callback, FitState
from tricklab.runner import run

#: A small, fast setting: 64 training examples in batches of 32 (two optimizer steps), a 2×16 net.
TINY = {
    "data.name": "synthetic",
    "data.subset": 64,
    "data.batch_size": 32,
    "model.width": 16,
    "model.depth": 2,
    "train.epochs": 1,
    "train.seed": 3,
    "train.threads": 1,
    "train.device": "cpu",
}


def study_overrides(name: str) -> dict:
    """A study runs its baseline variant, shrunk to TINY (its variants are checked to validate)."""
    study = FAMILIES["studies"].get(name)
    return {**study.overrides(study.variant(study.baseline), "synthetic"), **TINY}


#: How each family's names are selected: a config key, or a function of the name giving all overrides.
SELECT: dict[str, str | Callable[[str], dict]] = {
    "datasets": "data.name",
    "scalings": "data.scale",
    "models": "model.name",
    "activations": "model.activation",
    "norms": "model.norm",
    "inits": "init.scheme",
    "optimizers": "optim.name",
    "clip_modes": "clip.mode",
    "schedules": "schedule.name",
    "studies": study_overrides,
    "callbacks": lambda name: {**TINY, "callbacks": [{"name": name}]},
}

#: Settings a name needs besides TINY, and why.
NEEDS: dict[tuple[str, str], dict] = {
    # the warm-up must end before the last epoch: two epochs, the first one warming up
    ("schedules", "warmup_cosine"): {"train.epochs": 2},
}

#: Datasets that are downloaded (not offline): their loaders are tested on files served from 127.0.0.1 (tests/data);
#: MNIST is trained on by the e2e tests.
DOWNLOADED = {"mnist", "fashion-mnist", "cifar10"}

#: Datasets read from a file the user names (data.path): given a tiny one written by :func:`data_file`.
FROM_FILE = {"npz", "csv"}


def data_file(name: str, folder) -> str:
    """A tiny 4-class file for dataset ``name`` (64 training and 16 test examples of 8 features)."""
    g = np.random.default_rng(0)
    x, y = g.normal(size=(80, 8)).astype(np.float32), np.arange(80) % 4
    path = folder / f"tiny.{name}"
    if name == "npz":
        np.savez(path, x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    else:
        rows = [",".join([*(f"f{i}" for i in range(8)), "label"])]
        rows += [",".join([*(f"{v:.5f}" for v in xi), str(yi)]) for xi, yi in zip(x, y, strict=True)]
        path.write_text("\n".join(rows) + "\n")
    return str(path)

#: Names after whose step some parameter may legitimately stay unchanged: none so far. Every optimizer
#: updates every parameter that has a gradient, and every parameter of these nets gets one.
NO_CHANGE: dict[tuple[str, str], str] = {}

CASES = [(family, name) for family, registry in FAMILIES.items() for name in registry.names()]


def overrides_for(family: str, name: str) -> dict:
    select = SELECT.get(family)
    if select is None:
        pytest.fail(f"family {family!r} is not in SELECT: say which config key selects its names")
    if callable(select):
        return select(name)
    return {**TINY, select: name, **NEEDS.get((family, name), {})}


class Probe(Callback):
    """Records the weights at the start and end of the fit and every step's loss."""

    order = 10_000

    def __init__(self):
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []

    def on_fit_start(self, state: FitState) -> None:
        self.before = {n: p.detach().clone() for n, p in state.model.named_parameters()}

    def on_after_backward(self, state: FitState) -> None:
        self.losses.append(float(state.loss.detach()))

    def on_fit_end(self, state: FitState) -> None:
        self.after = {n: p.detach().clone() for n, p in state.model.named_parameters()}


def train_once(overrides: dict, study: bool = False):
    """One run; a study's as the lab runs it, where a setup that blows up (the scaling study's raw pixels at SGD's
    rate, its very lesson) is a result marked diverged rather than an error."""
    probe = Probe()
    result = run(load_config(overrides=overrides), write=False, callbacks=[probe], record_divergence=study)
    return probe, result


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in rows]


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """One cache folder for the module (mnist1d is generated once, then read back)."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize(("family", "name"), CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_one_deterministic_step(family, name, data_cache, monkeypatch):
    if family == "datasets" and name in DOWNLOADED:
        pytest.skip(f"{name} is downloaded, not generated offline; its download is tested on 127.0.0.1 (tests/data)")
    monkeypatch.setenv("TRICKLAB_DATA", str(data_cache))
    overrides = overrides_for(family, name)
    if family == "datasets" and name in FROM_FILE:
        overrides["data.path"] = data_file(name, data_cache)

    probe, result = train_once(overrides, study=family == "studies")

    assert probe.losses and all(math.isfinite(v) for v in probe.losses), probe.losses
    row = result.history[-1]
    assert all(math.isfinite(row[k]) for k in ("train_loss", "val_loss")), row
    assert math.isfinite(result.metrics["test_loss"])
    unchanged = [n for n, p in probe.before.items() if torch.equal(p, probe.after[n])]
    assert (family, name) in NO_CHANGE or not unchanged, f"{family}:{name} left {unchanged} unchanged"

    probe2, result2 = train_once(overrides, study=family == "studies")  # same seed: bit for bit the same run

    assert probe2.losses == probe.losses
    assert without_times(result2.history) == without_times(result.history)
    assert {k: v for k, v in result2.metrics.items() if k != "wall_time_s"} == {
        k: v for k, v in result.metrics.items() if k != "wall_time_s"
    }
    final, final2 = result.model.state_dict(), result2.model.state_dict()
    assert final.keys() == final2.keys()
    assert all(torch.equal(final[k], final2[k]) for k in final)


def test_every_family_and_name_is_enrolled():
    """A family added to FAMILIES needs a SELECT entry; every name of every family is a case."""
    assert set(SELECT) == set(FAMILIES), "SELECT must name how to select each family of tricklab.catalog"
    assert {(f, n) for f, reg in FAMILIES.items() for n in reg.names()} == set(CASES)
    assert set(NEEDS) | set(NO_CHANGE) <= set(CASES), "NEEDS/NO_CHANGE mention a name no longer registered"


def test_downloaded_datasets_are_registered():
    assert DOWNLOADED | FROM_FILE <= set(FAMILIES["datasets"].names())


@pytest.mark.parametrize("name", sorted(FAMILIES["studies"].names()) if "studies" in FAMILIES else [])
def test_every_variant_of_a_study_is_a_valid_config(name):
    study = FAMILIES["studies"].get(name)
    for variant in study.variants:
        load_config(overrides=study.overrides(variant, "synthetic"))
