"""``tricklab list [FAMILY]``: print every registry from the registries themselves (docs and CLI can't drift)."""

from __future__ import annotations

import argparse

from tricklab.cli.common import examples

EXAMPLES = (
    ("tricklab list", "every family: datasets, models, inits, optimizers, schedules, studies, ..."),
    ("tricklab list optimizers", "one family, each name with what it does"),
    ("tricklab list studies", "the studies tricklab lab can run"),
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "list", help="list registered names (datasets, models, inits, optimizers, ...)", **examples(EXAMPLES)
    )
    p.add_argument("family", nargs="?", help="one registry to list (default: all)")
    p.set_defaults(func=run_cmd)


def run_cmd(args: argparse.Namespace) -> int:
    from tricklab.catalog import FAMILIES, family

    names = [args.family] if args.family else list(FAMILIES)
    for name in names:
        reg = family(name)
        print(f"{name}:")
        if not len(reg):
            print("  (none registered: see tricklab.register_callback and the tricklab.callbacks entry points)")
            continue
        width = max(len(n) for n in reg.names())
        for e in reg.entries():
            source = f"  [{e.source}]" if e.source else ""
            print(f"  {e.name:<{width}}  {e.help}{source}")
    return 0
