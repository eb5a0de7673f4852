"""Outputs written from the Python API follow the command line's rule: never over a file tricklab did not write,
never through a link (STYLE.md point 17)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import tricklab
from tricklab.api import RECORD_COLUMNS, LabResult
from tricklab.errors import TrickLabError


def lab_result(tmp_path) -> LabResult:
    record = dict.fromkeys(RECORD_COLUMNS, "")
    record.update(study="dropout", dataset="mnist1d", variant="p0.1", seeds=3)
    return LabResult(
        out=tmp_path, report=tmp_path / "report.html", records=[record], done=3, failed=0, skipped=0, wall_time_s=1.0
    )


def test_to_csv_writes_a_new_file_and_regenerates_its_own(tmp_path):
    lab, path = lab_result(tmp_path), tmp_path / "table.csv"
    text = lab.to_csv(path)
    assert path.read_text() == text and text.startswith("study,dataset,variant,")
    assert lab.to_csv(path) == path.read_text()  # its own table: replaced without force


def test_to_csv_keeps_a_file_it_did_not_write_unless_forced(tmp_path):
    lab, path = lab_result(tmp_path), tmp_path / "notes.csv"
    path.write_text("my,own,data\n1,2,3\n")
    with pytest.raises(TrickLabError, match=r"already exists and is not a lab table written by tricklab") as err:
        lab.to_csv(path)
    assert "\n" not in str(err.value)
    assert path.read_text() == "my,own,data\n1,2,3\n"
    lab.to_csv(path, force=True)
    assert path.read_text().startswith("study,dataset,variant,")


def test_to_csv_never_writes_through_a_link_or_takes_a_non_path(tmp_path):
    lab, target = lab_result(tmp_path), tmp_path / "target.csv"
    target.write_text("precious\n")
    os.symlink(target, tmp_path / "link.csv")
    with pytest.raises(TrickLabError, match="symbolic link"):
        lab.to_csv(tmp_path / "link.csv", force=True)
    assert target.read_text() == "precious\n"
    with pytest.raises(TrickLabError, match=r"path = 42: got an int"):
        lab.to_csv(42)


def test_doctor_save_never_writes_through_a_link_in_its_folder(tmp_path):
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    result = tricklab.diagnose(nn.Sequential(nn.Linear(8, 4)), (x, y), steps=2, every=1, recheck=False)
    out = tmp_path / "doctor"
    result.save(out)  # a report folder of its own: saving again replaces its files
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (out / "records.json").unlink()
    os.symlink(target, out / "records.json")
    with pytest.raises(TrickLabError, match="symbolic link") as err:
        result.save(out)
    assert "\n" not in str(err.value)
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("model", "says"),
    [
        (lambda: nn.Identity(), "Doctor: model: the Identity has no trainable parameter"),
        (lambda: nn.Linear(8, 4).to("meta"), "Doctor: model: the Linear's tensors are on the meta device"),
        (lambda: "net", "Doctor: model: got a str, not a torch.nn.Module"),
    ],
    ids=["no_parameters", "meta_device", "not_a_module"],
)
def test_doctor_refuses_a_model_it_cannot_watch_when_made(model, says):
    with pytest.raises(TrickLabError) as err:
        tricklab.Doctor(model())
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
