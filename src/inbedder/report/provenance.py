"""The report's other inputs, each read from the paths the workflow declares (never found by globbing):
training summaries and logs, cluster explanations, benchmark files, data manifests, model fingerprints, the
projection's embeddings; and the provenance of the page itself (git, packages, hardware)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inbedder.report.suites import Run, as_int, num
from inbedder.task_kinds import kind_class
from inbedder.tasks import read_task_table

VERSION_PACKAGES = ("inbedder-repro", "snakemake", "torch", "transformers", "sentence-transformers", "mteb",
                    "datasets", "scikit-learn", "numpy", "pandas", "safetensors", "matplotlib", "jinja2")


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def load_training(runs: Sequence[tuple[str | os.PathLike, str | os.PathLike]]) -> list[dict]:
    """Each fine-tuned model's train_summary.json and train_log.csv (step, loss, lr), given as (summary, log)."""
    out = []
    for summary_path, log_path in runs:
        summary_path, log_path = Path(summary_path), Path(log_path)
        summary = _json(summary_path)
        log = pd.read_csv(log_path)
        for col in ("step", "loss"):
            if col not in log.columns:
                raise ValueError(f"{log_path}: missing column {col!r}; expected step, loss, lr")
        for key in ("model", "recipe"):
            if not summary.get(key):
                raise ValueError(f"{summary_path}: no {key!r} (train_summary.json names its model and recipe)")
        out.append({"name": summary_path.parent.name, "model": str(summary["model"]),
                    "recipe": str(summary["recipe"]), "summary": summary, "log": log,
                    "path": str(summary_path.parent)})
    return sorted(out, key=lambda t: t["name"])


def training_rows(training: Sequence[dict]) -> list[dict]:
    """The training table: steps, speed, loss before/after, held-out answer F1 before/after."""
    rows = []
    for t in training:
        s = t["summary"]
        rows.append({
            "name": t["name"], "train_seed": (s.get("settings") or {}).get("seed"), "steps": s.get("steps"), "seconds_per_step": num(s.get("seconds_per_step")),
            "first_loss": num(s.get("first_loss")), "last_loss": num(s.get("last_loss")),
            "f1_before": num(s.get("heldout_token_f1_before")), "f1_after": num(s.get("heldout_token_f1_after")),
            "train_rows": s.get("train_rows"), "device": s.get("device"), "dtype": s.get("dtype"),
            "effective_batch": s.get("effective_batch"),
            "stopped_early": s.get("stopped_early"), "plateau_step": s.get("plateau_step"),
            "kept_step": s.get("kept_step"), "kept_metric": num(s.get("kept_metric")),
            "stop_reason": s.get("stop_reason"), "ending": training_ending(s),
            "checks": len(s.get("heldout_curve") or []),
        })
    return rows


def training_ending(summary: Mapping[str, Any]) -> str:
    """How a fine-tune ended, in a few words, from the summary's fields (the full `stop_reason` goes in
    the report's tooltip)."""
    ending = _how_training_ended(summary)
    kept = summary.get("kept_step")
    if kept is not None and kept != summary.get("steps"):  # the best checked model, not the last step's
        metric = "F1" if summary.get("heldout_metric", "token_f1") == "token_f1" else "loss"
        ending += f"; kept step {kept} (best held-out {metric})"
    return ending


def _how_training_ended(summary: Mapping[str, Any]) -> str:
    """The step where training ended and why, in a few words."""
    settings = summary.get("settings") or {}
    steps, steps_of = summary.get("steps"), summary.get("steps_of") or {}
    metric = "F1" if summary.get("heldout_metric", "token_f1") == "token_f1" else "loss"
    if summary.get("stopped_early"):
        return f"{metric} flat: stopped (best at step {summary.get('plateau_step')})"
    if steps_of.get("run") and steps_of.get("steps") == steps:
        return f"the steps of {steps_of['run']}"
    if settings.get("max_steps") and steps == settings["max_steps"]:
        return "step cap" + (f" ({metric} not yet flat)" if settings.get("stop_when_flat") else "")
    if num(summary.get("epochs_done")) is not None:
        return f"{summary['epochs_done']:g} epoch(s) done"
    return ""


def _explanation_rows(clusters: Sequence[Mapping[str, Any]], limit: int = 8) -> list[dict]:
    """Clusters, largest first: size, top words, the two commonest gold labels and the purity."""
    rows = []
    for c in sorted(clusters, key=lambda c: (-int(c["size"]), str(c["cluster"]))):
        top = sorted((c.get("labels") or {}).items(), key=lambda kv: -kv[1])[:2]
        size = int(c["size"])
        rows.append({"cluster": c["cluster"], "size": size, "words": [str(w[0]) for w in c["top_words"][:limit]],
                     "labels": [f"{k} ({v})" for k, v in top], "purity": top[0][1] / size if top and size else None})
    return rows


def load_explanations(paths: Sequence[str | os.PathLike], headline: Sequence[Run]) -> list[dict]:
    """Cluster explanations of each (model, recipe, task): the headline mode, last layer, first seed.

    Reads evaluate's `explanations.json` ({model, recipe, task, explanations: [{mode, layer, subset,
    instruction, seed, clusters}]}); a task without clusterings has an empty list and shows nothing.
    """
    wanted_modes = {(r.model, r.recipe): r.mode for r in headline}
    loaded = []
    for path in map(Path, paths):
        data = _json(path)
        for key in ("model", "recipe", "task", "explanations"):
            if key not in data:
                raise ValueError(f"{path}: no {key!r} (expected evaluate's explanations.json)")
        loaded.append((path, data))
    out = []
    for path, data in sorted(loaded, key=lambda x: (x[1]["task"], f"{x[1]['model']}-{x[1]['recipe']}")):
        entries = data["explanations"]
        if not entries:
            continue
        model, recipe = data["model"], data["recipe"]
        modes = list(dict.fromkeys(str(e["mode"]) for e in entries))
        wanted = wanted_modes.get((model, recipe))
        chosen = wanted if wanted in modes else modes[0]
        sel = [e for e in entries if str(e["mode"]) == chosen]
        layers = {str(e["layer"]) for e in sel}
        last = "-1" if "-1" in layers else max(layers, key=lambda k: as_int(k) or 0)
        sel = [e for e in sel if str(e["layer"]) == last]
        first_seed = min((e["seed"] for e in sel), key=lambda x: (x is None, x if x is not None else 0))
        groups = [{"context": f"{chosen}, view {e['subset']}" + ("" if e["seed"] is None else f", seed {e['seed']}"),
                   "instruction": e.get("instruction", ""), "rows": _explanation_rows(e["clusters"])}
                  for e in sel if e["seed"] == first_seed]
        out.append({"task": data["task"], "run": f"{model}-{recipe}", "groups": groups, "path": str(path),
                    "headline_mode": chosen, "recipe": recipe})
    return out


def load_benchmarks(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Snakemake benchmark files (s, h:m:s, max_rss, ...) at .../benchmarks/<stage>/<job>.tsv, one row per job."""
    rows = []
    for path in map(Path, paths):
        try:
            bench = pd.read_csv(path, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            raise ValueError(f"{path}: not a Snakemake benchmark file ({err})") from err
        if "s" not in bench.columns or bench.empty:
            raise ValueError(f"{path}: no 's' column (expected Snakemake's benchmark columns s, h:m:s, max_rss)")
        parts = path.with_suffix("").parts
        rel = parts[len(parts) - parts[::-1].index("benchmarks"):] if "benchmarks" in parts else parts[-1:]
        rows.append({
            "stage": rel[0] if len(rel) > 1 else "-",
            "job": "/".join(rel[1:]) if len(rel) > 1 else rel[0],
            "s": float(bench["s"].mean()),
            "max_rss": num(bench["max_rss"].max()) if "max_rss" in bench.columns else None,
            "repeats": len(bench),
        })
    return sorted(rows, key=lambda r: (r["stage"], r["job"]))


def benchmark_summary(rows: Sequence[dict]) -> list[dict]:
    """Wall time per stage: jobs, total and longest job, peak RSS."""
    if not rows:
        return []
    df = pd.DataFrame(rows)
    longest = df.loc[df[::-1].groupby("stage")["s"].idxmax()].set_index("stage")  # ties: the last job listed
    per_stage = df.groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), max_rss=("max_rss", "max"))
    out = [{"stage": stage, "jobs": int(r.jobs), "total_s": float(r.total_s), "max_s": float(longest.at[stage, "s"]),
            "max_job": longest.at[stage, "job"], "max_rss": num(r.max_rss)}
           for stage, r in per_stage.iterrows()]
    return sorted(out, key=lambda s: -s["total_s"])


def load_manifests(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Data sources of this run: data/raw/<source>/manifest.json (origin, licence, files with sha256)."""
    out = []
    for path in map(Path, paths):
        m = _json(path)
        decl = m.get("declaration") or {}
        hub = decl.get("hub") or {}
        where = (f"{decl.get('repository')} @ {decl.get('commit')}" if decl.get("repository") else
                 f"hub {hub.get('id')} @ {hub.get('revision')}" if hub else "")
        out.append({"name": m["source"], "origin": m.get("origin", ""), "licence": m.get("licence", ""),
                    "where": where, "files": [{"name": f["name"], "sha256": f["sha256"], "bytes": f.get("bytes")}
                                              for f in m["files"]]})
    return sorted(out, key=lambda m: m["name"])


def load_model_fingerprints(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Materialised models (data/models/<model>/fingerprint.json): name, kind, source, weights sha256."""
    out = []
    for path in map(Path, paths):
        fp = _json(path)
        src = fp.get("source")
        out.append({"name": path.parent.name, "kind": fp.get("kind", ""), "sha256": fp.get("sha256", ""),
                    "source": json.dumps(src, sort_keys=True) if isinstance(src, (dict, list)) else str(src or "")})
    return sorted(out, key=lambda m: m["name"])


def load_projection(table_path: str | os.PathLike | None, caches: Sequence[str | os.PathLike], runs: Sequence[Run],
                    layers: Mapping[Run, str]) -> tuple[dict, dict, str]:
    """Embeddings of a two-view clustering task under each view's instruction, from the encode caches given.

    `table_path`: the task's table (`results/<run>/tasks/<task>.parquet`: the rows and instructions its
    caches were encoded from); `caches`: the task's cache folders (or their meta.json), one per
    `<model>-<recipe>`. Returns (views, labels, reason): views = run label -> view -> (X, texts); labels =
    view -> text -> label; reason is non-empty when nothing could be loaded.
    """
    if table_path is None:
        return {}, {}, "the run has no table of the two-view clustering task"
    table_path = Path(table_path)
    if not table_path.is_file():
        return {}, {}, f"task table {table_path} not found"
    table = read_task_table(table_path)
    if not kind_class(table.attrs.get("kind"), f"{table_path}: kind").labelled_views:
        raise ValueError(f"{table_path}: the projection needs a clustering task table, not {table.attrs.get('kind')!r}")
    for col in ("subset", "instruction", "text", "label"):
        if col not in table.columns:
            raise ValueError(f"{table_path}: missing column {col!r} (clustering task table: subset, instruction, text, "
                             "label)")
    labels = {v: dict(zip(g["text"], g["label"].astype(str), strict=True)) for v, g in table.groupby("subset")}
    instruction = {v: str(g["instruction"].iloc[0]) for v, g in table.groupby("subset")}
    from inbedder import pooling  # torch-free, but only this figure needs it

    by_name = {}
    for cache in map(Path, caches):
        cache = cache.parent if cache.name == "meta.json" else cache
        by_name[cache.parent.name] = cache
    views: dict[str, dict] = {}
    problems = []
    for run in runs:
        cache = by_name.get(f"{run.model}-{run.recipe}")
        if cache is None:
            problems.append(f"no cache of {run.model}-{run.recipe} among the inputs")
            continue
        layer = as_int(layers.get(run, "-1"))
        try:
            vectors = pooling.lookup(cache, run.mode, layer if layer is not None else -1)
        except Exception as err:  # noqa: BLE001 - an optional figure: an unreadable cache is reported, not fatal
            problems.append(f"{cache} ({run.mode}): {type(err).__name__}: {err}")
            continue
        per_view = {}
        for view, texts in labels.items():
            keep = [t for t in texts if (t, instruction[view]) in vectors]
            if keep:
                per_view[view] = (np.stack([np.asarray(vectors[(t, instruction[view])]) for t in keep]), keep)
        if per_view:
            views[run.label] = per_view
    return views, labels, "" if views else ("; ".join(problems) or "no embeddings found")


# ----------------------------------------------------------------------------------------------------------
# The page's own provenance
# ----------------------------------------------------------------------------------------------------------


def package_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers ("not installed" where absent)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(repo_root: str | os.PathLike) -> dict[str, str]:
    """Commit, branch and whether the working tree has uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=20,
                                 check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit or "no commit (not a git checkout, or nothing committed yet)",
        "short": commit[:10] if commit else "uncommitted",
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") or "",
        "dirty": "yes" if status else ("no" if status is not None else "unknown"),
    }


def hardware() -> dict[str, str]:
    """The machine that rendered the report: CPU, cores, memory, GPUs (nvidia-smi where present)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    gpu = "none found"
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        if res.returncode == 0 and res.stdout.strip():
            gpu = "; ".join(x.strip() for x in res.stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu, "cores": f"{affinity} usable of {os.cpu_count()}",
            "memory": mem, "gpu": gpu}
