"""The ``tricklab`` command line. Each command lives in its own ``cli/<name>_cmd.py`` with ``add_parser``.

Exit codes: 0 success; 2 bad input (one line on stderr naming what is wrong and what is allowed, no
traceback unless ``--debug``); others are documented by the command that returns them.
"""

from __future__ import annotations

import importlib
import sys
import traceback

from tricklab import __version__, plugins
from tricklab.cli.common import ArgumentParser, command_line_modules, examples
from tricklab.errors import TrickLabError

#: The commands, in help order: modules tricklab.cli.<name>_cmd.
COMMANDS = ("train", "doctor", "lab", "report", "lr-find", "list", "config")

EXAMPLES = (
    ("tricklab train --config configs/quickstart.yaml", "train one model (offline, about half a minute)"),
    ("tricklab doctor --config configs/quickstart.yaml", "why it trains the way it does, and what to change"),
    ("tricklab lab dropout --dataset mnist1d --quick", "what a trick does, over seeds"),
    ("tricklab config --defaults", "every config key, its default and what it allows"),
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="tricklab",
        description="Make deep networks train, show why, measure each trick.",
        **examples(EXAMPLES, "tricklab COMMAND --help: what the command takes, with examples"),
    )
    parser.add_argument("--version", action="version", version=f"tricklab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"tricklab.cli.{name.replace('-', '_')}_cmd").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    try:
        args = build_parser().parse_args(argv)
        with plugins.allowing(command_line_modules(args)):
            return args.func(args)
    except TrickLabError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``tricklab`` command (and ``python -m tricklab``): :func:`main`, then exit with its code.

    A torchrun worker leaves through :func:`tricklab.engine.distributed.leave_process` (why: see there).
    """
    code = main()
    distributed = sys.modules.get("tricklab.engine.distributed")  # imported only by commands that can join a group
    if distributed is not None:
        distributed.leave_process(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
