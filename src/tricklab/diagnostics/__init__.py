"""Diagnostics: probes that record plain numbers per layer and step, signal propagation at init, and verdicts.

:mod:`~tricklab.diagnostics.records` holds the metric names and the plain record types, with no hooks;
:mod:`~tricklab.diagnostics.probes` the hooks that fill them; :mod:`~tricklab.diagnostics.verdicts` reads
records only; :mod:`~tricklab.diagnostics.loop_watch` records the invariants of the training loop itself and
:mod:`~tricklab.diagnostics.loop_bugs` names the loop's bugs from them (and puts the causes before the symptoms they
explain). The doctor (:mod:`tricklab.diagnostics.doctor`, ``tricklab doctor``) puts them together; plots
and the HTML page live in :mod:`tricklab.report.doctor`. :class:`~tricklab.diagnostics.anywhere.Doctor` brings the
same verdicts to a training loop of your own (``with Doctor(model, optimizer):``).

The probes and the signal profile (which hook into models) are imported on first use, so that reading
records or verdicts (``import tricklab.diagnostics.verdicts``) never loads the hook machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.records import Findings, NonFinite, Records
from tricklab.diagnostics.verdicts import CHECKS, Verdict, merge_prescriptions

if TYPE_CHECKING:
    from tricklab.diagnostics.anywhere import Doctor
    from tricklab.diagnostics.probes import Probe, ProbeCallback
    from tricklab.diagnostics.signal import SignalProfile, compare_inits, signal_profile

#: Names imported on first use, and their module.
_LAZY = {
    "Doctor": "tricklab.diagnostics.anywhere",
    "Probe": "tricklab.diagnostics.probes",
    "ProbeCallback": "tricklab.diagnostics.probes",
    "SignalProfile": "tricklab.diagnostics.signal",
    "compare_inits": "tricklab.diagnostics.signal",
    "signal_profile": "tricklab.diagnostics.signal",
}

__all__ = [
    "CHECKS",
    "Doctor",
    "Findings",
    "NonFinite",
    "Probe",
    "ProbeCallback",
    "Records",
    "SignalProfile",
    "Verdict",
    "compare_inits",
    "diagnose",
    "merge_prescriptions",
    "signal_profile",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
