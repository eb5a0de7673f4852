"""``tricklab config``: print a config as commented YAML, each key with its allowed values.

``--defaults`` prints the default config; otherwise the config that ``--config FILE``, ``--set`` and the shorthands
``--epochs/--seed/--device`` resolve to (what ``tricklab train`` with the same flags would run). The text is
generated from the config schema and the registries (:mod:`tricklab.config_reference`), and loads back as the same
config, so it serves as a starting file::

    tricklab config --defaults > my.yaml && tricklab train --config my.yaml

Exit codes: 0 printed; 2 bad input.
"""

from __future__ import annotations

import argparse

from tricklab.cli.common import add_config_args, add_training_args, examples, with_training_flags

EXAMPLES = (
    ("tricklab config --defaults", "every key, its default and its allowed values"),
    ("tricklab config --defaults > my.yaml", "a starting file for tricklab train --config my.yaml"),
    ("tricklab config --config configs/quickstart.yaml --set optim.lr=0.01", "what this run would use"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "config",
        help="print the default or resolved config as YAML, with each key's allowed values",
        **examples(EXAMPLES),
    )
    p.add_argument("--defaults", action="store_true", help="print the default config (no --config or --set)")
    add_config_args(p)
    add_training_args(p)
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from tricklab.config import Config, load_config
    from tricklab.config_reference import annotated_yaml
    from tricklab.errors import TrickLabError

    overrides = with_training_flags(args)
    if args.defaults and (args.config or overrides):
        raise TrickLabError(
            "--defaults prints the default config: leave out --config, --set and the shorthands, or --defaults"
        )
    if args.defaults:
        cfg, title = Config(), "tricklab's default config (tricklab config --defaults)"
    else:
        cfg, title = load_config(args.config, overrides), "the resolved config: defaults <- --config <- --set"
    title += "\neach key's allowed values follow it; change one with --set section.key=value or in a --config file"
    print(annotated_yaml(cfg, title), end="")
    return 0
