"""Reports: the HTML pages, plots and Markdown drawn from runs, doctors, LR sweeps and labs.

Called, the package is the verb: ``tricklab.report("labs/mnist1d")`` is :func:`tricklab.api.report` (see
:mod:`tricklab._verbs`).
"""

from tricklab._verbs import make_callable

make_callable(__name__, "report")
