"""The seams of ``fit()``: a NaN/Inf step guard and a strategy, each chosen once and called at fixed points of the
loop, so the step reads top to bottom (its numbers are pinned in ``test_loop_pinned.py``)."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import tricklab.engine.distributed as distributed_module
import tricklab.engine.loop as loop_module
from tricklab.engine.distributed import DDP
from tricklab.engine.guards import (
    DeferredGuard,
    ScalerGuard,
    StepGuard,
    SyncGuard,
    choose_guard,
)
from tricklab.engine.loop import NonFiniteError, fit
from tricklab.engine.precision import Precision
from tricklab.engine.strategy import SingleProcess, Strategy
from tricklab.errors import ConfigError
from tricklab.events import FitState

#: Names a branch in fit() would test to behave differently for DDP or for one of the guard's modes.
MODE_NAMES = {"ddp", "strategy", "world", "guard", "deferred", "deferred_check", "scaler", "precision"}


def _fit_tree() -> ast.FunctionDef:
    return ast.parse(textwrap.dedent(inspect.getsource(fit))).body[0]


def test_fits_step_fits_on_a_screen_and_never_branches_on_ddp_or_the_guards_mode():
    tree = _fit_tree()
    body = tree.body[1:]  # after the docstring
    assert isinstance(tree.body[0].value, ast.Constant)
    assert body[-1].end_lineno - body[0].lineno + 1 <= 60
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.IfExp | ast.While):
            assert not _read(node.test) & MODE_NAMES, ast.unparse(node.test)


def _read(test: ast.expr) -> set[str]:
    """The names and attributes a condition reads, leaving out the methods it calls (``guard.skips(state)`` asks the
    guard for this step's verdict, whatever its mode: that branch is the seam)."""
    called = {id(n) for c in ast.walk(test) if isinstance(c, ast.Call) for n in ast.walk(c.func)}
    nodes = [n for n in ast.walk(test) if id(n) not in called]
    return {n.id for n in nodes if isinstance(n, ast.Name)} | {n.attr for n in nodes if isinstance(n, ast.Attribute)}


def test_fits_docstring_pseudocode_names_the_calls_the_code_makes():
    """Every seam the code calls is in the pseudocode, in the code's order."""
    code = inspect.getsource(fit).split('"""')[2]
    doc = fit.__doc__.split("The loop, with its events")[1]
    calls = ["strategy.prepare", "guard.skips", "guard.step", "strategy.reduce", "guard.after_step",
             "guard.epoch_end", "strategy.epoch_end", "strategy.agree_stop"]  # fmt: skip
    events = ["on_fit_start", "on_epoch_start", "on_after_backward", "on_step_end", "on_epoch_end", "on_fit_end"]
    for seq in (calls, events):
        assert [s for s in seq if s in doc] == seq
        at_doc = [doc.index(s) for s in seq]
        assert at_doc == sorted(at_doc)
    for call in ("guard.skips", "guard.step", "guard.after_step", "guard.epoch_end", "strategy.epoch_end"):
        assert call + "(" in code
    for event in events:
        assert event in code
    at_code = [code.index(s) for s in ("strategy.prepare", "guard.skips", "guard.step", "_count", "guard.after_step")]
    assert at_code == sorted(at_code)


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    found = set()
    for node in ast.walk(tree):  # anywhere: module level, TYPE_CHECKING blocks and inside functions alike
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_loop_and_distributed_do_not_import_each_other():
    assert not any(m.startswith("tricklab.engine.distributed") for m in _imports(loop_module))
    assert not any(m.startswith("tricklab.engine.loop") for m in _imports(distributed_module))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _scaler_precision() -> Precision:
    precision = Precision("fp32", "cpu")
    precision.scaler = torch.amp.GradScaler("cpu")  # fp16's scaler (fp16 autocast itself needs CUDA)
    return precision


@pytest.mark.parametrize(
    ("fused", "deferred", "scaled", "expected"),
    [
        (False, None, False, SyncGuard),  # CPU: synchronous by default
        (True, None, False, SyncGuard),
        (True, True, False, DeferredGuard),  # a fused optimizer takes the found_inf flag
        (False, True, False, SyncGuard),  # one without it cannot defer
        (True, True, True, ScalerGuard),  # fp16: the scaler's guard, deferred or not
        (False, False, True, ScalerGuard),
    ],
)
def test_choose_guard_picks_one_guard_for_the_run(fused, deferred, scaled, expected):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    precision = _scaler_precision() if scaled else Precision("fp32", "cpu")
    guard = choose_guard(model, opt, precision, SingleProcess(), deferred=deferred, device=torch.device("cpu"))
    assert type(guard) is expected
    assert isinstance(guard, StepGuard)


def test_choose_guard_defers_by_default_on_cuda_only():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    cpu = Precision("fp32", "cpu")
    assert type(choose_guard(model, opt, cpu, SingleProcess(), device=torch.device("cuda"))) is DeferredGuard
    assert type(choose_guard(model, opt, cpu, SingleProcess(), device=torch.device("cpu"))) is SyncGuard


def test_choose_guard_refuses_a_bad_policy_or_limit_in_one_line():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"train\.nonfinite = 'ignore': one of stop, skip"):
        choose_guard(model, opt, Precision(), SingleProcess(), policy="ignore")
    with pytest.raises(ConfigError, match=r"train\.nonfinite_limit = -1: an integer >= 0"):
        choose_guard(model, opt, Precision(), SingleProcess(), limit=-1)


def test_single_process_and_ddp_are_strategies():
    assert isinstance(SingleProcess(), Strategy)
    assert isinstance(DDP(torch.device("cpu")), Strategy)  # outside a process group: rank 0 of 1


class Recording(SingleProcess):
    """One process, recording when fit() calls it; ``stop_after``: stop at that epoch's agreement, as another rank
    would make every rank stop; ``nan_at``: report a NaN at that step's check, as if another rank had seen one."""

    def __init__(self, stop_after: int | None = None, nan_at: int | None = None):
        self.calls: list[str] = []
        self.stop_after, self.nan_at, self.checks = stop_after, nan_at, 0

    def prepare(self, model, batches):
        self.calls.append("prepare")
        return super().prepare(model, batches)

    def reduce(self, loss_sum, correct, examples):
        self.calls.append("reduce")
        return super().reduce(loss_sum, correct, examples)

    def epoch_end(self, model):
        self.calls.append("epoch_end")

    def agree_stop(self, state: FitState):
        self.calls.append("agree_stop")
        state.stop = state.stop or state.epoch == self.stop_after

    def any_nonfinite(self, total):
        self.checks += 1
        return torch.full_like(total, math.nan) if self.checks == self.nan_at else total

    def name_ranks(self, culprit, device):
        return culprit if self.checks != self.nan_at else "rank 0: non-finite on rank 1 of 2"


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g)


def test_fit_calls_its_strategy_at_fixed_points():
    strategy = Recording()
    model = _mlp()
    fit(model, _data(), epochs=2, batch_size=16, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), ddp=strategy)
    epoch = ["reduce"] * 3 + ["epoch_end", "agree_stop"]
    assert strategy.calls == ["prepare", *epoch, *epoch]


def test_a_stop_agreed_by_the_strategy_ends_the_run():
    model = _mlp()
    strategy = Recording(stop_after=1)
    state = fit(model, _data(), epochs=3, batch_size=16, ddp=strategy)
    assert len(state.history) == 1 and state.stop


def test_a_nan_seen_elsewhere_stops_this_process_with_the_other_ranks_named():
    model = _mlp()
    with pytest.raises(NonFiniteError, match=r"step 2, batch 2: rank 0: non-finite on rank 1 of 2; stopped before"):
        fit(model, _data(), epochs=1, batch_size=16, ddp=Recording(nan_at=2))
