"""The encode cache, owned here: its files, its key, its validation, writing and reading.

`results/<run>/cache/<model>-<recipe>/<task>/` (docs/contracts.md), written by `write_cache`, each
file atomically and `meta.json` last (the completion marker):

- `prompts.jsonl`  `id, text, instruction`: every distinct (text, instruction), in first-seen order;
- `answers.jsonl`  `id, answer, token_ids` plus `tokens` (each generated token decoded on its own),
                   `instruction_tokens` (the instruction's tokens, decoded) and `answer_filtered` (the
                   answer without the tokens the filter drops); language models only;
- `hidden.safetensors`, float32 states, for each configured layer L (`@L` is the configured value,
  e.g. `first_gen@-1`):
    `first_gen@L [N,H]`   state at the last prompt token: it predicts the first answer token;
    `prompt_mean@L [N,H]` mean over the prompt tokens except the last (masked LMs: the prompt text
                          tokens, after `<s>` too under `method.masked_prompt_modes: authors`;
                          seq2seq: every encoder token);
    `all_mean@L [N,H]`    masked LMs under `method.masked_prompt_modes: authors`: mean over every
                          position (`<s>`, prompt, masks, `</s>`);
    `gen@L [N,G,H]`       states AT generated tokens 1..G, each predicting the next token; with
                          `first_gen` they are the generation steps (masked LMs: the T mask states);
                          causal LMs: G = max(T-1, 1), the state at the first generated token is
                          always there (the authors' stand-in step);
  and `gen_ids [N,T]` (token predicted by each step, -1 where no step ran), `gen_mask [N,T]` (steps
  up to and including the first EOS), `prompt_len [N]` (the prompt tokens `prompt_mean` averages,
  plus the last one for causal LMs);
  sentence encoders: `plain [N,H]` (the text) and `prefixed [N,H]` ("{instruction}: {text}");
  with a re-encoder: `re-encode [N,H]`, `re-encode+filter [N,H]` (and `re-encode-multi [N,H]`);
- `meta.json`: the model fingerprint, template, generation and compute settings, layers, the config
  `method` switches (with the task's filter instructions), the prompt list's sha256, and `cache_key`
  = sha256 of all of these; plus the size and sha256 of every file, the special token ids and the
  ids the authors' filter drops (`filter.authors_ids`).

A cache is reused only when `validate_cache` finds `meta.json` with the expected key and every file
intact; a changed prompt set or setting is a new key, a truncated or corrupt file is recomputed.
`hidden.safetensors` carries a copy of the meta in its header, so a cache whose `meta.json` alone
was removed (Snakemake deletes a job's declared output before rerunning it) is recovered by
`recover_meta` without running the model again, after its key and every checksum are checked.
`load_cache` reads a checked cache into memory (`Cache`); `inbedder.encode` fills caches,
`inbedder.pooling` computes embeddings from them.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inbedder.files import atomic_path, read_jsonl, sha256_file, sha256_json, write_json, write_jsonl
from inbedder.text import TEMPLATES
from inbedder.vocabulary import GENERATIVE_KINDS, MODEL_KINDS

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
PROMPTS, ANSWERS, HIDDEN, META = "prompts.jsonl", "answers.jsonl", "hidden.safetensors", "meta.json"
# re-encode-multi: answers sampled per prompt and their temperature (part of the key)
MULTI_SAMPLES, MULTI_TEMPERATURE = 10, 0.8

# the meta.json fields the cache key hashes (key_fields)
KEY_NAMES = ("format", "kind", "model_fingerprint", "template", "template_text", "generation", "layers",
              "compute", "method", "re_encoder", "prompts")
# nucleus of the re-encode-multi draws under method.re_encode_multi_sampling: authors
MULTI_TOP_P = 0.9
# the config `method` switches that change an encode cache (each a Settings field)
METHOD_KEYS = ("truncation", "special_steps", "filter", "masked_prompt_modes", "re_encode_multi_sampling")


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
    # config `method` (inbedder.fidelity): the authors' value first
    truncation: str = "authors"
    special_steps: str = "authors"
    filter: str = "authors"
    masked_prompt_modes: str = "authors"
    re_encode_multi_sampling: str = "authors"
    filter_instructions: tuple[str, ...] = ()
    # config `models.<m>.decoding`: greedy when temperature is None
    temperature: float | None = None
    top_p: float | None = None
    sample_seed: int = 42
    # config `models.<m>.keep_last_words`: each text cut to its last N space-separated words first
    keep_last_words: int | None = None

    def __post_init__(self) -> None:
        from inbedder.fidelity import method_settings

        method_settings({"method": self.method()})  # a ValueError naming the key of a wrong value
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(MODEL_KINDS)}")
        if self.kind in GENERATIVE_KINDS and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.layers:
            raise ValueError("layers: at least one layer is needed (-1 = last)")
        if self.re_encode_multi and self.kind != "causal" and self.kind != "seq2seq":
            raise ValueError(f"re-encode-multi samples answers; a {self.kind} model cannot (causal or seq2seq only)")


    def decoding(self) -> str | dict[str, float | int | None]:
        """"greedy", or the sampling settings (config `models.<m>.decoding`)."""
        if self.temperature is None or self.kind == "masked":
            return "greedy"
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.sample_seed}

    def method(self) -> dict[str, str]:
        """The `method` switches that change this cache."""
        return {key: getattr(self, key) for key in METHOD_KEYS}


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
        "generation": {"decoding": settings.decoding(), "max_new_tokens": settings.max_new_tokens,
                       "max_length": settings.max_length, "keep_last_words": settings.keep_last_words}
        if generative else None,
        "layers": [int(x) for x in settings.layers] if generative else None,
        "compute": {"device": settings.device, "dtype": settings.dtype, "batch_size": settings.batch_size},
        "method": {**settings.method(), "filter_instructions": list(settings.filter_instructions)}
        if generative else None,
        "re_encoder": ({"fingerprint": re_encoder_fp,
                        "multi": {"samples": MULTI_SAMPLES, "temperature": MULTI_TEMPERATURE, "seed": settings.seed,
                                  "top_p": MULTI_TOP_P if settings.re_encode_multi_sampling == "authors" else None}
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
    if meta.get("cache_key") != cache_key({k: meta.get(k) for k in KEY_NAMES}):
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


def recover_meta(out_dir: Path, key: str) -> bool:
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
# writing and reading


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


def read_prompts(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """prompts.jsonl of a cache."""
    return read_jsonl(Path(out_dir) / PROMPTS)


@dataclass(frozen=True)
class Cache:
    """An encode cache read into memory: meta, prompts, answers (language models) and arrays."""

    path: Path
    meta: dict[str, Any]
    prompts: list[dict[str, Any]]
    answers: list[dict[str, Any]] | None
    tensors: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.prompts)


def load_cache(cache_dir: str | os.PathLike, expected_key: str | None = None) -> Cache:
    """Read a cache after checking it (meta.json, key, sizes, checksums); raise CacheError if it is not valid."""
    from safetensors.numpy import load_file

    path = Path(cache_dir)
    if path.name == META:
        path = path.parent
    meta = check_cache(path, expected_key)
    prompts = read_jsonl(path / PROMPTS)
    answers = read_jsonl(path / ANSWERS) if ANSWERS in meta["files"] else None
    tensors = load_file(str(path / HIDDEN))
    n = meta["prompts"]["n"]
    if len(prompts) != n or (answers is not None and len(answers) != n):
        raise ValueError(f"{path}: {len(prompts)} prompts / {None if answers is None else len(answers)} answers, "
                         f"meta.json says {n}")
    for name, array in tensors.items():
        if array.shape[0] != n:
            raise ValueError(f"{path}/{HIDDEN}: {name} has {array.shape[0]} rows, expected {n}")
    return Cache(path, meta, prompts, answers, tensors)
