"""Shared fixtures: tiny synthetic data, a boring model, and where real MNIST lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

#: The suite's longest tests, longest first (each trains on real MNIST for a minute or more on one core). They start
#: first so that pytest-xdist's two workers share the rest of the suite while they run, instead of one worker
#: starting one of them when the other has nothing left to do.
LONGEST_FIRST = (
    "tests/e2e/test_tricks_mnist.py::test_cnn_reaches_99_percent",
    "tests/e2e/test_tricks_mnist.py::test_mlp_with_dropout_adam_and_exponential_decay_reaches_98_percent",
    "tests/examples/test_notebooks.py::test_notebook_runs_without_errors_in_quick_setting",
    "tests/e2e/test_mnist_train.py::test_default_mlp_reaches_97_5_percent_in_3_epochs",
)


@pytest.fixture(scope="session")
def built_once(tmp_path_factory):
    """``built_once(name, build)``: a folder that ``build(folder)`` fills once per test session (:func:`build_once`)."""
    return lambda name, build: build_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def mnist1d_root(built_once) -> Path:
    """A data root (for ``TRICKLAB_DATA``) holding MNIST-1D's generated cache, made once per test session: the
    tests that run an example on MNIST-1D read it instead of generating the dataset again (seconds each time).
    Its generation and caching are tested in tests/data/test_datasets.py."""

    def generate(folder: Path) -> None:
        from tricklab.data.sources import mnist1d

        mnist1d(folder)

    return built_once("mnist1d", generate)


def build_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that ``build(folder)`` fills once per test session and the tests only read: with pytest-xdist, the
    first worker to ask builds it under a file lock in the session's folder and the other waits, then reads the
    same folder (a module's tests are shared out between the workers, so a module-scoped fixture would otherwise
    be built once by each). A build that fails leaves nothing: the next test to ask builds it again."""
    import shutil

    from filelock import FileLock  # a dependency of torch

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this session's folder, above each worker's own (never an older session's)
    folder = base / f"built-once-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def shared_data_dir() -> Path | None:
    """The folder holding mnist/ (env TRICKLAB_DATA, else ../shared/data beside the repo), or None."""
    for cand in (os.environ.get("TRICKLAB_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(cand).resolve()
    return None


def pytest_collection_modifyitems(config, items):
    """Order the tests so that the two xdist workers start with the longest ones, side by side.

    The README's command runs ``-n 2 --maxschedchunk 1``: xdist then gives each worker two tests to begin with
    (the 1st and 2nd to one worker, the 3rd and 4th to the other) and after that one test at a time to whichever
    worker has fewer than two waiting. So the longest test goes 1st with the first of the other tests behind it,
    the next longest 3rd and 4th, then the rest of :data:`LONGEST_FIRST`, the other ``slow`` tests, and the rest,
    each group in its usual order. Every worker sorts the same way (xdist requires the same order on each).
    """

    def rank(item) -> int:
        base = item.nodeid.split("[")[0]
        if base in LONGEST_FIRST:
            return LONGEST_FIRST.index(base)
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)  # a stable sort: the order within each group is kept
    longest = sum(item.nodeid.split("[")[0] in LONGEST_FIRST for item in items)
    if 0 < longest < len(items):  # a short test behind the longest, so the next longest go to the other worker
        items.insert(1, items.pop(longest))


@pytest.fixture
def train_threads() -> int:
    """``train.threads`` for a test that trains for minutes: 1 in a pytest-xdist worker (the suite runs a worker
    per core, so more threads would only contend with the other worker), 0 (every core) when pytest runs alone.
    Threads say where a run ran, not what it trains: the config's claim is the same either way."""
    return 1 if os.environ.get("PYTEST_XDIST_WORKER") else 0


@pytest.fixture
def mnist_root() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real MNIST files not found (set TRICKLAB_DATA to a folder holding mnist/)")
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run on 2-core machines beside other work: keep torch to one thread unless a test says otherwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def blobs():
    """A linearly separable 3-class problem in 2-D: (x_train, y_train, x_val, y_val)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]])
    y = torch.randint(0, 3, (300,), generator=g)
    x = centres[y] + 0.5 * torch.randn(300, 2, generator=g)
    return x[:240], y[:240], x[240:], y[240:]
