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
