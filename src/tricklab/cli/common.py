"""Pieces shared by the CLI commands."""

from __future__ import annotations

import argparse
import os
import stat
import tempfile
from pathlib import Path

from tricklab.errors import TrickLabError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every bad input gives one line and exit 2."""

    def error(self, message: str):
        raise TrickLabError(f"{self.prog}: {message}")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE``, repeatable ``--set KEY=VALUE`` and ``--allow-module MODULE``."""
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
    add_allow_arg(p)


def add_logger_arg(p: argparse.ArgumentParser) -> None:
    """Repeatable ``--logger NAME``: also log to TensorBoard, MLflow or W&B (added to ``train.loggers``)."""
    p.add_argument(
        "--logger",
        dest="loggers",
        action="append",
        default=[],
        metavar="NAME",
        help="also log to tensorboard, mlflow or wandb (repeatable; adds to train.loggers; each needs its extra, "
        "e.g. pip install 'tricklab[tensorboard]')",
    )


def with_loggers(cfg, names: list[str]):
    """``cfg`` with the ``--logger`` names added to its ``train.loggers`` (checked like the config key)."""
    if not names:
        return cfg
    return cfg.with_overrides({"train.loggers": list(dict.fromkeys([*cfg.train.loggers, *names]))})


def add_allow_arg(p: argparse.ArgumentParser) -> None:
    """Repeatable ``--allow-module MODULE``: import paths read from files may name it (see :mod:`tricklab.plugins`)."""
    p.add_argument(
        "--allow-module",
        dest="allow_modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="let import paths in config, study and run-folder files name MODULE and its submodules (repeatable; "
        "also env TRICKLAB_ALLOW_MODULES=a,b); allowing a module runs its code",
    )


def command_line_modules(args: argparse.Namespace) -> frozenset[str]:
    """The modules the user trusts on this command line: ``--allow-module`` and the modules of import paths they
    typed themselves (``--set model.name=mypkg.nets:small_cnn``, ``lab --dataset mypkg.data:blobs``), so that a
    file restating them (a run folder's config.yaml on ``--resume``) is read."""
    from tricklab import plugins

    allowed = set(plugins.module_list(getattr(args, "allow_modules", None) or [], "--allow-module"))
    typed: dict[str, object] = {"dataset": getattr(args, "dataset", None)}
    if getattr(args, "overrides", None):
        from tricklab.config import _pairs

        typed.update(_pairs(args.overrides))
    for _, path in plugins.import_paths_in(typed):
        module = path.partition(":")[0]
        if plugins.is_module_name(module):
            allowed.add(module)
    return frozenset(allowed)


def is_folder(path: Path, label: str) -> bool:
    """Whether ``path`` is a folder (following links); False if nothing is there. An OS error while looking (a
    name too long, a folder that may not be searched) is one line naming ``label`` and the path."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TrickLabError(f"{label} {str(path)!r}: {reason}; choose another path") from None


def check_out_folder(path: Path, instead: str, label: str | None = None) -> None:
    """Refuse, in one line and before any work, an output folder that cannot take a new result.

    Refused: a folder that exists and is not empty (``instead`` says what the command offers in its place, e.g.
    ``"choose a new report folder"``); a file; a path that cannot be written, with the OS's reason: under a file,
    in a read-only or immutable folder, or in an unwritable working folder. Nothing is left behind: the
    nearest existing folder is tested by creating and removing an empty temporary folder in it. ``label`` names
    the path in messages (default ``--out 'PATH'``).
    """
    label = label or f"--out {str(path)!r}"
    parent = path
    try:
        if path.is_dir() and any(path.iterdir()):
            raise TrickLabError(f"{label} already exists and is not empty; {instead}")
        if path.exists() and not path.is_dir():
            raise TrickLabError(f"{label} already exists and is not empty (a file, not a folder); choose a folder")
        parent = next((p for p in (path, *path.parents) if p.exists()), None)
        if parent is None:
            raise TrickLabError(f"{label}: the working folder no longer exists; run from an existing folder")
        if not parent.is_dir():
            raise TrickLabError(f"{label}: cannot create it: {str(parent)!r} is a file, not a folder; choose a folder")
        os.rmdir(tempfile.mkdtemp(prefix=".tricklab-write-test-", dir=parent))
    except OSError as e:
        where = f"the working folder {os.path.abspath(parent)!r}" if str(parent) == "." else repr(str(parent))
        raise TrickLabError(
            f"{label}: cannot write into {where} ({e.strerror or e}); choose a writable folder with --out"
        ) from None
