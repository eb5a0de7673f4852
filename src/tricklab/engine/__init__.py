"""Training: the ``fit()`` loop, evaluation, and running a whole config into a run directory."""

from tricklab.engine.loop import evaluate, fit

__all__ = ["fit", "evaluate"]
