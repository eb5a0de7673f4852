"""Every built-in study variant keeps its config hash, so the runs stored in existing lab folders stay valid.

``config_hashes.json`` was generated from main's code at commit 9d124f7, before the lab's refactor (issue 23), by
running, with that checkout's ``src`` first on ``PYTHONPATH``::

    for name in STUDIES.names():
        for v in STUDIES.get(name).variants:
            for seed in (0, 1):
                cfg = run_config(study, v.name, "mnist1d", LabOptions(dataset="mnist1d"), seed, 1)
                hashes[f"{name}/{v.name}/{seed}"] = run_key_hash(cfg)
        stored_specs[name] = json.dumps(study_spec(study, "mnist1d", LabOptions(dataset="mnist1d")))
        stored_specs[name + " --seeds auto"] = json.dumps(study_spec(..., LabOptions(dataset="mnist1d", max_seeds=10)))

A hash that changes means a rerun of the same lab would reset that variant's finished runs: change the fixture only
with a change that means to do so, and say so. A new built-in study or variant must be added to the fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tricklab.lab.lab import LabOptions, run_config, run_key_hash
from tricklab.lab.studies import STUDIES

FIXTURE = json.loads((Path(__file__).parent / "config_hashes.json").read_text())


def _hashes() -> dict[str, str]:
    out = {}
    for name in STUDIES.names():
        study = STUDIES.get(name)
        for v in study.variants:
            for seed in (0, 1):
                cfg = run_config(study, v.name, "mnist1d", LabOptions(dataset="mnist1d"), seed, 1)
                out[f"{name}/{v.name}/{seed}"] = run_key_hash(cfg)
    return out


def test_every_built_in_variant_keeps_its_config_hash():
    now = _hashes()
    assert sorted(now) == sorted(FIXTURE["hashes"]), "the built-in studies' variants changed: update the fixture"
    changed = {k: (FIXTURE["hashes"][k], h) for k, h in now.items() if FIXTURE["hashes"][k] != h}
    assert not changed, f"config hashes changed (stored runs would be reset): {changed}"


@pytest.mark.parametrize("threads", [1, 4])
def test_the_hash_ignores_where_a_run_ran(threads):
    study = STUDIES.get(STUDIES.names()[0])
    v = study.variants[0].name
    cfg = run_config(study, v, "mnist1d", LabOptions(dataset="mnist1d"), 0, threads)
    assert run_key_hash(cfg) == FIXTURE["hashes"][f"{study.name}/{v}/0"]
