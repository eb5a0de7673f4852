"""tricklab: make deep networks train, show why, and measure how much each trick helps.

The front door: everything a user needs is importable from here (loaded on first use, so ``import tricklab``
stays fast). Example::

    result = tricklab.run({"data.name": "mnist1d", "train.epochs": 2}, write=False)   # one config, as `train`
    lab = tricklab.run_lab("dropout", dataset="synthetic", seeds=2, epochs=1)   # a study over seeds
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    doctor = tricklab.diagnose(net, (torch.randn(128, 1, 40), torch.randint(0, 10, (128,))), steps=20)

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
    "list_names": "tricklab.catalog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tricklab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
