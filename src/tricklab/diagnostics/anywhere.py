"""The doctor in your own loop: ``with Doctor(model, optimizer):`` around any hand-written training loop.

The same probes and verdicts as ``tricklab doctor`` and ``tricklab train --diagnose``, with the loop left as it
is: the doctor hooks the model (forward, backward and gradient hooks that only read) and the optimizer's step
(``register_step_pre_hook`` / ``register_step_post_hook``), and removes every hook on exit, also when the loop
raises (the exception goes on). The loop's numbers are bit-identical with and without it. Example::

    with tricklab.Doctor(model, opt) as doctor:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            doctor.observe(loss=loss, labels=y)   # optional: feeds the loss-based checks
    print(doctor.report())                     # verdicts, the fix in PyTorch terms and as tricklab --set flags
    doctor.save("runs/my-doctor")              # the HTML report

How it measures: a :class:`~tricklab.diagnostics.probes.ProbeCallback`, driven through a
:class:`~tricklab.events.FitState` that this adapter fills (one implementation of the measurements, shared with
``fit()``). What counts as a training step:

- with ``optimizer``: each ``optimizer.step()``. Its pre-hook is the loop's "after backward" event (the global
  gradient norm of every step, the first non-finite value, the weights before the update), its post-hook the
  step's end (update-to-weight ratios). Forwards between two steps (gradient accumulation) belong to one step.
- without: each forward of ``model`` in training mode (``model.train()``; eval-mode forwards are not counted).
  Then only the sampled steps have a gradient norm, and there is no update ratio (no ``lr_too_high`` verdict).
- ``driven=True``: a training framework calls :meth:`after_backward` and :meth:`after_step` itself (the
  Lightning callback, :mod:`tricklab.integrations.lightning`).

The settings the verdicts read (the norm layers, the optimizer's learning rate) are taken on entry.

Besides the model's problems, the doctor checks the loop itself (:mod:`~tricklab.diagnostics.loop_bugs`: gradients
that are never zeroed, parameters in no param group, a cut graph, a step that changes nothing, training forwards in
eval mode, probabilities fed to the loss, a runaway LR schedule, unshuffled batches, labels that do not belong to
their inputs, weight decay or clipping that swamps the gradient, a loss that broadcast, the same batch every step).
A loop bug that explains a symptom is the verdict, and the symptom is shown as its consequence with no fix of its
own. A loop whose forwards all ran in eval mode gets the ``eval_mode_training`` verdict, not an exception.
"""

from __future__ import annotations

import math
import numbers
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tricklab.diagnostics.diagnosis import diagnose
from tricklab.diagnostics.doctor import DoctorResult, check_model, model_settings, report_folder
from tricklab.diagnostics.in_pytorch import in_pytorch
from tricklab.diagnostics.loop_bugs import loop_fixes
from tricklab.diagnostics.probes import ProbeCallback, check_every, is_class_labels
from tricklab.diagnostics.records import LOSS, MODEL, WEIGHT, Findings
from tricklab.diagnostics.verdicts import Verdict, as_set_flags, merge_prescriptions
from tricklab.errors import TrickLabError
from tricklab.events import FitState
from tricklab.metrics import TRAIN_ACC, VAL_ACC, VAL_LOSS

#: What :meth:`Doctor.observe` records, by keyword → metric name in the records (layer ``(model)``). The
#: loss-spike check reads ``loss``; the others are kept for the report and for checks that read them.
OBSERVED = {"loss": LOSS, "acc": TRAIN_ACC, "val_loss": VAL_LOSS, "val_acc": VAL_ACC}

#: Observed tensors are turned into numbers in batches of this many (one host sync per batch, not per step).
OBSERVE_BATCH = 256

#: The report folder a previous ``save`` wrote (``save`` may write over it; any other non-empty folder is refused).
REPORT_MARK = "doctor.json"


class Doctor:
    """Probe a training loop of your own and name what is wrong with it: a context manager.

    ``model``: the module the loop calls (its forward must run in training mode); ``optimizer``: the one the loop
    steps (optional, see the module's docstring for how steps are counted without it); ``every``: sample the
    per-layer statistics every ``every`` steps (the global gradient norm is read every step).

    Example::

        with Doctor(model, opt, every=10) as doctor:
            train(model, opt)                          # your loop, unchanged
        [v.name for v in doctor.verdicts()]           # ['vanishing_gradients', 'saturation']
        doctor.prescription()["init.scheme"]          # 'initialize the Linear/Conv layers ... xavier_normal_ ...'
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        every: int = 10,
        *,
        driven: bool = False,
    ):
        check_every(every)
        try:
            check_model(model, optimizer)
        except TrickLabError as e:
            raise TrickLabError(f"Doctor: {e}") from None
        if optimizer is not None:
            mine = {id(p) for p in model.parameters()}
            if not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
                raise TrickLabError("Doctor: the optimizer holds none of the model's parameters; pass the one you step")
        self.model, self.optimizer, self.every, self.driven = model, optimizer, every, driven
        self._callback: ProbeCallback | None = None
        self._state: FitState | None = None
        self._handles: list[Any] = []
        self._settings: dict[str, Any] = {}
        self._forward_step = 0  # the step of the last training forward: what observe() records against
        self._observed: list[tuple[str, int, Tensor | float]] = []
        self._started = self._stopped = None

    # --- attach / detach --------------------------------------------------------------------------------------

    def __enter__(self) -> Doctor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()  # returns None: an exception raised in the block goes on

    def attach(self) -> Doctor:
        """Hook the model (and the optimizer's step unless ``driven``); returns ``self``. One run per Doctor."""
        if self._callback is not None:
            raise TrickLabError("Doctor: it already watched a run; make a new Doctor for another one")
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self._state = FitState(model=self.model, optimizer=self.optimizer, epochs=0, device=device)
        self._settings = _settings(self.model, self.optimizer)
        self._callback = ProbeCallback(self.every, guarded=False)  # the loop is yours: the probe checks each step
        self._callback.on_fit_start(self._state)
        if self.optimizer is None and not self.driven:
            self._callback.probe.auto_step = True  # each training-mode forward is a step
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._forward_pre_hook))
            if self.optimizer is not None and not self.driven:
                self._handles.append(self.optimizer.register_step_pre_hook(lambda *_: self.after_backward()))
                self._handles.append(self.optimizer.register_step_post_hook(lambda *_: self.after_step()))
        except BaseException:
            self.detach()
            raise
        self._started = time.perf_counter()
        return self

    def detach(self) -> None:
        """Remove every hook (the records stay); safe to call twice."""
        if self._callback is None or self._callback.probe is None:
            return
        try:
            self._flush_observed()
            self._callback.on_fit_end(self._state)
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._state.inputs = None  # drop the last batch
            if self._stopped is None and self._started is not None:
                self._stopped = time.perf_counter()

    # --- the loop's events (called by the optimizer's hooks, or by a framework when driven) -------------------

    def after_backward(self) -> None:
        """The gradients of this step are complete and the weights not yet updated."""
        self._callback.on_after_backward(self._state)

    def before_backward(self, loss: Tensor) -> None:
        """The loss about to be backpropagated (a framework calls this when driven): its autograd graph is read for
        an element-wise loss that broadcast the output against a target of another shape."""
        if self._callback is not None and self._callback.watch is not None and isinstance(loss, Tensor):
            self._callback.watch.loss(loss, self._forward_step)

    def after_step(self) -> None:
        """The optimizer step was taken: the next forward belongs to the next step."""
        self._state.step += 1
        self._callback.on_step_end(self._state)

    def observe(
        self,
        loss: Tensor | float | None = None,
        acc: Tensor | float | None = None,
        val_loss: Tensor | float | None = None,
        val_acc: Tensor | float | None = None,
        labels: Tensor | None = None,
    ) -> None:
        """Record the loop's own numbers against the step of the last training forward: per step (the batch
        loss, for the loss-spike check) or per epoch. Tensors are read without a host sync per call.

        ``labels``: the batch's class labels (a 1-D integer tensor), for a cross-entropy loss on them. Every
        ``every``-th batch's are counted: their entropy is the loss of a net that learned nothing from its inputs,
        against which "loss not decreasing" is judged (as in ``fit()``); without them that check falls back to
        "fell by less than 1%". They also show batches that hold one class at a time (data not shuffled).

        Pass ``loss`` as the tensor the loop computed (detached or not; not detached, its graph is read): its
        autograd graph shows an element-wise loss that broadcast the output against a target of another shape ((N, 1)
        against (N,) gives (N, N)), and a softmax whose output a log-softmax takes (F.softmax before
        F.cross_entropy in the loss code)."""
        if labels is not None:
            if not is_class_labels(labels):
                shape = f" of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else ""
                raise TrickLabError(
                    f"Doctor.observe(labels=...): got a {type(labels).__name__}{shape}; expected the batch's class "
                    "labels, a 1-D integer tensor"
                )
            self._callback.count_labels(labels)
        if isinstance(loss, Tensor) and self._callback.watch is not None:
            self._callback.watch.loss(loss, self._forward_step)
        step = self._forward_step
        for name, value in (("loss", loss), ("acc", acc), ("val_loss", val_loss), ("val_acc", val_acc)):
            if value is not None:
                self._observed.append((OBSERVED[name], step, _scalar(name, value)))
        if len(self._observed) >= OBSERVE_BATCH:
            self._flush_observed()

    # --- what it found ----------------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Training steps seen so far (steps whose forward ran in training mode)."""
        return 0 if self._callback is None or self._callback.probe is None else self._callback.probe.steps_seen

    def findings(self) -> Findings:
        """Everything recorded so far, as plain data (the probes' records and the observed numbers)."""
        if self._callback is None:
            raise TrickLabError(
                "Doctor: nothing recorded yet; use it as `with Doctor(model, optimizer):` around the loop"
            )
        self._flush_observed()
        return self._callback.findings()

    def verdicts(self) -> list[Verdict]:
        """The problems found (an empty list: healthy), as ``tricklab doctor`` names them."""
        findings = self.findings()
        found = diagnose(findings, self._settings) if findings.steps or self.forward_steps else []
        if findings.steps == 0 and not found:  # nothing probed and no loop bug that says why: nothing to judge
            taken = f"{self._state.step} optimizer steps but " if self._state.step else ""
            raise TrickLabError(
                f"Doctor: saw {taken}no forward of the {type(self.model).__name__} in training mode; call "
                "model.train() and run the model inside the `with` block (the model you pass must be the one called)"
            )
        return found

    def overrides(self) -> dict[str, Any]:
        """The verdicts' prescription as tricklab config overrides, e.g. ``{"model.norm": "batch"}``."""
        return merge_prescriptions(self.verdicts())

    def prescription(self) -> dict[str, str]:
        """The prescription in plain PyTorch: for a bug of the loop, its verdict's name → the code that fixes it;
        then override key → what to change in your code, naming the layers."""
        verdicts = self.verdicts()
        layers = [info.name for info in self.findings().layers_of(WEIGHT)]
        overrides = merge_prescriptions(verdicts)
        said = in_pytorch(overrides, model=self.model, layers=layers, settings=self._settings)
        return {**loop_fixes(verdicts), **said}

    @property
    def forward_steps(self) -> int:
        """Optimizer steps whose forward the doctor saw, in training or eval mode."""
        watch = None if self._callback is None else self._callback.watch
        return 0 if watch is None else watch.forward_steps

    def set_flags(self) -> str:
        """The prescription for a tricklab run: ``--set init.scheme=glorot_normal --set model.norm=batch``."""
        return as_set_flags(self.overrides())

    def result(self) -> DoctorResult:
        """A :class:`~tricklab.diagnostics.doctor.DoctorResult`, as ``tricklab.diagnose`` returns (no re-check)."""
        verdicts = self.verdicts()
        end = self._stopped if self._stopped is not None else time.perf_counter()
        return DoctorResult(
            None,
            self.findings(),
            verdicts,
            prescription=merge_prescriptions(verdicts),
            wall_time_s=end - self._started,
            settings=dict(self._settings),
            pytorch=self.prescription(),
        )

    def report(self) -> str:
        """The verdicts, their figures and layers, and the prescription in PyTorch and as ``--set`` flags."""
        verdicts, f = self.verdicts(), self.findings()
        where = f"in {max(f.steps, self.forward_steps)} steps (probes every {f.every} steps)"
        if not verdicts:
            return f"tricklab doctor: healthy, no problems found {where}"
        causes = [v for v in verdicts if v.cause is None]
        lines = [f"tricklab doctor: {len(causes)} problem(s) found {where}:"]
        for v in causes:
            first = f" (certain at step {v.first_step})" if v.first_step is not None else ""
            lines.append(f"  {v.name}{first}: {v.summary}")
            if v.layers and v.layers != (MODEL,):
                more = f" (+{len(v.layers) - 4} more)" if len(v.layers) > 4 else ""
                lines.append(f"      layers: {', '.join(v.layers[:4])}{more}")
            if v.code:
                lines.append(f"      cause: {v.advice}")
            after = [w.name for w in verdicts if w.cause == v.name]
            if after:
                lines.append(f"      its consequences (their fixes withheld): {', '.join(after)}")
        lines.append("In PyTorch:")
        lines += [f"  - {sentence}" for sentence in self.prescription().values()]
        flags = self.set_flags()
        if flags:
            lines.append(f"With tricklab: {flags}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> Path:
        """Write the HTML report folder (``index.html``, plots, ``doctor.json`` with the PyTorch prescription,
        ``records.json``); return the page's path. The folder is created; a non-empty folder that holds no
        doctor report is refused."""
        out = report_folder(out_dir)
        if out.exists() and not out.is_dir():
            raise TrickLabError(f"save({str(out)!r}): it is a file, not a folder; choose a folder")
        if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MARK).is_file():
            raise TrickLabError(
                f"save({str(out)!r}): the folder already exists and is not empty; choose a new report folder"
            )
        return self.result().save(out)

    def _repr_html_(self) -> str:
        return self.result()._repr_html_()

    def __repr__(self) -> str:
        return f"Doctor({type(self.model).__name__}, every={self.every}, steps={self.steps})"

    # --- hooks and helpers ------------------------------------------------------------------------------------

    def _forward_pre_hook(self, module: nn.Module, args: tuple) -> None:
        # runs after the probe's own pre-hook, which has set the step of this forward
        if module.training:
            self._forward_step = self._callback.probe.step
            if self.optimizer is not None or self.driven:  # for locating a non-finite value after backward
                self._state.inputs = args[0] if args and isinstance(args[0], Tensor) else None

    def _flush_observed(self) -> None:
        """Observed values → the probe's records, with one host sync for all the tensors among them."""
        if not self._observed or self._callback is None or self._callback.probe is None:
            return
        tensors = [v for *_, v in self._observed if isinstance(v, Tensor)]
        read = iter(torch.stack([t.float().to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
        records = self._callback.probe.findings().records
        for metric, step, value in self._observed:
            records.add(metric, MODEL, step, next(read) if isinstance(value, Tensor) else value)
        self._observed = []


def _scalar(name: str, value: object) -> Tensor | float:
    """A number or a one-element tensor (detached, left on its device); anything else fails in one line."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.detach().reshape(())
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else ""
    raise TrickLabError(
        f"Doctor.observe({name}=...): got a {type(value).__name__}{shape}; expected a number or a one-element tensor"
    )


def _settings(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """What the verdicts read (:func:`~tricklab.diagnostics.doctor.model_settings`); without an optimizer, no LR."""
    if optimizer is not None:
        return model_settings(model, optimizer)
    settings = model_settings(model, types.SimpleNamespace(param_groups=[{"lr": math.nan}]))
    del settings["optim.lr"]
    return settings
