"""Embedding modes as pure functions of an encode cache (`inbedder.cache`): no model runs here.

Generation steps: step 0 is `first_gen` (the last prompt token's state; masked LMs: the first mask;
seq2seq: the decoder start), step t >= 1 is `gen[:, t-1]` (the state AT generated token t). Step t
predicts token `gen_ids[:, t]`; `gen_mask` marks the steps up to and including the first EOS.

- `1st-gen`  step 0;
- `avg-gen`  mean of the valid steps (1st-gen and the generated tokens' states);
- `last-gen` the last valid step;
- `avg-ppt`  `prompt_mean` (the prompt tokens except the last);
- `avg-all`  mean over the prompt tokens and the valid steps (causal: every prompt token, since the
             last prompt token is step 0; masked LMs: text tokens and masks; seq2seq: encoder tokens
             and decoder steps);
- `re-encode`, `re-encode+filter`, `re-encode-multi`, `plain`, `prefixed`: stored as computed;
- `avg-gen+filter`, `last-gen+filter`, `avg-all+filter`: as above over the steps the filter keeps.

The filter (`inbedder.text.keep_steps`, beside its word lists) drops a step whose token (the token the
step predicts, decoded on its own, the tokenizer's space marker stripped, lower-cased) is a stopword, a
token of the prompt's instruction, or a token of the filler phrases "Based on" / "Sure!".
Step 0 can be dropped like any other; when every step is dropped, the filter keeps step 0 alone, so
`avg-gen+filter` falls back to `1st-gen` (documented fallback, never an empty mean).
"""

from __future__ import annotations

import json
import os

import numpy as np

from inbedder.cache import Cache, load_cache
from inbedder.text import keep_steps
from inbedder.vocabulary import FILTERED_MODES, GENERATION_MODES, STORED_MODES


def _as_cache(cache: Cache | str | os.PathLike) -> Cache:
    return cache if isinstance(cache, Cache) else load_cache(cache)


# ----------------------------------------------------------------------------------------------
# the filter


def step_mask(cache: Cache, filtered: bool) -> np.ndarray:
    """[N, T] bool: the steps a generation mode averages (valid steps; with `filtered`, those kept)."""
    mask = np.asarray(cache.tensors["gen_mask"], dtype=bool)
    if not filtered:
        return mask
    if cache.answers is None:
        raise ValueError(f"{cache.path}: no answers.jsonl, so no tokens to filter")
    fillers = cache.meta.get("filter", {}).get("filler_tokens", [])
    out = np.zeros_like(mask)
    for i, row in enumerate(cache.answers):
        out[i] = keep_steps(row["tokens"], mask[i], row["instruction_tokens"], fillers)
    return out


# ----------------------------------------------------------------------------------------------
# modes


def _layer_name(cache: Cache, layer: int) -> str:
    """The configured layer under which `layer` (configured value or hidden_states index) is stored."""
    index = cache.meta.get("layer_index") or {}
    if str(layer) in index:
        return str(layer)
    n = cache.meta.get("num_layers")
    wanted = layer + n + 1 if (n is not None and layer < 0) else layer
    for name, value in index.items():
        if value == wanted:
            return name
    raise KeyError(f"{cache.path}: layer {layer} is not in the cache (layers {sorted(index, key=int)}; "
                   f"re-encode with config `layers` including it)")


def available_modes(cache: Cache | str | os.PathLike) -> list[str]:
    """The modes `embed` can compute from this cache."""
    cache = _as_cache(cache)
    stored = [m for m in STORED_MODES if m in cache.tensors]
    if "gen_mask" not in cache.tensors:
        return stored
    filtered = list(FILTERED_MODES) if cache.answers is not None else []
    return [*GENERATION_MODES, *filtered, *stored]


def embed(cache: Cache | str | os.PathLike, mode: str, layer: int = -1) -> np.ndarray:
    """Embeddings [N, H] float32 of one mode and layer, in prompts.jsonl order."""
    cache = _as_cache(cache)
    if mode in STORED_MODES:
        if mode not in cache.tensors:
            raise KeyError(f"{cache.path}: mode {mode!r} was not computed (available: {available_modes(cache)})")
        return np.asarray(cache.tensors[mode], dtype=np.float32)
    base, _, suffix = mode.partition("+")
    if base not in GENERATION_MODES or suffix not in ("", "filter") or (suffix and base in ("1st-gen", "avg-ppt")):
        raise KeyError(f"unknown mode {mode!r}; modes of {cache.path}: {available_modes(cache)}")
    if "gen_mask" not in cache.tensors:
        raise KeyError(f"{cache.path}: a sentence-encoder cache has no {mode!r} (available: {available_modes(cache)})")
    name = _layer_name(cache, layer)
    first = np.asarray(cache.tensors[f"first_gen@{name}"], dtype=np.float32)
    if base == "1st-gen":
        return first
    prompt_mean = np.asarray(cache.tensors[f"prompt_mean@{name}"], dtype=np.float32)
    if base == "avg-ppt":
        return prompt_mean
    steps = np.concatenate([first[:, None], np.asarray(cache.tensors[f"gen@{name}"], dtype=np.float32)], axis=1)
    weights = step_mask(cache, suffix == "filter").astype(np.float32)
    count = weights.sum(1, keepdims=True)
    if (count == 0).any():
        raise ValueError(f"{cache.path}: prompt {int(np.argmin(count[:, 0]))} has no valid generation step")
    total = np.einsum("nt,nth->nh", weights, steps)
    if base == "avg-gen":
        return total / count
    if base == "last-gen":
        last = weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
        return steps[np.arange(len(steps)), last]
    n_prompt = np.asarray(cache.tensors["prompt_len"], dtype=np.float32)[:, None]
    if cache.meta.get("first_gen_in_prompt"):
        n_prompt = n_prompt - 1  # the last prompt token is step 0, counted with the steps
    return (prompt_mean * n_prompt + total) / (n_prompt + count)


def lookup(cache: Cache | str | os.PathLike, mode: str, layer: int = -1) -> dict[tuple[str, str], np.ndarray]:
    """(text, instruction) -> embedding of one mode and layer (what the mteb wrappers serve)."""
    cache = _as_cache(cache)
    vectors = embed(cache, mode, layer)
    return {(p["text"], p["instruction"]): vectors[i] for i, p in enumerate(cache.prompts)}


def describe(cache: Cache | str | os.PathLike) -> str:
    """One line about a cache: kind, prompts, modes, key (for logs)."""
    cache = _as_cache(cache)
    return json.dumps({"path": str(cache.path), "kind": cache.meta.get("kind"), "n": cache.n,
                       "modes": available_modes(cache), "cache_key": cache.meta.get("cache_key", "")[:12]})
