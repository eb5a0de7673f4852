"""Dropout (Srivastava et al. 2014): zero each unit with probability p in training, scale the rest by 1/(1−p).

Dense layers drop single units (``nn.Dropout``); conv layers drop whole channels (``nn.Dropout1d``/``nn.Dropout2d``,
Tompson et al. 2015), since neighbouring pixels of a feature map are strongly correlated and element dropout
on them barely regularizes. The lesson recommends rates of 10–50%.

Example::

    make_dropout(0.2, dims=0)   # Dropout(p=0.2)
    make_dropout(0.0, dims=2)   # None: nothing is inserted
"""

from __future__ import annotations

from torch import nn

from tricklab.errors import ConfigError


def make_dropout(p: float, dims: int) -> nn.Module | None:
    """The dropout module for ``dims`` (0 dense, 1 or 2 conv) at rate ``p``, or None when ``p`` is 0."""
    if not 0.0 <= p < 1.0:
        raise ConfigError("model.dropout", p, "must be in [0, 1)")
    if p == 0.0:
        return None
    return {0: nn.Dropout, 1: nn.Dropout1d, 2: nn.Dropout2d}[dims](p)
