"""Outputs never destroy inputs, and a results database that lies is refused before anything is written.

Every file a command writes as its result goes through :mod:`tricklab.outputs`: a new path, or a file of
tricklab's own kind (recognised by its marker), or another regular file with ``--force``; never a link, a FIFO, a
device, a folder or the command's own input. ``tricklab report`` reads ``results.sqlite`` read-only, checks that it
is a regular file holding tricklab's tables and values in range, and only then writes, so a refused database leaves
the existing report as it was. A read-only lab is rendered elsewhere with ``--out``. A Hypothesis property damages
databases at random: the report renders or refuses in one line, and a refusal never touches the report there.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tricklab.cli.main import main
from tricklab.errors import MAX_MESSAGE
from tricklab.lab.lab import DB_NAME
from tricklab.lab.store import Store, StoreError
from tricklab.outputs import MARKDOWN, PNG, OutputError, atomic_write, check_target, write_file

ROOT = os.geteuid() == 0
LONG = "x" * 300  # longer than any file name the OS allows (255 bytes)
SPEC = {
    "name": "tiny",
    "doc": "A tiny study.",
    "dataset": "synthetic",
    "baseline": "plain",
    "variants": ["plain", "wide"],
    "baselines": {"plain": "plain", "wide": "plain"},
    "overrides": {"plain": {}, "wide": {"model.width": 16}},
    "target_val_acc": 0.6,
    "seeds": 2,
}


def make_lab(folder: Path, spec: dict = SPEC, acc=lambda variant, seed: 0.6 + seed / 10) -> Path:
    """A lab folder whose database holds ``spec`` with every run done (written by hand, no training)."""
    folder.mkdir(parents=True, exist_ok=True)
    with Store(folder / DB_NAME) as store:
        store.save_study(spec["name"], spec["dataset"], spec, "tricklab lab tiny --dataset synthetic")
        for variant in spec["variants"]:
            for seed in range(spec["seeds"]):
                key = (spec["name"], variant, seed, spec["dataset"])
                store.ensure(*key, config={"variant": variant}, config_hash=f"{seed:016x}")
                a = acc(variant, seed)
                history = [{"epoch": 1, "val_acc": a - 0.05, "train_loss": 0.9}, {"epoch": 2, "val_acc": a}]
                store.mark_done(key, {"test_acc": a, "best_val_acc": a, "wall_time_s": 1.0}, history, f"{seed:016x}")
    return folder


@pytest.fixture
def lab(tmp_path):
    """A lab with a good report.html already rendered."""
    folder = make_lab(tmp_path / "lab")
    assert main(["report", str(folder)]) == 0
    return folder


def one_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    assert len(lines[0]) <= MAX_MESSAGE + len("error: ")
    return lines[0]


def sql(db: Path, statement: str, args: tuple = ()) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute(statement, args)
        con.commit()
    finally:
        con.close()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- point 2: report --markdown (and every output) never writes over what is not its own ---------------------------


def test_markdown_onto_the_lab_database_is_refused_and_the_database_kept(lab, capsys):
    db = lab / DB_NAME
    before = db.read_bytes()
    capsys.readouterr()
    assert main(["report", str(lab), "--markdown", str(db)]) == 2
    line = one_line(capsys)
    assert str(db) in line and "an input of this command" in line
    assert main(["report", str(lab), "--markdown", str(db), "--force"]) == 2  # --force never reaches an input
    assert "an input of this command" in one_line(capsys)
    assert db.read_bytes() == before
    assert main(["report", str(lab)]) == 0  # every result is still there


def test_markdown_onto_a_hard_link_of_the_database_is_refused(lab, tmp_path, capsys):
    os.link(lab / DB_NAME, tmp_path / "notes.md")
    capsys.readouterr()
    assert main(["report", str(lab), "--markdown", str(tmp_path / "notes.md"), "--force"]) == 2
    assert "an input of this command" in one_line(capsys)
    with Store(lab / DB_NAME, readonly=True) as store:
        assert len(store.rows()) == 4


def test_markdown_through_a_symlink_is_refused_and_its_target_kept(lab, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    (tmp_path / "page.md").symlink_to(target)
    capsys.readouterr()
    for extra in ([], ["--force"]):
        assert main(["report", str(lab), "--markdown", str(tmp_path / "page.md"), *extra]) == 2
        line = one_line(capsys)
        assert "page.md: is a symbolic link" in line
    assert (tmp_path / "page.md").is_symlink() and target.read_text() == "mine"


def test_markdown_into_a_fifo_is_refused_without_opening_it(lab, tmp_path, capsys):
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    capsys.readouterr()
    assert main(["report", str(lab), "--markdown", str(fifo), "--force"]) == 2  # opening it would hang: never done
    assert "pipe.md: is a FIFO" in one_line(capsys)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(not ROOT, reason="making a device node needs root (the issue's /dev/full was replaced as root)")
def test_markdown_onto_a_device_is_refused_and_the_device_kept(lab, tmp_path, capsys):
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    capsys.readouterr()
    assert main(["report", str(lab), "--markdown", str(full), "--force"]) == 2
    assert "full: is a character device" in one_line(capsys)
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_an_existing_file_is_replaced_only_when_tricklab_wrote_it_or_with_force(lab, tmp_path, capsys):
    page = tmp_path / "notes.md"
    page.write_text("# my own notes\n")
    capsys.readouterr()
    assert main(["report", str(lab), "--markdown", str(page)]) == 2
    line = one_line(capsys)
    assert "notes.md: already exists and is not a Markdown report written by tricklab" in line and "--force" in line
    assert page.read_text() == "# my own notes\n" and not (tmp_path / "notes-plots").exists()
    assert main(["report", str(lab), "--markdown", str(page), "--force"]) == 0
    first = page.read_bytes()
    assert MARKDOWN.marker in first
    assert main(["report", str(lab), "--markdown", str(page)]) == 0  # its own page: regenerated without --force
    assert page.read_bytes() == first


def test_report_html_and_plots_are_never_written_through_links(lab, tmp_path, capsys):
    target = tmp_path / "precious.html"
    target.write_text("mine")
    (lab / "report.html").unlink()
    (lab / "report.html").symlink_to(target)
    capsys.readouterr()
    assert main(["report", str(lab), "--force"]) == 2
    assert "report.html: is a symbolic link" in one_line(capsys)
    assert target.read_text() == "mine"
    (lab / "report.html").unlink()
    png = next((lab / "plots").glob("*-curves.png"))
    png.unlink()
    png.symlink_to(target)
    assert main(["report", str(lab), "--force"]) == 2
    assert f"{png.name}: is a symbolic link" in one_line(capsys)
    assert target.read_text() == "mine" and not (lab / "report.html").exists()  # refused before anything was written


def test_a_foreign_report_html_is_kept_unless_forced(lab, capsys):
    (lab / "report.html").write_text("<html>someone's page</html>")
    capsys.readouterr()
    assert main(["report", str(lab)]) == 2
    assert "report.html: already exists and is not a HTML lab report written by tricklab" in one_line(capsys)
    assert (lab / "report.html").read_text() == "<html>someone's page</html>"
    assert main(["report", str(lab), "--force"]) == 0
    assert b"<title>tricklab lab report</title>" in (lab / "report.html").read_bytes()


def test_the_lab_refuses_a_foreign_report_before_running_anything(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: tiny\ndataset: synthetic\nvariants: {plain: {}}\nseeds: 1\n")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "report.html").write_text("someone's page")
    assert main(["lab", "--config", str(study), "--out", str(tmp_path / "lab"), "--workers", "1"]) == 2
    assert "report.html: already exists and is not a HTML lab report" in one_line(capsys)
    assert not (tmp_path / "lab" / DB_NAME).exists()


def test_the_doctor_report_is_refused_before_anything_is_drawn(tmp_path):
    from tricklab.report.doctor import write_report

    target = tmp_path / "precious.html"
    target.write_text("mine")
    (tmp_path / "doctor").mkdir()
    (tmp_path / "doctor" / "index.html").symlink_to(target)
    with pytest.raises(OutputError, match="index.html: is a symbolic link"):
        write_report(object(), tmp_path / "doctor")  # refused before the result is even read
    assert target.read_text() == "mine" and sorted(p.name for p in (tmp_path / "doctor").iterdir()) == ["index.html"]


def test_the_safe_output_rules(tmp_path):
    (tmp_path / "own.png").write_bytes(PNG.marker + b"rest")
    (tmp_path / "other.png").write_bytes(b"GIF89a")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "own.png")
    assert check_target(tmp_path / "own.png", PNG) == tmp_path / "own.png"
    assert check_target(tmp_path / "new" / "deeper.png", PNG) == tmp_path / "new" / "deeper.png"
    with pytest.raises(OutputError, match="other.png: already exists and is not a PNG image; .*--force"):
        check_target(tmp_path / "other.png", PNG)
    check_target(tmp_path / "other.png", PNG, force=True)
    with pytest.raises(OutputError, match="already exists; choose a new path"):
        check_target(tmp_path / "own.png")  # no kind: only a new path
    for name, what in (("dir", "a folder"), ("link", "a symbolic link")):
        with pytest.raises(OutputError, match=f"{name}: is {what}"):
            check_target(tmp_path / name, PNG, force=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_target(tmp_path / "own.png" / "x.png")
    with pytest.raises(OutputError, match="File name too long"):
        write_file(tmp_path / LONG, "x")
    assert write_file(tmp_path / "a" / "b.txt", "hé").read_text(encoding="utf-8") == "hé"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt"]  # no temporary file left


def test_atomic_write_replaces_a_file_but_never_a_link_or_a_fifo(tmp_path):
    from tricklab.data.download import atomic_write as old_home

    assert old_home is atomic_write  # still importable from where it was
    (tmp_path / "f").write_bytes(b"old")
    atomic_write(tmp_path / "f", b"new")
    assert (tmp_path / "f").read_bytes() == b"new"
    (tmp_path / "link").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "fifo")
    for name in ("link", "fifo"):
        with pytest.raises(OutputError, match=f"{name}: is a"):
            atomic_write(tmp_path / name, b"x")
    assert (tmp_path / "f").read_bytes() == b"new" and (tmp_path / "link").is_symlink()


# --- point 8: a results database that lies is refused before anything is written ----------------------------------


def set_metrics(**values):
    def damage(db: Path) -> None:
        sql(
            db,
            "UPDATE runs SET metrics = json_set(metrics, " + ", ".join(["?, ?"] * len(values)) + ")",
            tuple(x for k, v in values.items() for x in (f"$.{k}", v)),
        )

    return damage


def set_history(key: str, value):
    def damage(db: Path) -> None:
        sql(db, "UPDATE runs SET history = json_set(history, ?, ?) WHERE variant = 'wide'", (f"$[0].{key}", value))

    return damage


def set_column(column: str, value):
    def damage(db: Path) -> None:
        sql(db, f"UPDATE runs SET {column} = ? WHERE variant = 'wide' AND seed = 1", (value,))

    return damage


def empty_file(db: Path) -> None:
    db.write_bytes(b"")


def other_program(db: Path) -> None:
    db.unlink()
    sql(db, "CREATE TABLE notes (id INTEGER, text TEXT)")


def no_studies_table(db: Path) -> None:
    sql(db, "DROP TABLE studies")


def studies_emptied(db: Path) -> None:
    sql(db, "DELETE FROM studies")


def spec_target(db: Path) -> None:
    sql(db, "UPDATE studies SET spec = json_set(spec, '$.target_val_acc', 2.5)")


LIES = [
    ("empty-file", empty_file, "is empty (0 bytes), not a tricklab results database"),
    ("another-program", other_program, "no runs or studies table: not the schema tricklab creates"),
    ("no-studies-table", no_studies_table, "no studies table"),
    ("test-acc-7.5", set_metrics(test_acc=7.5), "metrics.test_acc: expected an accuracy in [0, 1], got 7.5"),
    ("test-acc-negative", set_metrics(test_acc=-0.1), "metrics.test_acc: expected an accuracy in [0, 1]"),
    ("best-val-acc-2", set_metrics(best_val_acc=2.0), "metrics.best_val_acc: expected an accuracy in [0, 1]"),
    ("wall-time-negative", set_metrics(wall_time_s=-3.0), "metrics.wall_time_s: expected a finite number of seconds"),
    ("test-loss-negative", set_metrics(test_loss=-1.0), "metrics.test_loss: expected a loss ≥ 0"),
    ("epochs-run-float", set_metrics(epochs_run=2.5), "metrics.epochs_run: expected an integer ≥ 0"),
    ("history-val-acc-1.5", set_history("val_acc", 1.5), "history[0].val_acc: expected an accuracy in [0, 1]"),
    ("history-epoch-negative", set_history("epoch", -1), "history[0].epoch: expected an integer ≥ 0"),
    ("seed-negative", set_column("seed", -4), "expected integers ≥ 0"),
    ("attempts-negative", set_column("attempts", -1), "expected integers ≥ 0"),
    ("target-2.5", spec_target, "spec.target_val_acc: expected an accuracy in [0, 1], got 2.5"),
    ("studies-emptied", studies_emptied, "holds no study (its studies table is empty), so"),
]


@pytest.mark.parametrize("damage, fragment", [x[1:] for x in LIES], ids=[x[0] for x in LIES])
def test_a_database_that_lies_is_refused_and_the_good_report_kept(lab, damage, fragment, capsys):
    before = snapshot(lab)
    damage(lab / DB_NAME)
    db_after_damage = (lab / DB_NAME).read_bytes()
    capsys.readouterr()
    assert main(["report", str(lab), "--markdown"]) == 2
    line = one_line(capsys)
    assert str(lab / DB_NAME) in line and fragment in line
    after = snapshot(lab)
    assert after.pop(DB_NAME) == db_after_damage  # read, never written
    before.pop(DB_NAME)
    assert after == before  # report.html and plots as they were; no results.md, no journal files


def test_a_database_without_the_newer_tables_still_renders_unchanged(lab, capsys):
    sql(lab / DB_NAME, "DROP TABLE sessions")
    sql(lab / DB_NAME, "DROP TABLE signals")
    db = (lab / DB_NAME).read_bytes()
    assert main(["report", str(lab), "--markdown"]) == 0
    assert "not recorded (this lab ran before tricklab recorded its sessions)" in (lab / "results.md").read_text()
    assert (lab / DB_NAME).read_bytes() == db
    assert not [p.name for p in lab.iterdir() if p.name.startswith(DB_NAME + "-")]  # no -wal, -shm or -journal


@pytest.mark.skipif(not ROOT, reason="making a device node needs root")
def test_a_database_linked_to_a_device_is_refused_without_a_journal_beside_it(lab, tmp_path, capsys):
    zero = tmp_path / "zero"
    os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # what /dev/zero is
    (lab / DB_NAME).unlink()
    (lab / DB_NAME).symlink_to(zero)
    before = (lab / "report.html").read_bytes()
    capsys.readouterr()
    assert main(["report", str(lab)]) == 2
    line = one_line(capsys)
    assert f"{lab / DB_NAME}: is a character device (through a symbolic link), not a results database" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab", "zero"]  # no zero-journal
    assert (lab / "report.html").read_bytes() == before


def test_the_lab_refuses_a_database_that_is_a_link(lab, tmp_path):
    (tmp_path / "elsewhere.sqlite").write_bytes((lab / DB_NAME).read_bytes())
    (lab / DB_NAME).unlink()
    (lab / DB_NAME).symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(StoreError, match="is a symbolic link; the lab writes its results database only as a regular"):
        Store(lab / DB_NAME)
    with Store(lab / DB_NAME, readonly=True) as store:  # reading through a link to a regular file is fine
        assert len(store.rows()) == 4
    os.mkfifo(tmp_path / "fifo.sqlite")
    for readonly in (False, True):  # opening a FIFO would hang: refused from its file type alone
        with pytest.raises(StoreError, match="fifo.sqlite: is a FIFO"):
            Store(tmp_path / "fifo.sqlite", readonly=readonly)


# --- a read-only published lab is rendered elsewhere ----------------------------------------------------------------


def as_unprivileged(argv: list[str], home: Path) -> subprocess.CompletedProcess:
    """``python -m tricklab argv`` as a user who cannot write the lab (root writes anything: then as nobody)."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if ROOT else []
    env = dict(os.environ, HOME=str(home), MPLCONFIGDIR=str(home / "mpl"))
    return subprocess.run([*prefix, sys.executable, "-m", "tricklab", *argv], capture_output=True, text=True, env=env)


@pytest.mark.skipif(ROOT and not shutil.which("setpriv"), reason="needs setpriv to drop root")
def test_a_read_only_lab_is_rendered_elsewhere_with_out():
    base = Path(tempfile.mkdtemp(prefix="tricklab-read-only-"))  # pytest's tmp_path is closed to other users
    try:
        os.chmod(base, 0o755)
        lab = make_lab(base / "lab")
        with _Capture():
            assert main(["report", str(lab)]) == 0
        work = base / "work"
        work.mkdir(mode=0o777)
        os.chmod(work, 0o777)
        before = snapshot(lab)
        for p in [lab, *lab.rglob("*")]:
            os.chmod(p, p.stat().st_mode & ~0o222)
        refused = as_unprivileged(["report", str(lab)], work)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "the lab folder is read-only; render its report elsewhere with --out" in refused.stderr
        done = as_unprivileged(["report", str(lab), "--out", str(work / "site"), "--markdown"], work)
        assert done.returncode == 0, done.stderr
        assert f"report: {work / 'site' / 'report.html'}" in done.stdout
        assert (work / "site" / "report.html").stat().st_size > 0 and (work / "site" / "results.md").is_file()
        assert len(list((work / "site" / "plots").glob("*.png"))) == 2
        assert snapshot(lab) == before  # the lab folder only read
    finally:
        for p in [base, *base.rglob("*")]:
            os.chmod(p, p.stat().st_mode | 0o700)
        shutil.rmtree(base)


def test_report_out_writes_elsewhere_and_leaves_the_lab_alone(lab, tmp_path, capsys):
    before = snapshot(lab)
    assert main(["report", str(lab), "--out", str(tmp_path / "site"), "--markdown"]) == 0
    assert f"report: {tmp_path / 'site' / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "site" / "results.md").is_file() and (tmp_path / "site" / "results-plots").is_dir()
    assert snapshot(lab) == before


# --- a 300-character --out is one line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--set", "data.name=synthetic", "--set", "train.epochs=1", "--out", LONG],
        ["train", "--resume", LONG],
        ["lab", "--config", "STUDY", "--out", LONG],
        ["report", LONG],
        ["report", "LAB", "--out", LONG],
        ["report", "LAB", "--markdown", LONG + ".md"],
        ["report", "LAB", "--markdown", f"{LONG}/results.md"],
    ],
    ids=["train", "train-resume", "lab", "report-dir", "report-out", "report-markdown", "report-markdown-folder"],
)
def test_a_name_too_long_is_one_line(lab, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("name: tiny\ndataset: synthetic\nvariants: {plain: {}}\nseeds: 1\n")
    argv = [{"STUDY": "study.yaml", "LAB": str(lab)}.get(a, a) for a in argv]
    before = snapshot(lab)
    capsys.readouterr()
    assert main(argv) == 2
    assert "File name too long" in one_line(capsys)
    assert snapshot(lab) == before


# --- fuzz: whatever the damage, report renders or refuses in one line, and a refusal leaves the report alone -------

VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(['{"test_acc": 7.5}', "[]", "{}", '{"epoch": -1}', "[{]", '{"variants": []}', "done", "NaN"]),
)
COLUMNS = {
    "runs": [
        "study",
        "variant",
        "seed",
        "dataset",
        "config_hash",
        "config",
        "status",
        "metrics",
        "history",
        "error",
        "attempts",
        "started_at",
        "finished_at",
    ],
    "studies": ["study", "dataset", "spec", "command", "updated_at"],
    "sessions": ["command", "started_at", "wall_time_s", "runs_done", "machine"],
}
DAMAGE = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(sorted(COLUMNS)), st.integers(0, 12), VALUES),
    st.tuples(
        st.just("json"),
        st.sampled_from(["metrics", "history"]),
        st.sampled_from(["$.test_acc", "$.best_val_acc", "$.wall_time_s", "$[0].epoch", "$[0].val_acc"]),
        VALUES,
    ),
    st.tuples(st.just("drop"), st.sampled_from(["runs", "studies", "signals", "sessions"])),
    st.tuples(st.just("delete"), st.sampled_from(["runs", "studies"])),
    st.tuples(st.just("add-column"), st.sampled_from(["runs", "studies"])),
    st.tuples(st.just("truncate"), st.integers(0, 40000)),
    st.tuples(st.just("scribble"), st.integers(0, 40000), st.binary(min_size=1, max_size=64)),
)


def apply(db: Path, damage: tuple) -> None:
    kind, *args = damage
    if kind == "set":
        table, i, value = args
        column = COLUMNS[table][i % len(COLUMNS[table])]
        sql(db, f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT min(rowid) FROM {table})", (value,))
    elif kind == "json":
        column, where, value = args
        if isinstance(value, bytes):
            value = value.hex()
        sql(db, f"UPDATE runs SET {column} = json_set({column}, ?, ?) WHERE rowid = 1", (where, value))
    elif kind == "drop":
        sql(db, f"DROP TABLE {args[0]}")
    elif kind == "delete":
        sql(db, f"DELETE FROM {args[0]}")
    elif kind == "add-column":
        sql(db, f"ALTER TABLE {args[0]} ADD COLUMN extra TEXT")
    else:
        data = bytearray(db.read_bytes())
        if kind == "truncate":
            data = data[: args[0] % (len(data) + 1)]
        else:
            at = args[0] % len(data)
            data[at : at + len(args[1])] = args[1]
        db.write_bytes(bytes(data))


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(damages=st.lists(DAMAGE, min_size=1, max_size=3))
def test_fuzz_damaged_databases_render_or_refuse_in_one_line(good_lab, damages):
    lab, good = good_lab
    shutil.rmtree(lab, ignore_errors=True)
    shutil.copytree(good, lab)
    for d in damages:
        try:
            apply(lab / DB_NAME, d)
        except sqlite3.DatabaseError:
            pass  # the damage before made the file unreadable: what is there is the test
    before = snapshot(lab)
    before.pop(DB_NAME, None)
    err = _Capture()
    with err:
        code = main(["report", str(lab)])
    assert code in (0, 2), (code, err.text)
    assert "Traceback" not in err.text
    if code == 2:
        lines = err.text.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) <= MAX_MESSAGE + 7, err.text
        after = snapshot(lab)
        after.pop(DB_NAME, None)
        assert after == before, "a refused database changed the files beside it"
    else:
        assert (lab / "report.html").read_bytes() != b""


class _Capture:
    """stderr of an in-process command, inside a Hypothesis example (capsys is per test, not per example)."""

    def __enter__(self):
        import io

        self._old, sys.stderr = sys.stderr, io.StringIO()
        self._out, sys.stdout = sys.stdout, io.StringIO()
        return self

    def __exit__(self, *exc):
        self.text = sys.stderr.getvalue()
        sys.stderr, sys.stdout = self._old, self._out


@pytest.fixture(scope="module")
def good_lab(tmp_path_factory):
    """(a scratch lab path, a good lab with its report): each example starts from a copy of the good one."""
    base = tmp_path_factory.mktemp("fuzz")
    good = make_lab(base / "good")
    with _Capture():
        assert main(["report", str(good)]) == 0
    return base / "lab", good


def test_the_fuzz_damages_reach_both_outcomes(good_lab):
    """The property above is not vacuous: a harmless change renders, a lie is refused."""
    lab, good = good_lab
    for damage, expected in ((("add-column", "runs"), 2), (("json", "metrics", "$.wall_time_s", 2.0), 0)):
        shutil.rmtree(lab, ignore_errors=True)
        shutil.copytree(good, lab)
        apply(lab / DB_NAME, damage)
        with _Capture() as c:
            code = main(["report", str(lab)])
        assert code == expected, (damage, c.text)
