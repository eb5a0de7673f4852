"""``tricklab train``: train one config into a run directory."""

from __future__ import annotations

import argparse

from tricklab.cli.common import add_config_args


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one config and write a run directory")
    add_config_args(p)
    p.add_argument("--out", "-o", metavar="DIR", help="the run directory (default: a new folder under runs/)")
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from tricklab.cli.progress import ProgressReporter
    from tricklab.config import load_config
    from tricklab.train.run import run

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, args.out, callbacks=[ProgressReporter()])
    m = result.metrics
    print(
        f"test_loss {m['test_loss']:.4f}  test_acc {m['test_acc']:.4f}  ({m['epochs_run']} epochs, {m['wall_time_s']:.1f}s)"
    )
    print(f"run directory: {result.run_dir}")
    return 0
