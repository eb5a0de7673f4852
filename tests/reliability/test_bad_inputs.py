"""Bad input, table-driven: config files, ``--set``, CLI arguments (``--resume`` included) and data files.

Every case must exit with code 2 and print exactly one line, ``error: ...``, naming what is wrong and what
is allowed; no traceback; and leave the working folder as it found it (no run directory, no change to a
run directory it was asked to resume). Data come from ``$TRICKLAB_DATA`` = a temporary folder, with
``TRICKLAB_MIRRORS`` pointing at a dead local port, so nothing is ever fetched from outside.

Cases whose argv starts with ``lab`` run ``tricklab lab``; all others ``tricklab train``.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tricklab.cli.main import main
from tricklab.config import load_config
from tricklab.runner import run

SYNTH = ["--set", "data.name=synthetic", "--set", "model.width=8", "--set", "model.depth=1"]
DEAD = "http://127.0.0.1:9/"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run to resume."""
    overrides = ["data.name=synthetic", "model.width=8", "model.depth=1", "train.epochs=2", "train.threads=1"]
    return run(load_config(overrides=overrides), tmp_path_factory.mktemp("trained") / "run").run_dir


def write(rel: str, content: str | bytes):
    def setup(tmp: Path, trained: Path) -> None:
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def the_run(*then):
    """Copy the trained run to ./run, then apply ``then`` setups (relative to the cwd)."""

    def setup(tmp: Path, trained: Path) -> None:
        shutil.copytree(trained, tmp / "run")
        for step in then:
            step(tmp, trained)

    return setup


def corrupt_checkpoints(tmp: Path, trained: Path) -> None:
    for f in (tmp / "run" / "checkpoints").glob("*/tensors.safetensors"):
        f.unlink()
        f.write_bytes(b"\x00" * 100)


def idx_gz(valid_gzip: bool = True, truncate: bool = False) -> bytes:
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(2 * 28 * 28)
    data = gzip.compress(raw)
    return data[:-12] if truncate else data if valid_gzip else b"this is not a gzip file"


# (id, argv, setup, fragments the one error line must contain)
CASES = [
    # --- config file ---
    ("file_typo_key", ["--config", "c.yaml"], write("c.yaml", "model:\n  widht: 64\n"),
     ["model.widht = 64", "did you mean 'model.width'?"]),
    ("file_python_tag", ["--config", "c.yaml"], write("c.yaml", "model: !!python/object/apply:os.getcwd []\n"),
     ["c.yaml", "invalid YAML", "python/object/apply"]),
    ("file_duplicate_key", ["--config", "c.yaml"], write("c.yaml", "train:\n  epochs: 2\n  epochs: 3\n"),
     ["c.yaml", "line 3", "duplicate key 'epochs'"]),
    ("file_key_tagged_as_a_list", ["--config", "c.yaml"], write("c.yaml", "? !!seq a\n: 1\n"),
     ["c.yaml", "a key must be a plain value"]),
    ("file_not_a_mapping", ["--config", "c.yaml"], write("c.yaml", "- model\n"), ["mapping of sections, got list"]),
    ("file_checkpoint_every_0", ["--config", "c.yaml"], write("c.yaml", "checkpoint:\n  every: 0\n"),
     ["checkpoint.every = 0", "must be >= 1"]),
    ("file_negative_seed", ["--config", "c.yaml"], write("c.yaml", "train:\n  seed: -3\n"),
     ["train.seed = -3", "must be >= 0"]),
    ("file_section_is_a_value", ["--config", "c.yaml"], write("c.yaml", "checkpoint: 5\n"),
     ["checkpoint = 5", "mapping"]),
    ("file_missing", ["--config", "nope.yaml"], None, ["nope.yaml", "does not exist"]),
    # --- --set ---
    ("set_negative_seed", [*SYNTH, "--set", "train.seed=-1"], None, ["train.seed = -1", "must be >= 0"]),
    ("set_nonfinite_policy", [*SYNTH, "--set", "train.nonfinite=abort"], None,
     ["train.nonfinite = 'abort'", "'stop'", "'skip'"]),
    ("set_nonfinite_limit", [*SYNTH, "--set", "train.nonfinite_limit=-1"], None,
     ["train.nonfinite_limit = -1", "must be >= 0"]),
    ("set_keep_last_0", [*SYNTH, "--set", "checkpoint.keep_last=0"], None,
     ["checkpoint.keep_last = 0", "must be >= 1"]),
    ("set_checkpoint_typo", [*SYNTH, "--set", "checkpoint.evry=2"], None,
     ["checkpoint.evry = 2", "did you mean 'checkpoint.every'?"]),
    ("set_every_bool", [*SYNTH, "--set", "checkpoint.every=true"], None,
     ["checkpoint.every = True", "an integer, not a boolean"]),
    ("set_min_lr_above_lr", [*SYNTH, "--set", "schedule.min_lr=0.01"], None,  # refused once training starts
     ["schedule.min_lr = 0.01", "< the learning rate (0.001)"]),
    ("set_epochs_0", [*SYNTH, "--set", "train.epochs=0"], None, ["train.epochs = 0", "must be >= 1"]),
    ("set_monitor_typo", [*SYNTH, "--set", "early_stopping.monitor=val_los"], None,
     ["early_stopping.monitor = 'val_los'", "'val_loss'"]),
    ("set_no_key", [*SYNTH, "--set", "=3"], None, ["--set '=3'", "expected key.sub=value"]),
    # --- CLI arguments, --resume ---
    ("resume_missing_dir", ["--resume", "nothere"], None,
     ["--resume 'nothere'", "no such run directory", "allowed: a run directory"]),
    ("resume_no_checkpoint", ["--resume", "r"], write("r/config.yaml", "train:\n  epochs: 2\n"),
     ["--resume 'r'", "holds no checkpoint"]),
    ("resume_not_a_run", ["--resume", "r"], write("r/notes.txt", "hello"), ["--resume 'r'", "holds no config.yaml"]),
    ("resume_auto_nothing", ["--resume", "auto"], None, ["--resume auto", "no run directory under 'runs'"]),
    ("resume_with_out", ["--resume", "run", "--out", "x"], the_run(), ["--out cannot be combined with --resume"]),
    ("resume_changes_config", ["--resume", "run", "--set", "train.epochs=9"], the_run(),
     ["would change train.epochs (2 -> 9)", "allowed: no --config/--set"]),
    ("resume_other_config_file", ["--resume", "run", "--config", "c.yaml"],
     the_run(write("c.yaml", "model:\n  width: 32\n")), ["would change", "data.name ('synthetic' -> 'mnist')",
                                                        "model.width (8 -> 32)"]),
    ("resume_corrupt_checkpoints", ["--resume", "run"], the_run(corrupt_checkpoints),
     ["no valid checkpoint", "epoch0002", "corrupt"]),
    ("resume_config_typo", ["--resume", "run"], the_run(write("run/config.yaml", "model:\n  widht: 8\n")),
     ["config.yaml is invalid", "did you mean 'model.width'?"]),
    ("resume_no_value", ["--resume"], None, ["--resume", "expected one argument"]),
    ("unknown_argument", ["--learning-rate", "3"], None, ["unrecognized arguments: --learning-rate 3"]),
    # --- data files ---
    ("data_folder_without_files", ["--set", "data.name=mnist"], write("cache/mnist/README", "no data here"),
     ["mnist: train-images-idx3-ubyte.gz is not in", "could not be downloaded", DEAD, "point data.dir"]),
    ("data_not_gzip", ["--set", "data.name=mnist"],
     write("cache/mnist/train-images-idx3-ubyte.gz", idx_gz(valid_gzip=False)),
     ["train-images-idx3-ubyte.gz is corrupt", "not a valid gzip file", "delete it"]),
    ("data_wrong_checksum", ["--set", "data.name=mnist"], write("cache/mnist/train-images-idx3-ubyte.gz", idx_gz()),
     ["train-images-idx3-ubyte.gz is corrupt", "sha256", "!= expected"]),
    ("data_truncated", ["--set", "data.name=mnist"],
     write("cache/mnist/train-images-idx3-ubyte.gz", idx_gz(truncate=True)), ["is corrupt", "gzip"]),
    ("data_fashion_md5", ["--set", "data.name=fashion-mnist"],
     write("cache/fashion-mnist/train-images-idx3-ubyte.gz", idx_gz()), ["is corrupt: md5", "!= expected"]),
    ("data_mnist1d_corrupt_cache", ["--set", "data.name=mnist1d"],
     write("cache/mnist1d/mnist1d_default.npz", b"PK\x03\x04 not really a zip"), ["mnist1d: cached", "is corrupt"]),
    # --- tricklab lab ---
    ("lab_unknown_study", ["lab", "dropuot"], None, ["unknown study 'dropuot'", "did you mean 'dropout'?", "valid:"]),
    ("lab_negative_seeds", ["lab", "--seeds", "-1", "dropout"], None, ["--seeds = -1", "must be 1 to 1000"]),
]  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, setup, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_exit_2_and_one_line(argv, setup, fragments, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("TRICKLAB_MIRRORS", DEAD)
    if setup is not None:
        setup(tmp_path, trained)
    before = tree(tmp_path)

    code = main(argv if argv[0] == "lab" else ["train", "--set", "train.threads=1", *argv])

    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in err + out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "labs").exists()
    assert tree(tmp_path) == before  # no run directory, nothing changed in the one named


def test_the_table_is_large_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "argv", [["--resume", "nothere"], [*SYNTH, "--set", "checkpoint.every=0"]], ids=["resume", "set"]
)
def test_a_real_process_prints_one_line(argv, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tricklab", "train", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "TRICKLAB_DATA": str(tmp_path), "TRICKLAB_MIRRORS": DEAD, "PATH": "/usr/bin"},
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
