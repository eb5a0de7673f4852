import sys
from pathlib import Path

import pytest

PKG = Path(__file__).parent / "pkg"
if str(PKG) not in sys.path:  # the test plugin package is importable, as an installed one would be
    sys.path.insert(0, str(PKG))


@pytest.fixture(autouse=True)
def plugin_on_pythonpath(monkeypatch):
    """Child processes (the CLI in a subprocess) find it too; spawned lab workers inherit sys.path."""
    monkeypatch.setenv("PYTHONPATH", str(PKG))
