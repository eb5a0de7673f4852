"""The README is the contract with a newcomer: its set-up commands, CI, and the names it documents."""

import re
from pathlib import Path

from tricklab.catalog import FAMILIES

REPO = Path(__file__).resolve().parents[1]


def code_blocks(text):
    return re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_two_set_up_commands_and_ci_runs_the_test_command():
    text = (REPO / "README.md").read_text()
    first, second = code_blocks(text)[:2]
    assert text.index("```") < text.index("\n## "), "the commands come before any section"
    main_job, test_cmd = first.strip(), second.strip()
    assert "python3 -m venv .venv" in main_job and "-c constraints.txt" in main_job and "tricklab lab" in main_job
    assert "pytest" in test_cmd and "-c constraints.txt" in test_cmd
    assert test_cmd in (REPO / ".ci" / "run").read_text()


def test_the_getting_started_page_gives_the_readmes_two_commands():
    readme = [b.strip() for b in code_blocks((REPO / "README.md").read_text())[:2]]
    page = [b.strip() for b in code_blocks((REPO / "docs" / "getting-started.md").read_text())[:2]]
    assert page == readme


def test_the_test_command_installs_with_a_pinned_uv():
    test_cmd = code_blocks((REPO / "README.md").read_text())[1]
    assert "pip install -q -c constraints.txt uv &&" in test_cmd and "uv pip install" in test_cmd
    assert any(line.startswith("uv==") for line in (REPO / "constraints.txt").read_text().splitlines())


def test_constraints_pin_torch_to_the_cpu_build_on_disk():
    pins = (REPO / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins


def test_readme_documents_every_name_a_config_can_select():
    text = (REPO / "README.md").read_text()
    for family in ("datasets", "scalings", "models", "activations", "norms", "optimizers", "clip_modes", "schedules"):
        for name in FAMILIES[family].names():
            assert f"`{name}`" in text, f"README does not mention {family} name {name!r}"
    for name in FAMILIES["studies"].names():
        assert name in text


def test_model_defaults_table_matches_the_factories():
    from tricklab.config import load_config

    text = (REPO / "README.md").read_text()
    for name in ("mlp", "cnn", "resnet", "inception"):
        m = load_config(overrides=[f"model.name={name}"]).model
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` | "))
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        assert cells[1:] == [str(m.depth), str(m.width), m.activation, m.norm, f"{m.dropout:g}",
                             str(m.residual).lower()], row


#: Pages whose Python examples run with the README's (the README points to them for the details).
EXAMPLE_PAGES = ("README.md", "docs/your-own.md")


def test_every_python_example_in_the_readme_runs(tmp_path, monkeypatch, mnist1d_root):
    """Each ```python block of the README and of :data:`EXAMPLE_PAGES` runs as written (in a scratch folder,
    MNIST-1D read from the session's cache), in order."""
    blocks = [
        (page, block)
        for page in EXAMPLE_PAGES
        for block in re.findall(r"```python\n(.*?)```", (REPO / page).read_text(), flags=re.S)
    ]
    assert sum(page == "README.md" for page, _ in blocks) >= 2 and len({p for p, _ in blocks}) == len(EXAMPLE_PAGES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(mnist1d_root))
    from tricklab.catalog import family

    added = {f: set(family(f).names()) for f in ("models", "datasets")}
    try:
        for i, (page, block) in enumerate(blocks):
            exec(compile(block, f"{page} python block {i + 1}", "exec"), {"__name__": f"readme_{i}"})
    finally:
        for f, names in added.items():
            for name in set(family(f).names()) - names:
                family(f).unregister(name)
    assert (tmp_path / "labs" / "readme-example" / "table.csv").is_file()
    assert (tmp_path / "runs" / "readme-doctor" / "index.html").is_file()
