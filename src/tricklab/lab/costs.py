"""How long a lab run will take, relative to the others: the lab starts the longest first.

A pool that starts a long run last ends with every worker but one idle while it finishes; starting the longest
runs first (the LPT rule: longest processing time first) keeps the workers busy to the end. Only the order
matters, so a proxy is enough::

    cost = epochs × training examples × multiply-adds of one forward pass × ensemble members

The multiply-adds are counted once per model configuration on a forward pass of two examples, on the meta device
or on zeroed CPU weights up to 256 MiB (:func:`tricklab.memory.build_to_count`: a variant too large to train is
not allocated to be costed), Linear: in × out per example; ConvNd: output elements × in-channels/groups × kernel
size. The training examples come from the dataset's raw size (or ``data.subset``) less the validation share. A
config whose cost cannot be estimated (a plugin model or dataset that cannot be built here) costs ``nan`` and goes
last, in its given order.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

import torch
from torch import nn


@lru_cache(maxsize=64)
def _dataset(data_json: str) -> tuple[int, tuple[int, ...], int]:
    """(training examples before the validation split, input shape, classes) of the dataset a ``data`` config
    section names, loaded once."""
    from tricklab.config import DataConfig
    from tricklab.data.base import as_raw_dataset
    from tricklab.data.download import data_root

    d = DataConfig(**json.loads(data_json))
    raw = as_raw_dataset(d.loader(**d.loader_kwargs(data_root(d.dir))), d.name)
    return len(raw.train), tuple(raw.info.input_shape), raw.info.num_classes


@lru_cache(maxsize=256)
def forward_macs(model_json: str, input_shape: tuple[int, ...], classes: int) -> float:
    """Multiply-adds of one example's forward pass through the model a ``model`` config section describes."""
    from tricklab.config import ModelConfig
    from tricklab.memory import build_to_count

    section = ModelConfig(**json.loads(model_json))
    build = lambda: section.factory(input_shape, classes, **section.factory_kwargs())  # noqa: E731
    try:  # on the meta device: a variant too large to train must not be allocated here to be costed
        model, device = build_to_count(build)
    except Exception:  # noqa: BLE001 - a plugin that needs real values is built for real
        model, device = build(), "cpu"
    model.eval()
    macs = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            k = math.prod(module.kernel_size) * module.in_channels // module.groups
            macs += output.numel() * k

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros((2, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return macs / 2


def _dataset_of(cfg) -> tuple[int, tuple[int, ...], int]:
    """:func:`_dataset` of a config's data source (the keys that choose the data, not how it is split)."""
    source = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k in ("name", "path", "kwargs", "dir")}
    return _dataset(json.dumps(source, sort_keys=True))


def run_cost(config: dict[str, Any]) -> float:
    """The relative cost of a run (a resolved config as a dict); ``nan`` when it cannot be estimated."""
    from tricklab.config import validate

    try:
        cfg = validate(config)
        d = cfg.data
        n, shape, classes = _dataset_of(cfg)
        n = min(n, d.subset) if d.subset else n
        n_train = n * (1 - d.val_fraction)
        macs = forward_macs(json.dumps(cfg.model.model_dump(mode="json"), sort_keys=True), shape, classes)
        return cfg.train.epochs * n_train * macs * cfg.averaging.ensemble
    except Exception:  # noqa: BLE001 - an estimate only: a run that cannot be costed goes last
        return math.nan


#: What a worker process holds besides its run: the Python interpreter, torch and tricklab (``benchmarks/micro.py``
#: measures a fresh worker's resident memory; the figure is in ``benchmarks/README.md``).
PROCESS_BYTES = 400 * 2**20


def run_bytes(config: dict[str, Any]) -> float:
    """The memory one run needs at once: its dataset (raw and scaled copies, float32), the model's training
    estimate (:class:`tricklab.memory.Estimate`: weights, gradients, optimizer state, copies, one batch's
    activations) and :data:`PROCESS_BYTES`; ``nan`` when it cannot be estimated."""
    from tricklab.config import validate
    from tricklab.memory import training_estimate

    try:
        cfg = validate(config)
        n, shape, classes = _dataset_of(cfg)
        data = 2 * 4 * n * math.prod(shape) * 8 / 7  # train (raw + scaled) and the test set (~1/6 more)
        est = training_estimate(cfg, shape, classes, n)
        return data + (est.total_bytes if est is not None else 0) + PROCESS_BYTES
    except Exception:  # noqa: BLE001 - an estimate only
        return math.nan


def longest_first(tasks: list, cost=run_cost) -> list:
    """``tasks`` (with a ``config`` dict each) sorted by :func:`run_cost`, largest first; the sort is stable and
    runs that cannot be costed keep their order at the end."""
    costs = [cost(t.config) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: (math.isnan(costs[i]), 0 if math.isnan(costs[i]) else -costs[i]))
    return [tasks[i] for i in order]
