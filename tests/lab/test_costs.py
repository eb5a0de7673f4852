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
        pool.run(tasks, lambda e: started.append(e.key[1]) if e.kind == "start" else None)  # a typed RunEvent
    assert started == [3, 2, 1]


def test_workers_are_one_per_core_within_the_memory_the_runs_need():
    from tricklab.lab.costs import run_bytes
    from tricklab.lab.runner import plan_workers

    gib = 2**30
    assert plan_workers(10, cores=8) == (8, 1)
    assert plan_workers(3, cores=8) == (3, 2)  # fewer runs than cores: the rest become threads
    assert plan_workers(10, cores=8, run_bytes=4 * gib, memory=16 * gib) == (3, 2)  # 80% of 16 GiB holds 3
    assert plan_workers(10, cores=8, processes=6, run_bytes=4 * gib, memory=16 * gib) == (6, 1)  # --workers wins
    small = run_bytes(load_config(overrides=BASE).to_dict())
    wide = run_bytes(load_config(overrides={**BASE, "model.width": 2048, "model.depth": 3}).to_dict())
    assert 2**20 < small < wide  # a wider net needs more
