"""End to end on real MNIST: the lesson's figures, reached through the config.

Settings were chosen over several seeds (see each constant) so that the thresholds hold with a margin, and
kept as short as that allows on a 2-core CPU. Each test prints what it measured.
"""

from __future__ import annotations

import time

import pytest

from tricklab.config import load_config
from tricklab.runner import run

pytestmark = [pytest.mark.mnist, pytest.mark.slow]

#: The lesson's MLP: 784-512-512-10, dropout 0.2, Adam, exponential decay. With the lesson's γ = 0.98 the
#: LR only falls to 0.83·lr in 10 epochs, the last epochs stay noisy and one seed of three ended at 97.6%;
#: a steeper decay lets it settle: γ = 0.7 over 8 epochs gave 98.40, 98.42 and 98.32% on seeds 0–2 (γ = 0.8 over
#: 10 epochs: 98.3–98.5%, for a quarter more time).
MLP = {
    "model.name": "mlp",
    "model.depth": 2,
    "model.width": 512,
    "model.dropout": 0.2,
    "optim.name": "adam",
    "optim.lr": 1e-3,
    "schedule.name": "exponential",
    "schedule.gamma": 0.7,
    "train.epochs": 8,
}

#: The CNN: 3 conv blocks of 32 channels with batch norm (28×28 → pool → 2 blocks at 14×14 → pool),
#: Adam at 3e-3 annealed by a cosine, batches of 64, 3 epochs: 99.2% over seeds 0–2. Without batch norm
#: or with 2 blocks it stayed at 98.7–99.0% for the same time.
CNN = {
    "model.name": "cnn",
    "model.depth": 3,
    "model.width": 32,
    "model.norm": "batch",
    "optim.name": "adam",
    "optim.lr": 3e-3,
    "schedule.name": "cosine",
    "data.batch_size": 64,
    "train.epochs": 3,
}

#: A 10-layer tanh MLP trained for one epoch on 10,000 examples with SGD + momentum (the lesson's init
#: experiment). N(0, 1) weights give every tanh a pre-activation of std ~sqrt(n_in): they saturate,
#: gradients vanish and the net stays near chance (10–11%); Glorot init trains to ~90%.
DEEP_TANH = {
    "model.name": "mlp",
    "model.depth": 10,
    "model.width": 128,
    "model.activation": "tanh",
    "optim.name": "momentum",
    "optim.lr": 0.01,
    "schedule.name": "constant",
    "data.subset": 10_000,
    "train.epochs": 1,
}


@pytest.fixture
def mnist(mnist_root, monkeypatch, train_threads):
    """Real MNIST, and the threads to train with (conftest's ``train_threads``: one per xdist worker)."""
    monkeypatch.setenv("TRICKLAB_DATA", str(mnist_root))
    return train_threads


def train(settings: dict, threads: int, **changes) -> tuple[dict, list[dict], float]:
    """Run the config on MNIST with ``threads`` (0: all cores); return its metrics, history and wall time."""
    cfg = load_config(overrides={"data.name": "mnist", "train.threads": threads, **settings, **changes})
    start = time.perf_counter()
    result = run(cfg, write=False)
    return result.metrics, result.history, time.perf_counter() - start


def test_mlp_with_dropout_adam_and_exponential_decay_reaches_98_percent(mnist, capsys):
    metrics, history, seconds = train(MLP, mnist)
    with capsys.disabled():
        print(
            f"\n784-512-512-10 MLP, dropout 0.2, Adam, exponential γ=0.7, 8 epochs: "
            f"test_acc {metrics['test_acc']:.4f} ({seconds:.0f} s)"
        )
    assert len(history) == 8
    assert [row["lr"] for row in history] == pytest.approx([1e-3 * 0.7**e for e in range(8)], rel=1e-12)
    assert metrics["test_acc"] >= 0.980


def test_cnn_reaches_99_percent(mnist, capsys):
    metrics, history, seconds = train(CNN, mnist)
    with capsys.disabled():
        print(
            f"\nCNN 3×32 + batch norm, Adam 3e-3 cosine, batch 64, 3 epochs: "
            f"test_acc {metrics['test_acc']:.4f} ({seconds:.0f} s)"
        )
    assert len(history) == 3
    assert metrics["test_acc"] >= 0.990


def test_deep_tanh_net_trains_clearly_worse_with_standard_normal_than_glorot_init(mnist, capsys):
    bad, _, t_bad = train(DEEP_TANH, mnist, **{"init.scheme": "standard_normal"})
    good, _, t_good = train(DEEP_TANH, mnist, **{"init.scheme": "glorot_normal"})
    with capsys.disabled():
        print(
            f"\n10-layer tanh MLP, 1 epoch on 10k: standard_normal test_acc {bad['test_acc']:.4f}, "
            f"glorot_normal {good['test_acc']:.4f} ({t_bad + t_good:.0f} s)"
        )
    assert good["test_acc"] >= 0.85
    assert good["test_acc"] - bad["test_acc"] >= 0.30
