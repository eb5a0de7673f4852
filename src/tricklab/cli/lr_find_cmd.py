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
from pathlib import Path

from tricklab.cli.common import add_config_args, add_training_args, examples, with_training_flags
from tricklab.lr_sweep import DEFAULT_STEPS, MAX_STEPS

EXAMPLES = (
    ("tricklab lr-find --config configs/quickstart.yaml", "the suggested LR for the quickstart's MLP, and its plot"),
    ("tricklab lr-find --set optim.name=momentum --steps 200 --seed 1", "SGD with momentum, a longer sweep"),
    ("tricklab lr-find --set model.name=cnn --out runs/cnn-lr", "a conv net on MNIST, the plot into runs/cnn-lr"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lr-find", help="LR range test: suggest a learning rate and plot loss against LR", **examples(EXAMPLES)
    )
    add_config_args(p)
    add_training_args(
        p, ("--seed", "--device"), {"--epochs": "lr-find sweeps the LR over --steps batches; use --steps N"}
    )
    p.add_argument(
        "--out", "-o", metavar="DIR", help="where to save the plot (default: a new folder under runs/)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"training batches to sweep the LR over, 2 to {MAX_STEPS} (default {DEFAULT_STEPS})",
    )
    p.set_defaults(func=run_cmd)


def check_out_dir(path: Path, given: bool = True) -> None:
    """Refuse a ``--out`` that is a file, a folder holding anything (never overwrite earlier results) or cannot be
    written (see :func:`~tricklab.cli.common.check_out_folder`)."""
    from tricklab.cli.common import check_out_folder

    label = None if given else f"the output folder {str(path)!r}"
    check_out_folder(path, "choose a new folder, or leave out --out for a new one under runs/", label)


def run_cmd(args: argparse.Namespace) -> int:
    from tricklab.cli.progress import StepProgress
    from tricklab.config import load_config
    from tricklab.errors import ConfigError
    from tricklab.lr_sweep import find_lr, save_lr_find
    from tricklab.runner import default_run_dir

    # Everything that can fail on bad input comes before the output folder is created.
    cfg = load_config(args.config, with_training_flags(args))
    if not 2 <= args.steps <= MAX_STEPS:
        allowed = f"an integer from 2 to {MAX_STEPS} (training batches to sweep the LR over)"
        raise ConfigError("--steps", args.steps, allowed)
    out = Path(args.out) if args.out is not None else default_run_dir(cfg, "lr-find")
    check_out_dir(out, given=args.out is not None)
    result = find_lr(cfg, args.steps, on_step=StepProgress("lr-find", args.steps))
    plot = save_lr_find(out, cfg, result, args.steps)
    print(f"suggested lr {result.suggestion:.3g} (steepest descent; min/10 gives {result.lr_min_div10:.3g})")
    print(f"clarity: {result.verdict} ({result.clarity:.2f}): {result.reason}")
    print(f"plot: {plot}")
    return 0
