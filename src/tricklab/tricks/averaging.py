"""Model averaging: an exponential moving average of the weights (EMA), stochastic weight averaging (SWA),
and ensembles that average predicted probabilities.

EMA and SWA evaluate averaged weights instead of the last iterate: they set ``state.eval_model`` so that
validation and test run on the average while training keeps updating ``state.model``.

Polyak, B. T. & Juditsky, A. B. (1992). Acceleration of stochastic approximation by averaging.
Izmailov, P. et al. (2018). Averaging weights leads to wider optima and better generalization.
Lakshminarayanan, B. et al. (2017). Simple and scalable predictive uncertainty estimation using deep
ensembles.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from tricklab.errors import ConfigError
from tricklab.events import ORDER_AVERAGING, Callback, FitState, weights_mismatch
from tricklab.sections import MAX_RATE, Section
from tricklab.tricks.family import TRICKS, BuildContext, TrickFamily


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_decay(decay: float) -> None:
    if not _is_number(decay) or not 0.0 < decay < 1.0:
        raise ConfigError("averaging.ema", decay, "an EMA decay in (0, 1), e.g. 0.999")


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --------------------------------------------------------------------------------------------------- EMA


@torch.no_grad()
def ema_update_(avg: nn.Module, model: nn.Module, decay: float) -> None:
    """One in-place EMA step of ``avg``'s parameters towards ``model``'s (Polyak & Juditsky 1992).

    ``avg_p <- decay * avg_p + (1 - decay) * p`` for every parameter; buffers (BatchNorm running
    statistics, counters) are copied from ``model`` (timm's ``ModelEmaV3(exclude_buffers=True)``;
    averaging them instead would mix statistics of old weights). After k steps from ``avg = p_0``:
    ``avg = sum_{i=1..k} (1-d) d^(k-i) p_i + d^k p_0``.

    Example::

        avg = copy.deepcopy(model)
        ...; optimizer.step(); ema_update_(avg, model, decay=0.999)
    """
    _check_decay(decay)
    for pa, p in zip(avg.parameters(), model.parameters(), strict=True):
        pa.mul_(decay).add_(p.detach().to(pa.device), alpha=1.0 - decay)
    for ba, b in zip(avg.buffers(), model.buffers(), strict=True):
        ba.copy_(b)


def ema_decay(decay: float, k: int) -> float:
    """The decay of the k-th EMA update with warm-up: ``min(decay, (1 + k) / (10 + k))`` (k ≥ 1).

    Early updates move the average most (0.18 at k = 1, 0.5 at k = 8); the nominal decay takes over from
    ``k = (10·decay − 1) / (1 − decay)`` (8,989 steps for 0.999). Example: ``ema_decay(0.999, 1)`` → ``0.1818…``.
    """
    return min(decay, (1.0 + k) / (10.0 + k))


class EMA(Callback):
    """Evaluate an exponential moving average of the weights, updated after every optimizer step.

    ``on_fit_start`` deep-copies ``state.model`` (same device) as the average and sets
    ``state.eval_model`` to it, so validation and test see the averaged weights; ``on_step_end`` applies
    :func:`ema_update_`. Polyak & Juditsky 1992; used by Izmailov et al. 2018 and timm's ``ModelEmaV2``.
    Runs late (``ORDER_AVERAGING``, 20) so that it averages the weights after any callback that edits them post-step.

    With ``warmup=True`` the k-th update uses ``min(decay, (1 + k) / (10 + k))`` (:func:`ema_decay`, the
    ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage``): without it, an EMA of decay 0.999 still
    keeps 0.999^k of its weight on the random initialization after k steps (45% after 800), and evaluates a
    blend of the untrained and the trained net.

    Example::

        fit(model, data, callbacks=[EMA(decay=0.999, warmup=True)])
    """

    order = ORDER_AVERAGING

    def __init__(self, decay: float = 0.999, warmup: bool = False):
        _check_decay(decay)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.average: nn.Module | None = None
        self._pending: dict[str, Tensor] | None = None

    def on_fit_start(self, state: FitState) -> None:
        self.average = copy.deepcopy(state.model)
        self.average.requires_grad_(False)
        if self._pending is not None:
            self.average.load_state_dict(self._pending)
            self._pending = None
        state.eval_model = self.average

    def on_step_end(self, state: FitState) -> None:
        assert self.average is not None, "EMA.on_fit_start was not called"
        self.updates += 1
        ema_update_(self.average, state.model, ema_decay(self.decay, self.updates) if self.warmup else self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"average": None if self.average is None else self.average.state_dict(), "updates": self.updates}

    def check_state_dict(self, state: dict[str, Any], model: nn.Module) -> str | None:
        if set(state) != {"average", "updates"}:
            return f"holds {sorted(state)}, an EMA holds ['average', 'updates']"
        if not _is_int(state["updates"]) or state["updates"] < 0:
            return f"updates = {state['updates']!r}: not a count"
        if state["average"] is None:
            return None
        mismatch = weights_mismatch(model.state_dict(), state["average"])
        return None if mismatch is None else f"average: {mismatch}"

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        if state.get("average") is None:
            return
        if self.average is None:
            self._pending = state["average"]
        else:
            self.average.load_state_dict(state["average"])


# --------------------------------------------------------------------------------------------------- SWA


class SWA(Callback):
    """Stochastic weight averaging: evaluate the mean of the weights at the end of epochs >= ``swa_start``.

    ``w_swa = (1/n) * sum_{e = swa_start}^{last} w_e`` (Izmailov et al. 2018), with
    ``torch.optim.swa_utils``. ``on_epoch_end`` adds a snapshot to an ``AveragedModel`` (buffers follow
    the live model); ``on_fit_end`` recomputes the BatchNorm statistics of the average over
    ``bn_batches`` (an iterable of ``(x, y)`` training batches; the inputs are used) with ``update_bn``
    and sets ``state.eval_model`` to the averaged module. If the run ended before ``swa_start`` nothing
    changes and ``note`` says so.

    With ``swa_lr``, ``SWALR`` anneals the LR (cosine) from its current value to ``swa_lr``, reached at
    epoch ``swa_start + swa_anneal_epochs - 1`` and then held; it sets the LR in ``on_epoch_start`` and
    runs late (``ORDER_AVERAGING``, 20), so do not combine it with a per-step LR schedule.

    Example::

        fit(model, data, callbacks=[SWA(swa_start=8, bn_batches=train_loader, swa_lr=0.01)])
    """

    order = ORDER_AVERAGING

    def __init__(
        self,
        swa_start: int,
        bn_batches: Iterable[Any] | None = None,
        swa_lr: float | None = None,
        swa_anneal_epochs: int = 1,
    ):
        if not _is_int(swa_start) or swa_start < 1:
            raise ConfigError("averaging.swa_start", swa_start, "an epoch number >= 1 (1-based)")
        if swa_lr is not None and (not _is_number(swa_lr) or swa_lr <= 0):
            raise ConfigError("averaging.swa_lr", swa_lr, "a learning rate > 0, or null for no SWALR")
        if not _is_int(swa_anneal_epochs) or swa_anneal_epochs < 1:
            raise ConfigError("averaging.swa_anneal_epochs", swa_anneal_epochs, "an integer >= 1")
        self.swa_start, self.bn_batches = swa_start, bn_batches
        self.swa_lr, self.swa_anneal_epochs = swa_lr, swa_anneal_epochs
        self.averaged: AveragedModel | None = None
        self.scheduler: SWALR | None = None
        self.note: str | None = None
        self._pending: dict[str, Any] = {}

    @property
    def n_snapshots(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    def on_fit_start(self, state: FitState) -> None:
        if _has_batchnorm(state.model) and self.bn_batches is None:
            raise ConfigError(
                "averaging.bn_batches",
                None,
                "training batches to recompute the SWA model's BatchNorm statistics",
            )
        if self.swa_lr is not None:
            # Built now (the LR is unchanged while anneal_epochs >= 1), so that it wraps optimizer.step
            # before its first step() and torch does not warn about the call order.
            self.scheduler = SWALR(state.optimizer, self.swa_lr, self.swa_anneal_epochs, "cos")
            if "scheduler" in self._pending:
                self.scheduler.load_state_dict(self._pending["scheduler"])
        if "averaged" in self._pending:
            self.averaged = AveragedModel(state.model)
            self.averaged.load_state_dict(self._pending["averaged"])
        self._pending = {}

    def on_epoch_start(self, state: FitState) -> None:
        if self.scheduler is not None and state.epoch >= self.swa_start:
            self.scheduler.step()

    def on_epoch_end(self, state: FitState) -> None:
        if state.epoch < self.swa_start:
            return
        if self.averaged is None:
            self.averaged = AveragedModel(state.model)
        self.averaged.update_parameters(state.model)

    def on_fit_end(self, state: FitState) -> None:
        if self.averaged is None:
            self.note = (
                f"run ended at epoch {state.epoch}, before swa_start={self.swa_start}: no SWA snapshot"
            )
            return
        module = self.averaged.module
        bn = _has_batchnorm(module)
        if bn:
            update_bn(self.bn_batches, module, device=next(module.parameters()).device)
        state.eval_model = module
        recomputed = "; BatchNorm statistics recomputed" if bn else ""
        self.note = f"SWA over {self.n_snapshots} epoch snapshots from epoch {self.swa_start}{recomputed}"

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.averaged is not None:
            out["averaged"] = self.averaged.state_dict()
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state)

    def check_state_dict(self, state: dict[str, Any], model: nn.Module) -> str | None:
        if not set(state) <= {"averaged", "scheduler"}:
            return f"holds {sorted(state)}, SWA holds 'averaged' and 'scheduler'"
        if "averaged" not in state:
            return None
        # an AveragedModel's state: the model's under "module.", and its count of snapshots
        own = {f"module.{k}": v for k, v in model.state_dict().items()}
        own["n_averaged"] = torch.zeros((), dtype=torch.long)
        mismatch = weights_mismatch(own, state["averaged"])
        return None if mismatch is None else f"averaged: {mismatch}"


# ---------------------------------------------------------------------------------------------- ensembles


def average_probabilities(logits_list: Sequence[Tensor]) -> Tensor:
    """The ensemble's class probabilities: the mean of the members' softmax outputs.

    ``p(y|x) = (1/K) * sum_k softmax(z_k)_y`` -- probabilities, not logits, are averaged
    (Lakshminarayanan et al. 2017).

    Example::

        average_probabilities([model_a(x), model_b(x)])  # (batch, classes), rows sum to 1
    """
    if len(logits_list) == 0:
        raise ConfigError("averaging.ensemble", [], "at least one member's logits")
    shapes = {tuple(z.shape) for z in logits_list}
    if len(shapes) != 1:
        raise ConfigError("averaging.ensemble", sorted(shapes), "logits of one shape for every member")
    return torch.stack([torch.softmax(z, dim=-1) for z in logits_list]).mean(dim=0)


@torch.no_grad()
def ensemble_predict(models: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Averaged class probabilities of ``models`` on ``x``, each in eval mode, without gradients.

    Each model's training flag is restored afterwards. ``x`` is moved to each model's device.

    Example::

        probs = ensemble_predict([m1, m2, m3], x); pred = probs.argmax(dim=1)
    """
    logits = []
    for model in models:
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            logits.append(model(x.to(device)).to(x.device))
        finally:
            model.train(was_training)
    return average_probabilities(logits)


def evaluate_ensemble(
    models: Sequence[nn.Module], batches: Iterable[tuple[Tensor, Tensor]]
) -> dict[str, float]:
    """Mean NLL and accuracy of the ensemble's averaged probabilities over ``batches`` of ``(x, y)``.

    ``loss = -(1/N) * sum_n log p(y_n|x_n)`` with ``p`` from :func:`average_probabilities` -- the log of
    the averaged probabilities, not the average of the members' losses; ``acc`` is the share of
    ``argmax p == y``. Both are per sample (not means of batch means).

    Example::

        evaluate_ensemble([m1, m2], test_loader)  # {"loss": 0.21, "acc": 0.94}
    """
    nll_sum, correct, n = 0.0, 0, 0
    for x, y in batches:
        probs = ensemble_predict(models, x)
        y = y.to(probs.device)
        p_true = probs.gather(1, y.view(-1, 1)).squeeze(1)
        nll_sum -= float(p_true.double().clamp_min(torch.finfo(probs.dtype).tiny).log().sum())
        correct += int((probs.argmax(dim=1) == y).sum())
        n += y.numel()
    if n == 0:
        raise ConfigError("averaging.ensemble", "no batches", "at least one (x, y) batch to evaluate")
    return {"loss": nll_sum / n, "acc": correct / n}

# --- the family: config section, builder, checks, PyTorch translation -----------------------------------------


class AveragingConfig(Section):
    """Model averaging: an ensemble of K seeds, stochastic weight averaging, an EMA of the weights."""

    ensemble: int = Field(1, ge=1, le=100)
    swa_start: int | None = Field(None, ge=1)  # first epoch whose weights enter the SWA average
    swa_lr: float | None = Field(None, gt=0, le=MAX_RATE, allow_inf_nan=False)
    ema: float | None = Field(None, gt=0, lt=1)  # decay of the EMA of weights, e.g. 0.999
    ema_warmup: bool = False  # k-th update decays by min(ema, (1+k)/(10+k)): early weights leave the average fast


def averaging_callbacks(cfg: Any, ctx: BuildContext) -> list[Callback]:
    """:class:`EMA` when ``averaging.ema`` is set, :class:`SWA` (with the training batches for its batch-norm
    pass) when ``averaging.swa_start`` is; the ensemble is run by the workflow, one member after another."""
    a: AveragingConfig = cfg.averaging
    cbs: list[Callback] = []
    if a.ema is not None:
        cbs.append(EMA(a.ema, warmup=a.ema_warmup))
    if a.swa_start is not None:
        cbs.append(SWA(a.swa_start, bn_batches=ctx.train_batches(), swa_lr=a.swa_lr))
    return cbs


def averaging_check(cfg: Any) -> None:
    """SWA starts within the run, is not combined with an EMA, and its SWALR only with a per-epoch schedule."""
    a = cfg.averaging
    if a.swa_start is not None and a.swa_start > cfg.train.epochs:
        raise ConfigError("averaging.swa_start", a.swa_start, f"must be <= train.epochs ({cfg.train.epochs})")
    if a.swa_start is not None and a.ema is not None:
        raise ConfigError("averaging.ema", a.ema, "use either swa_start or ema, not both")
    if cfg.schedule.name not in ("constant", "exponential", "step", "plateau") and a.swa_lr:
        raise ConfigError("averaging.swa_lr", a.swa_lr, "SWALR cannot be combined with a per-step schedule")


TRICKS.register(
    "averaging",
    TrickFamily(AveragingConfig, callbacks=averaging_callbacks, check=averaging_check),
    help="model averaging: an ensemble of seeds, SWA, an EMA of the weights",
)
