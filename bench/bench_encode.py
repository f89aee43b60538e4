"""Benchmark of the encode stage against the naive approach, and of its memory (`make bench`).

On the real SmolLM2-135M and Banking77 test prompts ("What does the customer need?"):
- naive: what the authors' code does, HF `generate(max_new_tokens=3, output_hidden_states=True,
  return_dict_in_generate=True)` keeping every layer, unsorted batches of 32;
- ours: `inbedder.encode.encode_prompts` (length-sorted batches, KV cache, LM head on the last position,
  configured layers only, states written to disk as batches finish), for 1st-gen (1 new token) and
  avg-gen (3 new tokens), cache files written.
Both run in bf16 and in fp32 (`--dtypes`), side by side: the prompts are processed in rounds (a slice
each), every approach in every dtype once per round, so that other work on the machine slows them
alike; speed-ups are medians of the per-round ratios in the same dtype (`*_speedup_bf16`,
`*_speedup_fp32`). The old keys are kept: `first_gen_speedup` / `avg_gen_speedup` compare ours in
`--dtype` with the naive approach in fp32 (transformers' default, the authors' setting).
Reported too: prompts/s, the achieved GFLOP/s of the 1st-gen forward as a fraction of a matmul peak
measured here in the same dtype, the cache bytes per prompt against the minimum, agreement of our
embeddings with the naive ones, and `encode_rss_ratio`: the peak RSS (VmHWM) of the workflow's encode
job (workflow/scripts/encode_task.py, run as Snakemake runs it, in a fresh process each) on a task of
`--rss-large` prompts over one of `--rss-small` prompts (Banking77 train texts, by default the same
`--rss-small` texts under numbered instructions, so that the prompt lengths match; flat memory: <= 1.2).
The last line printed is one JSON object (also written to bench/out/encode.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from inbedder import encode, pooling
from inbedder.files import write_json
from inbedder.loading import load_lm
from inbedder.sources import fetch, resolve_origin
from inbedder.text import format_prompt

ROOT = Path(__file__).resolve().parents[1]

INSTRUCTION = "What does the customer need?"
SHORT = {"bfloat16": "bf16", "float32": "fp32"}
NAIVE_BATCH = 32  # the authors' batches: unsorted, padded to their longest prompt
# goals: at least these values, but at most for the ratios of bytes
GOALS = {"first_gen_speedup_bf16": 2.0, "first_gen_speedup_fp32": 2.0, "avg_gen_speedup_bf16": 1.5,
         "avg_gen_speedup_fp32": 1.5, "peak_fraction_executed": 0.75, "cache_bytes_ratio": 1.1,
         "encode_rss_ratio": 1.2}
AT_MOST = ("cache_bytes_ratio", "encode_rss_ratio")


def banking_csv(split: str = "test") -> Path:
    """Banking77's <split>.csv, fetched as the workflow fetches it (the mirror when found, else downloaded)."""
    raw = ROOT / "data" / "raw" / "banking77"
    if not (raw / "manifest.json").exists():
        origin = resolve_origin("auto", "hub", cwd=ROOT)
        fetch("banking77", raw, mirror=origin.mirror, offline="hub")
    return raw / f"{split}.csv"


def banking_prompts(n: int) -> list[dict[str, str]]:
    with open(banking_csv(), encoding="utf-8") as fh:
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


def naive_round(model, tok, prompts, batch_size: int = NAIVE_BATCH) -> tuple[float, dict[str, np.ndarray]]:
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


# ----------------------------------------------------------------------------------------------
# peak memory of the encode job


def rss_child(spec_file: str) -> None:
    """In a fresh process: run workflow/scripts/encode_task.py as Snakemake would, print its peak RSS."""
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    out = Path(spec["out"])
    snakemake = SimpleNamespace(
        input=SimpleNamespace(table=spec["table"], model=str(Path(spec["model"]) / "fingerprint.json"), re_encoder=[]),
        output=[str(out / "meta.json")], log=[str(out.parent / f"{out.name}.log")], threads=spec["threads"],
        params=SimpleNamespace(settings=spec["settings"]), wildcards=SimpleNamespace(model="smollm2-135m",
                                                                                     task=out.name))
    loaded: dict[str, int] = {}
    real_load = encode.load_model

    def load_then_reset_peak(*a, **kw):
        """After the model is loaded: note the peak so far, then reset it (Linux: clear_refs 5)."""
        model = real_load(*a, **kw)
        loaded["vmhwm_kb"] = _status_kb("VmHWM")
        try:
            Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
            loaded["reset"] = 1
        except OSError:
            loaded["reset"] = 0
        return model

    encode.load_model = load_then_reset_peak
    start = time.perf_counter()
    runpy.run_path(str(ROOT / "workflow" / "scripts" / "encode_task.py"), init_globals={"snakemake": snakemake},
                   run_name="__main__")
    seconds = time.perf_counter() - start
    hwm = _status_kb("VmHWM")
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    print(json.dumps({"prompts": meta["prompts"]["n"], "seconds": round(seconds, 2),
                      "vmhwm_kb": max(hwm, loaded.get("vmhwm_kb", 0)),
                      "after_load_vmhwm_kb": hwm if loaded.get("reset") else None,
                      "hidden_bytes": meta["files"]["hidden.safetensors"]["bytes"]}))


def _status_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:"))


def encode_rss(model: str, sizes: tuple[int, int], work: Path, dtype: str, max_new_tokens: int,
               batch_size: int, threads: int, prompts: str = "repeated") -> dict[str, object]:
    """Peak RSS of the encode job at each size, in a fresh process each (smallest first).

    `prompts`: "repeated": the first `sizes[0]` Banking77 train texts under numbered instructions
    ("... (1)", "... (2)", ...: as many tokens each), so both tasks have the same prompt lengths and
    only the number of prompts differs; "distinct": the first N distinct train texts (the larger task
    also has longer prompts, whose activations take more memory).
    """
    import pandas as pd

    from inbedder.tasks import write_task_table

    with open(banking_csv("train"), encoding="utf-8") as fh:
        texts = list(dict.fromkeys(r["text"] for r in csv.DictReader(fh)))
    if prompts == "repeated":
        texts = texts[: sizes[0]]
    records = {}
    for n in sizes:
        rows = [{"subset": "intent", "text": texts[k % len(texts)], "label": "x",
                 "instruction": f"{INSTRUCTION} ({k // len(texts) + 1})"} for k in range(n)]
        table = work / f"rss-{n}.parquet"
        write_task_table(pd.DataFrame(rows), table, task=f"Rss{n}", kind="clustering", limit=None)
        settings = {"kind": "causal", "template": "inbedder", "max_new_tokens": max_new_tokens, "layers": [-1],
                    "batch_size": batch_size, "device": "cpu", "dtype": dtype, "decoding": "greedy",
                    "re_encode_multi": False, "method": {}, "filter_instructions": [INSTRUCTION],
                    "keep_last_words": None}
        spec = work / f"rss-{n}.json"
        spec.write_text(json.dumps({"table": str(table), "model": model, "out": str(work / f"rss-cache-{n}"),
                                    "threads": threads, "settings": settings}), encoding="utf-8")
        done = subprocess.run([sys.executable, __file__, "--rss-child", str(spec)], capture_output=True, text=True,
                              check=False, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"encode of {n} prompts failed:\n{done.stderr[-3000:]}")
        records[n] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"encode job, {n} prompts: peak RSS {records[n]['vmhwm_kb'] / 1024:.0f} MiB (after the model "
              f"load: {(records[n]['after_load_vmhwm_kb'] or 0) / 1024:.0f} MiB), {records[n]['seconds']:.1f} s",
              flush=True)
    small, large = (records[n] for n in sizes)
    after = small["after_load_vmhwm_kb"] and large["after_load_vmhwm_kb"]
    return {"encode_rss_ratio": round(large["vmhwm_kb"] / small["vmhwm_kb"], 4),
            "encode_rss_mib": {str(n): round(r["vmhwm_kb"] / 1024, 1) for n, r in records.items()},
            # the peak once the model is loaded (the load's own peak left out): what could grow with the prompts
            "encode_rss_ratio_after_load": round(large["after_load_vmhwm_kb"] / small["after_load_vmhwm_kb"], 4)
            if after else None,
            "encode_rss_after_load_mib": {str(n): round(r["after_load_vmhwm_kb"] / 1024, 1) if after else None
                                          for n, r in records.items()},
            "encode_rss_seconds": {str(n): r["seconds"] for n, r in records.items()},
            "encode_rss_hidden_mib": {str(n): round(r["hidden_bytes"] / 2**20, 2) for n, r in records.items()},
            "encode_rss_setup": f"workflow/scripts/encode_task.py in a fresh process per size, SmolLM2 {dtype}, "
                                f"max_new_tokens {max_new_tokens}, batch {batch_size}, {threads} threads; "
                                f"{prompts} prompts; peak RSS = VmHWM; after_load: VmHWM reset once the model "
                                "is loaded"}


# ----------------------------------------------------------------------------------------------
# speed, side by side in each dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "smollm2-135m"))
    parser.add_argument("--n", type=int, default=512, help="Banking77 test prompts (each dtype runs all of them)")
    parser.add_argument("--rounds", type=int, default=4, help="slices processed in turn by each approach")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="our dtype for the old keys (first_gen_speedup, peak_fraction, ...)")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="the dtypes compared side by side")
    parser.add_argument("--budget-s", type=float, default=300, help="start no new round after this many seconds")
    parser.add_argument("--rss-small", type=int, default=512)
    parser.add_argument("--rss-large", type=int, default=4096)
    parser.add_argument("--rss-new-tokens", type=int, default=1)
    parser.add_argument("--rss-prompts", default="repeated", choices=["repeated", "distinct"],
                        help="the tasks' prompts (encode_rss)")
    parser.add_argument("--skip-rss", action="store_true", help="leave out the peak-memory measurement")
    parser.add_argument("--skip-speed", action="store_true", help="only the peak-memory measurement")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "encode.json"))
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if args.dtype not in dtypes or "float32" not in dtypes:
        parser.error("--dtypes must hold --dtype and float32 (the old keys compare with the naive approach in fp32)")
    torch.manual_seed(0)
    load_start = os.getloadavg()
    print(f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average at start {load_start}")
    work = Path(tempfile.mkdtemp(prefix="bench_encode_"))
    result: dict[str, object] = {"model": Path(args.model).name}
    if not args.skip_rss:
        result.update(encode_rss(args.model, (args.rss_small, args.rss_large), work, args.dtype, args.rss_new_tokens,
                                 args.batch_size, torch.get_num_threads(), args.rss_prompts))
    if not args.skip_speed:
        result.update(speed(args, dtypes, work))
    result["load_average_start"] = [round(x, 2) for x in load_start]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["goals_met"] = {k: (result[k] <= goal if k in AT_MOST else result[k] >= goal)
                           for k, goal in GOALS.items() if k in result}
    shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, result)
    for key, value in result.items():
        if not isinstance(value, (dict, list, str)) or key.startswith("load_average"):
            print(f"{key}: {value}")
    print(json.dumps(result))


def speed(args, dtypes: list[str], work: Path) -> dict[str, object]:
    """Naive and ours in each dtype, interleaved in rounds over the same prompts."""
    peaks = {d: matmul_peak(getattr(torch, d)) for d in dtypes}
    print("matmul peak: " + ", ".join(f"{SHORT[d]} {v:.0f} GFLOP/s" for d, v in peaks.items()))
    prompts = banking_prompts(args.n)
    naive = {d: load_lm(args.model, "causal", device="cpu", dtype=d) for d in dtypes}  # transformers' defaults
    ours = {d: encode.load_model(args.model, "causal", "cpu", d) for d in dtypes}
    ours_tok = ours[dtypes[0]][1]
    model0 = ours[dtypes[0]][0]
    params_all = sum(p.numel() for p in model0.parameters())
    params_body = sum(p.numel() for n, p in model0.base_model.named_parameters() if "embed_tokens" not in n)
    vocab, hidden = model0.get_output_embeddings().weight.shape
    n_layers = model0.base_model.config.num_hidden_layers

    # time run_lm (tokenise + forward + decode) inside encode_prompts for the forward's GFLOP/s
    forward_seconds: list[float] = []
    real_run_lm = encode.run_lm

    def timed_run_lm(*a, **kw):
        start = time.perf_counter()
        result = real_run_lm(*a, **kw)
        forward_seconds.append(time.perf_counter() - start)
        return result

    def ours_run(d: str, chunk, steps: int, out: Path) -> float:
        start = time.perf_counter()
        job = encode.EncodeJob(args.model, "causal", "inbedder", max_new_tokens=steps, batch_size=args.batch_size,
                               device="cpu", dtype=d, layers=(-1,), decoding="greedy")
        meta = encode.encode_prompts(job, chunk, out, progress=False, loaded=ours[d])
        assert meta["prompts"]["n"] == len(chunk)
        return time.perf_counter() - start

    encode.run_lm = timed_run_lm
    warm = prompts[:8]
    for d in dtypes:
        naive_round(*naive[d], warm, 8)
        ours_run(d, warm, 3, work / f"warm-{d}")

    emb: dict[str, list[np.ndarray]] = {}
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
        lengths = [len(ours_tok(format_prompt("inbedder", p["instruction"], p["text"])).input_ids) for p in chunk]
        tokens = sum(lengths)
        # the naive approach's positions: its unsorted batches padded to their longest prompt
        padded = sum(len(lengths[i : i + NAIVE_BATCH]) * max(lengths[i : i + NAIVE_BATCH])
                     for i in range(0, len(lengths), NAIVE_BATCH))
        record = {"prompts": len(chunk), "tokens": tokens, "naive_positions": padded}
        for d in (dtypes if r % 2 == 0 else dtypes[::-1]):  # who goes first alternates
            s = SHORT[d]
            record[f"naive_{s}"], naive_emb = naive_round(*naive[d], chunk)
            for k, v in naive_emb.items():
                emb.setdefault(f"naive_{k}_{s}", []).append(v)
            for key, steps in (("first_gen", 1), ("avg_gen", 3)):
                out = work / f"{key}-{s}-{r}"
                forward_seconds.clear()
                record[f"{key}_{s}"] = ours_run(d, chunk, steps, out)
                cache = pooling.load_cache(out)
                if key == "first_gen":
                    record[f"forward_{s}"] = forward_seconds[0]
                    emb.setdefault(f"ours_1st-gen_{s}", []).append(np.array(pooling.embed(cache, "1st-gen")))
                    continue
                emb.setdefault(f"ours_avg-gen_{s}", []).append(np.array(pooling.embed(cache, "avg-gen")))
                emb.setdefault(f"ours_gen_ids_{s}", []).append(np.array(cache.tensors["gen_ids"]))
                if d == args.dtype:
                    cache_bytes += (out / "hidden.safetensors").stat().st_size
                    valid = int(cache.tensors["gen_mask"].sum())
                    # the states the modes need (1st-gen, prompt mean, each valid later step) in float32,
                    # plus one int32 per valid token id and per prompt length
                    minimum_bytes += int((2 * len(chunk) + valid - len(chunk)) * hidden * 4 + valid * 4
                                         + len(chunk) * 4)
                del cache
            shutil.rmtree(work / f"first_gen-{s}-{r}", ignore_errors=True)
            shutil.rmtree(work / f"avg_gen-{s}-{r}", ignore_errors=True)
        rounds.append(record)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in record.items()), flush=True)
    encode.run_lm = real_run_lm

    n = sum(r["prompts"] for r in rounds)
    total = {k: sum(r[k] for r in rounds) for k in rounds[0] if k != "prompts"}
    main_s = SHORT[args.dtype]
    out: dict[str, object] = {"prompts": n, "real_tokens": int(total["tokens"]), "dtype": args.dtype,
                              "dtypes": dtypes, "naive_dtype": "float32", "batch_size": args.batch_size}

    def median_ratio(num: str, den: str) -> float:
        return round(float(np.median([r[num] / r[den] for r in rounds])), 3)

    # the old keys: ours in --dtype against the naive approach in fp32
    out["naive_prompts_per_s"] = round(n / total["naive_fp32"], 2)
    out["first_gen_prompts_per_s"] = round(n / total[f"first_gen_{main_s}"], 2)
    out["avg_gen_prompts_per_s"] = round(n / total[f"avg_gen_{main_s}"], 2)
    out["first_gen_speedup"] = median_ratio("naive_fp32", f"first_gen_{main_s}")
    out["avg_gen_speedup"] = median_ratio("naive_fp32", f"avg_gen_{main_s}")
    out["first_gen_speedup_total"] = round(total["naive_fp32"] / total[f"first_gen_{main_s}"], 3)
    out["avg_gen_speedup_total"] = round(total["naive_fp32"] / total[f"avg_gen_{main_s}"], 3)
    # the same-dtype comparisons
    for d in dtypes:
        s = SHORT[d]
        out[f"naive_prompts_per_s_{s}"] = round(n / total[f"naive_{s}"], 2)
        for key in ("first_gen", "avg_gen"):
            out[f"{key}_prompts_per_s_{s}"] = round(n / total[f"{key}_{s}"], 2)
            out[f"{key}_speedup_{s}"] = median_ratio(f"naive_{s}", f"{key}_{s}")
            out[f"{key}_speedup_total_{s}"] = round(total[f"naive_{s}"] / total[f"{key}_{s}"], 3)
    out["speedup_definition"] = ("median over rounds of naive time / our time on the same prompts (*_total: ratio "
                                 "of the summed times); *_bf16 / *_fp32: both approaches in that dtype; the keys "
                                 f"without a dtype: ours in {args.dtype} against the naive approach in fp32")
    # GFLOP/s of our 1st-gen forward, per dtype; the keys without a dtype: --dtype
    for d in dtypes:
        s = SHORT[d]
        flops = [(2 * params_all * r["tokens"], 2 * params_body * r["tokens"] + 2 * vocab * hidden * r["prompts"])
                 for r in rounds]
        gflops_all = max(f[0] / r[f"forward_{s}"] for f, r in zip(flops, rounds, strict=True)) / 1e9
        gflops = max(f[1] / r[f"forward_{s}"] for f, r in zip(flops, rounds, strict=True)) / 1e9
        gflops_mean = sum(f[0] for f in flops) / total[f"forward_{s}"] / 1e9
        suffix = "" if d == args.dtype else f"_{s}"
        values = {"first_gen_forward_gflops": round(gflops_all, 1),
                  "first_gen_forward_gflops_executed": round(gflops, 1),
                  "first_gen_forward_gflops_mean": round(gflops_mean, 1),
                  "peak_fraction": round(gflops_all / peaks[d], 3),
                  "peak_fraction_executed": round(gflops / peaks[d], 3),
                  "peak_fraction_mean": round(gflops_mean / peaks[d], 3)}
        out.update({f"{k}{suffix}": v for k, v in values.items()})
        if d == args.dtype:
            out.update({f"{k}_{s}": v for k, v in values.items() if k.startswith("peak_fraction")})
    out["matmul_peak_gflops"] = {d: round(v, 1) for d, v in peaks.items()}
    # The most ours could gain over the naive approach: our pass's executed FLOPs at the matmul peak
    # (prompt forward, one forward per later pass, the LM head once per generated token) against the
    # naive approach's measured time. Both are bound by the same matmuls, so the naive approach's waste
    # (padding, generate's bookkeeping, every layer's states) is all there is to gain.
    out["naive_padding_fraction"] = round(1 - total["tokens"] / total["naive_positions"], 3)
    for d in dtypes:
        s = SHORT[d]
        for key, steps in (("first_gen", 1), ("avg_gen", 3)):
            passes = max(steps, 2) - 1
            floor = [(2 * params_body * (r["tokens"] + passes * r["prompts"]) + 2 * vocab * hidden * steps * r["prompts"])
                     / (peaks[d] * 1e9) for r in rounds]
            out[f"{key}_speedup_bound_{s}"] = round(float(np.median([r[f"naive_{s}"] / f
                                                                     for r, f in zip(rounds, floor, strict=True)])), 3)
    out["speedup_bound_definition"] = ("*_speedup_bound_*: median over rounds of the naive approach's time / the "
                                       "time our pass's executed FLOPs would take at the measured matmul peak of "
                                       "the dtype: the speed-up a pass at the peak would reach")
    out["flops_counted"] = ("peak_fraction: 2 x all parameters x real prompt tokens / forward time (the issue's "
                            "definition), best round; peak_fraction_executed: only the FLOPs that run, 2 x "
                            "non-embedding parameters x real tokens + 2 x LM head x prompts (the embedding lookup "
                            "does none), best round; peak_fraction_mean: the issue's definition over all rounds; "
                            f"keys without a dtype: {args.dtype}")
    out["rounds"] = [{k: round(v, 3) for k, v in r.items()} for r in rounds]
    out["cache_bytes_per_prompt"] = round(cache_bytes / n, 1)
    out["minimum_bytes_per_prompt"] = round(minimum_bytes / n, 1)
    out["cache_bytes_ratio"] = round(cache_bytes / minimum_bytes, 4)
    # the authors' embeds.safetensors: 5 pooled modes x every layer (embeddings + 30) x H float32
    out["authors_cache_bytes_per_prompt"] = int((n_layers + 1) * hidden * 4 * 5)
    cat = {k: np.concatenate(v) for k, v in emb.items()}
    out["cosine_first_gen_vs_naive_min"] = round(float(cosine_rows(cat["naive_1st-gen_fp32"],
                                                                   cat[f"ours_1st-gen_{main_s}"]).min()), 5)
    same = np.all(cat[f"ours_gen_ids_{main_s}"][:, :3] >= 0, axis=1)
    out["cosine_avg_gen_vs_naive_median"] = round(float(np.median(
        cosine_rows(cat["naive_avg-gen_fp32"][same], cat[f"ours_avg-gen_{main_s}"][same]))), 5)
    for d in dtypes:
        s = SHORT[d]
        out[f"cosine_first_gen_vs_naive_min_{s}"] = round(float(cosine_rows(cat[f"naive_1st-gen_{s}"],
                                                                            cat[f"ours_1st-gen_{s}"]).min()), 5)
        same = np.all(cat[f"ours_gen_ids_{s}"][:, :3] >= 0, axis=1)
        out[f"cosine_avg_gen_vs_naive_median_{s}"] = round(float(np.median(
            cosine_rows(cat[f"naive_avg-gen_{s}"][same], cat[f"ours_avg-gen_{s}"][same]))), 5)
    return out


if __name__ == "__main__":
    main()
