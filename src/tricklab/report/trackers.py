"""A finished lab sent to experiment trackers (``tricklab lab --logger NAME``): every done run, then each study's table.

The tables are the lab report's own (:mod:`tricklab.report.lab_report`), so a tracker shows what ``report`` prints;
the trackers themselves are :mod:`tricklab.integrations.loggers`, which receive plain rows and know nothing of the lab.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tricklab.integrations.loggers import Loggers
from tricklab.lab.analysis import TEST_ACC
from tricklab.lab.results import DB_NAME, LabResults, results
from tricklab.lab.store import Store
from tricklab.report.lab_report import COLUMNS, outcome_label, table_rows


def lab_tables(findings: LabResults) -> list[dict[str, Any]]:
    """Each study of a lab (:func:`tricklab.lab.results.results`) as its printed table (``columns``, ``rows``)
    and as numbers per variant (``records``, keyed by :data:`~tricklab.integrations.loggers.TABLE_KEYS`: mean test
    accuracy and its 95% CI, Δ against the baseline with its CI, p (Holm-adjusted when the study decided it) and the
    outcome)."""
    out = []
    for study in findings.studies:
        s = study.stats
        records = []
        for v in s.variants:
            acc = v.intervals[TEST_ACC]
            c, d = v.comparison, v.decision
            p = d.p_holm if d is not None and d.p_holm == d.p_holm else (c.p if c is not None else math.nan)
            records.append(
                {
                    "variant": v.name,
                    "seeds": float(len(v.seeds)),
                    "test_acc_mean": float(acc.mean),
                    "ci_lo": float(acc.lo),
                    "ci_hi": float(acc.hi),
                    "delta": float(c.diff.mean) if c is not None else math.nan,
                    "delta_lo": float(c.diff.lo) if c is not None else math.nan,
                    "delta_hi": float(c.diff.hi) if c is not None else math.nan,
                    "p": float(p),
                    "outcome": outcome_label(v),
                }
            )
        out.append(
            {
                "study": s.study,
                "dataset": s.dataset,
                "columns": list(COLUMNS),
                "rows": table_rows(s),
                "records": records,
            }
        )
    return out


def log_lab(names: Iterable[str], lab_dir: str | Path) -> None:
    """Send a finished lab (its database in ``lab_dir``) to each named logger: every done run, then the tables.

    The runs come from the lab's database, so runs a rerun skipped as already done are logged too. A logger that
    fails warns once and the others go on (the lab's results are already safe in its database).
    """
    group = Loggers(names)
    if not group:
        return
    lab_dir = Path(lab_dir)
    tables = lab_tables(results(lab_dir))
    with Store(lab_dir / DB_NAME, readonly=True) as store:
        runs = [r for r in store.rows() if r.status == "done"]
    group.lab(lab_dir, tables, runs)
