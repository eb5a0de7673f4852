"""The tricks, one module each: the math as pure functions, a thin callback where the loop must call it, and, for
a family a config sets, its section, builder and PyTorch translation (:mod:`tricklab.tricks.family`).

The families are imported here in the order their callbacks are built (a checkpoint keys each callback by its
position): the optimizer's L1 penalty, clipping, the LR schedule, early stopping, averaging (init, norms and
scaling add none).
"""

from tricklab.tricks import init  # noqa: I001,F401  (the families, in this order)
from tricklab.tricks import optimizers  # noqa: F401
from tricklab.tricks import clipping  # noqa: F401
from tricklab.tricks import schedules  # noqa: F401
from tricklab.tricks import early_stopping  # noqa: F401
from tricklab.tricks import averaging  # noqa: F401
from tricklab.tricks import norms  # noqa: F401
from tricklab.tricks import scaling  # noqa: F401
