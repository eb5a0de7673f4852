"""The doctor: signal propagation at init, a short probed training run, verdicts, and a re-check of the cure.

``run_doctor(cfg)`` does, for the data and model of a config:

1. at initialization, the forward and backward signal per layer for every init scheme (:mod:`.signal`);
2. ``diagnostics.steps`` training steps of the config's model, optimizer, LR, L1 and clipping, with a
   :class:`~tricklab.diagnostics.probes.ProbeCallback` sampling every ``diagnostics.every`` steps (LR
   schedules, early stopping and averaging act over epochs and are left out of this short run);
3. the verdicts of :func:`~tricklab.diagnostics.diagnosis.diagnose` and their merged prescription;
4. the re-check: the same short run with the prescription applied, and whether the problems are gone.

Example::

    result = run_doctor(load_config(overrides=["model.depth=20", "model.activation=sigmoid",
                                               "init.scheme=standard_normal", "data.name=synthetic"]))
    [v.name for v in result.verdicts]     # ['vanishing_gradients', 'saturation']
    result.recheck.cured                  # True: glorot_normal + batch norm
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tricklab.assembly import Assembled, assemble, build_model, build_optimizer, load_data, step_callbacks
from tricklab.config import Config
from tricklab.data import Splits, TensorBatches, TensorData
from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.probes import Findings, ProbeCallback
from tricklab.diagnostics.signal import SignalProfile, compare_inits
from tricklab.diagnostics.verdicts import Verdict, merge_prescriptions, settings_of
from tricklab.engine.loop import check_trainable, fit
from tricklab.errors import TrickLabError, wrong_type
from tricklab.events import ORDER_STOP_AFTER, Callback, FitState
from tricklab.outputs import atomic_write

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
    not_applied: dict[str, Any] = field(default_factory=dict)  # parts a custom model must change itself

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
            "not_applied": self.not_applied,
        }


@dataclass
class DoctorResult:
    """The doctor's findings: verdicts with their layers and figures, the merged prescription, the re-check.

    ``config`` is the examined config (None when :func:`diagnose_model` examined a model of your own, whose
    readable ``settings`` stand in for it). ``pytorch``: for a model of your own, the prescription in plain
    PyTorch, one sentence per override key (:func:`~tricklab.diagnostics.in_pytorch.in_pytorch`). ``save(dir)``
    writes the HTML report; in Jupyter it renders itself.
    """

    config: Config | None
    findings: Findings
    verdicts: list[Verdict]
    signal: list[SignalProfile] = field(default_factory=list)
    prescription: dict[str, Any] = field(default_factory=dict)
    recheck: Recheck | None = None
    wall_time_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # what the verdicts read (settings_of(config))
    pytorch: dict[str, str] = field(default_factory=dict)  # the prescription in PyTorch (models of your own)

    def save(self, out_dir: str | Path) -> Path:
        """Write the report folder (``index.html``, plots, ``doctor.json``, ``records.json``, ``signal.json``,
        ``config.yaml`` when there is a config); return the page's path."""
        from tricklab.report.doctor import write_report

        out = report_folder(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            if self.config is not None:
                atomic_write(out / "config.yaml", self.config.to_yaml().encode())
            atomic_write(out / "doctor.json", (json.dumps(self.to_dict(), indent=2) + "\n").encode())
            atomic_write(out / "records.json", (json.dumps(self.findings.to_dict()) + "\n").encode())
            atomic_write(out / "signal.json", (json.dumps([p.to_dict() for p in self.signal]) + "\n").encode())
            return write_report(self, out)
        except OSError as e:
            raise TrickLabError(f"save({str(out)!r}): cannot write the report there ({e.strerror or e})") from None

    def _repr_html_(self) -> str:
        from tricklab.report.doctor import inline_html

        return inline_html(self)

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
            **({"pytorch": self.pytorch} if self.pytorch else {}),
        }


class StopAfter(Callback):
    """Stop training after ``steps`` optimizer steps."""

    order = ORDER_STOP_AFTER

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
    extra: list[Callback] = (),
) -> Findings:
    """Train ``model`` for ``steps`` steps with the config's optimizer, LR, L1 and clipping, probed every
    ``every`` steps; return what the probe saw. ``extra``: more callbacks (e.g. progress)."""
    return probe_run(
        model,
        build_optimizer(cfg, model),
        splits.train,
        steps=steps,
        every=every,
        device=device,
        batch_size=cfg.data.batch_size,
        generator=generator,
        callbacks=[*step_callbacks(cfg), *extra],
    )


def probe_run(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train,
    *,
    steps: int,
    every: int,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    loss_fn: Callable = F.cross_entropy,
    callbacks: list[Callback] = (),
) -> Findings:
    """Train ``model`` with ``optimizer`` on ``train`` (tensors or any iterable of batches) for ``steps`` steps,
    probed every ``every`` steps, with ``callbacks`` (e.g. clipping); return what the probe saw."""
    probe = ProbeCallback(every, stop_on_nonfinite=True)
    batches = train if isinstance(train, (TensorData, tuple)) else list(itertools.islice(iter(train), steps))
    if isinstance(train, (TensorData, tuple)):  # as fit() batches it: a final lone example joins the batch before
        x, y = (train.x, train.y) if isinstance(train, TensorData) else train
        per_epoch = len(TensorBatches(x, y, batch_size, merge_single=True))
    else:
        per_epoch = len(batches)
    if per_epoch == 0:
        raise TrickLabError("doctor: the training data holds no batch")
    epochs = math.ceil(steps / per_epoch)
    device = torch.device(device)
    model.to(device)
    state = FitState(model=model, optimizer=optimizer, epochs=epochs, device=device, steps_per_epoch=per_epoch)
    try:
        fit(
            model,
            batches,
            None,
            epochs=epochs,
            optimizer=optimizer,
            loss_fn=loss_fn,
            callbacks=[probe, StopAfter(steps), *callbacks],
            device=device,
            batch_size=batch_size,
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
    factory, options = cfg.model.factory, cfg.model.factory_kwargs()
    x = splits.train.x[:SIGNAL_BATCH].to(device)
    y = splits.train.y[:SIGNAL_BATCH].to(device)
    return compare_inits(
        lambda: factory(tuple(info.input_shape), info.num_classes, **options),
        x,
        y,
        seed=cfg.train.seed,
    )


def run_doctor(
    cfg: Config,
    prepared: Assembled | None = None,
    *,
    recheck: bool = True,
    signal: bool = True,
    progress: Callable[[str, int], Callback] | None = None,
) -> DoctorResult:
    """Examine ``cfg``: signal at init, a probed short run, verdicts, and (``recheck``) the prescription tried.

    ``progress(label, steps)``: makes a callback that shows the progress of each probed run (the CLI's).

    ``prepared``: what :func:`tricklab.assembly.assemble` returned for ``cfg`` (done here when None).
    """
    start = time.perf_counter()
    parts = prepared or assemble(cfg)
    splits, model, generator, device = parts.splits, parts.model, parts.generator, parts.device
    d = cfg.diagnostics
    profiles = signal_at_init(cfg, splits, device) if signal else []
    shown = [progress("doctor", d.steps)] if progress else []
    findings = probe_training(cfg, splits, model, generator, device, steps=d.steps, every=d.every, extra=shown)
    verdicts = diagnose(findings, settings_of(cfg))
    prescription = merge_prescriptions(verdicts)
    again = None
    if recheck and verdicts and prescription:
        again = _recheck(cfg, splits, device, prescription, [v.name for v in verdicts], progress)
    return DoctorResult(
        cfg, findings, verdicts, profiles, prescription, again, time.perf_counter() - start, settings_of(cfg)
    )


def diagnose_training(cfg: Config, probe: ProbeCallback) -> DoctorResult:
    """The verdicts of a run trained with ``probe`` among its callbacks (``tricklab train --diagnose``).

    Example::

        probe = ProbeCallback(cfg.diagnostics.every)
        run(cfg, out, callbacks=[probe])
        write_report(diagnose_training(cfg, probe), out / "doctor")    # tricklab.report.doctor
    """
    findings = probe.findings()
    verdicts = diagnose(findings, settings_of(cfg))
    return DoctorResult(cfg, findings, verdicts, prescription=merge_prescriptions(verdicts), settings=settings_of(cfg))


def _recheck(
    cfg: Config,
    splits: Splits,
    device: torch.device,
    overrides: dict[str, Any],
    before: list[str],
    progress: Callable[[str, int], Callback] | None = None,
) -> Recheck:
    try:
        cured_cfg = cfg.with_overrides(overrides)
        if cured_cfg.data != cfg.data:
            splits = load_data(cured_cfg)
        model, generator = build_model(cured_cfg, splits, cured_cfg.train.seed)
    except TrickLabError as e:
        return Recheck(overrides, before, [], error=str(e))
    d = cured_cfg.diagnostics
    shown = [progress("doctor re-check", d.steps)] if progress else []
    findings = probe_training(cured_cfg, splits, model, generator, device, steps=d.steps, every=d.every, extra=shown)
    return Recheck(overrides, before, diagnose(findings, settings_of(cured_cfg)), findings)


# --- any model: tricklab.diagnose ---------------------------------------------------------------------------------

#: Keys of a prescription that can be applied to a model of your own without changing its code.
APPLICABLE = ("init.scheme", "optim.lr", "optim.name", "clip.mode", "clip.threshold", "data.scale")

_NORM_NAMES = (
    (torch.nn.modules.batchnorm._BatchNorm, "batch"),
    (torch.nn.LayerNorm, "layer"),
    (torch.nn.GroupNorm, "group"),
)


def model_settings(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What the verdicts read, seen from a model of your own: its norm layers and the optimizer's LR. The main
    activation is left for the verdicts to read off the probed layers; init is the model's own."""
    norms = [name for m in model.modules() for kind, name in _NORM_NAMES if isinstance(m, kind)]
    decay = max((float(g.get("weight_decay") or 0.0) for g in optimizer.param_groups), default=0.0)
    return {
        "model.norm": max(set(norms), key=norms.count) if norms else "none",
        "init.scheme": "default",
        "optim.lr": float(optimizer.param_groups[0]["lr"]),
        "optim.weight_decay": decay,  # a loop that already decays its weights is not told to
        "clip.mode": "none",
        "data.scale": "none",
    }


def diagnose_model(
    model: torch.nn.Module,
    data,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable = F.cross_entropy,
    steps: int = 200,
    every: int = 10,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    seed: int = 0,
    recheck: bool = True,
    signal: bool = True,
) -> DoctorResult:
    """Examine any model that maps inputs to logits: signal at init, ``steps`` probed training steps, verdicts,
    prescriptions and (``recheck``) the applicable part of the prescription tried on a fresh copy.

    ``data``: ``(x, y)`` tensors, a :class:`~tricklab.data.TensorData` or any iterable of ``(x, y)`` batches (a
    ``DataLoader``). ``optimizer``: one over ``model``'s parameters (default: Adam, lr 1e-3, tricklab's default).
    Your ``model`` and ``optimizer`` are not changed: the doctor trains deep copies of them.
    """
    from tricklab.diagnostics.probes import check_every
    from tricklab.engine.seed import seed_everything
    from tricklab.tricks.optimizers import build_optimizer as optimizer_by_name

    check_every(every)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TrickLabError(f"steps = {steps!r}: must be an integer >= 1")
    check_model(model, optimizer)
    start = time.perf_counter()
    if isinstance(data, TensorData):
        data = (data.x, data.y)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x, y = _first_examples(data, SIGNAL_BATCH)
    _check_batch(model, x, y, loss_fn, device)
    optimizer = optimizer if optimizer is not None else optimizer_by_name("adam", model, lr=1e-3)
    if not any(p is q for g in optimizer.param_groups for p in g["params"] for q in model.parameters()):
        raise TrickLabError("optimizer: it holds none of the model's parameters; build it on model.parameters()")
    settings = model_settings(model, optimizer)
    profiles = []
    if signal:
        profiles = compare_inits(
            lambda: copy.deepcopy(model).cpu(), x.to(device), y.to(device), seed=seed, loss_fn=loss_fn
        )
    work_model, work_opt = copy.deepcopy((model, optimizer))
    generator = seed_everything(seed)
    findings = probe_run(
        work_model,
        work_opt,
        data,
        steps=steps,
        every=every,
        device=device,
        batch_size=batch_size,
        generator=generator,
        loss_fn=loss_fn,
    )
    verdicts = diagnose(findings, settings)
    prescription = merge_prescriptions(verdicts)
    again = None
    if recheck and verdicts and prescription:
        fix = {k: v for k, v in prescription.items() if k in APPLICABLE}
        skipped = {k: v for k, v in prescription.items() if k not in APPLICABLE}
        m, o = copy.deepcopy((model, optimizer))
        callbacks: list[Callback] = []
        train = data
        try:
            if "init.scheme" in fix:
                from tricklab.tricks.init import apply_init

                apply_init(m, fix["init.scheme"], data=x.cpu())
            if "optim.name" in fix:
                o = optimizer_by_name(fix["optim.name"], m, lr=fix.get("optim.lr", settings["optim.lr"]))
            for g in o.param_groups if "optim.lr" in fix else ():
                g["lr"] = fix["optim.lr"]
            if fix.get("clip.mode", "none") != "none":
                from tricklab.tricks.clipping import GradClip

                callbacks.append(GradClip(fix["clip.mode"], fix.get("clip.threshold", 1.0)))
            if "data.scale" in fix:
                if not isinstance(data, tuple):
                    raise TrickLabError("data.scale: scale the inputs of your DataLoader yourself")
                from tricklab.tricks.scaling import fit_scaler

                scaler = fit_scaler(data[0], fix["data.scale"])
                train = (scaler.apply(data[0]), data[1])
        except TrickLabError as e:
            again = Recheck(fix, [v.name for v in verdicts], [], error=str(e), not_applied=skipped)
        if again is None:
            found = probe_run(
                m,
                o,
                train,
                steps=steps,
                every=every,
                device=device,
                batch_size=batch_size,
                generator=seed_everything(seed),
                loss_fn=loss_fn,
                callbacks=callbacks,
            )
            s2 = dict(settings, **{k: v for k, v in fix.items() if k in settings})
            again = Recheck(fix, [v.name for v in verdicts], diagnose(found, s2), found, not_applied=skipped)
    from tricklab.diagnostics.in_pytorch import in_pytorch
    from tricklab.diagnostics.loop_bugs import loop_fixes
    from tricklab.diagnostics.records import WEIGHT

    layers = [info.name for info in findings.layers_of(WEIGHT)]
    return DoctorResult(
        None,
        findings,
        verdicts,
        profiles,
        prescription,
        again,
        time.perf_counter() - start,
        settings,
        pytorch={**loop_fixes(verdicts), **in_pytorch(prescription, model=model, layers=layers, settings=settings)},
    )


def report_folder(out_dir: object) -> Path:
    """``out_dir`` of ``save(out_dir)`` as a path; anything but a str or ``os.PathLike`` is refused in one line."""
    try:
        if isinstance(out_dir, str | os.PathLike):
            return Path(out_dir)
    except TypeError:  # an os.PathLike of bytes
        pass
    raise wrong_type("out_dir", out_dir, "a folder's path (str or os.PathLike)")


def check_model(model: object, optimizer: object) -> None:
    """Refuse, in one line, a model the doctor cannot train: not a module, no trainable parameter, or parameters
    on the meta device (shapes without data); and an optimizer that is not one."""
    if not isinstance(model, torch.nn.Module):
        raise TrickLabError(f"model: got a {type(model).__name__}, not a torch.nn.Module")
    check_trainable(model)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise TrickLabError(
            f"model: the {type(model).__name__}'s tensors are on the meta device (shapes without data); materialize "
            "it first, e.g. model.to_empty(device='cpu') and initialize its weights"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise wrong_type("optimizer", optimizer, "a torch.optim.Optimizer or None")


def _check_batch(model: torch.nn.Module, x: object, y: object, loss_fn: Callable, device: torch.device) -> None:
    """Refuse, in one line, data and a model whose first batch the loss cannot take: inputs or labels that are not
    tensors; with the default cross-entropy, labels that are not integer class indices of the model's logits; a
    forward pass that fails or returns no tensor (a tuple: return only the logits). One forward pass in eval mode,
    without gradients: no randomness drawn, no statistics updated."""
    for name, t in (("inputs x", x), ("labels y", y)):
        if not isinstance(t, torch.Tensor):
            raise wrong_type(f"data: the {name} of a batch", t, "a torch.Tensor")
    cross_entropy = loss_fn is F.cross_entropy
    if cross_entropy and (y.dtype not in (torch.int64, torch.uint8) or y.dim() != 1):  # what torch's loss takes
        raise TrickLabError(
            f"data: labels y are a {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')} tensor; cross-entropy takes "
            "a 1-D int64 (or uint8) tensor of class indices (y.long()), or pass a loss_fn for other targets"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device))
    except Exception as e:  # noqa: BLE001 - the user's forward, on the user's data
        raise TrickLabError(
            f"model: its forward pass on inputs of shape {tuple(x.shape)} raised {type(e).__name__}: {e}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TrickLabError(
            f"model: it returned a {type(out).__name__}; the doctor needs a tensor of class logits (batch, classes): "
            "make forward return only the logits"
        )
    if cross_entropy:
        if out.dim() != 2 or len(out) != len(x):
            raise TrickLabError(
                f"model: it maps inputs {tuple(x.shape)} to {tuple(out.shape)}; cross-entropy needs logits of shape "
                f"({len(x)}, classes)"
            )
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= out.shape[1]:
            raise TrickLabError(
                f"data: labels y range over {low}..{high}; the model's {out.shape[1]} logits take class indices "
                f"0..{out.shape[1] - 1}"
            )
        return
    try:
        with torch.no_grad():
            loss_fn(out, y.to(device))
    except Exception as e:  # noqa: BLE001 - the user's loss on the user's data
        raise TrickLabError(f"loss_fn(model(x), y) on the first batch raised {type(e).__name__}: {e}") from None


def _first_examples(data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of ``(x, y)`` tensors, or the first batch of an iterable of batches."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if len(data[0]) != len(data[1]) or len(data[1]) == 0:
            raise TrickLabError(f"data: x has {len(data[0])} examples and y {len(data[1])}; need as many, > 0")
        return data[0][:n], data[1][:n]
    try:
        batch = next(iter(data))
        x, y = batch[0], batch[1]
    except StopIteration:
        raise TrickLabError("data: holds no batch") from None
    except (TypeError, IndexError, KeyError):
        raise TrickLabError(
            f"data: got {type(data).__name__}; expected (x, y) tensors or an iterable of (x, y) "
            "batches such as a DataLoader"
        ) from None
    return x[:n], y[:n]
