"""The doctor's zoo (benchmarks/doctor_zoo.py) is well formed and its case runner works end to end; the
doctor's accuracy on it is measured by the benchmark, not asserted here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tricklab.diagnostics.verdicts import CHECKS

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("doctor_zoo", REPO / "benchmarks" / "doctor_zoo.py")
zoo = importlib.util.module_from_spec(_spec)
sys.modules["doctor_zoo"] = zoo
_spec.loader.exec_module(zoo)


def test_zoo_has_enough_labelled_cases():
    labels = [c.label for c in zoo.ZOO]
    assert len(zoo.ZOO) >= 40
    assert labels.count(zoo.HEALTHY) >= 12
    assert len({c.name for c in zoo.ZOO}) == len(zoo.ZOO)
    assert set(labels) - {zoo.HEALTHY} <= set(CHECKS.names())  # every label is a verdict name
    assert set(zoo.CLASSES) == set(CHECKS.names())
    assert set(zoo.CLASSES) <= set(labels)  # every class the issue names has a case


def test_every_case_says_how_to_build_it_and_why():
    for c in zoo.ZOO:
        assert sum(bool(x) for x in (c.overrides, c.factory, c.loop)) == 1, c.name
        assert c.why, c.name


@pytest.mark.parametrize("name", ["sigmoid8-normal-syn"])
def test_one_case_runs_end_to_end(name):
    case = next(c for c in zoo.ZOO if c.name == name)
    row = zoo.run_case(case, seed=0, steps=30)
    assert row["error"] is None
    assert row["case"] == name and row["label"] == case.label
    assert isinstance(row["verdicts"], list) and row["wall_s"] > 0
    assert case.label in zoo.summarize([row], None, row["wall_s"])  # the table renders
