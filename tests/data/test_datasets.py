"""Datasets: the IDX reader, seeded train/val splits, scaling fitted on train only, batching, mnist1d, MNIST."""

from __future__ import annotations

import random
import socket
import struct

import numpy as np
import pytest
import torch

from tricklab.data import DATASETS, TensorBatches, load_splits
from tricklab.data.idx import parse_idx
from tricklab.errors import ConfigError, DataError

# --- parse_idx on hand-built bytes ----------------------------------------------------------------------

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of ``a``: 0, 0, dtype code, ndim, big-endian uint32 dims, big-endian data."""
    head = bytes([0, 0, IDX_CODES[a.dtype.type], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_parse_idx_reads_shape_dtype_and_values(dtype):
    a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)

    got = parse_idx(idx_bytes(a))

    assert got.shape == (2, 3, 4)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, a)
    assert torch.from_numpy(got.copy()).shape == (2, 3, 4)  # native byte order: torch accepts it


def test_parse_idx_reads_mnist_style_labels():
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 5) + labels.tobytes()  # as in train-labels-idx1-ubyte
    np.testing.assert_array_equal(parse_idx(raw), labels)


GOOD = idx_bytes(np.zeros((2, 3), np.uint8))


@pytest.mark.parametrize(
    "data, says",
    [
        (b"", "not an IDX file"),
        (b"\x1f\x8b\x08\x00" + GOOD[4:], "bad magic"),  # a still-compressed gzip file
        (b"\x00\x00\x07\x02" + GOOD[4:], "bad magic"),  # unknown type code
        (GOOD[:6], "truncated"),  # cut inside the dimensions
        (GOOD[:-1], "bytes"),  # one data byte missing
        (GOOD + b"\x00", "bytes"),  # one byte too many
    ],
    ids=["empty", "gzip_magic", "unknown_type", "truncated_header", "truncated_data", "trailing_byte"],
)
def test_parse_idx_rejects_malformed_bytes_naming_the_file(data, says):
    with pytest.raises(ValueError, match=says) as err:
        parse_idx(data, "some/file-idx")
    assert "some/file-idx" in str(err.value)


# --- load_splits on the synthetic dataset ---------------------------------------------------------------

N_TRAIN, N_TEST = 512, 128  # the synthetic dataset's official sizes


def rows(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x.reshape(len(x), -1)]


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_split_sizes(val_fraction):
    s = load_splits("synthetic", val_fraction=val_fraction)
    n_val = round(N_TRAIN * val_fraction)
    assert (len(s.train), len(s.val), len(s.test)) == (N_TRAIN - n_val, n_val, N_TEST)
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    assert s.info.num_classes == 4 and s.info.input_shape == (1, 8, 8)


def test_split_is_reproducible_for_a_seed_and_differs_across_seeds():
    a, b = load_splits("synthetic", seed=3), load_splits("synthetic", seed=3)
    c = load_splits("synthetic", seed=4)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)


def test_train_and_val_are_disjoint_and_together_the_official_train_set():
    s = load_splits("synthetic", scale="none", seed=0)
    raw = DATASETS.get("synthetic")(None)
    train, val = rows(s.train.x), rows(s.val.x)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(rows(raw.train.x.float()))
    assert torch.equal(s.test.x, raw.test.x.float()) and torch.equal(s.test.y, raw.test.y)


def test_subset_limits_only_the_training_split():
    full = load_splits("synthetic", seed=0)
    s = load_splits("synthetic", subset=100, seed=0)
    assert len(s.train) == 100
    assert (len(s.val), len(s.test)) == (len(full.val), len(full.test))
    assert torch.equal(s.val.y, full.val.y)
    assert s.notes == []


def test_subset_larger_than_the_training_split_uses_all_and_says_so():
    s = load_splits("synthetic", subset=10_000)
    assert len(s.train) == N_TRAIN - round(0.1 * N_TRAIN)
    assert any("data.subset" in n for n in s.notes)


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("data.val_fraction", {"val_fraction": 1e-4}),
        ("data.val_fraction", {"val_fraction": 0.9999}),
        ("data.subset", {"subset": 0}),
    ],
)
def test_splits_that_leave_nothing_are_config_errors_naming_the_key(key, kwargs):
    with pytest.raises(ConfigError) as err:
        load_splits("synthetic", **kwargs)
    assert str(err.value).startswith(f"{key} = ")


@pytest.mark.parametrize("scale", ["none", "minmax01", "minmax11", "standardize"])
def test_scaling_is_fitted_on_train_and_applied_to_every_split(scale):
    raw = load_splits("synthetic", scale="none", subset=200, seed=1)
    s = load_splits("synthetic", scale=scale, subset=200, seed=1)
    x = raw.train.x.double()
    expected_shift, expected_scale = {
        "none": (0.0, 1.0),
        "minmax01": (x.min(), x.max() - x.min()),
        "minmax11": ((x.max() + x.min()) / 2, (x.max() - x.min()) / 2),
        "standardize": (x.mean(), x.std()),
    }[scale]
    assert s.scaler.shift == pytest.approx(float(expected_shift))
    assert s.scaler.scale == pytest.approx(float(expected_scale))
    for split in ("train", "val", "test"):  # val and test use the training statistics
        want = (getattr(raw, split).x - s.scaler.shift) / s.scaler.scale
        torch.testing.assert_close(getattr(s, split).x, want)


def test_scaled_training_split_has_the_promised_range_or_moments():
    t = {k: load_splits("synthetic", scale=k, seed=2).train.x for k in ("minmax01", "minmax11", "standardize")}
    assert (t["minmax01"].min().item(), t["minmax01"].max().item()) == (0.0, 1.0)
    assert (t["minmax11"].min().item(), t["minmax11"].max().item()) == (-1.0, 1.0)
    assert t["standardize"].double().mean().item() == pytest.approx(0.0, abs=1e-6)
    assert t["standardize"].double().std().item() == pytest.approx(1.0, abs=1e-6)


def test_scaling_statistics_ignore_the_validation_split():
    all_train = DATASETS.get("synthetic")(None).train.x.double()
    s = load_splits("synthetic", scale="standardize", val_fraction=0.5, seed=0)
    assert s.scaler.shift != pytest.approx(all_train.mean().item(), abs=1e-6)
    assert s.val.x.double().mean().item() != pytest.approx(0.0, abs=1e-6)


# --- TensorBatches --------------------------------------------------------------------------------------


def batches(n=10, batch_size=3, **kw) -> TensorBatches:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return TensorBatches(x, torch.arange(n), batch_size, **kw)


def test_each_epoch_covers_every_example_once_and_x_stays_paired_with_y():
    b = batches(shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        ys = [y for _, y in b]
        for x, y in b:
            assert torch.equal(x[:, 0].long(), y)
        assert sorted(torch.cat(ys).tolist()) == list(range(10))


def test_shuffle_is_reproducible_with_a_seeded_generator_and_changes_per_epoch():
    def epochs(seed):
        b = batches(shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [torch.cat([y for _, y in b]).tolist() for _ in range(2)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again
    assert first[0] != first[1]
    assert first != other
    assert first[0] != list(range(10))


def test_without_shuffle_the_order_is_kept():
    assert torch.cat([y for _, y in batches()]).tolist() == list(range(10))


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [3, 3, 3, 1]), (True, [3, 3, 3])])
def test_len_and_drop_last(drop_last, sizes):
    for shuffle in (False, True):
        b = batches(drop_last=drop_last, shuffle=shuffle)
        assert len(b) == len(sizes)
        assert [len(y) for _, y in b] == sizes


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        batches(batch_size=0)


# --- mnist1d: generated offline, cached as .npz ---------------------------------------------------------


def test_mnist1d_is_generated_offline_cached_and_reloaded_from_the_cache(tmp_path, monkeypatch):
    import mnist1d.data

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path))
    random.seed(123)
    np.random.seed(123)
    py_next, np_next = random.Random(123).random(), np.random.RandomState(123).rand()

    s = load_splits("mnist1d", scale="none", val_fraction=0.1)

    assert (random.random(), np.random.rand()) == (py_next, np_next), "the caller's global RNGs were reseeded"
    assert tuple(s.train.x.shape[1:]) == (1, 40) and tuple(s.test.x.shape) == (1000, 1, 40)
    assert len(s.train) + len(s.val) == 4000
    assert s.info.num_classes == 10 and sorted(s.test.y.unique().tolist()) == list(range(10))
    assert (tmp_path / "mnist1d" / "mnist1d_default.npz").is_file()

    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: pytest.fail("generated again"))
    again = load_splits("mnist1d", scale="none", val_fraction=0.1)
    assert torch.equal(again.train.x, s.train.x) and torch.equal(again.test.y, s.test.y)


def test_corrupt_mnist1d_cache_is_reported(tmp_path):
    cache = tmp_path / "mnist1d" / "mnist1d_default.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="corrupt") as err:
        DATASETS.get("mnist1d")(tmp_path)
    assert str(cache) in str(err.value)


# --- real MNIST (skipped without the files) -------------------------------------------------------------


def test_mnist_training_pixels_have_the_published_mean_and_std(mnist_root):
    raw = DATASETS.get("mnist")(mnist_root)
    assert tuple(raw.train.x.shape) == (60000, 1, 28, 28) and raw.train.x.dtype == torch.uint8
    counts = torch.bincount(raw.train.x.flatten(), minlength=256).double()  # exact, and fast on 47M pixels
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum()
    mean = (counts * values).sum() / n
    std = ((counts * (values - mean) ** 2).sum() / (n - 1)).sqrt()
    assert mean.item() == pytest.approx(0.1307, abs=1e-4)
    assert std.item() == pytest.approx(0.3081, abs=1e-4)


def test_mnist_label_counts(mnist_root):
    raw = DATASETS.get("mnist")(mnist_root)
    assert torch.bincount(raw.train.y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(raw.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
