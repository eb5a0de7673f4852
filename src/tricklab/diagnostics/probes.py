"""Probes: forward/backward hooks that record plain numbers per layer and step, sampled every k steps.

On a sampled step (``step % every == 0``, training mode only) a :class:`Probe` records, keyed by metric,
layer name (as in ``model.named_modules()``) and step, the metrics of :mod:`tricklab.diagnostics.records`
(activation mean/std, dead and saturated fractions, histograms, the backward signal, weight-gradient norms,
update ratios, input statistics; the loss and global ‖g‖ when given them), saturated fractions and histograms
on an evenly strided sample of at most ``SAMPLE_SIZE`` = 4096 outputs,
and the first non-finite value: which step, which layer, and where (input, forward, loss, backward, weights).
A gradient first non-finite at the output of layer X is attributed to the layer called after X, whose backward
produced it. Norms and stds are computed on x / max|x|, so huge finite values do not overflow into false alarms.

On other steps every hook returns at once, so probing costs little: with :class:`ProbeCallback` every 10 steps,
an MNIST MLP epoch takes ~1.06× as long (``benchmarks/probe_overhead.py``).
The metric names and record types live in :mod:`tricklab.diagnostics.records` (imported again from here, so
``from tricklab.diagnostics.probes import Findings`` keeps working); records are plain numbers (after fastai's
``ActivationStats``, which samples ``every`` k steps in the same way).

Three ways to use it::

    with Probe(model, every=10, optimizer=opt) as p:   # any nn.Module and hand-written loop
        for x, y in batches:
            loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    p.findings().records.series("weight_grad_norm", "0")

    fit(model, data, callbacks=[ProbeCallback(every=10)])   # in the trainer: also the loss and ‖g‖ each
                                                            # step, and an exact non-finite locator
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tricklab.diagnostics.records import (
    ACT_HIST,
    ACT_MEAN,
    ACT_STD,
    ACTIVATIONS,
    DEAD_FRACTION,
    GELU,
    GLOBAL_GRAD_NORM,
    GRAD_STD,
    INPUT,
    INPUT_ABS_MAX,
    INPUT_MEAN,
    INPUT_RMS,
    LOSS,
    MODEL,
    NORM,
    OTHER,
    PRIOR_LOSS,
    RELU,
    SATURATED_FRACTION,
    SATURATION_LEVEL,
    SIGMOID,
    TANH,
    UPDATE_RATIO,
    WEIGHT,
    WEIGHT_GRAD_NORM,
    WHERE_BACKWARD,
    WHERE_FORWARD,
    WHERE_INPUT,
    WHERE_LOSS,
    WHERE_WEIGHTS,
    Findings,
    LayerInfo,
    NonFinite,
    Records,
    hist_range,
)
from tricklab.errors import ConfigError
from tricklab.events import ORDER_PROBE, Callback, FitState
from tricklab.metrics import NONFINITE_STEP, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from tricklab.tricks.init import INIT_LAYERS

#: The activation modules the probes recognize, by kind.
ACTIVATION_KINDS: dict[type[nn.Module], str] = {
    nn.ReLU: RELU,
    nn.Sigmoid: SIGMOID,
    nn.Tanh: TANH,
    nn.GELU: GELU,
}
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)

HIST_BINS = 40
#: Histograms and saturated fractions are taken on an evenly strided sample of at most this many outputs
#: (standard error of a fraction < 0.8%), which bounds their cost on wide layers.
SAMPLE_SIZE = 4096


class _Check(NamedTuple):
    """A pending finiteness test, read at the next flush (one sync for all): ``peak`` = max |x| of the tensor
    tested, computed anyway for the statistics; it is NaN or inf exactly when some element is."""

    step: int
    layer: str | None
    where: str
    detail: str
    peak: Tensor
    calls: list[str]  # the modules called in that step's forward, in order (for backward attribution)


def check_every(every: object) -> None:
    """``every`` must be an integer >= 1 (named as the config key ``diagnostics.every``)."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError("diagnostics.every", every, "an integer >= 1 (sample every k steps)")


def layer_kind(module: nn.Module) -> str | None:
    """``weight``, ``norm``, an activation name, ``other`` (a leaf), or None (a container, not probed)."""
    if isinstance(module, INIT_LAYERS):
        return WEIGHT
    for cls, kind in ACTIVATION_KINDS.items():
        if isinstance(module, cls):
            return kind
    if isinstance(module, NORM_LAYERS):
        return NORM
    return OTHER if next(module.children(), None) is None else None


def dead_fraction(y: Tensor) -> Tensor:
    """Fraction of units (dim 1: features or channels) that are 0 for every example and position."""
    peak = y.amax(dim=[0, *range(2, y.dim())])  # a ReLU unit is dead iff its largest output is 0
    return 1.0 - (peak > 0).float().mean()


def saturated_fraction(y: Tensor, kind: str) -> Tensor:
    """tanh: fraction with |y| > 0.99; sigmoid: fraction with y < 0.01 or y > 0.99."""
    if kind == TANH:
        return (y.abs() > SATURATION_LEVEL).float().mean()
    return ((y - 0.5).abs() > SATURATION_LEVEL - 0.5).float().mean()


def scaled_stats(y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(std, mean, norm, peak) of ``y``: population std, mean, L2 norm and max |y|, without overflow.

    Computed on y / max|y|, so values up to float32's limit give finite results (a plain norm overflows
    beyond ~1e19); ``peak`` is NaN or inf exactly when some element is. A few fast passes
    (``torch.std_mean`` is ~10× slower on CPU).
    """
    peak = y.abs().amax()
    z = y / peak.clamp_min(torch.finfo(y.dtype).tiny)
    mean = z.sum() / z.numel()
    std = torch.linalg.vector_norm(z - mean) / math.sqrt(z.numel())
    return std * peak, mean * peak, torch.linalg.vector_norm(z) * peak, peak


def scaled_norm(g: Tensor) -> tuple[Tensor, Tensor]:
    """(‖g‖₂, max |g|) without overflow (see :func:`scaled_stats`), in fewer passes."""
    peak = g.abs().amax()
    return torch.linalg.vector_norm(g / peak.clamp_min(torch.finfo(g.dtype).tiny)) * peak, peak


def strided_sample(y: Tensor, most: int = SAMPLE_SIZE) -> Tensor:
    """At most ``most`` evenly strided elements of ``y`` (all of them when it is smaller)."""
    flat = y.reshape(-1)
    return flat[:: max(1, flat.numel() // most)]


class Probe:
    """Hooks on every layer of ``model`` that record plain numbers every ``every`` training steps.

    Steps: without a driver, each forward pass in training mode is one step (0, 1, 2, ...); a trainer
    sets them with :meth:`set_step` instead (``auto_step=False``). With ``optimizer``, the update-to-weight
    ratio and the global gradient norm of every step come from the optimizer's step hooks.

    Cost on a non-sampled step: one attribute test per hooked module and parameter (plus, with an
    optimizer or :class:`ProbeCallback`, the global gradient norm: one fused norm and one sync).

    Example::

        with Probe(model, every=1) as p:
            F.cross_entropy(model(x), y).backward()
        p.findings().records.get("act_std", "1", step=0)
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 10,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        auto_step: bool = True,
        bins: int = HIST_BINS,
    ):
        check_every(every)
        self.model, self.every, self.optimizer, self.bins = model, every, optimizer, bins
        self.auto_step = auto_step
        self.step, self.sampling = 0, False
        self.steps_seen = 0
        self.first_nonfinite: NonFinite | None = None
        self._records = Records()
        self._kinds: dict[nn.Module, tuple[str, str]] = {}  # module → (name, kind)
        self._order: dict[str, int] = {}  # name → forward index
        self._weight_params: dict[str, list[nn.Parameter]] = {}
        self._param_layer: dict[nn.Parameter, str | None] = {}
        self._handles: list[Any] = []
        self._next_auto = 0
        self._active = self._param_active = self._locating = False
        self._calls: list[str] = []  # names called in this step's forward, in order
        self._scalars: list[tuple[str, str, int, Tensor]] = []
        self._hists: list[tuple[str, int, Tensor]] = []
        self._param_norms: list[tuple[str | None, int, Tensor]] = []
        self._checks: list[_Check] = []
        self._snapshot: dict[str, list[Tensor]] | None = None
        self._snapshot_step = -1
        self._notes: list[str] = []
        for name, module in model.named_modules():
            if "parametrizations" in name.split("."):
                continue
            kind = layer_kind(module)
            if kind is None:
                continue
            name = name or type(module).__name__  # a bare layer used as the whole model
            self._kinds[module] = (name, kind)
            if kind == WEIGHT:
                params = [p for n, p in module.named_parameters() if not n.endswith("bias")]
                self._weight_params[name] = params
                for p in params:
                    self._param_layer[p] = name
        for p in model.parameters():
            self._param_layer.setdefault(p, None)

    # --- attach / detach --------------------------------------------------------------------------------------

    def attach(self) -> Probe:
        """Register the hooks (idempotent); returns ``self``."""
        if self._handles:
            return self
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook))
        for module in self._kinds:
            self._handles.append(module.register_forward_hook(self._forward_hook))
        for p in self._param_layer:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._param_hook))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._optimizer_pre_hook))
            self._handles.append(self.optimizer.register_step_post_hook(lambda *_: self.after_update()))
        return self

    def detach(self) -> None:
        """Remove every hook; the records stay."""
        self._flush()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # --- steps ------------------------------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """The index of the training step whose forward comes next; it is sampled if ``step % every == 0``."""
        if step != self.step:
            self._flush()
        self.step, self.sampling = step, step % self.every == 0

    def findings(self) -> Findings:
        """Everything recorded so far, as plain data."""
        self._flush()
        layers = [
            LayerInfo(name, kind, self._order[name], hist_range(kind))
            for name, kind in self._kinds.values()
            if name in self._order
        ]
        layers.sort(key=lambda info: info.index)
        return Findings(self._records, layers, self.every, self.steps_seen, self.first_nonfinite, list(self._notes))

    # --- per-step checks (trainer or optimizer hook) -----------------------------------------------------------

    @torch.no_grad()
    def after_backward(self, loss: Tensor | None = None) -> bool:
        """Record the loss and the global gradient norm of this step; True if a non-finite value appeared
        that the sampled hooks did not locate (then call :meth:`locate` before the optimizer step)."""
        grads = [p.grad for p in self._param_layer if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        values = [total.float()] + ([loss.detach().float().reshape(())] if loss is not None else [])
        numbers = torch.stack([v.to(values[0].device) for v in values]).tolist()
        self._records.add(GLOBAL_GRAD_NORM, MODEL, self.step, numbers[0])
        if loss is not None:
            self._records.add(LOSS, MODEL, self.step, numbers[1])
        if self.first_nonfinite is not None or all(math.isfinite(v) for v in numbers):
            return False
        if math.isfinite(numbers[-1]) and all(bool(torch.isfinite(g).all()) for g in grads):
            return False  # huge but finite gradients whose norm overflowed
        if self.sampling:
            self._flush()
            if self.first_nonfinite is not None:
                return False
        return True

    def before_update(self) -> None:
        """Snapshot the weights of every Linear/Conv layer before the optimizer step (sampled steps only)."""
        if not self.sampling or self._locating or self._snapshot_step == self.step:
            return
        with torch.no_grad():
            self._snapshot = {name: [p.detach().clone() for p in ps] for name, ps in self._weight_params.items()}
        self._snapshot_step = self.step

    @torch.no_grad()
    def after_update(self) -> None:
        """Record ‖ΔW‖/‖W‖ per layer across the step just taken (sampled steps only)."""
        if self._snapshot is None:
            return
        for name, before in self._snapshot.items():
            now = self._weight_params[name]
            if not before:
                continue
            delta = torch.stack([torch.linalg.vector_norm(p - b) for p, b in zip(now, before, strict=True)])
            size = torch.stack([torch.linalg.vector_norm(b) for b in before])
            ratio = torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(size)
            self._scalars.append((UPDATE_RATIO, name, self._snapshot_step, ratio))
        self._snapshot = None
        self._flush()

    def locate(
        self,
        inputs: Tensor,
        targets: Tensor | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> NonFinite | None:
        """Find where this step's first non-finite value comes from: re-run its forward (and, with ``loss_fn``,
        its backward) with every check on, before the optimizer step.

        Weights are checked first; buffers (BatchNorm statistics) and the random state are restored and
        ``.grad`` is left untouched. Dropout draws new masks, so a value that only its old mask produced is
        not found again; then the step is still named, without a layer.
        """
        self._flush()
        if self.first_nonfinite is not None:
            return self.first_nonfinite
        for name in sorted(self._weight_params, key=lambda n: self._order.get(n, 0)):
            if any(not bool(torch.isfinite(p).all()) for p in self._weight_params[name]):
                self.first_nonfinite = NonFinite(self.step, name, WHERE_WEIGHTS, f"weights of {name} are nan or inf")
                return self.first_nonfinite
        saved = [(b, b.detach().clone()) for b in self.model.buffers()]
        devices = [inputs.device.index or 0] if inputs.is_cuda else []
        self._locating = True
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                out = self.model(inputs)
                if loss_fn is not None and targets is not None:
                    loss = loss_fn(out, targets)
                    self._check(None, WHERE_LOSS, "the loss", loss.detach().abs().amax())
                    params = [p for p in self._param_layer if p.requires_grad]
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    by_layer = {p: g for p, g in zip(params, grads, strict=True) if g is not None}
                    for name in sorted(self._weight_params, key=lambda n: -self._order.get(n, 0)):
                        gs = [by_layer[p] for p in self._weight_params[name] if p in by_layer]
                        if gs:
                            peak = torch.stack([g.detach().abs().amax() for g in gs]).amax()
                            self._check(name, WHERE_BACKWARD, f"weight gradient of {name}", peak)
        finally:
            self._locating = False
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)
        self._flush()
        if self.first_nonfinite is None:
            self._unlocated()
        return self.first_nonfinite

    def _unlocated(self) -> None:
        self.first_nonfinite = NonFinite(self.step, None, WHERE_LOSS, "the loss or a gradient is nan or inf")

    # --- hooks ------------------------------------------------------------------------------------------------

    def _optimizer_pre_hook(self, optimizer, args, kwargs) -> None:
        if self.after_backward(None):
            self._unlocated()
        self.before_update()

    def _root_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not module.training:
            self._active = self._param_active = False
            return
        if self._locating:
            self._active, self._param_active = True, False
        else:
            if self.auto_step:
                self.set_step(self._next_auto)
                self._next_auto += 1
            else:
                self._flush()
            self.steps_seen = max(self.steps_seen, self.step + 1)
            self._active = self.sampling
            self._param_active = self.sampling and torch.is_grad_enabled()
        if not self._active:
            return
        self._calls = []
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if x is None:
            return
        x = x.detach()
        if not x.is_floating_point():
            return
        _, mean, norm, peak = scaled_stats(x.float())
        self._check(INPUT, WHERE_INPUT, "the model's input", peak)
        if not self._locating:
            self._scalars += [
                (INPUT_MEAN, INPUT, self.step, mean),
                (INPUT_RMS, INPUT, self.step, norm / math.sqrt(x.numel())),
                (INPUT_ABS_MAX, INPUT, self.step, peak),
            ]

    @torch.no_grad()
    def _forward_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._active or not isinstance(output, Tensor):
            return
        name, kind = self._kinds[module]
        step = self.step
        if name not in self._order:
            self._order[name] = len(self._order)
        self._calls.append(name)
        y = output.detach()
        if not y.is_floating_point() or not y.numel():
            return
        yf = y.float()
        if self._locating or kind == OTHER:
            self._check(name, WHERE_FORWARD, f"output of {name}", yf.abs().amax())
        else:
            std, mean, _, peak = scaled_stats(yf)
            self._check(name, WHERE_FORWARD, f"output of {name}", peak)
            self._scalars += [(ACT_MEAN, name, step, mean), (ACT_STD, name, step, std)]
            if kind == RELU and y.dim() >= 2:
                self._scalars.append((DEAD_FRACTION, name, step, dead_fraction(y)))
            if kind in ACTIVATIONS:
                sample = strided_sample(yf)
                if kind in (SIGMOID, TANH):
                    self._scalars.append((SATURATED_FRACTION, name, step, saturated_fraction(sample, kind)))
                lo, hi = hist_range(kind)
                counts = torch.histc(sample.clamp(lo, hi), bins=self.bins, min=lo, max=hi)
                self._hists.append((name, step, counts / sample.numel()))
        if output.requires_grad and (self._locating or (self.sampling and kind != OTHER)):
            output.register_hook(partial(self._grad_hook, name, step, self._calls))

    @torch.no_grad()
    def _grad_hook(self, name: str, step: int, calls: list[str], grad: Tensor) -> None:
        if not grad.numel():
            return
        std, _, _, peak = scaled_stats(grad.detach().float())
        self._check(name, WHERE_BACKWARD, f"gradient at the output of {name}", peak, step=step, calls=calls)
        if not self._locating:
            self._scalars.append((GRAD_STD, name, step, std))

    @torch.no_grad()
    def _param_hook(self, p: nn.Parameter) -> None:
        if self._param_active and p.grad is not None:
            layer = self._param_layer[p]
            norm, peak = scaled_norm(p.grad.detach().float())
            self._param_norms.append((layer, self.step, norm))
            if layer is not None:
                self._check(layer, WHERE_BACKWARD, f"weight gradient of {layer}", peak)

    def _check(
        self, layer: str | None, where: str, detail: str, peak: Tensor, *, step: int | None = None, calls=()
    ) -> None:
        """Queue a finiteness test: ``peak`` is max |x| of the tensor tested."""
        if self.first_nonfinite is None:
            step = self.step if step is None else step
            self._checks.append(_Check(step, layer, where, detail, peak.reshape(()), calls))

    # --- turning pending tensors into numbers (one sync) ----------------------------------------------------

    @torch.no_grad()
    def _flush(self) -> None:
        if self._scalars:
            device = self._scalars[0][3].device
            values = torch.stack([t.reshape(()).float().to(device) for *_, t in self._scalars])
            for (metric, layer, step, _), v in zip(self._scalars, values.tolist(), strict=True):
                self._records.add(metric, layer, step, v)
            self._scalars = []
        if self._hists:
            for (layer, step, _), counts in zip(
                self._hists, torch.stack([h for *_, h in self._hists]).tolist(), strict=True
            ):
                self._records.add(ACT_HIST, layer, step, counts)
            self._hists = []
        if self._param_norms:
            norms = torch.stack([t.to(self._param_norms[0][2].device) for *_, t in self._param_norms]).tolist()
            per_layer: dict[tuple[str | None, int], float] = {}
            for (layer, step, _), n in zip(self._param_norms, norms, strict=True):
                per_layer[(layer, step)] = per_layer.get((layer, step), 0.0) + n * n
                per_layer[(MODEL, step)] = per_layer.get((MODEL, step), 0.0) + n * n
            for (layer, step), sq in per_layer.items():
                if layer is None:
                    continue
                if layer == MODEL:
                    if self._records.get(GLOBAL_GRAD_NORM, MODEL, step) is None:
                        self._records.add(GLOBAL_GRAD_NORM, MODEL, step, math.sqrt(sq))
                else:
                    self._records.add(WEIGHT_GRAD_NORM, layer, step, math.sqrt(sq))
            self._param_norms = []
        if self._checks:
            if self.first_nonfinite is None:
                device = self._checks[0].peak.device
                ok = torch.isfinite(torch.stack([c.peak.to(device) for c in self._checks])).tolist()
                bad = next((c for c, good in zip(self._checks, ok, strict=True) if not good), None)
                if bad is not None:
                    self.first_nonfinite = _nonfinite(bad)
            self._checks = []


def _nonfinite(check: _Check) -> NonFinite:
    """A failed check → :class:`NonFinite`. A gradient first bad at the output of layer X was produced by the
    backward of what consumed X's output: the next layer called (the loss when X was the last)."""
    step, layer, where, detail, calls = check.step, check.layer, check.where, check.detail, check.calls
    if where == WHERE_BACKWARD and detail.startswith("gradient at the output"):
        after = calls[len(calls) - calls[::-1].index(layer) :] if layer in calls else []
        culprit = after[0] if after else None
        source = f"the backward of {culprit}" if culprit else "the loss's backward"
        return NonFinite(step, culprit, where, f"{detail} is nan or inf (produced by {source})")
    if where == WHERE_INPUT:
        return NonFinite(step, None, where, "the model's input is nan or inf")
    return NonFinite(step, layer, where, f"{detail} is nan or inf")


#: The epoch's history numbers that :class:`ProbeCallback` copies into the records (layer ``(model)``, at the epoch's
#: last step): the overfitting check reads the validation loss against the training loss.
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC)


class ProbeCallback(Callback):
    """Run a :class:`Probe` inside :func:`tricklab.train.fit`: sampled stats every ``every`` steps, plus the
    loss and global gradient norm of every step, and the exact layer and step of the first non-finite value.

    Events: ``on_fit_start`` attaches the probe; ``on_epoch_start`` and ``on_step_end`` tell it the next
    step; ``on_after_backward`` records the loss and ‖g‖ (before clipping: ``order = ORDER_PROBE`` (-100) runs
    it before L1 and clipping), locates a new non-finite value by re-running the step (:meth:`Probe.locate`) and
    snapshots the weights; ``on_step_end`` records the update ratio; ``on_epoch_end`` copies the epoch's
    ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (:data:`EPOCH_METRICS`) into the records; ``on_fit_end``
    removes the hooks.
    ``state.epoch_extras`` gets ``nonfinite_step`` once a non-finite value has been seen. With
    ``stop_on_nonfinite``, training stops there, without applying that step.

    When ``fit()`` raises instead (its own non-finite guard stops before ``on_after_backward``), call
    :meth:`after_failure` with the state to locate the value and remove the hooks.

    Example::

        cb = ProbeCallback(every=10)
        fit(model, data, callbacks=[cb])
        print(diagnose(cb.findings()))
    """

    order = ORDER_PROBE

    def __init__(
        self,
        every: int = 10,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        stop_on_nonfinite: bool = False,
    ):
        check_every(every)
        self.every, self.loss_fn, self.stop_on_nonfinite = every, loss_fn, stop_on_nonfinite
        self.probe: Probe | None = None
        self._label_counts: Tensor | None = None  # class counts of the training labels (cross-entropy only)
        self._batches = 0  # batches seen, of which every ``every``-th has its labels counted

    def on_fit_start(self, state: FitState) -> None:
        self.probe = Probe(state.model, self.every, auto_step=False).attach()
        self.probe.set_step(state.step)

    def on_epoch_start(self, state: FitState) -> None:
        self.probe.set_step(state.step)

    def on_after_backward(self, state: FitState) -> None:
        self._check(state)
        self.probe.before_update()

    def on_step_end(self, state: FitState) -> None:
        self.probe.after_update()
        self.probe.set_step(state.step)
        self._count_labels(state.targets)

    def on_epoch_end(self, state: FitState) -> None:
        last = max(state.step - 1, 0)  # the epoch's last step, as Doctor.observe() records per-epoch numbers
        records = self.probe._records
        for metric in EPOCH_METRICS:
            value = state.metrics.get(metric)
            if isinstance(value, int | float):
                records.add(metric, MODEL, last, float(value))
        if self.probe.first_nonfinite is not None:
            state.epoch_extras[NONFINITE_STEP] = self.probe.first_nonfinite.step

    def on_fit_end(self, state: FitState) -> None:
        self.probe.detach()

    def after_failure(self, state: FitState) -> None:
        """After ``fit()`` raised mid-step: check (and locate) that step's loss and gradients, remove the hooks."""
        if self.probe is None:
            return
        if state.loss is not None and self.probe.step == state.step:
            self._check(state)
        self.probe.detach()

    def _check(self, state: FitState) -> None:
        p = self.probe
        if p.after_backward(state.loss) and state.inputs is not None:
            p.locate(state.inputs, state.targets, self.loss_fn)
        if self.stop_on_nonfinite and p.first_nonfinite is not None and not state.stop:
            state.stop, state.skip_step = True, True
            state.stop_reason = f"non-finite value at {p.first_nonfinite}"

    def findings(self) -> Findings:
        if self.probe is None:
            raise RuntimeError("ProbeCallback.findings() before fit() ran")
        found = self.probe.findings()
        prior = label_prior_loss(self._label_counts)
        if prior is not None:
            found.records.add(PRIOR_LOSS, MODEL, max(found.steps - 1, 0), prior)
        return found

    def _count_labels(self, targets: Tensor | None) -> None:
        """Add the class labels of every ``every``-th batch to the counts (a sample, as the other records are: the
        plug-in entropy is off by ≈ (C − 1)/2N nats, 0.002 for 10 classes and 20 batches of 128). Cross-entropy on
        integer labels only: the label prior is the loss of a net that learned nothing from its inputs for that
        loss."""
        self._batches += 1
        if (self._batches - 1) % self.every or self.loss_fn is not F.cross_entropy or targets is None:
            return
        if targets.dim() != 1 or targets.dtype not in (torch.int64, torch.int32) or targets.numel() == 0:
            return
        old = self._label_counts
        counts = torch.bincount(targets.detach(), minlength=0 if old is None else len(old))
        if old is not None and len(counts) > len(old):
            old = F.pad(old, (0, len(counts) - len(old)))
        self._label_counts = counts if old is None else old + counts


def label_prior_loss(counts: Tensor | None) -> float | None:
    """−Σ p_c ln p_c over the label frequencies p: the cross-entropy of predicting them for every input, the best
    a net can do without learning from its inputs (ln C for C balanced classes); None without labels.

        >>> round(label_prior_loss(torch.tensor([5, 5, 5, 5])), 4)   # ln 4
        1.3863
    """
    if counts is None or counts.sum() <= 0:
        return None
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum())
