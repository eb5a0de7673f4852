"""``tricklab report DIR``: re-render a lab's table, plots and HTML report from its database.

Exit codes: 0 written; 2 no lab there, its database unreadable (named, with how to start afresh), or the lab
folder in use by another process.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="re-render a lab directory's report from its results database")
    p.add_argument("lab_dir", metavar="DIR")
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    """Re-render, holding the lab folder's lock (a lab still running there is named, not raced)."""
    from contextlib import nullcontext
    from pathlib import Path

    from rich.console import Console

    from tricklab.locks import folder_lock
    from tricklab.report.lab_report import build_report

    lab_dir = Path(args.lab_dir)
    with folder_lock(lab_dir, create=False) if lab_dir.is_dir() else nullcontext():
        path = build_report(lab_dir, console=Console() if sys.stdout.isatty() else Console(width=160))
    print(f"report: {path}")
    return 0
