"""Every notebook in examples/ runs top to bottom without a cell error, in its quick setting.

The notebooks read ``TRICKLAB_NOTEBOOK_QUICK=1`` in their parameter cell and then train on a small subset for one
epoch, so a run stays within CI's time; ``TRICKLAB_NOTEBOOK_THREADS`` gives their runs one torch thread in an xdist
worker (two threads beside the other worker's test only contend for the two cores). They are executed in memory
with nbclient (the committed file is never written) by an ipykernel ``python3`` kernel of this interpreter, in a
temporary working directory.
"""

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra: pip install -e '.[dev]'")
nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra: pip install -e '.[dev]'")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT_S = 600

pytestmark = [pytest.mark.mnist, pytest.mark.slow]


def test_examples_has_notebooks():
    assert NOTEBOOKS, f"no notebooks in {EXAMPLES}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors_in_quick_setting(path, mnist_root, tmp_path, monkeypatch, train_threads):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    monkeypatch.setenv("TRICKLAB_DATA", str(mnist_root))  # the kernel inherits this process's environment
    monkeypatch.setenv("TRICKLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TRICKLAB_NOTEBOOK_THREADS", str(train_threads))  # conftest: 1 beside another xdist worker
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # quick labs go to a temporary folder: keep it in pytest's
    nb = nbformat.read(path, as_version=4)
    # No kernel directories: "python3" is then ipykernel's own spec for this interpreter, never a user-installed one.
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
