"""The learning-rate range test: raise the LR exponentially for a few steps and watch the loss.

Step ``i`` of ``n`` trains one batch at ``lr_i = start_lr · (end_lr / start_lr)^(i / (n − 1))`` and records
the loss of that batch (taken before the update) and its bias-corrected moving average

    avg_i = β · avg_{i−1} + (1 − β) · loss_i,     smoothed_i = avg_i / (1 − β^(i+1)),

stopping early once ``smoothed_i > diverge · min_{j≤i} smoothed_j`` or the loss is not finite. Two
classic readings of the curve: the LR of steepest descent (most negative d smoothed / d log lr, before the
minimum), and the LR of the minimum divided by 10; both leave out the first 10% of the planned steps,
where the moving average has seen too few batches for its slope to mean anything. The model's weights,
buffers, gradients and train/eval mode are restored afterwards, bit for bit; the optimizer is thrown away.

Example::

    result = lr_range_test(model, train_batches, F.cross_entropy, lambda p, lr: torch.optim.SGD(p, lr=lr))
    result.suggestion, result.verdict, result.reason   # 0.14, "clear", "the smoothed loss fell 43% ..."

References: Smith 2017 (Cyclical Learning Rates for Training Neural Networks, the "LR range test");
fastai's ``lr_find`` (Howard & Gugger 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tricklab.errors import ConfigError

OptimizerFactory = Callable[[list[nn.Parameter], float], torch.optim.Optimizer]

#: The first ``num_steps // SKIP_FRACTION`` points are left out of the reading (moving average warming up).
SKIP_FRACTION = 10
#: Relative drop of the smoothed loss (start → minimum) that counts as fully convincing.
FULL_DROP = 0.5
#: Steepest-descent and min/10 suggestions agreeing within this factor count as agreeing.
AGREE_FACTOR = 3.0
#: Clarity thresholds for the verdict words.
CLEAR, WEAK = 0.6, 0.25


@dataclass(frozen=True)
class LRFindResult:
    """The recorded curve of an LR range test and what it suggests.

    ``suggestion`` is the steepest-descent LR and ``lr_min_div10`` the LR at the smoothed minimum / 10.
    ``clarity`` in [0, 1] is ``drop_score · (0.5 + 0.5 · agreement)`` where ``drop_score =
    min(1, relative drop of the smoothed loss from its start to its minimum / 0.5)`` (the start being the
    first point after the skipped 10%; with β = 0.98 a clean curve drops ~45%) and ``agreement`` is 1
    when the two suggestions are within 3× of each other, falling linearly in log10 to 0 at 30×;
    ``verdict`` is "clear" (≥ 0.6), "weak" (≥ 0.25) or "unclear", and ``reason`` says why in one sentence.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    clarity: float
    reason: str
    lr_min_div10: float
    verdict: str  # "clear" | "weak" | "unclear"
    diverged: bool  # stopped early because the loss blew up


def lr_range_test(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer_factory: OptimizerFactory,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge: float = 4.0,
    on_step: Callable[[int, int], None] | None = None,
) -> LRFindResult:
    """Run the LR range test on ``model`` (Smith 2017) and restore it bit-identically afterwards.

    ``batches`` is any re-iterable of ``(x, y)`` (a DataLoader, a list), started again when exhausted;
    ``optimizer_factory(params, lr)`` builds the optimizer, whose LR is then set at every step.
    ``on_step(done, total)`` is called after each step (progress).

    Example::

        r = lr_range_test(net, loader, F.mse_loss, lambda p, lr: torch.optim.SGD(p, lr=lr), num_steps=50)
    """
    _check(start_lr, end_lr, num_steps, smooth, diverge)
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    was_training = model.training
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    diverged = False
    try:
        model.train()
        optimizer = optimizer_factory(list(model.parameters()), start_lr)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        avg, best = 0.0, math.inf
        for i, (x, y) in zip(range(num_steps), _cycle(batches), strict=False):
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x.to(device)), y.to(device))
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged = True
                break
            avg = smooth * avg + (1 - smooth) * value
            smooth_value = avg / (1 - smooth ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth_value)
            best = min(best, smooth_value)
            if smooth_value > diverge * best:
                diverged = True
                break
            if loss.requires_grad:  # a frozen model has nothing to update: its curve stays flat
                loss.backward()
                optimizer.step()
            if on_step is not None:
                on_step(i + 1, num_steps)
    finally:  # the optimizer (and its state) is simply dropped
        with torch.no_grad():
            model.load_state_dict(saved)
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g
        model.train(was_training)
    if not lrs:
        raise ValueError("the LR range test recorded no finite loss: the loss is not finite at start_lr")
    return _read_curve(lrs, losses, smoothed, diverged, skip=num_steps // SKIP_FRACTION)


def suggest_lrs(lrs: list[float], smoothed: list[float], skip: int = 0) -> tuple[float, float]:
    """The steepest-descent LR (argmin of d smoothed / d log lr, from ``skip`` up to the minimum) and LR at
    the minimum / 10. ``skip`` leaves out the first points, where the moving average has seen only a few
    batches and its slope is batch-to-batch noise.

    Example::

        suggest_lrs([1e-4, 1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.98, 0.6, 0.3, 0.9])   # (0.01, 0.01)
    """
    skip = max(0, min(skip, len(lrs) - 2))
    i_min = skip + int(np.argmin(smoothed[skip:]))
    if len(lrs) < 2:
        return lrs[0], lrs[i_min] / 10
    slopes = np.gradient(np.asarray(smoothed), np.log(np.asarray(lrs)))
    i_steep = skip + int(np.argmin(slopes[skip : i_min + 1]))
    return lrs[i_steep], lrs[i_min] / 10


def clarity_of(smoothed: list[float], suggestion: float, lr_min_div10: float) -> tuple[float, float, float]:
    """``(clarity, drop, agreement)``: how clearly the curve points at one LR (see :class:`LRFindResult`)."""
    start, low = smoothed[0], min(smoothed)
    drop = max(0.0, (start - low) / abs(start)) if start != 0 else 0.0
    ratio = max(suggestion, lr_min_div10) / min(suggestion, lr_min_div10)
    agreement = 1.0 if ratio <= AGREE_FACTOR else max(0.0, 1.0 - math.log10(ratio / AGREE_FACTOR))
    clarity = min(1.0, drop / FULL_DROP) * (0.5 + 0.5 * agreement)
    return clarity, drop, agreement


def _read_curve(
    lrs: list[float], losses: list[float], smoothed: list[float], diverged: bool, skip: int
) -> LRFindResult:
    skip = max(0, min(skip, len(lrs) - 2))
    suggestion, lr_min_div10 = suggest_lrs(lrs, smoothed, skip)
    clarity, drop, agreement = clarity_of(smoothed[skip:], suggestion, lr_min_div10)
    verdict = "clear" if clarity >= CLEAR else "weak" if clarity >= WEAK else "unclear"
    pair = f"steepest descent {suggestion:.2g} and min/10 {lr_min_div10:.2g}"
    if drop < 0.05:
        reason = (
            f"the smoothed loss barely moved ({drop:.0%} below its start), so no LR stands out: "
            "check that the model can learn at all (frozen weights, a dead loss)."
        )
    elif agreement < 1.0:
        ratio = max(suggestion, lr_min_div10) / min(suggestion, lr_min_div10)
        reason = f"the smoothed loss fell {drop:.0%} from its start, but {pair} differ by {ratio:.0f}×."
    else:
        tail = "before diverging" if diverged else "without diverging (end_lr may be too low)"
        reason = f"the smoothed loss fell {drop:.0%} from its start {tail}, and {pair} agree."
    return LRFindResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=suggestion,
        clarity=clarity,
        reason=reason,
        lr_min_div10=lr_min_div10,
        verdict=verdict,
        diverged=diverged,
    )


def _cycle(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches again and again (a DataLoader reshuffles on each pass)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the LR range test needs at least one batch")


def _check(start_lr: float, end_lr: float, num_steps: int, smooth: float, diverge: float) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ConfigError("lr_find.start_lr", start_lr, "a number > 0")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ConfigError("lr_find.end_lr", end_lr, f"a number > start_lr ({start_lr:g})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError("lr_find.num_steps", num_steps, "an integer ≥ 2")
    if not (0.0 <= smooth < 1.0):
        raise ConfigError("lr_find.smooth", smooth, "a number in [0, 1)")
    if not (diverge > 1.0):
        raise ConfigError("lr_find.diverge", diverge, "a number > 1")
