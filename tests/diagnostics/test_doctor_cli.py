"""``tricklab doctor``: exit 0 healthy, 4 when problems are found, 2 on bad input (and then nothing written)."""

from __future__ import annotations

import json

import pytest

from tricklab.cli.doctor_cmd import EXIT_PROBLEMS
from tricklab.cli.main import main

SMALL = [
    "--set", "data.name=synthetic", "--set", "train.threads=1", "--set", "model.depth=1",
    "--set", "model.width=16", "--set", "data.batch_size=64", "--set", "diagnostics.every=2", "--steps", "8",
]  # fmt: skip


def test_a_healthy_net_exits_0_with_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "doc"
    assert main(["doctor", *SMALL, "--out", str(out)]) == 0
    assert "healthy" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src='http" not in page
    for name in (
        "grad_norm_heatmap.png",
        "activation_histograms.png",
        "signal_propagation.png",
        "config.yaml",
    ):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "doctor.json").read_text())["healthy"] is True
    records = json.loads((out / "records.json").read_text())["records"]
    assert records["weight_grad_norm"]["head"][0][0] == 0  # [step, value] pairs per layer


def test_problems_exit_with_the_documented_code_and_print_the_verdict_and_prescription(tmp_path, capsys):
    out = tmp_path / "doc"
    assert EXIT_PROBLEMS == 4
    assert main(["doctor", *SMALL, "--set", "data.scale=none", "--out", str(out), "--no-recheck"]) == EXIT_PROBLEMS
    printed = capsys.readouterr().out
    assert "badly_scaled_inputs" in printed and "--set data.scale=standardize" in printed
    assert json.loads((out / "doctor.json").read_text())["verdicts"][0]["name"] == "badly_scaled_inputs"


@pytest.mark.parametrize("bad, named", [
    (["--set", "diagnostics.every=0"], "diagnostics.every"),
    (["--steps", "0"], "diagnostics.steps"),
    (["--set", "model.activation=sigmod"], "model.activation"),
    (["--set", "model.name=resnet", "--set", "model.depth=0"], "model.depth"),
])  # fmt: skip
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, bad, named):
    out = tmp_path / "doc"
    assert main(["doctor", *SMALL, *bad, "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_doctor_shows_progress_of_its_probed_runs(tmp_path, capsys):
    from tricklab.cli.main import main

    args = ["doctor", "--set", "data.name=synthetic", "--steps", "20", "--no-recheck", "--out", str(tmp_path / "d")]
    assert main(args) in (0, 4)
    err = capsys.readouterr().err
    assert "doctor: step 2/20 (10%)" in err and "doctor: step 20/20 (100%)" in err
