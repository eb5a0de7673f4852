"""Pre-flight: the checks practitioners run by hand before training, in seconds and without a training run.

``preflight(model, (x, y))`` runs, on copies of the model (the model, its parameters and gradients, the RNG
state and its train/eval mode are left as they were):

1. ``initial_loss``: the loss at initialization against ln C for C classes. Logits near 0 give every class
   probability 1/C, so cross-entropy starts at −ln(1/C) = ln C; a loss far above it means logits that are too
   large (a last layer scaled too large, unscaled inputs) or outputs that are not what the loss expects;
   labels outside 0…C−1 mean a last layer with the wrong number of outputs.
2. ``gradient_reach``: one backward pass; every parameter that requires grad must get a non-zero gradient. A
   tensor left with ``.grad`` None sits behind a cut in the graph (``.detach()``, ``.data``, ``torch.no_grad()``)
   or in a module ``forward`` never calls; the first layer behind the cut is named.
3. ``batch_independence``: in eval mode, the gradient of example i's output with respect to example j's input
   (j ≠ i) is zero. A ``view``/``reshape``/``transpose`` that mixes the batch dimension breaks it (Karpathy,
   "A Recipe for Training Neural Networks", 2019: "use backprop to chart dependencies"). Batch norm in eval
   mode uses its running statistics and passes.
4. ``outputs_are_logits``: outputs that are already probabilities (rows ≥ 0 summing to 1) given to a loss that
   expects logits (``cross_entropy`` applies ``log_softmax`` itself), or logits given to one that expects
   log-probabilities (``nll_loss``). What the loss expects is measured, not guessed from its name: a loss
   over logits does not change when a constant is added to every logit of a row.
5. ``overfit_one_batch``: Adam on a copy fits the batch (its first :data:`OVERFIT_EXAMPLES` examples) to
   near-zero loss within a step budget. A model that cannot memorize one batch will not learn the data set.

Each check is a function with a pure core that judges plain tensors and numbers (``judge_*``), so every
verdict is testable without a model. A failed check is one line: the cause, with its figures, and the fix
in PyTorch terms; a check that fails because an earlier one did (a softmax output cannot be fitted to zero
loss) says so in ``explained_by``. Checks that need classes (1, 4) are skipped with a note when the labels
are not integer class indices (regression).

Example::

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    result = tricklab.preflight(net, (torch.randn(32, 1, 40), torch.randint(0, 10, (32,))))
    result.ok, [c.status for c in result.checks]     # True, ['pass', 'pass', 'pass', 'pass', 'pass']
    print(result)                                    # one line per check
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tricklab.errors import TrickLabError

#: The checks, in the order they run.
CHECKS = ("initial_loss", "gradient_reach", "batch_independence", "outputs_are_logits", "overfit_one_batch")
PASS, FAIL, SKIP = "pass", "fail", "skip"

#: The initial loss fails when it exceeds ln C by more than this many nats, or by ln C if that is more. Logits
#: of std s at init add to ln C about 1.5 nats at s = 2 and 4.2 at s = 4 (10 classes, Gaussian logits), and
#: He-initialized last layers give s of 1 to 3: tricklab's own models at their default settings (mlp, cnn,
#: resnet, inception, with and without batch norm, on mnist, mnist1d and synthetic, 3 seeds) start 0.05 to 3.1
#: nats above ln C and train well, so only a grossly scaled output (a last layer ×10, raw 0–255 inputs) fails.
INITIAL_LOSS_FAIL = 4.0
#: Between this many nats above ln C and the failure, the check passes with a note (Karpathy's "init well":
#: a smaller last layer skips the first steps spent shrinking the logits); as far below, with a note too.
INITIAL_LOSS_NOTE = 1.0
#: Logits whose standard deviation at init exceeds this are named as the reason for a high initial loss.
LARGE_LOGIT_STD = 2.0
#: Inputs whose standard deviation exceeds this are named as unscaled (standardized inputs have std 1).
LARGE_INPUT_STD = 5.0
#: Rows whose sum (probabilities) or log-sum-exp (log-probabilities) is within this of 1 or 0.
ROW_TOLERANCE = 1e-4
#: A gradient across examples larger than this fraction of the example's own is a dependency (not rounding).
LEAK_TOLERANCE = 1e-6
#: The overfit check's target for a classification loss: this fraction of ln C (0.023 nats for 10 classes,
#: the true class at about 98% probability); for other losses this fraction of the loss at its first step.
OVERFIT_FRACTION = 0.01
#: Adam learning rates the overfit check tries, in order, until one fits the batch.
OVERFIT_LRS = (3e-3, 1e-2, 1e-3)
#: Steps per learning rate of the overfit check.
OVERFIT_STEPS = 200
#: Examples the overfit check fits: the batch's first ones (Karpathy 2019: "as little as two"); a few dozen keep
#: it fast on a large model and still need every layer to learn.
OVERFIT_EXAMPLES = 32
#: Examples whose gradients the batch-independence check charts (first, middle and last of the batch).
INDEPENDENCE_ROWS = 3

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CheckResult:
    """One check: ``status`` pass, fail or skip; ``text`` one line (for a failure: cause and fix); ``figures`` the
    evidence; ``explained_by`` the earlier failed check that causes this failure, if any."""

    name: str
    status: str
    text: str
    figures: dict[str, Any] = field(default_factory=dict)
    explained_by: str | None = None

    @property
    def ok(self) -> bool:
        """Not failed (a skipped check is not a failure)."""
        return self.status != FAIL

    def __str__(self) -> str:
        return f"{self.status.upper():4} {self.name}: {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "text": self.text,
            "figures": self.figures,
            "explained_by": self.explained_by,
        }


@dataclass
class PreflightResult:
    """Every check's result, in :data:`CHECKS` order; ``ok`` when none failed; ``str()`` one line per check."""

    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """The names of the failed checks."""
        return [c.name for c in self.checks if c.status == FAIL]

    @property
    def causes(self) -> list[str]:
        """The failed checks that no other failed check explains: what to fix first."""
        return [c.name for c in self.checks if c.status == FAIL and c.explained_by is None]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no pre-flight check {name!r}; checks: {', '.join(CHECKS)}")

    def __str__(self) -> str:
        passed = sum(c.status == PASS for c in self.checks)
        head = f"tricklab preflight: {passed} of {len(self.checks)} checks passed"
        if self.failed:
            head += f", {len(self.failed)} failed"
        if self.skipped:
            head += f", {len(self.skipped)} skipped"
        return "\n".join([head, *(f"  {c}" for c in self.checks)])

    @property
    def skipped(self) -> list[str]:
        return [c.name for c in self.checks if c.status == SKIP]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


# -- shared helpers ---------------------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def is_classification(out: torch.Tensor, y: torch.Tensor) -> bool:
    """Integer class labels for an output with classes along dim 1: ``(N, C)`` with ``(N,)`` labels, or
    ``(N, C, d…)`` with ``(N, d…)`` (segmentation)."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or out.dim() < 2:
        return False
    return tuple(y.shape) == (out.shape[0], *out.shape[2:])


def _copy(model: nn.Module) -> nn.Module:
    try:
        work = copy.deepcopy(model)
    except Exception as e:
        raise TrickLabError(
            f"model: copy.deepcopy raised {type(e).__name__}: {e}; preflight runs on copies so that the model is "
            "left as it was, so it needs a model that can be deep-copied"
        ) from None
    for p in work.parameters():
        p.grad = None
    return work


def _scalar_loss(loss_fn: LossFn, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    try:
        loss = loss_fn(out, y)
    except Exception as e:
        raise TrickLabError(
            f"loss_fn: raised {type(e).__name__} on outputs {tuple(out.shape)} and labels {tuple(y.shape)} "
            f"{str(y.dtype).removeprefix('torch.')}: {e}"
        ) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TrickLabError(f"loss_fn: returned {got}; expected a scalar loss tensor (reduction='mean' or 'sum')")
    return loss.reshape(())


def _forward_order(model: nn.Module, run: Callable[[], Any]) -> tuple[list[str], Any]:
    """Run ``run()`` and return the names of the modules holding parameters, in the order ``forward`` first
    called them, and what ``run`` returned."""
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):

            def hook(_m, _inp, _out, name=name):
                if name not in order:
                    order.append(name)

            handles.append(m.register_forward_hook(hook))
    try:
        value = run()
    finally:
        for h in handles:
            h.remove()
    return order, value


def _owner(param_name: str) -> str:
    return param_name.rpartition(".")[0]


# -- 1. the loss at initialization ------------------------------------------------------------------------------


def judge_initial_loss(
    loss: float | None,
    num_outputs: int,
    label_range: tuple[int, int],
    *,
    num_classes: int | None = None,
    logit_std: float = 0.0,
    input_std: float | None = None,
    last_layer: str | None = None,
) -> CheckResult:
    """The loss at init against ln C (C = ``num_outputs``, the output's width along dim 1). Fails, naming the
    likely cause: labels outside 0…C−1 (``loss`` is then None: cross-entropy cannot be computed), a
    ``num_classes`` other than the model's outputs, or a loss more than ``max(4, ln C)`` nats above ln C
    (:data:`INITIAL_LOSS_FAIL`) — logits too large (``logit_std``: the last layer ``last_layer`` scaled too large
    or inputs of std ``input_std`` not standardized) or outputs that are not the logits the loss expects. A loss
    more than 1 nat above or below ln C passes with a note (logits a little large; a trained model, or labels
    that can be read off the inputs)."""
    name = "initial_loss"
    lo, hi = label_range
    figures: dict[str, Any] = {"num_outputs": num_outputs, "label_min": lo, "label_max": hi}
    if lo < 0 or hi >= num_outputs:
        return CheckResult(
            name,
            FAIL,
            f"labels run {lo}…{hi} but the model has {num_outputs} outputs (classes 0…{num_outputs - 1}): give "
            f"the last layer one output per class (`nn.Linear(in_features, {max(hi + 1, num_outputs)})`), or map "
            "the labels to 0…C−1",
            figures,
        )
    if num_classes is not None and num_classes != num_outputs:
        figures["num_classes"] = num_classes
        return CheckResult(
            name,
            FAIL,
            f"the model has {num_outputs} outputs but the data has {num_classes} classes: give the last layer "
            f"{num_classes} outputs (`nn.Linear(in_features, {num_classes})`)",
            figures,
        )
    expected = math.log(num_outputs)
    figures.update(loss=loss, expected=expected, logit_std=logit_std, input_std=input_std)
    where = f"loss at init {_fmt(loss)}, ln C = ln {num_outputs} = {_fmt(expected)}"
    if loss is None or not math.isfinite(loss):
        return CheckResult(
            name,
            FAIL,
            f"{where}: the loss is not finite before any training: look for a log of 0, a division by zero, or "
            "NaN/Inf in the inputs",
            figures,
        )
    tolerance = max(INITIAL_LOSS_FAIL, expected)
    if loss < 0:
        return CheckResult(
            name,
            FAIL,
            f"{where}: a negative classification loss: the loss is given outputs it does not expect (probabilities "
            "or logits to `nll_loss`, which wants log-probabilities): see outputs_are_logits",
            figures,
        )
    if loss > expected + tolerance:
        if logit_std > LARGE_LOGIT_STD:
            layer = f"`{last_layer}`" if last_layer else "the last layer"
            fix = (
                f"initialize {layer} small (`nn.init.zeros_(m.weight)` or `m.weight.data.mul_(0.01)` on it) so that "
                "the logits start near 0"
            )
            cause = f"the logits have std {_fmt(logit_std)} at init (near 0 makes the loss start at ln C): {layer}"
            cause += " is scaled too large"
            if input_std is not None and input_std > LARGE_INPUT_STD:
                cause += f", or the inputs (std {_fmt(input_std)}) are not standardized"
                fix += ", and standardize the inputs: `x = (x - mean) / std` with the training set's statistics"
            return CheckResult(name, FAIL, f"{where}: {cause}; {fix}", figures)
        return CheckResult(
            name,
            FAIL,
            f"{where}, more than {_fmt(tolerance)} above: the outputs are not the logits the loss expects, or the "
            "loss is not cross-entropy over these classes; return raw logits from forward (no softmax, no ReLU "
            "or sigmoid on the last layer) and pass them to `F.cross_entropy`",
            figures,
        )
    if loss > expected + INITIAL_LOSS_NOTE:
        return CheckResult(
            name,
            PASS,
            f"{where}: a little high (logits of std {_fmt(logit_std)}); a smaller last layer (zero init) starts at "
            "ln C and saves the first steps spent shrinking the logits",
            figures,
        )
    if loss < expected - INITIAL_LOSS_NOTE:
        return CheckResult(
            name,
            PASS,
            f"{where}: well below chance before training (a trained model, or labels readable from the inputs)",
            figures,
        )
    return CheckResult(name, PASS, f"{where}", figures)


def check_initial_loss(
    out: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    x: torch.Tensor | None = None,
    num_classes: int | None = None,
    last_layer: str | None = None,
) -> CheckResult:
    """:func:`judge_initial_loss` of the output ``out`` of a forward pass at init on labels ``y``."""
    if not is_classification(out, y):
        return _not_classification("initial_loss", out, y)
    lo, hi = int(y.min()), int(y.max())
    c = out.shape[1]
    loss = None
    if 0 <= lo and hi < c and (num_classes is None or num_classes == c):
        with torch.no_grad():
            loss = float(_scalar_loss(loss_fn, out.detach(), y))
    input_std = float(x.float().std()) if x is not None and x.numel() > 1 else None
    logit_std = float(out.detach().float().std()) if out.numel() > 1 else 0.0
    return judge_initial_loss(
        loss,
        c,
        (lo, hi),
        num_classes=num_classes,
        logit_std=logit_std,
        input_std=input_std,
        last_layer=last_layer,
    )


def _not_classification(name: str, out: torch.Tensor, y: torch.Tensor) -> CheckResult:
    return CheckResult(
        name,
        SKIP,
        f"needs integer class labels for an output (N, C, …); got labels {str(y.dtype).removeprefix('torch.')} "
        f"{tuple(y.shape)} for an output {tuple(out.shape)} (regression?)",
    )


# -- 2. every parameter reached by a gradient --------------------------------------------------------------------


def judge_gradient_reach(
    grads: dict[str, torch.Tensor | None],
    forward_order: Sequence[str],
    *,
    frozen: Sequence[str] = (),
    sizes: dict[str, int] | None = None,
) -> CheckResult:
    """Every trainable parameter (``grads``: name → its gradient after one backward, None if none reached it)
    must get a gradient that is not all zero. ``forward_order`` names the modules holding parameters in the
    order forward called them: a tensor of a module never called is unused; one of a called module with no
    gradient is behind a cut in the graph, and the last such module in forward order is the first layer
    behind the cut; an all-zero gradient is multiplied by 0 or masked. ``frozen`` (requires_grad False) are
    noted, not failed: freezing is usually meant."""
    name = "gradient_reach"
    called = set(forward_order)
    unused = [n for n, g in grads.items() if g is None and _owner(n) not in called]
    cut = [n for n, g in grads.items() if g is None and _owner(n) in called]
    zero = [n for n, g in grads.items() if g is not None and not bool(g.ne(0).any())]
    sizes = sizes or {}
    total = sum(sizes.get(n, 0) for n in grads) or 1
    figures: dict[str, Any] = {
        "tensors": len(grads),
        "unused": unused,
        "cut": cut,
        "zero": zero,
        "frozen": list(frozen),
    }
    bad = unused + cut + zero
    if not grads:
        return CheckResult(name, FAIL, "the model has no parameter that requires grad: nothing would train", figures)
    if not bad:
        note = f"; {_plural(len(frozen), 'frozen tensor')} (requires_grad=False): {_names(frozen)}" if frozen else ""
        return CheckResult(name, PASS, f"all {_plural(len(grads), 'trainable tensor')} get a gradient{note}", figures)
    share = 100 * sum(sizes.get(n, 0) for n in bad) / total
    figures["share_of_weights"] = share
    parts = []
    if cut:
        layers = [m for m in forward_order if any(_owner(n) == m for n in cut)]
        first = f"`{layers[-1]}`" if layers[-1] else "the model's own parameters"
        parts.append(
            f"no gradient reaches {_names(cut)}: the graph is cut after {first} (the first "
            "layer behind the cut) — a `.detach()`, `.data`, `torch.no_grad()` or a cast to int between it and the "
            "next layer, or an output of it that never reaches the loss; remove it so that the gradient flows back"
        )
    if unused:
        modules = sorted({_owner(n) for n in unused})
        parts.append(
            f"{_names(modules)} never called in forward, so {_names(unused)} get no gradient: call it in "
            "forward or delete it (or `requires_grad_(False)` if it is meant to stay fixed)"
        )
    if zero:
        parts.append(
            f"{_names(zero)} get an all-zero gradient: the layer's output is multiplied by 0, masked out, or fed "
            "to a ReLU dead on the whole batch; check forward"
        )
    head = f"{len(bad)} of {_plural(len(grads), 'trainable tensor')} ({share:.0f}% of the weights) would never train: "
    return CheckResult(name, FAIL, head + "; ".join(parts), figures)


def check_gradient_reach(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> CheckResult:
    """One forward and backward pass of ``model`` (changed: use a copy) in its current mode, then
    :func:`judge_gradient_reach`."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    order, loss = _forward_order(model, lambda: _scalar_loss(loss_fn, model(x), y))
    if params and loss.requires_grad:
        got = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    else:
        got = [None] * len(params)
    grads = {n: g for (n, _), g in zip(params, got, strict=True)}
    return judge_gradient_reach(grads, order, frozen=frozen, sizes={n: p.numel() for n, p in params})


# -- 3. batch independence --------------------------------------------------------------------------------------


def judge_batch_independence(rows: dict[int, torch.Tensor]) -> CheckResult:
    """``rows``: example i → the gradient of (a random projection of) example i's output with respect to the
    whole input batch (N, …). Every slice j ≠ i must be zero, up to :data:`LEAK_TOLERANCE` of slice i's size;
    a dependency is a view, reshape or transpose that mixes examples."""
    name = "batch_independence"
    mixed: dict[int, list[int]] = {}
    worst = 0.0
    n = 0
    for i, g in rows.items():
        per = g.detach().abs().reshape(len(g), -1).amax(1)
        n = len(g)
        own = float(per[i])
        others = per.clone()
        others[i] = 0
        leak = others > LEAK_TOLERANCE * own if own > 0 else others > 0
        if bool(leak.any()):
            mixed[i] = [int(j) for j in leak.nonzero().flatten()]
            worst = max(worst, float(others.max()) / own if own > 0 else math.inf)
    figures: dict[str, Any] = {
        "rows": sorted(rows),
        "pairs_checked": len(rows) * max(n - 1, 0),
        "mixed_pairs": sum(len(v) for v in mixed.values()),
        "worst_ratio": worst,
    }
    if not mixed:
        return CheckResult(
            name,
            PASS,
            f"each example's output depends on its own input only ({figures['pairs_checked']} pairs charted)",
            figures,
        )
    i, js = next(iter(mixed.items()))
    shown = ", ".join(str(j) for j in js[:4]) + (f" (+{len(js) - 4} more)" if len(js) > 4 else "")
    return CheckResult(
        name,
        FAIL,
        f"in eval mode example {i}'s output depends on the inputs of examples {shown} "
        f"({figures['mixed_pairs']} of {figures['pairs_checked']} pairs charted): a view/reshape/transpose mixes "
        "the batch dimension (e.g. `x.view(-1, n)` or `x.transpose(0, 1).reshape(batch, -1)`); keep dim 0 the "
        "batch: `x.flatten(1)` or `x.reshape(x.shape[0], -1)`, and `permute` only the other dims",
        figures,
    )


def check_batch_independence(model: nn.Module, x: torch.Tensor, *, rows: int = INDEPENDENCE_ROWS) -> CheckResult:
    """Chart, in eval mode, which inputs the outputs of ``rows`` examples (first, middle, last) depend on, then
    :func:`judge_batch_independence`. Skipped for integer inputs (token ids: no gradient) and batches of one.
    Puts ``model`` in eval mode: use a copy."""
    name = "batch_independence"
    if not x.is_floating_point():
        return CheckResult(
            name,
            SKIP,
            f"inputs are {str(x.dtype).removeprefix('torch.')} (token ids or indices?): no gradient with respect to "
            "them, so the dependencies cannot be charted",
        )
    if len(x) < 2:
        return CheckResult(name, SKIP, "a batch of one example has no other example to depend on")
    model.eval()
    xg = x.detach().clone().requires_grad_(True)
    out = model(xg)
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or len(out) != len(x):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return CheckResult(
            name, FAIL, f"the output {got} has no batch dimension of {len(x)}: forward must keep dim 0 the batch"
        )
    n = len(x)
    picks = sorted({0, n // 2, n - 1})[:rows]
    gen = torch.Generator().manual_seed(0)
    charted: dict[int, torch.Tensor] = {}
    for i in picks:
        weights = torch.randn(out[i].shape, generator=gen).to(out.device, out.dtype)
        (g,) = torch.autograd.grad((out[i] * weights).sum(), xg, retain_graph=True, allow_unused=True)
        if g is None:
            cut = f"no gradient from example {i}'s output reaches the inputs (a cut graph: see gradient_reach)"
            return CheckResult(name, SKIP, cut)
        charted[i] = g
    return judge_batch_independence(charted)


# -- 4. outputs that are already probabilities ------------------------------------------------------------------


def output_kind(out: torch.Tensor) -> str:
    """``"probabilities"`` (every entry ≥ 0 and every row, along dim 1, sums to 1), ``"log_probabilities"``
    (every entry ≤ 0 and every row log-sum-exps to 0) or ``"logits"``."""
    out = out.detach().double()
    if out.shape[1] < 2:
        return "logits"
    if bool((out >= 0).all()) and float((out.sum(1) - 1).abs().max()) <= ROW_TOLERANCE:
        return "probabilities"
    if bool((out <= ROW_TOLERANCE).all()) and float(out.logsumexp(1).abs().max()) <= ROW_TOLERANCE:
        return "log_probabilities"
    return "logits"


def loss_expects_logits(loss_fn: LossFn, out: torch.Tensor, y: torch.Tensor) -> bool:
    """True when ``loss_fn`` is unchanged by adding a constant to every output of a row, as cross-entropy (it
    applies ``log_softmax`` itself) is; False for a loss that reads its input as log-probabilities
    (``nll_loss``: −output[y])."""
    with torch.no_grad():
        a = float(_scalar_loss(loss_fn, out.detach(), y))
        b = float(_scalar_loss(loss_fn, out.detach() + 1.0, y))
    return abs(a - b) <= 1e-4 * (1 + abs(a))


def judge_outputs(kind: str, expects_logits: bool, figures: dict[str, Any] | None = None) -> CheckResult:
    """What the model returns (:func:`output_kind`) against what the loss expects (:func:`loss_expects_logits`):
    probabilities fail with either loss; log-probabilities pass with either (``cross_entropy`` of
    log-probabilities equals that of the logits they came from); logits fail with a log-probability loss."""
    name = "outputs_are_logits"
    figures = {"kind": kind, "loss_expects": "logits" if expects_logits else "log_probabilities", **(figures or {})}
    if kind == "probabilities":
        if expects_logits:
            fix = (
                "the loss applies log_softmax itself, so softmax twice flattens the gradients; remove the final "
                "`nn.Softmax`/`.softmax()` from forward, pass the logits to `F.cross_entropy`, and apply softmax "
                "only where you need probabilities"
            )
        else:
            fix = (
                "`nll_loss` expects log-probabilities; use `F.log_softmax(z, dim=1)` instead of softmax in forward "
                "(or return the logits and use `F.cross_entropy`)"
            )
        return CheckResult(name, FAIL, f"outputs are probabilities (rows ≥ 0 summing to 1): {fix}", figures)
    if kind == "log_probabilities":
        note = (
            "as the loss expects"
            if not expects_logits
            else "harmless with cross_entropy (log_softmax leaves log-probabilities unchanged); the usual pair is "
            "`log_softmax` + `nll_loss`"
        )
        return CheckResult(name, PASS, f"outputs are log-probabilities (rows log-sum-exp to 0), {note}", figures)
    if not expects_logits:
        return CheckResult(
            name,
            FAIL,
            "outputs are raw logits but the loss reads them as log-probabilities (`nll_loss` takes −output[y] "
            "as is): end forward with `F.log_softmax(z, dim=1)`, or use `F.cross_entropy` on the logits",
            figures,
        )
    return CheckResult(name, PASS, "outputs are logits, as the loss expects", figures)


def check_outputs(out: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> CheckResult:
    """:func:`judge_outputs` of a model's output ``out`` on labels ``y``; skipped for other than class labels."""
    if not is_classification(out, y):
        return _not_classification("outputs_are_logits", out, y)
    c = out.shape[1]
    in_range = int(y.min()) >= 0 and int(y.max()) < c
    kind = output_kind(out)
    d = out.detach().double()
    figures = {
        "min": float(d.min()),
        "max": float(d.max()),
        "row_sum_range": [float(d.sum(1).min()), float(d.sum(1).max())],
        "row_logsumexp_range": [float(d.logsumexp(1).min()), float(d.logsumexp(1).max())],
    }
    # labels out of range make any classification loss fail: initial_loss reports them; assume logits here
    expects = loss_expects_logits(loss_fn, out, y) if in_range else True
    return judge_outputs(kind, expects, figures)


# -- 5. one batch overfit ---------------------------------------------------------------------------------------


def judge_overfit(
    losses: dict[float, list[float]],
    target: float,
    *,
    fitted_at: tuple[float, int] | None = None,
    batch: int = 0,
    negative: bool = False,
) -> CheckResult:
    """``losses``: Adam learning rate → the loss at each step tried; ``fitted_at``: the (lr, step) at which the
    loss first reached ``target``, None if it never did; ``negative``: a classification loss went below 0, so it
    has no floor to fit to and reaching the target means nothing."""
    name = "overfit_one_batch"
    best = min((v for vs in losses.values() for v in vs if math.isfinite(v)), default=math.nan)
    first = next(iter(losses.values()), [math.nan])[0]
    figures: dict[str, Any] = {"target": target, "initial": first, "best": best, "lrs": list(losses), "batch": batch}
    if negative:
        lr, trace = next((lr, t) for lr, t in losses.items() if t and t[-1] < 0)
        figures.update(lr=lr, step=len(trace) - 1, reached=trace[-1])
        return CheckResult(
            name,
            FAIL,
            f"the classification loss went negative ({_fmt(trace[-1])} at step {len(trace) - 1}, Adam lr {lr:g}): it "
            "has no floor for these outputs, so training would push the outputs without bound; give the loss the "
            "outputs it expects (see outputs_are_logits)",
            figures,
        )
    if fitted_at is not None:
        lr, step = fitted_at
        figures.update(lr=lr, step=step, reached=losses[lr][step])
        return CheckResult(
            name,
            PASS,
            f"one batch of {batch} fitted: loss {_fmt(first)} → {_fmt(losses[lr][step])} (≤ {_fmt(target)}) at step "
            f"{step} with Adam lr {lr:g}",
            figures,
        )
    steps = max((len(v) for v in losses.values()), default=0)
    lrs = ", ".join(f"{lr:g}" for lr in losses)
    return CheckResult(
        name,
        FAIL,
        f"one batch of {batch} not fitted: loss {_fmt(first)} → best {_fmt(best)} (target ≤ {_fmt(target)}) in "
        f"{steps} steps at each Adam lr {lrs}: a model that cannot memorize one batch will not learn the data; "
        "look for outputs that are not logits, a cut graph, a model too small or too deep to train, or labels "
        "that do not match the inputs",
        figures,
    )


def check_overfit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    steps: int = OVERFIT_STEPS,
    lrs: Sequence[float] = OVERFIT_LRS,
    target: float | None = None,
) -> CheckResult:
    """Train a fresh copy of ``model`` (left unchanged) with Adam on the batch ``(x, y)`` for up to ``steps``
    steps at each learning rate of ``lrs`` in turn, until the loss reaches ``target`` (default:
    :data:`OVERFIT_FRACTION` of ln C for class labels, of the first step's loss otherwise). Dropout is off (it
    is noise the check does not measure); batch norm trains as usual."""
    name = "overfit_one_batch"
    if not any(p.requires_grad for p in model.parameters()):
        return CheckResult(name, SKIP, "no parameter requires grad: nothing to train")
    losses: dict[float, list[float]] = {}
    fitted_at = None
    negative = False
    for lr in lrs:
        work = _copy(model)
        work.train()
        for m in work.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        opt = torch.optim.Adam([p for p in work.parameters() if p.requires_grad], lr=lr)
        trace: list[float] = []
        losses[lr] = trace
        for step in range(steps):
            out = work(x)
            loss = _scalar_loss(loss_fn, out, y)
            value = float(loss.detach())
            trace.append(value)
            classes = is_classification(out, y)
            if target is None:
                c = out.shape[1] if classes else 0
                target = OVERFIT_FRACTION * (math.log(c) if c > 1 else abs(value))
            if classes and value < 0:
                negative = True
                break
            if value <= target:
                fitted_at = (lr, step)
                break
            if not math.isfinite(value) or not loss.requires_grad:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if fitted_at is not None or negative:
            break
    target = target if target is not None else math.nan
    return judge_overfit(losses, target, fitted_at=fitted_at, batch=len(x), negative=negative)


# -- all of them ------------------------------------------------------------------------------------------------


def _batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
    elif isinstance(batch, Iterable) and not isinstance(batch, torch.Tensor):
        first = next(iter(batch), None)
        if not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise TrickLabError(
                f"batch: the first item of the {type(batch).__name__} is a {type(first).__name__}; expected (x, y)"
            )
        x, y = first
    else:
        raise TrickLabError(f"batch: got a {type(batch).__name__}; expected (x, y) tensors or a loader of them")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TrickLabError(f"batch: got ({type(x).__name__}, {type(y).__name__}); expected (x, y) tensors")
    if len(x) != len(y) or len(x) == 0:
        raise TrickLabError(f"batch: x has {len(x)} examples and y {len(y)}; expected the same number, at least 1")
    return x, y


def _explain(checks: list[CheckResult]) -> None:
    """Mark a failure that an earlier failure causes: a wrong output kind or a cut graph explain a loss at init
    off ln C and a batch that cannot be fitted; a badly scaled initial loss explains the latter."""
    by = {c.name: c for c in checks}
    causes = {
        "initial_loss": ("outputs_are_logits",),
        "overfit_one_batch": ("outputs_are_logits", "gradient_reach", "initial_loss"),
    }
    for name, candidates in causes.items():
        c = by.get(name)
        if c is None or c.status != FAIL:
            continue
        for cause in candidates:
            k = by.get(cause)
            if k is not None and k.status == FAIL and k.explained_by is None:
                c.explained_by = cause
                c.text += f" (explained by {cause}: fix that first)"
                break


def preflight(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    num_classes: int | None = None,
    steps: int = OVERFIT_STEPS,
    lrs: Sequence[float] = OVERFIT_LRS,
    overfit_target: float | None = None,
    overfit_examples: int = OVERFIT_EXAMPLES,
    seed: int = 0,
) -> PreflightResult:
    """Run the pre-flight checks (:data:`CHECKS`) of ``model`` on one ``batch`` and return a
    :class:`PreflightResult` (``ok``, ``checks``, ``failed``, ``str()`` one line per check).

    ``batch``: ``(x, y)`` tensors, or a loader whose first batch is used; they are moved to the model's device.
    ``loss_fn(output, y)`` defaults to ``F.cross_entropy``. ``num_classes``, when given, is checked against
    the model's outputs. ``steps``, ``lrs``: the overfit check's budget per Adam learning rate;
    ``overfit_target``: the loss it must reach (default 1% of ln C; set it for a loss whose floor is above 0,
    e.g. with label smoothing); ``overfit_examples``: how many of the batch's first examples it fits.
    Everything runs on copies under :func:`torch.random.fork_rng` seeded with ``seed``: the model's
    parameters, gradients, buffers and mode, and the global RNG state, are left as they were.
    """
    if not isinstance(model, nn.Module):
        raise TrickLabError(f"model: got a {type(model).__name__}; expected a torch.nn.Module")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise TrickLabError(f"steps = {steps!r}: the overfit check's step budget must be an integer ≥ 1")
    if not isinstance(overfit_examples, int) or isinstance(overfit_examples, bool) or overfit_examples < 1:
        raise TrickLabError(f"overfit_examples = {overfit_examples!r}: must be an integer ≥ 1")
    if not lrs or any(not (isinstance(lr, (int, float)) and lr > 0) for lr in lrs):
        raise TrickLabError(f"lrs = {list(lrs)!r}: Adam learning rates must be positive numbers, at least one")
    loss_fn = loss_fn or F.cross_entropy
    x, y = _batch(batch)
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    x = x.to(device)
    y = y.to(device)
    if x.dtype == torch.uint8:  # raw images, as the training loop feeds them
        x = x.float()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        work = _copy(model)
        work.train()
        try:
            with torch.no_grad():
                order, out = _forward_order(work, lambda: work(x))
        except Exception as e:
            raise TrickLabError(
                f"model: forward raised {type(e).__name__} on inputs {tuple(x.shape)} "
                f"{str(x.dtype).removeprefix('torch.')}: {e}"
            ) from None
        if not isinstance(out, torch.Tensor):
            raise TrickLabError(f"model: forward returned a {type(out).__name__}; preflight needs a tensor output")
        classes = is_classification(out, y)
        labels_ok = not classes or (int(y.min()) >= 0 and int(y.max()) < out.shape[1])
        checks = [check_initial_loss(out, y, loss_fn, x=x, num_classes=num_classes, last_layer=(order or [None])[-1])]
        if labels_ok:
            checks.append(check_gradient_reach(work, x, y, loss_fn))
        else:
            checks.append(_needs_loss("gradient_reach"))
        checks.append(check_batch_independence(work, x))
        checks.append(check_outputs(out, y, loss_fn))
        if labels_ok:
            k = overfit_examples
            checks.append(check_overfit(model, x[:k], y[:k], loss_fn, steps=steps, lrs=lrs, target=overfit_target))
        else:
            checks.append(_needs_loss("overfit_one_batch"))
    _explain(checks)
    return PreflightResult(checks)


def _needs_loss(name: str) -> CheckResult:
    return CheckResult(name, SKIP, "needs the loss, which labels outside the model's classes break: see initial_loss")
