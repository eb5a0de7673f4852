"""Names from a lab's database are shown as text in every report, never as markup.

A variant, study or command can hold anything a study file or a database holds: HTML tags, pipes that would split
a table cell, line breaks that would end a table row, backticks that would close a code span, ``~`` and ``$`` that
GitHub reads as strikethrough and math, a ``[text](url)`` link, rich's ``[/]`` markup. The Markdown page is parsed
with a CommonMark parser (markdown-it, with GitHub's tables) to check what a reader would see; the HTML report and
the terminal table must show the same names literally, and the plots must draw them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tricklab.cli.main import main
from tricklab.lab.lab import DB_NAME
from tricklab.lab.store import Store
from tricklab.report.lab_report import COLUMNS, build_report
from tricklab.report.markdown import build_markdown

NAMES = [
    "plain",
    "<b>bold</b>",
    "a|b",
    "two\nlines",
    "`tick`",
    "x```y",
    "~",
    "~struck~",
    "$\\frac$",
    "[click](http://example.com)",
    "*star* _under_",
    "&lt;",
    "[/]",
]
COMMAND = "tricklab lab tiny --out 'a``b' --dataset synthetic"


def hostile_lab(folder: Path) -> Path:
    folder.mkdir(parents=True)
    spec = {
        "name": "tiny",
        "doc": "Compares <script>alert(1)</script> & friends.",
        "dataset": "synthetic",
        "baseline": "plain",
        "variants": NAMES,
        "baselines": {n: "plain" for n in NAMES},
        "overrides": {n: {"note": n} for n in NAMES},
        "seeds": 2,
    }
    with Store(folder / DB_NAME) as store:
        store.save_study("tiny", "synthetic", spec, COMMAND)
        for i, name in enumerate(NAMES):
            for seed in range(2):
                key = ("tiny", name, seed, "synthetic")
                store.ensure(*key, config={}, config_hash="0" * 16)
                acc = 0.5 + i / 100 + seed / 50
                history = [{"epoch": 1, "val_acc": acc}]
                store.mark_done(key, {"test_acc": acc, "wall_time_s": 1.0}, history, "0" * 16)
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    lab = hostile_lab(tmp_path_factory.mktemp("escape") / "lab")
    page = build_markdown(lab, lab.parent / "results.md")
    html = build_report(lab).read_text()
    return page.read_text(), html


def parse(text: str):
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(text)


def cells(tokens) -> list[list[str]]:
    """The text of every table row's cells, as a reader sees them."""
    rows, row, inside = [], None, False
    for t in tokens:
        if t.type == "tr_open":
            row = []
        elif t.type in ("td_open", "th_open"):
            inside = True
            row.append("")
        elif t.type in ("td_close", "th_close"):
            inside = False
        elif t.type == "tr_close":
            rows.append(row)
        elif inside and t.type == "inline":
            row[-1] += "".join(c.content for c in t.children if c.type in ("text", "code_inline"))
            for c in t.children:
                internal = c.type == "link_open" and c.attrGet("href").startswith("#")  # the summary's study link
                if c.type not in ("text", "code_inline", "strong_open", "strong_close", "link_close") and not internal:
                    row[-1] += f"<MARKUP {c.type}>"
    return rows


def test_every_name_is_one_literal_table_cell(rendered):
    text, _ = rendered
    rows = cells(parse(text))
    section = [r for r in rows if len(r) == len(COLUMNS)]
    summary = [r for r in rows if len(r) == 7]  # study, comparison, Δ, p, outcome, P(better), seeds
    assert len(section) == 1 + len(NAMES) and len(summary) == len(NAMES)  # headers included: nothing split or merged
    assert [r[0] for r in section[1:]] == [" ".join(n.split()) for n in NAMES]
    assert [r[1] for r in summary[1:]] == [f"{' '.join(n.split())} vs plain" for n in NAMES[1:]]
    assert not any("<MARKUP" in c for r in rows for c in r)


def test_no_name_becomes_html_a_link_strikethrough_or_math(rendered):
    text, _ = rendered
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)
    assert "<b>" not in html and "<script>" not in html and "<s>" not in html
    assert 'href="http://example.com"' not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&amp;lt;" in html  # shown as typed
    outside_code = re.sub(r"(?s)\n(`{3,})\n.*?\n\1\n", "\n", text)  # the configs' code block shows names as typed
    assert "$\\frac$:" in text and not re.search(r"(?<!\\)\$", outside_code)  # GitHub would start math at a bare $
    assert not re.search(r"(?<!\\)~", outside_code)  # nor strikethrough at a bare ~


def test_verdicts_and_headings_stay_on_one_line(rendered):
    text, _ = rendered
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and " vs plain" in line]
    assert len(verdicts) == len(NAMES) - 1
    assert "\nlines" not in text.split("```")[0]  # the name's line break never ends a row or a list item


def test_code_blocks_and_spans_hold_any_backticks(rendered):
    text, _ = rendered
    tokens = parse(text)
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == 1 and "x```y:" in fences[0].content and "two\nlines:" in fences[0].content
    codes = [c.content for t in tokens if t.type == "inline" for c in t.children if c.type == "code_inline"]
    assert COMMAND in codes  # the command is one code span, backticks and all


def test_the_html_report_escapes_every_name(rendered):
    _, html = rendered
    assert "<b>bold</b>" not in html and "<script>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "&amp;lt;" in html and "a|b" in html


def test_the_terminal_table_prints_rich_markup_as_text(tmp_path, capsys):
    lab = hostile_lab(tmp_path / "lab")
    assert main(["report", str(lab)]) == 0
    out = capsys.readouterr().out
    assert "[/]" in out and "<b>bold</b>" in out and "$\\frac$" in out


STUDY = """
name: tilde
dataset: synthetic
base: {model: {depth: 1, width: 8}, train: {epochs: 1, threads: 1}, data: {subset: 64}}
baseline: "~"
variants:
  "~": {}
  wide: {model.width: 16}
seeds: 2
"""


def test_a_variant_named_tilde_is_a_name_not_the_home_folder(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY)
    assert main(["lab", "--config", "study.yaml", "--out", "lab", "--workers", "1"]) == 0
    assert main(["report", "lab", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "vs ~" in out
    page = (tmp_path / "lab" / "results.md").read_text()
    assert "| \\~ | 2 |" in page and "wide vs \\~" in page
    assert list(home.iterdir()) == [] and not (tmp_path / "~").exists()
    with Store(tmp_path / "lab" / DB_NAME, readonly=True) as store:
        assert {r.variant for r in store.rows()} == {"~", "wide"}


def test_an_unquoted_tilde_is_yaml_null_and_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "study.yaml").write_text(STUDY.replace('"~"', "~"))
    assert main(["lab", "--config", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "lab")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: study.") and "Traceback" not in err
    assert "YAML reads an unquoted ~ as null: quote it ('~')" in err
    assert not (tmp_path / "lab").exists()
