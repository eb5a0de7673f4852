"""The doctor: signal propagation at init, a short probed training run, verdicts, and a re-check of the cure.

``run_doctor(cfg)`` does, for the data and model of a config:

1. at initialization, the forward and backward signal per layer for every init scheme (:mod:`.signal`);
2. ``diagnostics.steps`` training steps of the config's model, optimizer, LR, L1 and clipping, with a
   :class:`~tricklab.diagnostics.probes.ProbeCallback` sampling every ``diagnostics.every`` steps (LR
   schedules, early stopping and averaging act over epochs and are left out of this short run);
3. the verdicts of :func:`~tricklab.diagnostics.verdicts.diagnose` and their merged prescription;
4. the re-check: the same short run with the prescription applied, and whether the problems are gone.

Example::

    result = run_doctor(load_config(overrides=["model.depth=20", "model.activation=sigmoid",
                                               "init.scheme=standard_normal", "data.name=synthetic"]))
    [v.name for v in result.verdicts]     # ['vanishing_gradients', 'saturation']
    result.recheck.cured                  # True: glorot_normal + batch norm
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tricklab.config import Config
from tricklab.data import Splits
from tricklab.diagnostics.probes import Findings, ProbeCallback
from tricklab.diagnostics.signal import SignalProfile, compare_inits
from tricklab.diagnostics.verdicts import Verdict, diagnose, merge_prescriptions, settings_of
from tricklab.errors import TrickLabError
from tricklab.events import Callback, FitState
from tricklab.models import build_model
from tricklab.train.loop import fit
from tricklab.train.run import load_data, make_model, prepare
from tricklab.train.setup import build_optimizer
from tricklab.tricks.clipping import GradClip
from tricklab.tricks.regularization import L1Penalty

#: Examples in the batch that measures signal propagation at init.
SIGNAL_BATCH = 256


@dataclass
class Recheck:
    """The short run again with ``overrides`` applied: what remains."""

    overrides: dict[str, Any]
    before: list[str]  # verdict names before
    verdicts: list[Verdict]
    findings: Findings | None = None
    error: str | None = None  # the prescription could not be applied

    @property
    def cured(self) -> bool:
        """Every problem found before is gone (new ones may have appeared: see ``verdicts``)."""
        return self.error is None and not {v.name for v in self.verdicts} & set(self.before)

    @property
    def healthy(self) -> bool:
        return self.error is None and not self.verdicts

    def to_dict(self) -> dict[str, Any]:
        return {
            "overrides": self.overrides,
            "cured": self.cured,
            "healthy": self.healthy,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "error": self.error,
        }


@dataclass
class DoctorResult:
    config: Config
    findings: Findings
    verdicts: list[Verdict]
    signal: list[SignalProfile] = field(default_factory=list)
    prescription: dict[str, Any] = field(default_factory=dict)
    recheck: Recheck | None = None
    wall_time_s: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.verdicts

    def to_dict(self) -> dict[str, Any]:
        nf = self.findings.first_nonfinite
        return {
            "healthy": self.healthy,
            "steps": self.findings.steps,
            "every": self.findings.every,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "prescription": self.prescription,
            "recheck": self.recheck.to_dict() if self.recheck else None,
            "first_nonfinite": None if nf is None else nf.__dict__,
            "wall_time_s": self.wall_time_s,
        }


class StopAfter(Callback):
    """Stop training after ``steps`` optimizer steps."""

    order = 1000

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, state: FitState) -> None:
        if state.step >= self.steps:
            state.stop, state.stop_reason = True, f"doctor: {self.steps} steps"


def probe_training(
    cfg: Config,
    splits: Splits,
    model: torch.nn.Module,
    generator: torch.Generator,
    device: torch.device,
    *,
    steps: int,
    every: int,
) -> Findings:
    """Train ``model`` for ``steps`` steps with the config's optimizer, LR, L1 and clipping, probed every
    ``every`` steps; return what the probe saw."""
    probe = ProbeCallback(every, stop_on_nonfinite=True)
    callbacks: list[Callback] = [probe, StopAfter(steps)]
    if cfg.optim.l1 > 0:
        callbacks.append(L1Penalty(cfg.optim.l1))
    if cfg.clip.mode != "none":
        callbacks.append(GradClip(cfg.clip.mode, cfg.clip.threshold))
    per_epoch = math.ceil(len(splits.train) / cfg.data.batch_size)
    epochs = math.ceil(steps / per_epoch)
    optimizer = build_optimizer(cfg, model)
    model.to(device)
    state = FitState(model=model, optimizer=optimizer, epochs=epochs, device=device, steps_per_epoch=per_epoch)
    try:
        fit(
            model,
            splits.train,
            None,
            epochs=epochs,
            optimizer=optimizer,
            callbacks=callbacks,
            device=device,
            batch_size=cfg.data.batch_size,
            generator=generator,
            state=state,
        )
    except TrickLabError:  # the loop's own non-finite guard stopped it before the probe's event
        probe.after_failure(state)
        if probe.probe is None or probe.probe.first_nonfinite is None:
            raise
    return probe.findings()


def signal_at_init(cfg: Config, splits: Splits, device: torch.device) -> list[SignalProfile]:
    """Signal propagation of the config's model for every init scheme, on the first training examples."""
    info = splits.info
    options = cfg.model.model_dump(exclude={"name"})
    x = splits.train.x[:SIGNAL_BATCH].to(device)
    y = splits.train.y[:SIGNAL_BATCH].to(device)
    return compare_inits(
        lambda: build_model(cfg.model.name, info.input_shape, info.num_classes, **options),
        x,
        y,
        seed=cfg.train.seed,
    )


def run_doctor(
    cfg: Config,
    prepared: tuple[Splits, torch.nn.Module, torch.Generator, torch.device] | None = None,
    *,
    recheck: bool = True,
    signal: bool = True,
) -> DoctorResult:
    """Examine ``cfg``: signal at init, a probed short run, verdicts, and (``recheck``) the prescription tried.

    ``prepared``: what :func:`tricklab.train.run.prepare` returned for ``cfg`` (done here when None).
    """
    start = time.perf_counter()
    splits, model, generator, device = prepared or prepare(cfg)
    d = cfg.diagnostics
    profiles = signal_at_init(cfg, splits, device) if signal else []
    findings = probe_training(cfg, splits, model, generator, device, steps=d.steps, every=d.every)
    verdicts = diagnose(findings, settings_of(cfg))
    prescription = merge_prescriptions(verdicts)
    again = None
    if recheck and verdicts and prescription:
        again = _recheck(cfg, splits, device, prescription, [v.name for v in verdicts])
    return DoctorResult(cfg, findings, verdicts, profiles, prescription, again, wall_time_s=time.perf_counter() - start)


def diagnose_training(cfg: Config, probe: ProbeCallback) -> DoctorResult:
    """The verdicts of a run trained with ``probe`` among its callbacks (``tricklab train --diagnose``).

    Example::

        probe = ProbeCallback(cfg.diagnostics.every)
        run(cfg, out, callbacks=[probe])
        write_report(diagnose_training(cfg, probe), out / "doctor")    # tricklab.report.doctor
    """
    findings = probe.findings()
    verdicts = diagnose(findings, settings_of(cfg))
    return DoctorResult(cfg, findings, verdicts, prescription=merge_prescriptions(verdicts))


def _recheck(
    cfg: Config, splits: Splits, device: torch.device, overrides: dict[str, Any], before: list[str]
) -> Recheck:
    try:
        cured_cfg = cfg.with_overrides(overrides)
        if cured_cfg.data != cfg.data:
            splits = load_data(cured_cfg)
        model, generator = make_model(cured_cfg, splits, cured_cfg.train.seed)
    except TrickLabError as e:
        return Recheck(overrides, before, [], error=str(e))
    d = cured_cfg.diagnostics
    findings = probe_training(cured_cfg, splits, model, generator, device, steps=d.steps, every=d.every)
    return Recheck(overrides, before, diagnose(findings, settings_of(cured_cfg)), findings)
