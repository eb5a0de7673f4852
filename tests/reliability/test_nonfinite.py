"""NaN/Inf in the loss, an input batch or the gradients stops training before the optimizer applies it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.config import load_config
from tricklab.engine import fit
from tricklab.engine.checkpoint import list_checkpoints, read_checkpoint
from tricklab.engine.loop import NonFiniteError
from tricklab.errors import ConfigError
from tricklab.events import Callback
from tricklab.runner import run


def data(n=64, bad_batch: int | None = None, value=float("nan")):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    if bad_batch is not None:
        x[bad_batch * 16 + 3, 1] = value
    return x, y


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


class Snapshot(Callback):
    """Copies of the weights after every optimizer step."""

    def __init__(self):
        self.after = []

    def on_step_end(self, state):
        self.after.append([p.detach().clone() for p in state.model.parameters()])


def same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_input_stops_before_the_update(value):
    m, snap = model(), Snapshot()
    x, y = data()
    x[1 * 16 + 3, 1] = value  # in the 2nd batch of epoch 1 (no shuffling below: batches are fixed)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    with pytest.raises(NonFiniteError) as err:
        fit(m, batches, epochs=2, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), callbacks=[snap])

    assert "epoch 1, step 2, batch 2" in str(err.value) and "input batch has 1 non-finite values" in str(err.value)
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
    assert len(snap.after) == 1 and same(snap.after[0], list(m.parameters()))  # the bad step changed nothing


def test_nonfinite_loss_stops_before_the_update():
    m, snap = model(), Snapshot()
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        loss = F.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] == 7 else loss

    with pytest.raises(NonFiniteError, match=r"epoch 2, step 7, batch 3: loss is nan"):
        fit(m, data(), epochs=3, loss_fn=loss_fn, batch_size=16, callbacks=[snap])
    assert len(snap.after) == 6 and same(snap.after[-1], list(m.parameters()))


def test_nonfinite_gradient_with_finite_loss_names_the_first_layer():
    m, snap = model(), Snapshot()
    m[2].weight.register_hook(lambda g: g * float("inf") if len(snap.after) == 4 else g)

    with pytest.raises(NonFiniteError) as err:
        fit(m, data(), epochs=3, batch_size=16, callbacks=[snap])

    msg = str(err.value)
    assert "epoch 2, step 5, batch 1" in msg and "first non-finite gradient in '2.weight'" in msg
    assert "loss is" not in msg
    assert same(snap.after[-1], list(m.parameters()))


def test_skip_drops_bad_batches_and_counts_them():
    m = model()
    x, y = data()
    x[1 * 16 + 3, 1] = float("nan")
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    state = fit(m, batches, epochs=3, nonfinite="skip", nonfinite_limit=3)

    assert state.nonfinite_skipped == 3 and state.step == 9  # one batch of 4 dropped in each epoch
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in state.history)


def test_skip_stops_past_the_limit():
    m = model()
    x, y = data()
    x[1 * 16 + 3, 1] = float("nan")
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]

    with pytest.raises(
        NonFiniteError, match=r"epoch 3, step 8, batch 2: .*3 batches skipped, more than train.nonfinite_limit=2"
    ):
        fit(m, batches, epochs=5, nonfinite="skip", nonfinite_limit=2)


@pytest.mark.parametrize(
    "policy, limit, key", [("abort", 10, "train.nonfinite"), ("skip", -1, "train.nonfinite_limit")]
)
def test_bad_policy_is_a_config_error(policy, limit, key):
    with pytest.raises(ConfigError, match=key):
        fit(model(), data(), nonfinite=policy, nonfinite_limit=limit)


def test_finite_training_is_unchanged_by_the_guard():
    """Same weights as a hand-written loop: the check reads, never writes."""
    m1, m2 = model(), model()
    x, y = data()
    fit(m1, [(x[:32], y[:32]), (x[32:], y[32:])], epochs=2, optimizer=torch.optim.SGD(m1.parameters(), lr=0.1))
    opt = torch.optim.SGD(m2.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in [(x[:32], y[:32]), (x[32:], y[32:])]:
            opt.zero_grad()
            F.cross_entropy(m2(xb), yb).backward()
            opt.step()
    assert same(list(m1.parameters()), list(m2.parameters()))


class PoisonFrom(Callback):
    """From epoch ``epoch`` on, the model's output is NaN (a forward hook)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            state.model.register_forward_hook(lambda mod, inp, out: out * float("nan"))


def test_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = load_config(
        overrides=["data.name=synthetic", "model.width=8", "model.depth=1", "train.epochs=5", "train.threads=1"]
    )
    with pytest.raises(NonFiniteError, match=r"epoch 3, step 9, batch 1: loss is nan"):
        run(cfg, tmp_path / "run", callbacks=[PoisonFrom(3)])

    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names[-1] == "epoch0002" and not any("epoch0003" in n for n in names)
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch0002")
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert (tmp_path / "run" / "config.yaml").exists()  # the run directory is kept for inspection / resume


def test_cli_exits_3_with_one_line(tmp_path):
    """A learning rate that makes SGD diverge: exit code 3, one line, no traceback."""
    args = ["--set", "data.name=synthetic", "--set", "optim.name=sgd", "--set", "optim.lr=1e5"]
    args += ["--set", "train.threads=1", "--set", "model.width=8", "--set", "model.depth=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "tricklab", "train", *args, "--out", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "TRICKLAB_DATA": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: non-finite values at epoch ") and "Traceback" not in proc.stderr
    assert "first non-finite gradient in" in lines[0] or "loss is" in lines[0]
    epoch = int(lines[0].split("epoch ")[1].split(",")[0])
    if epoch > 1:  # the checkpoints of the epochs before are intact
        read_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch{epoch - 1:04d}")
