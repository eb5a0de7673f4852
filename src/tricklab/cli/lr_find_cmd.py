"""``tricklab lr-find``: the LR range test (Smith 2017) on the config's data, model and optimizer.

Trains the freshly initialized model for ``--steps`` shuffled training batches while the LR grows
exponentially from 1e-7 to 10, prints the suggested LR (steepest descent of the smoothed loss), how clear
the suggestion is and why, and saves ``lr_find.png`` (the curve) and ``lr_find.json`` (the numbers) with the
resolved ``config.yaml`` into ``--out`` (default: a new folder ``runs/<stamp>-lr-find``). The model's
weights are not kept: the test restores them. The sweep sets the LR itself, so the config's schedule is not
used; nor are clipping and L1, which would bend the curve the suggestion is read from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tricklab.cli.common import add_config_args

DEFAULT_STEPS = 100


def add_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="LR range test: suggest a learning rate and plot loss against LR")
    add_config_args(p)
    p.add_argument(
        "--out", "-o", metavar="DIR", help="where to save the plot (default: a new folder under runs/)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"training batches to sweep the LR over, ≥ 2 (default {DEFAULT_STEPS})",
    )
    p.set_defaults(func=run_cmd)


def default_out_dir(base: Path = Path("runs")) -> Path:
    """``runs/<stamp>-lr-find``, with ``-2``, ``-3``, ... if that folder exists already."""
    from tricklab.train.run import new_dir_name

    return new_dir_name("lr-find", base)


def check_out_dir(path: Path) -> None:
    """Refuse a ``--out`` that is a file or a folder holding anything (never overwrite earlier results)."""
    from tricklab.errors import TrickLabError

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TrickLabError(f"--out {str(path)!r} already exists and is not empty; choose a new folder")


def run_cmd(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from tricklab.config import load_config
    from tricklab.data import TensorBatches
    from tricklab.data.download import atomic_write
    from tricklab.errors import ConfigError, TrickLabError
    from tricklab.report.lr_find import plot_lr_find
    from tricklab.train.run import load_data, make_model
    from tricklab.train.seed import resolve_device, set_threads
    from tricklab.train.setup import build_optimizer
    from tricklab.tricks.lr_finder import lr_range_test
    from tricklab.tricks.optimizers import build_optimizer as optimizer_by_name

    # Everything that can fail on bad input comes before the output folder is created.
    cfg = load_config(args.config, args.overrides)
    if args.steps < 2:
        raise ConfigError("--steps", args.steps, "an integer >= 2 (training batches to sweep the LR over)")
    out = Path(args.out) if args.out is not None else default_out_dir()
    check_out_dir(out)
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    splits = load_data(cfg)
    model, generator = make_model(cfg, splits, cfg.train.seed)
    model.to(device)
    build_optimizer(cfg, model)  # refuses a bad optimizer config now, not halfway through

    o = cfg.optim

    def factory(params, lr):
        return optimizer_by_name(
            o.name, params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, decoupled=o.decoupled
        )

    batches = TensorBatches(
        splits.train.x, splits.train.y, cfg.data.batch_size, shuffle=True, generator=generator
    )
    try:
        result = lr_range_test(model, batches, F.cross_entropy, factory, num_steps=args.steps)
    except ValueError as e:  # no finite loss at all, or no batch: the data or model is at fault
        raise TrickLabError(f"lr-find: {e}") from None

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", cfg.to_yaml().encode())
    record = {
        "suggestion": result.suggestion,
        "lr_min_div10": result.lr_min_div10,
        "clarity": result.clarity,
        "verdict": result.verdict,
        "reason": result.reason,
        "diverged": result.diverged,
        "optimizer": o.name,
        "steps": args.steps,
        "config_hash": cfg.hash(),
        "lrs": result.lrs,
        "losses": result.losses,
        "smoothed": result.smoothed,
    }
    atomic_write(out / "lr_find.json", (json.dumps(record, indent=1) + "\n").encode())
    plot = plot_lr_find(result, out / "lr_find.png")
    print(f"suggested lr {result.suggestion:.3g} (steepest descent; min/10 gives {result.lr_min_div10:.3g})")
    print(f"clarity: {result.verdict} ({result.clarity:.2f}): {result.reason}")
    print(f"plot: {plot}")
    return 0
