"""The doctor's diagnosis: every model check and every loop check on one set of findings, causes before symptoms.

The model checks (:data:`~tricklab.diagnostics.verdicts.CHECKS`) name problems of the net, the loop checks
(:data:`~tricklab.diagnostics.loop_bugs.LOOP_CHECKS`) bugs of the training loop; :func:`diagnose` runs both and
applies the rule "one cause, one fix" (:func:`~tricklab.diagnostics.loop_bugs.explain`). It sits above both
modules so that neither imports the other's caller.

Example::

    verdicts = diagnose(findings, settings={"model.activation": "sigmoid", "init.scheme": "standard_normal"})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tricklab.diagnostics.loop_bugs import LOOP_CHECKS, explain
from tricklab.diagnostics.records import Findings
from tricklab.diagnostics.verdicts import CHECKS, Verdict, main_activation


def diagnose(findings: Findings, settings: Mapping[str, Any] | None = None) -> list[Verdict]:
    """Run every check in :data:`~tricklab.diagnostics.verdicts.CHECKS` and the loop checks
    (:mod:`~tricklab.diagnostics.loop_bugs`) on ``findings``; an empty list means healthy. A symptom that a found
    cause explains follows it as its consequence (``Verdict.cause`` set, its prescription withheld:
    :func:`~tricklab.diagnostics.loop_bugs.explain`).

    ``settings``: the run's config values by full key (``model.activation``, ``model.norm``,
    ``model.residual``, ``init.scheme``, ``optim.lr``, ``clip.mode``, ``data.scale``, ``optim.weight_decay``,
    ``early_stopping.enabled``), used to tailor the prescriptions; the activation is inferred from the layers when
    absent.
    """
    s = dict(settings or {})
    s.setdefault("model.activation", main_activation(findings))
    found = [v for checks in (CHECKS, LOOP_CHECKS) for name in checks for v in [checks.get(name)(findings, s)] if v]
    return explain(found)
