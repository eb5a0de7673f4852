"""A lab's results, read one way for everyone: the API's records, the HTML and Markdown reports, ``--seeds auto``.

:func:`results` reads a lab folder's ``results.sqlite`` (read-only) into its recorded sessions and, per study, the
stored :class:`~tricklab.lab.spec.StudySpec` and command, the runs of the spec's variants, their statistics
(:func:`tricklab.lab.analysis.analyse`) and the per-variant signal at init when the study recorded it.
:func:`study_result` does the same for one study from a database already open (the lab, while it runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tricklab.errors import TrickLabError
from tricklab.lab.analysis import StudyStats, analyse
from tricklab.lab.improvement import MEAN, check_aggregate
from tricklab.lab.spec import StudySpec
from tricklab.lab.store import RunRow, Store

DB_NAME = "results.sqlite"


@dataclass(frozen=True)
class StudyResult:
    """One study on one dataset as stored: its statistics, spec, command, runs and signal at init (if recorded)."""

    stats: StudyStats
    spec: StudySpec
    command: str
    rows: list[RunRow]
    signals: dict[str, dict] = field(default_factory=dict)

    @property
    def study(self) -> str:
        return self.stats.study

    @property
    def dataset(self) -> str:
        return self.stats.dataset


@dataclass(frozen=True)
class LabResults:
    """What a lab's database says, read and checked in full: its recorded sessions and every study's result."""

    sessions: list[dict]
    studies: list[StudyResult]


def study_result(
    store: Store, study: str, dataset: str, spec: StudySpec, command: str = "", *, signals: bool = False
) -> StudyResult:
    """One study's result from an open database: the runs of its spec's variants (rows of variants no longer in
    the study are left out), analysed; with ``signals``, the signal at init of each variant that has one."""
    rows = [r for r in store.rows(study, dataset) if r.variant in spec.variants]
    found: dict[str, dict] = {}
    if signals and spec.init_signal:
        for v in spec.variants:
            row = next((r for r in rows if r.variant == v), None)
            sig = store.signal(study, v, dataset, row.config_hash) if row else None
            if sig:
                found[v] = sig
    stats = analyse(study, dataset, spec, rows)
    stats.aggregate = check_aggregate(spec.get("aggregate") or MEAN, f"study {study!r}: aggregate")
    return StudyResult(stats, spec, command, rows, found)


def results(lab_dir: str | Path) -> LabResults:
    """Read and analyse every study of ``lab_dir``'s database, opened read-only (one-line errors: StoreError); a
    folder without a database is refused in one line."""
    lab_dir = Path(lab_dir)
    db = lab_dir / DB_NAME
    if not os.path.lexists(db):
        raise TrickLabError(f"{str(lab_dir)!r} holds no lab results ({DB_NAME} not found); run `tricklab lab` first")
    with Store(db, readonly=True) as store:
        return LabResults(
            store.sessions(),
            [study_result(store, s, d, spec, command, signals=True) for s, d, spec, command in store.studies()],
        )
