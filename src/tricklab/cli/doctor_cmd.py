"""``tricklab doctor``: find vanishing and exploding gradients, say why, prescribe the tricks that fix them.

Builds the data and model of the config, measures signal propagation at init for every init scheme, trains
``--steps`` steps with probes (``diagnostics.every``), prints the verdicts and their prescription (as
``--set`` flags), re-runs with the prescription applied to report whether it cures the problem, and writes a
report folder: ``index.html`` (self-contained), the plots, ``doctor.json`` (verdicts), ``records.json`` (the
probe's numbers per layer and step), ``signal.json`` and ``config.yaml``.

Exit codes: 0 healthy; 4 problems found (:data:`EXIT_PROBLEMS`); 2 bad input (nothing is written).

``tricklab doctor --preflight`` instead runs the pre-flight checks of :mod:`tricklab.diagnostics.preflight` on
the config's model at initialization and one training batch (``data.batch_size`` examples), in seconds and
without a training run, prints one line per check and writes nothing. ``--steps`` is then the overfit check's
step budget per learning rate. Exit codes: 0 all passed; 1 a check failed (:data:`EXIT_PREFLIGHT_FAILED`);
2 bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tricklab.cli.common import (
    add_config_args,
    add_logger_arg,
    add_training_args,
    check_out_folder,
    examples,
    with_loggers,
    with_training_flags,
)

#: Exit code when the doctor found problems (0: healthy, 2: bad input).
EXIT_PROBLEMS = 4
#: Exit code of ``--preflight`` when a check failed (0: all passed or skipped, 2: bad input).
EXIT_PREFLIGHT_FAILED = 1


EXAMPLES = (
    (
        "tricklab doctor --set model.depth=20 --set model.activation=sigmoid --set init.scheme=standard_normal",
        "a deep sigmoid net that cannot train: verdicts, prescription, re-check",
    ),
    ("tricklab doctor --config configs/quickstart.yaml --steps 100 --seed 1", "a shorter probe run, another seed"),
    ("tricklab doctor --preflight --config configs/quickstart.yaml", "the pre-flight checks only, in seconds"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="diagnose vanishing/exploding gradients and prescribe tricks (exit 4: problems found)",
        **examples(EXAMPLES),
    )
    add_config_args(p)
    add_training_args(
        p, ("--seed", "--device"), {"--epochs": "the doctor trains --steps steps (diagnostics.steps); use --steps N"}
    )
    p.add_argument("--out", "-o", metavar="DIR", help="report folder (default: a new folder under runs/)")
    p.add_argument(
        "--steps", type=int, metavar="N", help="training steps to probe, 1 to 100000 (diagnostics.steps, default 200)"
    )
    p.add_argument("--no-recheck", action="store_true", help="do not re-run with the prescription applied")
    p.add_argument(
        "--preflight",
        action="store_true",
        help="only the pre-flight checks on one batch at init, in seconds; writes nothing (exit 1: a check failed)",
    )
    add_logger_arg(p)
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from tricklab.assembly import assemble
    from tricklab.config import MAX_DIAGNOSTIC_STEPS, load_config
    from tricklab.diagnostics.doctor import run_doctor
    from tricklab.errors import ConfigError
    from tricklab.runner import default_run_dir

    args.overrides = with_training_flags(args)
    if args.steps is not None and not 1 <= args.steps <= MAX_DIAGNOSTIC_STEPS:
        allowed = f"an integer from 1 to {MAX_DIAGNOSTIC_STEPS} (training steps to probe: diagnostics.steps)"
        raise ConfigError("--steps", args.steps, allowed)
    if args.preflight:
        return run_preflight(args)
    overrides = list(args.overrides) + ([f"diagnostics.steps={args.steps}"] if args.steps is not None else [])
    cfg = with_loggers(load_config(args.config, overrides), args.loggers)
    from tricklab.integrations.loggers import Loggers

    loggers = Loggers(cfg.train.loggers)  # a missing package is refused here, before anything runs
    out = Path(args.out) if args.out else default_run_dir(cfg, "doctor")
    check_out_folder(
        out,
        "choose a new report folder, or leave out --out for a new one under runs/",
        None if args.out else f"the report folder {str(out)!r}",
    )
    prepared = assemble(cfg)  # bad data or model settings fail here, before anything is written
    from tricklab.cli.progress import StepProgress

    result = run_doctor(cfg, prepared, recheck=not args.no_recheck, progress=StepProgress)

    from tricklab.outputs import write_file
    from tricklab.report.doctor import write_report

    files = {
        "config.yaml": cfg.to_yaml(),
        "doctor.json": json.dumps(result.to_dict(), indent=2) + "\n",
        "records.json": json.dumps(result.findings.to_dict()) + "\n",
        "signal.json": json.dumps([p.to_dict() for p in result.signal]) + "\n",
    }
    for name, text in files.items():  # new files in the new report folder: nothing there is replaced
        write_file(out / name, text)
    page = write_report(result, out)
    if loggers:  # the report folder is the logged run's folder: statistics, verdicts, and the folder as artifacts
        loggers.start(cfg.to_dict(), out, f"doctor {out.name}")
        loggers.doctor(result)
        loggers.finish({"healthy": float(result.healthy), "problems": float(len(result.verdicts))})
    print_result(result)
    print(f"report: {page}")
    return 0 if result.healthy else EXIT_PROBLEMS


def run_preflight(args: argparse.Namespace) -> int:
    """``doctor --preflight``: the config's model and first training batch, built by
    :func:`tricklab.assembly.assemble`, through :func:`tricklab.diagnostics.preflight.preflight`."""
    from tricklab.assembly import assemble
    from tricklab.config import load_config
    from tricklab.diagnostics.preflight import preflight
    from tricklab.errors import ConfigError

    for flag, given in (("--out", args.out), ("--no-recheck", args.no_recheck), ("--logger", args.loggers)):
        if given:
            raise ConfigError(flag, given, "--preflight writes nothing and re-checks nothing; leave it out")
    cfg = load_config(args.config, list(args.overrides))
    prepared = assemble(cfg)
    train = prepared.splits.train
    n = min(cfg.data.batch_size, len(train))
    model = prepared.model.to(prepared.device)
    batch = (train.x[:n].to(prepared.device), train.y[:n].to(prepared.device))
    steps = {} if args.steps is None else {"steps": args.steps}
    result = preflight(model, batch, num_classes=prepared.splits.info.num_classes, seed=cfg.train.seed, **steps)
    print(result)
    return 0 if result.ok else EXIT_PREFLIGHT_FAILED


def print_result(result) -> None:
    """Print the verdicts, their prescription as ``--set`` flags, and the re-check (used by ``train --diagnose``)."""
    from tricklab.diagnostics.verdicts import as_set_flags

    f = result.findings
    where = f"in {f.steps} steps (probes every {f.every} steps)"
    if result.healthy:
        print(f"healthy: no problems found {where}")
        return
    print(f"{len(result.verdicts)} problem(s) found {where}:")
    for v in result.verdicts:
        when = f" (a consequence of {v.cause})" if v.cause else ""
        when += f" (certain at step {v.first_step})" if v.first_step is not None else ""
        print(f"  {v.name}{when}: {v.summary}")
        if v.layers:
            more = f" (+{len(v.layers) - 4} more)" if len(v.layers) > 4 else ""
            print(f"      layers: {', '.join(v.layers[:4])}{more}")
        print(f"      why: {v.advice}")
        if v.code and v.cause is None:
            print(f"      fix: {v.code}")
        if v.prescription:
            print(f"      prescription: {as_set_flags(v.prescription)}")
    if result.prescription:
        print(f"prescription: {as_set_flags(result.prescription)}")
    r = result.recheck
    if r is not None:
        if r.error:
            print(f"re-check: the prescription could not be applied: {r.error}")
        elif r.healthy:
            print("re-check with the prescription: cured, no problems left")
        else:
            state = "cured" if r.cured else "not cured"
            print(f"re-check with the prescription: {state}; remaining: {', '.join(v.name for v in r.verdicts)}")
