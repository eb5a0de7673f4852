"""A study that sets ``train.threads`` runs with that many threads, or the lab says once why not; the report's
"Exact configs" show the threads the runs actually had."""

from __future__ import annotations

import json
import math
import sqlite3

from torch import nn

import tricklab
from tricklab.catalog import family
from tricklab.lab.lab import LabOptions, plan_lab, run_lab
from tricklab.lab.studies import custom_study
from tricklab.report.lab_report import build_report


def study(threads=None, variants=("plain", "wide"), dataset="synthetic", epochs=1):
    train = {"epochs": epochs} | ({"threads": threads} if threads is not None else {})
    raw = {
        "name": "tiny",
        "dataset": dataset,
        "base": {"model": {"depth": 1, "width": 8}, "data": {"batch_size": 64}, "train": train},
        "baseline": variants[0],
        "variants": {v: ({"model.width": 16} if i else {}) for i, v in enumerate(variants)},
    }
    return custom_study(raw)[0]


def config_threads(lab):
    return {cfg.train.threads for p in lab.planned for cfg in p.configs.values()}


def test_a_studys_threads_are_the_runs_threads_not_the_labs():
    # one run on 2 cores: the lab alone would give it 2 threads; the study asks for 1
    lab = plan_lab([study(threads=1, variants=("plain",))], LabOptions(seeds=1, cores=2))
    assert config_threads(lab) == {1}
    # without a study setting, the lab chooses (every core for a single run)
    lab = plan_lab([study(variants=("plain",))], LabOptions(seeds=1, cores=2))
    assert config_threads(lab) == {2}


def test_fewer_runs_go_at_once_so_that_a_studys_threads_fit_the_cores():
    lab = plan_lab([study(threads=2)], LabOptions(seeds=2, cores=4))  # 4 runs: 4 processes × 1 thread alone
    assert config_threads(lab) == {2}
    assert (lab.processes, lab.threads) == (2, 2) and lab.notes == ()


def test_more_threads_than_cores_run_on_the_cores_and_the_lab_says_so_once(tmp_path):
    lab = plan_lab([study(threads=8)], LabOptions(seeds=2, cores=2))
    assert config_threads(lab) == {2} and lab.processes == 1
    note = (
        "study 'tiny' sets train.threads = 8, but the lab has 2 cores: its runs use 2 threads (more threads than "
        "cores only wait for each other)"
    )
    assert lab.notes == (note,)
    notes = []
    result = run_lab(
        [study(threads=8)],
        LabOptions(seeds=2, cores=2),
        tmp_path / "lab",
        fn=no_training,
        on_progress=lambda c: notes.append(c.note) if c.note else None,
    )
    assert result.done == 4 and notes == [note]


def no_training(config):
    """A run function for the worker pool that trains nothing: a result for the config as given."""
    from tricklab.lab.store import config_key

    return {"test_acc": 0.5, "threads": config["train"]["threads"]}, [], config_key(config)


def test_runs_in_this_process_get_the_threads_the_lab_gives_them():
    def local_net(input_shape, num_classes, dropout=0.0):  # defined in a function: no worker process can import it
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    tricklab.register_model("threads_local_net", local_net)
    try:
        raw = {"model.name": "threads_local_net", "train.epochs": 1}
        local = custom_study({"name": "local", "dataset": "synthetic", "base": raw, "variants": {"a": {}, "b": {}}})[0]
        lab = plan_lab([local], LabOptions(seeds=2, cores=2))  # 4 runs: 2 processes × 1 thread, were they workers
    finally:
        family("models").unregister("threads_local_net")
    assert lab.in_process and (lab.processes, lab.threads) == (1, 2)
    assert config_threads(lab) == {2}


def torch_threads(config):
    """A run function for the worker pool: the real run, plus the torch threads it trained with."""
    import torch

    from tricklab.lab.runner import execute

    metrics, history, config_hash = execute(config)
    return metrics | {"torch_threads": torch.get_num_threads()}, history, config_hash


def test_a_real_lab_runs_with_the_studys_threads_and_its_report_says_so(tmp_path):
    notes = []
    out = tmp_path / "lab"
    result = run_lab(
        [study(threads=1, variants=("plain",), dataset="mnist1d")],
        LabOptions(seeds=1, cores=2),
        out,
        fn=torch_threads,
        on_progress=lambda c: notes.append(c.note) if c.note else None,
    )
    assert result.done == 1 and notes == []
    con = sqlite3.connect(out / "results.sqlite")
    try:
        ((config, metrics),) = con.execute("SELECT config, metrics FROM runs").fetchall()
    finally:
        con.close()
    assert json.loads(config)["train"]["threads"] == 1 and json.loads(metrics)["torch_threads"] == 1
    page = build_report(out).read_text()
    configs = page.split("<summary>Exact configs")[1].split("</pre>")[0]
    assert "train.threads: 1\n" in configs
