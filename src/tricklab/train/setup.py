"""From config to the objects the loop uses: the optimizer and the trick callbacks."""

from __future__ import annotations

import torch

from tricklab.config import Config
from tricklab.data import Splits
from tricklab.events import Callback


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def build_callbacks(cfg: Config, splits: Splits) -> list[Callback]:
    return []
