"""Every built-in study resolves on MNIST and mnist1d, and describes the setup it actually runs there."""

import pytest

from tricklab.config import load_config
from tricklab.lab.lab import LabOptions, plan, study_overrides, study_spec
from tricklab.lab.studies import STUDIES


@pytest.mark.parametrize("dataset", ["mnist", "mnist1d"])
def test_each_study_describes_the_setup_it_runs(dataset):
    studies = [STUDIES.get(n) for n in STUDIES.names()]
    plan(studies, LabOptions(dataset=dataset, seeds=1))  # every run's config validates
    for study in studies:
        cfg = load_config(overrides=study_overrides(study, study.baseline, dataset, LabOptions(dataset=dataset), 0))
        doc = study_spec(study, dataset, LabOptions(dataset=dataset))["doc"]
        setup = doc.splitlines()[-1]
        assert setup.startswith(f"Setup on {dataset} (baseline): {cfg.model.name} ")
        assert f" {cfg.train.epochs} epochs, batch {cfg.data.batch_size}," in setup
        assert f"lr {cfg.optim.lr:g}" in setup
        if study.notes.get(dataset):
            assert study.notes[dataset] in doc
        other = "mnist1d" if dataset == "mnist" else "mnist"
        assert study.notes.get(other, "\0") not in doc  # another dataset's note never describes this one


def test_dropout_on_mnist_runs_the_subset_its_description_names():
    dropout = STUDIES.get("dropout")
    mnist = study_spec(dropout, "mnist", LabOptions())["doc"]
    assert "5,000 training examples" in mnist and "60 epochs" in mnist
    mnist1d = study_spec(dropout, "mnist1d", LabOptions(dataset="mnist1d"))["doc"]
    assert "all training examples" in mnist1d and "5,000" not in mnist1d.splitlines()[-1]


def test_swa_averages_the_last_quarter_on_each_dataset():
    avg = STUDIES.get("averaging")
    for ds in ("mnist", "mnist1d"):
        o = avg.overrides(avg.variant("swa"), ds)
        epochs = o["train.epochs"]
        averaged = epochs - o["averaging.swa_start"] + 1
        assert 0.25 <= averaged / epochs <= 0.3  # the last quarter or so (Izmailov et al. 2018: from 75%)
