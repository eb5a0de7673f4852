"""tricklab: make deep networks train, show why, and measure how much each trick helps.

The front door: everything a user needs is importable from here (loaded on first use, so ``import tricklab``
stays fast). The functions speak the command line's verbs: ``tricklab.train``, ``doctor``, ``lab``, ``report``,
``lr_find``, with ``create_model``, ``load_weights`` and ``load_run`` for models. Example::

    result = tricklab.train(data="mnist1d", epochs=2, write=False)       # one config, as `tricklab train`
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    mine = tricklab.train(model=net, data="mnist1d", epochs=1, out="runs/linear")   # a model of your own
    trained = tricklab.load_run("runs/linear")              # the run folder, back as the trained model
    lab = tricklab.lab("dropout", dataset="synthetic", seeds=2, epochs=1)   # a study over seeds, as `tricklab lab`
    doctor = tricklab.doctor(net, (torch.randn(128, 1, 40), torch.randint(0, 10, (128,))), steps=20)

``tricklab.lab`` and ``tricklab.report`` are also the subpackages of those names: each is made callable (see
:mod:`tricklab._verbs`), so the name is the verb whether or not the subpackage was imported. ``run``, ``run_lab``
and ``diagnose`` remain as the older names of ``train``, ``lab`` and ``doctor`` on a model.

``tricklab.register_model`` / ``register_dataset`` / ``register_callback`` make your own by name in any config;
``@tricklab.model`` / ``@tricklab.dataset`` / ``@tricklab.callback`` let a config name them by import path
(``mypkg.nets:small_cnn``); see the README's "Your own model and data".
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → module it lives in.
_EXPORTS = {
    "train": "tricklab.api",
    "doctor": "tricklab.api",
    "lab": "tricklab.api",
    "report": "tricklab.api",
    "lr_find": "tricklab.api",
    "create_model": "tricklab.api",
    "load_weights": "tricklab.api",
    "load_run": "tricklab.api",
    "fit": "tricklab.engine.loop",
    "evaluate": "tricklab.engine.loop",
    "run": "tricklab.api",
    "diagnose": "tricklab.api",
    "run_lab": "tricklab.api",
    "register_model": "tricklab.api",
    "register_dataset": "tricklab.api",
    "register_callback": "tricklab.api",
    "model": "tricklab.plugins",
    "dataset": "tricklab.plugins",
    "callback": "tricklab.plugins",
    "allow_modules": "tricklab.plugins",
    "as_config": "tricklab.api",
    "LabResult": "tricklab.api",
    "RunResult": "tricklab.runner",
    "DoctorResult": "tricklab.diagnostics.doctor",
    "Doctor": "tricklab.diagnostics.anywhere",
    "preflight": "tricklab.diagnostics.preflight",
    "PreflightResult": "tricklab.diagnostics.preflight",
    "Config": "tricklab.config",
    "load_config": "tricklab.config",
    "assemble": "tricklab.assembly",
    "Callback": "tricklab.events",
    "FitState": "tricklab.events",
    "TrickLabError": "tricklab.errors",
    "ConfigError": "tricklab.errors",
    "DataError": "tricklab.errors",
    "UnknownNameError": "tricklab.errors",
    "NonFiniteError": "tricklab.engine.guards",
    "DivergedError": "tricklab.engine.loop",
    "CheckpointError": "tricklab.engine.checkpoint",
    "Interrupted": "tricklab.engine.checkpoint",
    "FolderInUse": "tricklab.locks",
    "OutputError": "tricklab.outputs",
    "StoreError": "tricklab.lab.store",
    "LabInterrupted": "tricklab.lab.lab",
    "list_names": "tricklab.catalog",
}

#: Verbs named like a subpackage: the name is that package, callable as the verb of :data:`_EXPORTS` (importing
#: a subpackage sets it as an attribute here, so a function of the same name would be replaced by the package).
_PACKAGE_VERBS = frozenset({"lab", "report"})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tricklab' has no attribute {name!r}")
    if name in _PACKAGE_VERBS:  # the callable package, the same object before and after any import of it
        return importlib.import_module(f"tricklab.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
