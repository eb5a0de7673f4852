"""Hostile sizes: labels, data files, models and threads that would make tricklab use memory or time without bound.

A label of 10⁹ in a 3 KB file, an .npz whose headers declare gigabytes, a CSV too large for the memory left, a
model too large for torch to count, ``train.threads=1024`` on two cores. Each is refused in one line before the
memory is taken (naming the file or key, the value and the bound), or, for threads, capped with one warning.
The memory available is made small or large by pointing :data:`tricklab.host.MEMINFO` at a fake
``/proc/meminfo``, so no test depends on the machine it runs on.
"""

from __future__ import annotations

import io
import json
import math
import resource
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tricklab import host, memory
from tricklab.assembly import build_model, load_data
from tricklab.cli.main import main
from tricklab.config import load_config
from tricklab.data import DATASETS, as_raw_dataset, local
from tricklab.data.base import MAX_CLASSES, DatasetInfo, RawDataset, TensorData
from tricklab.engine import seed
from tricklab.engine.placement import nbytes
from tricklab.errors import MAX_MESSAGE, ConfigError, DataError, TrickLabError
from tricklab.lab import costs
from tricklab.models import MODELS

npz = DATASETS.get("npz")
csv = DATASETS.get("csv")
GiB = 2**30


def rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}: {err}"
    assert "Traceback" not in out + err and err.count("\n") == 1 and err.startswith("error: "), err
    assert len(err) <= MAX_MESSAGE + len("error: \n")
    return err.strip()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("TRICKLAB_MIRRORS", "http://127.0.0.1:9/")
    return tmp_path


@pytest.fixture
def meminfo(tmp_path, monkeypatch):
    """``meminfo(available)``: this process sees a machine of 64 GiB with ``available`` bytes available."""

    def set_available(available: int) -> None:
        path = tmp_path / "meminfo"
        path.write_text(f"MemTotal:       {64 * GiB // 1024} kB\nMemAvailable:   {available // 1024} kB\n")
        monkeypatch.setattr(host, "MEMINFO", str(path))

    return set_available


def train_on(path: Path, *more: str) -> list[str]:
    name = "csv" if path.suffix == ".csv" else "npz"
    sets = [f"data.name={name}", f"data.path={path}", "train.threads=1", "train.epochs=1", *more]
    return ["train", *[a for s in sets for a in ("--set", s)]]


def blobs(n: int = 20, features: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(0).normal(size=(n, features)), np.arange(n) % 2


# --- hand-made .npz files: any header, any declared size, a tiny file ---------------------------------------


def npy_header(shape: tuple[int, ...], descr: str = "<f8", version: int = 1) -> bytes:
    """The .npy header (magic, version, length, dict) declaring ``shape`` of ``descr``, as numpy writes it."""
    buf = io.BytesIO()
    writer = np.lib.format.write_array_header_1_0 if version == 1 else np.lib.format.write_array_header_2_0
    writer(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_of(members: dict[str, tuple[bytes, int | None]]) -> bytes:
    """A stored (uncompressed) zip of ``name: (content, declared size)``: the entry says it holds ``declared``
    bytes (``None``: the true size) whatever its content; past 4 GiB in a ZIP64 extra field."""
    local_part, central = b"", b""
    for name, (content, declared) in members.items():
        size = len(content) if declared is None else declared
        big = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQ", 1, 8, size) if big else b""
        size32 = 0xFFFFFFFF if big else size
        crc, fname, offset = zlib.crc32(content), name.encode(), len(local_part)
        local_part += struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, 0, 0, 0, 0x21, crc, len(content), size32, len(fname), len(extra)
        )
        local_part += fname + extra + content
        central += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, 0, 0, 0, 0x21, crc, len(content), size32,
            len(fname), len(extra), 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += fname + extra
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local_part), 0)
    return local_part + central + end


def declaring(shape: tuple[int, ...], descr: str = "<f8", labels: int = 4) -> bytes:
    """A tiny .npz whose x_train declares ``shape`` of ``descr`` (and its zip entry agrees), with 16 real bytes."""
    header = npy_header(shape, descr)
    declared = len(header) + math.prod(shape) * np.dtype(descr).itemsize
    y = io.BytesIO()
    np.save(y, np.arange(labels) % 2)
    return zip_of({"x_train.npy": (header + bytes(16), declared), "y_train.npy": (y.getvalue(), None)})


def test_hand_made_zips_read_like_numpy_s_own(tmp_path):
    x, y = blobs()
    xb, yb = io.BytesIO(), io.BytesIO()
    np.save(xb, x)
    np.save(yb, y)
    path = tmp_path / "d.npz"
    path.write_bytes(zip_of({"x_train.npy": (xb.getvalue(), None), "y_train.npy": (yb.getvalue(), None)}))
    raw = npz(tmp_path, path=path)
    assert len(raw.train) + len(raw.test) == 20 and raw.info.input_shape == (3,)
    with np.load(path) as f:
        assert np.array_equal(f["x_train"], x)
    path.write_bytes(declaring((2**40, 1)))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("x_train.npy").file_size == len(npy_header((2**40, 1))) + 2**43


# --- 3. the number of classes ------------------------------------------------------------------------------


def test_a_label_of_a_billion_in_a_small_npz_is_refused_in_one_line(workdir, capsys):
    x, y = blobs()
    y[3] = 10**9
    np.savez(workdir / "big.npz", x_train=x, y_train=y)
    assert (workdir / "big.npz").stat().st_size < 3000
    before = rss_kib()
    line = one_line_error(capsys, train_on(workdir / "big.npz"))
    assert line == (
        f"error: {workdir / 'big.npz'}: label 1000000000 at y_train[3] is too large: tricklab takes at most "
        f"100,000 classes (labels 0..99999)"
    )
    assert rss_kib() - before < 100 * 1024, "it built the classes"
    assert not (workdir / "runs").exists()


def test_a_label_of_a_billion_in_a_csv_row_is_refused_naming_its_line(workdir, capsys):
    (workdir / "t.csv").write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(10)) + "1,1e9\n")
    line = one_line_error(capsys, train_on(workdir / "t.csv"))
    assert "t.csv: label 1000000000 at line 12, column 'label' is too large" in line and "100,000 classes" in line


def test_num_classes_of_a_billion_is_refused_naming_the_key_and_the_cap(workdir, capsys):
    x, y = blobs()
    np.savez(workdir / "ok.npz", x_train=x, y_train=y)
    line = one_line_error(capsys, train_on(workdir / "ok.npz", "data.kwargs={num_classes: 1000000000}"))
    assert line == (
        "error: data.kwargs.num_classes = 1000000000: must be an integer from 2 to 100000, or null for max label + 1"
    )


def test_labels_up_to_the_cap_load_and_one_more_is_refused(tmp_path):
    x, y = blobs()
    y[0] = MAX_CLASSES - 1
    np.savez(tmp_path / "top.npz", x_train=x, y_train=y)
    info = npz(tmp_path, path=tmp_path / "top.npz").info
    assert info.num_classes == MAX_CLASSES and len(info.classes) == MAX_CLASSES
    assert npz(tmp_path, path=tmp_path / "top.npz", num_classes=MAX_CLASSES).info.num_classes == MAX_CLASSES
    y[0] = MAX_CLASSES
    np.savez(tmp_path / "over.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match=r"label 100000 at y_train\[0\] is too large"):
        npz(tmp_path, path=tmp_path / "over.npz")


def test_a_plugin_loader_cannot_declare_a_billion_classes():
    x, y = torch.zeros(6, 3), torch.tensor([0, 1, 0, 1, 0, 10**9])
    with pytest.raises(DataError, match=r"dataset 'mine' \(train\): label 1000000000 is too large"):
        as_raw_dataset(((x, y), (x, y[:6] % 2)), "mine")
    raw = RawDataset(TensorData(x, y % 2), TensorData(x, y % 2), DatasetInfo("mine", (3,), 10**9))
    with pytest.raises(DataError, match=r"dataset 'mine': num_classes = 1000000000; a dataset has 2 to 100,000"):
        as_raw_dataset(raw, "mine")


# --- tracebacks: 0 features, uint64 labels ------------------------------------------------------------------


def test_an_npz_with_zero_features_is_refused_in_one_line(workdir, capsys):
    np.savez(workdir / "z.npz", x_train=np.zeros((20, 0)), y_train=np.arange(20) % 2)
    line = one_line_error(capsys, train_on(workdir / "z.npz"))
    says = "x_train has shape (20, 0): its examples hold no features; expected at least one"
    assert line == f"error: {workdir / 'z.npz'}: {says}"
    with pytest.raises(DataError, match=r"x has shape \(4, 3, 0\): its examples hold no features"):
        as_raw_dataset(((torch.zeros(4, 3, 0), torch.arange(4) % 2),) * 2, "mine")
    empty = TensorData(torch.zeros(4, 0), torch.arange(4) % 2)
    raw = RawDataset(empty, empty, DatasetInfo("mine", (0,), 2))
    with pytest.raises(DataError, match=r"inputs of shape \(0,\) hold no features"):
        as_raw_dataset(raw, "mine")


def test_uint64_labels_are_read_as_they_are_and_never_wrap(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "u.npz", x_train=x, y_train=y.astype(np.uint64), x_test=x, y_test=y.astype(np.uint64))
    raw = npz(tmp_path, path=tmp_path / "u.npz")
    assert raw.train.y.dtype == torch.int64 and raw.train.y.tolist() == y.tolist() and raw.info.num_classes == 2
    y64 = y.astype(np.uint64)
    y64[4] = 2**64 - 1  # int64 reads it as −1
    np.savez(tmp_path / "w.npz", x_train=x, y_train=y64)
    with pytest.raises(DataError, match=r"label 18446744073709551615 at y_train\[4\] is too large"):
        npz(tmp_path, path=tmp_path / "w.npz")
    with pytest.raises(DataError, match="label 18446744073709551615 is too large"):
        as_raw_dataset(((torch.zeros(20, 3), torch.from_numpy(y64)),) * 2, "mine")
    small = as_raw_dataset(((torch.zeros(20, 3), torch.from_numpy(y.astype(np.uint64))),) * 2, "mine")
    assert small.train.y.tolist() == y.tolist()


def test_labels_beyond_int64_as_floats_are_reported_as_they_are(tmp_path):
    x, y = blobs()
    yf = y.astype(np.float64)
    yf[2] = -1e30  # int64 has no such value: a cast would report another
    np.savez(tmp_path / "f.npz", x_train=x, y_train=yf)
    with pytest.raises(DataError, match=r"label -1e\+30 at y_train\[2\] is negative"):
        npz(tmp_path, path=tmp_path / "f.npz")


# --- 4. npz and csv files are bounded before they are read --------------------------------------------------


def test_an_npz_declaring_more_than_its_zip_entry_holds_is_refused_before_reading(tmp_path):
    header = npy_header((2**28, 1))  # 2 GiB of float64 declared, 16 bytes there
    path = tmp_path / "liar.npz"
    path.write_bytes(zip_of({"x_train.npy": (header + bytes(16), None), "y_train.npy": (npy_header((4,)), None)}))
    before = rss_kib()
    with pytest.raises(DataError) as err:
        npz(tmp_path, path=path)
    assert str(err.value) == (
        f"{path}: x_train declares shape (268435456, 1) of float64 (2,147,483,648 bytes) but its zip entry holds "
        "16 bytes of data"
    )
    assert rss_kib() - before < 50 * 1024


def test_an_npz_declaring_2_gib_is_refused_against_the_memory_available(tmp_path, meminfo):
    path = tmp_path / "zeros.npz"
    path.write_bytes(declaring((2**28, 1)))  # the 2 GiB of zeros of the report, in a file of 400 bytes
    meminfo(4 * GiB)
    before = rss_kib()
    with pytest.raises(DataError) as err:
        npz(tmp_path, path=path)
    assert str(err.value) == (
        f"{path}: its arrays declare 2 GiB (x_train the most: shape (268435456, 1) of float64), which needs ~4 GiB "
        "to load (1 GiB as held, counted twice: converted, then split); 4 GiB of memory is available and loading "
        "data may use at most 50% of it"
    )
    assert rss_kib() - before < 50 * 1024, "it read the array"


def test_an_npz_declaring_more_than_the_hard_cap_is_refused_whatever_is_free(tmp_path, meminfo):
    path = tmp_path / "huge.npz"
    path.write_bytes(declaring((2**40, 1), "|u1"))  # 1 TiB, in a ZIP64 entry that agrees
    meminfo(2**50)  # a machine with a PiB free still reads at most MAX_DATA_BYTES
    with pytest.raises(DataError, match=r"declare 1 TiB .*; tricklab reads at most 16 GiB from a data file$"):
        npz(tmp_path, path=path)


def test_a_small_npz_too_large_for_the_memory_left_is_refused_and_loads_when_there_is_room(tmp_path, meminfo):
    x, y = blobs(4000, 32)  # 1 MiB of float64
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    meminfo(2 * 2**20)
    with pytest.raises(DataError, match=r"which needs ~2\.\d+ MiB to load .* 2 MiB of memory is available"):
        npz(tmp_path, path=tmp_path / "d.npz")
    meminfo(8 * 2**20)
    assert npz(tmp_path, path=tmp_path / "d.npz").info.input_shape == (32,)


def test_an_object_member_is_refused_from_its_header_without_being_read(tmp_path):
    header = npy_header((2**30,), "|O")
    y = io.BytesIO()
    np.save(y, np.arange(4) % 2)
    path = tmp_path / "o.npz"
    path.write_bytes(zip_of({"x_train.npy": (header + b"\x80\x04junk", None), "y_train.npy": (y.getvalue(), None)}))
    with pytest.raises(DataError, match=r"x_train holds Python objects \(dtype object\); .* allow_pickle=False"):
        npz(tmp_path, path=path)


def test_a_csv_too_large_for_the_memory_left_stops_while_it_is_read(tmp_path, meminfo):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(10_000)))
    meminfo(2**20)  # 1 MiB: 50% of it at 24 bytes a cell holds 21,845 cells, 7,281 rows of 3
    before = rss_kib()
    with pytest.raises(DataError, match=r"t\.csv: more than 7,281 rows of 3 columns need more than 512 KiB to load"):
        csv(tmp_path, path=path)
    assert rss_kib() - before < 50 * 1024
    meminfo(GiB)
    assert len(csv(tmp_path, path=path).train) == 8000


def test_a_csv_larger_than_the_hard_cap_is_refused_unread(tmp_path, meminfo):
    path = tmp_path / "sparse.csv"
    with path.open("wb") as f:
        f.write(b"a,label\n")
        f.truncate(local.MAX_DATA_BYTES + 1)  # sparse: no disk, no time
    meminfo(2**50)
    with pytest.raises(DataError, match=r"sparse\.csv: the file holds 16 GiB; tricklab reads at most 16 GiB"):
        csv(tmp_path, path=path)


def test_a_csv_line_longer_than_the_bound_is_refused(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("a,label\n" + "1," * (local.MAX_CSV_LINE // 2 + 1) + "0\n")
    with pytest.raises(DataError, match=r"wide\.csv: line 2 is longer than 4,194,304 characters"):
        csv(tmp_path, path=path)


# --- 7. threads ---------------------------------------------------------------------------------------------


@pytest.fixture
def two_cores(monkeypatch):
    """This process may run on 2 cores, and no thread count was warned about yet."""
    monkeypatch.setattr(seed.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(seed, "_capped", set())


def test_threads_beyond_the_cores_are_capped_with_one_warning(two_cores, capsys):
    assert seed.set_threads(1024) == 2 and torch.get_num_threads() == 2
    assert capsys.readouterr().err == "warning: train.threads=1024 but this process may use 2 cores; using 2 threads\n"
    assert seed.set_threads(1024) == 2 and capsys.readouterr().err == ""  # once per process
    assert seed.set_threads(2) == 2 and seed.set_threads(1) == 1 and seed.set_threads(0) == 2
    assert capsys.readouterr().err == ""


def test_train_with_1024_threads_on_two_cores_trains_on_two(workdir, two_cores, capsys):
    sets = ["data.name=synthetic", "model.width=8", "model.depth=1", "train.epochs=1", "train.threads=1024"]
    rc = main(["train", *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("warning: train.threads=1024 but this process may use 2 cores; using 2 threads") == 1, err
    assert torch.get_num_threads() == 2


# --- 5. the memory check: overflow, free memory, the dataset, models that cannot be built on meta --------


SYNTH = ["data.name=synthetic", "train.threads=1", "train.epochs=1", "train.device=cpu"]


def test_a_width_too_large_for_torch_to_count_is_refused_not_let_through(workdir, capsys):
    before = rss_kib()
    line = one_line_error(capsys, ["train", "--set", "data.name=synthetic", "--set", "model.width=2000000000"])
    assert line.startswith(
        "error: model.width = 2000000000: the model is too large to count: a tensor of it would hold more than "
        "2⁶³ bytes (RuntimeError: Storage size calculation overflowed"
    ), line
    assert rss_kib() - before < 100 * 1024, "it allocated the model"
    assert not (workdir / "runs").exists()


def test_tied_weights_are_counted_once_when_the_model_is_given_cpu_weights():
    """A small model gets zeroed CPU weights to run its forward pass; a weight two layers share stays one tensor."""

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encode, self.decode = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.decode.weight = self.encode.weight
            self.register_buffer("scale", torch.ones(4))

        def forward(self, x):
            return self.decode(self.encode(x)) * self.scale

    model, device = memory.build_to_count(Tied)
    assert device == "cpu" and model.decode.weight is model.encode.weight
    assert sum(p.numel() for p in model.parameters()) == 16 + 4 + 4  # one shared 4×4 weight, two biases
    assert all(p.device.type == "cpu" and not p.any() for p in (*model.parameters(), *model.buffers()))
    assert memory.count_on_meta(Tied, (4,)) == (24, 4 + 4)  # the two linear layers' outputs


def test_figures_beyond_the_float_range_are_written_not_overflowed():
    est = memory.Estimate(parameters=10**400, activations_per_example=10**300, batch_size=128, optimizer_slots=2)
    with pytest.raises(ConfigError) as err:
        memory.check_fits(est, 2**30, "model.width", 1, "adam")
    assert str(err.value) == (
        "model.width = 1: the model needs ~1e+400 parameters and ~1.3e+302 activation values for a batch of 128 "
        "(~1.4e+386 PiB to train with adam); this machine has 1 GiB available"
    )


def test_the_check_compares_with_the_memory_available_not_the_machine_s_total(meminfo):
    cfg = load_config(overrides=[*SYNTH, "model.width=256", "model.depth=2"])
    splits = load_data(cfg)
    meminfo(GiB)
    model, _ = build_model(cfg, splits, 0)
    params = sum(p.numel() for p in model.parameters())
    meminfo(2**20)  # 64 GiB in all, 1 MiB of it available
    with pytest.raises(ConfigError) as err:
        build_model(cfg, splits, 0)
    held = memory.human_bytes(nbytes(splits))
    assert str(err.value).startswith(f"model.width = 256: the model needs ~{params:.2g} parameters"), err.value
    assert str(err.value).endswith(
        f"to train with adam); this machine has 1 MiB available besides the dataset's {held}"
    )


def test_the_estimate_holds_the_dataset_which_a_loaded_dataset_already_took_from_what_is_available():
    est = memory.Estimate(
        parameters=1000, activations_per_example=50, batch_size=8, optimizer_slots=2, data_bytes=10**6
    )
    assert est.total_bytes == 4 * 1000 * 4 + 4 * 50 * 8 + 10**6
    memory.check_fits(est, est.total_bytes, "model.width", 8, "adam")  # nothing loaded yet: all of it must fit
    memory.check_fits(est, est.total_bytes - 10**6, "model.width", 8, "adam", held=10**6)  # the data is loaded
    with pytest.raises(ConfigError, match="this machine has 17.2 KiB available besides the dataset's 977 KiB$"):
        memory.check_fits(est, est.total_bytes - 10**6 - 1, "model.width", 8, "adam", held=10**6)


def test_build_model_counts_the_splits_as_held(monkeypatch):
    seen = []
    monkeypatch.setattr(memory, "check_fits", lambda est, available, *a, **kw: seen.append((est, kw)))
    cfg = load_config(overrides=[*SYNTH, "model.width=16", "model.depth=1"])
    splits = load_data(cfg)
    build_model(cfg, splits, 0)
    ((est, kw),) = seen
    assert est.data_bytes == kw["held"] == nbytes(splits) > 0


def test_training_on_a_gpu_must_also_fit_in_its_free_memory(monkeypatch, meminfo):
    """No GPU needed: torch.cuda says how much is free, and the device resolves to cuda."""
    cfg = load_config(overrides=[*SYNTH, "model.width=256", "model.depth=2"])
    splits = load_data(cfg)
    meminfo(GiB)  # the host has room
    monkeypatch.setattr(memory, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 80 * GiB))  # 1 MiB of 80 GiB free
    with pytest.raises(ConfigError, match=r"^model\.width = 256: the model needs .* the GPU has 1 MiB available$"):
        memory.check_training_memory(cfg, (1, 8, 8), 4, len(splits.train), nbytes(splits))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GiB, 80 * GiB))
    assert memory.check_training_memory(cfg, (1, 8, 8), 4, len(splits.train), nbytes(splits)) is True


@pytest.fixture
def meta_shy():
    """``meta_shy``: a registered model that refuses to be built on the meta device (it needs real values)."""

    def factory(input_shape, num_classes, hidden=4):
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("this model needs real values to build")
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), hidden), torch.nn.Linear(hidden, num_classes)
        )

    MODELS.register("meta_shy", factory, source="test")
    yield "meta_shy"
    MODELS.unregister("meta_shy")


def test_a_model_that_cannot_be_built_on_meta_is_checked_once_built(meta_shy, meminfo):
    cfg = load_config(overrides=[*SYNTH, "model.name=meta_shy", "model.kwargs={hidden: 100000}"])
    splits = load_data(cfg)
    meminfo(2**20)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, splits, 0)  # 6.9 M parameters, ~110 MiB with adam: more than 1 MiB
    assert str(err.value).startswith("model.name = 'meta_shy': the model needs ~6.9e+06 parameters"), err.value
    assert "to train with adam); this machine has 1 MiB available" in str(err.value)
    meminfo(GiB)
    model, _ = build_model(cfg, splits, 0)
    assert model.training and all(m.training for m in model.modules())  # counting left its modes alone
    assert memory.check_training_memory(cfg, (1, 8, 8), 4, 100) is False  # it could not be counted on meta


# --- fuzz: hostile .npy headers and CSV text ----------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
DESCRS = [
    "<f8", ">f8", "<f4", "<f2", "|u1", "|i1", "<i8", "<u8", "<u4", "|b1", "<c16", "|O", "<U3", "|S2", "<M8[s]",
    "|V0", "|V8", [("a", "<f4")], [("a", "|O")],
]  # fmt: skip
sides = st.one_of(st.integers(0, 6), st.integers(0, 2**44), st.sampled_from([2**31 - 1, 2**32, 2**63 - 1, -1]))


@st.composite
def npy_members(draw) -> tuple[bytes, int | None]:
    """An .npy member: any shape and dtype in its header, a few real bytes, and a declared size that is true,
    agrees with the header or is anything."""
    shape = tuple(draw(st.lists(sides, max_size=4)))
    descr = draw(st.sampled_from(DESCRS))
    buf = io.BytesIO()
    writer = draw(st.sampled_from([np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0]))
    writer(buf, {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape})
    header = buf.getvalue()
    size = max(0, math.prod(shape)) * np.dtype(descr).itemsize
    data = bytes(size) if size <= 256 and draw(st.booleans()) else draw(st.binary(max_size=48))
    declared = draw(st.one_of(st.none(), st.just(len(header) + size), st.integers(0, 2**45)))
    return header + data, (min(declared, 2**64 - 1) if declared is not None else None)


def a_valid_member(a: np.ndarray) -> tuple[bytes, None]:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue(), None


VALID = {
    "x_train.npy": a_valid_member(np.arange(24.0).reshape(8, 3)),
    "y_train.npy": a_valid_member(np.arange(8) % 2),
    "x_test.npy": a_valid_member(np.ones((4, 3))),
    "y_test.npy": a_valid_member(np.arange(4) % 2),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile-fuzz")


def ends_in_bounds(fn) -> None:
    """``fn()`` returns or raises tricklab's one-line error, never another exception, and RSS stays bounded."""
    before = rss_kib()
    try:
        fn()
    except TrickLabError as e:
        assert str(e) and "\n" not in str(e) and len(str(e)) <= MAX_MESSAGE, repr(str(e))
    assert rss_kib() - before < 200 * 1024, f"RSS grew by {(rss_kib() - before) // 1024} MiB"


@FUZZ
@given(
    hostile=st.dictionaries(st.sampled_from(list(VALID)), npy_members(), min_size=1, max_size=4),
    available=st.sampled_from([2**16, 2**24, 2**36, None]),
)
def test_npz_headers_load_within_bounds_or_fail_in_one_line(scratch, hostile, available):
    path = scratch / "fuzz.npz"
    path.write_bytes(zip_of({**VALID, **hostile}))
    with pytest.MonkeyPatch.context() as mp:
        if available is not None:
            (scratch / "meminfo").write_text(f"MemAvailable: {available // 1024} kB\n")
            mp.setattr(host, "MEMINFO", str(scratch / "meminfo"))
        ends_in_bounds(lambda: npz(scratch, path=path))


CSV_CELLS = ["0", "1", "2", "-1", "0.5", "1e9", "1e400", "-1e30", "nan", "99999", "100000", "18446744073709551615", ""]
CSV_TOKENS = [
    "a", "label", ",", ";", "\n", "\r\n", '"', "0", "1", "7", "-1", "0.5", "1e9", "1e400", "-1e30", "nan", "inf",
    "18446744073709551615", "9" * 30, " ", "", "\ufeff", "\x00", "x,label\n", "0,1\n", "1,0\n",
]  # fmt: skip


@FUZZ
@given(
    body=st.one_of(
        st.lists(st.sampled_from(CSV_TOKENS), max_size=60).map("".join),
        st.lists(st.lists(st.sampled_from(CSV_CELLS), min_size=2, max_size=2).map(",".join), max_size=20).map(
            "\n".join
        ),
    ),
    available=st.sampled_from([2**12, 2**20, None]),
    num_classes=st.one_of(st.none(), st.sampled_from([2, 3, MAX_CLASSES, MAX_CLASSES + 1, 10**9])),
)
def test_csv_text_loads_within_bounds_or_fails_in_one_line(scratch, body, available, num_classes):
    path = scratch / "fuzz.csv"
    path.write_text("x,label\n0,0\n1,1\n2,0\n3,1\n4,0\n" + body)
    with pytest.MonkeyPatch.context() as mp:
        if available is not None:
            (scratch / "meminfo").write_text(f"MemAvailable: {available // 1024} kB\n")
            mp.setattr(host, "MEMINFO", str(scratch / "meminfo"))
        ends_in_bounds(lambda: csv(scratch, path=path, num_classes=num_classes))


def test_the_lab_costs_a_large_variant_without_allocating_it():
    cfg = load_config(overrides=[*SYNTH, "model.width=20000", "model.depth=2"])  # 1.6 GB of float32 weights
    before = rss_kib()
    macs = costs.forward_macs(json.dumps(cfg.model.model_dump(mode="json"), sort_keys=True), (1, 8, 8), 4)
    assert rss_kib() - before < 200 * 1024, "it allocated the model to count its multiply-adds"
    assert macs == 64 * 20000 + 20000 * 20000 + 20000 * 4  # Linear: in × out per example


def test_an_ensemble_s_earlier_members_count_as_weight_copies():
    one = memory.training_estimate(load_config(overrides=[*SYNTH, "model.width=16"]), (1, 8, 8), 4, 100)
    three = memory.training_estimate(
        load_config(overrides=[*SYNTH, "model.width=16", "averaging.ensemble=3"]), (1, 8, 8), 4, 100
    )
    assert (one.weight_copies, three.weight_copies) == (0, 2)  # the run keeps every member to evaluate them together
    assert three.weight_bytes - one.weight_bytes == 2 * 4 * one.parameters
