"""Diagnostics: probes that record plain numbers per layer and step, signal propagation at init, and verdicts.

The doctor (:mod:`tricklab.diagnostics.doctor`, ``tricklab doctor``) puts them together; plots and the HTML
page live in :mod:`tricklab.report.doctor`.
"""

from tricklab.diagnostics.probes import Findings, NonFinite, Probe, ProbeCallback, Records
from tricklab.diagnostics.signal import SignalProfile, compare_inits, signal_profile
from tricklab.diagnostics.verdicts import CHECKS, Verdict, diagnose, merge_prescriptions

__all__ = [
    "CHECKS",
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
