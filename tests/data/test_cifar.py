"""CIFAR-10 from its binary archive, served by a local HTTP server on 127.0.0.1 in place of the authors' site.

Each test builds a small archive in the real format (the same member names, records of one label byte and
3,072 CHW pixel bytes, but 20 records per batch file), replaces the published MD5 by the archive's, points
``TRICKLAB_MIRRORS`` at the server and ``TRICKLAB_DATA`` at an empty cache, and checks what a user would
see: arrays of the right shapes, the archive cached and never fetched twice, and one clear error for a
corrupt download, a dead mirror, a damaged member or a corrupt cached file.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from local_mirror import dead_url

from tricklab.data import DATASETS, load_splits
from tricklab.data import cifar as cifar_module
from tricklab.data.download import RemoteFile
from tricklab.errors import DataError

ARCHIVE = "cifar-10-binary.tar.gz"
RECORDS = 20  # per batch file (the real files hold 10,000)
BATCHES = [*cifar_module.TRAIN_MEMBERS, cifar_module.TEST_MEMBER]


# --- the local mirror (serve, cache, dead_url): tests/data/local_mirror.py and conftest.py --------------


# --- a small archive in the binary format ---------------------------------------------------------------


def batch_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    """Records of 1 label byte + the 3×32×32 image, red plane then green then blue, each row by row."""
    return np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1).tobytes()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-bin")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name if "/" in name else f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Served:
    folder: Path
    x: dict[str, np.ndarray] = field(default_factory=dict)  # member name -> images
    y: dict[str, np.ndarray] = field(default_factory=dict)  # member name -> labels

    def members(self) -> dict[str, bytes]:
        # stored in the real archive's jumbled order, with its two small text files
        order = ["data_batch_1.bin", "test_batch.bin", "data_batch_3.bin", "data_batch_5.bin"]
        order += ["data_batch_2.bin", "data_batch_4.bin"]
        files = {n: batch_bytes(self.x[n], self.y[n]) for n in order}
        return {"batches.meta.txt": b"airplane\nautomobile\n", **files, "readme.html": b"<html></html>"}

    def publish(self, monkeypatch, members: dict[str, bytes] | None = None) -> bytes:
        """Write the archive of ``members`` (default: the good ones) and make its MD5 the expected one."""
        archive = tar_gz(self.members() if members is None else members)
        (self.folder / ARCHIVE).write_bytes(archive)
        spec = RemoteFile(ARCHIVE, md5=hashlib.md5(archive).hexdigest(), decompress=False)
        monkeypatch.setattr(cifar_module, "CIFAR_FILE", spec)
        return archive


@pytest.fixture
def served(tmp_path, monkeypatch) -> Served:
    """A folder holding a good 20-records-per-batch archive whose MD5 is the one expected."""
    monkeypatch.setattr(cifar_module, "CIFAR_RECORDS", RECORDS)
    rng = np.random.default_rng(0)
    s = Served(tmp_path / "served")
    s.folder.mkdir()
    for i, name in enumerate(BATCHES):
        s.x[name] = rng.integers(0, 256, (RECORDS, 3, 32, 32), dtype=np.uint8)
        s.y[name] = (np.arange(RECORDS) + i) % 10
    s.publish(monkeypatch)
    return s


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob("*.part")) if folder.exists() else []


# --- tests ------------------------------------------------------------------------------------------


def test_the_published_binary_archive_is_the_one_downloaded():
    spec = cifar_module.CIFAR_FILE
    assert (spec.name, spec.md5, spec.decompress) == (ARCHIVE, "c32a1d4ab5d03f1284b67883e8d87530", False)
    assert cifar_module.CIFAR_MIRRORS == ("https://www.cs.toronto.edu/~kriz",)
    assert "Krizhevsky 2009" in DATASETS.help("cifar10")


def test_download_verifies_caches_and_reads_every_batch(served, serve, cache, monkeypatch):
    mirror = serve(served.folder)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)

    raw = DATASETS.get("cifar10")(cache)

    assert mirror.requests == [f"/{ARCHIVE}"]
    assert (cache / "cifar10" / ARCHIVE).read_bytes() == (served.folder / ARCHIVE).read_bytes()
    assert leftovers(cache) == [] and sorted(p.name for p in (cache / "cifar10").iterdir()) == [ARCHIVE]
    assert tuple(raw.train.x.shape) == (5 * RECORDS, 3, 32, 32) and tuple(raw.test.x.shape) == (RECORDS, 3, 32, 32)
    assert raw.train.x.dtype == raw.test.x.dtype == torch.uint8
    assert raw.train.y.dtype == raw.test.y.dtype == torch.int64
    train = cifar_module.TRAIN_MEMBERS
    assert np.array_equal(raw.train.x.numpy(), np.concatenate([served.x[n] for n in train]))
    assert np.array_equal(raw.train.y.numpy(), np.concatenate([served.y[n] for n in train]))
    assert np.array_equal(raw.test.x.numpy(), served.x["test_batch.bin"])
    assert np.array_equal(raw.test.y.numpy(), served.y["test_batch.bin"])
    assert sorted(raw.train.y.unique().tolist()) == list(range(10))
    assert raw.info.name == "cifar10" and raw.info.input_shape == (3, 32, 32) and raw.info.num_classes == 10
    assert raw.info.classes[:2] == ("airplane", "automobile") and raw.info.classes[-1] == "truck"


def test_second_load_makes_no_request(served, serve, cache, monkeypatch):
    mirror = serve(served.folder)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)
    first = DATASETS.get("cifar10")(cache)

    second = DATASETS.get("cifar10")(cache)

    assert mirror.requests == [f"/{ARCHIVE}"], "the cached archive was downloaded again"
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)


def test_pixels_are_read_in_chw_order(served, serve, cache, monkeypatch):
    x = np.zeros((RECORDS, 3, 32, 32), np.uint8)
    x[0, 2, 5, 7] = 255  # byte 1 + 1024·2 + 32·5 + 7 of record 0: the blue plane, row 5, column 7
    record = bytearray(batch_bytes(x, served.y["data_batch_1.bin"]))
    assert record[1 + 1024 * 2 + 32 * 5 + 7] == 255
    served.x["data_batch_1.bin"] = x
    served.publish(monkeypatch)
    monkeypatch.setenv("TRICKLAB_MIRRORS", serve(served.folder).url)

    raw = DATASETS.get("cifar10")(cache)

    assert raw.train.x[0, 2, 5, 7] == 255 and int(raw.train.x[:RECORDS].sum()) == 255


def test_load_splits_standardizes_each_colour_channel(served, serve, cache, monkeypatch):
    monkeypatch.setenv("TRICKLAB_MIRRORS", serve(served.folder).url)

    s = load_splits("cifar10", val_fraction=0.2, scale="standardize", seed=0)

    assert (len(s.train), len(s.val), len(s.test)) == (4 * RECORDS, RECORDS, RECORDS)
    assert isinstance(s.scaler.shift, tuple) and len(s.scaler.shift) == len(s.scaler.scale) == 3
    means = s.train.x.double().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3, dtype=torch.float64), atol=1e-5)


CORRUPTIONS = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "flipped_byte": lambda raw: raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:],
    "not_an_archive": lambda raw: b"<html>404 page of a captive portal</html>",
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_download_is_refused_naming_the_url_and_nothing_is_cached(
    served, serve, cache, monkeypatch, corruption
):
    path = served.folder / ARCHIVE
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    mirror = serve(served.folder)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)

    with pytest.raises(DataError) as err:
        DATASETS.get("cifar10")(cache)

    msg = str(err.value)
    assert f"{mirror.url}/{ARCHIVE}" in msg and "corrupt" in msg and "md5" in msg, msg
    assert "\n" not in msg
    assert not (cache / "cifar10" / ARCHIVE).exists() and leftovers(cache) == []


def test_dead_first_mirror_falls_back_to_the_second(served, serve, cache, monkeypatch):
    mirror = serve(served.folder)
    monkeypatch.setenv("TRICKLAB_MIRRORS", f"{dead_url()},{mirror.url}")

    raw = DATASETS.get("cifar10")(cache)

    assert len(raw.test) == RECORDS and mirror.requests == [f"/{ARCHIVE}"]
    assert (cache / "cifar10" / ARCHIVE).is_file()


def test_all_mirrors_failing_names_folder_urls_and_how_to_use_local_files(tmp_path, serve, cache, monkeypatch):
    dead = dead_url()
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = serve(empty).url  # answers 404
    monkeypatch.setenv("TRICKLAB_MIRRORS", f"{dead},{missing}")

    with pytest.raises(DataError) as err:
        DATASETS.get("cifar10")(cache)

    msg = str(err.value)
    assert msg.startswith("cifar10: ") and str(cache / "cifar10") in msg
    assert f"{dead}/{ARCHIVE}" in msg and f"{missing}/{ARCHIVE}" in msg
    assert "data.dir" in msg and "TRICKLAB_DATA" in msg and "\n" not in msg
    assert not (cache / "cifar10" / ARCHIVE).exists() and leftovers(cache) == []


def test_corrupt_archive_in_the_cache_is_reported_not_replaced(served, serve, cache, monkeypatch):
    mirror = serve(served.folder)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)
    (cache / "cifar10").mkdir()
    bad = (served.folder / ARCHIVE).read_bytes()[:-10]
    (cache / "cifar10" / ARCHIVE).write_bytes(bad)

    with pytest.raises(DataError) as err:
        DATASETS.get("cifar10")(cache)

    msg = str(err.value)
    assert str(cache / "cifar10" / ARCHIVE) in msg and "corrupt" in msg and "delete" in msg, msg
    assert (cache / "cifar10" / ARCHIVE).read_bytes() == bad, "the user's cached file was replaced"
    assert mirror.requests == []


def damaged(served: Served, how: str) -> dict[str, bytes]:
    members = served.members()
    if how == "short_member":
        members["data_batch_3.bin"] = members["data_batch_3.bin"][: -cifar_module.RECORD_BYTES]
    elif how == "long_member":
        members["data_batch_3.bin"] += b"\0"
    elif how == "missing_member":
        del members["test_batch.bin"]
    elif how == "oversized_other_member":
        members["batches.meta.txt"] = b"\0" * (RECORDS * cifar_module.RECORD_BYTES + 1)  # before the batches
    elif how == "label_out_of_range":
        y = served.y["data_batch_2.bin"].copy()
        y[4] = 10
        members["data_batch_2.bin"] = batch_bytes(served.x["data_batch_2.bin"], y)
    return members


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("short_member", f"data_batch_3.bin has {(RECORDS - 1) * 3073} bytes, expected {RECORDS * 3073}"),
        ("long_member", f"data_batch_3.bin has {RECORDS * 3073 + 1} bytes, expected {RECORDS * 3073}"),
        ("missing_member", "the archive lacks test_batch.bin"),
        (
            "oversized_other_member",
            f"batches.meta.txt has {RECORDS * 3073 + 1} bytes, more than a batch file's {RECORDS * 3073}",
        ),
        ("label_out_of_range", "data_batch_2.bin: record 4 has label 10, expected 0..9"),
    ],
)
def test_a_damaged_member_is_reported_naming_the_archive_and_the_member(served, serve, cache, monkeypatch, how, says):
    served.publish(monkeypatch, damaged(served, how))  # its MD5 is the expected one: the content is at fault
    monkeypatch.setenv("TRICKLAB_MIRRORS", serve(served.folder).url)

    with pytest.raises(DataError) as err:
        DATASETS.get("cifar10")(cache)

    msg = str(err.value)
    assert msg.startswith("cifar10: ") and says in msg and str(cache / "cifar10" / ARCHIVE) in msg, msg
    assert "\n" not in msg and len(msg) < 300 + len(str(cache))


def test_member_names_never_reach_the_disk(served, serve, cache, monkeypatch, tmp_path):
    members = {f"../../escaped/{n}" if n.endswith(".bin") else n: d for n, d in served.members().items()}
    served.publish(monkeypatch, members)
    monkeypatch.setenv("TRICKLAB_MIRRORS", serve(served.folder).url)

    raw = DATASETS.get("cifar10")(cache)  # read in memory: a hostile name is only a name

    assert len(raw.train) == 5 * RECORDS
    assert not list(tmp_path.rglob("escaped")) and not (Path.cwd().parent / "escaped").exists()
    assert sorted(p.name for p in (cache / "cifar10").iterdir()) == [ARCHIVE]


@pytest.mark.parametrize("payload", ["plain_text", "truncated_gzip"])
def test_a_file_that_matches_its_md5_but_is_no_tar_gz_is_reported(served, serve, cache, monkeypatch, payload):
    good = (served.folder / ARCHIVE).read_bytes()
    archive = b"just some text" if payload == "plain_text" else good[: len(good) // 2]
    (served.folder / ARCHIVE).write_bytes(archive)
    spec = RemoteFile(ARCHIVE, md5=hashlib.md5(archive).hexdigest(), decompress=False)
    monkeypatch.setattr(cifar_module, "CIFAR_FILE", spec)
    monkeypatch.setenv("TRICKLAB_MIRRORS", serve(served.folder).url)

    with pytest.raises(DataError, match=r"^cifar10: .* is not a readable \.tar\.gz archive") as err:
        DATASETS.get("cifar10")(cache)

    assert str(cache / "cifar10" / ARCHIVE) in str(err.value) and "\n" not in str(err.value)
