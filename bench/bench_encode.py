"""Benchmark of the encode stage against the naive approach, in one process (`make bench`).

On the real SmolLM2-135M and Banking77 test prompts ("What does the customer need?"):
- naive: what the authors' code does, HF `generate(max_new_tokens=3, output_hidden_states=True,
  return_dict_in_generate=True)` keeping every layer, unsorted batches of 32, fp32;
- ours: `inbedder.encode.encode_prompts` (length-sorted batches, KV cache, LM head on the last position,
  configured layers only, bf16 by default), for 1st-gen (1 new token) and avg-gen (3 new tokens),
  cache files written.
The prompts are processed in rounds (a slice each), every approach once per round, so that other
work on the machine slows them alike. Reported: prompts/s and speed-ups, the achieved GFLOP/s of the
1st-gen forward as a fraction of a matmul peak measured here in the same dtype, the cache bytes per
prompt against the minimum, and agreement of our embeddings with the naive ones. The last line printed
is one JSON object (also written to bench/out/encode.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from inbedder import encode, pooling
from inbedder.files import write_json
from inbedder.models import load_lm
from inbedder.sources import fetch, resolve_origin
from inbedder.text import format_prompt

ROOT = Path(__file__).resolve().parents[1]

INSTRUCTION = "What does the customer need?"
GOALS = {"first_gen_speedup": 3.0, "avg_gen_speedup": 1.5, "peak_fraction": 0.7, "cache_bytes_ratio": 1.1}


def banking_test_csv() -> Path:
    """Banking77's test.csv, fetched as the workflow fetches it (the mirror when found, else downloaded)."""
    raw = ROOT / "data" / "raw" / "banking77"
    if not (raw / "manifest.json").exists():
        origin = resolve_origin("auto", "hub", cwd=ROOT)
        fetch("banking77", raw, mirror=origin.mirror, offline="hub")
    return raw / "test.csv"


def banking_prompts(n: int) -> list[dict[str, str]]:
    with open(banking_test_csv(), encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [{"text": r["text"], "instruction": INSTRUCTION} for r in rows]


def matmul_peak(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Best GFLOP/s of square matmuls (1024, 2048) in `dtype` on this machine."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            start_one = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start_one) / 1e9)
            reps += 1
    return best


def naive_round(model, tok, prompts, batch_size: int = 32) -> tuple[float, dict[str, np.ndarray]]:
    """The authors' approach on a slice: unsorted batches, generate keeping every layer. (seconds, embeddings)"""
    tok.padding_side = "left"
    first, avg = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = [format_prompt("inbedder", p["instruction"], p["text"]) for p in prompts[i : i + batch_size]]
            enc = tok(batch, return_tensors="pt", padding=True)
            out = model.generate(**enc, max_new_tokens=3, do_sample=False, output_hidden_states=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
            prompt_states = out.hidden_states[0][-1]  # [B, P, H], last layer
            steps = [prompt_states[:, -1]] + [h[-1][:, -1] for h in out.hidden_states[1:]]
            first.append(steps[0].float())
            avg.append(torch.stack(steps, 1).float().mean(1))
    seconds = time.perf_counter() - start
    return seconds, {"1st-gen": torch.cat(first).numpy(), "avg-gen": torch.cat(avg).numpy()}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "smollm2-135m"))
    parser.add_argument("--n", type=int, default=512, help="Banking77 test prompts")
    parser.add_argument("--rounds", type=int, default=4, help="slices processed in turn by each approach")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--budget-s", type=float, default=240, help="start no new round after this many seconds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "encode.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    load_start = os.getloadavg()
    print(f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average at start {load_start}")

    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")

    prompts = banking_prompts(args.n)
    naive_model, tok = load_lm(args.model, "causal", device="cpu", dtype="float32")  # transformers' defaults
    ours_model, ours_tok = encode.load_model(args.model, "causal", "cpu", args.dtype)
    base = ours_model.base_model
    params_all = sum(p.numel() for p in ours_model.parameters())
    params_body = sum(p.numel() for n, p in base.named_parameters() if "embed_tokens" not in n)
    vocab, hidden = ours_model.get_output_embeddings().weight.shape

    # time run_lm (tokenise + forward + decode) inside encode_prompts for the forward's GFLOP/s
    forward_seconds: list[float] = []
    real_run_lm = encode.run_lm

    def timed_run_lm(*a, **kw):
        start = time.perf_counter()
        result = real_run_lm(*a, **kw)
        forward_seconds.append(time.perf_counter() - start)
        return result

    encode.run_lm = timed_run_lm
    work = Path(tempfile.mkdtemp(prefix="bench_encode_"))
    warm = prompts[:8]
    naive_round(naive_model, tok, warm, 8)
    encode.encode_prompts(args.model, "causal", warm, "inbedder", work / "warm", max_new_tokens=3,
                          batch_size=args.batch_size, device="cpu", dtype=args.dtype, progress=False,
                          loaded=(ours_model, ours_tok))
    forward_seconds.clear()

    naive_emb: dict[str, list[np.ndarray]] = {"1st-gen": [], "avg-gen": []}
    ours_emb: dict[str, list[np.ndarray]] = {"1st-gen": [], "avg-gen": [], "gen_ids": []}
    rounds: list[dict[str, float]] = []
    cache_bytes, minimum_bytes = 0, 0
    size = -(-len(prompts) // args.rounds)
    began = time.perf_counter()
    for r in range(args.rounds):
        chunk = prompts[r * size : (r + 1) * size]
        if not chunk:
            break
        if rounds and time.perf_counter() - began > args.budget_s:
            print(f"time budget of {args.budget_s}s spent: stopping after {len(rounds)} round(s)")
            break
        tokens = sum(len(ours_tok(format_prompt("inbedder", p["instruction"], p["text"])).input_ids) for p in chunk)
        record = {"prompts": len(chunk), "tokens": tokens}
        record["naive"], emb = naive_round(naive_model, tok, chunk)
        for k, collected in naive_emb.items():
            collected.append(emb[k])
        for key, steps in (("first_gen", 1), ("avg_gen", 3)):
            out = work / f"{key}-{r}"
            forward_seconds.clear()
            start = time.perf_counter()
            meta = encode.encode_prompts(args.model, "causal", chunk, "inbedder", out, max_new_tokens=steps,
                                         batch_size=args.batch_size, device="cpu", dtype=args.dtype,
                                         progress=False, loaded=(ours_model, ours_tok))
            record[key] = time.perf_counter() - start
            assert meta["prompts"]["n"] == len(chunk)
            cache = pooling.load_cache(out)
            if key == "first_gen":
                record["forward"] = forward_seconds[0]
                ours_emb["1st-gen"].append(pooling.embed(cache, "1st-gen"))
            else:
                ours_emb["avg-gen"].append(pooling.embed(cache, "avg-gen"))
                ours_emb["gen_ids"].append(cache.tensors["gen_ids"])
                cache_bytes += (out / "hidden.safetensors").stat().st_size
                valid = cache.tensors["gen_mask"].sum()
                # the states the modes need (1st-gen, prompt mean, each valid later step) in float32,
                # plus one int32 per valid token id and per prompt length
                minimum_bytes += int((2 * len(chunk) + valid - len(chunk)) * hidden * 4 + valid * 4 + len(chunk) * 4)
        rounds.append(record)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in record.items()), flush=True)
    encode.run_lm = real_run_lm

    n = sum(r["prompts"] for r in rounds)
    total = {k: sum(r[k] for r in rounds) for k in ("naive", "first_gen", "avg_gen", "forward", "tokens")}
    rate = {k: n / total[k] for k in ("naive", "first_gen", "avg_gen")}
    # per round, both approaches ran back to back on the same prompts: the median of the per-round
    # ratios is robust to load from other users that hits one round; GFLOP/s: the best round, as the peak
    speedup = {k: float(np.median([r["naive"] / r[k] for r in rounds])) for k in ("first_gen", "avg_gen")}
    per_round_flops = [(2 * params_all * r["tokens"], 2 * params_body * r["tokens"] + 2 * vocab * hidden * r["prompts"])
                       for r in rounds]
    gflops_all = max(f[0] / r["forward"] for f, r in zip(per_round_flops, rounds, strict=True)) / 1e9
    gflops = max(f[1] / r["forward"] for f, r in zip(per_round_flops, rounds, strict=True)) / 1e9
    gflops_mean = sum(f[0] for f in per_round_flops) / total["forward"] / 1e9
    cat = {k: np.concatenate(v) for k, v in {**naive_emb, **{f"ours_{k}": v for k, v in ours_emb.items()}}.items()}
    cos_first = cosine_rows(cat["1st-gen"], cat["ours_1st-gen"])
    result = {
        "model": Path(args.model).name,
        "prompts": n,
        "real_tokens": int(total["tokens"]),
        "dtype": args.dtype,
        "naive_dtype": "float32",
        "batch_size": args.batch_size,
        "naive_prompts_per_s": round(rate["naive"], 2),
        "first_gen_prompts_per_s": round(rate["first_gen"], 2),
        "avg_gen_prompts_per_s": round(rate["avg_gen"], 2),
        "first_gen_speedup": round(speedup["first_gen"], 3),
        "avg_gen_speedup": round(speedup["avg_gen"], 3),
        "first_gen_speedup_total": round(rate["first_gen"] / rate["naive"], 3),
        "avg_gen_speedup_total": round(rate["avg_gen"] / rate["naive"], 3),
        "speedup_definition": "median over rounds of naive time / our time on the same prompts "
                              "(*_total: ratio of the summed times)",
        "first_gen_forward_gflops": round(gflops_all, 1),
        "first_gen_forward_gflops_executed": round(gflops, 1),
        "first_gen_forward_gflops_mean": round(gflops_mean, 1),
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "peak_fraction": round(gflops_all / peaks[args.dtype], 3),
        "peak_fraction_executed": round(gflops / peaks[args.dtype], 3),
        "peak_fraction_mean": round(gflops_mean / peaks[args.dtype], 3),
        "flops_counted": "peak_fraction: 2 x all parameters x real prompt tokens / forward time (the issue's "
                         "definition), best round; peak_fraction_executed: only the FLOPs that run, 2 x "
                         "non-embedding parameters x real tokens + 2 x LM head x prompts (the embedding lookup "
                         "does none), best round; peak_fraction_mean: the issue's definition over all rounds",
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "cache_bytes_per_prompt": round(cache_bytes / n, 1),
        "minimum_bytes_per_prompt": round(minimum_bytes / n, 1),
        "cache_bytes_ratio": round(cache_bytes / minimum_bytes, 4),
        # the authors' embeds.safetensors: 5 pooled modes x every layer (embeddings + 30) x H float32
        "authors_cache_bytes_per_prompt": int((base.config.num_hidden_layers + 1) * hidden * 4 * 5),
        "cosine_first_gen_vs_naive_min": round(float(cos_first.min()), 5),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    same = np.all(cat["ours_gen_ids"][:, :3] >= 0, axis=1)
    cos_avg = cosine_rows(cat["avg-gen"][same], cat["ours_avg-gen"][same])
    result["cosine_avg_gen_vs_naive_median"] = round(float(np.median(cos_avg)), 5)
    result["goals_met"] = {k: (result[k] <= goal if k == "cache_bytes_ratio" else result[k] >= goal)
                           for k, goal in GOALS.items()}
    shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, result)
    for key in ("naive_prompts_per_s", "first_gen_prompts_per_s", "avg_gen_prompts_per_s", "first_gen_speedup",
                "avg_gen_speedup", "first_gen_speedup_total", "avg_gen_speedup_total", "first_gen_forward_gflops",
                "peak_fraction", "peak_fraction_executed", "peak_fraction_mean",
                "cache_bytes_ratio", "load_average_start", "load_average_end"):
        print(f"{key}: {result[key]}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
