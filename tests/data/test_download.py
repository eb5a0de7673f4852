"""The download path for real: a local HTTP server on 127.0.0.1 stands in for the dataset mirrors.

Each test serves a folder of .gz files (copies of the real MNIST files, or tiny hand-built IDX files whose
checksums replace the published ones), points ``TRICKLAB_MIRRORS`` at it and ``TRICKLAB_DATA`` at an empty
cache in ``tmp_path``, and checks what a user would see: verified files in the cache, no second download,
corrupt downloads refused with the URL named, dead mirrors skipped, and one clear error when all fail.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from local_mirror import DroppingHandler, dead_url

from tricklab.data import DATASETS, download, load_splits, sources
from tricklab.data.download import RemoteFile, atomic_write, fetch
from tricklab.data.idx import idx_size
from tricklab.errors import DataError

MNIST_NAMES = [spec.name for spec in sources.MNIST_FILES]
FIRST = MNIST_NAMES[0]  # train-images: fetched first, so corrupting it fails before any other download


# --- a local mirror: tests/data/local_mirror.py and conftest.py ----------------------------------------

# --- what is served: the real MNIST files, or tiny stand-ins with their own checksums ------------------


def idx_bytes(a: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    head = bytes([0, 0, code[a.dtype.type], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def tiny_mnist_files(folder: Path, n_train: int = 6, n_test: int = 4) -> dict[str, bytes]:
    """Write four tiny MNIST-shaped .gz files into ``folder``; return their decompressed contents."""
    rng = np.random.default_rng(0)
    contents = {
        MNIST_NAMES[0]: idx_bytes(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
        MNIST_NAMES[1]: idx_bytes(np.arange(n_train, dtype=np.uint8) % 10),
        MNIST_NAMES[2]: idx_bytes(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        MNIST_NAMES[3]: idx_bytes(np.arange(n_test, dtype=np.uint8) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(gzip.compress(data, mtime=0))
    return contents


@pytest.fixture(params=["real", "tiny"])
def served(request, tmp_path, monkeypatch) -> Path:
    """A folder holding the four MNIST .gz files that ``mnist`` will accept.

    ``real``: copies of the real files (skipped without them); ``tiny``: hand-built files whose sha256s
    replace the published ones, so the download path is tested on every machine.
    """
    folder = tmp_path / "served"
    folder.mkdir()
    if request.param == "real":
        mnist_root = request.getfixturevalue("mnist_root")
        for name in MNIST_NAMES:
            shutil.copyfile(mnist_root / "mnist" / name, folder / name)
    else:
        contents = tiny_mnist_files(folder)
        specs = tuple(RemoteFile(n, sha256=hashlib.sha256(contents[n]).hexdigest()) for n in MNIST_NAMES)
        monkeypatch.setattr(sources, "MNIST_FILES", specs)
    return folder


def break_deflate(raw: bytes) -> bytes:
    """Make the first deflate block a reserved type (BTYPE=11): the gzip header stays valid."""
    assert raw[:2] == b"\x1f\x8b" and raw[3] == 0, "expects a gzip file with a plain 10-byte header"
    return raw[:10] + b"\x07" + raw[11:]


def flip_crc(raw: bytes) -> bytes:
    return raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]


CORRUPTIONS = {
    "bad_deflate_stream": break_deflate,
    "bad_crc": flip_crc,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "not_gzip": lambda raw: b"<html>404 page of a captive portal</html>",
    "other_valid_content": lambda raw: gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)), mtime=0),
}


def parse_labels(path: Path) -> bytes:
    """The labels of an IDX1 .gz file (after its 8-byte header)."""
    return gzip.decompress(path.read_bytes())[8:]


def leftovers(folder: Path) -> list[Path]:
    return list(folder.rglob("*.part")) if folder.exists() else []


# --- tests ------------------------------------------------------------------------------------------


def test_download_verifies_and_caches_all_four_files(served, serve, cache, monkeypatch):
    mirror = serve(served)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)

    splits = load_splits("mnist", val_fraction=0.5, scale="none", seed=0)

    n_train = len(parse_labels(served / MNIST_NAMES[1]))
    assert len(splits.train) + len(splits.val) == n_train
    assert sorted(mirror.requests) == sorted(f"/{n}" for n in MNIST_NAMES)
    for name in MNIST_NAMES:
        cached = cache / "mnist" / name
        assert cached.is_file(), f"{name} was not cached"
        assert cached.stat().st_size == (served / name).stat().st_size
    assert leftovers(cache) == []


def test_second_load_makes_no_request(served, serve, cache, monkeypatch):
    mirror = serve(served)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)
    first = DATASETS.get("mnist")(cache)
    assert len(mirror.requests) == 4

    second = DATASETS.get("mnist")(cache)

    assert len(mirror.requests) == 4, f"cached files were downloaded again: {mirror.requests[4:]}"
    assert (second.test.y == first.test.y).all() and (second.train.x[:8] == first.train.x[:8]).all()


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_download_is_refused_naming_the_url(served, serve, cache, monkeypatch, corruption):
    (served / FIRST).write_bytes(CORRUPTIONS[corruption]((served / FIRST).read_bytes()))
    mirror = serve(served)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)

    with pytest.raises(DataError) as err:
        DATASETS.get("mnist")(cache)

    msg = str(err.value)
    assert f"{mirror.url}/{FIRST}" in msg and "corrupt" in msg, msg
    assert not (cache / "mnist" / FIRST).exists(), "a corrupt download was left in the cache"
    assert leftovers(cache) == []


def test_dead_first_mirror_falls_back_to_the_second(served, serve, cache, monkeypatch):
    mirror = serve(served)
    monkeypatch.setenv("TRICKLAB_MIRRORS", f"{dead_url()}, {mirror.url}")

    raw = DATASETS.get("mnist")(cache)

    assert len(raw.test) == len(parse_labels(served / MNIST_NAMES[3]))
    assert all((cache / "mnist" / n).is_file() for n in MNIST_NAMES)


def test_connection_lost_mid_transfer_falls_back_to_the_next_mirror(tmp_path, serve, cache):
    folder = tmp_path / "served"
    contents = tiny_mnist_files(folder)
    spec = RemoteFile(MNIST_NAMES[1], sha256=hashlib.sha256(contents[MNIST_NAMES[1]]).hexdigest())
    dropping, good = serve(folder, DroppingHandler), serve(folder)

    data = fetch(cache / "mnist", spec, [dropping.url, good.url], "mnist")

    assert data == contents[MNIST_NAMES[1]]
    assert dropping.requests == good.requests == [f"/{spec.name}"]
    assert (cache / "mnist" / spec.name).read_bytes() == (folder / spec.name).read_bytes()


def test_all_mirrors_failing_names_folder_urls_and_how_to_use_local_files(tmp_path, serve, cache, monkeypatch):
    dead = dead_url()
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = serve(empty).url  # answers 404
    monkeypatch.setenv("TRICKLAB_MIRRORS", f"{dead},{missing}")

    with pytest.raises(DataError) as err:
        DATASETS.get("mnist")(cache)

    msg = str(err.value)
    assert str(cache / "mnist") in msg
    assert f"{dead}/{FIRST}" in msg and f"{missing}/{FIRST}" in msg
    assert "data.dir" in msg and "TRICKLAB_DATA" in msg
    assert "\n" not in msg
    assert not (cache / "mnist" / FIRST).exists() and leftovers(cache) == []


def test_corrupt_file_in_the_cache_is_reported_not_replaced(served, serve, cache, monkeypatch):
    mirror = serve(served)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)
    (cache / "mnist").mkdir()
    bad = break_deflate((served / FIRST).read_bytes())
    (cache / "mnist" / FIRST).write_bytes(bad)

    with pytest.raises(DataError) as err:
        DATASETS.get("mnist")(cache)

    msg = str(err.value)
    assert str(cache / "mnist" / FIRST) in msg and "corrupt" in msg and "delete" in msg, msg
    assert (cache / "mnist" / FIRST).read_bytes() == bad, "the user's cached file was replaced"
    assert mirror.requests == []


def test_cached_files_get_the_usual_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.gz", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "f.gz").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "f.gz").read_bytes() == b"data" and leftovers(tmp_path) == []


# --- fashion-mnist: verified by the md5 of the compressed files, as Zalando publishes them -------------


@pytest.fixture
def fashion_served(tmp_path) -> Path:
    folder = tmp_path / "fashion"
    tiny_mnist_files(folder, n_train=5, n_test=3)  # same file names and format as MNIST
    return folder


def md5_specs(folder: Path) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(n, md5=hashlib.md5((folder / n).read_bytes()).hexdigest()) for n in MNIST_NAMES)


def test_fashion_mnist_with_matching_md5_loads_and_caches(fashion_served, serve, cache, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_FILES", md5_specs(fashion_served))
    monkeypatch.setenv("TRICKLAB_MIRRORS", serve(fashion_served).url)

    raw = DATASETS.get("fashion-mnist")(cache)

    assert tuple(raw.train.x.shape) == (5, 1, 28, 28) and tuple(raw.test.x.shape) == (3, 1, 28, 28)
    assert raw.info.classes == sources.FASHION_CLASSES
    assert all((cache / "fashion-mnist" / n).is_file() for n in MNIST_NAMES)


def test_fashion_mnist_with_wrong_md5_is_refused(fashion_served, serve, cache, monkeypatch):
    specs = list(md5_specs(fashion_served))
    specs[1] = RemoteFile(specs[1].name, md5="0" * 32)
    monkeypatch.setattr(sources, "FASHION_FILES", tuple(specs))
    mirror = serve(fashion_served)
    monkeypatch.setenv("TRICKLAB_MIRRORS", mirror.url)

    with pytest.raises(DataError) as err:
        DATASETS.get("fashion-mnist")(cache)

    msg = str(err.value)
    assert f"{mirror.url}/{specs[1].name}" in msg and "md5" in msg and "0" * 32 in msg, msg
    assert not (cache / "fashion-mnist" / specs[1].name).exists()
    assert (cache / "fashion-mnist" / specs[0].name).exists()  # the good file before it was kept


# --- bombs: a file costs at most what a valid one would ----------------------------------------------------


def zeros_gz(n: int, head: bytes = b"") -> bytes:
    """``head`` then ``n`` zero bytes, gzip-compressed (about a thousandth of ``n``)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as f:
        f.write(head)
        for _ in range(n // 2**20):
            f.write(bytes(2**20))
    return out.getvalue()


def idx_head(*shape: int) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def peak_bytes(fn) -> tuple[int, BaseException | None]:
    """Peak Python memory allocated while ``fn()`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        raised = None
    except Exception as e:  # noqa: BLE001 - the caller checks what was raised
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


BOMB = 256 * 2**20  # 256 MiB of zeros in ~250 KB


@pytest.mark.parametrize(
    ("head", "spec", "says"),
    [
        (b"", RemoteFile(FIRST, size=sources.IDX_SIZES[FIRST]), "decompresses to more than the 47040016 bytes"),
        (idx_head(10, 28, 28), RemoteFile(FIRST, header_size=idx_size), "more than the 7856 bytes allowed"),
        (
            idx_head(2**31, 2**31),
            RemoteFile(FIRST, header_size=idx_size),
            "its header declares 4611686018427387916 bytes",
        ),
        (b"", RemoteFile(FIRST, header_size=idx_size), "its content is not an IDX file (bad magic number 00000000)"),
    ],
    ids=["known_size", "size_from_header", "header_too_large", "not_idx"],
)
def test_a_gzip_bomb_in_the_cache_stops_at_the_size_its_format_allows(tmp_path, head, spec, says):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / FIRST).write_bytes(zeros_gz(BOMB, head))

    peak, raised = peak_bytes(lambda: fetch(tmp_path / "mnist", spec, [], "mnist"))

    assert isinstance(raised, DataError) and says in str(raised) and "delete it" in str(raised), raised
    allowed = spec.size or 0  # the content of a valid file, kept until it is verified
    assert peak < allowed + 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a bomb of {BOMB / 2**20:.0f} MiB"


def test_without_a_size_the_content_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_CONTENT", 4 * 2**20)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / FIRST).write_bytes(zeros_gz(BOMB))
    peak, raised = peak_bytes(lambda: fetch(tmp_path / "mnist", RemoteFile(FIRST), [], "mnist"))
    assert isinstance(raised, DataError) and f"more than the {4 * 2**20} bytes allowed" in str(raised), raised
    assert peak < 16 * 2**20


def test_the_real_specs_know_the_exact_size_of_each_mnist_file():
    for spec in (*sources.MNIST_FILES, *sources.FASHION_FILES):
        n = 60_000 if spec.name.startswith("train") else 10_000
        assert spec.size == (16 + n * 28 * 28 if "images" in spec.name else 8 + n)
        assert spec.header_size is idx_size


def test_a_file_of_the_exact_size_with_the_right_content_loads(tmp_path):
    content = idx_head(3, 28, 28) + bytes(range(256)) * 9 + bytes(3 * 28 * 28 - 256 * 9)
    spec = RemoteFile(FIRST, sha256=hashlib.sha256(content).hexdigest(), size=len(content), header_size=idx_size)
    (tmp_path / FIRST).write_bytes(gzip.compress(content, mtime=0))
    assert fetch(tmp_path, spec, [], "mnist") == content
    (tmp_path / FIRST).write_bytes(gzip.compress(content[:-1], mtime=0))
    n = len(content)
    with pytest.raises(DataError, match=rf"sha256 of its content .* != expected .* \({n - 1} bytes, expected {n}\)"):
        fetch(tmp_path, spec, [], "mnist")
    with pytest.raises(DataError, match=f"corrupt: it decompresses to {n - 1} bytes, expected {n}; delete it"):
        fetch(tmp_path, RemoteFile(FIRST, size=n), [], "mnist")


def test_a_bomb_served_by_a_mirror_is_refused_and_never_cached(tmp_path, serve, cache):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / FIRST).write_bytes(zeros_gz(BOMB, idx_head(10, 28, 28)))
    mirror = serve(folder)
    spec = RemoteFile(FIRST, header_size=idx_size)

    peak, raised = peak_bytes(lambda: fetch(cache / "mnist", spec, [mirror.url], "mnist"))

    assert isinstance(raised, DataError) and f"{mirror.url}/{FIRST}" in str(raised), raised
    assert "more than the 7856 bytes allowed" in str(raised)
    assert not (cache / "mnist" / FIRST).exists() and leftovers(cache) == []
    assert peak < 8 * 2**20


def test_an_oversized_download_is_cut_off_at_the_file_limit(tmp_path, serve, cache):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / FIRST).write_bytes(os.urandom(200_000))  # incompressible: the file itself is too large
    mirror = serve(folder)
    with pytest.raises(DataError, match="more than the .* bytes it can have"):
        fetch(cache / "mnist", RemoteFile(FIRST, size=1000), [mirror.url], "mnist")


def test_an_oversized_or_special_cached_file_is_refused_without_reading_it(tmp_path):
    (tmp_path / FIRST).write_bytes(os.urandom(200_000))
    with pytest.raises(DataError, match=r"corrupt: 200000 bytes, more than the \d+ bytes it can have; delete it"):
        fetch(tmp_path, RemoteFile(FIRST, size=1000), [], "mnist")
    os.mkfifo(tmp_path / "pipe.gz")  # nothing writes to it: reading it would wait forever
    with pytest.raises(DataError, match="pipe.gz is not a regular file"):
        fetch(tmp_path, RemoteFile("pipe.gz"), [], "mnist")
