"""``tricklab lab``: run studies over seeds, then print the table and write the HTML report.

Exit codes: 0 every run finished; 1 some runs failed (recorded with their error; the rest completed);
2 bad input, or the lab folder is in use by another process; 143/129/130 stopped by SIGTERM/SIGHUP/SIGINT
(workers stopped, finished runs kept, running ones redone by a rerun). Rerunning the same command skips
finished runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tricklab.cli.common import add_allow_arg, add_logger_arg

EXIT_RUNS_FAILED = 1
MAX_SEEDS, MAX_WORKERS = 1000, 1024  # beyond these a lab has no meaning on any machine


def add_parser(sub) -> None:
    p = sub.add_parser("lab", help="train with and without each trick over seeds; report mean ± CI and verdicts")
    p.add_argument(
        "studies", nargs="*", metavar="STUDY", help="built-in studies to run, or 'all' (see tricklab list studies)"
    )
    p.add_argument("--config", "-c", metavar="FILE", help="a custom study (YAML: base, variants, seeds, epochs)")
    p.add_argument("--dataset", "-d", help="run every study on this dataset (e.g. mnist1d: offline and fast)")
    p.add_argument(
        "--seeds",
        metavar="N|auto",
        help="seeds per variant (default 3; 2 with --quick), or 'auto': 3 first, then more only for comparisons "
        "still undecided (a group-sequential design, valid under this optional stopping) up to --max-seeds",
    )
    p.add_argument("--max-seeds", type=int, metavar="N", help="with --seeds auto: the most seeds per variant (10)")
    p.add_argument("--epochs", type=int, help="override every study's epochs")
    p.add_argument("--quick", action="store_true", help="a preview: ¼ of the epochs, 2 seeds, ≤10k training examples")
    p.add_argument("--workers", type=int, help="parallel worker processes (default: one per core)")
    p.add_argument("--out", "-o", metavar="DIR", help="lab directory (default: labs/<dataset>)")
    p.add_argument(
        "--executor",
        choices=("process", "ray"),
        default="process",
        help="where runs execute: worker processes on this machine (default), or Ray tasks on a local Ray instance "
        "or the cluster at --address (needs pip install 'tricklab[ray]'); results go to this machine's lab folder",
    )
    p.add_argument("--address", metavar="ADDR", help="with --executor ray: an existing Ray cluster (e.g. auto)")
    p.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="with --executor ray: retries of a run whose worker process or node was lost (default 3; a run that "
        "raises is never retried)",
    )
    add_allow_arg(p)
    add_logger_arg(p)
    p.set_defaults(func=run_cmd)


def _studies(args):
    from tricklab.errors import TrickLabError
    from tricklab.lab.studies import STUDIES, load_custom_study

    if args.config and args.studies:
        raise TrickLabError("give either built-in study names or --config FILE, not both")
    if args.config:
        study, seeds, epochs = load_custom_study(args.config)
        return [study], seeds, epochs
    if not args.studies:
        raise TrickLabError(f"name the studies to run, or 'all' (valid: {', '.join(STUDIES.names())})")
    names = STUDIES.names() if args.studies == ["all"] else args.studies
    return [STUDIES.get(n) for n in names], None, None


def _int(flag: str, text: str, alternative: str = "") -> int:
    from tricklab.errors import TrickLabError

    try:
        return int(text)
    except ValueError:
        raise TrickLabError(f"{flag} = {text!r}: expected a whole number {alternative}".rstrip()) from None


def run_cmd(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tricklab.errors import TrickLabError
    from tricklab.lab.lab import LabOptions, command_line, run_lab
    from tricklab.lab.progress import LabProgress
    from tricklab.report.lab_report import build_report

    studies, file_seeds, file_epochs = _studies(args)
    if args.loggers:
        from tricklab.config import validate

        validate({"train": {"loggers": args.loggers}})  # unknown or repeated names refused like train.loggers
        from tricklab.integrations.loggers import Loggers

        Loggers(args.loggers)  # a missing package is refused here, before any run
    from tricklab.config import MAX_EPOCHS

    auto = args.seeds == "auto"
    seeds_n = None if auto or args.seeds is None else _int("--seeds", args.seeds, "or 'auto'")
    if args.max_seeds is not None and not auto:
        raise TrickLabError(f"--max-seeds = {args.max_seeds}: only with --seeds auto")
    bounds = (
        ("--seeds", seeds_n, MAX_SEEDS),
        ("--max-seeds", args.max_seeds, MAX_SEEDS),
        ("--epochs", args.epochs, MAX_EPOCHS),
        ("--workers", args.workers, MAX_WORKERS),
    )
    for flag, v, top in bounds:
        if v is not None and not 1 <= v <= top:
            raise TrickLabError(f"{flag} = {v}: must be 1 to {top}")
    for flag, v in (("--address", args.address), ("--max-retries", args.max_retries)):
        if v is not None and args.executor != "ray":
            raise TrickLabError(f"{flag} = {v}: only with --executor ray (got --executor {args.executor})")
    from tricklab.lab.ray_executor import DEFAULT_RETRIES, MAX_RETRIES

    if args.max_retries is not None and not 0 <= args.max_retries <= MAX_RETRIES:
        raise TrickLabError(f"--max-retries = {args.max_retries}: must be 0 to {MAX_RETRIES}")
    max_seeds = None
    if auto:
        from tricklab.lab.sequential import CAP, FIRST

        max_seeds = args.max_seeds or CAP
        if max_seeds < FIRST:
            raise TrickLabError(f"--max-seeds = {max_seeds}: must be at least {FIRST}, the first look's seeds")
    if args.dataset is not None:
        from tricklab.data import DATASETS

        DATASETS.get(args.dataset)
    if auto:
        from tricklab.lab.sequential import FIRST

        seeds = FIRST
    else:
        seeds = seeds_n or file_seeds or (2 if args.quick else 3)
    opts = LabOptions(
        dataset=args.dataset,
        seeds=seeds,
        max_seeds=max_seeds,
        epochs=args.epochs or file_epochs,
        quick=args.quick,
        workers=args.workers,
        executor=args.executor,
        address=args.address,
        max_retries=DEFAULT_RETRIES if args.max_retries is None else args.max_retries,
    )
    out = args.out or f"labs/{args.dataset or studies[0].dataset}"
    from tricklab.cli.common import is_folder
    from tricklab.outputs import HTML_REPORT, check_target
    from tricklab.report.lab_report import db_files

    # the report written at the end: refused now, not after the runs (a link, a folder, a page tricklab did not write)
    if is_folder(Path(out), "--out"):
        check_target(Path(out) / "report.html", HTML_REPORT, inputs=db_files(Path(out)))
    console = Console() if sys.stdout.isatty() else Console(width=160)
    progress = LabProgress(console)
    try:
        result = run_lab(
            studies,
            opts,
            out,
            command=command_line(),
            on_progress=progress,
            finish=lambda lab_dir: build_report(lab_dir, console=console),  # still holding the lab folder
        )
    except BaseException:
        if getattr(progress, "_status", None) is not None:  # a live status line: give the terminal back
            progress._status.stop()
        raise
    report = result.finished
    if args.loggers:  # every done run of the lab (skipped ones too) and its table, from the lab's database
        from tricklab.integrations.loggers import log_lab

        log_lab(args.loggers, out)
    for key, err in result.failures:
        print(f"failed: {'/'.join(map(str, key))}: {err}", file=sys.stderr)
    print(
        f"{result.done} runs done, {result.skipped} already done, {result.failed} failed in {result.wall_time_s:.0f}s"
    )
    print(f"report: {report}")
    return EXIT_RUNS_FAILED if result.failed else 0
