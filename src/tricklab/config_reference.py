"""The config as a commented YAML file: every key, its value and what it allows, read from the schema itself.

``tricklab config --defaults`` prints :func:`annotated_yaml` of the default :class:`~tricklab.config.Config`:
each section headed by its docstring's first line, each key followed by a comment with its allowed values. The
comments come from the pydantic fields (types, ``Literal`` choices, bounds) and, for keys that name a registered
part, from the registry (:mod:`tricklab.catalog`), so what is printed cannot drift from what is accepted; the
printed text loads back as the same config (``load_config`` of it equals ``Config()``).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tricklab.config import MAX_THREADS, Config
from tricklab.integrations.loggers import LOGGERS
from tricklab.models import MODEL_SHAPE

#: Keys whose value is a registered name: the family listed by ``tricklab list FAMILY``, and what else is allowed.
NAMED: dict[str, tuple[str, str]] = {
    "data.name": ("datasets", "a registered plugin, or an import path package.module:loader"),
    "data.scale": ("scalings", ""),
    "model.name": ("models", "a registered plugin, or an import path package.module:factory"),
    "model.activation": ("activations", ""),
    "model.norm": ("norms", ""),
    "init.scheme": ("inits", ""),
    "optim.name": ("optimizers", ""),
    "clip.mode": ("clip_modes", ""),
    "schedule.name": ("schedules", ""),
}
#: What the types and bounds of a key do not say: its meaning, or a range checked by a validator of its own.
NOTES: dict[str, str] = {
    "data.path": "the file that npz, csv and plugin loaders taking `path` read",
    "data.kwargs": "the loader's own keyword arguments",
    "data.dir": "the data cache folder (null: env TRICKLAB_DATA, else ~/.cache/tricklab)",
    "data.subset": "use only this many training examples",
    "model.kwargs": "a plugin model's own keyword arguments",
    "train.threads": f"0 (every core) to {MAX_THREADS}",
    "train.loggers": f"a list of trackers to also log to, each at most once: {', '.join(LOGGERS.names())} (install "
    "the extra of the same name); not part of a run's identity",
    "callbacks": "a list of {name: NAME, kwargs: {...}}: registered callbacks (tricklab list callbacks) or import "
    "paths package.module:factory",
}
#: Comments start in this column, or two spaces after a longer line.
COMMENT_COLUMN = 36
#: String keys whose value is free text (a path), not a name: every other ``str`` key must be in :data:`NAMED`.
FREE_TEXT = frozenset({"data.path", "data.dir"})


def _parts(annotation: Any) -> tuple[list[Any], bool]:
    """The alternatives of ``annotation`` without ``None``, and whether ``None`` is one of them."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(field: FieldInfo) -> list[str]:
    out = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                out.append(f"{sign} {_number(bound)}")
        if getattr(meta, "allow_inf_nan", None) is False:
            out.append("finite")
    return out


def allowed(key: str, field: FieldInfo) -> str:
    """What ``key`` (``section.name``) accepts, in words, from its field and the registries."""
    from tricklab.catalog import family

    kinds, nullable = _parts(field.annotation)
    if key in NAMED:
        fam, more = NAMED[key]
        text = f"{', '.join(family(fam).names())}{', ' + more if more else ''} (tricklab list {fam})"
    elif typing.get_origin(kinds[0]) is Literal:
        text = "one of " + ", ".join(str(c) for c in typing.get_args(kinds[0]))
    elif kinds[0] is bool:
        text = "true or false"
    elif kinds[0] in (int, float):
        text = " ".join(["an integer" if kinds[0] is int else "a number", ", ".join(_bounds(field))]).strip()
    elif typing.get_origin(kinds[0]) is dict:
        text = "a mapping"
    elif kinds[0] is str:
        text = "a string"
    else:
        text = ""
    if nullable:
        text += ", or null"
    section, _, name = key.rpartition(".")
    note = NOTES.get(key) or ("null: the model's own default" if section == "model" and name in MODEL_SHAPE else "")
    return "; ".join(t for t in (text, note) if t)


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (flow style); JSON, which YAML also reads, where YAML would need two lines."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True)
    lines = [line for line in text.splitlines() if line != "..."]
    return lines[0] if len(lines) == 1 else json.dumps(value)


def annotated_yaml(config: Config, title: str = "") -> str:
    """``config`` as YAML, each key followed by a comment with what it allows, each section by its purpose.

    The text loads back (:func:`tricklab.config.load_config`) as ``config``. ``title``: comment lines put first.
    """
    data = config.to_dict()
    rows: list[tuple[str, str]] = []  # (the YAML line, its comment); a comment alone has an empty line
    for name, field in Config.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            doc = (section.__doc__ or "").replace("``", "`").strip().splitlines()
            rows += [("", ""), ("", doc[0] if doc else ""), (f"{name}:", "")]
            for key, sub in section.model_fields.items():
                rows.append((f"  {key}: {_flow(data[name][key])}", allowed(f"{name}.{key}", sub)))
        else:
            rows += [("", ""), (f"{name}: {_flow(data[name])}", allowed(name, field))]
    width = min(max(len(line) for line, comment in rows if line and comment), COMMENT_COLUMN) + 2
    out = [f"# {line}" for line in title.splitlines()]
    for line, comment in rows:
        if line and comment:
            out.append(f"{line:<{width - 2}}  # {comment}")
        elif comment:
            out.append(f"# {comment}")
        else:
            out.append(line)
    return "\n".join(out).lstrip("\n") + "\n"
