"""The user's own files, ``npz`` and ``csv``: tiny files in tmp_path, the happy paths and every error a user can hit.

Each error is one line naming the file and what is wrong with it (a ConfigError naming the key when the
config itself is wrong), checked here by the words a user would look for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tricklab.data import DATASETS, local
from tricklab.errors import ConfigError, DataError

npz = DATASETS.get("npz")
csv = DATASETS.get("csv")


def save_npz(tmp_path, name="data.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def write_csv(tmp_path, text: str, name="data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def blobs(n: int = 30, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (rng.normal(size=(n, features)) + y[:, None]).astype(np.float64), y


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


# --- npz: happy paths -----------------------------------------------------------------------------------


def test_npz_with_a_test_set_loads_as_float32_and_long(tmp_path, capsys):
    x, y = blobs(30)
    xt, yt = blobs(12, seed=1)
    path = save_npz(tmp_path, x_train=x, y_train=y, x_test=xt, y_test=yt)

    raw = npz(tmp_path, path=path)

    assert raw.train.x.dtype == raw.test.x.dtype == torch.float32
    assert raw.train.y.dtype == raw.test.y.dtype == torch.int64
    assert tuple(raw.train.x.shape) == (30, 4) and tuple(raw.test.x.shape) == (12, 4)
    torch.testing.assert_close(raw.train.x, torch.from_numpy(x).float())
    assert raw.test.y.tolist() == yt.tolist()
    assert (raw.info.name, raw.info.input_shape, raw.info.num_classes) == ("npz", (4,), 3)
    assert raw.info.classes == ("0", "1", "2")
    assert capsys.readouterr().err == ""  # nothing held out, nothing to say


def test_npz_uint8_images_stay_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    xt = rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)
    path = save_npz(tmp_path, x_train=x, y_train=np.arange(20) % 2, x_test=xt, y_test=np.arange(6) % 2)

    raw = npz(tmp_path, path=path)

    assert raw.train.x.dtype == torch.uint8 and raw.info.input_shape == (3, 8, 8)
    assert np.array_equal(raw.train.x.numpy(), x) and np.array_equal(raw.test.x.numpy(), xt)


def test_npz_labels_as_integral_floats_or_a_column_and_num_classes_given(tmp_path):
    x, y = blobs(20, classes=2)
    path = save_npz(tmp_path, x_train=x, y_train=y.astype(np.float32)[:, None], x_test=x[:5], y_test=y[:5])

    raw = npz(tmp_path, path=path, num_classes=5)

    assert raw.train.y.dtype == torch.int64 and raw.train.y.tolist() == y.tolist()
    assert raw.info.num_classes == 5 and len(raw.info.classes) == 5


def test_without_a_test_set_a_fixed_fifth_is_held_out_whatever_the_seed(tmp_path, capsys):
    x, y = blobs(50)
    x[:, 0] = np.arange(50)  # a row id, to follow the rows
    path = save_npz(tmp_path, x_train=x, y_train=y)

    torch.manual_seed(1)
    first = npz(tmp_path, path=path)
    torch.manual_seed(2)
    second = npz(tmp_path, path=path)

    assert (len(first.train), len(first.test)) == (40, 10)
    assert torch.equal(first.test.x, second.test.x) and torch.equal(first.train.y, second.train.y)
    ids = sorted(first.train.x[:, 0].long().tolist() + first.test.x[:, 0].long().tolist())
    assert ids == list(range(50))
    assert first.test.x[:, 0].long().tolist() != list(range(40, 50))  # drawn, not the last rows
    for row in first.train.x[:, 0].long():  # each example keeps its label
        assert first.train.y[first.train.x[:, 0].long() == row].item() == y[row]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("note: ") and path in line and "20%" in line for line in err)


# --- npz: errors ----------------------------------------------------------------------------------------


def test_npz_without_a_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        npz(tmp_path)
    assert str(err.value) == (
        "data.path = None: required for data.name=npz: a .npz file holding x_train, y_train[, x_test, y_test]"
    )


def npz_case(tmp_path, case: str) -> tuple[str, dict]:
    """Write the broken file of ``case``; return its path and extra loader kwargs."""
    x, y = blobs(20)
    kw: dict = {}
    if case == "missing":
        return str(tmp_path / "nowhere.npz"), kw
    if case == "directory":
        return str(tmp_path), kw
    if case == "not_npz":
        path = tmp_path / "data.npz"
        path.write_text("x_train,y_train\n1,2\n")
        return str(path), kw
    if case == "npy":
        path = tmp_path / "data.npy"
        np.save(path, x)
        return str(path), kw
    if case == "truncated":
        path = save_npz(tmp_path, x_train=x, y_train=y)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        return path, kw
    arrays = {"x_train": x, "y_train": y}
    if case == "pickled":
        arrays["x_train"] = np.array([{"a": 1}] * 20, dtype=object)
    elif case == "no_y_train":
        del arrays["y_train"]
        arrays["labels"] = y
    elif case == "x_test_only":
        arrays["x_test"] = x[:4]
    elif case == "empty":
        arrays = {"x_train": np.zeros((0, 4)), "y_train": np.zeros(0, int)}
    elif case == "empty_test":
        arrays.update(x_test=np.zeros((0, 4)), y_test=np.zeros(0, int))
    elif case == "length_mismatch":
        arrays["y_train"] = y[:-1]
    elif case == "test_length_mismatch":
        arrays.update(x_test=x[:5], y_test=y[:4])
    elif case == "feature_shapes_differ":
        arrays.update(x_test=x[:5, :3], y_test=y[:5])
    elif case == "nan_inf":
        arrays["x_train"] = x.copy()
        arrays["x_train"][7, 2] = np.nan
        arrays["x_train"][9, 0] = np.inf
        arrays["x_train"][12, 1] = -np.inf
    elif case == "overflow":
        arrays["x_train"] = x.copy()
        arrays["x_train"][3, 3] = 1e300
    elif case == "fractional_labels":
        arrays["y_train"] = y + 0.5 * (np.arange(20) == 6)
    elif case == "string_labels":
        arrays["y_train"] = np.array(["cat", "dog"] * 10)
    elif case == "string_inputs":
        arrays["x_train"] = np.array([["a"] * 4] * 20)
    elif case == "flat_inputs":
        arrays["x_train"] = x[:, 0]
    elif case == "label_matrix":
        arrays["y_train"] = np.stack([y, y], axis=1)
    elif case == "negative_label":
        arrays["y_train"] = y.copy()
        arrays["y_train"][5] = -1
    elif case == "label_beyond_num_classes":
        kw["num_classes"] = 2  # labels go up to 2
    elif case == "test_label_beyond_train":
        arrays.update(x_test=x[:3], y_test=np.array([0, 1, 7]))
        kw["num_classes"] = 3
    elif case == "one_class":
        arrays["y_train"] = np.zeros(20, int)
    elif case == "one_class_not_zero":
        arrays["y_train"] = np.full(20, 3)
    elif case == "too_few_to_hold_out":
        arrays = {"x_train": x[:4], "y_train": np.array([0, 1, 0, 1])}
    return save_npz(tmp_path, **arrays), kw


NPZ_ERRORS = {
    "missing": "does not exist",
    "directory": "is not a file",
    "not_npz": "is not a valid .npz file",
    "npy": "is a single .npy array",
    "truncated": "is not a valid .npz file",
    "pickled": "allow_pickle=False",
    "no_y_train": "lacks y_train; it holds labels, x_train",
    "x_test_only": "holds x_test but not y_test",
    "empty": "x_train holds no examples",
    "empty_test": "x_test holds no examples",
    "length_mismatch": "x_train has 20 examples but y_train has 19",
    "test_length_mismatch": "x_test has 5 examples but y_test has 4",
    "feature_shapes_differ": "x_train examples have shape (4,) but x_test examples (3,)",
    "nan_inf": "3 NaN/Inf input values (as float32), the first at x_train[7, 2]",
    "overflow": "1 NaN/Inf input values (as float32), the first at x_train[3, 3]",
    "fractional_labels": "label 0.5 at y_train[6] is not an integer",
    "string_labels": "y_train has dtype <U3; labels must be integer class indices",
    "string_inputs": "x_train has dtype <U1; expected numbers",
    "flat_inputs": "x_train has shape (20,); expected (N, features...)",
    "label_matrix": "y_train has shape (20, 2); expected (N,)",
    "negative_label": "label -1 at y_train[5] is outside 0..2 (C = 3, from max label + 1)",
    "label_beyond_num_classes": "label 2 at y_train[2] is outside 0..1 (C = 2, from data.kwargs.num_classes)",
    "test_label_beyond_train": "label 7 at y_test[2] is outside 0..2",
    "one_class": "every example has label 0; a classifier needs at least 2 classes",
    "one_class_not_zero": "every example has label 3",
    "too_few_to_hold_out": "4 examples are too few to hold out a test set",
}


@pytest.mark.parametrize("case", list(NPZ_ERRORS))
def test_npz_errors_name_the_file_and_what_is_wrong(tmp_path, case):
    path, kw = npz_case(tmp_path, case)

    with pytest.raises(DataError) as err:
        npz(tmp_path, path=path, **kw)

    msg = one_line(err)
    assert path in msg and NPZ_ERRORS[case] in msg, msg


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, "3", True])
def test_num_classes_must_be_an_integer_of_at_least_two(tmp_path, bad):
    x, y = blobs(20)
    path = save_npz(tmp_path, x_train=x, y_train=y)
    with pytest.raises(ConfigError) as err:
        npz(tmp_path, path=path, num_classes=bad)
    assert str(err.value).startswith("data.kwargs.num_classes = ")


def test_a_pickled_payload_is_never_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(local, "_pickle_probe", lambda: ran.append(1), raising=False)
    path = tmp_path / "evil.npz"
    np.savez(path, x_train=np.array([Payload()], dtype=object), y_train=np.zeros(1))

    with pytest.raises(DataError):
        npz(tmp_path, path=str(path))

    assert ran == []


class Payload:
    """Unpickling this calls tricklab.data.local._pickle_probe: what a malicious .npz could do."""

    def __reduce__(self):
        return (_call_probe, ())


def _call_probe():
    local._pickle_probe()


# --- csv: happy paths -----------------------------------------------------------------------------------


def test_csv_reads_features_and_the_label_column_and_holds_out_a_fixed_fifth(tmp_path, capsys):
    lines = ["x1,label,x2"] + [f"{i}.5,{i % 3},{-i}" for i in range(20)]
    path = write_csv(tmp_path, "\n".join(lines) + "\n")

    raw = csv(tmp_path, path=path)

    assert (len(raw.train), len(raw.test)) == (16, 4)
    assert raw.train.x.dtype == torch.float32 and raw.train.y.dtype == torch.int64
    assert (raw.info.name, raw.info.input_shape, raw.info.num_classes) == ("csv", (2,), 3)
    rows = torch.cat([raw.train.x, raw.test.x])
    labels = torch.cat([raw.train.y, raw.test.y])
    for (x1, x2), label in zip(rows.tolist(), labels.tolist(), strict=True):  # features stay with their label
        i = int(x1)
        assert (x1, x2, label) == (i + 0.5, -i, i % 3)
    assert sorted(int(r) for r in rows[:, 0].tolist()) == list(range(20))
    note = capsys.readouterr().err
    assert note.startswith("note: ") and path in note and "20%" in note and note.count("\n") == 1
    again = csv(tmp_path, path=path)
    assert torch.equal(again.test.x, raw.test.x)


def test_csv_with_another_label_name_delimiter_blank_lines_spaces_and_a_bom(tmp_path):
    text = "\ufeffa; b ;class\n" + "\n".join(f"{i}; {2 * i} ;{i % 2}\n" for i in range(10))
    path = write_csv(tmp_path, text)

    raw = csv(tmp_path, path=path, label="class", delimiter=";", num_classes=4)

    assert len(raw.train) + len(raw.test) == 10 and raw.info.input_shape == (2,) and raw.info.num_classes == 4
    assert sorted(torch.cat([raw.train.x, raw.test.x])[:, 1].tolist()) == [2.0 * i for i in range(10)]


# --- csv: errors ----------------------------------------------------------------------------------------


def test_csv_without_a_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        csv(tmp_path)
    assert str(err.value).startswith("data.path = None: required for data.name=csv: ")


GOOD_ROWS = "".join(f"{i},{i * 2},{i % 2}\n" for i in range(10))

CSV_ERRORS = {
    "missing": (None, "does not exist"),
    "empty": ("", "is empty"),
    "header_only": ("a,b,label\n", "has a header but no rows"),
    "no_label_column": (
        "a,b,target\n" + GOOD_ROWS,
        "has no column 'label' (data.kwargs.label); its columns: a, b, target",
    ),
    "two_label_columns": ("label,b,label\n" + GOOD_ROWS, "has 2 columns named 'label'"),
    "no_features": ("label\n0\n1\n", "has no feature columns besides 'label'"),
    "non_numeric": ("a,b,label\n1,2,0\n3,abc,1\n", "line 3, column 'b': 'abc' is not a number"),
    "empty_cell": ("a,b,label\n1,2,0\n3,,1\n", "line 3, column 'b': '' is not a number"),
    "text_label": ("a,b,label\n1,2,cat\n", "line 2, column 'label': 'cat' is not a number"),
    "ragged_row": ("a,b,label\n1,2,0\n3,4\n", "line 3 has 2 cells, the header 3"),
    "nan_feature": (
        "a,b,label\n" + GOOD_ROWS + "1,nan,0\n2,inf,1\n",
        "2 NaN/Inf input values (as float32), the first at line 12, column 'b'",
    ),
    "fractional_label": (
        "a,b,label\n" + GOOD_ROWS + "1,2,1.5\n",
        "label 1.5 at line 12, column 'label' is not an integer",
    ),
    "negative_label": ("a,b,label\n" + GOOD_ROWS + "1,2,-1\n", "label -1 at line 12, column 'label' is outside 0..1"),
    "one_class": ("a,b,label\n" + "".join(f"{i},{i},1\n" for i in range(10)), "every example has label 1"),
    "not_text": (b"a,b,label\n\xff\xfe\x00\x81,1,0\n", "is not a valid CSV text file"),
}


@pytest.mark.parametrize("case", list(CSV_ERRORS))
def test_csv_errors_name_the_file_and_where(tmp_path, case):
    content, says = CSV_ERRORS[case]
    path = tmp_path / "table.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)

    with pytest.raises(DataError) as err:
        csv(tmp_path, path=str(path))

    msg = one_line(err)
    assert str(path) in msg and says in msg, msg


def test_a_label_beyond_num_classes_in_a_csv_names_the_line(tmp_path):
    path = write_csv(tmp_path, "a,b,label\n" + GOOD_ROWS + "1,2,5\n")
    with pytest.raises(DataError) as err:
        csv(tmp_path, path=path, num_classes=3)
    assert "label 5 at line 12, column 'label' is outside 0..2 (C = 3, from data.kwargs.num_classes)" in one_line(err)


def test_the_list_of_columns_is_cut_short_for_wide_tables(tmp_path):
    header = ",".join(f"feature_{i}" for i in range(200))
    path = write_csv(tmp_path, header + "\n" + ",".join("1" * 200) + "\n")
    with pytest.raises(DataError) as err:
        csv(tmp_path, path=path)
    msg = one_line(err)
    assert "feature_0, feature_1" in msg and "(200 columns)" in msg


def test_a_csv_read_with_the_wrong_delimiter_suggests_checking_it(tmp_path):
    path = write_csv(tmp_path, "a;b;label\n" + GOOD_ROWS.replace(",", ";"))
    with pytest.raises(DataError) as err:
        csv(tmp_path, path=path)
    assert "its columns: a;b;label; is data.kwargs.delimiter=',' right?" in one_line(err)


@pytest.mark.parametrize(("key", "kwargs"), [("delimiter", {"delimiter": ",;"}), ("label", {"label": 3})])
def test_bad_csv_options_are_config_errors(tmp_path, key, kwargs):
    path = write_csv(tmp_path, "a,b,label\n" + GOOD_ROWS)
    with pytest.raises(ConfigError) as err:
        csv(tmp_path, path=path, **kwargs)
    assert str(err.value).startswith(f"data.kwargs.{key} = ")
