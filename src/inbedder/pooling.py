"""Embedding modes as pure functions of an encode cache (`inbedder.cache`): no model runs here.

Generation steps: step 0 is `first_gen` (the last prompt token's state; masked LMs: the first mask;
seq2seq: the decoder start), step t >= 1 is `gen[:, t-1]` (the state AT generated token t). Step t
predicts token `gen_ids[:, t]`; `gen_mask` marks the steps up to and including the first EOS.

Which steps the generation modes average follows config `method.special_steps`, recorded in the
cache's meta:
- `authors` (their lm_encoders_hf): a step whose predicted token is special (EOS, pad, ...) is left
  out. Causal LMs: step 0 always counts, and when no later step is left the state at the first
  generated token (step 1) stands in. Seq2seq: any step can be left out, the decoder start stands
  in when none is left, and 1st-gen is the first step left. Masked LMs: every mask counts;
- `keep_eos`: every step in `gen_mask` counts, the EOS-predicting one included.

- `1st-gen`  step 0 (seq2seq under `authors`: the first counted step);
- `avg-gen`  mean of the counted steps;
- `last-gen` the last counted step;
- `avg-ppt`  `prompt_mean` (the prompt tokens except the last);
- `avg-all`  mean over the prompt tokens and the counted steps (causal: every prompt token, since the
             last prompt token is step 0; masked LMs under `method.masked_prompt_modes: authors`:
             `all_mean`, every position; seq2seq: encoder tokens and decoder steps);
- `re-encode`, `re-encode+filter`, `re-encode-multi`, `plain`, `prefixed`: stored as computed;
- `avg-gen+filter`, `last-gen+filter`, `avg-all+filter`: as above over the steps the filter keeps,
  with the filter the cache was made with (`method.filter`); `+filter=authors` and `+filter=words`
  name one explicitly, so one cache scores both (the filter ablation).

The `authors` filter also leaves out the steps whose predicted token id is one of the cache's
`filter.authors_ids` (`inbedder.text.authors_filter_ids`), never step 0 of a causal LM, with the same
stand-in when nothing is left; a masked LM's cache records no such ids (their masked encoder takes
the filter words and never applies them), so there it drops nothing. The `words` filter (`inbedder.text.keep_steps`) drops a step whose
token, decoded on its own, space marker stripped and lower-cased, is a stopword, a token of the
prompt's instruction or of a filler phrase; step 0 can be dropped, and when every step is dropped
step 0 alone is kept.
"""

from __future__ import annotations

import json
import os

import numpy as np

from inbedder.cache import Cache, load_cache
from inbedder.fidelity import switch
from inbedder.model_kinds import ModelKind, kind_of
from inbedder.text import keep_steps
from inbedder.vocabulary import FILTERED_MODES, GENERATION_MODES, STORED_MODES


def _as_cache(cache: Cache | str | os.PathLike) -> Cache:
    return cache if isinstance(cache, Cache) else load_cache(cache)


# ----------------------------------------------------------------------------------------------
# the filter


FILTER_VARIANTS = switch("method.filter").values


def _method(cache: Cache) -> dict[str, str]:
    return cache.meta.get("method") or {}


def _kind(cache: Cache) -> ModelKind:
    return kind_of(cache.meta["kind"], f"{cache.path}: meta.json kind")


def _special_kept(cache: Cache, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[N, T] the valid steps whose predicted token is not special (the authors' rule, before stand-ins)."""
    return mask & ~np.isin(ids, np.asarray(cache.meta.get("special_ids", []), dtype=np.int64))


def _padded(keep: np.ndarray, width: int) -> np.ndarray:
    """`keep` [N, T] widened to `width` step states (a causal cache has the stand-in state past T)."""
    out = np.zeros((keep.shape[0], width), dtype=bool)
    out[:, : keep.shape[1]] = keep
    return out


def _stand_in(keep: np.ndarray, first_counts: bool) -> np.ndarray:
    """The authors' stand-in where no step past the fixed ones is left (`keep` already padded)."""
    out = keep.copy()
    if first_counts:  # causal: step 0 always counts; step 1 stands in when no later step is left
        out[:, 0] = True
        out[~out[:, 1:].any(1), 1] = True
    else:  # seq2seq: the decoder start stands in
        out[~out.any(1), 0] = True
    return out


def step_mask(cache: Cache, filtered: bool | str, width: int | None = None) -> np.ndarray:
    """[N, width] bool: the steps a generation mode averages.

    `filtered`: False (no filter), True (the cache's `method.filter`), or a filter name
    (`FILTER_VARIANTS`). `width` is the number of step states (default: the steps of `gen_mask`).
    """
    mask = np.asarray(cache.tensors["gen_mask"], dtype=bool)
    ids = np.asarray(cache.tensors["gen_ids"], dtype=np.int64)
    width = mask.shape[1] if width is None else width
    method = _method(cache)
    variant = (method.get("filter", "words") if filtered is True else filtered) or None
    if variant is not None and variant not in FILTER_VARIANTS:
        raise KeyError(f"unknown filter {variant!r}; known: {', '.join(FILTER_VARIANTS)}")
    authors_steps = method.get("special_steps") == "authors" and _kind(cache).drops_special_steps
    keep = _special_kept(cache, ids, mask) if authors_steps else mask
    if variant == "words":
        if cache.answers is None:
            raise ValueError(f"{cache.path}: no answers.jsonl, so no tokens to filter")
        fillers = ((cache.meta.get("filter") or {}).get("words") or {}).get("filler_tokens", [])
        return _padded(np.array([keep_steps(row["tokens"], keep[i], row["instruction_tokens"], fillers)
                                 for i, row in enumerate(cache.answers)], dtype=bool).reshape(mask.shape), width)
    if variant == "authors":
        drop = (cache.meta.get("filter") or {}).get("authors_ids")
        if drop is None:
            raise ValueError(f"{cache.path}: the cache records no authors' filter ids (filter.authors_ids)")
        keep = keep & ~np.isin(ids, np.asarray(drop, dtype=np.int64))
    if authors_steps or variant == "authors":
        return _stand_in(_padded(keep, width), bool(cache.meta.get("first_gen_in_prompt")))
    return _padded(keep, width)


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
    filtered = ([f"{m}{v}" for m in FILTERED_MODES for v in ("", *(f"={f}" for f in FILTER_VARIANTS))]
                if cache.answers is not None else [])
    return [*GENERATION_MODES, *filtered, *stored]


def embed(cache: Cache | str | os.PathLike, mode: str, layer: int = -1) -> np.ndarray:
    """Embeddings [N, H] float32 of one mode and layer, in prompts.jsonl order."""
    cache = _as_cache(cache)
    if mode in STORED_MODES:
        if mode not in cache.tensors:
            raise KeyError(f"{cache.path}: mode {mode!r} was not computed (available: {available_modes(cache)})")
        return np.asarray(cache.tensors[mode], dtype=np.float32)
    base, _, suffix = mode.partition("+")
    suffix, _, variant = suffix.partition("=")
    if (base not in GENERATION_MODES or suffix not in ("", "filter") or (suffix and base in ("1st-gen", "avg-ppt"))
            or (variant and (not suffix or variant not in FILTER_VARIANTS))):
        raise KeyError(f"unknown mode {mode!r}; modes of {cache.path}: {available_modes(cache)}")
    if "gen_mask" not in cache.tensors:
        raise KeyError(f"{cache.path}: a sentence-encoder cache has no {mode!r} (available: {available_modes(cache)})")
    name = _layer_name(cache, layer)
    first = np.asarray(cache.tensors[f"first_gen@{name}"], dtype=np.float32)
    first_kept = _kind(cache).first_gen_is_first_kept and _method(cache).get("special_steps") == "authors"
    if base == "1st-gen" and not first_kept:
        return first
    prompt_mean = np.asarray(cache.tensors[f"prompt_mean@{name}"], dtype=np.float32)
    if base == "avg-ppt":
        return prompt_mean
    if base == "avg-all" and not suffix and f"all_mean@{name}" in cache.tensors:
        return np.asarray(cache.tensors[f"all_mean@{name}"], dtype=np.float32)
    steps = np.concatenate([first[:, None], np.asarray(cache.tensors[f"gen@{name}"], dtype=np.float32)], axis=1)
    filtered = (variant or True) if suffix else False
    weights = step_mask(cache, filtered, steps.shape[1]).astype(np.float32)
    if base == "1st-gen":
        return steps[np.arange(len(steps)), np.argmax(weights > 0, axis=1)]
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
