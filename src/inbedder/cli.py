"""The `inbedder` command: cluster your own texts by an instruction, without a workflow.

    inbedder cluster FILE --instruction "What does the customer need?" --model DIR --k 5 [--out DIR]

FILE is a CSV, TSV or JSONL file with a text column (`--text-column`, default `text`) and optionally gold
labels (`--label-column`). DIR is a model folder: a materialised one (`data/models/<name>`), a
fine-tuned one (`results/<run>/models/<model>-<recipe>`) or any transformers / sentence-transformers
folder. The texts are encoded once (the encode cache lands in OUT/cache and is reused by a rerun),
clustered with MiniBatchKMeans into k clusters under each instruction, and explained by the top words
of the generated answers. OUT gets `assignments.csv` (text, subset, mode, layer, seed, cluster[, label]),
`explanations.json`, `scores.csv` (silhouette; V-measure when labels are given) and `answers.csv`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from inbedder.cache import load_cache
from inbedder.files import atomic_path
from inbedder.model_kinds import KINDS, kind_of
from inbedder.vocabulary import MODEL_KINDS, SENTENCE_ENCODER


def model_kind(model_dir: str | Path) -> str:
    """A model folder's kind: fingerprint.json, else sentence-transformers files, else config.json architectures."""
    path = Path(model_dir)
    fingerprint = path / "fingerprint.json"
    if fingerprint.exists():
        kind = json.loads(fingerprint.read_text(encoding="utf-8")).get("kind")
        if kind in MODEL_KINDS:
            return kind
    if (path / "modules.json").exists():
        return SENTENCE_ENCODER
    config = path / "config.json"
    if not config.exists():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json); pass a materialised or trained model")
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    for arch in architectures:
        for kind in KINDS.values():
            if kind.architecture_suffix and arch.endswith(kind.architecture_suffix):
                return kind.name
    raise ValueError(f"{config}: cannot tell the model kind from architectures {architectures}; pass --kind")


def default_mode(kind: str) -> str:
    """The mode a user gets without --mode: 1st-gen for language models, prefixed for sentence encoders."""
    return kind_of(kind).default_mode


def cluster(
    file: str | Path,
    instructions: Sequence[str],
    model_dir: str | Path,
    k: int,
    out_dir: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    kind: str | None = None,
    mode: str | None = None,
    layer: int = -1,
    template: str = "inbedder",
    max_new_tokens: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Encode, cluster and explain the texts of `file` under each instruction; write the results into out_dir."""
    from inbedder import encode, evaluate, task_kinds  # mteb, torch, transformers: when a model runs

    if not instructions:
        raise ValueError("cluster: give at least one --instruction")
    kind = kind or model_kind(model_dir)
    mode = mode or default_mode(kind)
    out = Path(out_dir)
    names = ["instruction"] if len(instructions) == 1 else [f"instruction{i + 1}" for i in range(len(instructions))]
    spec = {"kind": "own", "path": str(file), "text_column": text_column, "label_column": label_column,
            "instructions": dict(zip(names, instructions, strict=True)), "k": int(k)}
    table = task_kinds.task_table("cluster", spec)
    prompts = task_kinds.task_prompts("cluster", spec, table)
    job = encode.EncodeJob(model_dir, kind, template, max_new_tokens=max_new_tokens, layers=[layer],
                           batch_size=batch_size, device=device, dtype=dtype, decoding="greedy")
    encode.encode_prompts(job, prompts, out / "cache", progress=progress)
    frame = evaluate.evaluate_cache(out / "cache", table, out / "scores.csv", out, model=Path(model_dir).name,
                                    recipe="cli", task="cluster", spec=spec, modes=[mode], layers=[layer],
                                    seeds=[seed])
    _write_answers(out)
    return frame


def _write_answers(out: Path) -> None:
    """answers.csv beside the assignments: each text's generated answer per instruction (language models)."""
    cache = load_cache(out / "cache")
    if cache.answers is None:
        return
    by_id = {a["id"]: a.get("answer", "") for a in cache.answers}
    rows = [{"text": p["text"], "instruction": p["instruction"], "answer": by_id.get(p["id"], "")} for p in cache.prompts]
    with atomic_path(out / "answers.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _summary(out: Path) -> str:
    """Human-readable clusters: size, top words and, with labels, the commonest labels."""
    data = json.loads((out / "explanations.json").read_text(encoding="utf-8"))
    lines = []
    for entry in data["explanations"]:
        lines.append(f"{entry['instruction']}  (mode {entry['mode']}, k={entry['k']}, seed {entry['seed']})")
        for c in entry["clusters"]:
            words = ", ".join(w for w, _ in c["top_words"][:6]) or "-"
            labels = c.get("labels")
            label_text = "  [" + ", ".join(f"{k} {v}" for k, v in list(labels.items())[:2]) + "]" if labels else ""
            lines.append(f"  cluster {c['cluster']:>2}  {c['size']:>5} texts  {words}{label_text}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `inbedder` command."""
    parser = argparse.ArgumentParser(prog="inbedder", description="Instruction-following text embeddings (InBedder).")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cluster", help="cluster a CSV/JSONL file of texts by an instruction and explain the clusters")
    c.add_argument("file", help="CSV, TSV or JSONL file with a text column")
    c.add_argument("--instruction", action="append", required=True,
                   help="the question the embedding should answer (repeat for several)")
    c.add_argument("--model", required=True, help="model folder (e.g. data/models/smollm2-135m)")
    c.add_argument("--k", type=int, required=True, help="number of clusters")
    c.add_argument("--out", help="output folder (default: <file stem>-clusters next to the file)")
    c.add_argument("--text-column", default="text")
    c.add_argument("--label-column", default=None, help="gold labels, if any (adds V-measure)")
    c.add_argument("--kind", choices=MODEL_KINDS, help="model kind (default: read from the folder)")
    c.add_argument("--mode", help="embedding mode (default: 1st-gen; prefixed for sentence encoders)")
    c.add_argument("--layer", type=int, default=-1)
    c.add_argument("--template", default="inbedder", help="prompt template: inbedder or alpaca")
    c.add_argument("--max-new-tokens", type=int, default=3)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    c.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `inbedder` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    file = Path(args.file)
    out = Path(args.out) if args.out else file.with_name(f"{file.stem}-clusters")
    if Path(args.model).is_dir():  # a local model folder: nothing to ask the hub
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
    try:
        frame = cluster(file, args.instruction, args.model, args.k, out, text_column=args.text_column,
                        label_column=args.label_column, kind=args.kind, mode=args.mode, layer=args.layer,
                        template=args.template, max_new_tokens=args.max_new_tokens, seed=args.seed,
                        batch_size=args.batch_size, device=args.device, dtype=args.dtype, progress=not args.quiet)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"inbedder cluster: {err}", file=sys.stderr)
        return 2
    print(_summary(out))
    scores = frame.groupby(["subset", "metric"])["value"].mean()
    for (subset, metric), value in scores.items():
        print(f"{subset}: {metric} = {value:.4f}")
    print(f"written: {out}/assignments.csv, {out}/explanations.json, {out}/scores.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
