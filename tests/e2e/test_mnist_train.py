"""End to end on real MNIST: the defaults a newcomer relies on must reach the lesson's figures."""

import json

import pytest

from tricklab.cli.main import main

pytestmark = [pytest.mark.mnist, pytest.mark.slow]


def test_default_mlp_reaches_97_5_percent_in_3_epochs(mnist_root, tmp_path, monkeypatch, capsys, train_threads):
    monkeypatch.setenv("TRICKLAB_DATA", str(mnist_root))
    out = tmp_path / "run"
    # train.threads only says how many cores the default run may use (one per xdist worker), not what it trains
    assert main(["train", "--set", "train.epochs=3", "--set", f"train.threads={train_threads}", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert "test_acc" in capsys.readouterr().out
    with capsys.disabled():
        print(f"\ndefault MLP, 3 epochs: test_acc {metrics['test_acc']:.4f}")
    assert len(history) == 3
    assert metrics["test_acc"] >= 0.975
