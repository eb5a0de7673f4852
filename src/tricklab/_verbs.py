"""Subpackages that are also verbs: ``tricklab.lab(...)`` runs a lab and ``tricklab.report(...)`` renders one,
while ``tricklab.lab.studies`` and ``tricklab.report.doctor`` stay the modules they are.

Python sets a subpackage as an attribute of its parent once it is imported, so a function ``tricklab.lab`` would be
replaced by the package as soon as anything imports ``tricklab.lab.*``. Instead the package itself is made
callable: :func:`make_callable` gives its module object a class whose ``__call__`` is the verb in
:mod:`tricklab.api` (imported on the first call, so importing the package stays as light as it was), and whose
``__signature__`` is the verb's, so ``inspect.signature(tricklab.lab)`` and IDEs show the verb's arguments.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class CallablePackage(types.ModuleType):
    """A package that, called, runs the function of :mod:`tricklab.api` named by its ``__verb__``."""

    __verb__ = ""

    def _verb(self):
        from tricklab import api

        return getattr(api, self.__verb__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._verb()(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        return inspect.signature(self._verb())


def make_callable(module_name: str, verb: str) -> None:
    """Make the already imported module ``module_name`` callable as ``tricklab.api.<verb>``."""
    module = sys.modules[module_name]
    module.__class__ = type(f"CallablePackage[{verb}]", (CallablePackage,), {"__verb__": verb})
