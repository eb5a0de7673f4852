"""The import layers of pyproject.toml's import-linter contract hold: no import against the layers, no import cycle,
and every module of tricklab has its layer (issue 23 point 2). Imports inside functions count like the others."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

importlinter = pytest.importorskip(
    "importlinter", reason="import-linter is not installed: pip install -c constraints.txt -e '.[dev]'"
)
grimp = pytest.importorskip("grimp", reason="grimp (import-linter's graph) is not installed")

from importlinter.api import read_configuration  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Packages whose modules sit in different layers: their own __init__ holds no code of a layer.
SPLIT_PACKAGES = {"tricklab", "tricklab.diagnostics", "tricklab.integrations", "tricklab.lab"}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("tricklab", cache_dir=None)


def layer_modules() -> list[str]:
    """Every module named in a layer of the layers contract (optional ones without their parentheses)."""
    contracts = read_configuration(str(REPO / "pyproject.toml"))["contracts_options"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [name.strip().strip("()") for layer in layers for name in re.split(r"[|:]", layer)]


def test_lint_imports_keeps_every_contract():
    """What CI runs: `lint-imports` from the repository's root, with the contracts of pyproject.toml."""
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_module_has_a_layer(graph):
    """A new module must be given its place in the contract: a module in no layer would be checked by nothing."""
    named = layer_modules()
    placed = lambda m: any(m == n or m.startswith(n + ".") for n in named)  # noqa: E731
    homeless = sorted(m for m in graph.modules if not placed(m) and m not in SPLIT_PACKAGES)
    assert not homeless, f"modules in no layer of pyproject.toml's [tool.importlinter] contract: {homeless}"
    missing = sorted(n for n in named if n not in graph.modules)
    assert not missing, f"the contract names modules that do not exist: {missing}"


def test_no_import_cycle_between_any_two_modules(graph):
    """Within a layer whose parts may import each other (``:``), nothing but this forbids a cycle across packages."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_the_contract_checks_holds_imports_made_inside_functions(graph):
    """DoctorResult.save() imports the report's writer when called (to keep matplotlib out of `import tricklab`):
    that import is in the graph, so an import inside a function cannot slip past the layers."""
    assert graph.direct_import_exists(importer="tricklab.diagnostics.doctor", imported="tricklab.report.doctor")
    details = graph.get_import_details(importer="tricklab.diagnostics.doctor", imported="tricklab.report.doctor")
    source = (REPO / "src" / "tricklab" / "diagnostics" / "doctor.py").read_text().splitlines()
    assert any(source[d["line_number"] - 1].startswith("        from ") for d in details), details
