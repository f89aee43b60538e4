"""The paper's four claims: the rule that decides each, applied to one set of numbers (a SuiteScores).

Every comparison is a paired bootstrap difference (inbedder.bootstrap): supported / contradicted /
inconclusive against 0 (or minus the margin of claim 4's "competitive"), with the smallest difference the
run could detect and, when inconclusive, how many more items would decide it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from inbedder.bootstrap import BootstrapError, Comparison, mean_difference, outcome, paired_difference
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

    @property
    def diff(self) -> float | None:
        """value - reference, where both exist."""
        if self.value is None or self.reference is None:
            return None
        return self.value - self.reference

    @property
    def outcome(self) -> str | None:
        """supported / contradicted / inconclusive; None when a number is missing."""
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
        """The smallest difference this comparison could detect (half-width of its CI)."""
        return self.comparison.detectable if self.comparison is not None else None

    @property
    def power_note(self) -> str:
        """For an inconclusive comparison: how many items (or seeds) would decide it at the observed effect."""
        c = self.comparison
        if c is None or c.outcome != "inconclusive":
            return ""
        if math.isinf(c.scale_needed):
            return "no number of items decides it: the difference sits on the threshold"
        return (f"~{c.scale_needed:.1f}x the items ({c.n_items} -> {c.items_needed} per set), or the seeds, "
                f"would decide it at this difference")


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


def best_mode(book: SuiteScores, model: str, recipe: str, modes: Iterable[str] | None = None) -> Run | None:
    """The run of (model, recipe) with the highest instruction-awareness average, optionally among modes.

    Without `modes`, the filter ablation's explicit variants (`+filter=words`, `+filter=authors`) are
    not candidates: a headline mode is one of the method's, and `+filter` is the run's own filter."""
    allowed = set(modes) if modes is not None else None
    cands = [run for run, cells in book.runs.items()
             if run.model == model and run.recipe == recipe and _has_ia(cells)
             and (run.mode in allowed if allowed is not None else "+filter=" not in run.mode)]
    return max(cands, key=lambda r: book.get(r, IA_AVG).value) if cands else None


def _verdict(evidence: list[Evidence]) -> str:
    """supported when every decisive comparison is, contradicted when any is, else inconclusive."""
    decided = [e.outcome for e in evidence if e.decisive and e.outcome is not None]
    if not decided:
        return "not tested"
    if "contradicted" in decided:
        return "contradicted"
    return "supported" if all(d == "supported" for d in decided) else "inconclusive"


def compare(book: SuiteScores, a: Run, b: Run, key: str = IA_AVG, margin: float | None = None,
            detail: str = "") -> Evidence:
    """Run a against run b on `key`: the paired difference a - b and its CI (items resampled jointly), against
    0, or against -margin where a may trail b by at most `margin` points."""
    ca, cb = book.get(a, key), book.get(b, key)
    threshold = 0.0 if margin is None else -margin
    ev = Evidence(a.label, ca.value if ca.ok else None, b.label, cb.value if cb.ok else None, threshold=threshold,
                  detail=detail, point_only=book.point_only, cells=(ca, cb))
    if ca.has_ci and cb.has_ci:
        try:
            ev.comparison = paired_difference(ca.est, cb.est, threshold)
        except BootstrapError as err:
            ev.no_ci = str(err)
    elif not book.point_only:
        ev.no_ci = "; ".join(dict.fromkeys(c.ci_reason or "no CI" for c in (ca, cb) if not c.has_ci))
    return ev


CI_RULE = ("Each comparison is the paired difference of the two runs on the same items (95% percentile bootstrap "
           "CI, items and seeds resampled jointly for both runs): supported when the CI lies above {thr}, "
           "contradicted when it lies below, inconclusive when it spans it. The claim is supported when every "
           "comparison is, contradicted when any is, inconclusive otherwise; not tested without a comparison. "
           "The paper's own numbers have no CI: there the point difference decides.")


def claim_1(book: SuiteScores, scope: str) -> ClaimResult:
    """Claim 1: InBedder's best IA average above Alpaca-tuned and untuned (each at its best mode)."""
    evidence: list[Evidence] = []
    lacking: list[str] = []
    for model in sorted({r.model for r in book.runs if r.recipe in INBEDDER_RECIPES}):
        for recipe in INBEDDER_RECIPES:
            inb = best_mode(book, model, recipe)
            if inb is None:
                continue
            for base_recipe in BASELINE_RECIPES:
                base = best_mode(book, model, base_recipe)
                if base is None:
                    lacking.append(f"{model}: no {'untuned' if base_recipe == 'none' else base_recipe} run")
                    continue
                evidence.append(compare(book, inb, base, detail="IA average, each recipe at its best mode"))
    title, statement = CLAIMS[1]
    rule = ("For every model with an InBedder run: InBedder's instruction-awareness average (its best mode) "
            "minus that of each baseline of the same model that was run (Alpaca-tuned, untuned; each at its best "
            "mode). " + CI_RULE.format(thr="0"))
    return _result(1, title, statement, rule, scope, book, evidence, "; ".join(lacking))


def _result(number: int, title: str, statement: str, rule: str, scope: str, book: SuiteScores,
            evidence: list[Evidence], reason: str = "") -> ClaimResult:
    return ClaimResult(number, title, statement, rule, scope, _verdict(evidence), evidence, reason,
                       point_only=book.point_only)


def claim_2(book: SuiteScores, scope: str) -> ClaimResult:
    """Claim 2: the best answer mode (1st-gen / avg-gen) above the prompt mode avg-ppt."""
    evidence: list[Evidence] = []
    lacking: list[str] = []
    for model, recipe in sorted({(r.model, r.recipe) for r in book.runs if r.recipe in INBEDDER_RECIPES}):
        ans = best_mode(book, model, recipe, ANSWER_MODES)
        ppt = Run(model, recipe, PROMPT_MODE)
        if ans is None or not book.get(ppt, IA_AVG).ok:
            lacking.append(f"{model}-{recipe}: needs {'/'.join(ANSWER_MODES)} and {PROMPT_MODE}")
            continue
        evidence.append(compare(book, ans, ppt, detail="IA average, answer vs prompt hidden states"))
    title, statement = CLAIMS[2]
    rule = (f"For every InBedder model run in both: the instruction-awareness average of the better answer mode "
            f"({' or '.join(ANSWER_MODES)}) minus that of the prompt mode {PROMPT_MODE}. " + CI_RULE.format(thr="0"))
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


def claim_4(book: SuiteScores, scope: str, margin: float = GENERIC_MARGIN) -> ClaimResult:
    """Claim 4: the best InBedder run above every no-instruction baseline on IA, and at most `margin` below on generic."""
    title, statement = CLAIMS[4]
    rule = (f"Take the InBedder run with the highest instruction-awareness average. Against every no-instruction "
            f"baseline run (a sentence encoder in mode `{NO_INSTRUCTION_MODE}`): its instruction-awareness average "
            f"minus the baseline's (threshold 0), and its generic average minus the baseline's (threshold "
            f"-{margin:.1f}: 'competitive' allows trailing by at most {margin:.1f} points). "
            + CI_RULE.format(thr="the threshold"))
    inb_runs = [r for r, c in book.runs.items() if r.recipe in INBEDDER_RECIPES and _has_ia(c)
                and "+filter=" not in r.mode]  # the filter ablation's variants are not headline modes
    baselines = [r for r, c in book.runs.items() if r.mode == NO_INSTRUCTION_MODE and r.recipe == "none"
                 and _has_ia(c)]
    if not inb_runs or not baselines:
        why = "no InBedder run with an IA average" if not inb_runs else "no no-instruction baseline run"
        return _result(4, title, statement, rule, scope, book, [], why)
    best = max(inb_runs, key=lambda r: book.get(r, IA_AVG).value)
    evidence: list[Evidence] = []
    for base in sorted(baselines):
        evidence.append(compare(book, best, base, IA_AVG, detail="instruction-awareness average"))
        evidence.append(compare(book, best, base, GEN_AVG, margin=margin,
                                detail=f"generic average (within {margin:.1f} points)"))
    res = _result(4, title, statement, rule, scope, book, evidence)
    if any(e.outcome is None for e in evidence) and res.verdict != "contradicted":
        res.verdict, res.reason = "not tested", "a generic average is missing (generic tasks not all run)"
    return res


def evaluate_claims(book: SuiteScores, scope: str, margin: float = GENERIC_MARGIN) -> list[ClaimResult]:
    """All four claims on one set of numbers (all "not tested" when no run has an IA average)."""
    results = [claim_1(book, scope), claim_2(book, scope), claim_3(book, scope), claim_4(book, scope, margin)]
    if not any(_has_ia(cells) for cells in book.runs.values()):
        labels = ", ".join(f"{c.label} ({c.task})" for c in book.suite.ia)
        for res in results:
            res.verdict, res.evidence = "not tested", []
            res.reason = f"no instruction-awareness average: {labels} not all scored in this run"
    return results
