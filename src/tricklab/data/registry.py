"""The registry of datasets by name (``data.name``): each entry returns the official train/test sets, unscaled.

Built-in datasets register here from their own modules (:mod:`~tricklab.data.sources`, :mod:`~tricklab.data.cifar`,
:mod:`~tricklab.data.local`), which :mod:`tricklab.data` imports, so a name is known as soon as any part of
``tricklab.data`` is; outside code registers with ``tricklab.register_dataset``.
"""

from __future__ import annotations

from tricklab.registry import Registry

DATASETS: Registry = Registry("dataset")
