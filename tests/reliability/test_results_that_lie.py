"""Results that lie: a run that blew up never looks like a success; a last batch of one example never crashes.

A run whose losses stayed finite but huge (Adam at lr 1e10) used to exit 0 with chance accuracy. The rule
(:func:`tricklab.engine.loop.blown_up`): the reported model's test loss above 100 × ln(C), the loss of a
uniform guess, is a blow-up: ``train`` writes everything, marks ``metrics.json`` ``diverged: true`` and exits 3
with ``error: diverged: ...``; the lab records the run as a diverged result. Batch norm cannot train on a
single example, so ``fit()`` never yields a final batch of one: it joins the batch before it.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from tricklab_child import history, same_weights

import tricklab
from tricklab.cli.main import main
from tricklab.config import load_config
from tricklab.data import TensorBatches
from tricklab.engine.checkpoint import Interrupted
from tricklab.engine.loop import BLOWUP_FACTOR, DivergedError, blown_up, fit
from tricklab.errors import TrickLabError
from tricklab.events import Callback
from tricklab.models import MODELS
from tricklab.runner import run

TINY = ["data.name=synthetic", "model.depth=1", "model.width=16", "train.epochs=2", "train.threads=1"]
BLOWS_UP = ["optim.name=adam", "optim.lr=1e10"]  # every number stays finite: the NaN/Inf guard never fires


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# --- the rule ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 4, 10, 1000])
def test_the_bound_is_a_hundred_uniform_guesses_and_the_loss_before_training(classes):
    bound = BLOWUP_FACTOR * math.log(classes)
    assert BLOWUP_FACTOR == 100
    start = math.log(classes) * 1.3  # a typical freshly initialized net
    assert blown_up(bound * 0.999, classes, start) is None
    assert blown_up(math.log(classes), classes, start) is None  # a model that learned nothing is not blown up
    why = blown_up(bound * 1.001, classes, start)
    assert why is not None and f"> 100 × ln({classes}) = " in why and "before training" in why
    assert blown_up(bound * 2, classes, bound * 3) is None  # started higher and improved: not a blow-up
    assert blown_up(bound * 3, classes, bound * 2) is not None  # started high and got worse
    for bad in (math.nan, math.inf):
        assert blown_up(bad, classes, start) == f"test loss is {bad}"


def test_the_issue_s_run_is_blown_up_and_an_overfit_one_is_not():
    assert blown_up(2.8e34, 10, 3.1) == "test loss 2.8e+34 > 100 × ln(10) = 230 (and 3.1 before training)"
    assert blown_up(2.2, 10, 3.1) is None  # the overfitting study's test loss on MNIST-1D


# --- tricklab train ----------------------------------------------------------------------------------------------


def test_train_exits_3_saying_diverged_and_still_writes_everything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(TINY + BLOWS_UP), "--out", "run"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: diverged: test loss ") and "Traceback" not in err
    assert "> 100 × ln(4) = 139" in err and "'run'" in err
    metrics = json.loads(Path("run/metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["test_loss"] > 139
    for name in ("config.yaml", "history.jsonl", "model.safetensors", "scaler.json"):
        assert Path("run", name).is_file()


def test_a_healthy_run_is_not_marked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *sets(TINY), "--out", "run"]) == 0
    assert "diverged" not in json.loads(Path("run/metrics.json").read_text())


def test_raw_inputs_that_start_above_the_bound_and_improve_are_not_a_blow_up():
    """Raw 0–255 pixels: the test loss starts near 240 > 100 × ln 4 and falls; a result, not a divergence."""
    cfg = load_config(overrides=[*TINY, "data.scale=none", "data.subset=64", "data.batch_size=32", "train.epochs=1"])
    result = run(cfg, write=False)
    assert result.metrics["test_loss"] > 139 and "diverged" not in result.metrics


def test_python_raises_with_the_result_attached():
    with pytest.raises(DivergedError, match=r"^diverged: test loss ") as err:
        tricklab.run(None, TINY + BLOWS_UP, write=False)
    assert err.value.exit_code == 3 and err.value.result.metrics["diverged"] is True


def test_each_blown_up_ensemble_member_is_named():
    cfg = load_config(overrides=[*TINY, *BLOWS_UP, "averaging.ensemble=2", "train.epochs=1"])
    with pytest.raises(DivergedError, match=r"member 0: test loss .*; member 1: test loss ") as err:
        run(cfg, write=False)
    metrics = err.value.result.metrics
    assert metrics["diverged_members"] == 2 and all(m["diverged"] for m in metrics["members"])


class BlowUpAt(Callback):
    """At the start of epoch ``epoch``, multiply every weight by 1e4: the losses stay finite, but enormous."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            with torch.no_grad():
                for p in state.model.parameters():
                    p.mul_(1e4)


def test_the_reported_model_is_judged_restored_best_weights_are_not_a_blow_up():
    base = [*TINY, "train.epochs=3"]
    with pytest.raises(DivergedError):
        run(load_config(overrides=base), write=False, callbacks=[BlowUpAt(3)])
    es = ["early_stopping.enabled=true", "early_stopping.monitor=val_loss", "early_stopping.patience=1"]
    result = run(load_config(overrides=base + es), write=False, callbacks=[BlowUpAt(3)])
    assert result.history[-1]["val_loss"] > 139  # the last epoch blew up ...
    assert result.metrics["restored_best"] and "diverged" not in result.metrics  # ... but its weights are not kept


# --- the lab -----------------------------------------------------------------------------------------------------


def test_the_lab_records_a_blown_up_run_as_diverged(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: blowup\ndataset: synthetic\nbase: {model: {depth: 1, width: 16}, train: {epochs: 1}}\n"
        "variants:\n  plain: {}\n  blows_up: {optim.name: adam, optim.lr: 1.0e+10}\nseeds: 1\n"
    )
    out = tmp_path / "lab"
    assert main(["lab", "--config", str(study), "--out", str(out), "--workers", "1"]) == 0
    import sqlite3

    con = sqlite3.connect(out / "results.sqlite")
    got = {v: (s, json.loads(m)) for v, s, m in con.execute("SELECT variant, status, metrics FROM runs")}
    con.close()
    assert got["blows_up"][0] == "done" and got["blows_up"][1]["diverged"] is True
    assert "diverged" not in got["plain"][1]
    assert "<td>1 (1 diverged)</td>" in (out / "report.html").read_text()


# --- a final batch of one example -------------------------------------------------------------------------------


def sizes(n: int, batch_size: int, **kw) -> list[int]:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return [len(y) for _, y in TensorBatches(x, torch.arange(n), batch_size, **kw)]


@pytest.mark.parametrize(
    ("n", "batch_size", "merged"),
    [
        (10, 3, [3, 3, 4]),
        (129, 128, [129]),
        (4, 3, [4]),
        (7, 3, [3, 4]),
        (9, 3, [3, 3, 3]),
        (1, 3, [1]),
        (5, 1, [1] * 5),
    ],
)
def test_merge_single_never_yields_a_lone_final_example(n, batch_size, merged):
    for shuffle in (False, True):
        g = torch.Generator().manual_seed(0)
        b = TensorBatches(
            torch.zeros(n, 1), torch.arange(n), batch_size, shuffle=shuffle, generator=g, merge_single=True
        )
        assert [len(y) for _, y in b] == merged and len(b) == len(merged)
    assert sizes(10, 3, merge_single=True, drop_last=True) == [3, 3, 3]


def test_merging_keeps_the_data_order():
    """The same permutation per epoch with and without merging: only the last cut moves."""

    def order(merge):
        g = torch.Generator().manual_seed(3)
        b = TensorBatches(torch.zeros(10, 1), torch.arange(10), 3, shuffle=True, generator=g, merge_single=merge)
        return [torch.cat([y for _, y in b]).tolist() for _ in range(3)]

    assert order(True) == order(False)


NORMS = ["batch", "layer", "group", "weight", "none"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet", "inception"])
def test_every_model_and_norm_trains_when_the_last_batch_would_hold_one_example(name, norm):
    model = MODELS.get(name)((1, 8, 8), 4, norm=norm, width=64 if name == "mlp" else 8, depth=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 1, 8, 8, generator=g), torch.randint(0, 4, (9,), generator=g)
    state = fit(model, (x, y), epochs=2, batch_size=4, generator=g)
    assert state.steps_per_epoch == 2 and state.step == 4  # batches of 4 and 5
    assert all(math.isfinite(r["train_loss"]) for r in state.history)


def test_the_issue_s_command_trains(tmp_path, monkeypatch, capsys):
    """``--set data.subset=129 --set model.norm=batch``: 129 examples in batches of 128."""
    monkeypatch.chdir(tmp_path)
    args = ["data.name=synthetic", "data.subset=129", "model.norm=batch", "model.width=16", "train.epochs=1"]
    assert main(["train", *sets(args + ["train.threads=1", "averaging.swa_start=1"]), "--out", "run"]) == 0
    assert json.loads(Path("run/metrics.json").read_text())["steps"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.batch_size=1"], "data.batch_size = 1: the model cannot train on a batch of one example"),
        (["data.subset=1"], "the training set holds 1 example: the model cannot train on a batch of one example"),
    ],
)
def test_batch_norm_on_single_examples_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    args = ["data.name=synthetic", "model.norm=batch", "model.width=16", "train.epochs=1", "train.threads=1"]
    assert main(["train", *sets(args + extra), "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not Path("run").exists()


def test_a_lone_example_from_the_caller_s_own_batches_is_named_as_such():
    """fit() does not re-batch an iterable it is given: a batch of one reaching batch norm is one clear error."""
    model = MODELS.get("mlp")((1, 8, 8), 4, norm="batch", width=16, depth=1)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,))
    with pytest.raises(TrickLabError, match=r"^training batch 2 holds 1 example: the model cannot train on a batch"):
        fit(model, [(x[:4], y[:4]), (x[4:], y[4:])], epochs=1)


def test_resume_mid_epoch_is_bit_identical_with_a_merged_last_batch(tmp_path):
    """461 synthetic examples in batches of 20 with batch norm: 22 batches of 20 and one of 21 per epoch. A SIGINT
    21 batches into epoch 2 writes a mid-epoch checkpoint; resuming replays the same last two batches."""
    cfg = load_config(
        overrides=TINY + ["data.batch_size=20", "model.norm=batch", "train.epochs=3", "model.dropout=0.2"]
    )
    whole = run(cfg, tmp_path / "whole")
    assert whole.metrics["steps"] == 3 * 23

    class SignalAt(Callback):
        def on_step_end(self, state):
            if state.step == 23 + 21:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="epoch0001-batch00021"):
        run(cfg, tmp_path / "cut", callbacks=[SignalAt()])
    run(cfg, tmp_path / "cut", resume=True)
    same_weights(tmp_path / "whole", tmp_path / "cut")
    assert history(tmp_path / "whole") == history(tmp_path / "cut")
