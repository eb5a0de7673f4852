"""Every script under ``benchmarks/`` answers ``--help``: the figures in the README are reproduced through them,
and ``gpu.py`` is meant to run once on a borrowed GPU machine, where a broken argument parser costs device time.

All scripts are run in one child process (``runpy``, ``sys.argv = [script, "--help"]``), so torch is imported
once. Not a benchmark: nothing is timed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))

CHILD = r"""
import contextlib, io, runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = "returned"
    except SystemExit as e:
        code = e.code
    except Exception as e:  # a broken parser or an import that fails
        code = f"{type(e).__name__}: {e}"
    print(f"{path}\t{code}\t{'usage:' in out.getvalue()}")
"""


def test_there_are_benchmark_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"overhead.py", "peers.py", "roofline.py", "precision.py", "gpu.py", "lab_speed.py"} <= names


def test_every_benchmark_script_answers_help_with_its_usage():
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, SCRIPTS)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line.count("\t") == 2]
    assert [Path(r[0]).name for r in rows] == [p.name for p in SCRIPTS]
    broken = [(Path(path).name, code, usage) for path, code, usage in rows if (code, usage) != ("0", "True")]
    assert broken == [], broken
