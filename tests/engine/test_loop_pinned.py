"""``fit()``'s numbers, events and NaN/Inf verdicts, pinned: the same seed gives the same history, bit for bit.

The literals in :data:`PINNED` are what ``python tests/engine/test_loop_pinned.py`` printed on the code of
``fit()`` before its step guards and strategies were split out of it (main at commit 11749b4, torch 2.13 on an
x86-64 Xeon, one thread; float64 models but for bf16): each scenario below, run there, gave exactly these numbers
(``float.hex``), events and messages. The scenarios use only ``fit()``'s public arguments, so the script runs
unchanged on either side of that change. A CPU whose matrix kernels sum in another order may differ in the last
bits; on the machine that recorded them the comparison is exact.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from tricklab.engine.loop import NonFiniteError, fit
from tricklab.engine.precision import Precision
from tricklab.events import Callback, EpochTotals, FitState

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def _model(seed: int = 0, dtype: str = "double") -> nn.Module:
    torch.manual_seed(seed)
    return getattr(nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)), dtype)()


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


class Poisoned:
    """Batches of 16 in order (no shuffling); batch ``k`` of each epoch in ``epochs`` holds a NaN input."""

    def __init__(self, x, y, k, epochs=(1,)):
        self.x, self.y, self.k, self.epochs, self.epoch = x, y, k, set(epochs), 0

    def __iter__(self):
        self.epoch += 1
        for i in range(0, len(self.y), 16):
            xb = self.x[i : i + 16].clone()
            if i // 16 == self.k and self.epoch in self.epochs:
                xb[0, 0] = float("nan")
            yield xb, self.y[i : i + 16]

    def __len__(self):
        return (len(self.y) + 15) // 16


class Log(Callback):
    """Records the events (one letter each), skips the update of step ``skip_at`` and asks for gradient norms on
    even steps, recording them when they are handed over."""

    def __init__(self, skip_at: int | None = None):
        self.events, self.norms, self.skip_at = [], [], skip_at

    @property
    def wants_grad_norms(self) -> bool:
        return self._step % 2 == 0

    _step = 0

    def on_fit_start(self, state):
        self.events.append("F")

    def on_epoch_start(self, state):
        self.events.append("E")

    def on_after_backward(self, state):
        self.events.append("b")
        if state.grad_norms is not None:
            self.norms.append(float(state.grad_norms[2]).hex())
        if state.step == self.skip_at:
            state.skip_step = True

    def on_step_end(self, state):
        self.events.append("s")
        self._step = state.step

    def on_epoch_end(self, state):
        self.events.append("e")

    def on_fit_end(self, state):
        self.events.append("f")


def _scaled(init_scale: float) -> Precision:
    """fp16's gradient scaler, on the CPU: fp16 autocast needs CUDA, so the scaler stands alone here, but the way
    through the step (scaled backward, unscale, the loss-only guard, the scaler's step) is fp16's."""
    precision = Precision("fp32", "cpu")
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return precision


def _quadrupled(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 4 * F.cross_entropy(out, y)


def _rows(state: FitState) -> list[str]:
    """Each history row's numbers (:data:`KEYS`), exactly: ``float.hex``, space-separated."""
    return [" ".join(float(r[k]).hex() for k in KEYS if k in r) for r in state.history]


def _weights(model: nn.Module) -> str:
    return float(sum(p.detach().double().sum() for p in model.parameters())).hex()


def _run(optimizer: str, data, *, val=None, epochs=3, dtype="double", **kw) -> dict:
    model = _model(dtype=dtype)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01, fused=optimizer == "fused_adam")
    log = Log(skip_at=kw.pop("skip_at", None))
    g = torch.Generator().manual_seed(3)
    out: dict = {}
    try:
        state = fit(model, data, val, epochs=epochs, optimizer=opt, batch_size=16, generator=g, callbacks=[log], **kw)
        out.update(history=_rows(state), steps=state.step, skipped=state.nonfinite_skipped)
    except NonFiniteError as e:
        out["error"] = str(e)
    out.update(weights=_weights(model), events="".join(log.events), norms=log.norms)
    return out


def _resumed() -> dict:
    """Three epochs cut after step 10 (mid-epoch 2) and continued from a copy of the state there, as a checkpoint
    holds it: the model, the optimizer, the data order's generator at the epoch's start, the epoch's totals."""
    x, y = _data(97, 1)

    class Snapshot(Callback):
        def on_epoch_start(self, state):
            self.gen = g.get_state()

        def on_step_end(self, state):
            if state.step == 10:
                self.saved = copy.deepcopy(
                    {k: getattr(state, k) for k in ("epoch", "step", "batches_done", "history", "totals")}
                )
                self.saved.update(model=copy.deepcopy(model.state_dict()), opt=copy.deepcopy(opt.state_dict()))
                self.saved["gen"] = self.gen
                state.stop = True

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    snap = Snapshot()
    fit(model, (x, y), epochs=3, optimizer=opt, batch_size=16, generator=g, callbacks=[snap])
    s = snap.saved
    model = _model(seed=7)
    model.load_state_dict(s["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(s["opt"])
    g = torch.Generator()
    g.set_state(s["gen"])
    state = FitState(model=model, optimizer=opt, epochs=3, device=torch.device("cpu"))
    state.epoch, state.step, state.batches_done, state.history = s["epoch"], s["step"], s["batches_done"], s["history"]
    state.totals = s["totals"]
    assert isinstance(state.totals, EpochTotals)
    state = fit(model, (x, y), epochs=3, optimizer=opt, batch_size=16, generator=g, state=state)
    return {"history": _rows(state), "steps": state.step, "weights": _weights(model)}


def scenarios() -> dict[str, dict]:
    """Each way through the step: the synchronous guard (clean, skip, stop), the deferred on-device one (fused
    Adam's ``found_inf``: skip, stop), fp16's gradient scaler (its own skipped steps; a NaN loss skipped or
    stopped), bf16 autocast, a callback's ``skip_step``, gradient norms handed to the
    callbacks, a final batch of one merged into the one before, and a mid-epoch resume."""
    x, y = _data(97, 1)  # 6 batches of 16 and a lone example merged into the sixth
    val = _data(40, 2)
    poisoned = _data(96, 4)
    return {
        "sync_clean": _run("sgd", (x, y), val=val, skip_at=5),
        "sync_clean_adam": _run("adam", (x, y), val=val, deferred_check=False),
        "sync_skip": _run("sgd", Poisoned(*poisoned, k=2, epochs=(1, 2)), nonfinite="skip"),
        "sync_stop": _run("sgd", Poisoned(*poisoned, k=2, epochs=(2,))),
        "sync_limit": _run("sgd", Poisoned(*poisoned, k=2, epochs=(1, 2)), nonfinite="skip", nonfinite_limit=1),
        "deferred_clean": _run("fused_adam", (x, y), val=val, deferred_check=True, skip_at=4),
        "deferred_skip": _run(
            "fused_adam", Poisoned(*poisoned, k=1, epochs=(1, 3)), nonfinite="skip", deferred_check=True
        ),
        "deferred_stop": _run("fused_adam", Poisoned(*poisoned, k=3, epochs=(2,)), deferred_check=True),
        "bf16": _run("sgd", (x.float(), y), val=(val[0].float(), val[1]), precision="bf16", epochs=2, dtype="float"),
        "scaler_overflow": _run(  # the first 2 scaled losses overflow: the scaler skips them, halving its scale
            "sgd", (x.float(), y), val=(val[0].float(), val[1]), precision=_scaled(2.0**127), dtype="float",
            loss_fn=_quadrupled,
        ),  # fmt: skip
        "scaler_skip": _run("sgd", Poisoned(*poisoned, k=2, epochs=(1, 2)), nonfinite="skip", precision=_scaled(256)),
        "scaler_stop": _run("sgd", Poisoned(*poisoned, k=2, epochs=(2,)), precision=_scaled(256)),
        "resumed": _resumed(),
    }


#: What main's fit() gave (see the module docstring).
# fmt: off
PINNED: dict[str, dict] = {
    "sync_clean": {
        "history": [

            "0x1.216d2b380a705p+0 0x1.8699127966ed8p-2 0x1.20548911dc280p+0 0x1.4cccccccccccdp-2 0x1.999999999999ap-4",
            "0x1.1590a71a9f2ebp+0 0x1.db0d3224f2cdep-2 0x1.14aed6f4a87ffp+0 0x1.999999999999ap-2 0x1.999999999999ap-4",
            "0x1.0b3127daf5305p+0 0x1.db0d3224f2cdep-2 0x1.1058f329fe2efp+0 0x1.4cccccccccccdp-2 0x1.999999999999ap-4",
        ],
        "steps": 18,
        "skipped": 0,
        "weights": "-0x1.334ce41d9ee3ap+0",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [
            "0x1.6b874910b136ep-2", "0x1.01defb4d881d9p-1", "0x1.d9f11e1e1292ep-2", "0x1.a7a15525e79ccp-2",
            "0x1.66c7a5a966419p-2", "0x1.828cb7053702cp-2", "0x1.8d03f5a6cce6bp-2", "0x1.f62b1cb60143bp-2",
            "0x1.96f504d2f7d7ap-2",
        ],
    },
    "sync_clean_adam": {
        "history": [

            "0x1.2132c8973a2c1p+0 0x1.5c5f02a3a0fd6p-2 0x1.24a58fc9cbc95p+0 0x1.4cccccccccccdp-2 0x1.47ae147ae147bp-7",
            "0x1.14d5a1a03873fp+0 0x1.bb61a6449e59cp-2 0x1.1bd7a86f3aaaap+0 0x1.6666666666666p-2 0x1.47ae147ae147bp-7",
            "0x1.0d012d4644e88p+0 0x1.0d3224f2cddb1p-1 0x1.1682f6d97eb88p+0 0x1.999999999999ap-2 0x1.47ae147ae147bp-7",
        ],
        "steps": 18,
        "skipped": 0,
        "weights": "-0x1.5018f33a86e6bp+0",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [
            "0x1.6b874910b136ep-2", "0x1.028bf42af99a9p-1", "0x1.e1a0deb018b53p-2", "0x1.d323d52813571p-2",
            "0x1.9ef0a15e709dcp-2", "0x1.87820dabd4d20p-2", "0x1.6f03adde0d8a7p-2", "0x1.035a1f0d84f6ep-1",
            "0x1.7d3e3d1e566b4p-2",
        ],
    },
    "sync_skip": {
        "history": [
            "0x1.2b6b0e6105924p+0 0x1.4cccccccccccdp-2 0x1.999999999999ap-4",
            "0x1.17f84ce483003p+0 0x1.8cccccccccccdp-2 0x1.999999999999ap-4",
            "0x1.15d3c2e3ee72cp+0 0x1.a000000000000p-2 0x1.999999999999ap-4",
        ],
        "steps": 16,
        "skipped": 2,
        "weights": "-0x1.10628b7392850p+1",
        "events": "FEbsbsbsbsbseEbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [
            "0x1.49274e9c33ce6p-2", "0x1.995ccf02dcec7p-2", "0x1.0a2b22234dda6p-1", "0x1.69865aa4a370ep-2",
            "0x1.0094e45f4102bp-1", "0x1.ec51e9020d8c7p-3", "0x1.e373efa2df998p-2", "0x1.c71764d5c6ef9p-2",
        ],
    },
    "sync_stop": {
        "error": (
            "non-finite values at epoch 2, step 9, batch 3: loss is nan; input batch has 1 non-finite "
            "values; first non-finite gradient in '0.weight'; stopped before the update "
            "(train.nonfinite=stop; allowed: stop, skip)"
        ),
        "weights": "-0x1.7957286e229e9p+0",
        "events": "FEbsbsbsbsbsbseEbsbs",
        "norms": [
            "0x1.49274e9c33ce6p-2", "0x1.7303df7425d36p-2", "0x1.3eab9eb91740cp-1", "0x1.0bf93d2b9f5b0p-2",
        ],
    },
    "sync_limit": {
        "error": (
            "non-finite values at epoch 2, step 8, batch 3: loss is nan; input batch has 1 non-finite "
            "values; first non-finite gradient in '0.weight'; 2 batches skipped, more than "
            "train.nonfinite_limit=1"
        ),
        "weights": "-0x1.801a479b03564p+0",
        "events": "FEbsbsbsbsbseEbsbs",
        "norms": [
            "0x1.49274e9c33ce6p-2", "0x1.995ccf02dcec7p-2", "0x1.0a2b22234dda6p-1", "0x1.69865aa4a370ep-2",
        ],
    },
    "deferred_clean": {
        "history": [

            "0x1.2174e968a7e28p+0 0x1.66ed869912796p-2 0x1.269c25a1d8dfep+0 0x1.4cccccccccccdp-2 0x1.47ae147ae147bp-7",
            "0x1.16bcafccbe8e8p+0 0x1.bb61a6449e59cp-2 0x1.1d32f97eff959p+0 0x1.6666666666666p-2 0x1.47ae147ae147bp-7",
            "0x1.0e39699e285cdp+0 0x1.07eae2f8151d0p-1 0x1.175cab43eafc6p+0 0x1.8000000000000p-2 0x1.47ae147ae147bp-7",
        ],
        "steps": 18,
        "skipped": 0,
        "weights": "-0x1.54c8da3897e1ep+0",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [],
    },
    "deferred_skip": {
        "history": [
            "0x1.287e2d0bbf22dp+0 0x1.599999999999ap-2 0x1.47ae147ae147bp-7",
            "0x1.1d6602ffa2d53p+0 0x1.7555555555555p-2 0x1.47ae147ae147bp-7",
            "0x1.145779cdf8908p+0 0x1.ccccccccccccdp-2 0x1.47ae147ae147bp-7",
        ],
        "steps": 18,
        "skipped": 2,
        "weights": "-0x1.85ef88116ebd5p+0",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [],
    },
    "deferred_stop": {
        "error": (
            "non-finite values at epoch 2, step 10 (found at a deferred check, epoch 2 step 12); every "
            "update from that step on was skipped on the device: stopped before the update "
            "(train.nonfinite=stop; allowed: stop, skip)"
        ),
        "weights": "-0x1.4db0e6728b334p+0",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbs",
        "norms": [],
    },
    "bf16": {
        "history": [

            "0x1.2168f7376c34dp+0 0x1.7c0a8e83f5718p-2 0x1.1bcf740000000p+0 0x1.999999999999ap-2 0x1.999999999999ap-4",
            "0x1.130359ab8be05p+0 0x1.02a3a0fd5c5f0p-1 0x1.13087a0000000p+0 0x1.999999999999ap-2 0x1.999999999999ap-4",
        ],
        "steps": 12,
        "skipped": 0,
        "weights": "-0x1.323f6d1700000p+0",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [
            "0x1.6b79f80000000p-2", "0x1.01955a0000000p-1", "0x1.dab6ae0000000p-2", "0x1.90381e0000000p-2",
            "0x1.3187260000000p-2", "0x1.7173d00000000p-2",
        ],
    },
    "scaler_overflow": {
        "history": [

            "0x1.230687db0d322p+2 0x1.4741fab8be054p-2 0x1.1ccadc0000000p+2 0x1.6666666666666p-2 0x1.999999999999ap-4",
            "0x1.2c34fc2f8151dp+2 0x1.9bb61a6449e5ap-2 0x1.2117ac0000000p+2 0x1.0000000000000p-2 0x1.999999999999ap-4",
            "0x1.1da485376c34dp+2 0x1.7c0a8e83f5718p-2 0x1.09d1d60000000p+2 0x1.0cccccccccccdp-1 0x1.999999999999ap-4",
        ],
        "steps": 18,
        "skipped": 0,
        "weights": "0x1.6100589800000p-2",
        "events": "FEbsbsbsbsbsbseEbsbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [],
    },
    "scaler_skip": {
        "history": [
            "0x1.2b6b0e6105924p+0 0x1.4cccccccccccdp-2 0x1.999999999999ap-4",
            "0x1.17f84ce483003p+0 0x1.8cccccccccccdp-2 0x1.999999999999ap-4",
            "0x1.15d3c2e3ee72cp+0 0x1.a000000000000p-2 0x1.999999999999ap-4",
        ],
        "steps": 16,
        "skipped": 2,
        "weights": "-0x1.10628b7392850p+1",
        "events": "FEbsbsbsbsbseEbsbsbsbsbseEbsbsbsbsbsbsef",
        "norms": [],
    },
    "scaler_stop": {
        "error": (
            "non-finite values at epoch 2, step 9, batch 3: loss is nan; input batch has 1 non-finite "
            "values; first non-finite gradient in '0.weight'; stopped before the update "
            "(train.nonfinite=stop; allowed: stop, skip)"
        ),
        "weights": "-0x1.7957286e229e9p+0",
        "events": "FEbsbsbsbsbsbseEbsbs",
        "norms": [],
    },
    "resumed": {
        "history": [
            "0x1.216d2b380a705p+0 0x1.8699127966ed8p-2 0x1.999999999999ap-4",
            "0x1.13092f67bd81cp+0 0x1.02a3a0fd5c5f0p-1 0x1.999999999999ap-4",
            "0x1.0b476c71395f7p+0 0x1.f02a3a0fd5c5fp-2 0x1.999999999999ap-4",
        ],
        "steps": 18,
        "weights": "-0x1.2eb91db949068p+0",
    },
}
# fmt: on


def test_every_way_through_the_step_gives_the_pinned_numbers_events_and_messages():
    torch.set_num_threads(1)
    got = scenarios()
    assert got.keys() == PINNED.keys()
    for name, expected in PINNED.items():
        assert got[name] == expected, name


if __name__ == "__main__":
    import pprint

    torch.set_num_threads(1)
    sys.stdout.write(pprint.pformat(scenarios(), width=120, sort_dicts=False) + "\n")
