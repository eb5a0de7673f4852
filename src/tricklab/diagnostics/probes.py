"""Probes: forward/backward hooks that record plain numbers per layer and step, sampled every k steps.

On a sampled step (``step % every == 0``, training mode only) a :class:`Probe` records, keyed by metric,
layer name (as in ``model.named_modules()``) and step, the metrics of :mod:`tricklab.diagnostics.records`
(activation mean/std, dead and saturated fractions, histograms, the backward signal, weight-gradient norms,
update ratios, input statistics; the loss and global ‖g‖ when given them), saturated fractions and histograms
on an evenly strided sample of at most ``SAMPLE_SIZE`` = 4096 outputs,
and the first non-finite value: which step, which layer, and where (input, forward, loss, backward, weights).
A gradient first non-finite at the output of layer X is attributed to the layer called after X, whose backward
produced it. Norms and stds are computed so that huge finite values do not overflow into false alarms, nor tiny
ones underflow (see :func:`scaled_stats`). The backward signal is recorded at Linear/Conv outputs; the update
ratio of a weight of over 65,536 elements is estimated on 16,384 of them (:data:`UPDATE_SAMPLE`).

Between sampled steps the per-layer hooks are not installed at all; what runs is one forward pre-hook on the
model and, with an optimizer or :class:`ProbeCallback`, the step's loss and global ‖g‖ kept on the device (in
``fit()`` the NaN/Inf guard's own gradient norms are reused) and read in batches of :data:`STEP_BATCH`, so that
a probed step costs little more than a plain one (``benchmarks/probe_overhead.py`` measures it; the figures are in
``benchmarks/README.md``). The metric names and record types live in :mod:`tricklab.diagnostics.records` (and can
be imported from here too); records are plain numbers (after fastai's ``ActivationStats``, which samples ``every``
k steps in the same way).

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
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tricklab.diagnostics.loop_bugs import LOOP_LABEL_POOLED
from tricklab.diagnostics.readout import read_floats
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
    WEIGHT_FAN_IN,
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
from tricklab.errors import ConfigError, TrickLabError
from tricklab.events import ORDER_PROBE, Callback, FitState, gradient_norms
from tricklab.metrics import NONFINITE_STEP, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS
from tricklab.tricks.init import INIT_LAYERS

if TYPE_CHECKING:
    from tricklab.diagnostics.loop_watch import LoopWatch

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
#: Every step's loss and gradient norm stay on the device and are read in batches of this many values (and at
#: every sampled step's end), so an unsampled step costs no host synchronisation.
STEP_BATCH = 256
#: The update ratio ‖ΔW‖/‖W‖ of a weight with more elements than this is estimated on this many of them, drawn once
#: at random (by a generator of the probe's own: training's random state is untouched) and the same before and after
#: each step: copying and differencing every weight on a sampled step cost ~25% of an MNIST MLP step; the estimate's
#: relative error is ~1/sqrt(16384) ≈ 1% for evenly spread updates (the rules compare ratios with thresholds ×3-×30
#: apart). Weights of up to 4× as many elements are measured whole (as cheap as drawing the sample).
UPDATE_SAMPLE = 16384


class _Check(NamedTuple):
    """A pending finiteness test, read at the next flush (one sync for all): ``peak`` = max |x| of the tensor
    tested (a 0-d tensor, or a float where it was read already), computed anyway for the statistics; it is NaN or
    inf exactly when some element is."""

    step: int
    layer: str | None
    where: str
    detail: str
    peak: Tensor | float
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


def _fraction(count: Tensor, total: int) -> Tensor | float:
    """count / total: a float on CPU (reading it costs no synchronisation), else a 0-d tensor read later."""
    return int(count) / total if count.device.type == "cpu" else count / total


def dead_fraction(y: Tensor) -> Tensor | float:
    """Fraction of units (dim 1: features or channels) that are 0 for every example and position."""
    peak = y.amax(dim=0 if y.dim() == 2 else [0, *range(2, y.dim())])  # a ReLU unit is dead iff its largest output is 0
    return 1.0 - _fraction(torch.count_nonzero(peak), peak.numel())


def saturated_fraction(y: Tensor, kind: str) -> Tensor | float:
    """tanh: fraction with |y| > 0.99; sigmoid: fraction with y < 0.01 or y > 0.99."""
    tail = y.abs() if kind == TANH else (y - 0.5).abs()
    level = SATURATION_LEVEL if kind == TANH else SATURATION_LEVEL - 0.5
    return _fraction(torch.count_nonzero(tail > level), y.numel())


def histogram(sample: Tensor, lo: float, hi: float, bins: int) -> Tensor:
    """Counts of ``sample`` in ``bins`` equal bins over [lo, hi]; values outside go to the edge bins, NaN to the
    lowest (for finite values ``torch.histc`` gives the same counts; ``benchmarks/micro.py`` times the two)."""
    idx = torch.nan_to_num(sample, nan=lo).sub_(lo).mul_(bins / (hi - lo)).clamp_(0, bins - 1).long()
    return torch.bincount(idx, minlength=bins)


#: Below this max |x| (and above 0) the squares of the elements lose precision in float32; above
#: ``sqrt(OVERFLOW / numel)`` their sum overflows: outside that range the statistics are taken on x / max|x|.
SMALLEST_PLAIN = 1e-12
OVERFLOW = 3e38
#: The one-pass variance E[x²] − mean² is used when it is at least this fraction of E[x²] (float32 sums are good to
#: ~1e-6 relative, so the variance keeps ~3 digits); below, the mean dominates and the two-pass formula is used.
ONE_PASS_MIN = 1e-3


def scaled_stats(y: Tensor, *, with_norm: bool = True, with_peak: bool = True) -> tuple[Any, Any, Any, Any]:
    """(std, mean, norm, peak) of ``y``: population std, mean, L2 norm (None unless ``with_norm``) and max |y|,
    without overflow or underflow. ``peak`` is NaN or inf exactly when some element is.

    ``with_peak=False`` (on CPU): the fourth value only has to be finite exactly when every element is, so when the
    sum and the norm come out finite and the norm is not tiny (nearly always) they are all that is computed (two
    passes, the norm standing in for the peak); otherwise the path below is taken.

    On CPU, where reading a number costs no synchronisation, they are Python floats, computed with as few passes
    as the values allow: max |y| first (one pass); when it is in the range where float32 sums of squares are exact
    (nearly always), the sum and the norm (two passes; a third when the mean dominates the variance, see
    :data:`ONE_PASS_MIN`). Otherwise, and always on an accelerator (as 0-d tensors, without reading them), they
    are taken on y / max|y|, so values up to float32's limit give finite results (a plain norm overflows beyond
    ~1e19) and tiny ones do not underflow to 0. (``torch.std_mean`` is slower on CPU: ``benchmarks/micro.py``.)
    """
    n = y.numel()
    if not with_peak and y.device.type == "cpu" and n:
        total, norm = float(y.sum()), float(torch.linalg.vector_norm(y))
        if SMALLEST_PLAIN <= norm < math.inf and math.isfinite(total):
            return *_plain_std_mean(y, total, norm), (norm if with_norm else None), norm
    lo, hi = torch.aminmax(y)
    if y.device.type == "cpu":
        a, b = float(lo), float(hi)
        peak = math.nan if math.isnan(a) or math.isnan(b) else max(-a, b)
        if not math.isfinite(peak):
            return math.nan, math.nan, (math.nan if with_norm else None), peak
        if peak == 0.0 or SMALLEST_PLAIN <= peak <= math.sqrt(OVERFLOW / n):
            norm = float(torch.linalg.vector_norm(y))
            return *_plain_std_mean(y, float(y.sum()), norm), (norm if with_norm else None), peak
        z = y / peak
        mean = float(z.sum()) / n
        std = float(torch.linalg.vector_norm(z - mean)) / math.sqrt(n)
        return std * peak, mean * peak, (float(torch.linalg.vector_norm(z)) * peak if with_norm else None), peak
    peak = torch.maximum(hi, -lo)
    z = y / peak.clamp_min(torch.finfo(y.dtype).tiny)
    mean = z.sum() / n
    std = torch.linalg.vector_norm(z - mean) / math.sqrt(n)
    return std * peak, mean * peak, (torch.linalg.vector_norm(z) * peak if with_norm else None), peak


def _plain_std_mean(y: Tensor, total: float, norm: float) -> tuple[float, float]:
    """(std, mean) of ``y`` from its float32 sum and norm, where their squares are exact: one pass, or a second
    when the mean dominates the variance (:data:`ONE_PASS_MIN`)."""
    n = y.numel()
    mean, square = total / n, norm * norm / n
    var = square - mean * mean
    if var < ONE_PASS_MIN * square:
        var = float(torch.linalg.vector_norm(y - mean)) ** 2 / n
    return math.sqrt(var), mean


def scaled_norm(g: Tensor) -> tuple[Tensor, Tensor]:
    """(‖g‖₂, max |g|) without overflow (see :func:`scaled_stats`), in fewer passes."""
    peak = g.abs().amax()
    return torch.linalg.vector_norm(g / peak.clamp_min(torch.finfo(g.dtype).tiny)) * peak, peak


def plain_norm_ok(norm: float) -> bool:
    """Whether a plain float32 ‖g‖ is trustworthy: finite (its squares did not overflow) and not so small that
    they may have underflowed (0 included: tiny gradients square to 0); one outside is recomputed with
    :func:`scaled_norm`."""
    return SMALLEST_PLAIN <= norm < math.inf


def strided_sample(y: Tensor, most: int = SAMPLE_SIZE) -> Tensor:
    """At most ``most`` evenly strided elements of ``y`` (all of them when it is smaller)."""
    flat = y.reshape(-1)
    return flat[:: max(1, flat.numel() // most)]


class Probe:
    """Hooks on every layer of ``model`` that record plain numbers every ``every`` training steps.

    Steps: without a driver, each forward pass in training mode is one step (0, 1, 2, ...); a trainer
    sets them with :meth:`set_step` instead (``auto_step=False``). With ``optimizer``, the update-to-weight
    ratio and the global gradient norm of every step come from the optimizer's step hooks.

    Cost on a non-sampled step: the model's forward pre-hook (per-layer hooks are installed for sampled steps
    only), plus, with an optimizer, the global gradient norm (one fused norm, kept on the device). Under
    :class:`ProbeCallback` in ``fit()``, nothing but the loss: the guard checks that step's gradients with its
    cheaper sums, and hands over its norms on sampled steps. Until something calls :meth:`after_backward`,
    per-parameter gradient hooks measure the weight-gradient norms; they are removed at its first call.

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
        self._param_handles: list[Any] = []  # per-parameter gradient hooks: only while nobody calls after_backward
        self._module_handles: list[Any] = []  # per-layer forward hooks: only from a sampled step's forward on
        self._driven = False  # after_backward has been called: the gradient norms come from there
        self._next_auto = 0
        self._active = self._param_active = self._locating = False
        self._calls: list[str] = []  # names called in this step's forward, in order
        self._scalars: list[tuple[str, str, int, Tensor]] = []
        self._hists: list[tuple[str, int, Tensor, int]] = []  # (layer, step, counts, sample size)
        self._param_norms: list[tuple[str | None, int, Tensor]] = []
        self._step_values: list[tuple[str, str, int, Tensor]] = []  # steps' loss and ‖g‖, read in batches
        self._checks: list[_Check] = []
        self._snapshot: list[Tensor] | None = None  # the weights (or their sampled elements) before the step
        self._update_idx: dict[Tensor, Tensor] = {}  # weight → the indices of its sampled elements (UPDATE_SAMPLE)
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
        if not self._driven:
            for p in self._param_layer:
                if p.requires_grad:
                    self._param_handles.append(p.register_post_accumulate_grad_hook(self._param_hook))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._optimizer_pre_hook))
            self._handles.append(self.optimizer.register_step_post_hook(lambda *_: self.after_update()))
        return self

    def detach(self) -> None:
        """Remove every hook; the records stay."""
        self._flush(everything=True)
        for h in self._handles + self._param_handles + self._module_handles:
            h.remove()
        self._handles.clear()
        self._param_handles.clear()
        self._module_handles.clear()

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # --- steps ------------------------------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """The index of the training step whose forward comes next; it is sampled if ``step % every == 0``."""
        if step != self.step and self.sampling:
            self._flush()
        self.step, self.sampling = step, step % self.every == 0

    def findings(self) -> Findings:
        """Everything recorded so far, as plain data."""
        self._flush(everything=True)
        for name, params in self._weight_params.items():
            if name in self._order and params and name not in self._records.layers(WEIGHT_FAN_IN):
                self._records.add(WEIGHT_FAN_IN, name, 0, params[0].numel() // max(params[0].shape[0], 1))
        layers = [
            LayerInfo(name, kind, self._order[name], hist_range(kind))
            for name, kind in self._kinds.values()
            if name in self._order
        ]
        layers.sort(key=lambda info: info.index)
        return Findings(self._records, layers, self.every, self.steps_seen, self.first_nonfinite, list(self._notes))

    # --- per-step checks (trainer or optimizer hook) -----------------------------------------------------------

    def after_backward(
        self,
        loss: Tensor | None = None,
        checked: tuple[list, list[Tensor], Tensor] | None = None,
        *,
        guarded: bool = False,
    ) -> bool:
        """Record this step's loss and global gradient norm (and, on a sampled step, each layer's weight-gradient
        norm); True if a non-finite value appeared that the sampled hooks did not locate (then call :meth:`locate`
        before the optimizer step).

        ``checked``: what :func:`~tricklab.events.gradient_norms` returns, when the caller computed it and found it
        finite, as the trainer's NaN/Inf guard does: nothing is computed again, and nothing is read on the host
        except on sampled steps. ``guarded``: the caller's guard found this step's loss and gradients finite
        without handing over norms (``fit()`` does so on unsampled steps, where the sums it checks cost half the
        norms): only the loss is recorded. Otherwise the norms are computed here (one fused pass) and checked on the
        host.
        """
        if not self._driven:  # the gradient norms come from here from now on: drop the per-parameter hooks
            self._driven = True
            for h in self._param_handles:
                h.remove()
            self._param_handles.clear()
        step = self.step
        if loss is not None:
            self._step_values.append((LOSS, MODEL, step, loss.detach()))
        if checked is None and guarded and not self.sampling:
            return False
        params, norms, total = gradient_norms(self._param_layer) if checked is None else checked
        self._step_values.append((GLOBAL_GRAD_NORM, MODEL, step, total))
        if self.sampling and self._param_active and norms:
            self._layer_grad_norms(params, norms, check=checked is None)
        if checked is not None or guarded or self.first_nonfinite is not None:
            return False
        ok = torch.isfinite(total if loss is None else total + loss.detach().float().reshape(()))
        if bool(ok):
            return False
        if (loss is None or bool(torch.isfinite(loss.detach()).all())) and all(
            bool(torch.isfinite(p.grad).all()) for p in params
        ):
            return False  # huge but finite gradients whose norm overflowed
        if self.sampling:
            self._flush()
            if self.first_nonfinite is not None:
                return False
        return True

    def _layer_grad_norms(self, params: list[Tensor], norms: list[Tensor], *, check: bool) -> None:
        """On a sampled step: each layer's weight-gradient norm from the per-parameter norms (one host read; a norm
        that may have overflowed or underflowed in float32 is recomputed on g / max|g|), and, unless the caller
        checked them, a finiteness check per layer."""
        values = torch.stack(norms).tolist()
        step = self.step
        per_layer: dict[str, float] = {}
        for p, v in zip(params, values, strict=True):
            if not plain_norm_ok(v) and p.grad is not None:
                v = float(scaled_norm(p.grad.detach().float())[0])
            layer = self._param_layer.get(p)
            if layer is not None:
                per_layer[layer] = per_layer.get(layer, 0.0) + v * v
        for layer in sorted(per_layer, key=lambda n: -self._order.get(n, 0)):  # backward order, as the hooks ran
            norm = math.sqrt(per_layer[layer])
            self._records.add(WEIGHT_GRAD_NORM, layer, step, norm)
            if check and not math.isfinite(norm):
                self._check(layer, WHERE_BACKWARD, f"weight gradient of {layer}", norm)

    def before_update(self) -> None:
        """Snapshot the weights of every Linear/Conv layer before the optimizer step (sampled steps only; of a weight
        larger than 4 × :data:`UPDATE_SAMPLE` elements, a fixed random sample of them)."""
        if not self.sampling or self._locating or self._snapshot_step == self.step:
            return
        with torch.no_grad():
            self._snapshot = [v if sampled else v.clone() for v, _, sampled in self._update_views()]
        self._snapshot_step = self.step

    def _update_views(self) -> list[tuple[Tensor, Tensor, bool]]:
        """(the elements measured, the weight, whether they are a sample: a copy, else a view of the weight) for every
        weight of every Linear/Conv layer, in layer order."""
        out = []
        for ps in self._weight_params.values():
            for p in ps:
                flat = p.detach().reshape(-1)
                idx = self._update_idx.get(p)
                if idx is None and flat.numel() > 4 * UPDATE_SAMPLE:
                    g = torch.Generator().manual_seed(flat.numel())
                    idx = torch.randint(flat.numel(), (UPDATE_SAMPLE,), generator=g).sort().values.to(flat.device)
                    self._update_idx[p] = idx
                elif idx is not None and idx.device != flat.device:  # the model moved after the draw
                    idx = self._update_idx[p] = idx.to(flat.device)
                out.append((flat, p, False) if idx is None else (flat.index_select(0, idx), p, True))
        return out

    def after_update(self) -> None:
        """Record ‖ΔW‖/‖W‖ per layer across the step just taken (sampled steps only)."""
        if self._snapshot is None:
            if len(self._step_values) >= STEP_BATCH:
                self._flush(everything=True)
            return
        with torch.no_grad():
            self._record_updates()
        self._snapshot = None
        self._flush(everything=True)

    def _record_updates(self) -> None:
        before, views = self._snapshot, self._update_views()
        sizes = list(torch._foreach_norm(before))
        torch._foreach_sub_(before, [v for v, _, _ in views])  # the snapshot becomes −ΔW
        read = read_floats(list(torch._foreach_norm(before)) + sizes)  # one host read, on a sampled step
        deltas, sizes = read[: len(views)], read[len(views) :]
        # a sampled weight's sums of squares are scaled up to its size (they estimate the whole weight's)
        scale = [p.numel() / v.numel() for v, p, _ in views]
        i = 0
        for name, ps in self._weight_params.items():
            if ps:
                j = i + len(ps)
                d = math.sqrt(sum(k * v * v for k, v in zip(scale[i:j], deltas[i:j], strict=True)))
                w = math.sqrt(sum(k * v * v for k, v in zip(scale[i:j], sizes[i:j], strict=True)))
                self._records.add(UPDATE_RATIO, name, self._snapshot_step, d / w if w else math.inf if d else math.nan)
                i = j

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
            elif self.sampling:
                self._flush()
            self.steps_seen = max(self.steps_seen, self.step + 1)
            self._active = self.sampling
            self._param_active = self.sampling and torch.is_grad_enabled()
        if not self._active:
            for h in self._module_handles:  # an unsampled step runs without per-layer hooks: nothing to call
                h.remove()
            self._module_handles.clear()
            return
        if not self._module_handles:  # read after each layer's forward, so they take effect in this one
            self._module_handles = [m.register_forward_hook(self._forward_hook) for m in self._kinds]
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

    def _forward_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._active and isinstance(output, Tensor):
            with torch.no_grad():
                self._record_output(module, output)

    def _record_output(self, module: nn.Module, output: Tensor) -> None:
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
            std, mean, _, witness = scaled_stats(yf, with_norm=False, with_peak=False)
            self._check(name, WHERE_FORWARD, f"output of {name}", witness)
            self._scalars += [(ACT_MEAN, name, step, mean), (ACT_STD, name, step, std)]
            if kind == RELU and y.dim() >= 2:
                self._scalars.append((DEAD_FRACTION, name, step, dead_fraction(y)))
            if kind in ACTIVATIONS:
                sample = strided_sample(yf)
                if kind in (SIGMOID, TANH):
                    self._scalars.append((SATURATED_FRACTION, name, step, saturated_fraction(sample, kind)))
                lo, hi = hist_range(kind)
                self._hists.append((name, step, histogram(sample, lo, hi, self.bins), sample.numel()))
        if output.requires_grad and (self._locating or (self.sampling and kind == WEIGHT)):
            output.register_hook(partial(self._grad_hook, name, step, self._calls))

    def _grad_hook(self, name: str, step: int, calls: list[str], grad: Tensor) -> None:
        if not grad.numel():
            return
        with torch.no_grad():
            std, _, _, witness = scaled_stats(grad.detach().float(), with_norm=False, with_peak=False)
        self._check(name, WHERE_BACKWARD, f"gradient at the output of {name}", witness, step=step, calls=calls)
        if not self._locating:
            self._scalars.append((GRAD_STD, name, step, std))

    def _param_hook(self, p: nn.Parameter) -> None:
        if self._param_active and p.grad is not None:
            layer = self._param_layer[p]
            with torch.no_grad():
                norm, peak = scaled_norm(p.grad.detach().float())
            self._param_norms.append((layer, self.step, norm))
            if layer is not None:
                self._check(layer, WHERE_BACKWARD, f"weight gradient of {layer}", peak)

    def _check(
        self, layer: str | None, where: str, detail: str, peak: Tensor, *, step: int | None = None, calls=()
    ) -> None:
        """Queue a finiteness test: ``peak`` is finite exactly when every element of the tensor tested is (its max
        |x|, or its norm when that did not overflow); a finite float needs no test."""
        if self.first_nonfinite is None and not (isinstance(peak, float) and math.isfinite(peak)):
            step = self.step if step is None else step
            self._checks.append(_Check(step, layer, where, detail, peak, calls))

    # --- turning pending tensors into numbers (one sync) ----------------------------------------------------

    def _flush(self, everything: bool = False) -> None:
        """Pending tensors → numbers in the records, with one host read per kind; every step's loss and ‖g‖ only
        with ``everything`` (a sampled step's end, ``findings()``, ``detach()``)."""
        if self._step_values and everything:
            self._scalars += self._step_values
            self._step_values = []
        if self._scalars:
            values = read_floats([t for *_, t in self._scalars])
            for (metric, layer, step, _), v in zip(self._scalars, values, strict=True):
                self._records.add(metric, layer, step, v)
            self._scalars = []
        if self._hists:
            read = torch.stack([h for _, _, h, _ in self._hists]).tolist()
            for (layer, step, _, n), counts in zip(self._hists, read, strict=True):
                self._records.add(ACT_HIST, layer, step, [c / n for c in counts])
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
                peaks = read_floats([c.peak for c in self._checks])
                bad = next((c for c, v in zip(self._checks, peaks, strict=True) if not math.isfinite(v)), None)
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
    """Run a :class:`Probe` inside :func:`tricklab.engine.fit`: sampled stats every ``every`` steps, plus the
    loss of every step, the global gradient norm of the sampled ones (fit()'s NaN/Inf guard checks the others), and
    the exact layer and step of the first non-finite value.

    Events: ``on_fit_start`` attaches the probe; ``on_epoch_start`` and ``on_step_end`` tell it the next step;
    ``on_after_backward`` records the loss and, on sampled steps, ‖g‖ (before clipping: ``order = ORDER_PROBE``
    (-100) runs it before L1 and clipping), locates a new non-finite value by re-running the step
    (:meth:`Probe.locate`) and snapshots the weights; ``on_step_end`` records the update ratio; ``on_epoch_end``
    copies the epoch's ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (:data:`EPOCH_METRICS`) into the
    records; ``on_fit_end`` removes the hooks.
    ``state.epoch_extras`` gets ``nonfinite_step`` once a non-finite value has been seen. With
    ``stop_on_nonfinite``, training stops there, without applying that step. ``guarded`` (the default): the loop
    checks every step's loss and gradients for NaN/Inf before ``on_after_backward``, as ``fit()``'s guard does, so
    the probe checks and records ‖g‖ on sampled steps only; False for a loop without such a check
    (:class:`tricklab.Doctor`), where the probe checks every step itself.

    When ``fit()`` raises instead (its own non-finite guard stops before ``on_after_backward``), call
    :meth:`after_failure` with the state to locate the value and remove the hooks.

    Example::

        cb = ProbeCallback(every=10)
        fit(model, data, callbacks=[cb])
        print(diagnose(cb.findings()))
    """

    order = ORDER_PROBE

    @property
    def wants_grad_norms(self) -> bool:
        """On sampled steps, fit()'s NaN/Inf guard checks the per-parameter gradient norms and hands them over
        (``state.grad_norms``); on the others it checks its cheaper sums and the probe records the loss alone."""
        return not self.guarded or (self.probe is not None and self.probe.sampling)

    def __init__(
        self,
        every: int = 10,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        stop_on_nonfinite: bool = False,
        guarded: bool = True,
    ):
        check_every(every)
        self.every, self.loss_fn, self.stop_on_nonfinite = every, loss_fn, stop_on_nonfinite
        self.guarded = guarded
        self.probe: Probe | None = None
        self.watch: LoopWatch | None = None  # the loop's invariants (tricklab.diagnostics.loop_watch)
        self._label_counts: Tensor | None = None  # class counts of the training labels (cross-entropy only)
        self._batches = 0  # batches seen, of which every ``every``-th has its labels counted

    def on_fit_start(self, state: FitState) -> None:
        from tricklab.diagnostics.loop_watch import LoopWatch

        self.probe = Probe(state.model, self.every, auto_step=False).attach()
        self.probe.set_step(state.step)
        probe = self.probe
        self.watch = LoopWatch(
            state.model, state.optimizer, probe._records, self.every, step=lambda: probe.step, own_loop=self.guarded
        ).attach()

    def on_epoch_start(self, state: FitState) -> None:
        self.probe.set_step(state.step)

    def on_after_backward(self, state: FitState) -> None:
        self._check(state, guarded=self.guarded)  # fit()'s guard let this step through: loss and gradients finite
        self.probe.before_update()
        self.watch.before_step()
        if state.loss is not None:
            self.watch.loss(state.loss)

    def on_step_end(self, state: FitState) -> None:
        self.probe.after_update()
        self.watch.after_step()
        self.probe.set_step(state.step)
        if state.targets is not None:
            self.count_labels(state.targets)

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
        self.watch.detach()
        self.probe.detach()

    def after_failure(self, state: FitState) -> None:
        """After ``fit()`` raised mid-step: check (and locate) that step's loss and gradients, remove the hooks."""
        if self.probe is None:
            return
        if state.loss is not None and self.probe.step == state.step:
            self._check(state)
        if self.watch is not None:
            self.watch.detach()
        self.probe.detach()

    def _check(self, state: FitState, guarded: bool = False) -> None:
        p = self.probe
        if p.after_backward(state.loss, state.grad_norms, guarded=guarded) and state.inputs is not None:
            p.locate(state.inputs, state.targets, self.loss_fn)
        if self.stop_on_nonfinite and p.first_nonfinite is not None and not state.stop:
            state.stop, state.skip_step = True, True
            state.stop_reason = f"non-finite value at {p.first_nonfinite}"

    def findings(self) -> Findings:
        if self.probe is None:
            raise RuntimeError("ProbeCallback.findings() before fit() ran")
        if self.watch is not None:
            self.watch.finish()
        found = self.probe.findings()
        prior = label_prior_loss(self._label_counts)
        if prior is not None:
            found.records.add(PRIOR_LOSS, MODEL, max(found.steps - 1, 0), prior)
            p = self._label_counts.double() / self._label_counts.sum()
            found.records.add(LOOP_LABEL_POOLED, MODEL, 0, float((p * p).sum()))
        return found

    def count_labels(self, targets: Tensor | None) -> None:
        """Add the class labels of every ``every``-th batch to the counts (a sample, as the other records are: the
        plug-in entropy is off by ≈ (C − 1)/2N nats, 0.002 for 10 classes and 20 batches of 128). Cross-entropy on
        integer labels only: the label prior is the loss of a net that learned nothing from its inputs for that
        loss."""
        self._batches += 1
        if (self._batches - 1) % self.every or self.loss_fn is not F.cross_entropy or targets is None:
            return
        if not is_class_labels(targets) or targets.numel() == 0:
            return
        targets = targets.detach().long()
        if int(targets.min()) < 0:
            raise TrickLabError(f"class labels must be >= 0; got {int(targets.min())} in a batch")
        if self.watch is not None:
            self.watch.labels(targets)
        old = self._label_counts
        counts = torch.bincount(targets, minlength=0 if old is None else len(old))
        if old is not None and len(counts) > len(old):
            old = F.pad(old, (0, len(counts) - len(old)))
        self._label_counts = counts if old is None else old + counts


def is_class_labels(t: object) -> bool:
    """A 1-D tensor of integers (not bool): a batch's class labels."""
    if not isinstance(t, Tensor) or t.dim() != 1:
        return False
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


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
