"""Loggers: metrics.csv / hparams.yaml in every run folder, and TensorBoard, MLflow and W&B read back from the real
packages' own stores (event files, a local MLflow store, an offline W&B run file) after tiny synthetic runs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tricklab.cli.main import main
from tricklab.config import load_config
from tricklab.engine.rundir import CSVWriter
from tricklab.errors import ConfigError
from tricklab.events import Callback, FitState
from tricklab.integrations.loggers import ORDER_LOGGERS, TABLE_KEYS, wandb_records
from tricklab.runner import run

TINY = {
    "data.name": "synthetic",
    "data.subset": 256,
    "data.batch_size": 64,
    "model.width": 16,
    "model.depth": 1,
    "train.epochs": 2,
}
#: A deep sigmoid MLP started from a plain Gaussian: the doctor finds vanishing gradients within one short epoch.
VANISHING = {
    **TINY,
    "data.subset": 512,
    "data.batch_size": 32,
    "model.depth": 4,
    "model.activation": "sigmoid",
    "model.norm": "none",
    "init.scheme": "gaussian",
    "train.epochs": 1,
    "diagnostics.every": 2,
}


def flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh folder; the trackers' settings and caches point into it, never at the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRICKLAB_DATA", str(tmp_path / "cache"))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)  # it would take the place of the run folder
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    return tmp_path


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


# --- metrics.csv and hparams.yaml ------------------------------------------------------------------------------
def test_every_run_writes_metrics_csv_and_hparams_yaml_in_lightnings_layout(workdir):
    cfg = load_config(overrides=TINY)
    result = run(cfg, workdir / "r")
    with open(workdir / "r" / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header[:2] == ["epoch", "step"]
    assert header[2:] == sorted(header[2:]) and {"train_loss", "val_acc", "lr"} <= set(header)
    hist = history(workdir / "r")
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in hist] == [1, 2]
    for row, h in zip(rows, hist, strict=True):
        expected = {k: float(v) for k, v in h.items()}
        assert {k: float(v) for k, v in row.items() if k != "step"} == pytest.approx(expected)
    steps = [int(r["step"]) for r in rows]
    assert steps[-1] == result.metrics["steps"] and steps[0] * 2 == steps[1]  # optimizer steps so far
    hparams = yaml.safe_load((workdir / "r" / "hparams.yaml").read_text())
    assert hparams == cfg.to_dict()


@pytest.mark.slow  # importing Lightning takes seconds
def test_lightnings_own_reader_takes_hparams_yaml(workdir):
    from lightning.pytorch.core.saving import load_hparams_from_yaml

    cfg = load_config(overrides={**TINY, "train.epochs": 1})
    run(cfg, workdir / "r")
    assert load_hparams_from_yaml(str(workdir / "r" / "hparams.yaml")) == cfg.to_dict()


def _state(epoch: int, step: int) -> FitState:
    model = torch.nn.Linear(2, 2)
    state = FitState(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, device=torch.device("cpu"))
    state.epoch, state.step = epoch, step
    state.metrics = {"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.1}
    return state


def test_metrics_csv_replaces_the_epochs_a_resumed_run_trains_again_and_keeps_each_members_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    first, again = CSVWriter(path), CSVWriter(path)
    for epoch in (1, 2, 3):
        first.on_epoch_end(_state(epoch, 10 * epoch))
    again.on_epoch_end(_state(2, 20))  # resumed from the checkpoint of epoch 1: epochs 2 and 3 are trained again
    rows = list(csv.DictReader(open(path, newline="")))
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "10"), ("2", "20")]
    members = tmp_path / "members.csv"
    for member in (0, 1):
        w = CSVWriter(members, member=member)
        for epoch in (1, 2):
            w.on_epoch_end(_state(epoch, 10 * epoch))
    rows = list(csv.DictReader(open(members, newline="")))
    assert [(r["member"], r["epoch"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]


# --- the config key and the flags ------------------------------------------------------------------------------
def test_train_loggers_refuses_an_unknown_name_with_the_valid_ones_and_a_repeated_one():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.loggers=[tensorbord]"])
    msg = str(e.value)
    assert "train.loggers" in msg and "'tensorbord'" in msg and "did you mean 'tensorboard'" in msg
    assert "tensorboard, mlflow, wandb" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="names a logger twice"):
        load_config(overrides=["train.loggers=[mlflow, mlflow]"])


@pytest.mark.parametrize("command", [["train"], ["doctor"], ["lab", "lr-decay"]])
def test_logger_flag_refuses_an_unknown_name_in_one_line_before_anything_runs(workdir, capsys, command):
    code = main([*command, "--logger", "mlfow", "--out", "out"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'mlfow'" in err and "did you mean 'mlflow'" in err
    assert not (workdir / "out").exists()


def test_loggers_do_not_change_the_config_hash():
    plain = load_config(overrides=TINY)
    logged = plain.with_overrides({"train.loggers": ["tensorboard", "mlflow"]})
    assert logged.train.loggers == ("tensorboard", "mlflow") and logged.hash() == plain.hash()


def test_a_resumed_run_may_add_a_logger_its_stored_config_did_not_name(workdir, capsys):
    assert main(["train", *flags(TINY), "--out", "r"]) == 0
    code = main(["train", "--resume", "r", "--logger", "tensorboard"])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" not in err, err
    acc = _events(workdir / "r" / "tensorboard")
    assert acc.Scalars("final/test_acc")[0].value == pytest.approx(
        json.loads((workdir / "r" / "metrics.json").read_text())["test_acc"]
    )
    assert load_config("r/config.yaml").train.loggers == ()  # the stored config stays as it was


def test_a_logger_whose_package_is_missing_is_one_line_naming_the_extra(workdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what Python does for a package that is not installed
    code = main(["train", *flags(TINY), "--logger", "wandb", "--out", "r"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err]
    assert "pip install 'tricklab[wandb]'" in err and "'wandb'" in err
    assert not (workdir / "r").exists()


def test_import_tricklab_imports_no_tracker():
    code = (
        "import sys, tricklab, tricklab.config, tricklab.runner, tricklab.integrations.loggers; "
        "print([m for m in ('tensorboard', 'mlflow', 'wandb') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- TensorBoard -------------------------------------------------------------------------------------------------
def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_tensorboard_gets_steps_epochs_final_metrics_hparams_and_the_doctors_statistics(workdir, capsys):
    code = main(["train", *flags(VANISHING), "--diagnose", "--logger", "tensorboard", "--out", "r"])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" not in err, err
    acc = _events(workdir / "r" / "tensorboard")
    tags = acc.Tags()
    metrics = json.loads((workdir / "r" / "metrics.json").read_text())
    assert [e.step for e in acc.Scalars("loss_step")] == list(range(1, metrics["steps"] + 1))
    assert len(acc.Scalars("lr_step")) == metrics["steps"]
    hist = history(workdir / "r")
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx([h["train_loss"] for h in hist])
    assert acc.Scalars("final/test_acc")[0].value == pytest.approx(metrics["test_acc"])
    assert "doctor/weight_grad_norm/hidden.0.body.0" in tags["scalars"]
    assert "doctor/act_hist/hidden.0.body.1" in tags["histograms"]
    assert "doctor/weight_grad_norm/layers" in tags["histograms"]
    text = acc.Tensors("doctor/verdicts/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "vanishing_gradients" in text
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(0.001)
    assert start.session_start_info.hparams["model.activation"].string_value == "sigmoid"


# --- MLflow --------------------------------------------------------------------------------------------------------
def _mlflow(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tricklab")
    return client, client.search_runs([exp.experiment_id])


def test_mlflow_logs_params_metrics_per_step_and_the_run_folder_into_a_local_store(workdir, capsys):
    code = main(["train", *flags(TINY), "--logger", "mlflow", "--out", "r"])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" not in err, err
    client, runs = _mlflow((workdir / "mlruns").as_uri())  # the default store: ./mlruns
    (r,) = runs
    metrics = json.loads((workdir / "r" / "metrics.json").read_text())
    assert r.info.status == "FINISHED" and r.info.run_name == "r"
    assert r.data.params["optim.lr"] == "0.001" and r.data.params["data.name"] == "synthetic"
    steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss_step")]
    assert sorted(steps) == list(range(1, metrics["steps"] + 1))
    per_epoch = sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda m: m.step)
    assert [m.value for m in per_epoch] == pytest.approx([h["val_acc"] for h in history(workdir / "r")])
    assert r.data.metrics["test_acc"] == pytest.approx(metrics["test_acc"])
    files = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"metrics.csv", "hparams.yaml", "history.jsonl", "config.yaml", "model.safetensors"} <= files


@pytest.mark.slow
def test_a_lab_is_a_parent_run_with_a_child_per_variant_and_seed_and_the_table_in_each_tracker(
    workdir, capsys, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (workdir / "store").as_uri())  # respected
    study = {
        "name": "tiny",
        "dataset": "synthetic",
        "base": {k.split(".")[0]: {} for k in TINY},
        "baseline": "adam",
        "variants": {"adam": {}, "sgd": {"optim.name": "sgd", "optim.lr": 0.1}},
        "seeds": 2,
        "epochs": 1,
    }
    for k, v in TINY.items():
        if k not in ("train.epochs", "data.name"):
            section, key = k.split(".")
            study["base"][section][key] = v
    (workdir / "study.yaml").write_text(yaml.safe_dump(study))
    trackers = ["--logger", "mlflow", "--logger", "tensorboard", "--logger", "wandb"]
    code = main(["lab", "--config", "study.yaml", "--workers", "1", "--out", "lab", *trackers])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" not in err, err
    client, runs = _mlflow((workdir / "store").as_uri())
    (parent,) = [r for r in runs if r.data.tags.get("tricklab") == "lab"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [
        "tiny/adam/seed0",
        "tiny/adam/seed1",
        "tiny/sgd/seed0",
        "tiny/sgd/seed1",
    ]
    assert all("test_acc" in r.data.metrics and r.data.params["optim.name"] in ("adam", "sgd") for r in children)
    m = parent.data.metrics
    assert {"tiny.sgd.test_acc_mean", "tiny.sgd.ci_lo", "tiny.sgd.ci_hi", "tiny.sgd.delta"} <= set(m)
    assert "tiny.adam.delta" not in m  # the baseline has no Δ: no metric rather than NaN
    sgd = [r for r in children if r.data.params["optim.name"] == "sgd"]
    assert m["tiny.sgd.test_acc_mean"] == pytest.approx(sum(r.data.metrics["test_acc"] for r in sgd) / 2)
    sgd_outcome = parent.data.tags["tiny.sgd.outcome"]
    assert sgd_outcome in ("better", "worse", "equivalent", "undecided", "no signal")
    assert parent.data.tags["tiny.adam.outcome"] == "baseline"
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "lab")}
    assert files == {"lab/tiny.json"}
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "lab/tiny.json", str(workdir))).read_text())
    assert table["columns"] == list(TABLE_KEYS) and [r[0] for r in table["data"]] == ["adam", "sgd"]
    row = dict(zip(table["columns"], table["data"][1], strict=True))
    assert row["test_acc_mean"] == pytest.approx(m["tiny.sgd.test_acc_mean"]) and row["outcome"] == sgd_outcome

    acc = _events(workdir / "lab" / "tensorboard" / "tiny" / "sgd" / "seed1")
    (sgd1,) = [r for r in sgd if r.data.tags["seed"] == "1"]
    assert acc.Scalars("final/test_acc")[0].value == pytest.approx(sgd1.data.metrics["test_acc"])
    table = _events(workdir / "lab" / "tensorboard").Tensors("lab/tiny/text_summary")[0]
    text = table.tensor_proto.string_val[0].decode()
    assert "| variant |" in text and "| sgd |" in text

    runs = {}
    for folder in (workdir / "lab" / "wandb").glob("offline-run-*"):
        records = written_records(folder)
        (run_record,) = [r for r in records if r["type"] == "run"]
        runs[run_record["displayName"]] = (run_record, records)
    assert sorted(runs) == ["lab lab", "tiny/adam/seed0", "tiny/adam/seed1", "tiny/sgd/seed0", "tiny/sgd/seed1"]
    assert {r["runGroup"] for r, _ in runs.values()} == {"lab-lab"}
    lab_history = [i for r in runs["lab lab"][1] if r["type"] == "history" for i in r["item"]]
    assert any(_key(i).startswith("lab/tiny") and "table" in i["valueJson"] for i in lab_history)


@pytest.mark.slow
def test_doctor_command_sends_statistics_verdicts_and_its_report_to_mlflow(workdir, capsys):
    code = main(["doctor", *flags(VANISHING), "--steps", "30", "--no-recheck", "--out", "d", "--logger", "mlflow"])
    err = capsys.readouterr().err
    assert code == 4 and "warning:" not in err, err  # problems found
    client, runs = _mlflow((workdir / "mlruns").as_uri())
    (r,) = runs
    assert r.data.tags["doctor.verdicts"] == "vanishing_gradients" and r.data.tags["doctor.healthy"] == "false"
    history_steps = [
        m.step for m in client.get_metric_history(r.info.run_id, "doctor.weight_grad_norm.hidden.0.body.0")
    ]
    assert history_steps and history_steps == sorted(set(history_steps)) and history_steps[-1] <= 30
    assert r.data.metrics["problems"] == 1
    files = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"index.html", "doctor.json", "records.json", "config.yaml"} <= files
    logged = json.loads(Path(client.download_artifacts(r.info.run_id, "doctor/doctor.json", str(workdir))).read_text())
    assert [v["name"] for v in logged["verdicts"]] == ["vanishing_gradients"]


# --- Weights & Biases ----------------------------------------------------------------------------------------------
def written_records(folder: Path, deadline_s: float = 60.0) -> list[dict]:
    """The records of an offline W&B run once its writer has finished: ``run.finish()`` returns before W&B's own
    service has written the file out, so this waits (boundedly) for the run's ``exit`` record."""
    end = time.monotonic() + deadline_s
    while True:
        records = wandb_records(folder)
        if any(r["type"] == "exit" for r in records) or time.monotonic() > end:
            return records
        time.sleep(0.2)


def test_wandb_records_leaves_out_a_record_the_file_ends_inside(tmp_path):
    """W&B's process writes an offline run's file out after ``run.finish()`` returns: read while a record is only
    partly written, the complete records come back and the partial one is left for the next read."""
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb is in the dev extra")
    history, done = pb.Record(), pb.Record()
    history.history.item.add(key="loss", value_json="0.5")
    done.exit.exit_code = 0

    def chunk(record) -> bytes:  # crc32 (not checked by the reader) | length | type 1 (a whole record) | data
        data = record.SerializeToString()
        return b"\0\0\0\0" + len(data).to_bytes(2, "little") + b"\x01" + data

    whole = b":W&B\xe1\xbe\x00" + chunk(history) + chunk(done)
    path = tmp_path / "run-x.wandb"
    for cut in (len(whole) - 1, len(whole) - len(chunk(done)) + 5, len(whole) - len(chunk(done)) + 3):
        path.write_bytes(whole[:cut])  # the last record cut short, inside its data or inside its header
        assert [r["type"] for r in wandb_records(tmp_path)] == ["history"]
    path.write_bytes(whole)
    assert [r["type"] for r in wandb_records(tmp_path)] == ["history", "exit"]


def _key(item: dict) -> str:
    """The name of an item of a W&B history or summary record (``key``, or ``nestedKey`` parts joined)."""
    return item.get("key") or "/".join(item["nestedKey"])


@pytest.mark.slow
def test_wandb_offline_run_holds_config_history_summary_and_each_verdict_as_an_alert(workdir, capsys):
    code = main(["train", *flags(VANISHING), "--diagnose", "--logger", "wandb", "--out", "r"])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" not in err, err
    (folder,) = (workdir / "r" / "wandb").glob("offline-run-*")  # offline with no API key and no network
    records = written_records(folder)
    metrics = json.loads((workdir / "r" / "metrics.json").read_text())
    (run_record,) = [r for r in records if r["type"] == "run"]
    config = {u["key"]: json.loads(u["valueJson"]) for u in run_record["config"]["update"]}
    assert config["optim.lr"] == 0.001 and config["model.activation"] == "sigmoid"
    steps = [
        int(r["step"]["num"])
        for r in records
        if r["type"] == "history" and any(_key(i) == "loss_step" for i in r["item"])
    ]
    assert steps == list(range(1, metrics["steps"] + 1))
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update({_key(u): json.loads(u["valueJson"]) for u in r.get("update", [])})
    assert summary["test_acc"] == pytest.approx(metrics["test_acc"])
    assert "doctor/weight_grad_norm/hidden.0.body.0" in summary
    (alert,) = [r for r in records if r["type"] == "alert"]
    assert alert["title"] == "tricklab doctor: vanishing_gradients" and alert["level"] == "WARN"
    assert "first-layer gradient norm" in alert["text"] and "prescription: --set" in alert["text"]


# --- a tracker that fails never breaks the run ---------------------------------------------------------------------
class BreakStore(Callback):
    """Replaces a tracker's store by a file once the first epoch ends, before the loggers send that epoch."""

    order = ORDER_LOGGERS - 1

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, state: FitState) -> None:
        if state.epoch == 1:
            shutil.rmtree(self.path)
            self.path.write_text("not a folder any more")


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # no traceback from a thread
@pytest.mark.parametrize(
    "logger, store",
    [("mlflow", lambda d: d / "mlruns"), ("tensorboard", lambda d: d / "r" / "tensorboard")],
)
def test_a_tracker_failing_mid_run_warns_once_and_the_run_and_its_checkpoints_go_on(workdir, capsys, logger, store):
    cfg = load_config(overrides={**TINY, "train.epochs": 3, "train.loggers": [logger]})
    result = run(cfg, workdir / "r", callbacks=[BreakStore(store(workdir))])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"logger {logger!r} failed" in warnings[0] and "the run goes on" in warnings[0]
    assert result.metrics["epochs_run"] == 3
    assert [h["epoch"] for h in history(workdir / "r")] == [1, 2, 3]
    assert (workdir / "r" / "model.safetensors").is_file() and (workdir / "r" / "checkpoints" / "epoch0003").is_dir()
