"""From config to the objects the loop uses: initialized weights, the optimizer and the trick callbacks.

This is the one place where config sections meet trick modules; the loop itself knows no trick by name.
"""

from __future__ import annotations

import torch

from tricklab.config import Config
from tricklab.data import Splits, TensorBatches
from tricklab.events import Callback
from tricklab.tricks.averaging import EMA, SWA
from tricklab.tricks.clipping import GradClip
from tricklab.tricks.early_stopping import EarlyStopping
from tricklab.tricks.init import apply_init
from tricklab.tricks.optimizers import build_optimizer as _build_optimizer
from tricklab.tricks.regularization import L1Penalty
from tricklab.tricks.schedules import LRSchedule

LSUV_BATCH = 256


def initialize(cfg: Config, model: torch.nn.Module, splits: Splits) -> dict:
    """Apply ``init.scheme``; LSUV calibrates on the first ``LSUV_BATCH`` training examples."""
    data = splits.train.x[:LSUV_BATCH] if cfg.init.scheme == "lsuv" else None
    return apply_init(model, cfg.init.scheme, data=data)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    return _build_optimizer(
        o.name, model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, decoupled=o.decoupled
    )


def build_callbacks(cfg: Config, splits: Splits) -> list[Callback]:
    """The trick callbacks the config asks for (each one's ``order`` fixes when it runs)."""
    cbs: list[Callback] = []
    if cfg.optim.l1 > 0:
        cbs.append(L1Penalty(cfg.optim.l1))
    if cfg.clip.mode != "none":
        cbs.append(GradClip(cfg.clip.mode, cfg.clip.threshold))
    s = cfg.schedule
    if s.name != "constant":
        opts = dict(
            warmup_epochs=s.warmup_epochs, min_lr=s.min_lr, factor=s.factor, patience=s.patience, monitor=s.monitor
        )
        if s.gamma is not None:
            opts["gamma"] = s.gamma
        if s.step_size is not None:
            opts["step_size"] = s.step_size
        cbs.append(LRSchedule(s.name, **opts))
    e = cfg.early_stopping
    if e.enabled:
        cbs.append(EarlyStopping(e.monitor, e.patience, e.min_delta, e.restore_best))
    a = cfg.averaging
    if a.ema is not None:
        cbs.append(EMA(a.ema))
    if a.swa_start is not None:
        bn = TensorBatches(splits.train.x, splits.train.y, cfg.data.batch_size)
        cbs.append(SWA(a.swa_start, bn_batches=bn, swa_lr=a.swa_lr))
    return cbs
