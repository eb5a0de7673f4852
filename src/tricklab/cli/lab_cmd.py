"""``tricklab lab``: run studies over seeds, then print the table and write the HTML report.

Exit codes: 0 every run finished; 1 some runs failed (recorded with their error; the rest completed);
2 bad input, or the lab folder is in use by another process; 143/129/130 stopped by SIGTERM/SIGHUP/SIGINT
(workers stopped, finished runs kept, running ones redone by a rerun). Rerunning the same command skips
finished runs.
"""

from __future__ import annotations

import argparse
import sys

from tricklab.cli.common import add_allow_arg, add_logger_arg, add_training_args, examples

EXIT_RUNS_FAILED = 1


EXAMPLES = (
    ("tricklab lab init depth --dataset mnist1d --seeds 5", "two of the lesson's studies on MNIST-1D, offline"),
    ("tricklab lab dropout --quick --device cpu", "a preview of the dropout study: ¼ of the epochs, 2 seeds"),
    ("tricklab lab all --dataset mnist1d --seeds auto", "every study; more seeds only where still undecided"),
    ("tricklab lab clipping --dataset mnist1d --epochs 3", "every run of the study for 3 epochs"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lab", help="train with and without each trick over seeds; report mean ± CI and verdicts", **examples(EXAMPLES)
    )
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
    p.add_argument("--epochs", type=int, metavar="N", help="every run trains N epochs (train.epochs)")
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
    add_training_args(
        p,
        ("--device",),
        {"--seed": "a lab trains seeds 0 to N-1 of every variant; choose N with --seeds N"},
        "where every run trains (train.device; not part of a run's identity: finished runs are kept)",
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

    from tricklab.lab.lab import command_line, run_lab
    from tricklab.lab.progress import LabProgress
    from tricklab.lab.request import SHELL, lab_folder, lab_options
    from tricklab.report.lab_report import build_report

    studies, file_seeds, file_epochs = _studies(args)
    if args.loggers:
        from tricklab.config import validate

        validate({"train": {"loggers": args.loggers}})  # unknown or repeated names refused like train.loggers
        from tricklab.integrations.loggers import Loggers

        Loggers(args.loggers)  # a missing package is refused here, before any run
    if args.device == "cuda" and args.executor == "process":  # the runs would train here: refused now, not per run
        from tricklab.errors import ConfigError
        from tricklab.host import resolve_device

        try:
            resolve_device(args.device)
        except ConfigError as e:
            raise ConfigError(
                "--device", args.device, f"{e.allowed} (or --executor ray on a cluster with GPUs)"
            ) from None
    seeds = args.seeds if args.seeds in (None, "auto") else _int("--seeds", args.seeds, "or 'auto'")
    opts = lab_options(
        SHELL,
        dataset=args.dataset,
        seeds=seeds,
        max_seeds=args.max_seeds,
        epochs=args.epochs,
        quick=args.quick,
        workers=args.workers,
        executor=args.executor,
        address=args.address,
        max_retries=args.max_retries,
        file_seeds=file_seeds,
        file_epochs=file_epochs,
        device=args.device,
    )
    out = lab_folder(args.out or None, args.dataset, studies)
    from tricklab.cli.common import is_folder
    from tricklab.outputs import HTML_REPORT, check_target
    from tricklab.report.lab_report import db_files

    # the report written at the end: refused now, not after the runs (a link, a folder, a page tricklab did not write)
    if is_folder(out, "--out"):
        check_target(out / "report.html", HTML_REPORT, inputs=db_files(out))
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
        from tricklab.report.trackers import log_lab

        log_lab(args.loggers, out)
    for key, err in result.failures:
        print(f"failed: {'/'.join(map(str, key))}: {err}", file=sys.stderr)
    print(
        f"{result.done} runs done, {result.skipped} already done, {result.failed} failed in {result.wall_time_s:.0f}s"
    )
    print(f"report: {report}")
    return EXIT_RUNS_FAILED if result.failed else 0
