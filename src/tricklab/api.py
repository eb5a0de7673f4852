"""The public functions behind ``import tricklab``: the command line's verbs, models in and out, plugins.

``train``, ``doctor``, ``lab``, ``report`` and ``lr_find`` are thin doors onto the same workflows the CLI's
commands run (:mod:`tricklab.runner`, :mod:`tricklab.diagnostics.doctor`, :mod:`tricklab.lab`,
:mod:`tricklab.report.render`, :mod:`tricklab.lr_sweep`), whose objects all come from :mod:`tricklab.assembly`;
their keyword arguments are the CLI's flags (``epochs``, ``seed``, ``device``, ``steps``, ``out``). Where a config
names a model, ``model=`` takes your own instead: an ``nn.Module``, its class or a factory (:func:`model_name`).
``create_model``, ``load_weights`` and ``load_run`` build a model as a run does and bring a run's trained weights
back (safetensors only: reading a run folder never unpickles code). Bad input raises
:class:`tricklab.ConfigError` or :class:`tricklab.TrickLabError` with the same one-line messages the CLI prints.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tricklab.config import Config, load_config, validate
from tricklab.errors import ConfigError, TrickLabError, echo, wrong_type
from tricklab.outputs import Kind, write_file

ConfigLike = Config | Mapping[str, Any] | str | Path | None
#: A model where a config names one: a name (``"cnn"``), an ``nn.Module``, its class or a factory.
ModelLike = Any


def as_config(config: ConfigLike = None, overrides: Mapping[str, Any] | Iterable[str] = ()) -> Config:
    """A :class:`Config` from a ``Config``, a mapping of sections, a YAML file's path or None (the defaults),
    with ``overrides`` (``{"optim.lr": 0.01}`` or ``["optim.lr=0.01"]``) applied and validated."""
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, Config):
        return config.with_overrides(overrides) if overrides else config
    if isinstance(config, Mapping):  # the overrides go in before validation, as into a YAML file's data
        from tricklab.config import _pairs, _set_path

        data = _plain(config)
        for key, value in _pairs(overrides):
            _set_path(data, key, value)
        return validate(data)
    raise TrickLabError(f"config: got a {type(config).__name__}; expected a Config, a mapping, a YAML path or None")


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as dicts, and dotted keys (``"model.depth": 3``) expanded into sections."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        v = _plain(v) if isinstance(v, Mapping) and k not in ("kwargs",) else v
        node, parts = out, str(k).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TrickLabError(f"config: {k!r} sets a key inside {part!r}, which is a value")
        if isinstance(node.get(parts[-1]), dict) and isinstance(v, dict):
            twice = set(node[parts[-1]]) & set(v)
            if twice:
                raise TrickLabError(f"config: {k}.{sorted(twice)[0]} is set twice, nested and dotted; keep one")
            node[parts[-1]].update(v)
        elif parts[-1] in node:
            raise TrickLabError(f"config: {k} is set twice, nested and dotted; keep one of them")
        else:
            node[parts[-1]] = v
    return out


def train(
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    model: ModelLike = None,
    data: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    write: bool = True,
    resume: str | Path | None = None,
    callbacks: Iterable[Any] = (),
    progress: bool = False,
):
    """Train a whole config as ``tricklab train`` does; return a :class:`~tricklab.runner.RunResult`
    (``history``, ``metrics``, ``run_dir``, ``model``).

    ``config``: a ``Config``, a mapping (``{"model": {"name": "cnn"}}`` or dotted keys), a YAML path or None.
    ``model``: a model name, or your own ``nn.Module``, its class or a factory (see :func:`model_name`), also taken
    as the first argument (``tricklab.train(net, data="mnist1d")``); a module you pass is copied, so it stays as it
    was and ``result.model`` is the trained copy. ``data`` (``data.name``), ``epochs``, ``seed`` and ``device`` are
    the CLI's shorthands (``--epochs`` is ``train.epochs``); a shorthand and an override of the same key are refused
    together. ``write=False`` keeps everything in memory (no run directory). ``progress``: one line per epoch. A
    run that stops on NaN/Inf or blows up raises (:class:`~tricklab.NonFiniteError`,
    :class:`~tricklab.DivergedError` with the result attached), as ``tricklab train`` exits 3. :func:`run` is the
    same function under its earlier name. ``resume``: continue that run directory (``"auto"``: the newest under
    runs/) from its newest valid checkpoint with the config stored in it, as ``tricklab train --resume``; a model
    passed from Python is passed again (``model=``), nothing else is given.

    Example::

        result = tricklab.train({"data.name": "mnist1d", "train.epochs": 2}, write=False)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
        mine = tricklab.train(model=net, data="mnist1d", epochs=1, out="runs/linear")
        print(result.metrics["test_acc"], mine.history[-1]["val_acc"], mine.run_dir)
    """
    from tricklab.runner import run as run_config

    if out is not None and not isinstance(out, str | os.PathLike):
        raise wrong_type("out", out, "a run directory's path (str or os.PathLike) or None")
    _check_data_name(data, "train")
    cbs = list(callbacks)
    if progress:
        from tricklab.cli.progress import ProgressReporter

        cbs.append(ProgressReporter())
    if resume is not None:
        return _resume(
            resume,
            model,
            cbs,
            config=config,
            overrides=overrides,
            data=data,
            epochs=epochs,
            seed=seed,
            device=device,
            out=out,
            write=None if write else False,
        )
    shorthands = {"data.name": ("data", data), "train.epochs": ("epochs", epochs)}
    shorthands |= {"train.seed": ("seed", seed), "train.device": ("device", device)}
    cfg = config_with(config, overrides, shorthands, model)
    return run_config(cfg, out, callbacks=cbs, write=write)


def _resume(resume: str | Path, model: ModelLike, callbacks: list, **given: Any):
    """``train(resume=RUN_DIR)``: the run continued with its stored config (see :func:`train`)."""
    from tricklab.engine.rundir import find_resumable
    from tricklab.runner import run as run_config
    from tricklab.runner import stored_config

    if not isinstance(resume, str | os.PathLike):
        raise wrong_type("resume", resume, "a run directory's path (str or os.PathLike) or 'auto'")
    extra = sorted(k for k, v in given.items() if v is not None and not (k == "overrides" and not v))
    if extra:
        raise TrickLabError(
            f"resume: a run continues with the config stored in its config.yaml; leave out {', '.join(extra)} "
            "(allowed with resume: model, for a model passed from Python, and callbacks, progress)"
        )
    if model is not None:
        model_name(model)  # registered again under its name, so that the stored config finds it
    run_dir = find_resumable() if resume == "auto" else Path(resume)
    return run_config(stored_config(run_dir), run_dir, callbacks=callbacks, resume=True)


#: The earlier name of :func:`train`, kept working.
run = train


def config_with(
    config: ConfigLike,
    overrides: Mapping[str, Any] | Iterable[str],
    shorthands: Mapping[str, tuple[str, Any]],
    model: ModelLike = None,
) -> Config:
    """``config`` with ``overrides``, the shorthand arguments given (``{"train.epochs": ("epochs", 3)}``) and
    ``model`` as ``model.name``, validated once; a shorthand and an override of its key together are refused in one
    line, as ``--epochs`` and ``--set train.epochs`` are."""
    from tricklab.config import _pairs

    if _is_module(config) or callable(config) and not isinstance(config, Config | Mapping | str | os.PathLike):
        if model is not None:  # train(MyNet, ...): a model where the config goes is the model
            raise TrickLabError("model: given twice (first argument and model=); give it once")
        model, config = config, None
    overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
    given = dict(_pairs(overrides))
    extra: dict[str, Any] = {}
    for key, (argument, value) in {**shorthands, "model.name": ("model", model)}.items():
        if value is None:
            continue
        if key in given:
            raise TrickLabError(
                f"{argument}={echo(value)} and the override {key}={echo(given[key])} both set {key}: give one of them"
            )
        if key == "model.name":
            value = model_name(value)
        else:
            section, name = key.split(".")
            try:
                validate({section: {name: value}})
            except ConfigError as e:
                raise ConfigError(f"{argument} ({key})", value, e.allowed) from None
        extra[key] = value
    cfg = as_config(config, {**given, **extra})  # validated once: the model's settings against the model given
    if _is_module(model) and cfg.averaging.ensemble > 1:
        raise TrickLabError(
            f"model: got a built {type(model).__name__}, but averaging.ensemble = {cfg.averaging.ensemble} trains "
            "each member from its own fresh weights, which one built model cannot give; pass its class or a factory "
            f"(model={type(model).__name__} or model=lambda: {type(model).__name__}(...))"
        )
    return cfg


def _check_data_name(data: object, verb: str) -> None:
    if data is not None and not isinstance(data, str):
        raise wrong_type(
            "data",
            data,
            f"a dataset's name (data.name: 'mnist1d', a registered name or an import path); {verb} loads, splits "
            "and scales it itself (tensors of your own: tricklab.register_dataset, or tricklab.fit)",
        )


def _is_module(obj: object) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


#: The ``source`` of the registry entries :func:`model_name` makes, shown by ``tricklab list models``.
PASSED_MODEL = "passed as model= in Python"


def model_name(model: ModelLike, *, refuse_built: str = "") -> str:
    """The ``model.name`` under which a config runs ``model``: a name is itself; your own model is registered as a
    model plugin (``tricklab list models`` shows it) under ``<module>.<qualified name>`` of its class or factory,
    so the same model gets the same name, config hash and lab results every time.

    - a factory following the plugin contract, ``factory(input_shape, num_classes, **kwargs)`` (those two its
      required arguments, or named so), is registered as it is: its keyword arguments are ``model.kwargs`` and
      the shape keys it takes;
    - a class or factory called with no arguments (``MyNet``, ``lambda: MyNet(64)``) is called so for every model
      the run builds; its keyword arguments, if any, are ``model.kwargs``;
    - an ``nn.Module`` is deep-copied for every model the run builds, so the one you pass is never changed (and a
      lab or an ensemble, whose runs each need fresh weights, refuse it: ``refuse_built`` says why).
    """
    import copy
    import inspect

    from tricklab.plugins import signature_of

    if isinstance(model, str):
        return model
    if _is_module(model):
        if refuse_built:
            cls = type(model).__name__
            raise TrickLabError(
                f"model: got a built {cls}; {refuse_built}, which one built model cannot give: pass its class or a "
                f"factory (model={cls}, or model=lambda: {cls}(...))"
            )
        built = model

        def factory(input_shape, num_classes):
            return copy.deepcopy(built)

        return _register_model(type(built), factory, f"a copy of the {type(built).__name__} passed as model=")
    if not callable(model):
        raise wrong_type("model", model, "a model's name, an nn.Module, its class, or a factory returning one")
    sig = signature_of(model)
    told = sig is not None and {"input_shape", "num_classes"} <= set(sig.parameters)
    if sig is not None and (told or not _binds(sig)) and _binds(sig, (1,), 1):
        return _register_model(model, model, "")
    if sig is not None and not _binds(sig):
        raise wrong_type(
            "model",
            model,
            "a class or factory called with no arguments, or factory(input_shape, num_classes, **kwargs) "
            f"(this one's signature is {sig})",
        )
    made = model
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("input_shape", "num_classes")]
    for p in sig.parameters.values() if sig is not None else ():
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        elif p.kind is inspect.Parameter.VAR_KEYWORD and p.name not in ("input_shape", "num_classes"):
            params.append(p)

    def build(input_shape, num_classes, **kwargs):
        return made(**kwargs)

    build.__signature__ = inspect.Signature(params)
    build.__doc__ = getattr(made, "__doc__", None)
    return _register_model(made, build, "")


def _binds(sig, *args: Any) -> bool:
    try:
        sig.bind(*args)
    except TypeError:
        return False
    return True


def _register_model(named: Any, factory: Callable, help: str) -> str:
    from tricklab.catalog import family

    module = getattr(named, "__module__", None) or type(named).__module__
    qualname = getattr(named, "__qualname__", None) or type(named).__qualname__
    name = f"{module}.{qualname}"
    family("models").register(name, factory, help=help, source=PASSED_MODEL)
    return name


def diagnose(
    model,
    data,
    *,
    optimizer=None,
    loss_fn: Callable | None = None,
    steps: int = 200,
    every: int = 10,
    batch_size: int = 128,
    recheck: bool = True,
    seed: int = 0,
):
    """The doctor on any model that maps inputs to logits; returns a
    :class:`~tricklab.diagnostics.doctor.DoctorResult` (``verdicts`` with their layers and figures,
    ``prescription``, ``recheck``, ``save(dir)`` for the HTML report; it renders itself in Jupyter).

    ``data``: ``(x, y)`` tensors or any iterable of ``(x, y)`` batches (a ``DataLoader``). ``optimizer``: one
    over the model's parameters (default Adam, lr 1e-3). The model and optimizer are not changed: the doctor
    trains copies for ``steps`` steps, probing every ``every`` steps.

    Example::

        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 64), torch.nn.Sigmoid(),
                                  torch.nn.Linear(64, 10))
        x, y = torch.randn(256, 1, 40), torch.randint(0, 10, (256,))
        result = tricklab.diagnose(net, (x, y), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), steps=30)
        print([v.name for v in result.verdicts], result.prescription)
    """
    import torch.nn.functional as F

    from tricklab.diagnostics.doctor import diagnose_model

    return diagnose_model(
        model,
        data,
        optimizer=optimizer,
        loss_fn=loss_fn or F.cross_entropy,
        steps=steps,
        every=every,
        batch_size=batch_size,
        recheck=recheck,
        seed=seed,
    )


def doctor(
    config: ConfigLike | Any = None,
    overrides: Mapping[str, Any] | Iterable[str] | Any = (),
    *,
    model: ModelLike = None,
    data: Any = None,
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    recheck: bool = True,
    preflight: bool = False,
    out: str | Path | None = None,
    progress: bool = False,
    **diagnose_options: Any,
):
    """The doctor, as ``tricklab doctor`` runs it on a config, or as :func:`diagnose` runs it on a model of yours.

    On a config (``config``, ``overrides`` as for :func:`train`; ``model=`` your own model where the config names
    one, ``data`` a dataset's name): measures signal propagation at init, trains ``steps`` steps with probes
    (``diagnostics.steps``), re-runs with the prescription applied unless ``recheck=False``, and returns the
    :class:`~tricklab.diagnostics.doctor.DoctorResult`; ``out``: also write the report folder there (``index.html``,
    plots, ``doctor.json``, ``records.json``, ``signal.json``, ``config.yaml``), as ``tricklab doctor --out``.
    ``preflight=True``: only the pre-flight checks on one batch at init (``steps``: the overfit check's budget),
    returning a :class:`~tricklab.diagnostics.preflight.PreflightResult`, as ``tricklab doctor --preflight``.

    On a model: ``tricklab.doctor(net, (x, y))`` or ``doctor(model=net, data=loader)``, where ``data`` is ``(x, y)``
    tensors or an iterable of batches, is :func:`diagnose` (its options ``optimizer``, ``loss_fn``, ``every``,
    ``batch_size`` are taken here too; ``steps`` defaults to 200).

    Example::

        result = tricklab.doctor({"model.depth": 8, "model.width": 64, "model.activation": "sigmoid",
                                  "data.name": "mnist1d"}, steps=40, recheck=False)
        print([v.name for v in result.verdicts], result.prescription)
    """
    if _is_module(config):  # doctor(net, (x, y)): the model first, as diagnose takes it
        if model is not None:
            raise TrickLabError("doctor: a model given twice (first argument and model=); give it once")
        model, config = config, None
        if data is None and not (isinstance(overrides, tuple) and overrides == ()):
            data, overrides = overrides, ()
    if model is not None and data is not None and not isinstance(data, str):
        if not _is_module(model):
            raise wrong_type("model", model, "an nn.Module when data is tensors or batches (doctor on a model)")
        given = [n for n, v in (("config", config), ("overrides", overrides or None), ("device", device)) if v]
        given += ["preflight=True"] if preflight else []
        if given:
            raise TrickLabError(
                f"doctor on a model of yours takes no {', '.join(given)}: those set up a config's run "
                "(allowed: model, data, steps, seed, recheck, optimizer, loss_fn, every, batch_size)"
            )
        result = diagnose(
            model, data, steps=200 if steps is None else steps, recheck=recheck, seed=seed or 0, **diagnose_options
        )
        if out is not None:
            result.save(out)
        return result
    if diagnose_options:
        raise TrickLabError(
            f"doctor on a config takes no {', '.join(sorted(diagnose_options))}: those are for a model of yours "
            "with data tensors (the config sets the optimizer and the batch size)"
        )
    _check_data_name(data, "doctor")
    from tricklab.assembly import assemble
    from tricklab.config import MAX_DIAGNOSTIC_STEPS

    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_DIAGNOSTIC_STEPS
    ):
        allowed = f"an integer from 1 to {MAX_DIAGNOSTIC_STEPS} (training steps to probe: diagnostics.steps)"
        raise ConfigError("steps", steps, allowed)
    shorthands = {"data.name": ("data", data), "train.seed": ("seed", seed), "train.device": ("device", device)}
    if not preflight:
        shorthands["diagnostics.steps"] = ("steps", steps)
    cfg = config_with(config, overrides, shorthands, model)
    if preflight:
        if out is not None:
            raise ConfigError("out", out, "preflight writes nothing; leave it out")
        from tricklab.diagnostics.preflight import preflight as run_preflight

        prepared = assemble(cfg)
        train_split = prepared.splits.train
        n = min(cfg.data.batch_size, len(train_split))
        net = prepared.model.to(prepared.device)
        batch = (train_split.x[:n].to(prepared.device), train_split.y[:n].to(prepared.device))
        budget = {} if steps is None else {"steps": steps}
        return run_preflight(net, batch, num_classes=prepared.splits.info.num_classes, seed=cfg.train.seed, **budget)
    if out is not None:
        _check_new_folder(out, "report folder")
    from tricklab.diagnostics.doctor import run_doctor

    step_progress = None
    if progress:
        from tricklab.cli.progress import StepProgress

        step_progress = StepProgress
    result = run_doctor(cfg, assemble(cfg), recheck=recheck, progress=step_progress)
    if out is not None:
        result.save(out)
    return result



def _check_new_folder(out: Any, what: str) -> None:
    """``out`` must be a path (``str`` or ``os.PathLike``) where a new ``what`` can be written, as ``--out`` is."""
    from tricklab.cli.common import check_out_folder

    if not isinstance(out, str | os.PathLike):
        raise wrong_type("out", out, f"a {what}'s path (str or os.PathLike) or None")
    check_out_folder(Path(out), f"choose a new {what}", f"out {str(out)!r}")


def lr_find(
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    model: ModelLike = None,
    data: str | None = None,
    steps: int = 100,
    seed: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = False,
):
    """The LR range test (Smith 2017) on a config's data, model and optimizer, as ``tricklab lr-find`` runs it;
    return the :class:`~tricklab.tricks.lr_finder.LRFindResult` (``suggestion``, ``lr_min_div10``, ``clarity``,
    ``verdict``, ``reason``, the curve). ``steps``: training batches to sweep the LR over (2 to 10000). ``out``:
    also write ``lr_find.png``, ``lr_find.json`` and ``config.yaml`` there. ``model``, ``data``, ``seed``, ``device``
    as for :func:`train`. The model's weights are not kept, and the config's schedule, clipping and L1 are not used.

    Example::

        found = tricklab.lr_find(data="mnist1d", steps=50)
        print(found.suggestion, found.verdict)
    """
    from tricklab.lr_sweep import MAX_STEPS, find_lr, save_lr_find

    _check_data_name(data, "lr_find")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_STEPS:
        raise ConfigError("steps", steps, f"an integer from 2 to {MAX_STEPS} (training batches to sweep the LR over)")
    shorthands = {"data.name": ("data", data), "train.seed": ("seed", seed), "train.device": ("device", device)}
    cfg = config_with(config, overrides, shorthands, model)
    if out is not None:
        _check_new_folder(out, "folder")
    on_step = None
    if progress:
        from tricklab.cli.progress import StepProgress

        on_step = StepProgress("lr-find", steps)
    result = find_lr(cfg, steps, on_step=on_step)
    if out is not None:
        save_lr_find(Path(out), cfg, result, steps)
    return result


def report(
    lab_dir: str | Path,
    *,
    out: str | Path | None = None,
    markdown: bool | str | Path = False,
    force: bool = False,
) -> Path:
    """Re-render a lab's table, plots and HTML report from its database, as ``tricklab report`` does; return the
    path of ``report.html``.

    ``out``: write ``report.html`` and ``plots/`` there instead of the lab folder (which is then only read).
    ``markdown``: also write the findings as Markdown, ``True`` for ``results.md`` beside the report or a file's
    path, its plots in ``<stem>-plots/`` beside it. No output replaces a file tricklab did not write unless
    ``force=True`` (never a link, a folder, a device or the lab's database).

    Example::

        lab = tricklab.lab("dropout", dataset="synthetic", seeds=2, epochs=1, out="labs/synthetic")
        page = tricklab.report(lab.out, out="site", markdown=True)   # site/report.html, site/results.md
    """
    from rich.console import Console

    from tricklab.report.render import Names, render_lab

    for argument, value in (("lab_dir", lab_dir), ("out", out)):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise wrong_type(argument, value, "a folder's path (str or os.PathLike)")
    if not isinstance(markdown, bool | str | os.PathLike):
        raise wrong_type("markdown", markdown, "True, False or a Markdown file's path")
    names = Names("lab_dir", "out", "with out= (e.g. tricklab.report('{lab}', out='{name}-report'))")
    console = Console(file=io.StringIO(), width=160)  # the table is in the report; nothing is printed here
    path, _ = render_lab(
        Path(lab_dir),
        Path(out) if out is not None else None,
        None if markdown is False else True if markdown is True else Path(markdown),
        force=force,
        console=console,
        names=names,
    )
    return path


def create_model(
    model: ModelLike = None,
    config: ConfigLike = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    data: str | None = None,
    seed: int | None = None,
    **kwargs: Any,
):
    """A model built as a run builds it (:func:`tricklab.assembly.build_model`): for the dataset's input shape and
    classes, seeded with ``seed`` (default ``train.seed``), checked and initialized by ``init.scheme``.

    ``model``: a model's name (``"cnn"``, a registered name or an import path) or your own class or factory (see
    :func:`model_name`); None: the config's. ``kwargs``: the model's settings, the shape keys (``depth``, ``width``,
    ``activation``, ``norm``, ...) as ``model.<key>`` and a plugin's own arguments as ``model.kwargs``. ``config``,
    ``overrides``: the rest, as for :func:`train` (``data``: the dataset's name, which sets the input shape; it is
    loaded to build the model, as a run does).

    Example::

        net = tricklab.create_model("cnn", data="mnist1d", width=32)
    """
    from tricklab.assembly import build_model, load_data
    from tricklab.config import MODEL_SHAPE

    if isinstance(model, Config | Mapping | Path):
        if config is not None:
            raise TrickLabError("create_model: a config given twice (first argument and config=); give it once")
        model, config = None, model
    _check_data_name(data, "create_model")
    from tricklab.config import _pairs

    settings = {f"model.{k}" if k in MODEL_SHAPE else f"model.kwargs.{k}": v for k, v in kwargs.items()}
    given = dict(_pairs(dict(overrides) if isinstance(overrides, Mapping) else list(overrides)))
    both = sorted(set(settings) & set(given))
    if both:
        raise TrickLabError(f"create_model: {both[0]} is set twice (a keyword argument and an override); give one")
    cfg = config_with(config, {**given, **settings}, {"data.name": ("data", data)}, model)
    built, _ = build_model(cfg, load_data(cfg), cfg.train.seed if seed is None else seed)
    return built


def load_weights(model, source: str | Path, *, member: int | None = None):
    """Load a run's trained weights into ``model`` (in place) and return it.

    ``source``: a run folder (its ``model.safetensors``, or ``model_member<k>.safetensors`` of ensemble member
    ``member``) or a ``.safetensors`` file. Weights are read with safetensors, which holds tensors only: loading
    never runs code. Weights that do not fit the model (names, shapes, dtypes) raise a one-line
    :class:`~tricklab.CheckpointError` saying how they differ.

    Example::

        tricklab.train(data="mnist1d", epochs=1, out="runs/mlp")
        net = tricklab.load_weights(tricklab.create_model("mlp", data="mnist1d"), "runs/mlp")
    """
    import safetensors.torch

    from tricklab.engine.checkpoint import CheckpointError
    from tricklab.events import weights_mismatch

    if not _is_module(model):
        raise wrong_type("model", model, "an nn.Module to load the weights into")
    if not isinstance(source, str | os.PathLike):
        raise wrong_type("source", source, "a run folder's or a .safetensors file's path (str or os.PathLike)")
    path = Path(source)
    if path.is_dir():
        path = path / ("model.safetensors" if member is None else f"model_member{member}.safetensors")
        if not path.is_file() and member is None and any(path.parent.glob("model_member*.safetensors")):
            raise CheckpointError(
                f"{str(source)!r} holds an ensemble's members (model_member<k>.safetensors): choose one with member=k"
            )
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r}: no such weights file (a run folder holds model.safetensors)")
    try:
        weights = safetensors.torch.load_file(path)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: its own one-line reason
        raise CheckpointError(f"{str(path)!r}: not readable as safetensors weights ({type(e).__name__}: {e})") from None
    own = model.state_dict()
    wrong = weights_mismatch(own, weights)
    if wrong:
        raise CheckpointError(f"{str(path)!r} does not fit the {type(model).__name__}: {wrong}")
    with __import__("torch").no_grad():
        model.load_state_dict(weights)
    return model


def load_run(run_dir: str | Path, *, model: ModelLike = None, member: int | None = None):
    """A run folder back as the model it trained: built from its ``config.yaml`` as the run built it
    (:func:`create_model`), with its trained weights (:func:`load_weights`), in eval mode; a list of members for an
    ensemble unless ``member`` is given.

    ``model``: the model the run was trained with, when it came from Python (``train(model=MyNet)``): its class or
    factory, or a built one. The config is read as data (an import path in it must name an allowed module, as for
    any file) and the weights with safetensors: loading a run folder never unpickles anything. The model takes
    inputs as the run saw them: scaled by the run's data scaling (``scaler.json``), as ``assemble(cfg).splits``
    gives them.

    Example::

        tricklab.train(data="mnist1d", epochs=1, out="runs/mlp")
        net = tricklab.load_run("runs/mlp")
        splits = tricklab.assemble(tricklab.load_config("runs/mlp/config.yaml")).splits   # scaled as the run saw them
        logits = net(splits.test.x[:8])
    """
    from tricklab.assembly import build_model, load_data
    from tricklab.config import read_yaml

    if not isinstance(run_dir, str | os.PathLike):
        raise wrong_type("run_dir", run_dir, "a run folder's path (str or os.PathLike)")
    folder = Path(run_dir)
    if not (folder / "config.yaml").is_file():
        raise TrickLabError(f"{str(folder)!r}: holds no config.yaml; expected a run folder written by tricklab train")
    raw = read_yaml(folder / "config.yaml")
    if not isinstance(raw, dict):
        raise TrickLabError(f"{str(folder / 'config.yaml')!r}: not a config (a mapping of sections)")
    stored = (raw.get("model") or {}).get("name") if isinstance(raw.get("model"), dict) else None
    if model is not None:
        raw = {**raw, "model": {**(raw.get("model") or {}), "name": model_name(model)}}
    try:
        cfg = validate(raw)
    except ConfigError as e:
        if e.key == "model.name" and model is None:
            raise TrickLabError(
                f"{str(folder)!r}: its model {stored!r} is not known here (a model passed from Python is known only "
                f"in the session that passed it): pass it again, load_run(run_dir, model=<its class or factory>); "
                f"({e})"
            ) from None
        raise
    k = cfg.averaging.ensemble
    if member is not None and not (isinstance(member, int) and 0 <= member < k and k > 1):
        raise ConfigError("member", member, f"an ensemble member, 0 to {k - 1}" if k > 1 else "None: not an ensemble")
    members = [member] if member is not None else list(range(k)) if k > 1 else [None]
    splits = load_data(cfg)
    models = []
    for m in members:
        net, _ = build_model(cfg, splits, cfg.train.seed + (m or 0))
        models.append(load_weights(net, folder, member=m).eval())
    return models if member is None and k > 1 else models[0]


@dataclass
class LabResult:
    """A lab's outcome: one record per study variant (mean ± 95% CI of test accuracy over seeds, the paired
    difference with its baseline, p, the verdict), the report's path and the run counts. ``to_csv()``; renders
    as the report (tables, verdicts, plots) in Jupyter."""

    out: Path
    report: Path
    records: list[dict[str, Any]]
    done: int
    failed: int
    skipped: int
    wall_time_s: float
    failures: list[tuple[tuple, str]] = field(default_factory=list)
    executor: str = ""
    across: list[dict[str, Any]] = field(default_factory=list)  # :func:`across_records`: studies on several datasets

    def to_csv(self, path: str | Path | None = None, *, force: bool = False) -> str:
        """The records as CSV text; also written to ``path`` when given: a new path, or a table this method
        wrote before (by its header); another existing file only with ``force=True``, never a link, FIFO or
        device (:mod:`tricklab.outputs`)."""
        buf = io.StringIO()
        cols = list(self.records[0]) if self.records else list(RECORD_COLUMNS)
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(self.records)
        if path is not None:
            if not isinstance(path, str | os.PathLike):
                raise wrong_type("path", path, "a file's path (str or os.PathLike) or None")
            write_file(path, buf.getvalue(), LAB_TABLE, force=force, label=f"to_csv({str(path)!r})")
        return buf.getvalue()

    def _repr_html_(self) -> str:
        page = self.report.read_text(encoding="utf-8")
        body = page[page.index("<body>") + len("<body>") : page.rindex("</body>")]
        style = page[page.index("<style>") : page.index("</style>") + len("</style>")]
        return f"<div class='tricklab-lab'>{style.replace('body{', '.tricklab-lab{')}{body}</div>"


#: A lab table that :meth:`LabResult.to_csv` wrote, known by its header's first columns.
LAB_TABLE = Kind("lab table written by tricklab", b"study,dataset,variant,", at_start=True)

RECORD_COLUMNS = (
    "study",
    "dataset",
    "variant",
    "baseline",
    "seeds",
    "failed",
    "diverged",
    "test_acc_mean",
    "test_acc_ci_low",
    "test_acc_ci_high",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "p",
    "significant",
    "p_holm",
    "outcome",
    "prob_improvement",
    "prob_improvement_ci_low",
    "prob_improvement_ci_high",
    "test_acc_iqm",
    "seeds_needed",
    "decided_at",
    "decision_ci_low",
    "decision_ci_high",
    "margin_pp",
    "verdict",
    *(NO_SIGNAL_COLUMNS := ("no_signal_reason",)),
    *(SPEED_COLUMNS := ("steps_to_target_outcome", "steps_to_target_p_holm", "steps_to_target_ratio")),
)


def lab_records(lab_dir: str | Path) -> list[dict[str, Any]]:
    """One plain record per study variant in ``lab_dir``'s database, computed from its runs.

    ``outcome`` is ``better``, ``worse``, ``equivalent`` or ``undecided`` (``baseline`` for a baseline), decided with
    the Holm-adjusted ``p_holm`` and the study's ``margin_pp``; ``prob_improvement`` is the share of common seeds
    on which the variant beat its baseline (ties count half), with its 95% Wilson interval ``prob_improvement_ci_low``
    /``_high`` (:func:`tricklab.lab.improvement.improvement`); ``test_acc_iqm`` the interquartile mean of the test
    accuracy over seeds; ``seeds_needed`` (undecided only) how many seeds
    would likely decide it (with ``seeds="auto"``: the next look's seeds, or past the cap an estimate).
    ``significant`` is the unadjusted paired t-test's. ``decided_at`` (``seeds="auto"`` only): the seeds at the
    look that decided it; ``decision_ci_low``/``_high``: the interval the outcome rests on (the repeated 95%
    interval of the sequential procedure, else the t interval ``diff_ci_low``/``_high``). ``outcome`` is ``no signal``
    when neither arm learned, with ``no_signal_reason`` saying why. ``steps_to_target_*`` (studies that judge it,
    else None): its outcome, Holm-adjusted p and the median ratio of steps to target (variant / baseline).
    """
    from tricklab.lab.analysis import TEST_ACC
    from tricklab.lab.improvement import improvement, iqm
    from tricklab.lab.results import results

    records = []
    for r in results(lab_dir).studies:
        s, study, dataset = r.stats, r.study, r.dataset
        for v in s.variants:
            iv, c = v.intervals[TEST_ACC], v.comparison
            records.append(
                dict(
                    zip(
                        RECORD_COLUMNS,
                        (
                            study,
                            dataset,
                            v.name,
                            v.baseline,
                            len(v.seeds),
                            len(v.failed),
                            len(v.diverged),
                            iv.mean,
                            iv.lo,
                            iv.hi,
                            c.diff.mean if c else None,
                            c.diff.lo if c else None,
                            c.diff.hi if c else None,
                            c.p if c else None,
                            c.significant if c else None,
                            v.decision.p_holm if c else None,
                            v.decision.outcome if c else "baseline",
                            c.prob_improvement if c else None,
                            *((pi.lo, pi.hi) if (pi := improvement(c.diffs) if c else None) else (None, None)),
                            iqm(v.values[TEST_ACC].values()),
                            v.decision.seeds_needed if c else None,
                            v.decision.decided_at if c else None,
                            *_decision_interval(v),
                            s.margin_pp,
                            v.verdict,
                            *_extra_record(v),
                        ),
                        strict=True,
                    )
                )
            )
    return records


def _extra_record(v) -> tuple:
    """The record's ``no_signal_reason`` and ``steps_to_target_*`` values (None where they do not apply)."""
    reason = v.decision.reason if v.decision is not None and v.decision.reason else None
    d, c = v.speed_decisions.get("steps_to_target"), v.speed.get("steps_to_target")
    if d is None or c is None:
        return reason, None, None, None
    return reason, d.outcome, d.p_holm if math.isfinite(d.p_holm) else None, c.ratio if math.isfinite(c.ratio) else None


def across_records(lab_dir: str | Path) -> list[dict[str, Any]]:
    """One plain record per variant of a study run on several datasets (:mod:`tricklab.lab.across`): ``outcomes``
    (dataset → its outcome there), ``normalized`` (the mean over datasets of the share of the baseline's errors
    removed, Δ̄ / (1 − baseline accuracy)) with its stratified-bootstrap interval ``normalized_ci_low``/``_high``,
    ``mean_prob_improvement`` (P(better) averaged over datasets), ``outcome`` (better/worse when the interval
    excludes 0, else undecided) and ``datasets`` (those in the aggregate)."""
    from tricklab.lab.across import across
    from tricklab.lab.results import results

    return [
        {
            "study": a.study,
            "variant": a.variant,
            "baseline": a.baseline,
            "outcomes": {c.dataset: c.outcome for c in a.datasets},
            "normalized": a.normalized,
            "normalized_ci_low": a.lo,
            "normalized_ci_high": a.hi,
            "mean_prob_improvement": a.mean_prob,
            "outcome": a.outcome,
            "datasets": list(a.aggregated),
        }
        for a in across([r.stats for r in results(lab_dir).studies])
    ]


def _decision_interval(v) -> tuple[float | None, float | None]:
    """The interval the outcome was decided on: the repeated 95% interval for ``--seeds auto``, else the t interval."""
    c, d = v.comparison, v.decision
    if c is None or d is None:
        return None, None
    return d.interval if d.sequential and d.interval else (c.diff.lo, c.diff.hi)


def lab(
    study,
    *,
    model: ModelLike = None,
    dataset: str | list[str] | None = None,
    seeds: int | str | None = None,
    max_seeds: int | None = None,
    epochs: int | None = None,
    quick: bool = False,
    workers: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    executor: str = "process",
    address: str | None = None,
    max_retries: int | None = None,
    device: str | None = None,
    aggregate: str | None = None,
) -> LabResult:
    """Run studies over seeds as ``tricklab lab`` does; return a :class:`LabResult`. :func:`run_lab` is the same
    function under its earlier name.

    ``study``: a built-in study's name (``"dropout"``), a list of names, ``"all"``, a custom study's YAML path,
    a mapping with the same keys as that file (``name, dataset, base, baseline, variants, seeds, epochs,
    target_val_acc``) or a :class:`~tricklab.lab.studies.Study`. Plugin models and datasets run in worker
    processes when those can import them, else in this process (said in the progress line). Finished runs in
    ``out`` (default ``labs/<dataset>``) are skipped when run again. ``seeds="auto"`` runs 3 seeds, then adds
    seeds only to comparisons still undecided, up to ``max_seeds`` (default 10), with the group-sequential
    procedure of :mod:`tricklab.lab.sequential` (valid under that optional stopping).

    ``executor="ray"`` runs each (study, variant, seed) as a Ray task (``pip install 'tricklab[ray]'``): on a local
    Ray instance, on the cluster at ``address`` (``"auto"``, ``"ray://head:10001"``), or on the Ray this process
    already initialised; a run whose worker or node is lost is retried up to ``max_retries`` times (default 3), a run
    that raises is recorded failed. Results are written here only, and are the same as with ``executor="process"``.

    ``dataset`` may name several datasets (``"mnist,mnist1d"`` or a list): each study then runs on each, as one
    study instance per dataset, and the report adds the aggregate across them (:mod:`tricklab.lab.across`).
    ``aggregate="iqm"`` summarises each arm by its interquartile mean in the report (outcomes are unchanged).

    ``model``: every run of the studies trains your own model, a class or a factory (see :func:`model_name`; a
    built ``nn.Module`` is refused, since each seed and variant starts from fresh weights of its own). A study's
    settings it does not take (``model.width`` of the built-in studies) are refused, naming the key. ``device``:
    where every run trains (``train.device``, as ``--device``).

    Example::

        lab = tricklab.lab({"name": "bn", "dataset": "synthetic", "base": {"train": {"epochs": 2}},
                                "variants": {"plain": {}, "bn": {"model.norm": "batch"}}}, seeds=2)
        print(lab.records[1]["verdict"], lab.report)
    """
    from rich.console import Console

    from tricklab.lab.events import LabCounts
    from tricklab.lab.lab import run_lab as run_studies
    from tricklab.lab.progress import LabProgress
    from tricklab.lab.request import PYTHON, lab_folder, lab_options
    from tricklab.lab.studies import STUDIES, Study, custom_study, load_custom_study
    from tricklab.report.lab_report import build_report

    file_seeds = file_epochs = None
    if isinstance(study, Study):
        studies = [study]
    elif isinstance(study, Mapping):
        one, file_seeds, file_epochs = custom_study(_plain_study(study))
        studies = [one]
    elif isinstance(study, Path) or isinstance(study, str) and study.endswith((".yaml", ".yml")):
        one, file_seeds, file_epochs = load_custom_study(str(study))
        studies = [one]
    elif isinstance(study, str):
        studies = [STUDIES.get(n) for n in (STUDIES.names() if study == "all" else [study])]
    elif isinstance(study, (list, tuple)) and study and all(isinstance(n, str) for n in study):
        studies = [STUDIES.get(n) for n in study]
    else:
        raise TrickLabError(
            f"study: got {study!r}; expected a study name, a list of names, a YAML path, a mapping or a Study"
        )
    if model is not None:
        from dataclasses import replace

        name = model_name(model, refuse_built="a lab builds a fresh model for every seed and variant")
        studies = [replace(s, base={**s.base, "model.name": name}) for s in studies]
    opts = lab_options(
        PYTHON,
        dataset=dataset,
        seeds=seeds,
        max_seeds=max_seeds,
        epochs=epochs,
        quick=quick,
        workers=workers,
        executor=executor,
        address=address,
        max_retries=max_retries,
        file_seeds=file_seeds,
        file_epochs=file_epochs,
        device=device,
        aggregate=aggregate,
    )
    out = lab_folder(out, dataset, studies)
    console = Console(file=sys.stdout, width=120, force_terminal=False, force_jupyter=False)
    on_progress = LabProgress(console, live=False) if progress else None
    executor: dict[str, str] = {}

    def track(counts: LabCounts) -> None:
        executor["executor"] = counts.executor
        if on_progress:
            on_progress(counts)

    result = run_studies(
        studies, opts, out, command=_python_command(study, opts, model), on_progress=track, finish=build_report
    )  # the lab folder stays locked until its report is written
    report = result.finished
    return LabResult(
        out,
        report,
        lab_records(out),
        result.done,
        result.failed,
        result.skipped,
        result.wall_time_s,
        result.failures,
        executor.get("executor", ""),
        across_records(out),
    )


#: The earlier name of :func:`lab`, kept working.
run_lab = lab


def _plain_study(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}


def _python_command(study, opts, model: ModelLike = None) -> str:
    """The call that reproduces this lab: the study as given (a name, names, a YAML path, or the mapping itself)."""
    from tricklab.lab.studies import STUDIES, Study

    if isinstance(study, Mapping):
        given = repr(_plain_study(study))
    elif isinstance(study, Study):
        given = repr(study.name) if study.name in STUDIES and STUDIES.get(study.name) is study else "<a Study object>"
    else:
        given = repr(str(study) if isinstance(study, Path) else study)
    args = [given, "seeds='auto'", f"max_seeds={opts.max_seeds}"] if opts.max_seeds else [given, f"seeds={opts.seeds}"]
    dataset = ",".join(opts.datasets) if opts.datasets else opts.dataset
    args += [f"{k}={v!r}" for k, v in (("dataset", dataset), ("epochs", opts.epochs)) if v is not None]
    args += [f"aggregate={opts.aggregate!r}"] if opts.aggregate else []
    args += ["quick=True"] if opts.quick else []
    if model is not None:
        shown = repr(model) if isinstance(model, str) else getattr(model, "__qualname__", "<a model>")
        args.append(f"model={shown}")
    return f"tricklab.lab({', '.join(args)})"


# --- plugins ------------------------------------------------------------------------------------------------------


def _register(family: str, name: str, obj: Any, help: str):
    from tricklab.catalog import family as registry

    if not isinstance(name, str) or not name or ":" in name:
        raise TrickLabError(f"plugin name {name!r}: must be a non-empty name without ':'")
    reg = registry(family)

    def add(o: Any) -> Any:
        if not callable(o):
            raise TrickLabError(f"{family[:-1]} {name!r}: got a {type(o).__name__}, not a callable")
        try:
            return reg.register(name, o, help=help, source="registered in Python")
        except ValueError as e:
            raise TrickLabError(f"{e}: tricklab's own names cannot be replaced; choose another name") from None

    return add(obj) if obj is not None else add


def register_model(name: str, factory: Callable | None = None, *, help: str = ""):
    """Make ``factory(input_shape, num_classes, **kwargs) -> nn.Module`` available as ``model.name: <name>``;
    usable as a decorator. Registering a name again replaces your earlier one (a notebook cell run twice).

    Example::

        @tricklab.register_model("small_mlp")
        def small_mlp(input_shape, num_classes, hidden=64, dropout=0.0):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), hidden),
                                       torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, num_classes))

        tricklab.run({"model.name": "small_mlp", "model.dropout": 0.1, "data.name": "mnist1d"}, write=False)
    """
    return _register("models", name, factory, help)


def register_dataset(name: str, loader: Callable | None = None, *, help: str = ""):
    """Make ``loader(**kwargs)`` (``root=``/``path=`` when it takes them) available as ``data.name: <name>``.
    It returns ``(train, test)`` pairs of ``(x, y)``, ``(x_train, y_train, x_test, y_test)``, a mapping of those
    or a :class:`~tricklab.data.RawDataset`; tricklab carves validation and fits scaling as for built-ins."""
    return _register("datasets", name, loader, help)


def register_callback(name: str, factory: Callable | None = None, *, help: str = ""):
    """Make ``factory(**kwargs) -> Callback`` available as ``callbacks: [{name: <name>, kwargs: {...}}]``."""
    return _register("callbacks", name, factory, help)
