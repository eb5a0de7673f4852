"""The doctor as a Lightning callback, with a real ``lightning.Trainer``; without Lightning, one line naming the
extra."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklab.diagnostics.records import LOSS, MODEL
from tricklab.errors import TrickLabError

MISSING = "ImportError: tricklab.integrations.lightning needs PyTorch Lightning: pip install 'tricklab[lightning]'"


def test_without_lightning_the_import_fails_in_one_line_naming_the_extra():
    code = "import sys; sys.modules['lightning'] = None; import tricklab.integrations.lightning"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == MISSING
    assert "During handling" not in done.stderr  # no chained traceback


@pytest.fixture(scope="module")
def pl():
    lightning = pytest.importorskip("lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    return lightning


def sick_net() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(12):
        layers += [nn.Linear(16 if i == 0 else 32, 32), nn.Sigmoid()]
    net = nn.Sequential(*layers, nn.Linear(32, 4))
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0)
    return net


def lit_module(pl, *, call_self: bool = True):
    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = sick_net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x) if call_self else self.net(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Lit()


def loader(n: int = 32 * 30):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :4].argmax(1)), batch_size=32)


def trainer(pl, callback, **kw):
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kw,
    )


def test_a_real_trainer_gets_the_verdicts_and_the_report(pl, tmp_path, capsys):
    from tricklab.integrations.lightning import TrickLabDoctor

    lit = lit_module(pl)
    doctor = TrickLabDoctor(every=5, save_dir=tmp_path / "doctor")
    trainer(pl, doctor, num_sanity_val_steps=0).fit(lit, loader(), loader(64))
    names = {v.name for v in doctor.verdicts()}
    assert {"vanishing_gradients", "saturation"} <= names
    assert doctor.doctor.steps == 30
    assert "xavier_normal_" in doctor.prescription()["init.scheme"]
    steps, losses = doctor.doctor.findings().records.series(LOSS, MODEL)
    assert steps == list(range(30)) and all(v > 0 for v in losses)
    assert doctor.doctor.findings().records.get("val_loss", MODEL, 29) is not None
    assert doctor.page is not None and "vanishing_gradients" in doctor.page.read_text()
    assert "tricklab doctor: " in capsys.readouterr().out
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lit.modules())
    assert hooks == 0


def test_a_training_step_that_skips_forward_fails_at_once_and_module_names_what_it_calls(pl):
    from tricklab.integrations.lightning import TrickLabDoctor

    with pytest.raises(TrickLabError, match="training_step did not call Lit's forward"):
        trainer(pl, TrickLabDoctor(verbose=False), max_steps=3).fit(lit_module(pl, call_self=False), loader())
    doctor = TrickLabDoctor(every=1, module="net", verbose=False)
    trainer(pl, doctor, max_steps=3).fit(lit_module(pl, call_self=False), loader())
    assert doctor.doctor.steps == 3 and doctor.doctor.model is not None
    with pytest.raises(TrickLabError, match="has no such submodule"):
        trainer(pl, TrickLabDoctor(module="body"), max_steps=1).fit(lit_module(pl), loader())
