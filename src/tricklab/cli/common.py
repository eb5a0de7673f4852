"""Pieces shared by the CLI commands."""

from __future__ import annotations

import argparse

from tricklab.errors import TrickLabError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every bad input gives one line and exit 2."""

    def error(self, message: str):
        raise TrickLabError(f"{self.prog}: {message}")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file")
    p.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.01 (repeatable)",
    )
