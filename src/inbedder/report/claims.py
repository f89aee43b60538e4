"""The paper's four claims: the rule that decides each, applied to one set of numbers (a SuiteScores).

Every comparison is a paired difference (inbedder.bootstrap) at the modes the paper's own tables set
side by side (`claim_modes`, fixed in the config before any score is seen). A claim rests on several
comparisons at once (models x baselines), so each claim's decisive comparisons are corrected by Holm's
step-down rule (family-wise error 5%): supported / contradicted when the Holm-adjusted p-value is below
5%, on the side of the threshold (0, or minus the margin of claim 4's "competitive") where the
difference lies; inconclusive otherwise. Other modes are shown beside the primary comparison and
decide nothing. Each inconclusive comparison says the effect it could have detected (80% power at the
claim's level) and what would decide it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inbedder.bootstrap import (
    FAMILY_ALPHA,
    POWER,
    BootstrapError,
    Comparison,
    holm,
    mean_difference,
    outcome,
    paired_difference,
)
from inbedder.report.aggregate import SuiteScores
from inbedder.report.suites import (
    ANSWER_MODES,
    BASELINE_RECIPES,
    GEN_AVG,
    GENERIC_MARGIN,
    IA_AVG,
    INBEDDER_RECIPES,
    NO_INSTRUCTION_MODE,
    PROMPT_MODE,
    Cell,
    Run,
)


@dataclass
class Evidence:
    """One comparison that fed a verdict: run a against run b on the same items, the paired difference and its CI."""

    label: str
    value: float | None
    reference_label: str
    reference: float | None
    threshold: float
    detail: str = ""
    comparison: Comparison | None = None  # None: no CI (per-item data missing, or the paper's numbers)
    point_only: bool = False  # decided on the point difference (the paper's numbers have no CI)
    decisive: bool = True  # False: shown, but the verdict rests on another row (claim 3's mean gain)
    no_ci: str = ""  # why there is no CI
    cells: tuple[Cell, Cell] | None = None
    floor: str = ""  # the negative control whose interval holds both runs ("" when they are not both at the floor)

    @property
    def diff(self) -> float | None:
        """value - reference, where both exist."""
        if self.value is None or self.reference is None:
            return None
        return self.value - self.reference

    @property
    def outcome(self) -> str | None:
        """supported / contradicted / inconclusive, or "at the floor" when both runs lie within the negative control's
        interval (a difference there says nothing about instruction following); None when a number is missing."""
        if self.floor:
            return AT_FLOOR
        if self.comparison is not None:
            return self.comparison.outcome
        if self.diff is None:
            return None
        if self.point_only:
            return outcome(self.diff, self.diff, self.threshold)
        return "inconclusive"  # a difference without a CI decides nothing

    @property
    def low(self) -> float | None:
        """Lower bound of the CI of the difference."""
        return self.comparison.low if self.comparison is not None else None

    @property
    def high(self) -> float | None:
        """Upper bound of the CI of the difference."""
        return self.comparison.high if self.comparison is not None else None

    @property
    def detectable(self) -> float | None:
        """The minimum detectable effect: the difference found with 80% power at the claim's family-wise level."""
        return self.comparison.detectable if self.comparison is not None else None

    @property
    def power_note(self) -> str:
        """For an inconclusive comparison: the effect it could detect and what would decide it."""
        c = self.comparison
        if c is None or c.outcome != "inconclusive":
            return ""
        found = (f"detectable with {POWER:.0%} power: a difference of {c.detectable:.1f} points "
                 f"(observed {c.diff - c.threshold:+.1f} from the threshold)")
        if c.seed_share >= 0.5:
            return (f"{found}; the training seeds carry {c.seed_share:.0%} of its uncertainty: more training seeds "
                    f"({c.n_seeds} now) would decide it sooner than more items")
        return (f"{found}; the items carry {1 - c.seed_share:.0%} of its uncertainty: more training seeds would not "
                f"decide it; a larger effect would (a larger model, a task further from its floor), or more "
                f"items than the {c.n_items} scored where the data has them")


@dataclass
class ClaimResult:
    """A claim, the rule that decides it, the verdict and the comparisons that decided it."""

    number: int
    title: str
    statement: str
    rule: str
    scope: str
    verdict: str  # "supported" | "contradicted" | "inconclusive" | "not tested"
    evidence: list[Evidence] = field(default_factory=list)
    reason: str = ""
    point_only: bool = False  # the scope's numbers have no CI (the paper's own)


CLAIMS = {
    1: ("QA fine-tuning improves instruction following",
        ("Fine-tuning on short abstractive QA answers (InBedder) makes embeddings follow the instruction better "
         "than the same model tuned on Alpaca or left untuned.")),
    2: ("Answers beat prompts",
        "Hidden states of the (expected) answer embed better than those of the prompt."),
    3: ("Filtering helps a little",
        ("Dropping uninformative generation steps (stopwords, instruction tokens, fillers) improves the "
         "embedding slightly.")),
    4: ("Instruction-aware and competitive",
        ("InBedder is instruction-aware (above the no-instruction baselines) while staying competitive on "
         "generic embedding tasks.")),
}


def _has_ia(cells: dict[str, Cell]) -> bool:
    return cells.get(IA_AVG, Cell()).ok


@dataclass(frozen=True)
class ClaimModes:
    """Recipe -> the mode the paper's tables set side by side (config `claim_modes`), per model where it says so."""

    default: Mapping[str, str]
    per_model: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    flagships: tuple[str, ...] = ()  # claim 4's model: the first of these with an InBedder run

    def mode(self, model: str, recipe: str) -> str | None:
        """The claim mode of a model's recipe, or None when the config names none."""
        return {**self.default, **self.per_model.get(model, {})}.get(recipe)

    def run(self, book: SuiteScores, model: str, recipe: str) -> Run | None:
        """The run of (model, recipe) at its claim mode, when the book has its IA average."""
        mode = self.mode(model, recipe)
        run = Run(model, recipe, mode) if mode is not None else None
        return run if run is not None and _has_ia(book.runs.get(run, {})) else None

    def describe(self) -> str:
        """The pairing in words, for the rule."""
        default = ", ".join(f"{r} {m}" for r, m in self.default.items())
        extra = "; ".join(f"{model}: " + ", ".join(f"{r} {m}" for r, m in modes.items())
                          for model, modes in self.per_model.items() if modes)
        return default + (f" (except {extra})" if extra else "")


def claim_modes(config: Mapping[str, Any]) -> ClaimModes:
    """The claim modes of a config: `claim_modes`, overridden by `models.<name>.claim_modes`."""
    return ClaimModes(dict(config["claim_modes"]),
                      {m: dict(spec["claim_modes"]) for m, spec in config["models"].items() if "claim_modes" in spec},
                      tuple(config["flagship_models"]))


def _verdict(evidence: list[Evidence]) -> str:
    """Holm over the decisive comparisons: supported when every one is, contradicted when any is, not decidable when
    every one is at the floor, else inconclusive."""
    decisive = [e for e in evidence if e.decisive]
    holm([e.comparison for e in decisive])
    decided = [e.outcome for e in decisive if e.outcome is not None]
    if not decided:
        return "not tested"
    if all(d == AT_FLOOR for d in decided):
        return NOT_DECIDABLE
    if "contradicted" in decided:
        return "contradicted"
    return "supported" if all(d == "supported" for d in decided) else "inconclusive"


AT_FLOOR = "at the floor"
NOT_DECIDABLE = "not decidable"


def negative_control(book: SuiteScores) -> Run | None:
    """The instruction-blind run that fixes the floor of instruction awareness: a sentence encoder fed the text
    alone (mode plain, the same embedding whatever the instruction), the first with an IA interval."""
    runs = sorted(r for r, cells in book.runs.items() if r.mode == NO_INSTRUCTION_MODE and r.recipe == "none"
                  and cells.get(IA_AVG, Cell()).has_ci)
    return runs[0] if runs else None


def _at_floor(book: SuiteScores, a: Run, b: Run, key: str) -> str:
    """The negative control's label when both runs' IA averages lie within its interval, else ""."""
    floor = negative_control(book)
    if key != IA_AVG or floor is None or floor in (a, b):
        return ""
    fc, ca, cb = book.get(floor, IA_AVG), book.get(a, key), book.get(b, key)
    inside = all(c.ok and fc.est.low <= c.value <= fc.est.high for c in (ca, cb))
    return f"{floor.label} ({fc.est.low:.1f} to {fc.est.high:.1f})" if inside else ""


def compare(book: SuiteScores, a: Run, b: Run, key: str = IA_AVG, margin: float | None = None,
            detail: str = "") -> Evidence:
    """Run a against run b on `key`: the paired difference a - b and its CI (items resampled jointly), against
    0, or against -margin where a may trail b by at most `margin` points; "at the floor" when both lie within the
    negative control's interval."""
    ca, cb = book.get(a, key), book.get(b, key)
    threshold = 0.0 if margin is None else -margin
    ev = Evidence(a.label, ca.value if ca.ok else None, b.label, cb.value if cb.ok else None, threshold=threshold,
                  detail=detail, point_only=book.point_only, cells=(ca, cb), floor=_at_floor(book, a, b, key))
    if ca.has_ci and cb.has_ci:
        try:
            ev.comparison = paired_difference(ca.est, cb.est, threshold)
        except BootstrapError as err:
            ev.no_ci = str(err)
    elif not book.point_only:
        ev.no_ci = "; ".join(dict.fromkeys(c.ci_reason or "no CI" for c in (ca, cb) if not c.has_ci))
    return ev


CI_RULE = ("Each comparison is the paired difference of the two runs on the same items (95% interval: items "
           "resampled jointly for both runs, the spread of training seeds and k-means restarts added; "
           "inbedder.bootstrap). The claim's decisive comparisons form one family: Holm's step-down rule on "
           "their bootstrap p-values keeps the chance of any false decision at " + f"{FAMILY_ALPHA:.0%}" + "; a "
           "comparison is supported when its adjusted p-value is below that and the difference lies above {thr}, "
           "contradicted when below, inconclusive otherwise. The claim is supported when every decisive "
           "comparison is, contradicted when any is, inconclusive otherwise; not decidable when every one lies "
           "at the floor (both runs inside the instruction-blind negative control's interval, where a difference "
           "says nothing about instruction following); not tested without a comparison. "
           "The paper's own numbers have no CI: there the point difference decides.")


def _mode_by_mode(book: SuiteScores, a: Run, b: Run, detail: str) -> list[Evidence]:
    """a's and b's recipes compared at each mode both have beside the primary modes (shown, not decisive)."""
    rows = []
    for mode in sorted({r.mode for r in book.runs if r.model == a.model and r.recipe == a.recipe}):
        x, y = a.with_(mode=mode), b.with_(mode=mode)
        if (x, y) == (a, b) or not (_has_ia(book.runs.get(x, {})) and _has_ia(book.runs.get(y, {}))):
            continue
        ev = compare(book, x, y, detail=detail)
        ev.decisive = False
        rows.append(ev)
    return rows


def claim_1(book: SuiteScores, scope: str, modes: ClaimModes) -> ClaimResult:
    """Claim 1: InBedder's IA average above Alpaca-tuned and untuned, each at the paper's mode for it."""
    evidence: list[Evidence] = []
    lacking: list[str] = []
    for model in sorted({r.model for r in book.runs if r.recipe in INBEDDER_RECIPES}):
        for recipe in INBEDDER_RECIPES:
            inb = modes.run(book, model, recipe)
            if inb is None:
                continue
            for base_recipe in BASELINE_RECIPES:
                base = modes.run(book, model, base_recipe)
                if base is None:
                    lacking.append(f"{model}: no {'untuned' if base_recipe == 'none' else base_recipe} run at "
                                   f"{modes.mode(model, base_recipe)}")
                    continue
                evidence.append(compare(book, inb, base, detail="IA average, the paper's modes"))
                evidence += _mode_by_mode(book, inb, base, "IA average, the same mode for both (not decisive)")
    title, statement = CLAIMS[1]
    rule = ("For every model with an InBedder run: InBedder's instruction-awareness average minus that of each "
            "baseline of the same model that was run (Alpaca-tuned, untuned), each recipe at the mode the paper's "
            f"tables set side by side ({modes.describe()}). " + CI_RULE.format(thr="0"))
    return _result(1, title, statement, rule, scope, book, evidence, "; ".join(lacking))


def _result(number: int, title: str, statement: str, rule: str, scope: str, book: SuiteScores,
            evidence: list[Evidence], reason: str = "") -> ClaimResult:
    return ClaimResult(number, title, statement, rule, scope, _verdict(evidence), evidence, reason,
                       point_only=book.point_only)


def claim_2(book: SuiteScores, scope: str, modes: ClaimModes) -> ClaimResult:
    """Claim 2: InBedder's answer mode (the paper's mode for it) above the prompt mode avg-ppt."""
    evidence: list[Evidence] = []
    lacking: list[str] = []
    for model, recipe in sorted({(r.model, r.recipe) for r in book.runs if r.recipe in INBEDDER_RECIPES}):
        ans = modes.run(book, model, recipe)
        ppt = Run(model, recipe, PROMPT_MODE)
        if ans is None or ans.mode not in ANSWER_MODES or not book.get(ppt, IA_AVG).ok:
            lacking.append(f"{model}-{recipe}: needs {modes.mode(model, recipe)} and {PROMPT_MODE}")
            continue
        evidence.append(compare(book, ans, ppt, detail="IA average, answer vs prompt hidden states"))
        for other in ANSWER_MODES:
            run = Run(model, recipe, other)
            if other != ans.mode and book.get(run, IA_AVG).ok:
                ev = compare(book, run, ppt, detail="IA average, the other answer mode (not decisive)")
                ev.decisive = False
                evidence.append(ev)
    title, statement = CLAIMS[2]
    rule = (f"For every InBedder model run in both: the instruction-awareness average of its answer mode (the "
            f"paper's mode for it: {modes.describe()}) minus that of the prompt mode {PROMPT_MODE}. "
            + CI_RULE.format(thr="0"))
    return _result(2, title, statement, rule, scope, book, evidence, "; ".join(lacking))


def filter_pairs(book: SuiteScores) -> list[tuple[Run, Run]]:
    """(unfiltered, filtered) runs of the same model and recipe where both have an IA average, sorted."""
    pairs = []
    for run in sorted(book.runs):
        if run.mode.endswith("+filter"):
            base = run.with_(mode=run.mode[: -len("+filter")])
            if book.get(run, IA_AVG).ok and book.get(base, IA_AVG).ok:
                pairs.append((base, run))
    return pairs


def claim_3(book: SuiteScores, scope: str) -> ClaimResult:
    """Claim 3: the mean gain of <mode>+filter over <mode>, over every pair run, above 0."""
    pairs: list[Evidence] = []
    for base, run in filter_pairs(book):
        ev = compare(book, run, base, detail="IA average, filtered vs unfiltered")
        ev.decisive = False  # pairs are reported; the verdict is on their mean gain
        pairs.append(ev)
    title, statement = CLAIMS[3]
    rule = ("The mean, over every <mode>+filter run beside the same <mode> (same model and recipe), of the "
            "filtered minus the unfiltered instruction-awareness average; its CI from the mean of the pairs' "
            "paired replicates. " + CI_RULE.format(thr="0"))
    if not pairs:
        return _result(3, title, statement, rule, scope, book, [], "no <mode>+filter run with its base")
    gain = float(np.mean([e.diff for e in pairs]))
    summary = Evidence(f"mean gain over {len(pairs)} pair(s)", gain, "no change", 0.0, threshold=0.0,
                       detail="mean of the differences above", point_only=book.point_only)
    if all(e.comparison is not None for e in pairs):
        summary.comparison = mean_difference([(e.cells[0].est, e.cells[1].est) for e in pairs])
    elif not book.point_only:
        summary.no_ci = "; ".join(dict.fromkeys(e.no_ci for e in pairs if e.no_ci))
    return _result(3, title, statement, rule, scope, book, pairs + [summary])


def claim_4(book: SuiteScores, scope: str, modes: ClaimModes, margin: float = GENERIC_MARGIN) -> ClaimResult:
    """Claim 4: the flagship InBedder run (its claim mode) above every no-instruction baseline on IA, and at most
    `margin` below on generic; the other InBedder runs beside it, undecisive."""
    title, statement = CLAIMS[4]
    rule = (f"The InBedder run of the first of the flagship models that was run ({', '.join(modes.flagships)}; "
            f"fixed in the config), at the paper's mode for it ({modes.describe()}), against every no-instruction "
            f"baseline run (a sentence encoder in mode `{NO_INSTRUCTION_MODE}`): its instruction-awareness average "
            f"minus the baseline's (threshold 0), and its generic average minus the baseline's (threshold "
            f"-{margin:.1f}: 'competitive' allows trailing by at most {margin:.1f} points). "
            + CI_RULE.format(thr="the threshold"))
    inb_runs = sorted({run for r in book.runs if r.recipe in INBEDDER_RECIPES
                       if (run := modes.run(book, r.model, r.recipe)) is not None})
    baselines = [r for r, c in book.runs.items() if r.mode == NO_INSTRUCTION_MODE and r.recipe == "none"
                 and _has_ia(c)]
    if not inb_runs or not baselines:
        why = "no InBedder run with an IA average at its claim mode" if not inb_runs else \
            "no no-instruction baseline run"
        return _result(4, title, statement, rule, scope, book, [], why)
    flagship = next((r for m in modes.flagships for r in inb_runs if r.model == m), None)
    if flagship is None:
        return _result(4, title, statement, rule, scope, book, [],
                       f"no InBedder run of a flagship model ({', '.join(modes.flagships)})")
    evidence: list[Evidence] = []
    for inb in [flagship] + [r for r in inb_runs if r != flagship]:
        for base in sorted(baselines):
            rows = [compare(book, inb, base, IA_AVG, detail="instruction-awareness average"),
                    compare(book, inb, base, GEN_AVG, margin=margin,
                            detail=f"generic average (within {margin:.1f} points)")]
            for ev in rows if inb != flagship else ():
                ev.decisive = False
            evidence += rows
    res = _result(4, title, statement, rule, scope, book, evidence)
    if any(e.outcome is None for e in evidence if e.decisive) and res.verdict != "contradicted":
        res.verdict, res.reason = "not tested", "a generic average is missing (generic tasks not all run)"
    return res


def evaluate_claims(book: SuiteScores, scope: str, modes: ClaimModes, margin: float = GENERIC_MARGIN,
                    ) -> list[ClaimResult]:
    """All four claims on one set of numbers (all "not tested" when no run has an IA average)."""
    results = [claim_1(book, scope, modes), claim_2(book, scope, modes), claim_3(book, scope),
               claim_4(book, scope, modes, margin)]
    if not any(_has_ia(cells) for cells in book.runs.values()):
        labels = ", ".join(f"{c.label} ({c.task})" for c in book.suite.ia)
        for res in results:
            res.verdict, res.evidence = "not tested", []
            res.reason = f"no instruction-awareness average: {labels} not all scored in this run"
    return results
