"""Benchmark of a fine-tuning step (`make bench`): tokens/s and the share of the matmul peak reached.

SmolLM2-135M (or `--model`) at the offline recipe's shapes: C3 QA rows as the InBedder recipe
encodes them, batches of 8, max length 256, bf16 autocast on CPU, AdamW. Three variants:
- `full`: batches drawn at random, LM head and loss over every position (transformers' default,
  what training did before);
- `answer_only`: random batches, LM head and loss only at the label positions (answer + EOS;
  `inbedder.train_loop.answer_only_loss`);
- `ours`: what `inbedder.train` does now: answer-only, the batches of transformers'
  LengthGroupedSampler (random megabatches of 50 batches, each sorted by length), taken in a random
  order so that every variant sees sequences of the same length distribution.
They run in rounds, one after the other on fresh batches of the same kind, so that load from other
work on the machine hits them alike; speed-ups are medians of the per-round ratios of tokens/s.
The peak fraction counts 6 x all parameters x real tokens / step time over the bf16 matmul peak
measured in this process (`inbedder.throughput`), best round; `*_executed` counts the LM head only
where it ran. The last line printed is one JSON object (also written to `--out`); `--merge FILE`
folds in another benchmark's JSON (make bench: the encode benchmark's) so the line holds both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from inbedder.files import write_json
from inbedder.loading import load_lm
from inbedder.throughput import count_parameters, matmul_peak_gflops, train_throughput
from inbedder.train_data import Collator, encode_example
from inbedder.train_loop import answer_only_loss

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "answer_only", "ours")
GOAL = {"train_peak_fraction": 0.40}


def c3_rows() -> list[dict[str, str]]:
    """The offline InBedder recipe's training rows: data/prepared/c3_qa.parquet, built as the workflow builds it."""
    import pandas as pd

    prepared = ROOT / "data" / "prepared" / "c3_qa.parquet"
    if not prepared.exists():
        from inbedder.datasets import prepare
        from inbedder.sources import fetch, resolve_origin

        raw = ROOT / "data" / "raw"
        if not (raw / "c3" / "manifest.json").exists():
            origin = resolve_origin("auto", "hub", cwd=ROOT)
            fetch("c3", raw / "c3", mirror=origin.mirror, offline="hub")
        prepare("c3_qa", raw, prepared)
    return pd.read_parquet(prepared)[["instruction", "input", "output"]].to_dict("records")


def batch_orders(lengths: list[int], batch_size: int, seed: int) -> dict[str, list[list[int]]]:
    """Row indices of the batches of each variant: a random permutation, and the length-grouped order."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    grouped = get_length_grouped_indices(lengths, batch_size, generator=generator)

    def chunk(order: list[int]) -> list[list[int]]:
        return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]

    random_batches = chunk(shuffled)
    # grouped batches in a random order: each is still of one length, but the rounds draw short and
    # long ones alike (the sampler's own order starts with the longest megabatch's longest batches)
    grouped_batches = chunk(grouped)
    mixed = torch.randperm(len(grouped_batches), generator=generator).tolist()
    return {
        "full": random_batches,
        "answer_only": random_batches[::-1],
        "ours": [grouped_batches[i] for i in mixed],
    }


def run_steps(model, optimizer, batches, answer_only: bool) -> dict[str, float]:
    """Train on `batches` (one optimizer step each): seconds, real and padded tokens, LM-head positions."""
    totals = {"seconds": 0.0, "cpu": 0.0, "real": 0, "padded": 0, "head": 0, "steps": 0}
    model.train()
    for batch in batches:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if answer_only:
                loss, head = answer_only_loss(model, batch)
            else:
                loss, head = model(**batch).loss, int(batch["attention_mask"].sum())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        totals["seconds"] += time.perf_counter() - start
        totals["cpu"] += time.process_time() - cpu
        totals["real"] += int(batch["attention_mask"].sum())
        totals["padded"] += int(batch["input_ids"].numel())
        totals["head"] += head
        totals["steps"] += 1
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "smollm2-135m"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per variant per round")
    parser.add_argument(
        "--budget-s", type=float, default=300, help="start no new round after this many seconds"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "train.json"))
    parser.add_argument("--merge", default=None, help="a JSON file whose keys the last line also carries")
    args = parser.parse_args()
    torch.manual_seed(0)
    load_start = os.getloadavg()
    print(f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average at start {load_start}")

    model, tok = load_lm(args.model, "causal", dtype="float32")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = c3_rows()
    encoded = [encode_example(tok, "causal", "inbedder", r, args.max_length) for r in rows]
    orders = batch_orders([len(e.input_ids) for e in encoded], args.batch_size, seed=0)
    collate = Collator(pad)

    def batches(variant: str, start: int, n: int) -> list[dict[str, torch.Tensor]]:
        picked = orders[variant][start : start + n]
        return [
            collate([{"input_ids": encoded[i].input_ids, "labels": encoded[i].labels} for i in b])
            for b in picked
        ]

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # the speed, not the result, is measured
    peaks = [matmul_peak_gflops("bfloat16")]
    for variant in VARIANTS:  # warm-up: one step each
        run_steps(model, optimizer, batches(variant, 0, 1), answer_only=variant != "full")

    rounds: list[dict[str, dict[str, float]]] = []
    began = time.perf_counter()
    for r in range(args.rounds):
        if rounds and time.perf_counter() - began > args.budget_s:
            print(f"time budget of {args.budget_s}s spent: stopping after {len(rounds)} round(s)")
            break
        start = 1 + r * args.steps
        record = {
            v: run_steps(model, optimizer, batches(v, start, args.steps), v != "full") for v in VARIANTS
        }
        rounds.append(record)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(
                f"{v} {t['real'] / t['seconds']:.0f} tok/s (pad {1 - t['real'] / t['padded']:.2f})"
                for v, t in record.items()
            ),
            flush=True,
        )
    peaks.append(matmul_peak_gflops("bfloat16"))
    peak = max(peaks)

    params = count_parameters(model)
    result: dict[str, object] = {
        "train_model": Path(args.model).name,
        "train_shapes": {
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "rows": "c3_qa",
            "autocast": "bfloat16",
        },
        "train_steps_per_variant": len(rounds) * args.steps,
    }
    for variant in VARIANTS:
        total = {k: sum(r[variant][k] for r in rounds) for k in ("seconds", "cpu", "real", "padded", "head")}
        best = max(rounds, key=lambda r, v=variant: r[v]["real"] / r[v]["seconds"])[variant]
        overall = train_throughput(
            params,
            real_tokens=total["real"],
            padded_tokens=total["padded"],
            head_positions=total["head"],
            seconds=total["seconds"],
            peak_gflops=peak,
            peak_dtype="bfloat16",
        )
        best_round = train_throughput(
            params,
            real_tokens=best["real"],
            padded_tokens=best["padded"],
            head_positions=best["head"],
            seconds=best["seconds"],
            peak_gflops=peak,
            peak_dtype="bfloat16",
        )
        suffix = "" if variant == "ours" else f"_{variant}"
        result[f"train_tokens_per_s{suffix}"] = overall["tokens_per_s"]
        result[f"train_peak_fraction{suffix}"] = best_round["train_peak_fraction"]
        result[f"train_peak_fraction_executed{suffix}"] = best_round["train_peak_fraction_executed"]
        result[f"train_peak_fraction_mean{suffix}"] = overall["train_peak_fraction"]
        result[f"train_padding_fraction{suffix}"] = overall["padding_fraction"]
        result[f"train_seconds_per_step{suffix}"] = round(total["seconds"] / (len(rounds) * args.steps), 3)
        # CPU seconds / threads: what a step would take with the machine to itself
        result[f"train_cpu_seconds_per_step{suffix}"] = round(
            total["cpu"] / torch.get_num_threads() / (len(rounds) * args.steps), 3
        )

    def speedup(a: str, b: str) -> float:
        return round(
            statistics.median(
                (r[a]["real"] / r[a]["seconds"]) / (r[b]["real"] / r[b]["seconds"]) for r in rounds
            ),
            3,
        )

    result.update(
        {
            "train_answer_only_speedup": speedup("answer_only", "full"),
            "train_speedup": speedup("ours", "full"),
            "train_speedup_definition": "median over rounds of tokens/s ratios: answer_only vs full (random batches "
            "both), ours (length-grouped + answer-only) vs full",
            "train_matmul_peak_gflops_bf16": round(peak, 1),
            "train_flops_counted": "train_peak_fraction: 6 x all parameters x real tokens / step time / bf16 matmul "
            "peak, best round (the goal's definition); *_executed: 6 x non-embedding "
            "parameters x real tokens + 6 x LM head x the positions it ran on; *_mean: "
            "all rounds",
            "train_rounds": [
                {v: {k: round(x, 3) for k, x in t.items()} for v, t in r.items()} for r in rounds
            ],
            "train_load_average_start": [round(x, 2) for x in load_start],
            "train_load_average_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    result["train_goals_met"] = {k: result[k] >= goal for k, goal in GOAL.items()}
    write_json(args.out, result)
    for key in (
        "train_tokens_per_s_full",
        "train_tokens_per_s_answer_only",
        "train_tokens_per_s",
        "train_answer_only_speedup",
        "train_speedup",
        "train_peak_fraction_full",
        "train_peak_fraction",
        "train_peak_fraction_executed",
        "train_padding_fraction_full",
        "train_padding_fraction",
        "train_load_average_start",
        "train_load_average_end",
    ):
        print(f"{key}: {result[key]}")
    merged = dict(result)
    if args.merge:
        merged = {**json.loads(Path(args.merge).read_text(encoding="utf-8")), **result}
    print(json.dumps(merged))


if __name__ == "__main__":
    main()
