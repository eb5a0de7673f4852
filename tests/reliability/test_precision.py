"""``train.precision`` and ``train.compile`` (correctness, not speed: speed is ``benchmarks/precision.py``), the
NaN/Inf guard's deferred mode (the GPU path's, tested here on CPU with torch's fused optimizers) and where a
run's data is placed on a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from tricklab_child import Cut, CutAt, history, same_weights

from tricklab.config import Config, load_config
from tricklab.engine.loop import NonFiniteError, fit
from tricklab.engine.placement import placement
from tricklab.engine.precision import Precision
from tricklab.errors import ConfigError
from tricklab.lab.store import config_key
from tricklab.runner import run
from tricklab.tricks.optimizers import build_optimizer

BASE = [
    "data.name=synthetic",
    "model.width=16",
    "model.depth=1",
    "data.batch_size=32",
    "train.epochs=3",
    "train.threads=1",
    "train.device=cpu",
]


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))


# --- train.precision -----------------------------------------------------------------------------------------
def test_bf16_runs_the_forward_pass_in_bf16_keeps_fp32_weights_and_learns(tmp_path):
    seen: list[torch.dtype] = []
    cfg32 = load_config(overrides=BASE)
    cfg16 = load_config(overrides=[*BASE, "train.precision=bf16"])
    r32 = run(cfg32, tmp_path / "fp32")
    from tricklab.events import Callback

    class Hook(Callback):
        def on_fit_start(self, state):
            first = next(m for m in state.model.modules() if isinstance(m, torch.nn.Linear))
            first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))

    r16 = run(cfg16, tmp_path / "bf16", callbacks=[Hook()])
    model = r16.model
    assert torch.bfloat16 in seen  # the Linear layers ran in bf16 under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights did not
    first, last = r16.history[0]["train_loss"], r16.history[-1]["train_loss"]
    assert last < first  # it learns
    assert abs(r16.metrics["test_acc"] - r32.metrics["test_acc"]) < 0.15  # and about as well as fp32 here
    assert r16.metrics["test_acc"] != r32.metrics["test_acc"] or r16.history != r32.history  # not fp32 in disguise


def test_fp16_on_a_cpu_is_one_clear_error_before_anything_is_written(tmp_path):
    cfg = load_config(overrides=[*BASE, "train.precision=fp16"])
    with pytest.raises(ConfigError, match=r"train\.precision.*fp16.*CUDA"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="one of fp32, bf16, fp16"):
        Precision("fp8", "cpu")


def test_an_unknown_precision_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"train\.precision = .half.: must be one of"):
        load_config(overrides=[*BASE, "train.precision=half"])


@pytest.mark.parametrize("extra", [["train.precision=bf16"], ["train.compile=true"]], ids=["bf16", "compile"])
def test_resume_is_bit_identical_within_a_precision_and_compiled(extra, tmp_path):
    cfg = load_config(overrides=[*BASE, "model.dropout=0.2", *extra])
    ref = run(cfg, tmp_path / "ref").run_dir
    with pytest.raises(Cut):
        run(cfg, tmp_path / "cut", callbacks=[CutAt(step=22)])  # mid-epoch 2: resumes from epoch 1's checkpoint
    run(cfg, tmp_path / "cut", resume=True)
    same_weights(ref, tmp_path / "cut")
    assert history(tmp_path / "cut") == history(ref)


def test_compile_trains_the_same_weights_names_and_about_the_same_numbers(tmp_path):
    plain = run(load_config(overrides=BASE), tmp_path / "plain")
    compiled = run(load_config(overrides=[*BASE, "train.compile=true"]), tmp_path / "compiled")
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())  # no "_orig_mod." prefix
    for a, b in zip(plain.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # the same training, up to kernel rounding


def test_settings_at_their_default_leave_a_runs_identity_unchanged():
    d = Config().to_dict()
    older = json.loads(json.dumps(d))
    for key in ("precision", "compile"):
        del older["train"][key]
    assert config_key(d) == config_key(older)  # a lab run stored before these settings existed is the same run
    assert config_key(Config().with_overrides(["train.precision=bf16"]).to_dict()) != config_key(d)
    assert config_key(Config().with_overrides(["train.compile=true"]).to_dict()) != config_key(d)


# --- the NaN/Inf guard's deferred mode (no host sync per step) -----------------------------------------------
def _data(n=96):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    return x, y


class PoisonAt:
    """A batch iterable (no shuffling) whose batch ``k`` of each epoch in ``epochs`` holds a NaN input."""

    def __init__(self, x, y, k, epochs=(1,), batch=16):
        self.x, self.y, self.k, self.epochs, self.batch, self.epoch = x, y, k, set(epochs), batch, 0

    def __iter__(self):
        self.epoch += 1
        for i in range(0, len(self.y), self.batch):
            xb = self.x[i : i + self.batch].clone()
            if i // self.batch == self.k and self.epoch in self.epochs:
                xb[0, 0] = float("nan")
            yield xb, self.y[i : i + self.batch]

    def __len__(self):
        return len(self.y) // self.batch


def _train(policy, deferred, optimizer="momentum", k=3, epochs=2):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = build_optimizer(optimizer, model, lr=0.05, fused=True)
    x, y = _data()
    err = None
    try:
        state = fit(model, PoisonAt(x, y, k), epochs=epochs, optimizer=opt, nonfinite=policy, deferred_check=deferred)
    except NonFiniteError as e:
        err, state = e, None
    return model, state, err


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_deferred_stop_keeps_the_weights_from_before_the_bad_step(optimizer):
    sync_model, _, sync_err = _train("stop", False, optimizer)
    dev_model, _, dev_err = _train("stop", True, optimizer)
    assert sync_err is not None and dev_err is not None
    assert "step 4" in str(dev_err) and "stopped before the update" in str(dev_err)
    for a, b in zip(sync_model.parameters(), dev_model.parameters(), strict=True):
        assert torch.equal(a, b)  # every update from the bad step on was skipped on the device


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_deferred_skip_drops_the_bad_batch_like_the_synchronous_guard(optimizer):
    sync_model, sync_state, _ = _train("skip", False, optimizer)
    dev_model, dev_state, _ = _train("skip", True, optimizer)
    for a, b in zip(sync_model.parameters(), dev_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert dev_state.nonfinite_skipped == sync_state.nonfinite_skipped == 1
    for r1, r2 in zip(sync_state.history, dev_state.history, strict=True):
        assert r1["train_loss"] == r2["train_loss"] and r1["train_acc"] == r2["train_acc"]


def test_deferred_skip_of_the_very_first_step_leaves_no_garbage_momentum():
    sync_model, _, _ = _train("skip", False, "momentum", k=0)
    dev_model, _, _ = _train("skip", True, "momentum", k=0)
    for a, b in zip(sync_model.parameters(), dev_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_optimizer_without_a_found_inf_flag_keeps_the_synchronous_guard():
    model, _, err = _train("stop", True, "rmsprop")
    assert err is not None and "batch 4" in str(err)  # the synchronous message names the batch and culprit


# --- where the data lives on a GPU -----------------------------------------------------------------------------
def test_placement_puts_the_dataset_on_the_gpu_only_when_it_fits():
    cuda = torch.device("cuda")
    assert placement(10**9, torch.device("cpu"), None) == "host"
    assert placement(10**9, cuda, 4 * 10**9) == "device"
    assert placement(3 * 10**9, cuda, 4 * 10**9) == "pinned"  # more than half the free memory
    assert placement(10**9, cuda, None) == "pinned"
