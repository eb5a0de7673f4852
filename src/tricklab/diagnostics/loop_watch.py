"""The loop's invariants, recorded: hooks that read what :mod:`~tricklab.diagnostics.loop_bugs` judges.

A :class:`LoopWatch` runs inside :class:`~tricklab.diagnostics.probes.ProbeCallback` (so in ``fit()``, in
:class:`tricklab.Doctor` and in the Lightning callback alike) and writes plain numbers into the probe's records
(the ``loop_*`` metrics of :mod:`~tricklab.diagnostics.loop_bugs`). Its events: a forward pre-hook and a forward
hook on the model, the step's "after backward" (:meth:`before_step`) and its end (:meth:`after_step`), and the
batch's labels or targets when the loop gives them.

What it costs. Every step: a few Python flags (in a loop of your own, was the model in training mode; ``fit()``
needs no forward pre-hook), and, in a loop of your own, on the first forward of steps t and t+1 of each sampled step
a hash of the input (a strided sample of ≤ ``HASH_SIZE`` elements and a dot product). On sampled steps (every
``every``-th): the LR of each param group and one walk of the loss's graph. On audited ones (the first
``AUDIT_FIRST`` sampled steps, then every ``AUDIT_EVERY``-th): a max |g| per parameter tensor (which layers got a
gradient; what is pending is read there, in one host read), ‖W‖ and ‖g‖ of the decayed groups, ‖g‖ after backward
(per-tensor hooks for that step) and at the step, whether the output rows are distributions, and, at the first
backward after it, whether ``.grad`` was zeroed (a tensor hook per parameter, for that one backward). The things
``fit()`` guarantees (``zero_grad``, training mode, a new batch each step, schedules stepped as written) are not
watched there.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from tricklab.diagnostics.loop_bugs import (
    CLIP_DOMINATES,
    LOOP_ACCUMULATED,
    LOOP_AMP_SCALE,
    LOOP_BASE_LR,
    LOOP_BROADCAST,
    LOOP_CLIP,
    LOOP_DECAY,
    LOOP_DECAY_SETTING,
    LOOP_DECAYED_NORM,
    LOOP_EVAL,
    LOOP_FROZEN,
    LOOP_GRAD_STATE,
    LOOP_INPUT_HASH,
    LOOP_LABEL_PAIRS,
    LOOP_LAST_MODULE,
    LOOP_LR,
    LOOP_MODE_LAYERS,
    LOOP_OUTPUT,
    LOOP_PRECLIP,
    LOOP_SCHEDULERS,
    LOOP_SOFTMAX_LOSS,
    LOOP_STEP_GRADS,
    LOOP_STEPS,
    LOOP_UNOPTIMIZED,
    PROB_TOLERANCE,
)
from tricklab.diagnostics.readout import read_floats
from tricklab.diagnostics.records import MODEL, Records

#: The input hash reads at most this many elements of the batch, evenly strided.
HASH_SIZE = 1024
#: The checks that read every gradient or the output (which layers got a gradient, zeroing, clipping, decay,
#: distributions) run on the first ``AUDIT_FIRST`` sampled steps and then on every ``AUDIT_EVERY``-th: the bugs they
#: look for are in the loop's code, there from the start, and a pass over every gradient on each sampled step would
#: cost as much as the probe's own statistics.
AUDIT_FIRST = 5
AUDIT_EVERY = 5
#: Modules whose behaviour differs between train and eval mode.
MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class LoopWatch:
    """Record the invariants of a training loop into ``records``.

    ``step()``: the index of the current step (the probe's); ``own_loop``: tricklab's ``fit()``, whose loop zeroes
    the gradients, trains in training mode and draws a new batch each step (those invariants are not watched).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        records: Records,
        every: int,
        *,
        step: Callable[[], int],
        own_loop: bool,
    ):
        self.model, self.optimizer, self.records, self.every = model, optimizer, records, every
        self._step, self.own_loop = step, own_loop
        self.steps = 0  # optimizer steps seen
        self.forward_steps = self.eval_steps = 0  # steps with a forward (grad enabled), and those in eval mode
        self._first_eval: int | None = None
        self._fwd = self._fwd_training = False  # this step: a forward seen, one in training mode
        self._pending: list[tuple[str, int, Tensor, Callable[[float], Any]]] = []
        self._handles: list[Any] = []
        self._accum_hooks: list[Any] = []  # tensor hooks for the first backward after a sampled step
        self._preclip_hooks: list[Any] = []  # gradient-accumulated hooks for a sampled step's backward
        self._accum: dict[int, Tensor] | None = None  # armed: id(parameter) → was its .grad non-zero at backward
        self._preclip: dict[int, Tensor] = {}  # id(parameter) → ‖g‖ after backward (sampled steps)
        self._preclip_total: Tensor | None = None
        self._output_step = -1
        self._broadcast_seen = self._softmax_seen = False
        self._lrs: list[float] = []
        self._hash_w: Tensor | None = None
        modes = [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, MODE_LAYERS)]
        records.add(LOOP_MODE_LAYERS, MODEL, 0, modes)
        last = list(model.modules())[-1]
        records.add(LOOP_LAST_MODULE, MODEL, 0, type(last).__name__)
        mine = None if optimizer is None else {id(p) for g in optimizer.param_groups for p in g["params"]}
        self._params = [
            p for p in model.parameters() if p.requires_grad and (mine is None or id(p) in mine)
        ]  # the trainable parameters the loop steps
        self._owners: dict[str, list[Tensor]] = {}  # a module's own trainable parameters, by its name
        for name, m in model.named_modules():
            own = [p for p in m.parameters(recurse=False) if p.requires_grad and (mine is None or id(p) in mine)]
            if own:
                self._owners[name or type(m).__name__] = own
        if optimizer is not None:
            self._check_unoptimized(mine)
        self._check_frozen(mine)
        if optimizer is not None and not own_loop:  # fit() steps its schedules as written: no runaway to judge
            base = max(float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups)
            records.add(LOOP_BASE_LR, MODEL, 0, base)

    # --- attach / detach --------------------------------------------------------------------------------------

    def attach(self) -> LoopWatch:
        """Hook the model: its output (audited steps) and, in a loop of your own, its forward's mode and input (in
        ``fit()``, which trains in training mode on a new batch each step, there is nothing for that hook to see)."""
        if not self.own_loop:
            self._handles.append(self.model.register_forward_pre_hook(self._pre_hook))
        self._handles.append(self.model.register_forward_hook(self._post_hook))
        return self

    def detach(self) -> None:
        """Remove every hook and write the run's totals; safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._drop_hooks(self._accum_hooks)
        self._drop_hooks(self._preclip_hooks)
        self.finish()

    def finish(self) -> None:
        """Write the run's totals (steps, eval-mode steps, the schedulers when the LR changed) at step 0."""
        self._flush()
        self.records.add(LOOP_STEPS, MODEL, 0, self.steps)
        self.records.add(LOOP_EVAL, MODEL, 0, [self.eval_steps, self.forward_steps, self._first_eval])
        clipped = [v for v in self.records.series(LOOP_CLIP)[1] if v > CLIP_DOMINATES]
        if clipped and not self.own_loop and not self.records.series(LOOP_AMP_SCALE)[1]:
            scale = grad_scale()  # a GradScaler's scale also divides the gradient between backward and step
            if scale is not None:
                self.records.add(LOOP_AMP_SCALE, MODEL, 0, scale)
        if self.optimizer is not None and len(set(self._lrs)) > 1 and not self.records.series(LOOP_SCHEDULERS)[1]:
            found = schedulers_of(self.optimizer)  # at the end of the loop, while the schedulers still exist
            if found:
                self.records.add(LOOP_SCHEDULERS, MODEL, 0, found)

    # --- the loop's events ------------------------------------------------------------------------------------

    def before_step(self) -> None:
        """After backward, before the optimizer step (and, in a loop of your own, after any clipping)."""
        step = self._step()
        self.steps += 1
        if self._fwd:
            self.forward_steps += 1
            if not self._fwd_training:
                self.eval_steps += 1
                self._first_eval = step if self._first_eval is None else self._first_eval
        if self._accum is not None:
            if self._accum:
                share = torch.stack([v.float() for v in self._accum.values()]).mean()
                self._pending.append((LOOP_ACCUMULATED, step, share, float))
            self._accum = None
        self._drop_hooks(self._accum_hooks)
        self._drop_hooks(self._preclip_hooks)
        if self.optimizer is None or not self._sampled(step):
            return
        with torch.no_grad():
            lr = max(float(g["lr"]) for g in self.optimizer.param_groups)
            self._lrs.append(lr)
            self.records.add(LOOP_LR, MODEL, step, lr)
            audited = self._audited(step)
            if audited:
                self._grad_states(step)
                self._decay(step)
                if self.own_loop:  # fit(): this event runs before its clipping
                    self._preclip_total = _total_norm([p.grad for p in self._params if p.grad is not None])
                elif self._preclip:
                    total = torch.stack([n.float() for n in self._preclip.values()]).square().sum().sqrt()
                    self._preclip_total = total
            self._preclip = {}
        if audited:  # what is pending (label pairs, input hashes) waits for the next audit or the end: one read
            self._flush()

    def after_step(self) -> None:
        """The optimizer step was taken (the next forward belongs to the next step)."""
        step = self._step()
        if self.optimizer is not None and self._audited(step):
            grads = [p.grad for p in self._params if p.grad is not None]
            if self._preclip_total is not None and grads:
                with torch.no_grad():
                    pre, used = self._preclip_total, _total_norm(grads)
                self._pending.append((LOOP_PRECLIP, step, pre, float))
                self._pending.append((LOOP_CLIP, step, pre / used, float))
            self._preclip_total = None
            if not self.own_loop:  # fit() zeroes the gradients itself
                self._accum = {}
                self._drop_hooks(self._accum_hooks)
                self._accum_hooks += [p.register_hook(partial(self._accum_hook, p)) for p in self._params]
            self._flush()
        self._fwd = self._fwd_training = False

    def labels(self, targets: Tensor) -> None:
        """A sampled batch's class labels (1-D, integers ≥ 0): how often two of them are equal."""
        counts = torch.bincount(targets.detach().reshape(-1).long())
        n = targets.numel()
        if n < 2:
            return
        same = (counts * (counts - 1)).sum()
        self._pending.append((LOOP_LABEL_PAIRS, self._step(), same, lambda v, pairs=n * (n - 1): [v, pairs]))

    def loss(self, loss: Tensor, step: int | None = None) -> None:
        """The loss of ``step`` (default: the current one), read off its autograd graph (still there after backward),
        on sampled steps until found: an element-wise loss that broadcast its input against a target of another
        shape, and a log-softmax (``F.cross_entropy``'s own, or ``F.log_softmax``) applied to a softmax's output."""
        step = self._step() if step is None else step
        if (self._broadcast_seen and self._softmax_seen) or not self._sampled(step):
            return
        node = getattr(loss, "grad_fn", None)
        if node is None:
            return
        shape, softmax = read_loss_graph(node)
        if shape is not None and not self._broadcast_seen:
            self._broadcast_seen = True
            self.records.add(LOOP_BROADCAST, MODEL, step, shape)
        if softmax and not self._softmax_seen:
            self._softmax_seen = True
            self.records.add(LOOP_SOFTMAX_LOSS, MODEL, step, 1)

    # --- hooks ------------------------------------------------------------------------------------------------

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not torch.is_grad_enabled():
            return  # validation or inference
        step = self._step()
        if not self._fwd:
            self._fwd = True
            x = args[0] if args and isinstance(args[0], Tensor) else None
            if x is not None and not self.own_loop and step % self.every in (0, 1):
                self._pending.append((LOOP_INPUT_HASH, step, self._hash(x), float))
            if self._audited(step) and not self.own_loop and self.optimizer is not None:
                self._drop_hooks(self._preclip_hooks)
                self._preclip_hooks += [p.register_post_accumulate_grad_hook(self._preclip_hook) for p in self._params]
        self._fwd_training |= module.training

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, Tensor):
            return
        step = self._step()
        if step == self._output_step or not self._audited(step):
            return
        if output.dim() == 2 and output.shape[1] >= 2 and output.is_floating_point() and output.numel():
            self._output_step = step
            with torch.no_grad():
                y = output.detach().float()
                probs = (y.amin() >= 0) & ((y.sum(1) - 1).abs().amax() <= PROB_TOLERANCE)
                logp = (y.amax() <= PROB_TOLERANCE) & (y.logsumexp(1).abs().amax() <= PROB_TOLERANCE)
                kind = torch.where(probs, 1, torch.where(logp, 2, 0))
            self._pending.append((LOOP_OUTPUT, step, kind, int))

    def _preclip_hook(self, p: Tensor) -> None:
        if p.grad is not None:
            with torch.no_grad():
                self._preclip[id(p)] = torch.linalg.vector_norm(p.grad.detach().float())

    def _accum_hook(self, p: Tensor, grad: Tensor) -> None:
        """Runs when backward computes ``p``'s gradient, before adding it to ``p.grad``: what is there now is left
        over from before the step (None or 0 when the loop zeroed it)."""
        if self._accum is None or id(p) in self._accum:
            return
        with torch.no_grad():
            left = p.grad
            none = torch.zeros((), dtype=torch.bool, device=grad.device)
            self._accum[id(p)] = none if left is None else left.ne(0).any()

    # --- helpers ----------------------------------------------------------------------------------------------

    def _sampled(self, step: int) -> bool:
        return step % self.every == 0

    def _audited(self, step: int) -> bool:
        """A sampled step on which the checks that read every gradient run (:data:`AUDIT_FIRST`, AUDIT_EVERY)."""
        k, rest = divmod(step, self.every)
        return rest == 0 and (k < AUDIT_FIRST or k % AUDIT_EVERY == 0)

    @staticmethod
    def _drop_hooks(handles: list[Any]) -> None:
        for h in handles:
            h.remove()
        handles.clear()

    def _hash(self, x: Tensor) -> Tensor:
        """A number that two different batches almost never share: a fixed random weighting of ≤ HASH_SIZE strided
        elements, plus the element count."""
        flat = x.detach().reshape(-1)
        n = flat.numel()
        sample = flat[:: max(1, n // HASH_SIZE)][:HASH_SIZE].float()
        if self._hash_w is None or self._hash_w.device != sample.device:
            g = torch.Generator().manual_seed(0)
            self._hash_w = torch.rand(HASH_SIZE, generator=g).add_(0.5).to(sample.device)
        return (sample * self._hash_w[: sample.numel()]).sum() + n

    def _check_unoptimized(self, mine: set[int]) -> None:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        missing = [(n, p) for n, p in named if id(p) not in mine]
        if missing:
            self.records.add(
                LOOP_UNOPTIMIZED,
                MODEL,
                0,
                {
                    "names": [n for n, _ in missing],
                    "tensors": len(missing),
                    "of": len(named),
                    "numel": sum(p.numel() for _, p in missing),
                    "numel_of": sum(p.numel() for _, p in named),
                },
            )

    def _check_frozen(self, mine: set[int] | None) -> None:
        """The parameters that do not require grad (frozen) when the watch starts: the modules whose own parameters
        are all frozen, their share of the model's weights, and how many of them the optimizer was given."""
        frozen = [(n, p) for n, p in self.model.named_parameters() if not p.requires_grad]
        if not frozen:
            return
        every = list(self.model.named_parameters())
        modules = self.model.named_modules()
        owners = [(name or type(m).__name__, list(m.parameters(recurse=False))) for name, m in modules]
        owners = [(name, own) for name, own in owners if own]  # the modules with parameters of their own
        self.records.add(
            LOOP_FROZEN,
            MODEL,
            0,
            {
                "modules": [name for name, own in owners if not any(p.requires_grad for p in own)],  # all frozen
                "param_modules": [name for name, _ in owners],
                "tensors": len(frozen),
                "of": len(every),
                "numel": sum(p.numel() for _, p in frozen),
                "numel_of": sum(p.numel() for _, p in every),
                "in_optimizer": 0 if mine is None else sum(id(p) in mine for _, p in frozen),
            },
        )

    def _grad_states(self, step: int) -> None:
        """Per module: 2 every own parameter's .grad None, 1 all exactly 0, 0 a gradient (one host read)."""
        present = [p for p in self._params if p.grad is not None]
        peaks: dict[int, float] = {}
        if present:
            device = present[0].grad.device
            ends = [torch.aminmax(p.grad.detach()) for p in present]  # max |g| in one pass, without an abs() copy
            read = torch.stack([torch.maximum(-lo, hi).float().to(device) for lo, hi in ends]).tolist()
            peaks = {id(p): v for p, v in zip(present, read, strict=True)}
        for name, params in self._owners.items():
            if all(id(p) not in peaks for p in params):
                state = 2
            elif all(peaks.get(id(p), 0.0) == 0.0 for p in params):
                state = 1
            else:
                state = 0
            self.records.add(LOOP_GRAD_STATE, name, step, state)
        if self._params:
            whole = 2 if not peaks else 1 if all(v == 0.0 for v in peaks.values()) else 0
            self.records.add(LOOP_STEP_GRADS, MODEL, step, whole)

    def _decay(self, step: int) -> None:
        """λ‖W‖ against ‖g‖ over the param groups that decay (AdamW: against √n, Adam's unit step)."""
        groups = [g for g in self.optimizer.param_groups if float(g.get("weight_decay") or 0.0) > 0]
        if not groups:
            return
        decoupled = isinstance(self.optimizer, torch.optim.AdamW) or any(
            g.get("decoupled_weight_decay") for g in groups
        )
        weights, pull, grads, n = [], [], [], 0  # per group: ‖W_g‖ and λ_g‖W_g‖
        for g in groups:
            ps = [p for p in g["params"] if p.requires_grad]
            if ps:
                norm = _total_norm([p.detach() for p in ps])
                weights.append(norm)
                pull.append(float(g["weight_decay"]) * norm)
                grads += [p.grad for p in ps if p.grad is not None]
                n += sum(p.numel() for p in ps)
        if not pull:
            return
        decay = torch.stack(pull).square().sum().sqrt()
        self._pending.append((LOOP_DECAYED_NORM, step, torch.stack(weights).square().sum().sqrt(), float))
        against = torch.tensor(math.sqrt(n)) if decoupled else _total_norm(grads) if grads else None
        if against is None:
            return
        self._pending.append((LOOP_DECAY, step, decay / against.to(decay.device), float))
        wd = max(float(g["weight_decay"]) for g in groups)
        self.records.add(LOOP_DECAY_SETTING, MODEL, 0, {"weight_decay": wd, "decoupled": bool(decoupled)})

    def _flush(self) -> None:
        """Pending tensors → records, with one host read."""
        if not self._pending:
            return
        values = read_floats([t for _, _, t, _ in self._pending])
        for (metric, step, _, wrap), v in zip(self._pending, values, strict=True):
            self.records.add(metric, MODEL, step, wrap(v))
        self._pending = []


#: The autograd nodes of PyTorch's element-wise losses (F.mse_loss, F.smooth_l1_loss, F.huber_loss, F.l1_loss's
#: subtraction, F.binary_cross_entropy), which broadcast input and target with ``torch.broadcast_tensors`` (an
#: ``ExpandBackward0`` node under them) when their shapes differ; searched within ``LOSS_GRAPH_DEPTH`` nodes of the
#: loss.
ELEMENTWISE_LOSS_NODES = (
    "MseLossBackward0",
    "SmoothL1LossBackward0",
    "HuberLossBackward0",
    "SubBackward0",
    "BinaryCrossEntropyBackward0",
)
LOSS_GRAPH_DEPTH = 3


def read_loss_graph(node: Any) -> tuple[list[int] | None, bool]:
    """One walk of the loss's autograd graph, within ``LOSS_GRAPH_DEPTH`` nodes of the loss: the shape of the input
    that an element-wise loss expanded to its target's shape (None: none), and whether a ``LogSoftmaxBackward0``
    takes a softmax's output (``SoftmaxBackward0``) as its input: probabilities given to a log-softmax, a loss
    computed on ``log_softmax(softmax(z))`` instead of ``log_softmax(z)``."""
    found: dict[str, Any] = {"shape": None, "softmax": False}

    def walk(n: Any, depth: int) -> None:
        if n is None or depth > LOSS_GRAPH_DEPTH or (found["shape"] is not None and found["softmax"]):
            return
        below = [b for b, _ in n.next_functions if b is not None]
        name = n.name()
        if found["shape"] is None and name in ELEMENTWISE_LOSS_NODES:
            expand = next((b for b in below if b.name() == "ExpandBackward0"), None)
            if expand is not None:
                found["shape"] = [int(d) for d in expand._saved_self_sym_sizes]
        if name == "LogSoftmaxBackward0" and any(b.name() == "SoftmaxBackward0" for b in below):
            found["softmax"] = True
        for b in below:
            walk(b, depth + 1)

    walk(node, 0)
    return found["shape"], found["softmax"]


def broadcast_in_loss(node: Any) -> list[int] | None:
    """The shape of the loss input that an element-wise loss expanded to its target's shape, or None."""
    return read_loss_graph(node)[0]


def softmax_in_loss(node: Any) -> bool:
    """Whether the loss's graph applies a log-softmax to a softmax's output (see :func:`read_loss_graph`)."""
    return read_loss_graph(node)[1]


def _total_norm(tensors: list[Tensor]) -> Tensor:
    """‖(t₁, t₂, ...)‖₂ as a 0-d float tensor (0 for no tensors)."""
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm([t.detach().float() for t in tensors])
    return torch.stack(list(norms)).square().sum().sqrt()


def grad_scale() -> float | None:
    """The scale of the enabled ``torch.amp.GradScaler`` alive in this process (the largest, if several), or None.
    Found among the live objects, once, when the gradient shrank between backward and the step."""
    kind = torch.amp.GradScaler  # type(o), not isinstance: that would wake lazy module proxies
    scalers = [o for o in gc.get_objects() if issubclass(type(o), kind) and o.is_enabled()]
    scales = [float(o.get_scale()) for o in scalers]
    return max(scales) if scales else None


def schedulers_of(optimizer: torch.optim.Optimizer) -> list[list[Any]]:
    """[class name, times stepped] of each LR scheduler attached to ``optimizer`` (found among the objects that
    refer to it: schedulers hold it as ``.optimizer``; the optimizer holds no reference back)."""
    found: list[Any] = []
    for r in gc.get_referrers(optimizer):
        candidates = [r] if not isinstance(r, dict) else [x for x in gc.get_referrers(r) if not isinstance(x, dict)]
        for c in candidates:
            if getattr(c, "optimizer", None) is optimizer and hasattr(c, "last_epoch") and c not in found:
                found.append(c)
    return [[type(c).__name__, int(c.last_epoch)] for c in found]
