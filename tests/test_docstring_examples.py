"""Every ``Example::`` block in the public API's docstrings runs as written."""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

import tricklab
from tricklab import api

DOCUMENTED = [tricklab, api.run, api.diagnose, api.run_lab, api.register_model]


def examples(obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    blocks = re.findall(r"Example::\n\n((?:(?: {4}.*)?\n)+)", doc + "\n")
    return [inspect.cleandoc("\n".join(line[4:] for line in b.splitlines())) for b in blocks]


@pytest.mark.parametrize("obj", DOCUMENTED, ids=lambda o: getattr(o, "__name__", "tricklab"))
def test_example_runs(obj, tmp_path, monkeypatch, mnist1d_root):
    blocks = examples(obj)
    assert blocks, f"{obj} has no Example:: block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(mnist1d_root))
    from tricklab.catalog import family

    before = set(family("models").names())
    try:
        for block in blocks:
            exec(compile(block, f"example of {obj}", "exec"), {"tricklab": tricklab, "torch": torch, "math": math})
    finally:
        for name in set(family("models").names()) - before:
            family("models").unregister(name)
