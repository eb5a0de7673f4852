"""The LR range test (Smith 2017) on a config's data, model and optimizer: the workflow behind ``tricklab lr-find``
and ``tricklab.lr_find``.

The freshly built model (:func:`tricklab.assembly.assemble`) trains for ``steps`` shuffled training batches while
the LR grows exponentially from 1e-7 to 10; :func:`save_lr_find` writes ``lr_find.png`` (the curve),
``lr_find.json`` (the numbers) and the resolved ``config.yaml``. The model's weights are not kept: the test
restores them. The sweep sets the LR itself, so the config's schedule is not used; nor are clipping and L1,
which would bend the curve the suggestion is read from.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the CLI's parser: nothing heavy at import time
    from tricklab.config import Config

DEFAULT_STEPS = 100
#: The longest sweep: the curve the suggestion is read from is resolved long before this many steps.
MAX_STEPS = 10_000


def find_lr(cfg: Config, steps: int = DEFAULT_STEPS, on_step: Callable | None = None):
    """The :class:`~tricklab.tricks.lr_finder.LRFindResult` of ``steps`` batches of the config's training data."""
    import torch.nn.functional as F

    from tricklab.assembly import assemble, optimizer_factory
    from tricklab.data import TensorBatches
    from tricklab.errors import TrickLabError
    from tricklab.tricks.lr_finder import lr_range_test

    parts = assemble(cfg)  # data, model and optimizer: a bad config is refused now, not halfway through
    splits, model, generator = parts.splits, parts.model.to(parts.device), parts.generator
    batches = TensorBatches(  # as fit() batches: a final batch of one example joins the one before (batch norm)
        splits.train.x, splits.train.y, cfg.data.batch_size, shuffle=True, generator=generator, merge_single=True
    )
    try:
        return lr_range_test(model, batches, F.cross_entropy, optimizer_factory(cfg), num_steps=steps, on_step=on_step)
    except ValueError as e:  # no finite loss at all, or no batch: the data or model is at fault
        raise TrickLabError(f"lr-find: {e}") from None


def save_lr_find(out: Path, cfg: Config, result, steps: int) -> Path:
    """Write ``config.yaml``, ``lr_find.json`` and ``lr_find.png`` into folder ``out``; return the plot's path."""
    from tricklab.outputs import atomic_write, draw_file
    from tricklab.report.lr_find import plot_lr_find

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", cfg.to_yaml().encode())
    record = {
        "suggestion": result.suggestion,
        "lr_min_div10": result.lr_min_div10,
        "clarity": result.clarity,
        "verdict": result.verdict,
        "reason": result.reason,
        "diverged": result.diverged,
        "optimizer": cfg.optim.name,
        "steps": steps,
        "config_hash": cfg.hash(),
        "lrs": result.lrs,
        "losses": result.losses,
        "smoothed": result.smoothed,
    }
    atomic_write(out / "lr_find.json", (json.dumps(record, indent=1) + "\n").encode())
    return draw_file(out / "lr_find.png", lambda p: plot_lr_find(result, p))
