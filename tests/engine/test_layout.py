"""On CPU a conv net runs in channels-last layout (engine/placement.py): the model and the image splits are laid
out NHWC, an MLP is left alone, and a run's saved weights and returned model work as before. A conv net on CPU
evaluates in smaller batches than other models, with the same result."""

from __future__ import annotations

import safetensors.torch
import torch
from torch import nn

from tricklab.config import load_config
from tricklab.data.base import DatasetInfo, Splits, TensorData
from tricklab.engine.loop import evaluate
from tricklab.engine.placement import (
    EVAL_BATCH,
    EVAL_BATCH_CPU_CONV,
    channels_last,
    eval_batch_size,
    place_model,
    place_splits,
)
from tricklab.runner import run

CPU = torch.device("cpu")


def test_only_a_conv_net_on_cpu_is_laid_out_channels_last():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    assert channels_last(conv, CPU) and not channels_last(mlp, CPU)
    assert not channels_last(conv, torch.device("meta"))  # only CPU: elsewhere the layout is left as it is
    place_model(conv, CPU)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(conv(x), conv(x.contiguous(memory_format=torch.channels_last)))  # NCHW input still works


def test_image_splits_follow_the_model_and_flat_ones_are_untouched():
    def data(shape):
        return TensorData(torch.randn(6, *shape), torch.zeros(6, dtype=torch.long))

    info = DatasetInfo("t", (1, 8, 8), 2, ("a", "b"))
    images = Splits(data((1, 8, 8)), data((1, 8, 8)), data((1, 8, 8)), info)
    placed, where = place_splits(images, CPU, nhwc=True)
    assert where == "host"
    assert all(d.x.is_contiguous(memory_format=torch.channels_last) for d in (placed.train, placed.val, placed.test))
    assert torch.equal(placed.train.x, images.train.x) and torch.equal(placed.test.x, images.test.x)
    flat = Splits(data((64,)), data((64,)), data((64,)), info)
    assert place_splits(flat, CPU, nhwc=True)[0].train.x is flat.train.x


def test_a_cnn_run_trains_channels_last_and_saves_contiguous_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    overrides = {"data.name": "synthetic", "model.name": "cnn", "model.depth": 2, "model.width": 4, "train.epochs": 1}
    result = run(load_config(overrides=overrides), tmp_path / "run")
    conv = next(m for m in result.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    saved = safetensors.torch.load_file(str(result.run_dir / "model.safetensors"))
    assert all(t.is_contiguous() for t in saved.values())
    again = run(load_config(overrides=overrides), write=False)
    assert again.metrics["test_acc"] == result.metrics["test_acc"]  # deterministic in its layout too


def test_a_conv_net_on_cpu_evaluates_in_small_batches_with_the_same_result(monkeypatch):
    torch.manual_seed(0)
    conv = place_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), CPU)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    assert eval_batch_size(conv, CPU) == EVAL_BATCH_CPU_CONV < EVAL_BATCH == eval_batch_size(mlp, CPU)
    assert eval_batch_size(conv, torch.device("meta")) == EVAL_BATCH  # elsewhere (a GPU): large batches
    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 3, (300,))
    seen = []
    original = nn.Sequential.forward
    monkeypatch.setattr(nn.Sequential, "forward", lambda self, inp: seen.append(len(inp)) or original(self, inp))
    chosen = evaluate(conv, (x, y))
    assert seen == [128, 128, 44]  # the default for a conv net on CPU
    seen.clear()
    one_batch = evaluate(conv, (x, y), batch_size=EVAL_BATCH)
    assert seen == [300]
    assert chosen["acc"] == one_batch["acc"] and abs(chosen["loss"] - one_batch["loss"]) < 1e-6
