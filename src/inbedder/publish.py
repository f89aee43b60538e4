"""Publish a finished run as a reproduction of record: `python -m inbedder.publish RESULTS_DIR DEST`.

Copies what a reader needs to check the run without rerunning it into DEST (e.g. docs/results/offline-full/):
the self-contained report page, `scores.csv` and `skipped.csv`, every fine-tune's summary, loss log and
held-out F1 curve (`training/<model>-<recipe>/`), the wall time of every job (`stage_times.csv`, from
Snakemake's benchmark files) and `README.md`: the commit and config hash the page was made from (its
`report/summary.json`), the verdicts and the time per stage. Refuses a run whose report is missing or older
than its scores, so a half-finished run is never published as the record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from inbedder.files import atomic_path, sha256_file, write_text
from inbedder.report.provenance import training_ending

TRAINING_FILES = ("train_summary.json", "train_log.csv", "heldout_curve.csv", "loss.png", "heldout_f1.png")


class PublishError(RuntimeError):
    """A run that cannot be published; the message says what is missing."""


def stage_times(run_dir: Path) -> pd.DataFrame:
    """One row per job benchmark file: stage, job, wall seconds, peak RSS (MiB)."""
    rows = []
    for path in sorted((run_dir / "benchmarks").rglob("*.tsv")):
        bench = pd.read_csv(path, sep="\t")
        if bench.empty or "s" not in bench.columns:
            continue
        rel = path.relative_to(run_dir / "benchmarks")
        rows.append({"stage": rel.parts[0], "job": str(rel.with_suffix("")), "seconds": float(bench["s"].iloc[-1]),
                     "max_rss_mib": float(bench["max_rss"].iloc[-1]) if "max_rss" in bench.columns else None})
    return pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mib"])


def _training_lines(trained: dict[str, dict]) -> list[str]:
    """The fine-tunes table: steps, why training ended, the held-out F1 curve and the time per step."""
    if not trained:
        return []
    lines = ["", "## Fine-tunes", "",
             "| fine-tune | steps | ended | held-out token F1 (step: F1) | s/step | resumed from |",
             "|---|---|---|---|---|---|"]
    for name, t in trained.items():
        curve = ", ".join(f"{p['step']}: {100 * p['f1']:.1f}" for p in t.get("heldout_curve") or []
                          if p.get("f1") is not None)
        per_step = t.get("seconds_per_step")
        lines.append(f"| {name} | {t.get('steps', '?')} | {training_ending(t) or '?'} | {curve} | "
                     f"{'?' if per_step is None else f'{per_step:.2f}'} | {t.get('resumed_from_step', 0)} |")
    return lines


def _readme(summary: dict, times: pd.DataFrame, trained: dict[str, dict], source: Path) -> str:
    git = summary.get("git") or {}
    lines = [
        f"# Reproduction of record: run `{summary.get('run')}`",
        "",
        (f"Made by `python -m inbedder.publish {source} <here>` from a finished run. Open `index.html` (one "
        "self-contained page: every number beside the paper's, with its CI, and a verdict per claim)."),
        "",
        "| | |",
        "|---|---|",
        f"| commit | `{git.get('commit', '?')}` (uncommitted changes: {git.get('dirty', '?')}) |",
        f"| config sha256 | `{summary.get('config_sha256', '?')}` |",
        f"| scores.csv sha256 | `{summary.get('scores_sha256', '?')}` |",
        f"| report rendered | {summary.get('generated', '?')} |",
        "",
        "## Verdicts",
        "",
        "| claim | " + " | ".join(next(iter(summary.get("verdicts", {}).values()), {}).keys()) + " |",
        "|---|" + "---|" * len(next(iter(summary.get("verdicts", {}).values()), {})),
    ]
    for claim, by_scope in summary.get("verdicts", {}).items():
        lines.append(f"| {claim} | " + " | ".join(str(v) for v in by_scope.values()) + " |")
    lines += _training_lines(trained)
    lines += ["", "## Time per stage (sum of job wall times, from Snakemake's benchmark files)", "",
              "| stage | jobs | minutes |", "|---|---|---|"]
    for stage, grp in times.groupby("stage", sort=False):
        lines.append(f"| {stage} | {len(grp)} | {grp['seconds'].sum() / 60:.1f} |")
    lines.append(f"| all | {len(times)} | {times['seconds'].sum() / 60:.1f} |")
    if any(t.get("resumed_from_step") for t in trained.values()):
        lines += ["", ("A fine-tune resumed after a stop (its `resumed from` above is not 0) has a benchmark "
                       "of its last sitting only; its whole training took about steps x s/step plus its "
                       "held-out checks.")]
    lines += ["", "## Files", "",
              "- `index.html`: the report; `summary.json`: its provenance and verdicts;",
              "- `scores.csv` (every score with its bootstrap CI), `skipped.csv`;",
              "- `stage_times.csv`: every job's wall time and peak memory;",
              (f"- `training/<model>-<recipe>/`: {', '.join(TRAINING_FILES)} of each fine-tune "
              f"({len(trained)}: {', '.join(trained) or 'none'})."), ""]
    return "\n".join(lines)


def publish(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a finished run's record into dest (replacing what dest held); return dest."""
    run_dir, dest = Path(run_dir), Path(dest)
    page, summary_path, scores = run_dir / "report" / "index.html", run_dir / "report" / "summary.json", \
        run_dir / "scores.csv"
    for path in (page, summary_path, scores, run_dir / "skipped.csv"):
        if not path.is_file():
            raise PublishError(f"{path} is missing: finish the run first (the same snakemake command resumes it)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("scores_sha256") and summary["scores_sha256"] != sha256_file(scores):
        raise PublishError(f"{page} was rendered from another scores.csv than {scores}: rerun the workflow so the "
                           "report is made again")
    trained = sorted(p.parent for p in (run_dir / "models").glob("*/train_summary.json"))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "training").mkdir(parents=True)
    for path in (page, summary_path, scores, run_dir / "skipped.csv"):
        shutil.copy2(path, tmp / path.name)
    for folder in trained:
        out = tmp / "training" / folder.name
        out.mkdir()
        for name in TRAINING_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, out / name)
    times = stage_times(run_dir)
    with atomic_path(tmp / "stage_times.csv") as path:
        times.to_csv(path, index=False)
    summaries = {f.name: json.loads((f / "train_summary.json").read_text(encoding="utf-8")) for f in trained}
    write_text(tmp / "README.md", _readme(summary, times, summaries, run_dir))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", help="results/<run> of a finished run")
    parser.add_argument("dest", help="folder to write (replaced), e.g. docs/results/offline-full")
    args = parser.parse_args(argv)
    try:
        out = publish(args.results_dir, args.dest)
    except PublishError as err:
        print(f"publish: {err}", file=sys.stderr)
        return 2
    print(f"published {args.results_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
