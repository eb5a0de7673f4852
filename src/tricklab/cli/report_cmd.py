"""``tricklab report DIR``: re-render a lab's table, plots and HTML report from its database."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="re-render a lab directory's report from its results database")
    p.add_argument("lab_dir", metavar="DIR")
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tricklab.report.lab_report import build_report

    path = build_report(args.lab_dir, console=Console() if sys.stdout.isatty() else Console(width=160))
    print(f"report: {path}")
    return 0
