"""One cached pass per (model, task): generated answers and the hidden states every embedding mode needs.

`encode_prompts` writes `results/<run>/cache/<model>-<recipe>/<task>/` (docs/contracts.md), each file
atomically and `meta.json` last (the completion marker):

- `prompts.jsonl`  `id, text, instruction`: every distinct (text, instruction), in first-seen order;
- `answers.jsonl`  `id, answer, token_ids` plus `tokens` (each generated token decoded on its own),
                   `instruction_tokens` (the instruction's tokens, decoded) and `answer_filtered` (the
                   answer without the tokens the filter drops); language models only;
- `hidden.safetensors`, float32 states, for each configured layer L (`@L` is the configured value,
  e.g. `first_gen@-1`):
    `first_gen@L [N,H]`   state at the last prompt token: it predicts the first answer token;
    `prompt_mean@L [N,H]` mean over the prompt tokens except the last (masked LMs: the prompt text
                          tokens, no special tokens; seq2seq: every encoder token);
    `gen@L [N,T-1,H]`     states AT generated tokens 1..T-1, each predicting the next token; with
                          `first_gen` they are the T generation steps (masked LMs: the T mask states);
  and `gen_ids [N,T]` (token predicted by each step, -1 where no step ran), `gen_mask [N,T]` (steps
  up to and including the first EOS), `prompt_len [N]` (prompt tokens; masked LMs: text tokens only);
  sentence encoders: `plain [N,H]` (the text) and `prefixed [N,H]` ("{instruction}: {text}");
  with a re-encoder: `re-encode [N,H]`, `re-encode+filter [N,H]` (and `re-encode-multi [N,H]`);
- `meta.json`: the model fingerprint, template, generation and compute settings, layers, the prompt
  list's sha256, and `cache_key` = sha256 of all of these; plus the size and sha256 of every file.

A cache is reused only when `validate_cache` finds `meta.json` with the expected key and every file
intact; a changed prompt set or setting is a new key, a truncated or corrupt file is recomputed.
`hidden.safetensors` carries a copy of the meta in its header, so a cache whose `meta.json` alone
was removed (Snakemake deletes a job's declared output before rerunning it) is recovered without
running the model again, after its key and every checksum are checked.

Causal LMs: left padding, length-sorted batches (runs of equal length need no attention mask), greedy
decoding with the model's KV cache, the LM head on the last position only, and only the configured
layers' states kept (all-layer tuples live for one batch at most, and only when a non-final layer is
configured). Masked LMs: one forward pass with `max_new_tokens` masks after the prompt; the answer is
the argmax at each mask. Seq2seq: encoder states for the prompt modes, decoder states for the answer
modes. Layer L follows the `hidden_states` tuple of transformers: 0 = embeddings, -1 = final output.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inbedder.files import atomic_path, read_jsonl, sha256_file, sha256_json, write_json, write_jsonl
from inbedder.text import FILLER_PHRASES, STOPWORD_LIST_NAME, TEMPLATES, format_prompt

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
GENERATIVE_KINDS = ("causal", "masked", "seq2seq")
KINDS = (*GENERATIVE_KINDS, "sentence-encoder")
PROMPTS, ANSWERS, HIDDEN, META = "prompts.jsonl", "answers.jsonl", "hidden.safetensors", "meta.json"
MULTI_SAMPLES, MULTI_TEMPERATURE = 10, 0.8
# the meta.json fields the cache key hashes (key_fields)
_KEY_NAMES = ("format", "kind", "model_fingerprint", "template", "template_text", "generation", "layers",
              "compute", "re_encoder", "prompts")


class CacheError(ValueError):
    """An encode cache is missing, stale or corrupt; the message names the file and the reason."""


@dataclass(frozen=True)
class Settings:
    """Everything that changes an encode cache, apart from the model weights and the prompts."""

    kind: str
    template: str
    max_new_tokens: int
    layers: tuple[int, ...]
    batch_size: int
    device: str
    dtype: str
    max_length: int = 512
    re_encode: bool = False
    re_encode_multi: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind in GENERATIVE_KINDS and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.layers:
            raise ValueError("layers: at least one layer is needed (-1 = last)")
        if self.re_encode_multi and self.kind != "causal" and self.kind != "seq2seq":
            raise ValueError(f"re-encode-multi samples answers; a {self.kind} model cannot (causal or seq2seq only)")


# ----------------------------------------------------------------------------------------------
# keys and fingerprints


def distinct_prompts(prompts: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """Distinct (text, instruction) prompts in first-seen order, checking both fields exist."""
    seen: dict[tuple[str, str], None] = {}
    for i, row in enumerate(prompts):
        if "text" not in row or "instruction" not in row:
            raise ValueError(f"prompt {i}: needs `text` and `instruction`, got keys {sorted(row)}")
        seen.setdefault((str(row["text"]), str(row["instruction"])), None)
    return [{"text": t, "instruction": i} for t, i in seen]


def prompts_sha256(prompts: Sequence[Mapping[str, str]]) -> str:
    """sha256 of the ordered (text, instruction) list."""
    return sha256_json([[p["text"], p["instruction"]] for p in prompts])


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """The weights' hash: fingerprint.json `sha256` if the folder has one, else a hash of its safetensors."""
    root = Path(model_dir)
    record = root / "fingerprint.json"
    if record.exists():
        value = json.loads(record.read_text(encoding="utf-8")).get("sha256")
        if value:
            return str(value)
    files = sorted(p for p in root.rglob("*.safetensors") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: neither fingerprint.json nor *.safetensors weights to fingerprint")
    return sha256_json({p.relative_to(root).as_posix(): sha256_file(p) for p in files})


def key_fields(settings: Settings, model_fp: str, prompts: Sequence[Mapping[str, str]],
               re_encoder_fp: str | None = None) -> dict[str, Any]:
    """The content the cache key hashes: model, template, generation, layers, compute, prompts."""
    generative = settings.kind in GENERATIVE_KINDS
    return {
        "format": CACHE_FORMAT,
        "kind": settings.kind,
        "model_fingerprint": model_fp,
        "template": settings.template if generative else "instructor",
        "template_text": TEMPLATES.get(settings.template, settings.template) if generative else TEMPLATES["instructor"],
        "generation": {"decoding": "greedy", "max_new_tokens": settings.max_new_tokens,
                       "max_length": settings.max_length} if generative else None,
        "layers": [int(x) for x in settings.layers] if generative else None,
        "compute": {"device": settings.device, "dtype": settings.dtype, "batch_size": settings.batch_size},
        "re_encoder": ({"fingerprint": re_encoder_fp,
                        "multi": {"samples": MULTI_SAMPLES, "temperature": MULTI_TEMPERATURE, "seed": settings.seed}
                        if settings.re_encode_multi else None}
                       if settings.re_encode and generative else None),
        "prompts": {"n": len(prompts), "sha256": prompts_sha256(prompts)},
    }


def cache_key(fields: Mapping[str, Any]) -> str:
    """sha256 of the key fields."""
    return sha256_json(dict(fields))


# ----------------------------------------------------------------------------------------------
# validation


def _safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the data section is complete; raise CacheError if not."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CacheError(f"{path}: truncated ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CacheError(f"{path}: truncated (header of {n} bytes, file of {size})")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheError(f"{path}: corrupt header ({err})") from err
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CacheError(f"{path}: truncated or padded (header says {8 + n + end} bytes, file has {size})")
    return header


def validate_cache(out_dir: str | os.PathLike, expected_key: str | None = None) -> str | None:
    """Why the cache in `out_dir` cannot be used (missing, stale, truncated, corrupt), or None if it is valid."""
    out = Path(out_dir)
    meta_path = out / META
    if not meta_path.exists():
        return f"{meta_path}: missing (no complete cache)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{meta_path}: not valid JSON ({err})"
    if expected_key is not None and meta.get("cache_key") != expected_key:
        return f"{meta_path}: stale (cache_key {str(meta.get('cache_key'))[:12]} != expected {expected_key[:12]})"
    if meta.get("format") != CACHE_FORMAT:
        return f"{meta_path}: format {meta.get('format')!r}, this code reads format {CACHE_FORMAT}"
    if meta.get("cache_key") != cache_key({k: meta.get(k) for k in _KEY_NAMES}):
        return f"{meta_path}: cache_key does not match its own fields (edited or corrupt)"
    files = meta.get("files") or {}
    for name in (PROMPTS, HIDDEN):
        if name not in files:
            return f"{meta_path}: lists no {name}"
    for name, record in files.items():
        path = out / name
        if not path.exists():
            return f"{path}: missing"
        if path.stat().st_size != record["bytes"]:
            return f"{path}: {path.stat().st_size} bytes, meta.json recorded {record['bytes']} (truncated or replaced)"
        if name == HIDDEN:
            try:
                header = _safetensors_header(path)
            except CacheError as err:
                return str(err)
            stored = (header.get("__metadata__") or {}).get("cache_key")
            if stored != meta["cache_key"]:
                return f"{path}: written for cache_key {str(stored)[:12]}, meta.json has {meta['cache_key'][:12]}"
        if sha256_file(path) != record["sha256"]:
            return f"{path}: sha256 differs from meta.json (corrupt or replaced)"
    return None


def check_cache(out_dir: str | os.PathLike, expected_key: str | None = None) -> dict[str, Any]:
    """Return the cache's meta, or raise CacheError with the reason it cannot be used."""
    reason = validate_cache(out_dir, expected_key)
    if reason is not None:
        raise CacheError(reason)
    return json.loads((Path(out_dir) / META).read_text(encoding="utf-8"))


def _recover_meta(out_dir: Path, key: str) -> bool:
    """Rewrite a removed meta.json from the copy in hidden.safetensors when key and checksums agree."""
    path = out_dir / HIDDEN
    if (out_dir / META).exists() or not path.exists():
        return False
    try:
        header = _safetensors_header(path)
        meta = json.loads((header.get("__metadata__") or {}).get("meta", "null"))
    except (CacheError, json.JSONDecodeError, TypeError):
        return False
    if not isinstance(meta, dict) or meta.get("cache_key") != key:
        return False
    for name, record in (meta.get("files") or {}).items():
        other = out_dir / name
        if not other.exists() or other.stat().st_size != record["bytes"] or sha256_file(other) != record["sha256"]:
            return False
    meta["files"][HIDDEN] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    write_json(out_dir / META, meta)
    if validate_cache(out_dir, key) is not None:
        (out_dir / META).unlink()
        return False
    log.info("%s: meta.json recovered from %s (same cache_key, files intact)", out_dir, HIDDEN)
    return True


# ----------------------------------------------------------------------------------------------
# batching and tokens


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most `batch_size`, longest first; a batch ends where the length changes
    once it holds half of `batch_size` or more, so most batches have one length (no padding, no mask)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    min_fill = max(1, batch_size // 2)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) >= batch_size
                        or (lengths[i] != lengths[current[0]] and len(current) >= min_fill)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def prompt_token_ids(tokenizer, template: str, text: str, instruction: str, budget: int,
                     add_special_tokens: bool = True) -> list[int]:
    """Token ids of the formatted prompt; an over-long input text is cut at its end until it fits `budget`."""
    ids = tokenizer(format_prompt(template, instruction, text), add_special_tokens=add_special_tokens).input_ids
    if len(ids) <= budget:
        return list(ids)
    text_ids = tokenizer(text, add_special_tokens=False).input_ids
    keep = max(0, len(text_ids) - (len(ids) - budget) - 2)
    while True:
        short = tokenizer.decode(text_ids[:keep], skip_special_tokens=True)
        ids = tokenizer(format_prompt(template, instruction, short), add_special_tokens=add_special_tokens).input_ids
        if len(ids) <= budget:
            return list(ids)
        if keep == 0:
            raise ValueError(f"template {template!r}: the prompt does not fit max_length {budget} even with an "
                             f"empty input (instruction {instruction[:60]!r})")
        keep = max(0, keep - max(1, len(ids) - budget))


def decode_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (the filter decides per generation step from these)."""
    return [tokenizer.decode([int(t)]) for t in ids]


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    found: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  getattr(model.config, "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    return found


def resolve_layers(layers: Sequence[int], num_layers: int, where: str) -> dict[int, int]:
    """Map configured layers to `hidden_states` indices (0 = embeddings, num_layers = final output)."""
    out = {}
    for layer in layers:
        index = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_layers:
            raise ValueError(f"layers: {layer} is outside {where}'s range [-{num_layers + 1}, {num_layers}]")
        out[int(layer)] = index
    return out


# ----------------------------------------------------------------------------------------------
# running the models


@dataclass
class StepStates:
    """What one pass over the prompts yields, in prompt order (the arrays of hidden.safetensors)."""

    tensors: dict[str, np.ndarray]
    gen_ids: np.ndarray   # [N, T] int64, -1 where no step ran
    gen_mask: np.ndarray  # [N, T] bool
    prompt_len: np.ndarray  # [N] int64
    layer_index: dict[str, int]
    num_layers: int
    first_gen_in_prompt: bool


class _Store:
    """Float32 arrays per name, allocated when the first batch shows the hidden size."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name: str, rows: Sequence[int], values) -> None:
        values = values.float().cpu().numpy() if hasattr(values, "cpu") else np.asarray(values, np.float32)
        if name not in self.arrays:
            self.arrays[name] = np.zeros((self.n, *values.shape[1:]), dtype=np.float32)
        self.arrays[name][list(rows)] = values


def _pick(out, indices: Mapping[int, int], num_layers: int, hidden_attr: str = "hidden_states",
          last_attr: str = "last_hidden_state") -> dict[int, Any]:
    """States of the configured layers from a model output: the final one, or the hidden_states tuple."""
    states = getattr(out, hidden_attr, None)
    picked = {}
    for layer, index in indices.items():
        if index == num_layers and getattr(out, last_attr, None) is not None:
            picked[layer] = getattr(out, last_attr)
        else:
            if states is None:
                raise RuntimeError(f"layer {layer} needs output_hidden_states, the model returned none")
            picked[layer] = states[index]
    return picked


def _softcap(model, logits):
    import torch

    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _record_step(nxt, done, pad_id, eos_t, batch_ids, batch_mask):
    """Book one greedy step: the token fed next (pad once finished), the ids kept (-1 once finished)."""
    import torch

    batch_mask.append(~done)
    token = torch.where(done, torch.full_like(nxt, pad_id), nxt)
    batch_ids.append(torch.where(done, torch.full_like(nxt, -1), nxt))
    return token, done | torch.isin(token, eos_t)


def _next_tokens(logits, temperature: float | None, generator):
    import torch

    if not temperature:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _left_pad(batch_ids: Sequence[Sequence[int]], pad_id: int, device):
    import torch

    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for r, seq in enumerate(batch_ids):
        ids[r, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def run_causal(model, token_ids: Sequence[Sequence[int]], *, max_new_tokens: int, layers: Sequence[int],
               batch_size: int, eos: set[int], pad_id: int, temperature: float | None = None,
               generator=None, keep_states: bool = True, progress: Callable[[int], None] | None = None) -> StepStates:
    """Greedy (or sampled) decoding with the KV cache, keeping only the configured layers' states."""
    import torch

    n_layers = model.config.get_text_config().num_hidden_layers
    indices = resolve_layers(layers, n_layers, "the model")
    need_all = keep_states and any(i != n_layers for i in indices.values())
    base = model.base_model
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    n, steps = len(token_ids), max_new_tokens
    store = _Store(n)
    gen_ids = np.full((n, steps), -1, dtype=np.int64)
    gen_mask = np.zeros((n, steps), dtype=bool)
    eos_t = torch.tensor(sorted(eos) or [-1], device=device)
    with torch.inference_mode():
        for rows in plan_batches([len(x) for x in token_ids], batch_size):
            ids, mask = _left_pad([token_ids[r] for r in rows], pad_id, device)
            padded = not bool(mask.all())
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            out = base(input_ids=ids, attention_mask=mask if padded else None, position_ids=position,
                       use_cache=steps > 1, output_hidden_states=need_all)
            last = out.last_hidden_state[:, -1]
            if keep_states:
                real = mask[:, :-1].bool().unsqueeze(-1)
                count = real.sum(1).float()
                for layer, h in _pick(out, indices, n_layers).items():
                    store.put(f"first_gen@{layer}", rows, h[:, -1])
                    body = torch.where(real, h[:, :-1].float(), 0.0).sum(1) / count.clamp(min=1)
                    # a one-token prompt has no "prompt except the last": its mean is that token's state
                    store.put(f"prompt_mean@{layer}", rows, torch.where(count > 0, body, h[:, -1].float()))
            token = _next_tokens(_softcap(model, head(last)), temperature, generator)
            done = torch.isin(token, eos_t)
            batch_ids, batch_mask = [token], [torch.ones_like(done)]
            cache = out.past_key_values
            for t in range(1, steps):
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                position = position[:, -1:] + 1
                out = base(input_ids=token[:, None], attention_mask=mask if padded else None,
                           position_ids=position, past_key_values=cache, use_cache=True,
                           output_hidden_states=need_all)
                cache = out.past_key_values
                if keep_states:
                    for layer, h in _pick(out, indices, n_layers).items():
                        name = f"gen@{layer}"
                        if name not in store.arrays:
                            store.arrays[name] = np.zeros((n, steps - 1, h.shape[-1]), dtype=np.float32)
                        store.arrays[name][rows, t - 1] = h[:, 0].float().cpu().numpy()
                nxt = _next_tokens(_softcap(model, head(out.last_hidden_state[:, -1])), temperature, generator)
                token, done = _record_step(nxt, done, pad_id, eos_t, batch_ids, batch_mask)
            gen_ids[rows, : len(batch_ids)] = torch.stack(batch_ids, 1).cpu().numpy()
            gen_mask[rows, : len(batch_mask)] = torch.stack(batch_mask, 1).cpu().numpy()
            if progress:
                progress(len(rows))
    if keep_states and steps > 1:
        for layer in indices:
            if f"gen@{layer}" not in store.arrays:  # every answer ended at its first token
                h = store.arrays[f"first_gen@{layer}"].shape[-1]
                store.arrays[f"gen@{layer}"] = np.zeros((n, steps - 1, h), dtype=np.float32)
    if keep_states and steps == 1:
        for layer in indices:
            store.arrays[f"gen@{layer}"] = np.zeros((n, 0, store.arrays[f"first_gen@{layer}"].shape[-1]), np.float32)
    return StepStates(store.arrays, gen_ids, gen_mask, np.array([len(x) for x in token_ids], dtype=np.int64),
                      {str(k): v for k, v in indices.items()}, n_layers, True)


def _mlm_head(model):
    """The masked-LM head module applied to final states (roberta `lm_head`, bert `cls`), or None."""
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if head is not None and callable(head):
            return head
    return None


def run_masked(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, n_masks: int, layers: Sequence[int],
               batch_size: int, progress: Callable[[int], None] | None = None) -> StepStates:
    """One forward pass with `n_masks` masks after each prompt: the answer is the argmax at each mask."""
    import torch

    from inbedder.models import masked_prompt_ids, pad_right, special_ids

    n_layers = model.config.num_hidden_layers
    indices = resolve_layers(layers, n_layers, "the model")
    head_ids, _ = special_ids(tokenizer)
    base, head = model.base_model, _mlm_head(model)
    device = next(model.parameters()).device
    n = len(prompt_ids)
    store = _Store(n)
    gen_ids = np.zeros((n, n_masks), dtype=np.int64)
    need_all = head is None or any(i != n_layers for i in indices.values())
    with torch.inference_mode():
        for rows in plan_batches([len(x) for x in prompt_ids], batch_size):
            seqs = [masked_prompt_ids(tokenizer, prompt_ids[r], n_masks) for r in rows]
            ids, mask = pad_right(seqs, tokenizer.pad_token_id, device)
            start = len(head_ids)
            lens = torch.tensor([len(prompt_ids[r]) for r in rows], device=device)
            where = torch.arange(ids.shape[1], device=device)[None]
            prompt_pos = (where >= start) & (where < start + lens[:, None])
            mask_pos = start + lens[:, None] + torch.arange(n_masks, device=device)[None]  # [B, n]
            if head is None:
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                logits = out.logits.gather(1, mask_pos[..., None].expand(-1, -1, out.logits.shape[-1]))
                picked = {layer: out.hidden_states[i] for layer, i in indices.items()}
            else:
                out = base(input_ids=ids, attention_mask=mask, output_hidden_states=need_all)
                picked = _pick(out, indices, n_layers)
                final = out.last_hidden_state
                logits = head(final.gather(1, mask_pos[..., None].expand(-1, -1, final.shape[-1])))
            gen_ids[rows] = logits.argmax(-1).cpu().numpy()
            for layer, h in picked.items():
                at_masks = h.gather(1, mask_pos[..., None].expand(-1, -1, h.shape[-1]))
                store.put(f"first_gen@{layer}", rows, at_masks[:, 0])
                store.put(f"gen@{layer}", rows, at_masks[:, 1:])
                count = prompt_pos.sum(1, keepdim=True).clamp(min=1).float()
                store.put(f"prompt_mean@{layer}", rows,
                          torch.where(prompt_pos[..., None], h.float(), 0.0).sum(1) / count)
            if progress:
                progress(len(rows))
    return StepStates(store.arrays, gen_ids, np.ones((n, n_masks), dtype=bool),
                      np.array([len(x) for x in prompt_ids], dtype=np.int64),
                      {str(k): v for k, v in indices.items()}, n_layers, False)


def run_seq2seq(model, token_ids: Sequence[Sequence[int]], *, max_new_tokens: int, layers: Sequence[int],
                batch_size: int, eos: set[int], pad_id: int, temperature: float | None = None, generator=None,
                keep_states: bool = True, progress: Callable[[int], None] | None = None) -> StepStates:
    """Encoder states for the prompt modes, decoder states (greedy decoding, KV cache) for the answer modes."""
    import torch

    from inbedder.models import pad_right

    cfg = model.config
    n_enc = cfg.num_layers if hasattr(cfg, "num_layers") else cfg.encoder_layers
    n_dec = getattr(cfg, "num_decoder_layers", None) or getattr(cfg, "decoder_layers", None) or n_enc
    enc_idx = resolve_layers(layers, n_enc, "the encoder")
    dec_idx = resolve_layers(layers, n_dec, "the decoder")
    start_id = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else pad_id
    device = next(model.parameters()).device
    encoder = model.get_encoder()
    n, steps = len(token_ids), max_new_tokens
    store = _Store(n)
    gen_ids = np.full((n, steps), -1, dtype=np.int64)
    gen_mask = np.zeros((n, steps), dtype=bool)
    eos_t = torch.tensor(sorted(eos) or [-1], device=device)
    need_enc = keep_states and any(i != n_enc for i in enc_idx.values())
    with torch.inference_mode():
        for rows in plan_batches([len(x) for x in token_ids], batch_size):
            ids, mask = pad_right([token_ids[r] for r in rows], pad_id, device)
            enc = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=need_enc)
            if keep_states:
                real = mask.bool().unsqueeze(-1)
                count = real.sum(1).float()
                for layer, h in _pick(enc, enc_idx, n_enc).items():
                    store.put(f"prompt_mean@{layer}", rows, torch.where(real, h.float(), 0.0).sum(1) / count)
            token = torch.full((len(rows),), start_id, dtype=torch.long, device=device)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            cache, batch_ids, batch_mask = None, [], []
            for t in range(steps):
                if bool(done.all()):
                    break
                out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=token[:, None],
                            past_key_values=cache, use_cache=True, output_hidden_states=True)
                cache = out.past_key_values
                if keep_states:
                    for layer, index in dec_idx.items():
                        h = out.decoder_hidden_states[index][:, 0]
                        if t == 0:
                            store.put(f"first_gen@{layer}", rows, h)
                        else:
                            name = f"gen@{layer}"
                            if name not in store.arrays:
                                store.arrays[name] = np.zeros((n, steps - 1, h.shape[-1]), dtype=np.float32)
                            store.arrays[name][rows, t - 1] = h.float().cpu().numpy()
                nxt = _next_tokens(_softcap(model, out.logits[:, -1]), temperature, generator)
                token, done = _record_step(nxt, done, pad_id, eos_t, batch_ids, batch_mask)
            gen_ids[rows, : len(batch_ids)] = torch.stack(batch_ids, 1).cpu().numpy()
            gen_mask[rows, : len(batch_mask)] = torch.stack(batch_mask, 1).cpu().numpy()
            if progress:
                progress(len(rows))
    if keep_states:
        for layer in dec_idx:
            if f"gen@{layer}" not in store.arrays:
                h = store.arrays[f"first_gen@{layer}"].shape[-1]
                store.arrays[f"gen@{layer}"] = np.zeros((n, steps - 1, h), dtype=np.float32)
    return StepStates(store.arrays, gen_ids, gen_mask, np.array([len(x) for x in token_ids], dtype=np.int64),
                      {str(k): v for k, v in dec_idx.items()}, n_dec, False)


def encode_sentences(model_dir: str | os.PathLike, texts: Sequence[str], *, batch_size: int, device: str,
                     dtype: str = "float32", progress: bool = True, model=None) -> np.ndarray:
    """Embed texts with a sentence-transformers folder: float32 [N, H], duplicates computed once."""
    import torch
    from sentence_transformers import SentenceTransformer

    from inbedder.models import torch_dtype

    if model is None:
        model = SentenceTransformer(str(model_dir), device=device)
        if dtype != "float32":
            model = model.to(torch_dtype(dtype))
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    emb = model.encode(unique, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=progress)
    emb = emb.to(torch.float32).cpu().numpy()
    where = {t: i for i, t in enumerate(unique)}
    return emb[[where[t] for t in texts]]


# ----------------------------------------------------------------------------------------------
# the filter (the pure decision lives in pooling)


def filler_tokens(tokenizer) -> list[str]:
    """Decoded tokens of the filler phrases ("Based on", "Sure!"), with and without a leading space."""
    out: list[str] = []
    for phrase in FILLER_PHRASES:
        for variant in (phrase, " " + phrase):
            out += decode_tokens(tokenizer, tokenizer(variant, add_special_tokens=False).input_ids)
    return list(dict.fromkeys(out))


def instruction_tokens(tokenizer, instruction: str) -> list[str]:
    """The instruction's tokens, decoded one by one, as they appear inside a prompt and on their own."""
    out: list[str] = []
    for variant in (instruction, " " + instruction):
        out += decode_tokens(tokenizer, tokenizer(variant, add_special_tokens=False).input_ids)
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------------------------
# the entry points


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, mininterval=2.0, smoothing=0.1)


def _resolve(device: str, dtype: str) -> tuple[str, str]:
    from inbedder.config import resolve_device, resolve_dtype

    device = resolve_device({"device": device})
    return device, resolve_dtype({"dtype": dtype}, device)


def answer_rows(tokenizer, prompts: Sequence[Mapping[str, str]], states: StepStates, eos: set[int],
                fillers: Sequence[str]) -> list[dict[str, Any]]:
    """answers.jsonl rows: the greedy answer, its token ids, decoded tokens and the filtered answer."""
    from inbedder.pooling import keep_steps

    instr_cache: dict[str, list[str]] = {}
    rows = []
    for i, prompt in enumerate(prompts):
        valid = [int(t) for t, m in zip(states.gen_ids[i], states.gen_mask[i], strict=True) if m]
        answer_ids = []
        for t in valid:
            if t in eos:
                break
            answer_ids.append(t)
        tokens = decode_tokens(tokenizer, valid)
        instr = instr_cache.setdefault(prompt["instruction"], instruction_tokens(tokenizer, prompt["instruction"]))
        keep = keep_steps(tokens, [True] * len(tokens), instr, fillers, fallback=False)
        kept = [t for t, k in zip(valid, keep, strict=True) if k and t not in eos]
        rows.append({
            "id": i,
            "answer": tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
            "token_ids": valid,
            "tokens": tokens,
            "instruction_tokens": instr,
            "answer_filtered": tokenizer.decode(kept, skip_special_tokens=True).strip(),
        })
    return rows


def encode_prompts(
    model_dir: str | os.PathLike,
    kind: str,
    prompts: Sequence[Mapping[str, str]],
    template: str,
    out_dir: str | os.PathLike,
    *,
    max_new_tokens: int = 3,
    layers: Sequence[int] = (-1,),
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    re_encoder_dir: str | os.PathLike | None = None,
    re_encode_multi: bool = False,
    max_length: int = 512,
    seed: int = 0,
    progress: bool = True,
    loaded: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Write the encode cache of `prompts` into `out_dir` (reused when valid); return its meta."""
    out = Path(out_dir)
    prompts = distinct_prompts(prompts)
    if not prompts:
        raise ValueError(f"{out}: no prompts to encode")
    device, dtype = _resolve(device, dtype)
    settings = Settings(kind=kind, template=template, max_new_tokens=int(max_new_tokens if kind != "sentence-encoder"
                        else 0), layers=tuple(int(x) for x in layers), batch_size=int(batch_size), device=device,
                        dtype=dtype, max_length=int(max_length), re_encode=re_encoder_dir is not None,
                        re_encode_multi=bool(re_encode_multi), seed=int(seed))
    if kind in GENERATIVE_KINDS and template not in TEMPLATES and "{input}" not in template:
        raise ValueError(f"template {template!r} is neither a known name ({sorted(TEMPLATES)}) nor has {{input}}")
    re_fp = model_fingerprint(re_encoder_dir) if settings.re_encode and kind in GENERATIVE_KINDS else None
    fields = key_fields(settings, model_fingerprint(model_dir), prompts, re_fp)
    key = cache_key(fields)
    reason = validate_cache(out, key)
    if reason is None or (_recover_meta(out, key) and validate_cache(out, key) is None):
        log.info("%s: valid cache %s reused", out, key[:12])
        return check_cache(out, key)
    log.info("%s: encoding %d prompts (%s)", out, len(prompts), reason)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # from here on the folder is incomplete until meta.json is back

    start = time.perf_counter()
    extra: dict[str, Any] = {}
    answers: list[dict[str, Any]] | None = None
    if kind == "sentence-encoder":
        texts = [p["text"] for p in prompts]
        prefixed = [format_prompt("instructor", p["instruction"], p["text"]) for p in prompts]
        tensors = {
            "plain": encode_sentences(model_dir, texts, batch_size=batch_size, device=device, dtype=dtype,
                                      progress=progress),
            "prefixed": encode_sentences(model_dir, prefixed, batch_size=batch_size, device=device, dtype=dtype,
                                         progress=progress),
        }
    else:
        tensors, answers, extra = _encode_lm(model_dir, settings, prompts, progress, loaded)
        if settings.re_encode:
            tensors.update(re_encode(re_encoder_dir, answers, device=device, batch_size=batch_size,
                                     progress=progress))
            if settings.re_encode_multi:
                tensors["re-encode-multi"] = _re_encode_multi(model_dir, settings, prompts, re_encoder_dir,
                                                              progress, loaded)
    seconds = time.perf_counter() - start
    meta = {**fields, "cache_key": key, "model_dir": str(model_dir),
            "re_encoder_dir": str(re_encoder_dir) if re_fp else None, **extra,
            "stats": {"seconds": round(seconds, 3), "prompts_per_second": round(len(prompts) / seconds, 3)},
            "versions": _versions()}
    return write_cache(out, meta, prompts, answers, tensors)


def write_cache(out: Path, meta: dict[str, Any], prompts: Sequence[Mapping[str, str]],
                answers: list[dict[str, Any]] | None, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Write prompts, answers, hidden states, then meta.json (last, with every file's size and sha256)."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    write_jsonl(out / PROMPTS, [{"id": i, "text": p["text"], "instruction": p["instruction"]}
                                for i, p in enumerate(prompts)])
    files = {PROMPTS: out / PROMPTS}
    if answers is not None:
        write_jsonl(out / ANSWERS, answers)
        files[ANSWERS] = out / ANSWERS
    elif (out / ANSWERS).exists():
        (out / ANSWERS).unlink()
    meta = dict(meta)
    meta["files"] = {name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for name, p in files.items()}
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(out / HIDDEN) as tmp:
        save_file(arrays, str(tmp), metadata={"cache_key": meta["cache_key"], "meta": json.dumps(meta, default=str)})
    meta["files"][HIDDEN] = {"bytes": (out / HIDDEN).stat().st_size, "sha256": sha256_file(out / HIDDEN)}
    write_json(out / META, meta)
    return meta


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def load_model(model_dir: str | os.PathLike, kind: str, device: str, dtype: str, attention: str | None = None):
    """(model, tokenizer) of a language-model folder, ready for inference.

    `attention` picks transformers' attention implementation; by default causal LMs on CPU use "eager":
    for prompts of tens of tokens it measured 7-10% faster here than SDPA's CPU flash kernel (the
    score matrices are tiny); elsewhere the model's default (SDPA) is kept.
    """
    from inbedder.models import load_lm

    model, tokenizer = load_lm(model_dir, kind, device=device, dtype=dtype)
    if attention is None and kind == "causal" and device == "cpu":
        attention = "eager"
    if attention is not None:
        model.set_attn_implementation(attention)
    return model, tokenizer


def _tokenize(tokenizer, settings: Settings, prompts: Sequence[Mapping[str, str]]) -> list[list[int]]:
    from inbedder.models import special_ids

    if settings.kind == "masked":
        head, tail = special_ids(tokenizer)
        budget = settings.max_length - settings.max_new_tokens - len(head) - len(tail)
        return [prompt_token_ids(tokenizer, settings.template, p["text"], p["instruction"], budget,
                                 add_special_tokens=False) for p in prompts]
    return [prompt_token_ids(tokenizer, settings.template, p["text"], p["instruction"], settings.max_length)
            for p in prompts]


def _pad_id(tokenizer, eos: set[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if eos:
        return min(eos)
    return 0


def run_lm(model, tokenizer, settings: Settings, prompts: Sequence[Mapping[str, str]],
           progress: bool = True) -> tuple[StepStates, set[int]]:
    """Tokenise and run a loaded language model over the prompts: (states, EOS ids)."""
    ids = _tokenize(tokenizer, settings, prompts)
    eos = eos_ids(model, tokenizer)
    bar = _progress_bar(len(prompts), f"encode ({settings.kind}, {settings.dtype})", progress)
    try:
        if settings.kind == "causal":
            states = run_causal(model, ids, max_new_tokens=settings.max_new_tokens, layers=settings.layers,
                                batch_size=settings.batch_size, eos=eos, pad_id=_pad_id(tokenizer, eos),
                                progress=bar.update)
        elif settings.kind == "masked":
            states = run_masked(model, tokenizer, ids, n_masks=settings.max_new_tokens, layers=settings.layers,
                                batch_size=settings.batch_size, progress=bar.update)
        else:
            states = run_seq2seq(model, ids, max_new_tokens=settings.max_new_tokens, layers=settings.layers,
                                 batch_size=settings.batch_size, eos=eos, pad_id=_pad_id(tokenizer, eos),
                                 progress=bar.update)
    finally:
        bar.close()
    return states, eos


def _encode_lm(model_dir, settings: Settings, prompts, progress: bool, loaded):
    model, tokenizer = loaded if loaded is not None else load_model(model_dir, settings.kind, settings.device,
                                                                     settings.dtype)
    states, eos = run_lm(model, tokenizer, settings, prompts, progress)
    fillers = filler_tokens(tokenizer)
    answers = answer_rows(tokenizer, prompts, states, eos, fillers)
    tensors = dict(states.tensors)
    tensors["gen_ids"] = states.gen_ids
    tensors["gen_mask"] = states.gen_mask
    tensors["prompt_len"] = states.prompt_len
    extra = {
        "num_layers": states.num_layers,
        "layer_index": states.layer_index,
        "hidden_size": {k: int(v.shape[-1]) for k, v in states.tensors.items() if k.startswith("first_gen@")},
        "first_gen_in_prompt": states.first_gen_in_prompt,
        "eos_ids": sorted(eos),
        "filter": {"stopwords": STOPWORD_LIST_NAME, "filler_tokens": fillers,
                   "step_token": "the token each generation step predicts, decoded alone, space marker "
                                 "stripped, lower-cased"},
        "answers": {"mean_tokens": float(states.gen_mask.sum(1).mean()),
                    "ended_by_eos": float(np.mean([any(int(t) in eos for t in row if t >= 0)
                                                   for row in states.gen_ids]))},
    }
    return tensors, answers, extra


def re_encode(re_encoder_dir, answers: Sequence[Mapping[str, Any]], *, device: str, batch_size: int,
              progress: bool = True) -> dict[str, np.ndarray]:
    """`re-encode` and `re-encode+filter`: the answer and the filtered answer embedded by a sentence encoder
    (an answer whose every token the filter drops is embedded as the empty string)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(re_encoder_dir), device=device)
    return {
        "re-encode": encode_sentences(re_encoder_dir, [a["answer"] for a in answers], batch_size=batch_size,
                                      device=device, progress=progress, model=model),
        "re-encode+filter": encode_sentences(re_encoder_dir, [a["answer_filtered"] for a in answers],
                                             batch_size=batch_size, device=device, progress=progress, model=model),
    }


def _re_encode_multi(model_dir, settings: Settings, prompts, re_encoder_dir, progress: bool, loaded) -> np.ndarray:
    """Mean embedding of MULTI_SAMPLES answers sampled at MULTI_TEMPERATURE (seeded)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model, tokenizer = loaded if loaded is not None else load_model(model_dir, settings.kind, settings.device,
                                                                     settings.dtype)
    ids = _tokenize(tokenizer, settings, prompts)
    eos = eos_ids(model, tokenizer)
    encoder = SentenceTransformer(str(re_encoder_dir), device=settings.device)
    runner = run_causal if settings.kind == "causal" else run_seq2seq
    total = None
    for sample in range(MULTI_SAMPLES):
        generator = torch.Generator(device=settings.device).manual_seed(settings.seed * 1000 + sample)
        bar = _progress_bar(len(prompts), f"re-encode-multi sample {sample + 1}/{MULTI_SAMPLES}", progress)
        states = runner(model, ids, max_new_tokens=settings.max_new_tokens, layers=settings.layers,
                        batch_size=settings.batch_size, eos=eos, pad_id=_pad_id(tokenizer, eos),
                        temperature=MULTI_TEMPERATURE, generator=generator, keep_states=False, progress=bar.update)
        bar.close()
        texts = []
        for row, m in zip(states.gen_ids, states.gen_mask, strict=True):
            kept = [int(t) for t, ok in zip(row, m, strict=True) if ok and int(t) not in eos]
            texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
        emb = encode_sentences(re_encoder_dir, texts, batch_size=settings.batch_size, device=settings.device,
                               progress=False, model=encoder)
        total = emb if total is None else total + emb
    return total / MULTI_SAMPLES


def encode_task(
    task: str,
    task_spec: Mapping[str, Any],
    model_dir: str | os.PathLike,
    kind: str,
    out_dir: str | os.PathLike,
    *,
    template: str,
    max_new_tokens: int = 3,
    layers: Sequence[int] = (-1,),
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    re_encoder_dir: str | os.PathLike | None = None,
    re_encode_multi: bool = False,
    data_dir: str | os.PathLike = "data",
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The encode rule's entry point: the task's distinct prompts (inbedder.tasks), then encode_prompts."""
    from inbedder.tasks import task_prompts

    prompts = task_prompts(task, dict(task_spec), data_dir=data_dir, limit=limit)
    return encode_prompts(model_dir, kind, prompts, template, out_dir, max_new_tokens=max_new_tokens,
                          layers=layers, batch_size=batch_size, device=device, dtype=dtype,
                          re_encoder_dir=re_encoder_dir, re_encode_multi=re_encode_multi, progress=progress)


def re_encoder_name(model: str, task: str, config: Mapping[str, Any]) -> str | None:
    """The sentence encoder (config `re_encoder`) when a re-encode mode of the model is scored on the task."""
    from inbedder.tasks import modes_for

    spec = config["models"][model]
    modes = modes_for(config["tasks"][task], spec.get("modes", []))
    if spec["kind"] == "sentence-encoder" or not any(m.startswith("re-encode") for m in modes):
        return None
    name = config.get("re_encoder")
    if not name:
        raise ValueError(f"models.{model}.modes has a re-encode mode but config `re_encoder` is not set")
    if name not in config["models"] or config["models"][name]["kind"] != "sentence-encoder":
        raise ValueError(f"re_encoder: {name!r} is not a sentence-encoder key of models")
    return str(name)


def rule_params(model: str, recipe: str, task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Params of the encode rule: exactly the settings that change a cache (model folders are inputs).

    Template: the recipe's (`recipes.<r>.template`), "inbedder" for `none` and `released`; answer
    length `models.<m>.max_new_tokens` (default 3); `layers`, `encode_batch_size`, `device`, `dtype`;
    re-encode-multi when the model's scored modes include it; the task entry and `limits.task_rows`.
    """
    from inbedder.tasks import modes_for

    models, recipes, tasks = config["models"], config.get("recipes") or {}, config["tasks"]
    if model not in models:
        raise KeyError(f"model {model!r} is not a key of models; known: {sorted(models)}")
    if task not in tasks:
        raise KeyError(f"task {task!r} is not a key of tasks; known: {sorted(tasks)}")
    if recipe not in recipes and recipe not in ("none", "released"):
        raise KeyError(f"recipe {recipe!r} is not a key of recipes, 'none' or 'released'")
    spec = models[model]
    generative = spec["kind"] != "sentence-encoder"
    modes = modes_for(tasks[task], spec.get("modes", []))
    return {
        "task": task,
        "task_spec": dict(tasks[task]),
        "kind": spec["kind"],
        "template": recipes[recipe]["template"] if recipe in recipes else "inbedder",
        "max_new_tokens": int(spec.get("max_new_tokens", 3)) if generative else 0,
        "layers": [int(x) for x in config.get("layers", [-1])] if generative else [-1],
        "batch_size": int(config.get("encode_batch_size", 32)),
        "device": config.get("device", "auto"),
        "dtype": config.get("dtype", "auto"),
        "re_encode_multi": generative and "re-encode-multi" in modes,
        "limit": (config.get("limits") or {}).get("task_rows"),
    }


def read_prompts(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """prompts.jsonl of a cache."""
    return read_jsonl(Path(out_dir) / PROMPTS)
