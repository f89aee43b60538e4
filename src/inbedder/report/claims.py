"""The paper's four claims: the rule that decides each, applied to one set of numbers (a SuiteScores)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

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
    """One comparison that fed a verdict."""

    label: str
    value: float | None
    reference_label: str
    reference: float | None
    threshold: float
    holds: bool | None
    detail: str = ""

    @property
    def diff(self) -> float | None:
        """value - reference, where both exist."""
        if self.value is None or self.reference is None:
            return None
        return self.value - self.reference


@dataclass
class ClaimResult:
    """A claim, the rule that decides it, the verdict and the numbers that decided it."""

    number: int
    title: str
    statement: str
    rule: str
    scope: str
    verdict: str  # "supported" | "not supported" | "not tested"
    evidence: list[Evidence] = field(default_factory=list)
    reason: str = ""


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
    """The run of (model, recipe) with the highest instruction-awareness average, optionally among modes."""
    allowed = set(modes) if modes is not None else None
    cands = [run for run, cells in book.runs.items()
             if run.model == model and run.recipe == recipe and _has_ia(cells)
             and (allowed is None or run.mode in allowed)]
    return max(cands, key=lambda r: book.get(r, IA_AVG).value) if cands else None


def _verdict(evidence: list[Evidence]) -> str:
    decided = [e.holds for e in evidence if e.holds is not None]
    if not decided:
        return "not tested"
    return "supported" if all(decided) else "not supported"


def compare(book: SuiteScores, a: Run, b: Run, key: str = IA_AVG, margin: float | None = None,
            detail: str = "") -> Evidence:
    """Compare run a with run b on `key`: a must lead by more than the larger seed sd, or (with a margin)
    trail by at most `margin` points."""
    ca, cb = book.get(a, key), book.get(b, key)
    threshold = max(ca.sd, cb.sd) if margin is None else -margin
    holds: bool | None = None
    if ca.ok and cb.ok:
        diff = ca.value - cb.value
        holds = diff > threshold if margin is None else diff >= threshold
    return Evidence(a.label, ca.value, b.label, cb.value, threshold=threshold, holds=holds, detail=detail)


def claim_1(book: SuiteScores, scope: str) -> ClaimResult:
    """Claim 1: InBedder's best IA average beats Alpaca-tuned and untuned (each at its best mode) by > seed sd."""
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
    rule = ("Supported when, for every model with an InBedder run, InBedder's instruction-awareness average "
            "(its best mode) exceeds that of each baseline of the same model that was run (Alpaca-tuned, "
            "untuned; each at its best mode) by more than the larger of the two seed sds; not supported if "
            "any comparison fails; not tested without a comparison.")
    return ClaimResult(1, title, statement, rule, scope, _verdict(evidence), evidence, "; ".join(lacking))


def claim_2(book: SuiteScores, scope: str) -> ClaimResult:
    """Claim 2: the best answer mode (1st-gen / avg-gen) beats the prompt mode avg-ppt by > seed sd."""
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
    rule = (f"Supported when, for every InBedder model run in both, the better answer mode "
            f"({' or '.join(ANSWER_MODES)}) has an instruction-awareness average above that of the prompt mode "
            f"{PROMPT_MODE} by more than the larger seed sd; not supported if any model fails.")
    return ClaimResult(2, title, statement, rule, scope, _verdict(evidence), evidence, "; ".join(lacking))


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
    """Claim 3: the mean gain of <mode>+filter over <mode> (all pairs) is positive and above the seed sd."""
    pairs: list[Evidence] = []
    for base, run in filter_pairs(book):
        ev = compare(book, run, base, detail="IA average, filtered vs unfiltered")
        ev.holds = None  # pairs are reported; the verdict is on their mean gain
        pairs.append(ev)
    title, statement = CLAIMS[3]
    rule = ("Supported when the mean gain of each <mode>+filter over the same <mode> (same model and recipe), "
            "averaged over every such pair run, is positive and larger than the largest seed sd among the "
            "pairs; not supported otherwise; not tested without a pair.")
    if not pairs:
        return ClaimResult(3, title, statement, rule, scope, "not tested", [], "no <mode>+filter run with its base")
    gain = float(np.mean([e.diff for e in pairs]))
    thr = max(e.threshold for e in pairs)
    summary = Evidence(f"mean gain over {len(pairs)} pair(s)", gain, "no change", 0.0, threshold=thr, holds=gain > thr,
                       detail="mean of the differences above")
    verdict = "supported" if summary.holds else "not supported"
    return ClaimResult(3, title, statement, rule, scope, verdict, pairs + [summary])


def claim_4(book: SuiteScores, scope: str, margin: float = GENERIC_MARGIN) -> ClaimResult:
    """Claim 4: best InBedder run beats every no-instruction baseline on IA and is within `margin` on generic."""
    title, statement = CLAIMS[4]
    rule = (f"Take the InBedder run with the highest instruction-awareness average. Supported when, against "
            f"every no-instruction baseline run (a sentence encoder in mode `{NO_INSTRUCTION_MODE}`), its "
            f"instruction-awareness average is higher by more than the larger seed sd AND its generic average is "
            f"at most {margin:.1f} points below the baseline's; not supported if either fails; not tested when a "
            f"number is missing.")
    inb_runs = [r for r, c in book.runs.items() if r.recipe in INBEDDER_RECIPES and _has_ia(c)]
    baselines = [r for r, c in book.runs.items() if r.mode == NO_INSTRUCTION_MODE and r.recipe == "none"
                 and _has_ia(c)]
    if not inb_runs or not baselines:
        why = "no InBedder run with an IA average" if not inb_runs else "no no-instruction baseline run"
        return ClaimResult(4, title, statement, rule, scope, "not tested", [], why)
    best = max(inb_runs, key=lambda r: book.get(r, IA_AVG).value)
    evidence: list[Evidence] = []
    for base in sorted(baselines):
        evidence.append(compare(book, best, base, IA_AVG, detail="instruction-awareness average"))
        evidence.append(compare(book, best, base, GEN_AVG, margin=margin,
                                detail=f"generic average (within {margin:.1f} points)"))
    decided = [e.holds for e in evidence]
    if any(h is False for h in decided):
        verdict = "not supported"
    elif any(h is None for h in decided):
        verdict = "not tested"
    else:
        verdict = "supported"
    reason = "" if verdict != "not tested" else "a generic average is missing (generic tasks not all run)"
    return ClaimResult(4, title, statement, rule, scope, verdict, evidence, reason)


def evaluate_claims(book: SuiteScores, scope: str, margin: float = GENERIC_MARGIN) -> list[ClaimResult]:
    """All four claims on one set of numbers (all "not tested" when no run has an IA average)."""
    results = [claim_1(book, scope), claim_2(book, scope), claim_3(book, scope), claim_4(book, scope, margin)]
    if not any(_has_ia(cells) for cells in book.runs.values()):
        labels = ", ".join(f"{c.label} ({c.task})" for c in book.suite.ia)
        for res in results:
            res.verdict, res.evidence = "not tested", []
            res.reason = f"no instruction-awareness average: {labels} not all scored in this run"
    return results

