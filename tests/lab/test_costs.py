"""The lab starts its longest runs first: the cost proxy ranks runs the way their work does, and the pool uses it."""

from __future__ import annotations

import math

import pytest

from tricklab.config import load_config
from tricklab.lab.costs import longest_first, run_cost
from tricklab.lab.runner import InProcess, Task

BASE = {"data.name": "synthetic", "model.width": 16, "model.depth": 1, "train.epochs": 2, "train.device": "cpu"}


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))


def cost(**changes) -> float:
    return run_cost(load_config(overrides={**BASE, **changes}).to_dict())


def test_the_cost_grows_with_epochs_examples_model_size_and_ensemble_members():
    base = cost()
    assert base > 0
    assert cost(**{"train.epochs": 4}) == pytest.approx(2 * base)
    assert cost(**{"averaging.ensemble": 3}) == pytest.approx(3 * base)
    assert cost(**{"data.subset": 100}) < base
    assert cost(**{"model.width": 64}) > base and cost(**{"model.depth": 3}) > base
    assert cost(**{"model.name": "cnn", "model.width": 8}) > 0


def test_a_config_that_cannot_be_costed_is_nan_not_an_error():
    assert math.isnan(run_cost({"data": {"name": "no-such-dataset"}}))


def test_longest_first_is_stable_and_puts_the_uncostable_last():
    tasks = [
        Task((name,), {"c": c}) for name, c in [("a", 1.0), ("b", math.nan), ("c", 5.0), ("d", 1.0), ("e", math.nan)]
    ]
    order = [t.key[0] for t in longest_first(tasks, cost=lambda cfg: cfg["c"])]
    assert order == ["c", "a", "d", "b", "e"]


def test_the_pool_starts_the_longest_run_first():
    started: list[int] = []
    configs = [load_config(overrides={**BASE, "train.epochs": e}).to_dict() for e in (1, 3, 2)]
    tasks = [Task(("run", e), cfg) for e, cfg in zip((1, 3, 2), configs, strict=True)]
    with InProcess(1, fn=lambda cfg: ({}, [], "h")) as pool:
        pool.run(tasks, lambda kind, key, *a: started.append(key[1]) if kind == "start" else None)
    assert started == [3, 2, 1]
