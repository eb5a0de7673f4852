"""Pre-flight checks: each passes on a correct tiny model and fails, alone, on the bug it is for; the model is
left as it was; ``tricklab doctor --preflight`` prints one line per check and exits 0, or 1 when one fails."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklab
from tricklab.diagnostics.preflight import (
    CHECKS,
    FAIL,
    PASS,
    SKIP,
    judge_batch_independence,
    judge_gradient_reach,
    judge_initial_loss,
    judge_outputs,
    judge_overfit,
    loss_expects_logits,
    output_kind,
    preflight,
)

D, H, C, N = 12, 32, 4, 16


class Net(nn.Module):
    """A correct tiny classifier with batch norm and dropout, or the same net with one classic bug."""

    def __init__(self, bug: str | None = None):
        super().__init__()
        self.bug = bug
        self.fc1 = nn.Linear(D, H)
        self.bn = nn.BatchNorm1d(H)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(H, H)
        self.head = nn.Linear(H, C)
        if bug in ("unused", "zero"):
            self.aux = nn.Linear(H, 1)
        if bug == "scaled":
            with torch.no_grad():
                self.head.weight.mul_(100)
                self.head.bias.mul_(100)
        if bug == "frozen":
            self.fc1.requires_grad_(False)

    def forward(self, x):
        if self.bug == "mix":
            x = x.t().reshape(x.shape[0], -1)  # (N, D) read as (D, N) and back: rows mix examples
        h = self.drop(torch.relu(self.bn(self.fc1(x))))
        if self.bug == "detach":
            h = h.detach()
        if self.bug == "no_grad":
            with torch.no_grad():
                h = self.fc2(h)
        else:
            h = self.fc2(h)
        z = self.head(torch.relu(h))
        if self.bug == "zero":
            z = z + 0 * self.aux(h)
        if self.bug == "softmax":
            z = z.softmax(1)
        if self.bug == "log_softmax":
            z = z.log_softmax(1)
        return z


def make(bug: str | None = None) -> Net:
    torch.manual_seed(1)
    return Net(bug)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g)


def statuses(result) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def test_a_correct_model_passes_every_check(batch):
    result = preflight(make(), batch)
    assert result.ok and result.failed == [] and statuses(result) == dict.fromkeys(CHECKS, PASS)
    loss = result["initial_loss"].figures
    assert loss["expected"] == pytest.approx(math.log(C)) and abs(loss["loss"] - math.log(C)) < 1
    fit = result["overfit_one_batch"].figures
    assert fit["reached"] <= fit["target"] == pytest.approx(0.01 * math.log(C)) and fit["step"] < 200


@pytest.mark.parametrize(
    "bug, check, says",
    [
        ("softmax", "outputs_are_logits", "remove the final `nn.Softmax`"),
        ("detach", "gradient_reach", "cut after `bn`"),
        ("no_grad", "gradient_reach", "cut after `fc2`"),
        ("unused", "gradient_reach", "`aux` never called in forward"),
        ("zero", "gradient_reach", "`aux.weight`, `aux.bias` get an all-zero gradient"),
        ("mix", "batch_independence", "mixes the batch dimension"),
        ("scaled", "initial_loss", "`head` is scaled too large"),
    ],
)
def test_each_bug_fails_its_own_check_and_only_it(batch, bug, check, says):
    result = preflight(make(bug), batch)
    assert not result.ok and result.causes == [check]
    assert says in result[check].text
    for c in result.checks:  # any other failure is a consequence of this one, and says so
        assert c.name == check or c.status != FAIL or c.explained_by == check, str(c)


def test_a_softmax_output_also_cannot_be_fitted_and_that_is_named_as_its_consequence(batch):
    result = preflight(make("softmax"), batch)
    fit = result["overfit_one_batch"]
    assert fit.status == FAIL and fit.explained_by == "outputs_are_logits"
    assert fit.figures["best"] > fit.figures["target"] and "explained by outputs_are_logits" in fit.text


def test_the_cut_graph_names_the_untrained_tensors_and_their_share(batch):
    c = preflight(make("detach"), batch)["gradient_reach"]
    assert c.figures["cut"] == ["fc1.weight", "fc1.bias", "bn.weight", "bn.bias"] and "`.detach()`" in c.text
    cut = D * H + H + 2 * H
    assert c.figures["share_of_weights"] == pytest.approx(100 * cut / (cut + H * H + H + H * C + C))


def test_a_frozen_layer_is_noted_not_failed(batch):
    c = preflight(make("frozen"), batch)["gradient_reach"]
    assert c.status == PASS and "2 frozen tensors (requires_grad=False): `fc1.weight`, `fc1.bias`" in c.text


def test_log_probabilities_pass_with_cross_entropy_and_nll_loss_but_logits_fail_nll_loss(batch):
    note = preflight(make("log_softmax"), batch)["outputs_are_logits"]
    assert note.status == PASS and "harmless with cross_entropy" in note.text
    assert preflight(make("log_softmax"), batch, F.nll_loss).ok
    wrong = preflight(make(), batch, F.nll_loss)
    assert wrong.causes == ["outputs_are_logits"] and "F.log_softmax(z, dim=1)" in wrong["outputs_are_logits"].text
    probs = preflight(make("softmax"), batch, F.nll_loss)
    assert probs["outputs_are_logits"].status == FAIL and probs["initial_loss"].explained_by == "outputs_are_logits"


def test_labels_outside_the_outputs_fail_the_initial_loss_and_skip_what_needs_the_loss(batch):
    x, y = batch
    result = preflight(make(), (x, y + C))
    assert result.causes == ["initial_loss"] and f"labels run {C}…{int(y.max()) + C}" in result["initial_loss"].text
    assert result["gradient_reach"].status == result["overfit_one_batch"].status == SKIP
    assert preflight(make(), batch, num_classes=C + 1).causes == ["initial_loss"]


def test_regression_skips_the_class_checks_with_a_note_and_runs_the_others(batch):
    x, _ = batch
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 1))
    result = preflight(net, (x, x[:, :1].sin()), F.mse_loss)
    assert result.ok and statuses(result) == {
        "initial_loss": SKIP,
        "gradient_reach": PASS,
        "batch_independence": PASS,
        "outputs_are_logits": SKIP,
        "overfit_one_batch": PASS,
    }
    assert "regression" in result["initial_loss"].text


def test_integer_inputs_skip_batch_independence_with_a_note():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(5 * 8, C))
    tokens, y = torch.randint(0, 50, (N, 5)), torch.randint(0, C, (N,))
    c = preflight(net, (tokens, y))["batch_independence"]
    assert c.status == SKIP and "int64" in c.text


def test_the_model_its_gradients_buffers_mode_and_the_rng_are_left_as_they_were(batch):
    x, y = batch
    for mode in (True, False):
        net = make()
        F.cross_entropy(net(x), y).backward()  # gradients and batch-norm statistics the user already has
        net.train(mode)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        rng = torch.get_rng_state()
        result = preflight(net, batch)
        assert result.ok
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
        assert all(torch.equal(g, p.grad) for (_, g), (_, p) in zip(grads.items(), net.named_parameters(), strict=True))
        assert all(m.training is mode for m in net.modules())
        assert torch.equal(torch.get_rng_state(), rng)
        assert not any(m._forward_hooks for m in net.modules())


def test_results_read_as_one_line_per_check_and_as_data(batch):
    result = preflight(make("mix"), batch)
    lines = str(result).splitlines()
    assert lines[0] == "tricklab preflight: 4 of 5 checks passed, 1 failed" and len(lines) == 1 + len(CHECKS)
    assert [line.split()[1].rstrip(":") for line in lines[1:]] == list(CHECKS)
    assert lines[3].startswith("  FAIL batch_independence: ")
    d = result.to_dict()
    assert d["ok"] is False and d["checks"][2]["figures"]["mixed_pairs"] > 0
    with pytest.raises(KeyError, match="checks: initial_loss"):
        result["nope"]
    assert tricklab.preflight is preflight


def test_a_loader_s_first_batch_is_used_and_bad_arguments_are_one_line_errors(batch):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*batch), batch_size=N)
    assert preflight(make(), loader).ok
    with pytest.raises(tricklab.TrickLabError, match="batch: got a Tensor"):
        preflight(make(), batch[0])
    with pytest.raises(tricklab.TrickLabError, match="steps = 0"):
        preflight(make(), batch, steps=0)
    with pytest.raises(tricklab.TrickLabError, match="overfit_examples = 0"):
        preflight(make(), batch, overfit_examples=0)
    with pytest.raises(tricklab.TrickLabError, match="loss_fn: returned"):
        preflight(make(), batch, lambda out, y: F.cross_entropy(out, y, reduction="none"))
    with pytest.raises(tricklab.TrickLabError, match=r"loss_fn: raised ValueError on outputs \(16, 4\)"):
        preflight(make(), batch, lambda out, y: F.cross_entropy(out, y[:3]))
    with pytest.raises(tricklab.TrickLabError, match=r"model: forward raised RuntimeError on inputs \(16, 5\)"):
        preflight(make(), (batch[0][:, :5], batch[1]))


# -- the pure cores, on both sides of their thresholds --------------------------------------------------------


def test_initial_loss_fails_only_beyond_its_tolerance_and_names_the_cause():
    ln10 = math.log(10)
    assert judge_initial_loss(ln10 + 0.9, 10, (0, 9)).text == f"loss at init {ln10 + 0.9:.3g}, ln C = ln 10 = 2.3"
    high = judge_initial_loss(ln10 + 3.99, 10, (0, 9), logit_std=2.9)
    assert high.status == PASS and "a little high (logits of std 2.9)" in high.text
    assert judge_initial_loss(ln10 + 4.01, 10, (0, 9)).status == FAIL
    assert judge_initial_loss(math.log(1000) * 2 - 0.01, 1000, (0, 999)).status == PASS  # ln C nats above
    big = judge_initial_loss(40.0, 10, (0, 9), logit_std=30.0, input_std=80.0, last_layer="fc3")
    assert "`fc3` is scaled too large" in big.text and "inputs (std 80) are not standardized" in big.text
    small_logits = judge_initial_loss(7.0, 10, (0, 9), logit_std=0.5)
    assert small_logits.status == FAIL and "not the logits the loss expects" in small_logits.text
    low = judge_initial_loss(0.05, 10, (0, 9))
    assert low.status == PASS and "below chance" in low.text
    assert judge_initial_loss(None, 10, (0, 10)).status == FAIL
    assert judge_initial_loss(float("nan"), 10, (0, 9)).status == FAIL


def test_gradient_reach_judges_none_zero_and_tiny_gradients():
    ok = judge_gradient_reach({"a.weight": torch.tensor([1e-12, 0.0])}, ["a"])
    assert ok.status == PASS  # tiny is not zero: a bias before batch norm gets rounding-sized gradients
    bad = judge_gradient_reach(
        {"a.weight": None, "b.weight": torch.zeros(3), "c.weight": torch.ones(2), "d.weight": None},
        ["a", "b", "c"],
        sizes={"a.weight": 1, "b.weight": 3, "c.weight": 2, "d.weight": 4},
    )
    assert bad.status == FAIL and bad.figures["share_of_weights"] == pytest.approx(80)
    assert bad.figures["cut"] == ["a.weight"] and bad.figures["unused"] == ["d.weight"]
    assert bad.figures["zero"] == ["b.weight"]
    assert judge_gradient_reach({}, []).status == FAIL  # nothing would train


def test_batch_independence_tolerates_rounding_but_not_a_dependency():
    own = torch.zeros(4, 3)
    own[1] = 1.0
    rounding = own.clone()
    rounding[2] = 1e-9
    leak = own.clone()
    leak[3] = 1e-3
    assert judge_batch_independence({1: rounding}).status == PASS
    bad = judge_batch_independence({1: leak})
    assert bad.status == FAIL and bad.figures["mixed_pairs"] == 1 and "examples 3" in bad.text


def test_output_kind_and_what_the_loss_expects():
    z = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    assert output_kind(z) == "logits"
    assert output_kind(z.softmax(1)) == "probabilities"
    assert output_kind(z.log_softmax(1)) == "log_probabilities"
    assert output_kind(z.softmax(1) * 0.9) == "logits"  # rows that do not sum to 1
    assert loss_expects_logits(F.cross_entropy, z, y)
    assert loss_expects_logits(lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1), z, y)
    assert not loss_expects_logits(F.nll_loss, z, y)
    assert judge_outputs("probabilities", False).status == FAIL and judge_outputs("logits", True).status == PASS


def test_overfit_judges_the_target_step_and_a_loss_without_floor():
    fitted = judge_overfit({3e-3: [2.0, 1.0, 0.01]}, 0.02, fitted_at=(3e-3, 2), batch=16)
    assert fitted.status == PASS and "at step 2 with Adam lr 0.003" in fitted.text
    failed = judge_overfit({3e-3: [2.0, 1.5], 1e-2: [2.0, 1.2]}, 0.02, batch=16)
    assert failed.status == FAIL and failed.figures["best"] == 1.2 and "Adam lr 0.003, 0.01" in failed.text
    negative = judge_overfit({3e-3: [0.1, -0.5]}, 0.02, negative=True, batch=16)
    assert negative.status == FAIL and "went negative" in negative.text


def test_a_model_too_small_for_its_batch_fails_the_overfit_check_alone():
    torch.manual_seed(0)
    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))  # random labels a linear model cannot separate
    result = preflight(nn.Linear(2, 2), (x, y), steps=50)
    assert result.causes == ["overfit_one_batch"]
    assert "a model that cannot memorize one batch" in result["overfit_one_batch"].text
    assert result["overfit_one_batch"].figures["lrs"] == [3e-3, 1e-2, 1e-3]


# -- the command line -----------------------------------------------------------------------------------------

SMALL = [
    "--set", "data.name=synthetic", "--set", "train.threads=1", "--set", "model.depth=1",
    "--set", "model.width=16", "--set", "data.batch_size=64",
]  # fmt: skip


def test_doctor_preflight_prints_one_line_per_check_writes_nothing_and_exits_0(tmp_path, monkeypatch, capsys):
    from tricklab.cli.main import main

    monkeypatch.chdir(tmp_path)
    started = time.process_time()
    assert main(["doctor", "--preflight", *SMALL]) == 0
    assert time.process_time() - started < 20  # seconds of CPU (one thread), not a training run
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tricklab preflight: 5 of 5 checks passed"
    assert [line.split()[:2] for line in lines[1:]] == [["PASS", f"{name}:"] for name in CHECKS]
    assert "one batch of 32 fitted" in lines[5]  # the first 32 of the 64
    assert list(tmp_path.iterdir()) == []


def test_doctor_preflight_exits_1_when_a_check_fails_and_2_on_bad_input(tmp_path, monkeypatch, capsys):
    from tricklab.cli.doctor_cmd import EXIT_PREFLIGHT_FAILED
    from tricklab.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert EXIT_PREFLIGHT_FAILED == 1
    bad_init = ["--set", "init.scheme=standard_normal", "--set", "model.width=256", "--steps", "5"]
    assert main(["doctor", "--preflight", *SMALL, *bad_init]) == EXIT_PREFLIGHT_FAILED
    out = capsys.readouterr().out
    assert "FAIL initial_loss" in out and "scaled too large" in out
    assert main(["doctor", "--preflight", *SMALL, "--out", str(tmp_path / "x")]) == 2
    assert "--out" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


# -- the documentation ----------------------------------------------------------------------------------------


def test_the_module_example_runs_as_written():
    import inspect
    import re

    import tricklab.diagnostics.preflight as module

    (block,) = re.findall(r"Example::\n\n((?: {4}.*\n|\n)+)", inspect.getdoc(module) + "\n")
    scope = {"torch": torch, "tricklab": tricklab}
    exec(inspect.cleandoc(block), scope)
    assert scope["result"].ok and [c.status for c in scope["result"].checks] == [PASS] * len(CHECKS)


def test_the_readme_shows_what_its_example_prints():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### Pre-flight") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    exec(code, scope)
    assert re.sub(r"\n {7}", " ", shown).strip() == str(scope["result"])  # lines wrapped by 7 spaces in the README
    assert scope["result"].causes == ["outputs_are_logits"]
    assert scope["result"]["overfit_one_batch"].figures["best"] == pytest.approx(1.46, abs=0.005)
