"""Rendering: the declared inputs -> one self-contained HTML page (jinja2) and its figures as PNG files."""

from __future__ import annotations

import importlib.resources
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

import inbedder.report.figures as fg
from inbedder.bootstrap import BOOT_SEED, FAMILY_ALPHA, LEVEL, MIN_ITEMS, N_BOOT, POWER
from inbedder.config import load_config
from inbedder.fidelity import AUTHORS_COMMIT, AUTHORS_REPO, method_settings
from inbedder.fidelity_rows import MethodRow, method_notes, method_rows, same_re_encoder, setting_summary
from inbedder.files import atomic_path, sha256_file, sha256_json, write_json, write_text
from inbedder.item_data import ItemData, read_items
from inbedder.report.aggregate import (
    SuiteScores,
    below_floor,
    crossview_table,
    headline_runs,
    long_table,
    paper_suite_scores,
    robustness_rows,
    suite_scores,
    train_seed_spread,
)
from inbedder.report.claims import CLAIMS, ClaimModes, ClaimResult, claim_modes, evaluate_claims
from inbedder.report.forest import figure_forest
from inbedder.report.inputs import ReportInputs, run_inputs
from inbedder.report.provenance import (
    benchmark_summary,
    git_state,
    hardware,
    load_benchmarks,
    load_explanations,
    load_manifests,
    load_model_fingerprints,
    load_projection,
    load_training,
    package_versions,
    training_rows,
)
from inbedder.report.suites import (
    ANSWER_MODES,
    GENERIC_MARGIN,
    INBEDDER_RECIPES,
    NO_INSTRUCTION_MODE,
    PROMPT_MODE,
    Run,
    analog_mapping,
    empty_scores,
    headline_layer,
    load_paper_numbers,
    load_scores,
    load_skipped,
    num,
    projection_task,
    suites_of,
)
from inbedder.report.tables import (
    MissingReasons,
    TableView,
    crossview_groups,
    filter_ablation,
    offline_table,
    paper_table,
)
from inbedder.task_kinds import kind_of, unavailable_reason

# The paper's tables each claim rests on (a switch that moves one of them moves the claim).
CLAIM_TABLES = {1: ("instruction_awareness",), 2: ("modes",), 3: ("filtering",), 4: ("instruction_awareness", "generic")}

# A finding about the paper's baselines (docs/fidelity.md, section 1), stated once in the method section.
TRUNCATION_FINDING = (
    "The authors' code cuts a prompt longer than 512 tokens from the left for causal and masked models "
    "(lm_encoders_hf/causallm_encoder_hf.py:55, maskedlm_encoder_hf.py:53) and from the right for seq2seq "
    "(seq2seqlm_encoder_hf.py:52). The Alpaca template puts \"### Instruction:\" and the instruction first, so "
    "every NYT article longer than that budget was embedded without its instruction in the Alpaca-template "
    "baselines of the instruction-awareness table: roberta-large-alpaca (NYT 21.60), opt-350m-alpaca (NYT 15.25) "
    "and opt-1.3b-alpaca (NYT 12.88, whose clustering texts were also cut to their last 400 words first). The same "
    "holds for the QA-template seq2seq runs (flan-t5-*-qa), which lose the instruction at the right. The other "
    "tasks' texts are far below 512 tokens. With method.truncation: keep_instruction this reproduction cuts the "
    "input text instead and always keeps the instruction."
)


def fmt(v: Any, nd: int = 2) -> str:
    """A number to `nd` decimals with a true minus sign; a dash when missing."""
    x = num(v)
    return "—" if x is None else f"{x:.{nd}f}".replace("-", "\u2212")


def signed(v: Any, nd: int = 2) -> str:
    """A difference with its sign; a dash when missing."""
    x = num(v)
    if x is None:
        return "—"
    return ("+" if x >= 0 else "\u2212") + f"{abs(x):.{nd}f}"


def diff_style(v: Any, scale: float = 15.0) -> str:
    """Background tint of a difference: green above the reference, red below, stronger with size."""
    x = num(v)
    if x is None:
        return ""
    a = 0.12 + 0.5 * min(abs(x) / scale, 1.0)
    rgb = "27,127,59" if x >= 0 else "190,40,40"
    return f"background-color: rgba({rgb},{a:.2f});"


def hms(seconds: Any) -> str:
    """Seconds as h:mm:ss."""
    x = num(seconds)
    if x is None:
        return "—"
    m, s = divmod(round(x), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _jinja_env(template_dir: Path):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=fmt, signed=signed, diffstyle=diff_style, hms=hms)
    env.globals.update(ci_text=ci_text, verdict_words=verdict_words, paper_scope=PAPER_SCOPE,
                       offline_scope=OFFLINE_SCOPE)
    return env


PAPER_SCOPE = "the paper's own numbers (no CI)"
OFFLINE_SCOPE = "offline analogs"


def ci_text(low: Any, high: Any) -> str:
    """A CI as [low, high]; empty when missing."""
    if num(low) is None or num(high) is None:
        return ""
    return f"[{fmt(low)}, {fmt(high)}]"


def evidence_text(e: Any) -> str:
    """One comparison in a line: the runs, the difference, its CI and what could be detected."""
    what = "generic avg: " if e.detail.startswith("generic") else ""
    text = f"{what}{e.label} {fmt(e.value)} vs {e.reference_label} {fmt(e.reference)}: Δ {signed(e.diff)}"
    if e.comparison is not None:
        text += f" {ci_text(e.low, e.high)}, detectable ±{fmt(e.detectable)}"
    elif e.point_only:
        text += " (no CI)"
    if e.floor:
        text += f"; both within the instruction-blind floor {e.floor}"
    return text


# Verdicts that a run's setting qualifies: where the setting differs, they hold "in this setting" only.
QUALIFIED_VERDICTS = ("supported", "contradicted", "inconclusive")


def verdict_words(verdict: str, differs: bool) -> str:
    """A verdict as the page says it: `<verdict> in this setting` where a setting that can move it differs."""
    return f"{verdict} in this setting" if differs and verdict in QUALIFIED_VERDICTS else verdict


def conclusion(results: Sequence[ClaimResult], differs: bool = False) -> list[dict]:
    """Per tested scope: the verdict, in words, and the comparisons that decided it, in one line."""
    out = []
    for res in results:
        if res.verdict == "not tested":
            continue
        shown = [e for e in res.evidence if e.decisive and e.outcome is not None]
        first = [e for e in shown if e.outcome == res.verdict] or shown
        out.append({"scope": res.scope, "verdict": res.verdict, "words": verdict_words(res.verdict, differs),
                    "text": "; ".join(evidence_text(e) for e in first[:2])})
    return out


def _unavailable_reasons(config: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, str]:
    """Why each task (selected or not) cannot run under this config (hub-only data offline, ...)."""
    out = {}
    for task in tasks:
        if task in config["tasks"]:
            reason = unavailable_reason(task, config)
            if reason:
                out[task] = reason
    return out


def _projection_runs(book: SuiteScores, modes: ClaimModes) -> list[Run]:
    """Runs for the projection: an InBedder run at its claim mode, the untuned model in the same mode, one plain
    encoder."""
    inb = sorted({run for r in book.runs if r.recipe in INBEDDER_RECIPES
                  if (run := modes.run(book, r.model, r.recipe)) is not None})
    out: list[Run] = []
    if inb:
        best = inb[0]
        out.append(best)
        if best.with_(recipe="none") in book.runs:
            out.append(best.with_(recipe="none"))
    plain = sorted(r for r in book.runs if r.mode == NO_INSTRUCTION_MODE)
    if plain:
        out.append(plain[0])
    return out or headline_runs(book)[:2]


def _paper_numbers_sha(path: Path | None) -> str:
    if path is not None:
        return sha256_file(path)
    with importlib.resources.as_file(importlib.resources.files("inbedder").joinpath("paper_numbers.csv")) as p:
        return sha256_file(p)


def _display_path(path: str | os.PathLike, root: Path) -> str:
    """A path relative to the repository (or the working folder) when it lies inside it."""
    p = Path(path).resolve()
    for base in (root.resolve(), Path.cwd()):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return str(path)


def _plain(obj: Any) -> Any:
    """A config as plain dicts/lists (Snakemake's config is a dict subclass; YAML dumps plain data only)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass
class PageData:
    """What every part of the page reads: the scores, the paper's numbers, the suites' cells and why cells are empty."""

    raw: pd.DataFrame  # scores.csv, every layer
    scores: pd.DataFrame  # the headline layer
    skipped: dict[str, str]
    paper: pd.DataFrame
    items: ItemData
    books: dict[str, SuiteScores]  # per suite (paper, offline)
    reasons: MissingReasons
    data_notes: dict[str, str]  # task -> where its data came from, when not from the paper's source
    layers: dict[Run, str]
    notes: list[str] = field(default_factory=list)  # warnings: a missing input
    infos: list[str] = field(default_factory=list)  # remarks on what is shown
    boot_started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def read_page_data(inputs: ReportInputs, config: Mapping[str, Any]) -> PageData:
    """Read the scores, skipped tasks, paper numbers and per-item data; aggregate the suites of the task records."""
    notes, infos = [], []
    if inputs.scores.is_file():
        raw = load_scores(inputs.scores)
    else:
        raw = empty_scores()
        notes.append(f"{inputs.scores} does not exist: no scores in this report.")
    skipped = load_skipped(inputs.skipped)
    scores = headline_layer(raw)
    layers = {Run(m, r, mo): lay for m, r, mo, lay in
              zip(scores["model"], scores["recipe"], scores["mode"], scores["layer"], strict=True)}
    other_layers = sorted(set(raw["layer"]) - set(scores["layer"]))
    if other_layers:
        infos.append(f"scores.csv also holds layer(s) {', '.join(other_layers)}; the tables show the last layer "
                     "(all layers are in Appendix A).")
    suites = suites_of(config["tasks"])
    unavailable = _unavailable_reasons(config, sorted({t for s in suites.values() for t in s.tasks}))
    reasons = MissingReasons(scores, {**unavailable, **skipped}, config["select"]["tasks"],
                             config["select"]["models"])
    paper = load_paper_numbers(inputs.paper)
    boot_started = datetime.now(timezone.utc)
    items = ItemData(read_items(inputs.item_data))
    if not items:
        notes.append("No per-item data (scores/<model>-<recipe>/<task>.items.parquet) in this run: its numbers "
                     "carry no CI and no comparison is decided.")
    books = {name: suite_scores(scores, suite, items) for name, suite in suites.items()}
    data_notes = {name: note for name, spec in config["tasks"].items() if (note := kind_of(name, spec).data_note())}
    return PageData(raw, scores, skipped, paper, items, books, reasons, data_notes, layers, notes, infos, boot_started)


def claims_part(data: PageData, margin: float, method: Sequence[MethodRow], modes: ClaimModes,
                ) -> tuple[list[dict], list[fg.Figure]]:
    """The four claims on each scope (paper tasks, offline analogs, the paper's own numbers) and their forests."""
    scopes = (("paper tasks", data.books["paper"]), (OFFLINE_SCOPE, data.books["offline"]),
              (PAPER_SCOPE, paper_suite_scores(data.paper, data.books["paper"].suite)))
    claim_results = [evaluate_claims(book, title, modes, margin) for title, book in scopes]
    claims = []
    for n in range(1, 5):
        results = [per_scope[n - 1] for per_scope in claim_results]
        keys = method_notes(list(method), CLAIM_TABLES[n])
        # the run's own scopes are computed in its setting; the paper's own numbers in the paper's
        words = {r.scope: verdict_words(r.verdict, bool(keys) and r.scope != PAPER_SCOPE) for r in results}
        claims.append({"number": n, "title": CLAIMS[n][0], "statement": CLAIMS[n][1], "rule": results[0].rule,
                       "results": results, "words": words, "conclusion": conclusion(results[:2], bool(keys)),
                       "method_note": f"method differs: {', '.join(keys)}" if keys else ""})
    forests = [figure_forest(c["number"], c["title"], c["results"], margin if c["number"] == 4 else None)
               for c in claims]
    for c, forest in zip(claims, forests, strict=True):
        c["forest"] = forest
    return claims, forests


def tables_part(data: PageData, method: Sequence[MethodRow], config: Mapping[str, Any]) -> dict[str, TableView]:
    """The paper's four tables with our numbers beside them, and the two offline-analog tables."""
    paper_book, offline_book = data.books["paper"], data.books["offline"]
    compare_kw = {"method": method, "re_encoder": config.get("re_encoder"), "models": config["models"]}
    tables = {f"paper_{key}": paper_table(data.paper, table, paper_book, data.reasons, data.data_notes, **compare_kw)
              for key, table in (("ia", "instruction_awareness"), ("generic", "generic"), ("modes", "modes"),
                                 ("filtering", "filtering"))}
    for part in ("ia", "generic"):
        tables[f"offline_{part}"] = offline_table(offline_book, part, data.reasons, data.data_notes)
    return tables


def figures_part(data: PageData, inputs: ReportInputs, config: Mapping[str, Any], training: list[dict],
                 headline: Sequence[Run], robust: list[dict], long: Sequence[dict]) -> list[fg.Figure]:
    """The page's figures, numbered: scores, modes, filtering, training, clustering, robustness, projection."""
    paper_book, offline_book = data.books["paper"], data.books["offline"]
    modes = claim_modes(config)
    figures: list[fg.Figure] = []
    paper_only = [c.label for c in paper_book.suite.columns if not c.shared]
    if any(paper_book.get(r, lab).ok for r in paper_book.runs for lab in paper_only):
        figures.append(fg.figure_scores(paper_book, modes.mode))
    figures.append(fg.figure_scores(offline_book, modes.mode))
    mode_book = offline_book if offline_book.runs or not paper_book.runs else paper_book
    figures.append(fg.figure_modes(mode_book, data.paper))
    figures.append(fg.figure_filtering(mode_book, data.paper))
    figures.append(fg.figure_loss(training))
    figures.append(fg.figure_heldout(training))
    figures.append(fg.figure_clustering(data.scores, list(headline), long))
    figures.append(fg.figure_robustness(robust))
    views, labels, why = load_projection(inputs.projection_table, inputs.projection_caches,
                                         _projection_runs(offline_book, modes), data.layers)
    task = projection_task(config["tasks"])
    proj = fg.figure_projection(views, labels, f" ({task})" if task else "")
    if not proj.png:
        proj.reason = why or proj.reason
    figures.append(proj)
    ours_re_encoder = config.get("re_encoder")
    for fig in figures:
        if fig.name.startswith("modes_"):
            fig.caption += (" The authors' re-encode bars were made with average_word_embeddings_komninos; this "
                            f"run re-encodes with {ours_re_encoder or 'none'}"
                            + ("." if same_re_encoder("komninos", ours_re_encoder, config["models"])
                               else ", so its re-encode bars are not comparable with theirs."))
    for i, fig in enumerate(figures, 1):
        fig.title = f"Figure {i}. {fig.title}"
    return figures


def provenance_part(inputs: ReportInputs, config: Mapping[str, Any], repo_root: Path, configfiles: Sequence[str],
                    training: list[dict]) -> dict[str, Any]:
    """Where the page comes from: commit, config, packages, hardware, data manifests, models, benchmarks."""
    import yaml

    benches = load_benchmarks(inputs.benchmarks)
    return {
        "git": git_state(repo_root),
        "run": config.get("run", inputs.scores.parent.name),
        "configfiles": list(dict.fromkeys(_display_path(p, repo_root) for p in configfiles)),
        "offline": config.get("offline"),
        "data_mirror": config.get("data_mirror"),
        "versions": package_versions(),
        "hardware": hardware(),
        "train_devices": sorted({f"{t['name']}: {t['summary'].get('device')} / {t['summary'].get('dtype')}"
                                 for t in training if t["summary"].get("device")}),
        "manifests": load_manifests(inputs.manifests),
        "fingerprints": load_model_fingerprints(inputs.fingerprints),
        "paper_numbers_sha256": _paper_numbers_sha(inputs.paper),
        "scores_sha256": sha256_file(inputs.scores) if inputs.scores.is_file() else "",
        "bench_rows": benches,
        "bench_stages": benchmark_summary(benches),
        "bench_total": sum(r["s"] for r in benches),
        "config_yaml": yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True, width=110),
    }


def render_report(
    inputs: ReportInputs,
    out_html: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    figures_dir: str | os.PathLike | None = None,
    repo_root: str | os.PathLike = ".",
    configfiles: Sequence[str] = (),
    margin: float = GENERIC_MARGIN,
) -> dict[str, Any]:
    """Render results/<run>/report/index.html (self-contained) and its figures; return the verdicts."""
    started = datetime.now(timezone.utc)
    out_html, repo_root = Path(out_html), Path(repo_root)
    data = read_page_data(inputs, config)
    method = method_rows(config)
    modes = claim_modes(config)
    claims, forests = claims_part(data, margin, method, modes)
    long = long_table(data.raw, data.items)
    boot_seconds = (datetime.now(timezone.utc) - data.boot_started).total_seconds()
    tables = tables_part(data, method, config)
    training = load_training(list(zip(inputs.training, inputs.train_logs, strict=True)))
    books = data.books
    headline = {name: headline_runs(books[name], modes.mode) for name in ("paper", "offline")}
    all_headline = list(dict.fromkeys(headline["offline"] + headline["paper"]))
    robust = robustness_rows(data.scores)
    figures = figures_part(data, inputs, config, training, all_headline, robust, long)
    provenance = provenance_part(inputs, config, repo_root, configfiles, training)
    ctx = {
        "run": provenance["run"], "generated": started.strftime("%Y-%m-%d %H:%M UTC"),
        "claims": claims, "tables": tables, "mapping": analog_mapping(books["offline"].suite), "figures": figures,
        "crossview": crossview_groups(crossview_table(data.scores), all_headline),
        "below_floor": below_floor(long, NO_INSTRUCTION_MODE),
        "training": training_rows(training),
        "seed_spread": [{"scope": scope, "rows": rows} for scope, rows in
                        (("offline analogs", train_seed_spread(data.scores, books["offline"].suite,
                                                               headline["offline"])),
                         ("paper tasks", train_seed_spread(data.scores, books["paper"].suite, headline["paper"])))
                        if rows],
        "robustness": [r for r in robust if r["groups"] or r.get("dci") is not None],
        "explanations": load_explanations(inputs.explanations, all_headline),
        "skipped": dict(sorted(data.skipped.items())), "provenance": provenance, "long": long,
        "bootstrap": {"resamples": N_BOOT, "level": LEVEL, "seed": BOOT_SEED, "min_items": MIN_ITEMS,
                      "seconds": boot_seconds, "scores": len(data.items.series), "family_alpha": FAMILY_ALPHA,
                      "power": POWER},
        "margin": margin, "min_items": MIN_ITEMS, "notes": data.notes, "infos": data.infos, "n_scores": len(data.raw),
        "css": inputs.css.read_text(encoding="utf-8"), "answer_modes": ANSWER_MODES, "prompt_mode": PROMPT_MODE,
        "method": method, "method_finding": TRUNCATION_FINDING, "setting": setting_summary(_plain(config)),
        "config_re_encoder": config.get("re_encoder") or "none",
        "authors_code": {"repo": AUTHORS_REPO, "commit": AUTHORS_COMMIT,
                         "url": f"https://github.com/{AUTHORS_REPO}/tree/{AUTHORS_COMMIT}"},
        "filter_ablation": [t for t in (filter_ablation(books[name], method_settings(config)["filter"])
                                        for name in ("paper", "offline")) if t is not None],
    }
    write_text(out_html, _jinja_env(inputs.template.parent).get_template(inputs.template.name).render(**ctx))
    _write_figures(figures + forests, figures_dir)
    return {
        "html": str(out_html),
        "run": provenance["run"],
        "generated": started.strftime("%Y-%m-%d %H:%M UTC"),
        "git": provenance["git"],
        "config_sha256": sha256_json(_plain(config)),
        "scores_sha256": provenance["scores_sha256"],
        "verdicts": {f"Claim {c['number']}": {r.scope: r.verdict for r in c["results"]} for c in claims},
        "figures": {f.name: bool(f.png) for f in figures + forests},
        "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
    }


def _write_figures(figures: Sequence[fg.Figure], figures_dir: str | os.PathLike | None) -> None:
    """Each drawn figure as <figures_dir>/<name>.png (nothing when no folder is given)."""
    if figures_dir is None:
        return
    fdir = Path(figures_dir)
    fdir.mkdir(parents=True, exist_ok=True)
    for fig in figures:
        if fig.png:
            with atomic_path(fdir / f"{fig.name}.png") as tmp:
                tmp.write_bytes(fig.png)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m inbedder.report RESULTS_DIR CONFIG...`: re-render a finished run's report."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results_dir", help="results/<run> folder holding scores.csv")
    parser.add_argument("configs", nargs="+", help="config files, layered in order (config.yaml, profile run.yaml)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None, help="output HTML (default RESULTS_DIR/report/index.html)")
    args = parser.parse_args(argv)
    config = load_config(*args.configs)
    res = Path(args.results_dir)
    out = Path(args.out) if args.out else res / "report" / "index.html"
    summary = render_report(run_inputs(res, config, args.data_dir), out, config=config,
                            figures_dir=out.parent / "figures", repo_root=Path(__file__).resolve().parents[3],
                            configfiles=args.configs)
    write_json(out.parent / "summary.json", summary)
    print(json.dumps(summary["verdicts"], indent=1), file=sys.stderr)
    return 0
