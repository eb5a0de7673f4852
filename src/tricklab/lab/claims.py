"""The lesson's claims, written once as data, and whether a study's stored outcomes confirm or refute them.

Each built-in study tests one section of the lesson; :data:`CLAIMS` writes what that section claims as a sentence
and the comparisons (variant vs its baseline, on test accuracy) whose outcomes would bear it out. The verdict is
never written by hand: :func:`judge` reads it from the outcomes the analysis decided
(:mod:`tricklab.lab.stats`), so a rerun with more seeds, or another dataset, can change it.

A claim over several comparisons says whether *every* one must go the expected way (``every=True``: "conv nets
beat an MLP" needs the CNN, the ResNet and the Inception net to be better) or at least one (``every=False``:
"dropout helps a net that overfits" needs one rate to be better). Outcomes:

- **confirmed**: the expected outcome where the claim needs it;
- **refuted**: an outcome that rules the claim out (a comparison it needs decided the other way: worse or
  equivalent where better was claimed);
- **not settled at N seeds**: neither yet (a comparison still undecided, or one the analysis left without a
  verdict), so more seeds may decide it;
- **not run**: none of its comparisons has a run with its baseline yet.

Claims are keyed by study name and apply only to a study holding every variant they name, so a custom study that
reuses a built-in's name but not its variants gets none. Labs run before the claims were written get them too:
the verdict needs only the stored outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tricklab.lab.analysis import StudyStats, VariantStats
from tricklab.lab.stats import BETTER, EQUIVALENT, WORSE

CONFIRMED, REFUTED, UNSETTLED, NOT_RUN = "confirmed", "refuted", "not settled", "not run"
DECIDED = (BETTER, WORSE, EQUIVALENT)


@dataclass(frozen=True)
class Claim:
    """A claim of the lesson: ``text``, and the outcome (``expect``) the comparisons of ``variants`` with their
    baselines must end in to confirm it: all of them (``every``) or at least one."""

    text: str
    variants: tuple[str, ...]
    expect: str = BETTER
    every: bool = True


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
        """``"confirmed"``, ``"refuted"``, ``"not settled at 3 seeds"`` (``"at 3–10 seeds"``) or ``"not run"``."""
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


def comparison_outcome(v: VariantStats) -> str:
    """A variant's outcome against its baseline: its decision, or ``"not run"`` while the two share no seed."""
    if v.comparison is None or v.decision is None:
        return "baseline"
    if not v.comparison.seeds:
        return NOT_RUN
    return v.decision.outcome


def judge(claim: Claim, s: StudyStats) -> ClaimVerdict:
    """The verdict of ``claim`` on the outcomes of study ``s`` (every variant it names must be in ``s``)."""
    variants = [s.variant(n) for n in claim.variants]
    outcomes = tuple((v.name, comparison_outcome(v)) for v in variants)
    got = [o for _, o in outcomes]
    hit = [o == claim.expect for o in got]
    against = [o in DECIDED and o != claim.expect for o in got]
    run = [o != NOT_RUN for o in got]
    if all(hit) if claim.every else any(hit):
        status = CONFIRMED
    elif any(against) if claim.every else all(against):
        status = REFUTED
    elif not any(run):
        status = NOT_RUN
    else:
        status = UNSETTLED
    seeds = [len(v.comparison.seeds) for v in variants if v.comparison is not None and v.comparison.seeds]
    return ClaimVerdict(claim, status, (min(seeds, default=0), max(seeds, default=0)), outcomes)


def claims_for(s: StudyStats) -> list[ClaimVerdict]:
    """The verdicts of the lesson's claims on study ``s`` (none for a study without claims, or whose variants
    are not the ones the claims name)."""
    names = {v.name for v in s.variants if v.comparison is not None}
    return [judge(c, s) for c in CLAIMS.get(s.study, ()) if set(c.variants) <= names]


_SCHEDULES = ("step", "cosine", "warmup_cosine", "onecycle", "plateau")

#: The claims of the lesson that each built-in study tests, on test accuracy after the study's budget.
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
            ("lecun_normal", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "orthogonal", "lsuv"),
        ),
    ),
    "norm": (
        Claim("Batch norm makes a deep sigmoid net train better than no normalization", ("batch",)),
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
    ),
    "depth": (
        Claim(
            "Identity shortcuts let deep nets train: residual beats plain at depth 16 and 32",
            ("residual-16", "residual-32"),
        ),
        Claim(
            "Without shortcuts, deeper plain nets train worse than a 4-layer one",
            ("plain-16", "plain-32"),
            expect=WORSE,
        ),
    ),
    "architectures": (Claim("Conv nets (CNN, ResNet, Inception) beat an MLP", ("cnn", "resnet", "inception")),),
}
