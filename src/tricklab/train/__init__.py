"""Training: the ``fit()`` loop, evaluation, and running a whole config into a run directory."""

from tricklab.train.loop import evaluate, fit

__all__ = ["fit", "evaluate"]
