"""Outside code by name: import paths in configs, Python registration and package entry points.

A model, dataset or callback can come from outside tricklab in three ways, all resolved here and all checked
when the config is validated, exactly like a built-in name:

- an import path in the config: ``model.name: mypackage.nets:small_cnn`` (``module:attribute``, the attribute
  may be dotted: ``module:Class.factory``);
- Python registration: ``tricklab.register_model("small_cnn", small_cnn)`` (or as a decorator), then
  ``model.name: small_cnn``; likewise :func:`register_dataset` and :func:`register_callback`;
- a package entry point in the groups of :data:`ENTRY_POINT_GROUPS`, e.g. in a plugin's ``pyproject.toml``::

      [project.entry-points."tricklab.models"]
      small_cnn = "mypackage.nets:small_cnn"

  so that ``tricklab list`` shows it and configs name it like a built-in.

Contracts: a **model factory** is called as ``factory(input_shape, num_classes, **kwargs)`` and returns an
``nn.Module`` mapping a batch of inputs to logits of shape ``(batch, num_classes)``; a **dataset loader** is
called as ``loader(**kwargs)`` (plus ``root=`` the cache folder and ``path=`` ``data.path`` when it accepts
them) and returns the train and test sets (see :func:`tricklab.data.as_raw_dataset`); a **callback factory**
returns a :class:`tricklab.events.Callback`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from tricklab.errors import ConfigError
from tricklab.registry import Registry

#: Callbacks from outside tricklab, by name (``callbacks: [{name: ..., kwargs: {...}}]`` in a config).
CALLBACKS: Registry = Registry("callback")

#: Entry-point group of each registry family that accepts plugins.
ENTRY_POINT_GROUPS = {"models": "tricklab.models", "datasets": "tricklab.datasets", "callbacks": "tricklab.callbacks"}


def is_import_path(name: object) -> bool:
    """``package.module:attribute`` (a colon with text on both sides)."""
    if not isinstance(name, str):
        return False
    module, sep, attr = name.partition(":")
    return bool(sep and module.strip() and attr.strip())


def import_object(path: str, key: str) -> Any:
    """The object at import path ``path``; every failure is a one-line :class:`ConfigError` naming ``key``."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = f"module {e.name!r} not found" if e.name else str(e)
        hint = "is it installed, or on sys.path?"
        raise ConfigError(key, path, f"cannot import {module_name!r}: {missing} ({hint})") from None
    except Exception as e:  # the module itself raised while being imported
        raise ConfigError(key, path, f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise ConfigError(key, path, f"{module_name!r} has no attribute {attr!r} (it has: {', '.join(public)})")
        obj = getattr(obj, part)
    return obj


def importable_path(obj: Any) -> str | None:
    """``module:qualname`` by which another process can import ``obj``; None if it cannot (defined in
    ``__main__``, e.g. a notebook cell, or in a local scope)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    return f"{module}:{qualname}" if found is obj else None


_loaded_groups: set[str] = set()


def load_entry_points(family: str, registry: Registry) -> None:
    """Register the installed plugins of entry-point group ``ENTRY_POINT_GROUPS[family]`` into ``registry`` (once).

    A plugin that fails to load is reported in one ``note:`` line on stderr and left out; the others load.
    """
    group = ENTRY_POINT_GROUPS[family]
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for ep in metadata.entry_points(group=group):
        if ep.name in registry:
            continue
        try:
            obj = ep.load()
        except Exception as e:
            print(
                f"note: plugin {ep.name!r} ({group} = {ep.value}) failed to load: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
            continue
        dist = getattr(ep, "dist", None)
        registry.register(ep.name, obj, source=f"plugin {dist.name if dist else ep.value}")


def resolve(registry: Registry, family: str, name: str, key: str) -> Any:
    """The object called ``name`` in ``registry`` (built-ins, registered plugins, entry points), or at import
    path ``name``; unknown names and broken paths raise a one-line :class:`ConfigError` naming ``key``."""
    if is_import_path(name):
        return import_object(name, key)
    if name not in registry:
        load_entry_points(family, registry)
    if name not in registry:
        hint = registry.suggest(name)
        mean = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError(
            key,
            name,
            f"unknown {registry.kind}{mean} (valid: {', '.join(registry.names())}, or an import path "
            "package.module:callable)",
        )
    return registry.get(name)


def check_callable(obj: Any, key: str, name: str) -> Callable:
    if not callable(obj):
        raise ConfigError(key, name, f"is an object of type {type(obj).__name__}, not a callable (a function or class)")
    return obj


def signature_of(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: accept any arguments
        return None


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    sig = signature_of(fn)
    if sig is None:
        return True
    params = sig.parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def check_call(fn: Callable, args: tuple, kwargs: dict[str, Any], key: str, name: str, shown: Any = None) -> None:
    """Refuse, at config time, a call ``fn(*args, **kwargs)`` that its signature cannot take; the error names
    ``key`` with value ``shown`` (default: ``kwargs``)."""
    sig = signature_of(fn)
    if sig is None:
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        takes = ", ".join(p for p in sig.parameters if p not in ("self",))
        value = kwargs if shown is None else shown
        raise ConfigError(key, value, f"{name}({takes}) cannot be called with these arguments: {e}") from None


def keyword_defaults(fn: Callable) -> dict[str, Any]:
    """The default of every keyword parameter of ``fn`` that has one."""
    sig = signature_of(fn)
    if sig is None:
        return {}
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def json_plain(value: Any, key: str) -> Any:
    """``value`` if it is plain data (what a YAML file can hold), else a :class:`ConfigError`: configs are
    saved beside every result and hashed, so they hold names and numbers, never live objects."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(key, k, "keys must be strings")
            out[k] = json_plain(v, f"{key}.{k}")
        return out
    raise ConfigError(key, type(value).__name__, "must be plain data (numbers, strings, lists, mappings)")
