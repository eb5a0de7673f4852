"""The zoo of loop bugs: the silent training-loop mistakes people write, each beside a healthy twin, under the doctor.

Each case is a plain PyTorch loop, written the way a user writes it, run under ``with tricklab.Doctor(model, opt)
as doctor:`` with ``doctor.observe(loss=..., labels=y)``. Its mistake is one line (or two) that the ``bug`` flag
switches; the healthy twin is the same loop with that line fixed and nothing else changed. Each case names the
verdict the doctor should give (fixed before running, never changed after seeing the answer), the public report
or common-mistake list it comes from, and whether it reproduces a reported real bug. The twins' expected answer is
no verdict at all; so is that of a "harmless" case, a mistake that is no bug (``log_softmax`` before
``cross_entropy``: the same loss and gradient as its twin), whose runs count with the twins' false alarms and in
neither the named nor the missed.

Per (case, seed), bug and twin: the verdict names, the step at which each was first certain (``Verdict.first_step``
where the doctor has it, else "n/a"), and a measurement that is not the doctor's: validation accuracy (R² for the
regression cases) after the run, so that a case whose bug does not make it worse than its twin shows it.

Data: real MNIST (a subset; ``TRICKLAB_DATA`` points at the copy on disk) and MNIST-1D (the ``mnist1d`` package,
offline); models: a small MLP, a small CNN (2-D on MNIST, 1-D on MNIST-1D), a logistic regression. Every run is
short (200 steps by default, batch 64, one thread).

    TRICKLAB_DATA=/work/shared/data .venv/bin/python benchmarks/loop_bugs.py --quick
    TRICKLAB_DATA=/work/shared/data nice -n 10 .venv/bin/python benchmarks/loop_bugs.py --seeds 3 --json /tmp/lb.json
    TRICKLAB_DATA=/work/shared/data .venv/bin/python benchmarks/loop_bugs.py --cases 'softmax*,mse*' --seeds 1

Targets (issue 21): the cause named in ≥ 90% of bug runs; false alarms on ≤ 2% of the healthy twins.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import math
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

#: The verdict names of the loop bugs (the contract with tricklab.diagnostics.loop_bugs), in the issue's order.
LOOP_BUGS = (
    "gradients_accumulate",
    "params_not_in_optimizer",
    "gradient_cut",
    "step_changes_nothing",
    "eval_mode_training",
    "probabilities_to_loss",
    "lr_schedule_runaway",
    "batches_not_shuffled",
    "labels_independent_of_inputs",
    "weight_decay_dominates",
    "clipping_dominates",
    "loss_broadcasts",
    "same_batch_every_step",
    "frozen_weights",
)

#: Targets of issue 21.
TARGETS = {"named": 0.90, "false_alarm": 0.02}

#: A bug "shows" when its twin's validation score beats it by at least this much (accuracy or R², mean over seeds).
SHOWS = 0.02


# --- data and models ----------------------------------------------------------------------------------------------


@functools.cache
def _splits(name: str):
    from tricklab.data import load_splits

    return load_splits(name, subset=5000 if name == "mnist" else None)


@dataclass
class Setup:
    """What every loop gets: the training tensors of one run (``steps`` batches of ``batch`` in ``epochs`` epochs),
    a validation set, the seed, and builders for the models and loaders a user would write."""

    data: str
    seed: int
    steps: int
    batch: int = 64
    epochs: int = 5
    x: torch.Tensor = field(init=False)
    y: torch.Tensor = field(init=False)
    xv: torch.Tensor = field(init=False)
    yv: torch.Tensor = field(init=False)

    def __post_init__(self):
        s = _splits(self.data)
        per_epoch = max(1, self.steps // self.epochs)
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(s.train.y), generator=g)[: per_epoch * self.batch]
        self.x, self.y = s.train.x[idx], s.train.y[idx]
        self.xv, self.yv = s.val.x[:1000], s.val.y[:1000]
        self.generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)

    @property
    def n_in(self) -> int:
        return math.prod(self.x.shape[1:])

    def loader(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, shuffle: bool = True):
        """A DataLoader over (x, y), by default the run's training set, shuffled with the run's generator."""
        ds = TensorDataset(self.x if x is None else x, self.y if y is None else y)
        return DataLoader(ds, batch_size=self.batch, shuffle=shuffle, generator=self.generator)

    def net(self, arch: str, out: int = 10, **kw) -> Net:
        return make_net(arch, self.data, self.n_in, out, **kw)


class Net(nn.Module):
    """``features`` then ``classifier``: the shape of most user models. ``cut`` puts a user's graph cut between
    them: ``"detach"`` (``h = h.detach()``) or ``"no_grad"`` (the features computed under ``torch.no_grad()``)."""

    def __init__(self, features: nn.Module, classifier: nn.Module, cut: str = ""):
        super().__init__()
        self.features, self.classifier, self.cut = features, classifier, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut == "no_grad":
            with torch.no_grad():
                h = self.features(x)
        else:
            h = self.features(x)
            if self.cut == "detach":
                h = h.detach()
        return self.classifier(h)


def make_net(arch: str, data: str, n_in: int, out: int = 10, *, cut: str = "", dropout: float = 0.0) -> Net:
    """``mlp`` (2 hidden ReLU layers of 128), ``mlp_bn`` (with BatchNorm1d), ``logreg`` (one Linear), ``cnn``
    (two conv + pool blocks, 2-D on MNIST and 1-D on MNIST-1D), ``cnn_bn`` (with batch norm layers named ``bn*``)."""
    if arch in ("mlp", "mlp_bn"):
        bn = arch == "mlp_bn"
        layers: list[nn.Module] = [nn.Flatten()]
        d = n_in
        for _ in range(2):
            layers += [nn.Linear(d, 128), *([nn.BatchNorm1d(128)] if bn else []), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout else []
            d = 128
        return Net(nn.Sequential(*layers), nn.Linear(128, out), cut)
    if arch == "logreg":
        return Net(nn.Flatten(), nn.Linear(n_in, out), cut)
    if arch in ("cnn", "cnn_bn"):
        two_d = data == "mnist"
        if two_d:
            conv, pool, norm = nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d
        else:
            conv, pool, norm = nn.Conv1d, nn.MaxPool1d, nn.BatchNorm1d
        c1, c2, k = (8, 16, 3) if two_d else (16, 32, 5)
        feats = nn.Sequential()
        feats.add_module("conv1", conv(1, c1, k, padding=k // 2))
        if arch == "cnn_bn":
            feats.add_module("bn1", norm(c1))
        feats.add_module("relu1", nn.ReLU())
        feats.add_module("pool1", pool(2))
        feats.add_module("conv2", conv(c1, c2, k, padding=k // 2))
        if arch == "cnn_bn":
            feats.add_module("bn2", norm(c2))
        feats.add_module("relu2", nn.ReLU())
        feats.add_module("pool2", pool(2))
        feats.add_module("flatten", nn.Flatten())
        flat = c2 * 7 * 7 if two_d else c2 * 10
        return Net(feats, nn.Linear(flat, out), cut)
    raise ValueError(f"make_net: arch={arch!r}; expected mlp, mlp_bn, logreg, cnn or cnn_bn")


def optimizer(params, name: str, lr: float, **kw) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, **kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    raise ValueError(f"optimizer: name={name!r}; expected sgd or adam")


# --- what a run returns -------------------------------------------------------------------------------------------


def first_step(verdict) -> int | None:
    """The step at which the verdict was first certain, where the doctor records it (``Verdict.first_step``)."""
    step = getattr(verdict, "first_step", None)
    return step if isinstance(step, int) else None


def done(s: Setup, model: nn.Module, doctor, task: str = "classify") -> dict[str, Any]:
    """The run's outcome: the doctor's verdicts (an exception from it is recorded, not raised) and the validation
    score, accuracy (``classify``) or R² of the digit value (``regress``)."""
    model.eval()
    with torch.no_grad():
        out = model(s.xv)
    if task == "regress":
        t = digit_value(s.yv)
        score = 1.0 - F.mse_loss(out.reshape(-1), t).item() / t.var(unbiased=False).item()
        metric = "r2"
    else:
        score, metric = (out.argmax(1) == s.yv).float().mean().item(), "acc"
    names, steps, causes, error = [], {}, {}, None
    try:
        for v in doctor.verdicts():
            names.append(v.name)
            steps[v.name] = first_step(v)
            causes[v.name] = getattr(v, "cause", None)  # the verdict that explains this one, where the doctor says
    except Exception as e:  # noqa: BLE001  the doctor failing at the end of a loop is a result too
        error = f"{type(e).__name__}: {e}"
    return {"verdicts": names, "first_steps": steps, "causes": causes, "error": error, "score": score,
            "metric": metric, "doctor_steps": doctor.steps}  # fmt: skip


def digit_value(y: torch.Tensor) -> torch.Tensor:
    """The regression target of the ``loss_broadcasts`` cases: the digit's value, centred and scaled."""
    return (y.float() - 4.5) / 2.87


# --- the loops: one per mistake, ``bug`` switches the mistaken line(s) ---------------------------------------------


def no_zero_grad(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """``optimizer.zero_grad()`` left out: every ``backward`` adds to the gradients of all steps before it."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                if not bug:
                    opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def zero_grad_per_epoch(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """``zero_grad()`` at the top of the epoch loop instead of the batch loop: the gradients of an epoch add up."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            if bug:
                opt.zero_grad()
            for x, y in s.loader():
                if not bug:
                    opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def zero_grad_other_optimizer(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """``zero_grad()`` on another optimizer (one left from an earlier experiment in the notebook) than the one
    stepped: this model's gradients are never cleared."""
    import tricklab

    earlier = s.net(arch)
    earlier_opt = optimizer(earlier.parameters(), optim, lr)
    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                (earlier_opt if bug else opt).zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def probabilities_to_ce(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3, last="softmax"):
    """The model's output passed through ``nn.Softmax`` (``last="softmax"``) or ``log_softmax`` (``"log_softmax"``)
    before ``F.cross_entropy``, which applies its own log-softmax: it expects logits."""
    import tricklab

    model = s.net(arch)
    if bug and last == "softmax":
        model = nn.Sequential(model, nn.Softmax(dim=1))
    elif bug:
        model = nn.Sequential(model, nn.LogSoftmax(dim=1))
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def softmax_then_nll(s: Setup, bug: bool, arch="logreg", optim="sgd", lr=0.002):
    """A logistic regression whose loss is ``nll_loss(log_softmax(softmax(logits)))``: softmax applied twice."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                logits = model(x)
                if bug:
                    logits = F.softmax(logits, dim=1)
                loss = F.nll_loss(F.log_softmax(logits, dim=1), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def graph_cut(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3, cut="detach"):
    """The model's forward cuts the graph between its features and its classifier (``.detach()`` or
    ``torch.no_grad()``): the features never get a gradient and keep their initial weights."""
    import tricklab

    model = s.net(arch, cut=cut if bug else "")
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def frozen_but_batchnorm(s: Setup, bug: bool, arch="cnn_bn", optim="sgd", lr=0.01):
    """``requires_grad = False`` on every parameter whose name lacks ``bn``: only the batch norm layers train."""
    import tricklab

    model = s.net(arch)
    if bug:
        for name, p in model.named_parameters():
            if "bn" not in name:
                p.requires_grad = False
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def classifier_left_out(s: Setup, bug: bool, arch="cnn", optim="adam", lr=1e-3):
    """The optimizer's parameter list built from the feature layers only: the classifier keeps its initial weights."""
    import tricklab

    model = s.net(arch)
    params = list(model.features.parameters())
    if not bug:
        params += list(model.classifier.parameters())
    opt = optimizer(params, optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def head_replaced_after_optimizer(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """A new classifier head put on the model after the optimizer was built on the old one's parameters."""
    import tricklab

    model = s.net(arch)
    if bug:
        opt = optimizer(model.parameters(), optim, lr)
        model.classifier = nn.Linear(model.classifier.in_features, 10)
    else:
        model.classifier = nn.Linear(model.classifier.in_features, 10)
        opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def step_before_backward(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """``opt.step()`` before ``loss.backward()``: each step sees the gradients ``zero_grad`` just cleared (None)."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                if bug:
                    opt.step()
                    loss.backward()
                else:
                    loss.backward()
                    opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def zero_grad_before_step(s: Setup, bug: bool, arch="cnn", optim="adam", lr=1e-3):
    """``zero_grad()`` between ``backward()`` and ``step()``: the step sees no gradient."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                if bug:
                    opt.zero_grad()
                    opt.step()
                else:
                    opt.step()
                    opt.zero_grad()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def lr_scaled_by_int_division(s: Setup, bug: bool, arch="mlp", base_lr=0.1):
    """The linear scaling rule lr = 0.1 × batch / 256 (Goyal et al. 2017) written with ``//``: 64 // 256 = 0."""
    import tricklab

    model = s.net(arch)
    lr = base_lr * (s.batch // 256 if bug else s.batch / 256)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def loss_rewrapped(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """The loss re-made as a new tensor, ``torch.tensor(loss.item(), requires_grad=True)`` (the usual "fix" of
    "element 0 of tensors does not require grad"): backward reaches no parameter, every gradient stays None."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                if bug:
                    loss = torch.tensor(loss.item(), requires_grad=True)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def eval_mode_after_validation(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3, dropout=0.5):
    """``model.train()`` called once before the epochs, ``model.eval()`` for the validation after each: from the
    second epoch on, training runs in eval mode (no dropout; batch norm on its running statistics)."""
    import tricklab

    model = s.net(arch, dropout=dropout)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        model.train()
        for _epoch in range(s.epochs):
            if not bug:
                model.train()
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
            model.eval()
            with torch.no_grad():
                doctor.observe(val_loss=F.cross_entropy(model(s.xv), s.yv))
    return done(s, model, doctor)


def scheduler_per_batch(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3, kind="step"):
    """An epoch scheduler (StepLR over half the epochs, γ = 0.1; or ExponentialLR, γ = 0.7) stepped in the batch
    loop: it decays per batch what was meant per epoch, and the LR collapses within a few dozen steps."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    if kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, s.epochs // 2), gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                if bug:
                    sched.step()
                doctor.observe(loss=loss, labels=y)
            if not bug:
                sched.step()
    return done(s, model, doctor)


def gamma_inverted(s: Setup, bug: bool, arch="cnn", optim="adam", lr=1e-3):
    """MultiStepLR with ``gamma=10`` ("divide by 10") where 0.1 was meant: the LR grows ×10 at each milestone."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=10.0 if bug else 0.1)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
            sched.step()
    return done(s, model, doctor)


def sorted_not_shuffled(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """The training set stored one class after another and loaded with ``shuffle=False``: every batch holds one
    class, and each epoch ends on the last class."""
    import tricklab

    order = torch.argsort(s.y, stable=True)
    loader = s.loader(s.x[order], s.y[order], shuffle=not bug)
    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in loader:
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def shuffled_apart(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """Inputs and labels shuffled with two different permutations before training: the labels no longer belong
    to the inputs."""
    import tricklab

    px = torch.randperm(len(s.y), generator=s.generator)
    py = torch.randperm(len(s.y), generator=s.generator) if bug else px
    loader = s.loader(s.x[px], s.y[py])
    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in loader:
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def weight_decay_typo(s: Setup, bug: bool, arch="mlp", optim="sgd", lr=0.05, wd=0.5, wd_fix=5e-4):
    """``weight_decay`` two or three orders of magnitude too large (5e-1 typed for 5e-4): the decay term swamps the
    loss gradient and pulls every weight towards 0."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr, weight_decay=wd if bug else wd_fix)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def clip_far_below(s: Setup, bug: bool, arch="mlp", optim="sgd", lr=0.05, max_norm=0.01, max_norm_fix=5.0):
    """``clip_grad_norm_`` with a ``max_norm`` far below the gradient norm: every step is shrunk by the same large
    factor, as if the LR were that much smaller."""
    import tricklab

    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm if bug else max_norm_fix)
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def mse_broadcast(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """Regression of the digit's value with ``F.mse_loss(pred, target)``, ``pred`` (N, 1) and ``target`` (N,): the
    loss broadcasts to (N, N), every prediction is pulled to every target, and the net learns the batch mean."""
    import tricklab

    model = s.net(arch, out=1)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for x, y in s.loader():
                opt.zero_grad()
                pred, target = model(x), digit_value(y)
                loss = F.mse_loss(pred if bug else pred.squeeze(1), target)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss)
    return done(s, model, doctor, task="regress")


def next_iter_in_loop(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """``x, y = next(iter(loader))`` inside the step loop, on an unshuffled loader: a fresh iterator each step, so
    always its first batch. The twin keeps one iterator and starts it again at the end of each pass."""
    import tricklab

    loader = s.loader(shuffle=False)
    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    batches = iter(loader)
    with tricklab.Doctor(model, opt) as doctor:
        for _step in range(s.steps):
            if bug:
                x, y = next(iter(loader))
            else:
                try:
                    x, y = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    x, y = next(batches)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


def debug_batch_left_in(s: Setup, bug: bool, arch="mlp", optim="adam", lr=1e-3):
    """The one batch taken to check that the model can overfit it (Karpathy's recipe) left in the loop: every step
    trains on it, whatever the loader yields."""
    import tricklab

    loader = s.loader()
    x0, y0 = next(iter(loader))
    model = s.net(arch)
    opt = optimizer(model.parameters(), optim, lr)
    with tricklab.Doctor(model, opt) as doctor:
        for _epoch in range(s.epochs):
            for batch in loader:
                x, y = (x0, y0) if bug else batch
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                doctor.observe(loss=loss, labels=y)
    return done(s, model, doctor)


# --- the zoo --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One loop bug: the verdict name(s) it should get, where it comes from, and its loop (``bug`` switches the
    mistake). ``real``: it reproduces a bug reported in a public project or forum thread (``source``), not only a
    mistake from a list. ``note``: why the mistake may not make the run measurably worse than its twin.
    ``harmless``: a mistake that is no bug (the same loss and gradient as its twin): no verdict is expected, and its
    runs count as healthy ones (role ``harmless``), with the twins' false alarms."""

    name: str
    expected: tuple[str, ...]
    data: str
    loop: Callable[..., dict[str, Any]]
    source: str
    real: bool = False
    note: str = ""
    quick: bool = False
    harmless: bool = False


def _c(name, expected, data, loop, source, real=False, note="", quick=False, harmless=False, **kw) -> Case:
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    if harmless == bool(expected):
        raise ValueError(f"case {name!r}: a harmless case expects no verdict, any other case at least one")
    loop = functools.partial(loop, **kw) if kw else loop
    return Case(name, expected, data, loop, source, real, note, quick, harmless)


M, M1 = "mnist", "mnist1d"
KARPATHY_TWEET = "Karpathy, most common neural net mistakes, https://twitter.com/karpathy/status/1013244313327681536"
KARPATHY_RECIPE = "Karpathy, A Recipe for Training Neural Networks, http://karpathy.github.io/2019/04/25/recipe/"

ZOO: list[Case] = [
    # 1 gradients_accumulate
    _c("no-zero-grad-mnist-cnn", "gradients_accumulate", M, no_zero_grad,
       "https://stackoverflow.com/questions/60335387 (MNIST CNN, Adam; TrainCheck's stackoverflow-60335387)",
       real=True, quick=True, arch="cnn"),
    _c("no-zero-grad-m1d-mlp", "gradients_accumulate", M1, no_zero_grad,
       "https://github.com/yastrebksv/TennisCourtDetector/issues/7 (no zero_grad in the trainer; fixed); "
       + KARPATHY_TWEET, real=True, optim="sgd", lr=0.01),
    _c("zero-grad-per-epoch-mnist-mlp", "gradients_accumulate", M, zero_grad_per_epoch,
       "https://github.com/salesforce/corr_based_prediction/issues/1 (zero_grad outside the batch loop)", real=True),
    _c("zero-grad-other-optimizer-m1d-cnn", "gradients_accumulate", M1, zero_grad_other_optimizer,
       "issue 21 item 1 (zero_grad on another optimizer); cf. "
       "https://github.com/Hsintien-Ng/idinvert_pytorch-reproduced/issues/1 (one of two optimizers never zeroed)",
       arch="cnn"),
    # 2 params_not_in_optimizer
    _c("classifier-left-out-mnist-cnn", "params_not_in_optimizer", M, classifier_left_out,
       "https://github.com/zjunlp/HVPNeT/issues/5 (the crf and fc parameters never appended to the optimizer's list)",
       real=True, quick=True),
    _c("head-replaced-after-optimizer-m1d-mlp", "params_not_in_optimizer", M1, head_replaced_after_optimizer,
       "https://github.com/salesforce/awd-lstm-lm/issues/30 (parameters missing from the optimizer, never updated); "
       "the transfer-learning order: optimizer built, then the head replaced"),
    # 3 gradient_cut
    _c("detach-in-forward-m1d-mlp", "gradient_cut", M1, graph_cut,
       "https://github.com/queenie88/A-GCN/issues/4 (a .detach() left the weights before it without gradient)",
       real=True, quick=True, cut="detach"),
    _c("no-grad-features-mnist-cnn", "gradient_cut", M, graph_cut,
       "https://github.com/rll-research/cic/issues/5 (the CNN encoder run under torch.no_grad, never trained)",
       real=True, arch="cnn", cut="no_grad"),
    # Written expecting gradient_cut (issue 21 item 3 lists requires_grad_(False) among the cuts). Frozen
    # parameters cut no graph: no layer behind them is starved, they are left out of it; the doctor names that cause
    # frozen_weights, added after this case missed. Either name counts.
    _c("frozen-all-but-bn-mnist-cnn", ("frozen_weights", "gradient_cut"), M, frozen_but_batchnorm,
       "https://discuss.pytorch.org/t/obtaining-abnormal-changes-in-loss-and-accuracy/84911 (every layer but batch "
       "norm frozen with requires_grad = False; TrainCheck's PT-FORUM-84911)", real=True),
    # 4 step_changes_nothing
    _c("step-before-backward-mnist-mlp", "step_changes_nothing", M, step_before_backward,
       "the order zero_grad → backward → step (PyTorch's optimization tutorial); step before backward", quick=True),
    _c("zero-grad-before-step-m1d-cnn", "step_changes_nothing", M1, zero_grad_before_step,
       "zero_grad may go anywhere but between backward and step (a common-mistake list: "
       "https://velog.io/@rhss10/기본-optimizer.zerograd는-어디에-넣어주어야-할까)"),
    _c("lr-int-division-mnist-mlp", "step_changes_nothing", M, lr_scaled_by_int_division,
       "lr = 0: the linear scaling rule of Goyal et al. 2017 (lr = 0.1·batch/256) written with //"),
    # Two names: the loss re-made as a leaf cuts the graph (3) and leaves every gradient None (4), at once.
    _c("loss-rewrapped-m1d-mlp", ("step_changes_nothing", "gradient_cut"), M1, loss_rewrapped,
       "issue 21 item 4 (every gradient None): torch.tensor(loss.item(), requires_grad=True)"),
    # 5 eval_mode_training. Neither case shows its bug by accuracy in 200 steps (measured over 3 seeds: 0.89 against
    # the twin's 0.88 with dropout 0.5 switched off; 0.49 against 0.49 with batch norm on its running statistics):
    # the harm of training without dropout or batch statistics comes later, as overfitting or drift, and the labels
    # stay as set before running.
    _c("eval-after-validation-mnist-dropout", "eval_mode_training", M, eval_mode_after_validation,
       "https://github.com/ThilinaRajapakse/simpletransformers/issues/941 (model left in eval mode after the "
       "evaluation during training)", real=True, quick=True,
       note="not worse than its twin in 200 steps (accuracy 0.89 against 0.88, 3 seeds)"),
    _c("eval-after-validation-m1d-bn", "eval_mode_training", M1, eval_mode_after_validation,
       "https://github.com/shubhamagarwal92/mmd/issues/14 (model.eval() in evaluate, model.train() never called "
       "again)", real=True, arch="mlp_bn", dropout=0.0,
       note="not worse than its twin in 200 steps (accuracy 0.49 against 0.49, 3 seeds)"),
    # 6 probabilities_to_loss
    _c("softmax-ce-mnist-mlp", "probabilities_to_loss", M, probabilities_to_ce,
       "https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814 (softmax passed to "
       "CrossEntropyLoss; loss stuck at 2.30)", real=True, quick=True),
    _c("softmax-ce-m1d-cnn", "probabilities_to_loss", M1, probabilities_to_ce,
       "https://github.com/jindongwang/Deep-learning-activity-recognition/issues/10 (F.softmax before "
       "nn.CrossEntropyLoss in a 1-D CNN)", real=True, arch="cnn"),
    # (was SGD lr 0.05: there the bug did not show, accuracy 0.883 against the twin's 0.861 at seed 0, the twin
    # itself too hot for a logistic regression on 784 standardized inputs; at lr 0.002, chosen on the accuracy gap
    # of seeds 0 and 1, the softmaxed logits learn slower: 0.77/0.74 against 0.86/0.87.)
    _c("softmax-twice-mnist-logreg", "probabilities_to_loss", M, softmax_then_nll,
       "https://github.com/Lightning-Universe/lightning-bolts/issues/654 (LogisticRegression: "
       "nll_loss(log_softmax(softmax(linear(x)))))", real=True, lr=0.002),
    # Harmless, so no bug: log_softmax is idempotent (log_softmax(log_softmax(z)) = log_softmax(z)), so
    # F.cross_entropy of log-probabilities is the loss of the logits, with the same gradient (accuracy 0.39 against
    # 0.39 over 3 seeds). Written expecting probabilities_to_loss (issue 21 item 6); now a pair of healthy loops that
    # must both get no verdict: its runs count with the twins' false alarms, in neither the named nor the missed.
    _c("log-softmax-ce-m1d-mlp", (), M1, probabilities_to_ce,
       "https://github.com/bhanML/Co-teaching/issues/4 (log_softmax fed to cross_entropy); " + KARPATHY_TWEET,
       last="log_softmax",
       note="harmless by arithmetic: log_softmax is idempotent, so the loss and its gradient equal the twin's",
       harmless=True),
    # 7 lr_schedule_runaway
    _c("steplr-per-batch-mnist-mlp", "lr_schedule_runaway", M, scheduler_per_batch,
       "https://github.com/Lornatang/SRGAN-PyTorch/issues/1 (StepLR(step_size=epochs // 2, gamma=0.1) stepped "
       "every batch: the LR near 0 after a few steps)", real=True, quick=True, kind="step"),
    _c("explr-per-batch-m1d-cnn", "lr_schedule_runaway", M1, scheduler_per_batch,
       "https://github.com/ivadomed/ivadomed/pull/55 (scheduler stepped in the batch loop instead of the epoch "
       "loop)", real=True, arch="cnn", kind="exp"),
    _c("gamma-10-mnist-cnn", "lr_schedule_runaway", M, gamma_inverted,
       "issue 21 item 7 (wrong gamma): MultiStepLR(gamma=10) for 'divide by 10'"),
    # 8 batches_not_shuffled
    _c("sorted-no-shuffle-mnist-mlp", "batches_not_shuffled", M, sorted_not_shuffled,
       "https://github.com/keras-team/keras/issues/6955 (classes in order: the model favours the last class "
       "it trained on)", quick=True),
    _c("sorted-no-shuffle-m1d-cnn", "batches_not_shuffled", M1, sorted_not_shuffled,
       "https://github.com/xuyxu/Deep-Clustering-Network/issues/2 (training data not shuffled)", arch="cnn"),
    # 9 labels_independent_of_inputs
    _c("xy-shuffled-apart-mnist-mlp", "labels_independent_of_inputs", M, shuffled_apart,
       "https://github.com/DrexelChatbotGroup/DrexelChatbot/issues/15 (x randomized but not y)", real=True,
       quick=True),
    _c("xy-shuffled-apart-m1d-cnn", "labels_independent_of_inputs", M1, shuffled_apart,
       "https://github.com/udacity/sdc-issue-reports/issues/1326 (features and labels shuffled with different "
       "orders, and the quiz still passed)", real=True, arch="cnn"),
    # 10 weight_decay_dominates
    _c("weight-decay-5e-1-mnist-mlp", "weight_decay_dominates", M, weight_decay_typo,
       "issue 21 item 10; SGD weight_decay=5e-1 typed for 5e-4", quick=True),
    _c("weight-decay-adam-m1d-cnn", "weight_decay_dominates", M1, weight_decay_typo,
       "issue 21 item 10; an AdamW-sized weight_decay=1.0 given to Adam (L2 on the gradient); cf. "
       "https://github.com/Joker316701882/Additive-Margin-Softmax/issues/16 (bad training whenever weight decay set)",
       arch="cnn", optim="adam", lr=1e-3, wd=1.0, wd_fix=1e-4),
    # 11 clipping_dominates
    _c("clip-0.01-mnist-mlp", "clipping_dominates", M, clip_far_below,
       "https://github.com/facebookresearch/detr/issues/198 (gradient norms 10–100 against clip_max_norm=0.1)",
       quick=True),
    _c("clip-0.001-m1d-cnn", "clipping_dominates", M1, clip_far_below,
       "issue 21 item 11 (max_norm orders of magnitude below the gradient norm)", arch="cnn", max_norm=1e-3),
    # 12 loss_broadcasts
    _c("mse-broadcast-mnist-mlp", "loss_broadcasts", M, mse_broadcast,
       "https://github.com/deepset-ai/FARM/issues/229 (regression head: target (32, 1) against input (32,))",
       real=True, quick=True),
    _c("mse-broadcast-m1d-cnn", "loss_broadcasts", M1, mse_broadcast,
       "https://github.com/pytorch/pytorch/issues/16045 (mse_loss of (n, 1) against (n,) broadcasts silently)",
       real=True, arch="cnn"),
    # 13 same_batch_every_step
    _c("next-iter-in-loop-mnist-mlp", "same_batch_every_step", M, next_iter_in_loop,
       "https://github.com/ZhaoJ9014/face.evoLVe/pull/39 (iter(loader).next() in the while loop: always the first "
       "batch)", real=True, quick=True),
    _c("debug-batch-left-in-m1d-cnn", "same_batch_every_step", M1, debug_batch_left_in,
       KARPATHY_RECIPE + " (overfit one batch first; the batch left in the loop)", arch="cnn"),
]  # fmt: skip


# --- running ---------------------------------------------------------------------------------------------------------


def run_case(case: Case, seed: int, bug: bool, steps: int = 200) -> dict[str, Any]:
    """One run of ``case`` (its bug, or its twin when ``bug`` is False) with ``seed``: one record."""
    start = time.perf_counter()
    s = Setup(case.data, seed, steps)
    try:
        out = case.loop(s, bug)
    except Exception as e:  # noqa: BLE001  a loop that crashes is a result too: recorded, not hidden
        out = {"verdicts": [], "first_steps": {}, "causes": {}, "error": f"{type(e).__name__}: {e}", "score": None,
               "metric": None, "doctor_steps": None}  # fmt: skip
    names = out["verdicts"]
    role = ("harmless" if case.harmless else "bug") if bug else "twin"
    rec = {"case": case.name, "role": role, "seed": seed, "data": case.data,
           "expected": list(case.expected) if bug else [], "real": case.real, "source": case.source,
           "note": case.note, **out,
           "wall_s": time.perf_counter() - start}  # fmt: skip
    rec["named"] = bool(role == "bug" and any(n in names for n in case.expected))
    rec["false_alarm"] = bool(role != "bug" and names)
    hits = [out["first_steps"].get(n) for n in case.expected if n in names]
    rec["first_step"] = min((h for h in hits if h is not None), default=None)
    # one cause, one fix: the expected cause named and every other verdict shown as its consequence
    rec["alone"] = rec["named"] and all(n in case.expected or out["causes"].get(n) for n in names)
    return rec


def select(pattern: str) -> list[Case]:
    """The cases whose names match ``pattern``: comma-separated globs (``softmax*``) or substrings (``mse``)."""
    pats = [p.strip() for p in pattern.split(",") if p.strip()]
    chosen = [c for c in ZOO if any(fnmatch.fnmatch(c.name, p if any(ch in p for ch in "*?[") else f"*{p}*")
                                    for p in pats)]  # fmt: skip
    if not chosen:
        raise ValueError(f"--cases {pattern!r} matches no case; the cases are: {', '.join(c.name for c in ZOO)}")
    return chosen


def _median(xs: list[float]) -> str:
    return "n/a" if not xs else f"{statistics.median(xs):g}"


def summarize(rows: list[dict[str, Any]], wall: float) -> str:
    by_case: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_case[r["case"]][r["role"]].append(r)
    cases = {c.name: c for c in ZOO}
    out = [f"{'case':<38} {'expected':<30} {'real':>4} {'runs':>4} {'named':>5} {'first':>5}  {'bug/twin score':<15} "
           f"{'shows':<5} {'twin alarms':<11} other verdicts in the bug runs (name<-cause: a consequence)"]  # fmt: skip
    steps_by_verdict: dict[str, list[int]] = defaultdict(list)
    not_shown = []
    for name, roles in by_case.items():
        case, harmless = cases[name], roles.get("harmless", [])
        bugs, twins = roles.get("bug", []) + harmless, roles.get("twin", [])  # a harmless variant is in a bug's place
        named = sum(r["named"] for r in bugs)
        firsts = [r["first_step"] for r in bugs if r["named"] and r["first_step"] is not None]
        for r in bugs:
            for v in case.expected:
                if v in r["verdicts"] and r["first_steps"].get(v) is not None:
                    steps_by_verdict[v].append(r["first_steps"][v])
        others = Counter(
            v + (f"<-{r['causes'][v]}" if r["causes"].get(v) else "")
            for r in bugs
            for v in r["verdicts"]
            if v not in case.expected
        )
        errors = [r["error"] for r in bugs + twins if r["error"]]
        b = [r["score"] for r in bugs if r["score"] is not None]
        t = [r["score"] for r in twins if r["score"] is not None]
        gap = statistics.mean(t) - statistics.mean(b) if b and t else None
        shows = "n/a" if gap is None else ("yes" if gap >= SHOWS else "NO")
        if shows == "NO":
            not_shown.append(name)
        score = "n/a" if gap is None else f"{statistics.mean(b):.2f}/{statistics.mean(t):.2f}"
        alarms = Counter(v for r in twins + harmless for v in r["verdicts"])
        fa = sum(r["false_alarm"] for r in twins + harmless)
        expected = "|".join(case.expected) or "(harmless: none)"
        shown_named = f"{named:>2}/{len(bugs):<2}" if not harmless else f"{'-':>5}"
        out.append(f"{name:<38} {expected:<30} {'yes' if case.real else '':>4} {len(bugs):>4} "
                   f"{shown_named} {_median(firsts):>5}  {score:<15} {shows:<5} "
                   f"{f'{fa}/{len(twins) + len(harmless)}':<11} {dict(others) or '-'}"
                   + (f"  twin: {dict(alarms)}" if alarms else "")
                   + (f"  ERRORS: {'; '.join(sorted(set(errors)))}" if errors else ""))  # fmt: skip
    bugs = [r for r in rows if r["role"] == "bug"]
    twins = [r for r in rows if r["role"] == "twin"]
    harmless = [r for r in rows if r["role"] == "harmless"]
    out.append("")
    if bugs:
        n = sum(r["named"] for r in bugs)
        out.append(f"cause named in bug runs: {n}/{len(bugs)} = {n / len(bugs):.1%} (target ≥ {TARGETS['named']:.0%})")
        alone = sum(r["alone"] for r in bugs)
        out.append(f"... with every other verdict shown as its consequence (one cause, one fix): {alone}/{len(bugs)}")
        any_v = sum(bool(r["verdicts"]) for r in bugs)
        out.append(f"bug runs with any verdict at all: {any_v}/{len(bugs)} = {any_v / len(bugs):.1%}")
    if twins:
        fa = sum(r["false_alarm"] for r in twins)
        out.append(f"false alarms on healthy twins: {fa}/{len(twins)} = {fa / len(twins):.1%} "
                   f"(target ≤ {TARGETS['false_alarm']:.0%})")  # fmt: skip
    if harmless:
        fa = sum(r["false_alarm"] for r in harmless)
        out.append(f"false alarms on harmless variants (no bug: the twin's loss and gradient): {fa}/{len(harmless)}")
    out.append("median first step per invariant (bug runs where it was named): "
               + ", ".join(f"{v} {_median(steps_by_verdict.get(v, []))}" for v in LOOP_BUGS))  # fmt: skip
    if not_shown:
        out.append(f"bugs not measurably worse than their twin (score gap < {SHOWS}): {', '.join(not_shown)}")
    errors = [r for r in rows if r["error"]]
    if errors:
        out.append(f"runs with an error: {len(errors)}")
    walls = [r["wall_s"] for r in rows]
    if walls:
        med = statistics.median(walls)
        out.append(f"wall time per run: median {med:.1f}s, max {max(walls):.1f}s; total {wall:.0f}s")
    return "\n".join(out)


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the issue's targets, for the JSON: causes named, false alarms (twins and harmless variants),
    median first step per verdict."""
    bugs = [r for r in rows if r["role"] == "bug"]
    twins = [r for r in rows if r["role"] == "twin"]
    harmless = [r for r in rows if r["role"] == "harmless"]
    steps: dict[str, list[int]] = defaultdict(list)
    for r in bugs:
        for v in r["expected"]:
            if v in r["verdicts"] and r["first_steps"].get(v) is not None:
                steps[v].append(r["first_steps"][v])
    return {"bug_runs": len(bugs), "named": sum(r["named"] for r in bugs), "alone": sum(r["alone"] for r in bugs),
            "twin_runs": len(twins), "harmless_runs": len(harmless),
            "false_alarms": sum(r["false_alarm"] for r in twins + harmless),
            "median_first_step": {v: statistics.median(steps[v]) if steps[v] else None for v in LOOP_BUGS}}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per case (default 3)")
    p.add_argument("--quick", action="store_true", help="1 seed, one case per loop bug")
    p.add_argument("--cases", default="", help="comma-separated globs or substrings of case names")
    p.add_argument("--steps", type=int, default=200, help="training steps per run (default 200)")
    p.add_argument("--json", default="", help="write the records here")
    p.add_argument("--list", action="store_true", help="list the cases with their sources and exit")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        p.error(f"--seeds {args.seeds} / --steps {args.steps}: both must be at least 1")
    if args.list:
        for c in ZOO:
            note = f" [{c.note}]" if c.note else ""
            print(f"{c.name:<38} {'|'.join(c.expected):<40} {'real' if c.real else '    '} {c.source}{note}")
        return
    torch.set_num_threads(1)
    try:
        cases = select(args.cases) if args.cases else [c for c in ZOO if c.quick] if args.quick else ZOO
    except ValueError as e:
        p.error(str(e))
    seeds = range(1 if args.quick else args.seeds)
    start = time.perf_counter()
    rows = []
    for case in cases:
        for seed in seeds:
            for bug in (True, False):
                r = run_case(case, seed, bug, args.steps)
                rows.append(r)
                healthy = "ALARM" if r["false_alarm"] else "ok"
                mark = ("ok" if r["named"] else "MISS") if r["role"] == "bug" else healthy
                print(f"{case.name:<38} s{seed} {r['role']:<8} {mark:<5} {r['verdicts']} "
                      f"{r['metric']}={r['score'] if r['score'] is None else round(r['score'], 3)} "
                      f"{r['wall_s']:.1f}s" + (f" ERROR {r['error']}" if r["error"] else ""), flush=True)  # fmt: skip
    wall = time.perf_counter() - start
    print()
    print(summarize(rows, wall))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"totals": totals(rows), "rows": rows, "wall_s": wall, "args": vars(args)}, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
