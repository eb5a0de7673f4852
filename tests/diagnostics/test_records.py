"""Records are plain data: they survive JSON, and reading them (records, verdicts) never loads the probe hooks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.diagnostics import probes, records
from tricklab.diagnostics.probes import Probe
from tricklab.diagnostics.records import Records


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def test_records_round_trip_through_json(batch):
    x, y = batch
    with Probe(mlp(), every=1) as p:
        F.cross_entropy(p.model(x), y).backward()
    r = p.findings().records
    back = Records.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.data == r.data


def test_importing_records_and_verdicts_does_not_import_the_probes():
    code = (
        "import sys\n"
        "import tricklab.diagnostics.records, tricklab.diagnostics.verdicts\n"
        "print('tricklab.diagnostics.probes' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_probes_re_export_the_record_types_and_know_every_activation_kind():
    for name in ("Findings", "LayerInfo", "NonFinite", "Records", "MODEL", "INPUT", "WEIGHT", "ACT_STD"):
        assert getattr(probes, name) is getattr(records, name)
    assert sorted(probes.ACTIVATION_KINDS.values()) == sorted(records.ACTIVATIONS)
