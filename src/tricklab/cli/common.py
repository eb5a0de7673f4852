"""Pieces shared by the CLI commands."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tricklab.errors import TrickLabError
from tricklab.outputs import is_folder  # noqa: F401 (the commands import it from here)


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


def examples(lines: tuple[tuple[str, str], ...], after: str = "") -> dict:
    """``add_parser`` keyword arguments that end a command's ``--help`` with ``lines`` of (command, what it does),
    then the line ``after``.

    Each command keeps its examples in ``EXAMPLES``; a test parses and checks every one, so they stay runnable.
    """
    text = "\n".join(f"  # {what}\n  {command}" for command, what in lines)
    epilog = f"examples:\n{text}" + (f"\n\n{after}" if after else "")
    return {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _training_flags() -> dict[str, tuple[str, dict]]:
    """flag -> (the config key it stands for, its add_argument keyword arguments), from the config schema."""
    import typing

    from tricklab.config import MAX_EPOCHS, MAX_SEED, TrainConfig

    devices = typing.get_args(TrainConfig.model_fields["device"].annotation)
    return {
        "--epochs": (
            "train.epochs",
            {"type": int, "metavar": "N", "help": f"epochs to train, 1 to {MAX_EPOCHS}: --set train.epochs=N"},
        ),
        "--seed": (
            "train.seed",
            {
                "type": int,
                "metavar": "N",
                "help": f"seed of the weights, the split and the data order, 0 to {MAX_SEED}: --set train.seed=N",
            },
        ),
        "--device": (
            "train.device",
            {
                "choices": devices,
                "help": "where to train (auto: cuda when available, else cpu): --set train.device=DEVICE",
            },
        ),
    }


class _Refused(argparse.Action):
    """A flag a command does not take, refused in one line saying what to use instead (hidden from ``--help``)."""

    def __init__(self, option_strings, dest, reason: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        raise TrickLabError(f"{parser.prog}: {option_string} is not taken here: {self.reason}")


def add_training_args(
    p: argparse.ArgumentParser,
    flags=("--epochs", "--seed", "--device"),
    refused=None,
    title="shorthands for --set (a flag and a --set of the same key are refused together)",
) -> None:
    """The flags shared by the commands that train: each of ``flags`` is a shorthand for one ``--set`` key
    (``--epochs N`` is ``--set train.epochs=N``, likewise ``--seed`` and ``--device``); giving both a flag and a
    ``--set`` of its key is refused (:func:`with_training_flags`). ``refused`` maps a flag the command does not
    take to what to use instead, so that ``doctor --epochs`` says to use ``--steps``. ``title`` heads the flags in
    ``--help``."""
    table = _training_flags()
    group = p.add_argument_group(title)
    for flag in flags:
        key, kwargs = table[flag]
        group.add_argument(flag, dest=flag[2:], default=None, **kwargs)
    for flag, reason in (refused or {}).items():
        p.add_argument(flag, action=_Refused, reason=reason, dest=f"refused_{flag[2:]}")


def with_training_flags(args: argparse.Namespace) -> list[str]:
    """``args.overrides`` (the ``--set`` pairs) followed by the training flags given, as ``key=value``.

    A flag's value is checked here against its key's bounds, so that an error names the flag. A flag given with a
    ``--set`` of its own key is refused in one line: the two would say different things, or one of them nothing.
    """
    from tricklab.config import _pairs, validate
    from tricklab.errors import ConfigError

    overrides = list(getattr(args, "overrides", None) or [])
    set_keys = {key: value for key, value in _pairs(overrides)}
    out = list(overrides)
    for flag, (key, _) in _training_flags().items():
        value = getattr(args, flag[2:], None)
        if value is None:
            continue
        if key in set_keys:
            raise TrickLabError(f"{flag} {value} and --set {key}={set_keys[key]} both set {key}: give one of them")
        section, name = key.split(".")
        try:
            validate({section: {name: value}})
        except ConfigError as e:
            raise ConfigError(f"{flag} ({key})", value, e.allowed) from None
        out.append(f"{key}={value}")
    return out
