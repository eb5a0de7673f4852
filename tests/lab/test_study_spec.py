"""The stored study spec (:class:`tricklab.lab.spec.StudySpec`) keeps the JSON every lab folder already holds.

``config_hashes.json``'s ``stored_specs`` are the exact JSON text main's code (commit 9d124f7, before the typed spec)
stored for every built-in study on mnist1d, with fixed seeds and with ``--seeds auto`` (see test_config_hashes.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tricklab.lab.lab import LabOptions, study_spec
from tricklab.lab.results import DB_NAME, results
from tricklab.lab.spec import StudySpec
from tricklab.lab.store import Store
from tricklab.lab.studies import STUDIES

STORED = json.loads((Path(__file__).parent / "config_hashes.json").read_text())["stored_specs"]


@pytest.mark.parametrize("name", sorted(STORED))
def test_a_spec_is_written_as_main_wrote_it_and_reads_back_byte_for_byte(name, tmp_path):
    study, auto = STUDIES.get(name.removesuffix(" --seeds auto")), name.endswith("--seeds auto")
    spec = study_spec(study, "mnist1d", LabOptions(dataset="mnist1d", max_seeds=10 if auto else None))
    assert isinstance(spec, StudySpec)
    # a study judging more than test accuracy (issue 24: time to target) adds its ``outcomes``, last; nothing else moves
    new = {} if study.outcomes == ("test_acc",) else {"outcomes": list(study.outcomes)}
    assert json.dumps(spec.to_dict()) == json.dumps(json.loads(STORED[name]) | new)
    with Store(tmp_path / DB_NAME) as store:  # a spec main wrote, read and written again: the same bytes
        store.save_study(study.name, "mnist1d", json.loads(STORED[name]), "tricklab lab")
        read = store.studies()[0][2]
        assert isinstance(read, StudySpec) and json.dumps(read.to_dict()) == STORED[name]
        store.save_study(study.name, "mnist1d", read, "tricklab lab")
        assert store._fetch("SELECT spec FROM studies")[0][0] == STORED[name]
    assert read.variants == tuple(v.name for v in study.variants) and read["variants"] == list(read.variants)
    assert (read.sequential is not None) == auto


def test_keys_a_spec_does_not_know_are_kept(tmp_path):
    stored = json.loads(STORED["dropout"]) | {"added_later": [1, 2]}
    with Store(tmp_path / DB_NAME) as store:
        store.save_study("dropout", "mnist1d", stored, "tricklab lab")
    found = results(tmp_path).studies[0]
    assert found.spec.to_dict() == stored and found.spec.name == "dropout" and found.stats.study == "dropout"
