"""``tricklab report DIR``: re-render a lab's table, plots and HTML report from its database.

``--markdown [FILE]`` also writes the lab's findings as GitHub-flavoured Markdown (default ``results.md`` in the
report's folder), its plots in ``<stem>-plots/`` beside it: ``tricklab report labs/mnist --markdown
docs/results.md`` makes the page the project publishes (:mod:`tricklab.report.markdown`). ``--out OUT`` writes
``report.html`` and ``plots/`` into OUT instead of DIR, so a lab folder that is read-only (a published one) is
rendered elsewhere; the database is only ever read.

No output replaces a file tricklab did not write (:mod:`tricklab.outputs`): a path that exists must be a report
or plot of tricklab's own, or ``--force`` is needed for another regular file; a link, a folder, a device and the
lab's database are refused whatever the flags.

Exit codes: 0 written; 2 no lab there, its database unreadable or not tricklab's (named, with how to start
afresh), the lab folder in use by another process, a read-only lab folder without ``--out``, or an output path
that may not be written (named, with why).
"""

from __future__ import annotations

import argparse
import sys

from tricklab.cli.common import examples

DEFAULT_MARKDOWN = "results.md"  # inside the report's folder (DIR, or OUT with --out)
EXAMPLES = (
    ("tricklab report labs/mnist1d", "re-render the report of the lab in labs/mnist1d"),
    ("tricklab report labs/mnist1d --markdown", "also its findings as Markdown: labs/mnist1d/results.md"),
    ("tricklab report labs/mnist1d --out site", "render it into site/, leaving the lab folder as it is"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="re-render a lab directory's report from its results database", **examples(EXAMPLES)
    )
    p.add_argument("lab_dir", metavar="DIR")
    p.add_argument(
        "--markdown",
        nargs="?",
        const="",
        metavar="FILE",
        help=f"also write the findings as Markdown, plots beside it (default FILE: {DEFAULT_MARKDOWN} beside "
        "report.html)",
    )
    p.add_argument(
        "--out", "-o", metavar="OUT", help="write report.html and plots/ into OUT instead of DIR (DIR is only read)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing regular files that tricklab did not write (never links, devices or the database)",
    )
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    """Re-render, holding the lock of the folder written (a lab still running in DIR is named, not raced)."""
    from pathlib import Path

    from rich.console import Console

    from tricklab.report.render import render_lab

    console = Console() if sys.stdout.isatty() else Console(width=160)
    markdown = None if args.markdown is None else Path(args.markdown) if args.markdown else True
    out = Path(args.out) if args.out else None
    path, markdown = render_lab(Path(args.lab_dir), out, markdown, force=args.force, console=console)
    print(f"report: {path}")
    if markdown is not None:
        print(f"markdown: {markdown}")
    return 0
