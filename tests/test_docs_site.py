"""The documentation site builds strictly, carries what the code generates, and renders in a real browser.

One ``mkdocs build --strict`` (broken links, missing references and a generator that finds the code and its
docstrings disagreeing all fail it) into a temporary folder, shared by the tests of this module; headless Chromium
(Debian's ``chromium`` package) then screenshots the home page and the API page.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.docs


def mkdocs_build(config, out):
    """``mkdocs build --strict`` as CI runs it (not ``--quiet``: that hides the warnings strict mode counts)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its end of life, not our build's
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(out)],
        cwd=Path(config).parent, env=env, capture_output=True, text=True, timeout=300,
    )


def _build_site(out: Path) -> None:
    proc = mkdocs_build(REPO / "mkdocs.yml", out)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def site(built_once):
    """The site, built once per session (the tests only read it)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")
    return built_once("docs-site", _build_site)


def test_a_broken_link_fails_the_build_as_it_is_run_here(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")
    import yaml

    ours = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# home\n\nSee [the guide](guide.md#no-such-section).\n")
    (tmp_path / "docs" / "guide.md").write_text("# guide\n\nSee [nowhere](no-such-page.md).\n")
    config = {"site_name": "t", "validation": ours["validation"], "markdown_extensions": ["toc"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr and "no-such-section" in proc.stderr


def page(site, name):
    return (site / name / "index.html" if name else site / "index.html").read_text(encoding="utf-8")


def test_the_site_builds_strictly_with_every_page_of_the_nav(site):
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def sources(items):
        for item in items:
            for value in item.values():
                yield from sources(value) if isinstance(value, list) else [value]

    for source in sources(nav):
        built = site / Path(source).with_suffix("") / "index.html" if source != "index.md" else site / "index.html"
        assert built.is_file(), f"{source} was not built"


def test_the_api_page_documents_every_public_name(site):
    import tricklab

    html = page(site, "api")
    for name in tricklab.__all__:
        anchor = f'id="{tricklab._EXPORTS[name]}.{name}"'
        assert anchor in html, f"the API page has no entry for tricklab.{name}"


def test_the_config_reference_has_every_key_of_the_schema(site):
    from tricklab.config import Config

    html = page(site, "configuration")
    for section, field in Config.model_fields.items():
        model = field.annotation
        model = model.__args__[0] if section == "callbacks" else model
        for key in model.model_fields:
            assert f"<code>{section}.{key}</code>" in html, f"{section}.{key} missing from the config reference"
    # the names a key accepts come from its validator: every optimizer is listed on the optim.name row
    from tricklab.catalog import FAMILIES

    row = next(r for r in html.split("<tr>") if "<code>optim.name</code>" in r)
    for name in FAMILIES["optimizers"].names():
        assert f"<code>{name}</code>" in row
    # bounds come from the fields' constraints: model.dropout is Field(None, ge=0, lt=1)
    row = next(r for r in html.split("<tr>") if "<code>model.dropout</code>" in r)
    assert "≥ 0, &lt; 1" in row


def test_every_verdict_of_the_doctor_has_its_rule_threshold_and_figures(site):
    from tricklab.diagnostics.verdicts import CHECKS, EXPLODING_RATIO

    html = page(site, "verdicts")
    for name in CHECKS.names():
        assert f'id="{name.replace("_", "-")}"' in html, f"no section for verdict {name}"
    assert f"EXPLODING_RATIO</code> = {EXPLODING_RATIO:g}" in html
    assert "grad_ratio_first_last" in html  # a figure read from check_exploding's source
    assert "Pascanu et al. 2013" in html and "Prechelt" in html


def test_every_loop_bug_the_doctor_names_is_on_the_verdicts_page(site):
    from tricklab.diagnostics.loop_bugs import DECAY_DOMINATES, LOOP_CHECKS

    html = page(site, "verdicts")
    for name in LOOP_CHECKS.names():
        assert f"<code>{name}</code>" in html, f"no row for loop check {name}"
    assert f"DECAY_DOMINATES</code> = {DECAY_DOMINATES:g}" in html


def load_hooks():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(REPO / "docs"))
    return hooks


def test_a_threshold_the_docstring_gets_wrong_fails_the_build():
    hooks = load_hooks()
    from tricklab.diagnostics import verdicts

    assert hooks._thresholds(["``EXPLODING_RATIO`` 1e3"], verdicts) == ["`EXPLODING_RATIO` = 1000"]
    with pytest.raises(ValueError, match="says EXPLODING_RATIO = 1e4, the code has 1000.0"):
        hooks._thresholds(["``EXPLODING_RATIO`` 1e4"], verdicts)
    with pytest.raises(ValueError, match="NO_SUCH_LIMIT"):
        hooks._thresholds(["``NO_SUCH_LIMIT`` 3"], verdicts)


def test_a_check_the_docstring_table_does_not_describe_fails_the_build():
    hooks = load_hooks()
    from tricklab.diagnostics.verdicts import CHECKS

    CHECKS.register("undocumented_check", help="fires never", source="a test")(lambda findings, settings: None)
    try:
        with pytest.raises(ValueError, match="lacks the check\\(s\\) undocumented_check"):
            hooks.verdict_table()
    finally:
        CHECKS.unregister("undocumented_check")
    assert "undocumented_check" not in hooks.verdict_table()


def test_the_notebook_is_rendered_with_its_outputs_and_the_results_with_their_plots(site):
    html = page(site, "examples/lesson_dropout")
    assert "tricklab.run_lab" in html and "data:image/png;base64," in html  # code and a committed plot output
    results = page(site, "results")
    plots = re.findall(r'src="(\.\./results-plots/[^"]+\.png)"', results)
    assert plots and all((site / "results" / p).resolve().is_file() for p in plots)
    assert page(site, "results-mnist1d").count("<img") >= 10


def test_the_callback_order_table_follows_the_code(site):
    from tricklab import events

    html = page(site, "design")
    names = [n for n in dir(events) if n.startswith("ORDER_")]
    rows = re.findall(r"<td[^>]*>(-?\d+)</td>\s*<td><code>(ORDER_[A-Z0-9_]+)</code></td>", html)
    assert sorted(n for _, n in rows) == sorted(names)
    assert all(int(v) == getattr(events, n) for v, n in rows)


# --- in a real browser ----------------------------------------------------------------------------------------------


def png_stats(path):
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    counts = rgb.getcolors(maxcolors=1 << 24)  # [(pixels, (r, g, b)), ...]
    not_white = sum(n for n, colour in counts if min(colour) < 245) / (rgb.width * rgb.height)
    return rgb.size, len(counts), not_white


def chromium(*args, size=(1280, 900), timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", f"--window-size={size[0]},{size[1]}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install -y chromium (Debian's package)")
@pytest.mark.parametrize(("name", "title", "heading", "size"), [
    ("", "tricklab", "tricklab", (1280, 900)),
    ("api", "API reference - tricklab", "API reference", (1280, 2400)),  # tall: the first entries are in the shot
])
def test_the_home_page_and_the_api_page_render_in_chromium(site, tmp_path, name, title, heading, size):
    html_file = site / name / "index.html" if name else site / "index.html"
    shot = tmp_path / f"{name or 'home'}.png"
    proc = chromium(f"--screenshot={shot}", html_file.as_uri(), size=size)
    assert shot.is_file(), f"chromium wrote no screenshot:\n{proc.stderr[-2000:]}"
    shown, colours, not_white = png_stats(shot)
    assert shown == size
    assert colours >= 50, f"{shot.name}: only {colours} distinct colours: the page looks blank"
    assert not_white >= 0.03, f"{shot.name}: {not_white:.1%} of the pixels are not white: the page looks blank"
    dom = chromium("--dump-dom", html_file.as_uri()).stdout
    assert f"<title>{title}</title>" in dom
    assert re.search(rf"<h1[^>]*>{re.escape(heading)}", dom), f"the rendered page has no heading {heading!r}"
    if name == "api":  # the reference itself rendered: a documented function with its signature
        assert 'id="tricklab.api.run"' in dom and "write" in dom
