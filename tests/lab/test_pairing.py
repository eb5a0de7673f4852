"""Paired runs share everything but the trick: the same seed gives a dropout pair the same data split, the same
data order and the same initial weights, so that their paired difference measures dropout alone."""

import torch

import tricklab
from tricklab.assembly import load_data
from tricklab.config import load_config
from tricklab.events import Callback
from tricklab.lab.lab import LabOptions, study_overrides
from tricklab.lab.studies import STUDIES


class Record(Callback):
    """The initial weights and every training batch the loop sees."""

    def on_fit_start(self, state):
        self.initial = [p.detach().clone() for p in state.model.parameters()]
        self.batches = []

    def on_after_backward(self, state):
        self.batches.append((state.inputs.detach().clone(), state.targets.detach().clone()))


def test_a_dropout_pair_shares_split_order_and_initial_weights():
    study = STUDIES.get("dropout")
    baseline, variant = study.baseline, study.variants[-1].name
    assert baseline != variant
    seen = {}
    for name in (baseline, variant):
        o = study_overrides(study, name, "mnist1d", LabOptions(dataset="mnist1d", epochs=2), seed=4)
        cfg = load_config(overrides=o | {"train.threads": 1})
        rec = Record()
        tricklab.run(cfg, write=False, callbacks=[rec])
        seen[name] = (cfg, load_data(cfg), rec)
    (cfg_a, data_a, a), (cfg_b, data_b, b) = seen[baseline], seen[variant]
    assert cfg_a.model.dropout != cfg_b.model.dropout
    assert {k: v for k, v in cfg_a.to_dict().items() if k != "model"} == {
        k: v for k, v in cfg_b.to_dict().items() if k != "model"
    }
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(data_a, split).x, getattr(data_b, split).x)
        assert torch.equal(getattr(data_a, split).y, getattr(data_b, split).y)
    assert len(a.initial) == len(b.initial) and all(
        torch.equal(x, y) for x, y in zip(a.initial, b.initial, strict=True)
    )
    assert len(a.batches) == len(b.batches) > 2
    for (xa, ya), (xb, yb) in zip(a.batches, b.batches, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
