"""The lab: studies over seeds, their store, statistics and executors.

Called, the package is the verb: ``tricklab.lab("dropout", dataset="mnist1d", seeds=3)`` is
:func:`tricklab.api.lab` (see :mod:`tricklab._verbs`).
"""

from tricklab._verbs import make_callable

make_callable(__name__, "lab")
