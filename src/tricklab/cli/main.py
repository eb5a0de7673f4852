"""The ``tricklab`` command line: ``train``, ``list``. Bad input → one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import sys
import traceback

from tricklab import __version__
from tricklab.errors import TrickLabError

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every bad input gives one line and exit 2."""

    def error(self, message: str):
        raise TrickLabError(f"{self.prog}: {message}")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.01 (repeatable)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tricklab", description="Make deep networks train, show why, measure each trick.")
    parser.add_argument("--version", action="version", version=f"tricklab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True

    p = sub.add_parser("train", help="train one config and write a run directory")
    _add_config_args(p)
    p.add_argument("--out", "-o", metavar="DIR", help="the run directory (default: a new folder under runs/)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("list", help="list registered names (datasets, models, ...)")
    p.add_argument("family", nargs="?", help="one registry to list (default: all)")
    p.set_defaults(func=cmd_list)
    return parser


def cmd_train(args) -> int:
    from tricklab.cli.progress import ProgressReporter
    from tricklab.config import load_config
    from tricklab.train.run import run

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, args.out, callbacks=[ProgressReporter()])
    m = result.metrics
    print(f"test_loss {m['test_loss']:.4f}  test_acc {m['test_acc']:.4f}  ({m['epochs_run']} epochs, "
          f"{m['wall_time_s']:.1f}s)")
    print(f"run directory: {result.run_dir}")
    return 0


def cmd_list(args) -> int:
    from tricklab.catalog import FAMILIES, family

    names = [args.family] if args.family else list(FAMILIES)
    for name in names:
        reg = family(name)
        print(f"{name}:")
        width = max(len(n) for n in reg.names())
        for e in reg.entries():
            print(f"  {e.name:<{width}}  {e.help}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except TrickLabError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
