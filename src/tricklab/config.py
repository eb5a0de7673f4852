"""The run configuration: frozen, validated data, checked before anything is built.

A config is a YAML mapping of sections (``data``, ``model``, ``optim``, ``train``, ...) overridden by
``--set key.sub=value`` pairs. Unknown keys, wrong types, out-of-range values and unknown names fail
with one line naming the full key, the bad value and what is allowed::

    >>> load_config(overrides=["model.dropout=1.5"])
    ConfigError: model.dropout = 1.5: must be < 1.0
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tricklab import plugins
from tricklab.data import DATASETS
from tricklab.errors import ConfigError, TrickLabError, echo, wrong_type
from tricklab.integrations.loggers import LOGGERS
from tricklab.models import BUILTIN_MODULE, MODEL_SHAPE, MODELS
from tricklab.plugins import CALLBACKS
from tricklab.registry import Registry
from tricklab.sections import Section
from tricklab.sections import name_in as _name_in
from tricklab.tricks.activations import ACTIVATIONS
from tricklab.tricks.averaging import AveragingConfig
from tricklab.tricks.clipping import ClipConfig
from tricklab.tricks.early_stopping import EarlyStoppingConfig
from tricklab.tricks.family import TRICKS
from tricklab.tricks.init import InitConfig
from tricklab.tricks.norms import NORMS
from tricklab.tricks.optimizers import OptimConfig
from tricklab.tricks.scaling import SCALINGS
from tricklab.tricks.schedules import ScheduleConfig

#: Upper bounds of values that mean nothing beyond them (and would crash or never end if taken).
MAX_WIDTH = 2**31 - 1  # a tensor dimension; the memory estimate refuses far smaller widths that cannot fit
MAX_THREADS = 1024  # torch/OpenMP crash when asked for ~10⁵ threads
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_EPOCHS = 1_000_000
MAX_DIAGNOSTIC_STEPS = 100_000


#: The names resolved so far in the validation under way, ``(family, name) → object`` (None: no validation).
_RESOLVED: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar("tricklab_resolved", default=None)


@contextmanager
def one_resolution(known: dict[tuple[str, str], Any] | None = None) -> Iterator[None]:
    """Within the ``with`` block (one validation), each name resolves once: the section validators that read the
    same ``model.name`` (its defaults, its signature, ``init.scheme``'s default) share one lookup. ``known``: the
    objects a config already resolved, so that a copy of it with other overrides does not resolve them again."""
    if _RESOLVED.get() is not None:
        yield
        return
    token = _RESOLVED.set(dict(known or {}))
    try:
        yield
    finally:
        _RESOLVED.reset(token)


def resolve_once(registry: Registry, family: str, name: str, key: str) -> Callable:
    """The callable called ``name`` (see :func:`tricklab.plugins.resolve`), looked up once per validation."""
    memo = _RESOLVED.get() if isinstance(name, str) else None  # a name that is no string is refused by resolve
    if memo is not None and (family, name) in memo:
        return memo[(family, name)]
    found = plugins.check_callable(plugins.resolve(registry, family, name, key), key, name)
    if memo is not None:
        memo[(family, name)] = found
    return found


Section._validation_scope = one_resolution  # a section built directly resolves its names once too


class DataConfig(Section):
    """Which data, how it is split, scaled and batched.

    ``name`` is a registered dataset (``tricklab list datasets``) or an import path ``package.module:loader``
    (see :mod:`tricklab.plugins`); ``path`` is a file for the datasets that read one (``npz``, ``csv``);
    ``kwargs`` are the loader's own keyword arguments, checked against its signature.
    """

    name: str = "mnist"
    path: str | None = None  # a data file, for loaders that take one (npz, csv, plugins with a path argument)
    kwargs: dict[str, Any] = {}
    dir: str | None = None  # cache root; else env TRICKLAB_DATA, else ~/.cache/tricklab
    val_fraction: float = Field(0.1, gt=0, lt=1)
    scale: str = "standardize"
    batch_size: int = Field(128, gt=0)
    subset: int | None = Field(None, gt=0)  # use only this many training examples

    _scale = field_validator("scale")(lambda v: _name_in(SCALINGS, v))
    _loader_fn: Callable | None = PrivateAttr(None)  # what data.name resolved to when validated

    @model_validator(mode="after")
    def _loader(self) -> DataConfig:
        loader = self._loader_fn = dataset_loader(self.name)
        plugins.json_plain(self.kwargs, "data.kwargs")
        if self.path is not None and not plugins.accepts(loader, "path"):
            raise ConfigError("data.path", self.path, f"dataset {self.name!r} reads no file; leave data.path unset")
        for reserved in ("root", "path"):
            if reserved in self.kwargs:
                where = "data.dir" if reserved == "root" else "data.path"
                raise ConfigError(f"data.kwargs.{reserved}", self.kwargs[reserved], f"set {where} instead")
        kwargs = dict(self.kwargs, **({"path": self.path} if self.path is not None else {}))
        if plugins.accepts(loader, "root"):
            kwargs["root"] = "<cache>"
        plugins.check_call(loader, (), kwargs, "data.kwargs", _label(self.name), self.kwargs)
        return self

    @property
    def loader(self) -> Callable:
        """The dataset loader ``name`` resolved to when this section was validated (never looked up again)."""
        return _resolved(self._loader_fn, "data.name")

    def loader_kwargs(self, root: Any) -> dict[str, Any]:
        """The keyword arguments the loader is called with: ``root`` and ``path`` where it takes them, ``kwargs``."""
        loader = self.loader
        kwargs = dict(self.kwargs)
        if self.path is not None:
            kwargs["path"] = self.path
        if plugins.accepts(loader, "root"):
            kwargs["root"] = root
        return kwargs


def _resolved(found: Callable | None, key: str) -> Callable:
    if found is None:  # only a section made without validation (model_construct) lacks it
        raise TrickLabError(f"{key}: this config section was not validated; build it with tricklab.config.validate")
    return found


def dataset_loader(name: str) -> Callable:
    """The loader of dataset ``name`` (registered or an import path), checked to be callable. A validated config
    holds it already (:attr:`DataConfig.loader`)."""
    return resolve_once(DATASETS, "datasets", name, "data.name")


def model_factory(name: str) -> Callable:
    """The factory of model ``name`` (registered or an import path), checked to be callable. A validated config
    holds it already (:attr:`ModelConfig.factory`)."""
    return resolve_once(MODELS, "models", name, "model.name")


def is_builtin_model(name: object) -> bool:
    """Whether ``name`` is one of tricklab's own models (they get ``he_normal`` init by default)."""
    try:
        factory = model_factory(name) if isinstance(name, str) else None
    except ConfigError:
        return True  # an unknown name fails with its own message when the model section is validated
    return (getattr(factory, "__module__", None) or "").startswith(BUILTIN_MODULE)


def _label(name: str) -> str:
    return name.rpartition(":")[2] if plugins.is_import_path(name) else name


class ModelConfig(Section):
    """The network: which architecture and its shape.

    Each model gets its own defaults (the keyword defaults of its factory): ``mlp`` 2 × 512, ``cnn`` 2 × 32
    channels, ``resnet`` 3 residual blocks of 16 channels with batch norm, ``inception`` 2 modules of width 16 with
    batch norm. ``name`` may be an import path ``package.module:factory`` or a registered plugin; a plugin
    receives ``(input_shape, num_classes, **kwargs)``: the shape keys below that its signature takes (e.g.
    ``dropout``, so studies can vary them) and ``kwargs``, its other arguments, checked against its signature.
    """

    name: str = "mlp"
    depth: int | None = Field(None, ge=0, le=1000)
    width: int | None = Field(None, gt=0, le=MAX_WIDTH)
    activation: str | None = None
    norm: str | None = None
    norm_position: Literal["before_activation", "after_activation"] | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    residual: bool | None = None
    kwargs: dict[str, Any] = {}
    sync_bn: bool = False  # under torchrun with several processes: BatchNorm -> SyncBatchNorm (CUDA only)

    _act = field_validator("activation")(lambda v: v if v is None else _name_in(ACTIVATIONS, v))
    _norm = field_validator("norm")(lambda v: v if v is None else _name_in(NORMS, v))
    _factory: Callable | None = PrivateAttr(None)  # what model.name resolved to when validated

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        """Fill the shape keys left unset from the model factory's own keyword defaults."""
        if not isinstance(data, dict):
            return data
        defaults = plugins.keyword_defaults(model_factory(data.get("name", "mlp")))
        filled = {k: defaults[k] for k in MODEL_SHAPE if k in defaults and data.get(k) is None}
        return {**data, **filled}

    @model_validator(mode="after")
    def _check_factory(self) -> ModelConfig:
        factory = self._factory = model_factory(self.name)
        plugins.json_plain(self.kwargs, "model.kwargs")
        for key in MODEL_SHAPE:
            value = getattr(self, key)
            if value is not None and not plugins.accepts(factory, key):
                raise ConfigError(
                    f"model.{key}",
                    value,
                    f"model {_label(self.name)!r} takes no {key!r} argument; leave it unset "
                    "(a plugin's own arguments go in model.kwargs)",
                )
        for key in self.kwargs:
            if key in MODEL_SHAPE:
                raise ConfigError(f"model.kwargs.{key}", self.kwargs[key], f"set model.{key} instead")
        plugins.check_call(factory, ((1,), 2), self.factory_kwargs(), "model.kwargs", _label(self.name), self.kwargs)
        return self

    @property
    def factory(self) -> Callable:
        """The model factory ``name`` resolved to when this section was validated (never looked up again)."""
        return _resolved(self._factory, "model.name")

    def factory_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the model factory is called with: the shape keys set, and ``kwargs``."""
        return {**{k: getattr(self, k) for k in MODEL_SHAPE if getattr(self, k) is not None}, **self.kwargs}


class CallbackSpec(Section):
    """A callback by name: a registered one (``tricklab.register_callback``) or an import path, with its kwargs."""

    name: str
    kwargs: dict[str, Any] = {}
    _factory: Callable | None = PrivateAttr(None)  # what name resolved to when validated

    @model_validator(mode="after")
    def _check(self) -> CallbackSpec:
        factory = self._factory = callback_factory(self.name)
        plugins.json_plain(self.kwargs, "callbacks.kwargs")
        plugins.check_call(factory, (), self.kwargs, "callbacks.kwargs", _label(self.name))
        return self

    @property
    def factory(self) -> Callable:
        """The callback factory ``name`` resolved to when this spec was validated (never looked up again)."""
        return _resolved(self._factory, "callbacks.name")


def callback_factory(name: str) -> Callable:
    """The factory of callback ``name`` (registered or an import path), checked to be callable. A validated config
    holds it already (:attr:`CallbackSpec.factory`)."""
    return resolve_once(CALLBACKS, "callbacks", name, "callbacks.name")


class TrainConfig(Section):
    """How long, where and with which seed to train."""

    epochs: int = Field(5, ge=1, le=MAX_EPOCHS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # 0: all cores; at most MAX_THREADS
    nonfinite: Literal["stop", "skip"] = "stop"  # NaN/Inf in loss, inputs or gradients: stop, or skip the batch
    nonfinite_limit: int = Field(10, ge=0)  # with skip: stop once more batches than this were skipped
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 autocast (CPU, CUDA); fp16 + grad scaling (CUDA)
    compile: bool = False  # torch.compile the model (nn.Module.compile: weights and checkpoints unchanged)
    loggers: tuple[str, ...] = ()  # also log to these trackers (tricklab.integrations.loggers): tensorboard, ...

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            try:
                _name_in(LOGGERS, name)
            except ValueError as e:
                raise ValueError(f"{name!r} is an {e}") from None
        if len(set(value)) < len(value):
            raise ValueError("names a logger twice; list each once")
        return value

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int) -> int:
        if not 0 <= value <= MAX_THREADS:
            cores = os.cpu_count()
            raise ValueError(f"must be 0 (every core) to {MAX_THREADS} threads (this machine has {cores} cores)")
        return value


class CheckpointConfig(Section):
    """Checkpoints in ``<run>/checkpoints/``: every N epochs, at the end and of the best epoch; the last K kept."""

    every: int = Field(1, ge=1)
    keep_last: int = Field(2, ge=1)


class DiagnosticsConfig(Section):
    """Probes and the doctor: sample every ``every`` steps; the doctor's short run lasts ``steps`` steps."""

    every: int = Field(10, ge=1)
    steps: int = Field(200, ge=1, le=MAX_DIAGNOSTIC_STEPS)


#: Settings added after results and checkpoints were first stored, left out of a config's hash while at these
#: defaults: a run made before they existed is the same run (not one to redo, and its checkpoints resume).
NEUTRAL_DEFAULTS = {("train", "precision"): "fp32", ("train", "compile"): False, ("model", "sync_bn"): False}
#: Settings that say where a run is reported, not what it computes: never part of a config's hash, so a run logged
#: to a tracker is the same run (a lab's finished result, a checkpoint to resume) as one that is not.
UNHASHED = {("train", "loggers")}


def without_neutral_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a ``Config.to_dict()``) without the :data:`NEUTRAL_DEFAULTS` that hold their default and
    without the :data:`UNHASHED` settings."""
    d = dict(config)
    for section, key in UNHASHED:
        part = d.get(section)
        if isinstance(part, dict) and key in part:
            d[section] = {k: v for k, v in part.items() if k != key}
    for (section, key), default in NEUTRAL_DEFAULTS.items():
        part = d.get(section)
        if isinstance(part, dict) and key in part and part[key] == default and type(part[key]) is type(default):
            d[section] = {k: v for k, v in part.items() if k != key}
    return d


class Config(Section):
    """The whole run configuration. ``Config()`` is the default a newcomer can rely on.

    The sections of the tricks (``init`` to ``averaging``) are defined by their own modules, each with its builder
    and checks (:data:`tricklab.tricks.family.TRICKS`); this class only composes them.
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    init: InitConfig = InitConfig()
    optim: OptimConfig = OptimConfig()
    clip: ClipConfig = ClipConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    averaging: AveragingConfig = AveragingConfig()
    train: TrainConfig = TrainConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    callbacks: tuple[CallbackSpec, ...] = ()  # outside callbacks, by name (tricklab.register_callback)

    @model_validator(mode="before")
    @classmethod
    def _init_default(cls, data: Any) -> Any:
        """``init.scheme`` unset: ``he_normal`` for tricklab's models, the model's own init for plugins."""
        if not isinstance(data, dict):
            return data
        init, model = data.get("init"), data.get("model")
        if isinstance(init, InitConfig) or isinstance(init, dict) and "scheme" in init:
            return data
        name = (
            model.name
            if isinstance(model, ModelConfig)
            else model.get("name", "mlp")
            if isinstance(model, dict)
            else "mlp"
        )
        if is_builtin_model(name):
            return data
        return {**data, "init": {**(init if isinstance(init, dict) else {}), "scheme": "default"}}

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        for family in TRICKS.entries():  # each trick family's own checks across sections
            if family.obj.check is not None:
                family.obj.check(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """A stable hash of the resolved config (same config → same hash; :data:`NEUTRAL_DEFAULTS` at their
        default left out, so run folders and lab results from before those settings existed stay valid)."""
        d = without_neutral_defaults(self.to_dict())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> Config:
        """This config with ``overrides`` applied. A new ``model.name`` takes the new model's own defaults for
        the shape keys that held the old model's defaults (so a CNN does not inherit the MLP's 512 units)."""
        data, pairs = self.to_dict(), _pairs(overrides)
        for key, value in pairs:
            _set_path(data, key, value)
        model = data.get("model")
        if isinstance(model, dict) and model.get("name") != self.model.name:
            old, given = plugins.keyword_defaults(self.model.factory), {k for k, _ in pairs}
            data["model"] = {
                k: v
                for k, v in model.items()
                if f"model.{k}" in given or not (k in MODEL_SHAPE and (v is None or k in old and v == old[k]))
            }
        return validate(data, like=self)

    def resolved(self) -> dict[tuple[str, str], Callable]:
        """``(family, name) → object`` of every name this config resolved when it was validated."""
        out = {("datasets", self.data.name): self.data.loader, ("models", self.model.name): self.model.factory}
        out.update({("callbacks", c.name): c.factory for c in self.callbacks})
        return out


_ALLOWED = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "finite_number": "must be a finite number",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
}


def _field_names(key_path: tuple) -> list[str]:
    model: Any = Config
    for part in key_path:
        if str(part).isdigit():  # an item of a list of sections (callbacks.0)
            continue
        model = model.model_fields[part].annotation
        items = [a for a in get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = items[0] if items else model  # tuple[CallbackSpec, ...]: the item's keys
    return list(model.model_fields)


def _section_keys() -> list[str]:
    """Every key one level into a section (``optim.lr``), and the top-level keys that are not sections."""
    keys = []
    for name, field in Config.model_fields.items():
        section = field.annotation
        is_section = isinstance(section, type) and issubclass(section, BaseModel)
        keys += [f"{name}.{k}" for k in section.model_fields] if is_section else [name]
    return keys


def _close_keys(loc: tuple[str, ...], value: Any, valid: list[str]) -> str:
    """The did-you-mean of the unknown key ``loc`` (``valid``: the keys allowed beside it), quoted, or "".

    A misspelled section (``optimm: {lr: 0.1}``) gets the closest section. Otherwise the key is looked up by its
    last part among the keys of every section: the same name in another section (``lr`` or ``train.lr`` ->
    ``optim.lr``; several when it is in several), else the closest spelling (``optim.lrr`` -> ``optim.lr``,
    ``epoch`` -> ``train.epochs``), the key's own section first among equally close ones.
    """
    leaf, where = loc[-1], loc[:-1]
    if len(where) > 1 or not where and isinstance(value, dict):  # within a nested mapping, or a section's name
        close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
        return repr(".".join((*where, close[0]))) if close else ""
    keys = _section_keys()
    own = where[0] if where else None
    same = [k for k in keys if k.rpartition(".")[2] == leaf and k.partition(".")[0] != own]
    if same:
        quoted = [repr(k) for k in same]
        return quoted[0] if len(same) == 1 else f"one of {', '.join(quoted)}"
    ratio = {k: difflib.SequenceMatcher(None, leaf, k.rpartition(".")[2]).ratio() for k in keys}
    best = sorted((k for k in keys if ratio[k] >= 0.6), key=lambda k: (-ratio[k], k.partition(".")[0] != own))
    return repr(best[0]) if best else ""


def _one_line(err: ValidationError, data: Any = None) -> ConfigError:
    e = err.errors(include_url=False)[0]
    if e["type"] == "invalid_key":  # a section's key
        return _non_string_key(e["loc"], e["input"], data)
    if e["loc"] and e["loc"][-1] == "[key]":  # a key of kwargs (a dict[str, Any])
        return _non_string_key(e["loc"][:-1], e["input"], data)
    loc = tuple(str(p) for p in e["loc"])
    key = ".".join(loc)
    if e["type"] == "extra_forbidden":
        valid = _field_names(loc[:-1])
        close = _close_keys(loc, e["input"], valid)
        hint = f"did you mean {close}? " if close else ""
        return ConfigError(key, e["input"], f"unknown key; {hint}valid keys here: {', '.join(valid)}")
    if e["type"] == "literal_error":
        return ConfigError(key, e["input"], f"must be one of {e['ctx']['expected']}")
    if e["type"] == "value_error":
        return ConfigError(key, e["input"], str(e["ctx"]["error"]))
    template = _ALLOWED.get(e["type"])
    allowed = template.format(**e.get("ctx", {})) if template else e["msg"]
    return ConfigError(key, e["input"], allowed)


def _non_string_key(loc: tuple, bad: Any, data: Any) -> ConfigError:
    """A key YAML read as a number, boolean, null or date (``1: 2``, ``yes: 1``), named with its value as written
    (pydantic reports the key in place of the value, and a boolean key as 1)."""
    node: Any = data
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
            break
    found = [k for k in node if k is bad or type(k) is type(bad) and k == bad] if isinstance(node, dict) else []
    if isinstance(bad, bool):
        spelled, kind = str(bad).lower(), "a boolean"
    elif bad is None:
        spelled, kind = "null", "null"
    elif isinstance(bad, (int, float)):
        spelled, kind = str(bad), "a number"
    else:
        spelled, kind = str(bad), f"a {type(bad).__name__}"
    key = ".".join([*(str(p) for p in loc[:-1]), spelled])
    try:
        valid = f"; valid keys here: {', '.join(_field_names(tuple(str(p) for p in loc[:-1])))}"
    except (KeyError, AttributeError, TypeError):
        valid = ""
    value = node[found[0]] if found else "?"
    return ConfigError(key, value, f"a key must be a name, but YAML read {spelled} as {kind} (quote it){valid}")


def validate(data: Any, like: Config | None = None) -> Config:
    """Build a :class:`Config` from a plain mapping, raising a one-line :class:`ConfigError`.

    Each name (``data.name``, ``model.name``, each callback's) is resolved once, here, and the config carries
    the objects (:attr:`DataConfig.loader`, :attr:`ModelConfig.factory`, :attr:`CallbackSpec.factory`): what
    builds the run never looks a name up again. ``like``: a validated config whose resolved names are reused
    where ``data`` names the same ones (a copy of it with overrides).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TrickLabError(f"config must be a mapping of sections, got {type(data).__name__}")
    try:
        with one_resolution(like.resolved() if like is not None else None):
            return Config.model_validate(data)
    except ValidationError as err:
        raise _one_line(err, data) from None
    except ConfigError as err:  # cross-field checks name their key themselves
        raise ConfigError(err.key, err.value, err.allowed) from None


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (so ``0.1`` is a number, ``true`` a bool, ``null`` None); text that is not
    YAML stays text. A value beyond the bounds of a config file (:func:`load_yaml`) is refused."""
    if not text.strip():
        return ""
    try:
        return load_yaml(text)
    except _TooLarge as e:
        raise TrickLabError(f"--set value {echo(text)}: refused: {e.problem}") from None
    except yaml.YAMLError:
        return text


def _pairs(overrides: dict[str, Any] | list[str]) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrickLabError(f"--set {item!r}: expected key.sub=value, e.g. --set optim.lr=0.01")
        pairs.append((key.strip(), parse_value(value)))
    return pairs


def _set_path(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(parts[: i + 1]), nxt, "is a value, not a section")
        node = nxt
    node[parts[-1]] = value


#: The largest config or study file read, in bytes.
MAX_CONFIG_BYTES = 1 << 20
#: How deeply mappings and lists may nest in a config.
MAX_DEPTH = 50
#: How many values (mappings, lists and scalars) a config may hold once its aliases are expanded.
MAX_NODES = 100_000


class _TooLarge(yaml.YAMLError):
    """A YAML document beyond :data:`MAX_DEPTH` or :data:`MAX_NODES`."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no python tags) bounded for input from outside.

    Refuses a key written twice in one mapping, a key that is a list or a mapping, nesting deeper than
    :data:`MAX_DEPTH` (a few thousand levels would exhaust the stack) and a document that holds more than
    :data:`MAX_NODES` values with its aliases expanded: a 273-byte "billion laughs" alias bomb stops while it is
    composed, before any value is built. The expanded size of every node is counted once, as it is composed
    (an alias costs what its anchor holds), so the check itself is linear in the text.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[yaml.Node, int] = {}  # expanded size of every node composed so far

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node not in self._sizes:
                raise _TooLarge("an alias inside the node it refers to (a structure that contains itself)", mark)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"nested deeper than {MAX_DEPTH} levels", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[k] + self._sizes[v] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[v] for v in node.value)
        else:
            size = 1
        if size > MAX_NODES:
            raise _TooLarge(f"more than {MAX_NODES} values once its aliases are expanded", mark)
        self._sizes[node] = size
        return node

    def construct_object(self, node, deep=False):
        """A value PyYAML's own constructors fail on with a Python error (``!!int`` with no digits, a date like
        2024-13-45, an integer of more digits than Python converts) is a YAML error at the node's line."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a constructor raises
            shown = f" {echo(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            problem = f"cannot read the value{shown} ({type(e).__name__}: {e})"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # e.g. `!!set 0`: a mapping tag on a scalar
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, got {node.id}", node.start_mark)
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or a mapping", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # a scalar tagged as a collection, e.g. `!!set a: 1`
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value, not a list or a mapping", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {echo(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str | bytes) -> Any:
    """Parse YAML ``text`` safely and within bounds (see :class:`_BoundedLoader`); ``yaml.YAMLError`` (with the
    line where it has one) if it is not valid."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_text_file(path: str | Path, what: str = "config file", limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; a one-line :class:`TrickLabError` naming
    ``what`` and the file if it is missing, not a regular file (``/dev/zero``, a pipe) or larger than ``limit``."""
    p = Path(path)
    try:  # O_NONBLOCK: opening a pipe must not wait for a writer; it is refused just below
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise TrickLabError(f"{what} {str(p)!r} does not exist") from None
    except OSError as e:
        raise TrickLabError(f"{what} {str(p)!r} cannot be read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise TrickLabError(f"{what} {str(p)!r} cannot be read: it is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            kind = "not a regular file (a device, pipe or socket)"
            raise TrickLabError(f"{what} {str(p)!r} cannot be read: it is {kind}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TrickLabError(f"{what} {str(p)!r} cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if st.st_size > limit or len(data) > limit:
        size = max(st.st_size, len(data))
        mib = f"{size / 2**20:.1f} MiB, at most {limit / 2**20:g} MiB is read"
        raise TrickLabError(f"{what} {str(p)!r} is too large: {mib}")
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file safely (no python tags) and within bounds: at most :data:`MAX_CONFIG_BYTES` of a
    regular file, nested at most :data:`MAX_DEPTH` deep, at most :data:`MAX_NODES` values with aliases expanded.
    Errors are one line naming the file and the line.

    Every config, study and run folder's ``config.yaml`` is read here, so here an import path the file names
    (``model.name: pkg.mod:factory``) is refused unless its module is allowed
    (:func:`tricklab.plugins.check_file_paths`): a file is data, and nothing it names is imported before that check.
    """
    p = Path(path)
    raw = read_text_file(p)
    try:
        data = load_yaml(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        if isinstance(e, _TooLarge):
            raise TrickLabError(f"config file {str(p)!r}{where}: refused: {e.problem}") from None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TrickLabError(f"config file {str(p)!r}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrickLabError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    plugins.check_file_paths(data, f"config file {str(p)!r}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] = ()) -> Config:
    """The resolved config: defaults ← YAML file ← ``--set`` overrides, validated once at the end."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise wrong_type("path", path, "a YAML file's path (str or os.PathLike) or None")
    data = read_yaml(path) if path else {}
    for key, value in _pairs(overrides or []):
        _set_path(data, key, value)
    return validate(data)
