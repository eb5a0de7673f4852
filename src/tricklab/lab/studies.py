"""Built-in studies: one per section of the lesson, each a base config plus named variants.

A study runs every variant over several seeds and compares each with its baseline on the same seeds. Each
study's setup is chosen so that the lesson's claim *can* show — the docstring of each says why — and the
numbers decide whether it did. Settings are config overrides (dotted keys); ``per_dataset`` adapts a study to
``mnist1d`` (1-D signals of 40 samples, 3,600 training examples), where the same nets train in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tricklab.errors import TrickLabError
from tricklab.registry import Registry


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # the variant this one is compared with (default: the study's baseline)


@dataclass(frozen=True)
class Study:
    name: str
    doc: str
    base: dict[str, Any]
    variants: tuple[Variant, ...]
    baseline: str
    dataset: str = "mnist"
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    target_val_acc: dict[str, float] = field(default_factory=dict)
    margin: dict[str, float] = field(default_factory=dict)  # ± pp of practical equivalence (default per dataset)
    init_signal: bool = False  # also measure per-layer activation std at initialization
    notes: dict[str, str] = field(default_factory=dict)  # dataset → what the setup means there (regime, caveats)
    per_variant_dataset: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (variant, dataset)
    # the outcomes judged (tricklab.lab.analysis.JUDGED); a study whose claim is about speed also judges the steps
    # to its target validation accuracy (tricklab.lab.speed). Study-level: no variant's config changes with it.
    outcomes: tuple[str, ...] = ("test_acc",)

    def __post_init__(self):
        check_outcomes(self.outcomes, f"study {self.name!r}: outcomes", bool(self.target_val_acc))

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def baseline_of(self, v: Variant) -> str:
        return v.baseline or self.baseline

    def overrides(self, variant: Variant, dataset: str) -> dict[str, Any]:
        """The study's overrides for one variant on ``dataset``: base ← per-dataset ← variant."""
        return {
            "data.name": dataset,
            **self.base,
            **self.per_dataset.get(dataset, {}),
            **variant.overrides,
            **self.per_variant_dataset.get((variant.name, dataset), {}),
        }

    def description(self, dataset: str, setup: str = "") -> str:
        """The study's description for ``dataset``: why it is built so, what it means on that dataset (its note),
        and ``setup``, the sentence that says what the baseline actually runs (:func:`describe_setup`)."""
        parts = [self.doc, self.notes.get(dataset, ""), setup]
        return "\n".join(p for p in parts if p)


OUTCOME_NAMES = ("test_acc", "steps_to_target", "seconds_to_target")  # = tricklab.lab.analysis.JUDGED
SPEED = ("test_acc", "steps_to_target")  # the outcomes of a study whose claim is about speed


def check_outcomes(outcomes: Any, key: str, has_target: bool) -> tuple[str, ...]:
    """``outcomes`` as a tuple of known, distinct names; one-line errors name ``key``, the value and what is allowed.
    Time to target needs a target (``has_target``)."""
    from tricklab.errors import ConfigError

    if isinstance(outcomes, str) or not isinstance(outcomes, list | tuple) or not outcomes:
        raise ConfigError(key, outcomes, f"a non-empty list of {', '.join(OUTCOME_NAMES)}")
    for o in outcomes:
        if o not in OUTCOME_NAMES:
            raise ConfigError(key, o, f"unknown outcome; valid: {', '.join(OUTCOME_NAMES)}")
    if len(set(outcomes)) != len(outcomes):
        raise ConfigError(key, list(outcomes), "each outcome at most once")
    if not has_target and any(o != "test_acc" for o in outcomes):
        raise ConfigError(key, list(outcomes), "time to target needs target_val_acc; set it or judge test_acc only")
    return tuple(outcomes)


def describe_setup(cfg: Any, dataset: str, train_examples: int | None = None) -> str:
    """One sentence from a resolved baseline config: model, init, optimizer, schedule, epochs, batch, data.

    Example: ``"Setup on mnist1d (baseline): mlp 2×256 relu, he_normal init, momentum lr 0.05 (constant), 30
    epochs, batch 64, all training examples, inputs as stored."``
    """
    m, o, t, d = cfg.model, cfg.optim, cfg.train, cfg.data
    shape = f"{m.name} {m.depth}×{m.width}" if m.depth is not None and m.width is not None else m.name
    extras = [x for x in (m.activation, f"{m.norm} norm" if m.norm not in (None, "none") else "") if x]
    if m.dropout:
        extras.append(f"dropout {m.dropout:g}")
    if m.residual:
        extras.append("residual")
    opt = f"{o.name} lr {o.lr:g}" + (f", weight decay {o.weight_decay:g}" if o.weight_decay else "")
    subset = f"{d.subset:,} training examples" if d.subset else "all training examples"
    scale = {"none": "inputs as stored"}.get(d.scale, f"inputs {d.scale}")
    return (
        f"Setup on {dataset} (baseline): {shape}{' ' + ', '.join(extras) if extras else ''}, {cfg.init.scheme} "
        f"init, {opt} ({cfg.schedule.name}), {t.epochs} epochs, batch {d.batch_size}, {subset}, {scale}."
    )


STUDIES: Registry = Registry("study")

_MLP1D = {"model.width": 256, "data.batch_size": 64}  # MLPs on mnist1d: narrower, smaller batches


def _study(**kw) -> Study:
    s = Study(**kw)
    STUDIES.register(s.name, s, help=s.doc.split("\n")[0])
    return s


_study(
    name="scaling",
    doc="Input scaling: raw inputs vs [0,1], [-1,1] and standardized inputs, with SGD and momentum.\n"
    "SGD with momentum is not invariant to the input's scale (Adam largely is): raw 0–255 pixels make the first "
    "layer's pre-activations and gradients ~100× larger, so the same learning rate overshoots (LeCun et al. 1998).",
    base={
        "model.depth": 2,
        "model.width": 256,
        "optim.name": "momentum",
        "optim.lr": 0.01,
        "train.epochs": 5,
        "schedule.name": "constant",
        "init.scheme": "he_normal",
    },
    variants=(
        Variant("none", {"data.scale": "none"}),
        Variant("minmax01", {"data.scale": "minmax01"}),
        Variant("minmax11", {"data.scale": "minmax11"}),
        Variant("standardize", {"data.scale": "standardize"}),
    ),
    baseline="none",
    per_dataset={"mnist1d": {**_MLP1D, "train.epochs": 30}},
    notes={
        "mnist": "On MNIST 'none' feeds raw 0–255 pixels: the regime in which the claim can show.",
        "mnist1d": "On mnist1d the claim cannot show: its raw signals are already standardized (mean ≈ 0, sd ≈ 1), "
        "so 'none' is well scaled and 'standardize' changes almost nothing; min-max scaling shrinks the inputs "
        "about 10×. This run asks whether re-scaling well-scaled inputs matters.",
    },
    target_val_acc={"mnist": 0.97, "mnist1d": 0.5},
)

_INITS = (
    "standard_normal",
    "default",
    "uniform",
    "gaussian",
    "lecun_normal",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "lsuv",
)
_study(
    name="init",
    doc="Weight initialization on a deep (10-layer) tanh MLP trained with SGD, each scheme against N(0,1).\n"
    "Depth multiplies the per-layer gain: N(0,1) weights (the lesson's 'don't') saturate every tanh (gain ~√n "
    "per layer); too-small weights (PyTorch's default and uniform, Var = 1/(3n)) shrink the signal layer after "
    "layer; variance-preserving schemes (LeCun, Glorot, orthogonal, LSUV) keep it in range (Glorot & Bengio 2010). "
    "The per-layer activation std at init is plotted.",
    base={
        "model.depth": 10,
        "model.width": 256,
        "model.activation": "tanh",
        "optim.name": "momentum",
        "optim.lr": 0.01,
        "train.epochs": 3,
        "schedule.name": "constant",
    },
    variants=tuple(Variant(s, {"init.scheme": s}) for s in _INITS),
    baseline="standard_normal",
    per_dataset={"mnist1d": {"model.width": 128, "data.batch_size": 64, "train.epochs": 10}},
    target_val_acc={"mnist": 0.95, "mnist1d": 0.4},
    outcomes=SPEED,
    init_signal=True,
)

_study(
    name="norm",
    doc="Normalization in an 8-layer sigmoid MLP: batch, layer, weight and group norm vs none.\n"
    "Sigmoid nets this deep barely train: each layer's gradient is scaled by σ' ≤ ¼. Batch norm after the "
    "weights and before the activation keeps each layer's inputs standardized, where the sigmoid is steepest, "
    "and allows larger steps (Ioffe & Szegedy 2015, whose sigmoid nets trained only with BN); layer, weight and "
    "group norm are its batch-independent cousins; 'batch_after' (compared with 'batch') moves BN after the "
    "activation to test the placement itself.",
    base={
        "model.depth": 8,
        "model.width": 256,
        "model.activation": "sigmoid",
        "init.scheme": "glorot_normal",
        "optim.name": "momentum",
        "optim.lr": 0.05,
        "train.epochs": 5,
        "schedule.name": "cosine",
    },
    variants=(
        Variant("none", {"model.norm": "none"}),
        Variant("batch", {"model.norm": "batch"}),
        Variant("layer", {"model.norm": "layer"}),
        Variant("weight", {"model.norm": "weight"}),
        Variant("group", {"model.norm": "group"}),
        Variant("batch_after", {"model.norm": "batch", "model.norm_position": "after_activation"}, baseline="batch"),
    ),
    baseline="none",
    per_dataset={"mnist1d": {**_MLP1D, "train.epochs": 20}},
    target_val_acc={"mnist": 0.9, "mnist1d": 0.4},
    outcomes=SPEED,
)

_study(
    name="dropout",
    doc="Dropout (p = 0.1, 0.3, 0.5) on a 2-hidden-layer ReLU MLP that overfits: few examples, trained long.\n"
    "Dropout regularizes (Srivastava et al. 2014): its gain shows where a net fits its training set and the "
    "test error is limited by overfitting — their Fig. 10 finds it on 1k–10k MNIST examples, not on 100–500 — "
    "so the net is trained for 60 epochs with SGD, momentum and a cosine schedule on a small training set.",
    base={
        "model.depth": 2,
        "model.width": 512,
        "optim.name": "momentum",
        "optim.lr": 0.05,
        "train.epochs": 60,
        "schedule.name": "cosine",
    },
    variants=tuple(Variant(f"p={p}", {"model.dropout": p}) for p in (0.0, 0.1, 0.3, 0.5)),
    baseline="p=0.0",
    per_dataset={"mnist": {"data.subset": 5000}, "fashion-mnist": {"data.subset": 5000}, "mnist1d": _MLP1D},
    notes={
        "mnist": "On MNIST the net trains on a 5,000-example subset: the lesson's full-MNIST version "
        "(784-512-512-10, Adam, 20 epochs; examples/lesson_dropout.ipynb) measured no difference at 5 seeds, as "
        "expected where 60,000 examples leave little overfitting to curb.",
        "mnist1d": "On mnist1d (3,600 training examples) the net memorizes its training set, the regime in which "
        "dropout can help.",
    },
    target_val_acc={"mnist": 0.94, "mnist1d": 0.55},
)

_study(
    name="overfitting",
    doc="Preventing overfitting on 1,000 training examples: early stopping, L2, L1, decoupled decay, dropout.\n"
    "With so little data a 2-hidden-layer MLP memorizes its training set within a few epochs and validation "
    "loss then "
    "rises: the setting in which each remedy is meant to help (Prechelt 1998; Krogh & Hertz 1992; Loshchilov & "
    "Hutter 2019; Srivastava et al. 2014). Small batches and 60 epochs give ≈1,900 steps, so that AdamW's decay "
    "(lr·wd·steps ≈ 1.9) really shrinks the weights; early stopping waits 10 epochs for a better validation loss.",
    base={
        "data.subset": 1000,
        "data.batch_size": 32,
        "model.depth": 2,
        "model.width": 512,
        "optim.name": "adam",
        "optim.lr": 1e-3,
        "train.epochs": 60,
        "schedule.name": "constant",
    },
    variants=(
        Variant("none"),
        Variant("early_stopping", {"early_stopping.enabled": True, "early_stopping.patience": 10}),
        Variant("l2", {"optim.weight_decay": 1e-3}),
        Variant("l1", {"optim.l1": 1e-5}),
        Variant("decoupled_wd", {"optim.name": "adamw", "optim.weight_decay": 1.0, "optim.decoupled": True}),
        Variant("dropout", {"model.dropout": 0.5}),
    ),
    baseline="none",
    per_dataset={"mnist1d": {"model.width": 256}},
    target_val_acc={"mnist": 0.88, "mnist1d": 0.45},
)

_study(
    name="averaging",
    doc="Model averaging: one model vs an ensemble of 3, SWA and an EMA of the weights.\n"
    "SGD at a constant, fairly high learning rate bounces around a wide minimum; averaging predictions "
    "(ensembles, Lakshminarayanan et al. 2017) or weights (SWA over the last quarter of the epochs, Izmailov "
    "et al. 2018; an EMA with warm-up, Polyak & Juditsky 1992) lands nearer its centre. The EMA's warm-up "
    "(decay min(0.999, (1+k)/(10+k)) at step k) keeps the random initialization out of the average.",
    base={
        "data.subset": 10000,
        "model.depth": 2,
        "model.width": 512,
        "optim.name": "momentum",
        "optim.lr": 0.05,
        "train.epochs": 10,
        "schedule.name": "constant",
    },
    variants=(
        Variant("single"),
        Variant("ensemble3", {"averaging.ensemble": 3}),
        Variant("swa", {"averaging.swa_start": 8}),
        Variant("ema", {"averaging.ema": 0.999, "averaging.ema_warmup": True}),
    ),
    baseline="single",
    per_dataset={"mnist1d": {**_MLP1D, "data.subset": None, "train.epochs": 40}},
    per_variant_dataset={("swa", "mnist1d"): {"averaging.swa_start": 31}},
    target_val_acc={"mnist": 0.97, "mnist1d": 0.55},
)

_OPT_LR = {
    "sgd": 0.05,
    "momentum": 0.01,
    "nesterov": 0.01,
    "adagrad": 0.01,
    "rmsprop": 1e-3,
    "adam": 1e-3,
    "adamw": 1e-3,
    "ngd": 0.05,
}
_study(
    name="optimizers",
    doc="Every optimizer on the same 2×256 MLP, each at its customary learning rate, in a short training.\n"
    "A short run (1 epoch on MNIST, 5 on mnist1d, cosine-annealed) is where optimizers differ most: momentum and "
    "the adaptive methods (Adagrad, RMSProp, Adam) converge faster than plain SGD (Kingma & Ba 2015); NGD takes "
    "steps of fixed length η. Each runs at one customary rate, not a tuned one, so a difference is of the "
    "optimizer at its usual rate (tuned, the gaps shrink: Schmidt et al. 2021). Rates: "
    + ", ".join(f"{k} {v:g}" for k, v in _OPT_LR.items())
    + ".",
    base={"model.depth": 2, "model.width": 256, "train.epochs": 1, "schedule.name": "cosine"},
    variants=tuple(
        Variant(
            n,
            {
                "optim.name": n,
                "optim.lr": lr,
                **({"optim.weight_decay": 0.01, "optim.decoupled": True} if n == "adamw" else {}),
            },
        )
        for n, lr in _OPT_LR.items()
    ),
    baseline="sgd",
    per_dataset={"mnist1d": {**_MLP1D, "train.epochs": 5}},
    target_val_acc={"mnist": 0.9, "mnist1d": 0.35},
    outcomes=SPEED,
)

_study(
    name="clipping",
    doc="Gradient clipping where gradients really explode: an 8-layer ReLU MLP at too high an SGD learning rate.\n"
    "Clipping the global gradient norm at θ = 1 or 10 (Pascanu et al. 2013), each value at 0.1, or adaptively "
    "(AGC, Brock et al. 2021) bounds each step. A He-initialized ReLU net does not explode by itself, so the "
    "learning rate is set, per dataset and before any clipped run, to the lowest rate at which the unclipped "
    "net diverges within ≈200 steps in at least 4 of 5 seeds (benchmarks/calibrate_clipping.py: MNIST 0.2, "
    "5/5; mnist1d 0.5, 5/5; at 0.1 and 0.2 respectively only 1/5). The history records each epoch's pre-clip "
    "gradient norm.",
    base={
        "model.depth": 8,
        "model.width": 256,
        "optim.name": "momentum",
        "optim.lr": 0.2,
        "train.epochs": 3,
        "schedule.name": "constant",
        "init.scheme": "he_normal",
    },
    variants=(
        Variant("none", {"clip.mode": "none"}),
        Variant("norm θ=1", {"clip.mode": "norm", "clip.threshold": 1.0}),
        Variant("norm θ=10", {"clip.mode": "norm", "clip.threshold": 10.0}),
        Variant("value 0.1", {"clip.mode": "value", "clip.threshold": 0.1}),
        Variant("agc 0.02", {"clip.mode": "agc", "clip.threshold": 0.02}),
    ),
    baseline="none",
    per_dataset={"mnist1d": {**_MLP1D, "optim.lr": 0.5, "train.epochs": 30}},
    target_val_acc={"mnist": 0.95, "mnist1d": 0.45},
)

_study(
    name="lr-decay",
    doc="Learning-rate decay with SGD+momentum: constant vs ×0.98 per epoch (the lesson), ×0.8, step, cosine, "
    "warm-up, one-cycle and on-plateau.\nA constant rate keeps SGD bouncing in a noise ball whose size grows with "
    "the rate (Bottou, Curtis & Nocedal 2018); decaying it lets SGD settle (Loshchilov & Hutter 2017; Smith 2017; "
    "Goyal et al. 2017). Over 20 epochs ×0.98 decays the rate by only a third, ×0.8 by 99%.",
    base={"model.depth": 2, "model.width": 512, "optim.name": "momentum", "optim.lr": 0.1, "train.epochs": 20},
    variants=(
        Variant("constant", {"schedule.name": "constant"}),
        Variant("exponential", {"schedule.name": "exponential", "schedule.gamma": 0.98}),
        Variant("exponential 0.8", {"schedule.name": "exponential", "schedule.gamma": 0.8}),
        Variant("step", {"schedule.name": "step"}),
        Variant("cosine", {"schedule.name": "cosine"}),
        Variant("warmup_cosine", {"schedule.name": "warmup_cosine", "schedule.warmup_epochs": 1}),
        Variant("onecycle", {"schedule.name": "onecycle"}),
        Variant("plateau", {"schedule.name": "plateau", "schedule.patience": 1}),
    ),
    baseline="constant",
    per_dataset={
        "mnist": {"data.subset": 10000},
        "fashion-mnist": {"data.subset": 10000},
        "mnist1d": {
            "model.name": "cnn",
            "model.depth": 2,
            "model.width": 32,
            "data.batch_size": 64,
            "optim.lr": 0.05,
        },
    },
    notes={
        "mnist": "On MNIST the MLP trains on a 10,000-example subset at lr 0.1, where the end-of-training noise "
        "of a constant rate is large enough to measure.",
        "mnist1d": "On mnist1d an MLP memorizes its training set whatever the schedule; a small CNN (2 conv "
        "layers of 32 channels) at lr 0.05 does not, so the schedules are compared on it.",
    },
    target_val_acc={"mnist": 0.96, "mnist1d": 0.6},
    outcomes=SPEED,
)

_DEPTHS = (4, 16, 32)
_study(
    name="depth",
    doc="Plain vs residual MLPs of the same width at depths 4, 16 and 32 (ReLU, He init, no normalization).\n"
    "A deep plain net's gradients shatter and vanish or explode with depth; identity shortcuts keep a path "
    "along which signal and gradient pass unchanged (He et al. 2016). Each residual net is compared with the "
    "plain net of its depth, each deeper plain net with plain-4; per-layer activation std at init is plotted.",
    base={
        "model.width": 128,
        "optim.name": "momentum",
        "optim.lr": 0.01,
        "train.epochs": 3,
        "schedule.name": "constant",
        "init.scheme": "he_normal",
    },
    variants=tuple(
        v
        for d in _DEPTHS
        for v in (
            Variant(f"plain-{d}", {"model.depth": d, "model.residual": False}),
            Variant(f"residual-{d}", {"model.depth": d, "model.residual": True}, baseline=f"plain-{d}"),
        )
    ),
    baseline="plain-4",
    per_dataset={"mnist1d": {"data.batch_size": 64, "train.epochs": 15}},
    target_val_acc={"mnist": 0.95, "mnist1d": 0.45},
    outcomes=SPEED,
    init_signal=True,
)

_study(
    name="architectures",
    doc="MLP vs CNN vs ResNet vs Inception at similar training budgets.\n"
    "Convolutions share weights across positions, which suits images and signals (LeCun et al. 1998; on "
    "mnist1d, Greydanus 2020); ResNet (He et al. 2016) and Inception (Szegedy et al. 2015) modules build deeper "
    "conv nets that still train.",
    base={"train.epochs": 3, "optim.name": "adam", "optim.lr": 1e-3, "schedule.name": "cosine"},
    variants=(
        Variant("mlp", {"model.name": "mlp", "model.depth": 2, "model.width": 512}),
        Variant("cnn", {"model.name": "cnn", "model.depth": 2, "model.width": 32}),
        Variant("resnet", {"model.name": "resnet", "model.depth": 3, "model.width": 16, "model.norm": "batch"}),
        Variant("inception", {"model.name": "inception", "model.depth": 2, "model.width": 16, "model.norm": "batch"}),
    ),
    baseline="mlp",
    per_dataset={"mnist1d": {"data.batch_size": 64, "train.epochs": 20}},
    target_val_acc={"mnist": 0.98, "mnist1d": 0.6},
)


# ---- custom studies from YAML --------------------------------------------------------------------------------


def _flatten(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Nested sections as dotted keys (``{model: {depth: 1}}`` → ``{"model.depth": 1}``).

    One key written twice in two spellings (``{model: {depth: 1}, model.depth: 2}``) is refused, naming both:
    YAML sees two different keys, and whichever came last would silently win.
    """
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value, spelling in _leaves(d or {}, ()):
        if key in out:
            raise TrickLabError(f"{where}: {key} is set twice, as {spelled[key]} and as {spelling}; keep one of them")
        out[key], spelled[key] = value, spelling
    return out


def _leaves(d: dict[str, Any], path: tuple[str, ...]):
    """``(dotted key, value, the key as written)`` for every value under ``d``."""
    for k, v in d.items():
        here = (*path, str(k))
        if isinstance(v, dict):
            yield from _leaves(v, here)
        else:
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:39] + "…"
            written = f"{here[-1]}: {shown}"
            for part in reversed(here[:-1]):
                written = f"{part}: {{{written}}}"
            yield ".".join(here), v, f"'{written}'"


def load_custom_study(path: str) -> tuple[Study, int | None, int | None]:
    """A study from a YAML file; returns it with the file's ``seeds`` and ``epochs`` (None when absent)."""
    from tricklab.config import read_yaml

    return custom_study(read_yaml(path))


def custom_study(raw: dict[str, Any]) -> tuple[Study, int | None, int | None]:
    """A study from a mapping (a YAML file's content); returns it with its ``seeds`` and ``epochs``.

    Example file::

        name: bn-vs-none
        dataset: mnist1d
        base: {model: {depth: 6}, train: {epochs: 20}}
        baseline: plain
        variants:
          plain: {}
          bn: {model.norm: batch}
        seeds: 3
        target_val_acc: 0.6
        margin: 1.0          # ± pp of test accuracy within which a difference counts as none (default per dataset)
        outcomes: [test_acc, steps_to_target]   # also compare the steps to target_val_acc (default: test_acc)
    """
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from tricklab.errors import ConfigError, TrickLabError

    class Spec(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = "custom"
        doc: str = "A custom study."
        dataset: str = "mnist"
        base: dict[str, Any] = {}
        baseline: str | None = None
        variants: dict[str, dict[str, Any] | None] = Field(min_length=1)
        seeds: int | None = Field(None, ge=1, le=1000)
        epochs: int | None = Field(None, ge=1, le=1_000_000)
        target_val_acc: float | None = Field(None, gt=0, le=1)
        margin: float | None = Field(None, gt=0, le=100)  # ± pp of test accuracy deemed of no practical effect
        outcomes: Any = None  # checked by check_outcomes

    variants = raw.get("variants") if isinstance(raw, dict) else None
    for name in variants if isinstance(variants, dict) else ():
        if not isinstance(name, str):
            shown = "~" if name is None else name
            raise ConfigError(
                "study.variants",
                name,
                f"a variant's name must be text; YAML reads an unquoted {shown!s} as "
                f"{'null' if name is None else 'a ' + type(name).__name__}: quote it ('{shown!s}')",
            )
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        key = "study." + ".".join(str(p) for p in e["loc"])
        allowed = "unknown key; valid: " + ", ".join(Spec.model_fields) if e["type"] == "extra_forbidden" else e["msg"]
        raise ConfigError(key, e.get("input"), allowed) from None
    names = list(spec.variants)
    baseline = spec.baseline or names[0]
    if baseline not in spec.variants:
        raise ConfigError("study.baseline", baseline, f"must be one of the variants: {', '.join(names)}")
    if not spec.name.replace("-", "").replace("_", "").isalnum():
        raise TrickLabError(f"study.name = {spec.name!r}: use letters, digits, '-' and '_'")
    study = Study(
        name=spec.name,
        doc=spec.doc,
        base=_flatten(spec.base, "study.base"),
        baseline=baseline,
        dataset=spec.dataset,
        variants=tuple(Variant(n, _flatten(o or {}, f"study.variants.{n}")) for n, o in spec.variants.items()),
        target_val_acc={spec.dataset: spec.target_val_acc} if spec.target_val_acc else {},
        margin={spec.dataset: spec.margin} if spec.margin else {},
        outcomes=check_outcomes(spec.outcomes, "study.outcomes", bool(spec.target_val_acc))
        if spec.outcomes is not None
        else ("test_acc",),
    )
    return study, spec.seeds, spec.epochs
