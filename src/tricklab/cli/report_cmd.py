"""``tricklab report DIR``: re-render a lab's table, plots and HTML report from its database.

``--markdown [FILE]`` also writes the lab's findings as GitHub-flavoured Markdown (default ``DIR/results.md``),
its plots in ``<stem>-plots/`` beside it: ``tricklab report labs/mnist --markdown docs/results.md`` makes the
page the project publishes (:mod:`tricklab.report.markdown`).

Exit codes: 0 written; 2 no lab there, its database unreadable (named, with how to start afresh), the lab
folder in use by another process, or a Markdown FILE that is a folder or cannot be written.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MARKDOWN = "results.md"  # inside DIR


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="re-render a lab directory's report from its results database")
    p.add_argument("lab_dir", metavar="DIR")
    p.add_argument(
        "--markdown",
        nargs="?",
        const="",
        metavar="FILE",
        help=f"also write the findings as Markdown, plots beside it (default FILE: DIR/{DEFAULT_MARKDOWN})",
    )
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    """Re-render, holding the lab folder's lock (a lab still running there is named, not raced)."""
    from contextlib import nullcontext
    from pathlib import Path

    from rich.console import Console

    from tricklab.locks import folder_lock
    from tricklab.report.lab_report import build_report

    lab_dir = Path(args.lab_dir)
    markdown = None
    if args.markdown is not None:
        from tricklab.report.markdown import build_markdown, check_target

        markdown = Path(args.markdown) if args.markdown else lab_dir / DEFAULT_MARKDOWN
        check_target(markdown)  # before any work
    with folder_lock(lab_dir, create=False) if lab_dir.is_dir() else nullcontext():
        path = build_report(lab_dir, console=Console() if sys.stdout.isatty() else Console(width=160))
        if markdown is not None:
            markdown = build_markdown(lab_dir, markdown)
    print(f"report: {path}")
    if markdown is not None:
        print(f"markdown: {markdown}")
    return 0
