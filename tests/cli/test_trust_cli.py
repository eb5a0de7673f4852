"""The trust model through the installed ``tricklab`` console script, as a user meets it: the attacks of a hostile
config are refused in one line with nothing run, and a plugin module in the working folder is found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(sys.executable).with_name("tricklab")
TINY = ["--set", "data.name=synthetic", "--set", "train.epochs=1", "--set", "train.threads=1"]
NET = """import math
from torch import nn
import tricklab

from pathlib import Path
Path("imported.txt").write_text("mynets was imported")


@tricklab.model
def small(input_shape, num_classes, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))
"""


def tricklab(cwd: Path, *args: str, allow: str | None = None) -> subprocess.CompletedProcess:
    """The console script (not ``python -m``: the working folder is not on its sys.path by itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRICKLAB_ALLOW_MODULES")}
    if allow is not None:
        env["TRICKLAB_ALLOW_MODULES"] = allow
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(autouse=True)
def _script():
    if not SCRIPT.is_file():
        pytest.fail(f"the console script {SCRIPT} is not installed (pip install -e .)")


def test_the_issues_two_attacks_run_nothing(tmp_path):
    """``--set data.name=subprocess:getoutput`` (the user's own line: the function is not a tricklab part) and a
    study whose callback is ``os:system`` (a file: the module is not allowed; allowed, still not a part)."""
    owned = tmp_path / "owned.txt"
    err = one_error(tricklab(tmp_path, "train", "--set", "data.name=subprocess:getoutput", "--set",
                             f'data.kwargs={{cmd: "id > {owned}"}}', "--out", "r1"))
    assert "data.name = 'subprocess:getoutput': is not a declared tricklab dataset" in err
    study = {"name": "s", "dataset": "synthetic", "base": {"train": {"epochs": 1}},
             "variants": {"a": {}, "b": {"callbacks": [{"name": "os:system", "kwargs": {"command": f"id > {owned}"}}]}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    err = one_error(tricklab(tmp_path, "lab", "--config", "study.yaml", "--seeds", "1", "--out", "L"))
    assert "variants.b.callbacks[0].name = 'os:system': config file 'study.yaml' names module 'os'" in err
    assert "--allow-module os" in err
    err = one_error(tricklab(tmp_path, "lab", "--config", "study.yaml", "--seeds", "1", "--out", "L",
                             "--allow-module", "os"))
    assert "callbacks.name = 'os:system': is not a declared tricklab callback" in err
    assert not owned.exists() and not (tmp_path / "r1").exists() and not (tmp_path / "L").exists()


def test_the_console_script_imports_a_plugin_from_the_working_folder_only_when_allowed(tmp_path):
    (tmp_path / "mynets.py").write_text(NET)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"model": {"name": "mynets:small"}}))
    err = one_error(tricklab(tmp_path, "train", "--config", "cfg.yaml", *TINY, "--out", "r0"))
    assert "names module 'mynets', which is not allowed" in err
    assert not (tmp_path / "imported.txt").exists()  # refused before anything was imported
    done = tricklab(tmp_path, "train", "--config", "cfg.yaml", "--allow-module", "mynets", *TINY, "--out", "r1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test_acc" in done.stdout and (tmp_path / "imported.txt").is_file()
    done = tricklab(tmp_path, "train", "--set", "model.name=mynets:small", *TINY, "--out", "r2")  # the user's own
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_plugin_that_exits_at_import_is_one_line_naming_it(tmp_path):
    (tmp_path / "quitter.py").write_text("raise SystemExit(7)\n")
    err = one_error(tricklab(tmp_path, "train", "--set", "model.name=quitter:net", *TINY, "--out", "r"))
    assert "model.name = 'quitter:net': importing 'quitter' failed: SystemExit: 7" in err
