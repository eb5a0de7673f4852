"""Fuzzing every parser of outside input with Hypothesis: config files, ``--set`` pairs, study files, checkpoint
meta and manifests, IDX files and npz files.

The property is the same for each: whatever the input, it ends valid or with tricklab's own error
(a :class:`~tricklab.errors.TrickLabError`) whose message is one line of at most ``MAX_MESSAGE`` characters —
never another exception, never a hang. Each test has a fixed budget of examples, drawn deterministically
(``derandomize``), so the suite takes the same few seconds every time and a failure reproduces.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import shutil
import string
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tricklab.config import Config, load_config
from tricklab.data import DATASETS, sources
from tricklab.data.download import RemoteFile
from tricklab.data.idx import idx_size
from tricklab.engine import checkpoint as ck
from tricklab.errors import MAX_MESSAGE, TrickLabError
from tricklab.events import FitState
from tricklab.lab.studies import load_custom_study
from tricklab.models import build_model
from tricklab.runner import run

BUDGET = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL_BUDGET = settings(BUDGET, max_examples=100)  # each example writes and reads a checkpoint


def ends_well(fn):
    """Run ``fn()``: it may return, or raise a TrickLabError of one bounded line; anything else fails."""
    try:
        return fn()
    except TrickLabError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        assert len(msg) <= MAX_MESSAGE, f"{len(msg)} characters"
        return e


@pytest.fixture(scope="module")
def scratch():
    """A folder for the examples (Hypothesis runs many examples per test function)."""
    folder = Path(tempfile.mkdtemp(prefix="tricklab-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


_counter = itertools.count()


def fresh(scratch: Path) -> Path:
    folder = scratch / f"ex{next(_counter)}"
    folder.mkdir()
    return folder


# --- values: what a config may hold ------------------------------------------------------------------------

SECTIONS = {
    name: list(field.annotation.model_fields) for name, field in Config.model_fields.items() if name != "callbacks"
}
DOTTED = [f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys] + ["callbacks", "model.kwargs.x", "x.y", ""]
NAMES = ["mlp", "cnn", "synthetic", "adam", "sgd", "batch", "relu", "cosine", "he_normal", "norm", "no.such:thing"]

# Text without ":" in plain scalars, so no fuzzed value names an import path to a module that exists.
plain_text = st.text(alphabet=string.ascii_letters + string.digits + "_-. ", max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    plain_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(plain_text, st.sampled_from(DOTTED)), inner, max_size=4)
    ),
    max_leaves=12,
)
config_like = st.dictionaries(
    st.sampled_from([*SECTIONS, "callbacks", "extra"]),
    st.one_of(
        st.dictionaries(st.sampled_from([k for keys in SECTIONS.values() for k in keys] + ["x"]), values, max_size=5),
        values,
    ),
    max_size=5,
)
#: YAML that is not what a dump would write: anchors, aliases, tags, complex keys, flow, odd indentation.
YAML_TOKENS = [
    "a", "model", "data", "width", ":", ": ", "- ", "\n", "\n  ", "\n    ", "{", "}", "[", "]", ",", "? ", "&x ",
    "*x", "*y", "!!str ", "!!int ", "!!float ", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ",
    "<<: ", "1e300", "-.inf", ".nan", "0x1F", "0o17", "2024-13-45", "2001-12-14t21:59:43.10-05:00", "~", "null",
    "'q'", '"\\x00"', "|", ">", "#", "%YAML 1.1\n", "---\n", "...\n", "\t", "9" * 30, "\ufeff", "\x00",
]  # fmt: skip
yaml_soup = st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join)
yaml_text = st.one_of(
    config_like.map(lambda d: yaml.safe_dump(d, sort_keys=False)),
    yaml_soup,
    st.text(max_size=200),
    st.tuples(config_like, yaml_soup).map(lambda t: yaml.safe_dump(t[0]) + t[1]),
)


@BUDGET
@given(text=yaml_text)
def test_config_files(scratch, text):
    path = scratch / "config.yaml"  # overwritten by each example
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    ends_well(lambda: load_config(path))


@BUDGET
@given(
    pairs=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(DOTTED), values.map(lambda v: yaml.safe_dump(v).strip())).map("=".join),
            st.tuples(st.sampled_from(DOTTED), yaml_soup).map("=".join),
            st.text(max_size=40),
        ),
        max_size=5,
    )
)
def test_set_pairs(pairs):
    ends_well(lambda: load_config(overrides=pairs))


STUDY_KEYS = ["name", "doc", "dataset", "base", "baseline", "variants", "seeds", "epochs", "target_val_acc", "x"]
study_like = st.dictionaries(
    st.sampled_from(STUDY_KEYS),
    st.one_of(values, st.dictionaries(plain_text, st.one_of(st.none(), config_like, values), max_size=3)),
    max_size=6,
)


@BUDGET
@given(text=st.one_of(study_like.map(yaml.safe_dump), yaml_soup, st.text(max_size=200)))
def test_study_files(scratch, text):
    path = scratch / "study.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    ends_well(lambda: load_custom_study(str(path)))


# --- checkpoints --------------------------------------------------------------------------------------------

CKPT_CONFIG = ["data.name=synthetic", "model.width=8", "model.depth=1", "train.epochs=1", "train.threads=1"]
CKPT_CONFIG += ["schedule.name=constant", "data.batch_size=64"]


@pytest.fixture(scope="module")
def checkpoint(scratch):
    """One real checkpoint folder, the config it was trained with, and its meta.json as plain JSON."""
    run_dir = run(load_config(overrides=CKPT_CONFIG), scratch / "trained").run_dir
    path = ck.list_checkpoints(run_dir / "checkpoints")[-1]
    return path, json.loads((path / "meta.json").read_text())


def json_paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:3]):
            yield from json_paths(v, (*prefix, i))


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(["$tensor", "$tuple", "$items", "$float", "$ndarray", "/model/0.weight", "inf", "uint8"]),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["$tensor", "$tuple", "$items", "$float", "$ndarray", "a"]), inner, max_size=2),
    ),
    max_leaves=8,
)


def mutate(tree, path, op, value):
    """``tree`` with the node at ``path`` replaced by ``value`` (op ``set``) or removed (op ``drop``)."""
    if not path:
        return value
    node = tree
    for k in path[:-1]:
        node = node[k]
    if op == "drop":
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return tree


def write_forged(folder: Path, source: Path, meta, manifest_edit=None) -> Path:
    path = folder / "checkpoints" / source.name
    path.mkdir(parents=True)
    shutil.copyfile(source / ck.TENSORS, path / ck.TENSORS)
    blob = json.dumps(meta).encode()
    (path / ck.META).write_bytes(blob)
    manifest = json.loads((source / ck.MANIFEST).read_text())
    manifest["files"][ck.META] = {"bytes": len(blob), "sha256": ck._sha256(blob)}
    if manifest_edit is not None:
        manifest = manifest_edit(manifest)
    (path / ck.MANIFEST).write_text(json.dumps(manifest))
    return path


@SMALL_BUDGET
@given(data=st.data())
def test_checkpoint_meta(scratch, checkpoint, data):
    source, meta = checkpoint
    meta = json.loads(json.dumps(meta))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(json_paths(meta))))
        op = data.draw(st.sampled_from(["set", "drop"])) if path else "set"
        meta = mutate(meta, path, op, data.draw(json_values) if op == "set" else None)
    folder = fresh(scratch)
    write_forged(folder, source, meta)

    model = build_model("mlp", (1, 8, 8), 4, depth=1, width=8)
    optimizer = torch.optim.Adam(model.parameters())
    state = FitState(model=model, optimizer=optimizer, epochs=1, device=torch.device("cpu"))
    saver = ck.Checkpointer(folder / "checkpoints", generator=torch.Generator())
    ends_well(lambda: saver.resume_latest(state))


@SMALL_BUDGET
@given(data=st.data())
def test_checkpoint_manifest(scratch, checkpoint, data):
    source, meta = checkpoint
    manifest = json.loads((source / ck.MANIFEST).read_text())
    edit = data.draw(st.sampled_from(["mutate", "replace", "bytes"]))
    if edit == "bytes":
        folder = fresh(scratch)
        path = write_forged(folder, source, meta)
        (path / ck.MANIFEST).write_bytes(data.draw(st.binary(max_size=300)))
    else:
        if edit == "replace":
            manifest = data.draw(json_values)
        else:
            target = data.draw(st.sampled_from(list(json_paths(manifest))))
            manifest = mutate(manifest, target, "set", data.draw(json_values))
        path = write_forged(fresh(scratch), source, meta, manifest_edit=lambda _m: manifest)
    ends_well(lambda: ck.read_checkpoint(path))


# --- data files -----------------------------------------------------------------------------------------------

IDX_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF]


@st.composite
def idx_files(draw) -> bytes:
    """IDX bytes near the format: a magic number (often valid), dimensions (often consistent), some data."""
    code = draw(st.sampled_from(IDX_CODES))
    shape = draw(st.lists(st.one_of(st.integers(0, 30), st.integers(0, 2**32 - 1)), max_size=4))
    head = bytes([0, draw(st.sampled_from([0, 0, 0, 1])), code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    n = idx_size(head) if code in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E) and head[1] == 0 else None
    body = bytes(n - len(head)) if n is not None and n <= 100_000 else b""
    cut = draw(st.integers(-3, 3))
    data = head + body
    return draw(st.one_of(st.just(data[: len(data) + cut] if cut < 0 else data + bytes(cut)), st.binary(max_size=64)))


def tiny_idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


@BUDGET
@given(
    which=st.integers(0, 3),
    content=idx_files(),
    wrap=st.sampled_from(["gzip", "raw", "truncated_gzip"]),
)
def test_idx_files(scratch, which, content, wrap):
    root = scratch / "idx"
    folder = root / "fuzz"
    folder.mkdir(parents=True, exist_ok=True)
    good = [
        tiny_idx(np.zeros((2, 28, 28))),
        tiny_idx(np.arange(2) % 10),
        tiny_idx(np.zeros((1, 28, 28))),
        tiny_idx(np.zeros(1)),
    ]
    specs = []
    for i, spec in enumerate(sources.MNIST_FILES):
        data = content if i == which else good[i]
        raw = gzip.compress(data, mtime=0)
        raw = raw if wrap == "gzip" or i != which else data if wrap == "raw" else raw[: len(raw) // 2]
        (folder / spec.name).write_bytes(raw)
        specs.append(RemoteFile(spec.name, header_size=idx_size))
    ends_well(lambda: sources.load_idx_dataset("fuzz", root, specs, (), tuple("0123456789")))


NPZ_KEYS = ["x_train", "y_train", "x_test", "y_test", "other"]
npz_arrays = hnp.arrays(
    dtype=st.one_of(
        hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(),
        hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(max_len=3), hnp.datetime64_dtypes(),
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)  # fmt: skip


@BUDGET
@given(
    arrays=st.dictionaries(st.sampled_from(NPZ_KEYS), npz_arrays, max_size=5),
    compressed=st.booleans(),
    damage=st.one_of(st.none(), st.floats(0, 1)),
    num_classes=st.one_of(st.none(), st.integers(-1, 20), st.just(True)),
)
def test_npz_files(scratch, arrays, compressed, damage, num_classes):
    path = scratch / "data.npz"
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    raw = buf.getvalue()
    if damage is not None and raw:
        i = min(int(damage * len(raw)), len(raw) - 1)
        raw = raw[:i] + bytes([raw[i] ^ 0x5A]) + raw[i + 1 :]
    path.write_bytes(raw)
    ends_well(lambda: DATASETS.get("npz")(path.parent, path=path, num_classes=num_classes))


def test_npz_with_a_pickled_object_array_or_not_a_zip(scratch):
    path = fresh(scratch) / "data.npz"
    buf = io.BytesIO()
    np.savez(buf, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1))
    for raw in (buf.getvalue(), b"PK\x03\x04" + bytes(40), b"\x93NUMPY", b""):
        path.write_bytes(raw)
        assert isinstance(ends_well(lambda: DATASETS.get("npz")(path.parent, path=path)), TrickLabError)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", b"\x93NUMPY\x01\x00" + bytes(20))
    assert isinstance(ends_well(lambda: DATASETS.get("npz")(path.parent, path=path)), TrickLabError)
