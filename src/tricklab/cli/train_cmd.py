"""``tricklab train``: train one config into a run directory, or continue one with ``--resume``.

Exit codes: 0 done; 2 bad input (one line naming what is wrong and what is allowed; no run directory is
left behind); 3 NaN/Inf in the loss, the inputs or the gradients stopped training, or the run blew up
(``train.nonfinite``; ``error: diverged: ...`` by the rule of :func:`tricklab.engine.loop.blown_up`, with
everything written and ``metrics.json`` saying ``diverged: true``; in both cases the
last checkpoint is intact); 130/143 stopped by SIGINT/SIGTERM after writing a checkpoint (continue with
``--resume RUN_DIR``). The run directory is owned by one process at a time: a second ``train`` writing into it
is refused with exit code 2, naming the process that holds it.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tricklab.cli.common import (
    add_config_args,
    add_logger_arg,
    add_training_args,
    check_out_folder,
    examples,
    is_folder,
    with_loggers,
    with_training_flags,
)
from tricklab.errors import TrickLabError

EXAMPLES = (
    ("tricklab train --config configs/quickstart.yaml", "an MLP on MNIST-1D: offline, about half a minute"),
    ("tricklab train --set data.name=mnist1d --epochs 3 --seed 1", "--epochs/--seed/--device: shorthands for --set"),
    ("tricklab train --set model.name=cnn --set optim.lr=0.01 --out runs/cnn", "a conv net on MNIST at another LR"),
    ("tricklab train --resume auto", "continue the newest run from its last checkpoint"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one config and write a run directory", **examples(EXAMPLES))
    add_config_args(p)
    add_training_args(p)
    p.add_argument("--out", "-o", metavar="DIR", help="the run directory (default: a new folder under runs/)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its newest valid checkpoint with its stored config "
        "('auto': the run under runs/ with the most recent checkpoint)",
    )
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="probe activations and gradients every diagnostics.every steps; print the doctor's verdicts and "
        "write its report to RUN_DIR/doctor/",
    )
    add_logger_arg(p)
    p.set_defaults(func=run_cmd)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_out(cfg, out: str | None) -> None:
    """Refuse, before any work, a run directory that exists and is not empty or cannot be written."""
    from tricklab.engine.rundir import is_empty
    from tricklab.locks import check_free
    from tricklab.runner import default_run_dir

    path = Path(out) if out is not None else default_run_dir(cfg)
    label = None if out is not None else f"the run directory {str(path)!r}"
    if is_folder(path, "--out" if out is not None else "the run directory"):
        check_free(path)  # a run being written there now: name the process that writes it
        if is_empty(path):
            return  # empty but for a lock file left by a killed process: a new run may go there
    check_out_folder(path, f"choose a new run directory (or continue that run with --resume {str(path)!r})", label)


def resume_config(run_dir: Path, config: str | None, overrides: list[str]):
    """The run's stored config; ``--config``/``--set`` may restate it but not change it."""
    from tricklab.config import load_config
    from tricklab.runner import stored_config

    cfg = stored_config(run_dir)
    if config or overrides:
        asked = load_config(config, overrides) if config else cfg.with_overrides(overrides)
        old, new = _flat(cfg.to_dict()), _flat(asked.to_dict())
        changed = [f"{k} ({old[k]!r} -> {new[k]!r})" for k in old if old[k] != new[k]]
        if changed:
            raise TrickLabError(
                f"--resume {str(run_dir)!r} keeps the config stored in its config.yaml; this would change "
                f"{', '.join(changed)} (allowed: no --config/--set, or values equal to the stored ones)"
            )
    return cfg


def run_cmd(args: argparse.Namespace) -> int:
    """Train (or resume) with the run directory locked for the whole command (see :mod:`tricklab.locks`).

    Under torchrun every process runs this command and joins the job's process group for its length; rank 0
    locks, writes and prints (:mod:`tricklab.engine.distributed`). When torchrun restarts the job after a failure
    (``--max-restarts``), ``--out DIR`` holding this job's run continues it from its newest checkpoint (or starts it
    again if the failed try wrote none: :func:`~tricklab.engine.distributed.restart_plan`).
    """
    from tricklab.engine import distributed

    args.overrides = with_training_flags(args)
    with distributed.session():
        if args.resume is None and distributed.restarted():  # torchrun restarted this job's workers
            if distributed.restart_plan(args.out) == "resume":
                args.resume, args.out = args.out, None
        if args.resume is None:
            return _train(args)
        if args.out is not None:
            raise TrickLabError("--out cannot be combined with --resume: a run continues in its own directory")
        from tricklab.engine.rundir import find_resumable
        from tricklab.locks import folder_lock

        run_dir = find_resumable() if args.resume == "auto" else Path(args.resume)
        lock = is_folder(run_dir, "--resume") and distributed.is_main()  # DDP: rank 0 holds the run directory
        with folder_lock(run_dir, create=False) if lock else nullcontext():
            return _train(args, run_dir)


def _train(args: argparse.Namespace, resume_dir: Path | None = None) -> int:
    from tricklab.cli.progress import ProgressReporter
    from tricklab.config import load_config
    from tricklab.engine import distributed
    from tricklab.runner import run

    main = distributed.is_main()  # DDP: rank 0 checks the run directory and prints
    if resume_dir is not None:
        run_dir, cfg = resume_dir, resume_config(resume_dir, args.config, args.overrides)
        cfg = with_loggers(cfg, args.loggers)  # where a run is logged is not part of it: resumed runs may add one
    else:
        run_dir, cfg = args.out, with_loggers(load_config(args.config, args.overrides), args.loggers)
        if main:
            _check_out(cfg, run_dir)
    callbacks = [ProgressReporter()] if main else []
    probe = None
    if args.diagnose and distributed.is_distributed():
        raise TrickLabError(
            "--diagnose cannot be combined with torchrun's several processes (allowed: --diagnose with one "
            "process, or torchrun without --diagnose)"
        )
    if args.diagnose:
        from tricklab.diagnostics.probes import ProbeCallback

        probe = ProbeCallback(cfg.diagnostics.every)
        callbacks.append(probe)
    from tricklab.integrations.loggers import Loggers

    loggers = Loggers(cfg.train.loggers if main else ())  # a missing package is refused here, before training
    try:
        result = run(cfg, run_dir, callbacks=callbacks, resume=args.resume is not None, loggers=loggers)
    except BaseException as e:
        failed = getattr(e, "result", None)
        loggers.finish(failed.metrics if failed is not None else None, "FAILED")
        raise
    try:
        _report(cfg, result, probe, loggers)
    finally:
        loggers.finish(result.metrics)
    if not main:
        return 0
    m = result.metrics
    done = f"({m['epochs_run']} epochs, {m['wall_time_s']:.1f}s)"
    print(f"test_loss {m['test_loss']:.4f}  test_acc {m['test_acc']:.4f}  {done}")
    print(f"run directory: {result.run_dir}")
    return 0


def _report(cfg, result, probe, loggers) -> None:
    """``--diagnose``: print the doctor's verdicts, write its report into the run directory, send it to the loggers."""
    from tricklab.locks import folder_lock

    if probe is not None:
        from tricklab.cli.doctor_cmd import print_result
        from tricklab.diagnostics.doctor import diagnose_training
        from tricklab.report.doctor import write_report

        doc = diagnose_training(cfg, probe)
        print_result(doc)
        if result.run_dir is not None:
            with folder_lock(result.run_dir, create=False):
                print(f"doctor report: {write_report(doc, Path(result.run_dir) / 'doctor')}")
        loggers.doctor(doc)
