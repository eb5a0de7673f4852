"""The lesson's claims, written once as data, and whether a study's stored outcomes confirm or refute them.

Each built-in study tests one section of the lesson; :data:`CLAIMS` writes what that section claims as a sentence
and the comparisons (variant vs its baseline) whose outcomes would bear it out, on test accuracy or, for the claims
about speed ("batch norm speeds up training", "Adam converges faster"), on steps to the study's target validation
accuracy (:mod:`tricklab.lab.speed`; a study that does not judge that outcome leaves such a claim unjudged). The
verdict is never written by hand: :func:`judge` reads it from the outcomes the analysis decided
(:mod:`tricklab.lab.stats`), so a rerun with more seeds, or another dataset, can change it.

A claim over several comparisons says whether *every* one must go the expected way (``every=True``: "conv nets
beat an MLP" needs the CNN, the ResNet and the Inception net to be better) or at least one (``every=False``:
"dropout helps a net that overfits" needs one rate to be better). Outcomes:

- **confirmed**: the expected outcome where the claim needs it;
- **refuted**: an outcome that rules the claim out (a comparison it needs decided the other way: worse or
  equivalent where better was claimed);
- **not settled at N seeds**: neither yet (a comparison still undecided), so more seeds may decide it;
- **no signal**: a comparison it needs had nothing to compare (both arms at chance, or no time to target on any
  seed), so more seeds would not decide it: the study's regime cannot test the claim;
- **not run**: none of its comparisons has a run with its baseline yet.

Claims are keyed by study name and apply only to a study holding every variant they name, so a custom study that
reuses a built-in's name but not its variants gets none. Labs run before the claims were written get them too:
the verdict needs only the stored outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tricklab.lab.analysis import TEST_ACC, StudyStats, VariantStats
from tricklab.lab.speed import STEPS_TO_TARGET
from tricklab.lab.stats import BETTER, EQUIVALENT, NO_SIGNAL, WORSE

CONFIRMED, REFUTED, UNSETTLED, NOT_RUN = "confirmed", "refuted", "not settled", "not run"
DECIDED = (BETTER, WORSE, EQUIVALENT)


@dataclass(frozen=True)
class Claim:
    """A claim of the lesson: ``text``, and the outcome (``expect``) the comparisons of ``variants`` with their
    baselines must end in to confirm it, all of them (``every``) or at least one, judged on ``on``: test accuracy or
    steps to target (where better means faster)."""

    text: str
    variants: tuple[str, ...]
    expect: str = BETTER
    every: bool = True
    on: str = TEST_ACC


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim judged on one study's outcomes: ``status`` (confirmed, refuted, not settled, not run), the seeds
    its comparisons were decided at (``seeds``: smallest and largest), and each comparison's outcome."""

    claim: Claim
    status: str
    seeds: tuple[int, int]
    outcomes: tuple[tuple[str, str], ...]  # (variant, its outcome vs its baseline, or "not run")

    @property
    def label(self) -> str:
        """``"confirmed"``, ``"refuted"``, ``"not settled at 3 seeds"`` (``"at 3–10 seeds"``), ``"no signal"`` or
        ``"not run"``."""
        if self.status != UNSETTLED:
            return self.status
        lo, hi = self.seeds
        return f"not settled at {lo} seed{'s' * (hi != 1)}" if lo == hi else f"not settled at {lo}–{hi} seeds"

    @property
    def detail(self) -> str:
        """Each outcome and the variants that ended in it: ``"better: he_normal, lsuv; undecided: orthogonal"``,
        ``"better: all 7"``; ``"batch_after: worse"`` for a claim on one comparison."""
        if len(self.outcomes) == 1:
            return ": ".join(self.outcomes[0])
        groups: dict[str, list[str]] = {}
        for name, outcome in self.outcomes:
            groups.setdefault(outcome, []).append(name)
        if len(groups) == 1:
            return f"{next(iter(groups))}: all {len(self.outcomes)}"
        return "; ".join(f"{outcome}: {', '.join(names)}" for outcome, names in groups.items())


def comparison_outcome(v: VariantStats, on: str = TEST_ACC) -> str:
    """A variant's outcome against its baseline on ``on`` (test accuracy or steps to target): its decision, or
    ``"not run"`` while the two share no seed."""
    if v.comparison is None or v.decision is None:
        return "baseline"
    if not v.comparison.seeds:
        return NOT_RUN
    if on == TEST_ACC:
        return v.decision.outcome
    decision = v.speed_decisions.get(on)
    return decision.outcome if decision is not None else NOT_RUN


def judge(claim: Claim, s: StudyStats) -> ClaimVerdict:
    """The verdict of ``claim`` on the outcomes of study ``s`` (every variant it names must be in ``s``)."""
    variants = [s.variant(n) for n in claim.variants]
    outcomes = tuple((v.name, comparison_outcome(v, claim.on)) for v in variants)
    got = [o for _, o in outcomes]
    hit = [o == claim.expect for o in got]
    against = [o in DECIDED and o != claim.expect for o in got]
    run = [o != NOT_RUN for o in got]
    silent = [o == NO_SIGNAL for o in got]
    if all(hit) if claim.every else any(hit):
        status = CONFIRMED
    elif any(against) if claim.every else all(against):
        status = REFUTED
    elif not any(run):
        status = NOT_RUN
    elif (any(silent) if claim.every else all(o in (NO_SIGNAL, *DECIDED) for o in got)) and any(silent):
        status = NO_SIGNAL
    else:
        status = UNSETTLED
    seeds = [len(v.comparison.seeds) for v in variants if v.comparison is not None and v.comparison.seeds]
    return ClaimVerdict(claim, status, (min(seeds, default=0), max(seeds, default=0)), outcomes)


def claims_for(s: StudyStats) -> list[ClaimVerdict]:
    """The verdicts of the lesson's claims on study ``s`` (none for a study without claims, whose variants are not
    the ones the claims name, or that does not judge the outcome a claim is about)."""
    names = {v.name for v in s.variants if v.comparison is not None}
    judged = {TEST_ACC, *s.outcomes}
    return [
        judge(c, s) for c in CLAIMS.get(s.study, ()) if set(c.variants) <= names and c.on in judged and _timed(c, s)
    ]


def _timed(c: Claim, s: StudyStats) -> bool:
    """Whether a claim can be judged on the outcome it names: always on test accuracy; on a time to target only
    where some comparison of it has one, or none has runs yet (runs that recorded no step counts have no time,
    and such a claim is left out rather than shown as not run)."""
    if c.on == TEST_ACC:
        return True
    variants = [s.variant(n) for n in c.variants]
    return any(c.on in v.speed_decisions for v in variants) or not any(v.seeds for v in variants)


_SCHEDULES = ("step", "cosine", "warmup_cosine", "onecycle", "plateau")
_INITS = ("lecun_normal", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "orthogonal", "lsuv")
_SPEED = STEPS_TO_TARGET

#: The claims of the lesson that each built-in study tests: on test accuracy after the study's budget, or (``on``)
#: on steps to the study's target validation accuracy, for the studies that judge it.
CLAIMS: dict[str, tuple[Claim, ...]] = {
    "scaling": (
        Claim(
            "Scaled inputs ([0,1], [-1,1] or standardized) train better than raw inputs with SGD and momentum",
            ("minmax01", "minmax11", "standardize"),
        ),
    ),
    "init": (
        Claim(
            "Variance-preserving inits (LeCun, Glorot, He, orthogonal, LSUV) train a deep tanh net better than N(0,1)",
            _INITS,
        ),
        Claim("Variance-preserving inits reach the target accuracy in fewer steps than N(0,1)", _INITS, on=_SPEED),
    ),
    "norm": (
        Claim("Batch norm makes a deep sigmoid net train better than no normalization", ("batch",)),
        Claim("Batch norm speeds up training: fewer steps to the target accuracy", ("batch",), on=_SPEED),
        Claim("Layer, weight and group norm also beat no normalization", ("layer", "weight", "group")),
        Claim("Batch norm before the activation beats batch norm after it", ("batch_after",), expect=WORSE),
    ),
    "dropout": (Claim("Dropout improves a net that overfits", ("p=0.1", "p=0.3", "p=0.5"), every=False),),
    "overfitting": (
        Claim(
            "Each remedy (early stopping, L2, L1, decoupled weight decay, dropout) improves test accuracy on 1,000 "
            "examples",
            ("early_stopping", "l2", "l1", "decoupled_wd", "dropout"),
        ),
    ),
    "averaging": (
        Claim(
            "Averaging (an ensemble of 3, SWA, an EMA of the weights) beats a single model", ("ensemble3", "swa", "ema")
        ),
    ),
    "optimizers": (
        Claim(
            "Momentum and the adaptive methods (Adagrad, RMSProp, Adam) are ahead of plain SGD after a short training",
            ("momentum", "adagrad", "rmsprop", "adam"),
        ),
        Claim(
            "Momentum and Adam converge faster than plain SGD: fewer steps to target", ("momentum", "adam"), on=_SPEED
        ),
    ),
    "clipping": (
        Claim(
            "Clipping the gradient trains better where gradients explode",
            ("norm θ=1", "norm θ=10", "value 0.1", "agc 0.02"),
        ),
    ),
    "lr-decay": (
        Claim("Decaying the rate ×0.98 per epoch (the lesson's schedule) beats a constant rate", ("exponential",)),
        Claim("Decaying schedules (step, cosine, warm-up, one-cycle, on-plateau) beat a constant rate", _SCHEDULES),
        Claim(
            "A rate decayed ×0.98 per epoch reaches the target sooner than a constant one", ("exponential",), on=_SPEED
        ),
    ),
    "depth": (
        Claim(
            "Identity shortcuts let deep nets train: residual beats plain at depth 16 and 32",
            ("residual-16", "residual-32"),
        ),
        Claim(
            "Residual nets at depth 16 and 32 reach the target in fewer steps than plain ones",
            ("residual-16", "residual-32"),
            on=_SPEED,
        ),
        Claim(
            "Without shortcuts, deeper plain nets train worse than a 4-layer one",
            ("plain-16", "plain-32"),
            expect=WORSE,
        ),
    ),
    "architectures": (Claim("Conv nets (CNN, ResNet, Inception) beat an MLP", ("cnn", "resnet", "inception")),),
}
