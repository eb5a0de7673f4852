"""Outside code by name: import paths in configs, Python registration and package entry points.

A model, dataset or callback can come from outside tricklab in three ways, all resolved here and all checked
when the config is validated, exactly like a built-in name:

- an import path in the config: ``model.name: mypackage.nets:small_cnn`` (``module:attribute``, the attribute
  may be dotted: ``module:Class.factory``) to a callable declared with ``@tricklab.model`` (:func:`model`),
  ``@tricklab.dataset`` or ``@tricklab.callback``;
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

Trust: a config is data, not code. An import path resolves only to an object that declares itself a tricklab
part (:func:`model`, :func:`dataset`, :func:`callback`, a registration or an entry point), never to any function
of any module (``os:system`` is refused). An import path read from a file (a config, a study, a run folder's
``config.yaml``) must also name a module the user allowed (:func:`allow_modules`, ``--allow-module``,
:data:`ALLOW_ENV`) or named on their own command line; :func:`check_file_paths` refuses the others when the file
is read, before anything is imported. Allowing a module means trusting its code: importing it runs it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from tricklab.errors import ConfigError, TrickLabError, echo
from tricklab.registry import Registry

#: Callbacks from outside tricklab, by name (``callbacks: [{name: ..., kwargs: {...}}]`` in a config).
CALLBACKS: Registry = Registry("callback")

#: Entry-point group of each registry family that accepts plugins.
ENTRY_POINT_GROUPS = {"models": "tricklab.models", "datasets": "tricklab.datasets", "callbacks": "tricklab.callbacks"}
#: Environment variable naming the modules (comma-separated) whose import paths a file may name.
ALLOW_ENV = "TRICKLAB_ALLOW_MODULES"
#: What each family's objects declare themselves with, for messages.
DECLARE = {"models": "@tricklab.model", "datasets": "@tricklab.dataset", "callbacks": "@tricklab.callback"}
#: The attribute :func:`model`, :func:`dataset` and :func:`callback` set: the families an object declared itself in.
MARK = "__tricklab_part__"
#: Modules allowed in this process besides :data:`ALLOW_ENV` (see :func:`allow_modules` and :func:`allowing`).
_allowed: frozenset[str] = frozenset({"tricklab"})  # tricklab's own modules: their code runs already
#: Keys (the last part of a dotted key) whose value tricklab resolves as a name: a config's ``data.name``,
#: ``model.name`` and ``callbacks[i].name``, a study's ``dataset``.
NAME_KEYS = ("name", "dataset")


def is_import_path(name: object) -> bool:
    """``package.module:attribute`` (a colon with text on both sides)."""
    if not isinstance(name, str):
        return False
    module, sep, attr = name.partition(":")
    return bool(sep and module.strip() and attr.strip())


def is_module_name(name: object) -> bool:
    """``package.module``: dotted Python identifiers, nothing relative."""
    return isinstance(name, str) and bool(name) and all(part.isidentifier() for part in name.split("."))


def module_list(names: Iterable[str], where: str) -> frozenset[str]:
    """``names`` checked to be module names; a one-line :class:`TrickLabError` naming ``where`` if one is not."""
    out = set()
    for name in names:
        name = name.strip() if isinstance(name, str) else name
        if not is_module_name(name):
            raise TrickLabError(
                f"{where} {echo(name)}: must be a module name such as mypkg or mypkg.nets (a module allowed covers "
                "its submodules)"
            )
        out.add(name)
    return frozenset(out)


def allow_modules(*names: str) -> None:
    """Let import paths read from files (configs, studies, run folders) name these modules and their submodules,
    for the rest of this process. Allowing a module means trusting its code: tricklab imports it."""
    global _allowed
    _allowed = _allowed | module_list(names, "allow_modules")


@contextmanager
def allowing(names: Iterable[str]) -> Iterator[None]:
    """:func:`allow_modules` for the duration of a ``with`` block (one CLI command)."""
    global _allowed
    before = _allowed
    _allowed = _allowed | frozenset(names)
    try:
        yield
    finally:
        _allowed = before


def allowed_modules() -> frozenset[str]:
    """The modules a file's import paths may name now: :func:`allow_modules`, ``--allow-module`` and the user's
    own command line, and :data:`ALLOW_ENV`."""
    env = [n for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()]
    return _allowed | module_list(env, f"environment variable {ALLOW_ENV}")


def is_allowed(module: str) -> bool:
    """Whether ``module`` is an allowed module or inside one (``mypkg`` allowed covers ``mypkg.nets``)."""
    return is_module_name(module) and any(module == a or module.startswith(a + ".") for a in allowed_modules())


def import_paths_in(data: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(key, import path)`` in ``data`` (a parsed config or study) at a key tricklab resolves as a name
    (:data:`NAME_KEYS`), at any depth and in either form (``model: {name: ...}`` or ``model.name: ...``); a plugin's
    own arguments (under ``kwargs``) are data passed to it, never resolved, and are left out."""
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{where}.{k}" if where else str(k)
            last = k.rpartition(".")[2] if isinstance(k, str) else None
            if last in NAME_KEYS and is_import_path(v):
                yield key, v
            if last != "kwargs":
                yield from import_paths_in(v, key)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from import_paths_in(v, f"{where}[{i}]")


class NotAllowedError(ConfigError):
    """An import path read from a file names a module the user did not allow."""


def check_file_paths(data: Any, source: str) -> None:
    """Refuse, before anything is imported, an import path in ``data`` (read from ``source``, e.g. ``config
    file 'x.yaml'``) whose module is not allowed: a file someone sends must not choose code to run."""
    for key, path in import_paths_in(data):
        module = path.partition(":")[0]
        if not is_module_name(module):
            raise ConfigError(key, path, _not_a_path(module))
        if not is_allowed(module):
            top = module.split(".")[0]
            raise NotAllowedError(
                key,
                path,
                f"{source} names module {module!r}, which is not allowed: an import path read from a file may name "
                f"only modules you allow (--allow-module {top}, or {ALLOW_ENV}={top}); allowing a module runs its code",
            )


def _not_a_path(module: str) -> str:
    return f"{echo(module)} is not a module name (an import path is package.module:callable, dotted identifiers)"


def _find_in_working_folder(module_name: str) -> None:
    """Put the working folder at the end of ``sys.path`` when ``module_name``'s top package is found only there:
    ``tricklab`` then imports a plugin from it as ``python -m tricklab`` does (which puts it first), without
    letting a file in it shadow an installed module."""
    top, cwd = module_name.split(".")[0], os.getcwd()
    if top in sys.modules or cwd in sys.path or "" in sys.path:
        return
    try:
        if importlib.util.find_spec(top) is None and importlib.machinery.PathFinder.find_spec(top, [cwd]):
            sys.path.append(cwd)
    except (ImportError, ValueError, OSError):
        return


def import_object(path: str, key: str) -> Any:
    """The object at import path ``path``; every failure is a one-line :class:`ConfigError` naming ``key``.

    It imports the module, so it runs that module's code: only for paths the user named or allowed (see
    :func:`check_file_paths`). A module that raises anything while imported, ``SystemExit`` included, is a
    one-line error naming it. Attributes named ``__dunder__`` are refused (they lead out of the module).
    """
    module_name, _, attr = path.partition(":")
    if not is_module_name(module_name):
        raise ConfigError(key, path, _not_a_path(module_name))
    parts = attr.split(".")
    if not all(p.isidentifier() for p in parts) or any(p.startswith("__") for p in parts):
        raise ConfigError(key, path, f"{echo(attr)} is not an attribute name (dotted identifiers, no __dunder__)")
    _find_in_working_folder(module_name)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = f"module {e.name!r} not found" if e.name else str(e)
        hint = "is it installed, or in the working folder?"
        raise ConfigError(key, path, f"cannot import {module_name!r}: {missing} ({hint})") from None
    except BaseException as e:  # noqa: BLE001 - the module raised while imported: SystemExit, KeyboardInterrupt too
        raise ConfigError(key, path, f"importing {module_name!r} failed: {type(e).__name__}: {e}") from None
    for part in parts:
        try:
            found = hasattr(obj, part)
        except BaseException as e:  # noqa: BLE001 - a module __getattr__ that raises
            raise ConfigError(key, path, f"reading {attr!r} of {module_name!r} failed: {type(e).__name__}") from None
        if not found:
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:12]
            raise ConfigError(key, path, f"{module_name!r} has no attribute {attr!r} (it has: {', '.join(public)})")
        obj = getattr(obj, part)
    return obj


def _declare(obj: Any, family: str) -> Any:
    """Mark ``obj`` a part of ``family`` (an attribute in its own ``__dict__``, read by :func:`declared_families`)."""
    instead = "decorate a function or a class"
    if not callable(obj):
        raise TrickLabError(f"{DECLARE[family]}: got a {type(obj).__name__}; {instead}")
    try:
        setattr(obj, MARK, declared_families(obj) | {family})
    except (AttributeError, TypeError):
        raise TrickLabError(f"{DECLARE[family]}: cannot mark a {type(obj).__name__}; {instead}") from None
    return obj


def model(factory: Callable) -> Callable:
    """Declare a model factory ``factory(input_shape, num_classes, **kwargs) -> nn.Module`` that configs may name by
    import path (``model.name: mypkg.nets:small_cnn``); it is returned unchanged. Example::

        @tricklab.model
        def small_cnn(input_shape, num_classes, channels=16): ...
    """
    return _declare(factory, "models")


def dataset(loader: Callable) -> Callable:
    """Declare a dataset loader ``loader(**kwargs)`` that configs may name by import path (``data.name:
    mypkg.data:blobs``); it returns the train and test sets (see :func:`tricklab.data.as_raw_dataset`)."""
    return _declare(loader, "datasets")


def callback(factory: Callable) -> Callable:
    """Declare a callback factory (a :class:`tricklab.events.Callback` subclass or a function returning one) that
    configs may name by import path (``callbacks: [{name: mypkg.cbs:CountSteps}]``)."""
    return _declare(factory, "callbacks")


def declared_families(obj: Any) -> frozenset[str]:
    """The families ``obj`` itself declared (by :func:`model`, :func:`dataset`, :func:`callback`), read from its own
    ``__dict__``: a subclass of a declared class, or an object that answers any attribute, declares nothing."""
    if inspect.ismethod(obj):  # a classmethod factory, decorated before it was bound
        obj = obj.__func__
    try:
        own = object.__getattribute__(obj, "__dict__")
    except (AttributeError, TypeError):
        return frozenset()
    mark = own.get(MARK) if isinstance(own, (dict, types.MappingProxyType)) else None
    return mark if isinstance(mark, frozenset) else frozenset()


def is_declared(obj: Any, family: str, registry: Registry) -> bool:
    """Whether ``obj`` declared itself a part of ``family``: marked, registered by name, or an entry point."""
    if family in declared_families(obj):
        return True
    if any(e.obj is obj for e in registry.entries()):
        return True
    load_entry_points(family, registry)
    return any(e.obj is obj for e in registry.entries())


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
        except BaseException as e:  # noqa: BLE001 - SystemExit from a plugin's import is its failure, not ours
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
        obj = import_object(name, key)
        check_callable(obj, key, name)
        if not is_declared(obj, family, registry):
            kind = registry.kind
            raise ConfigError(
                key,
                name,
                f"is not a declared tricklab {kind}: an import path may name only a {kind} marked with "
                f"{DECLARE[family]} (or registered with tricklab.register_{kind}, or an entry point of "
                f"{ENTRY_POINT_GROUPS[family]!r}), never any other function",
            )
        return obj
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
