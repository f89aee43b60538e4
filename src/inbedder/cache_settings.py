"""What an encode cache is keyed by: its `Settings`, the meta.json fields the key hashes, and the key.

Part of the cache format owned by `inbedder.cache` (which serves these names to the other stages): a
changed setting, model or prompt list is a new `cache_key`, and a cache is reused only under its own
key. The key hashes `key_fields`: the cache format, the model kind and fingerprint, the template the
kind is prompted with, the generation settings, layers, compute, the config `method` switches (with
the task's filter instructions), the re-encoder and the prompt list's sha256.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inbedder.fidelity import method_settings
from inbedder.files import sha256_file, sha256_json
from inbedder.model_kinds import SAMPLING_KINDS, kind_of
from inbedder.text import TEMPLATES

CACHE_FORMAT = 2
# re-encode-multi: answers sampled per prompt and their temperature (part of the key)
MULTI_SAMPLES, MULTI_TEMPERATURE = 10, 0.8

# the meta.json fields the cache key hashes (key_fields)
KEY_NAMES = ("format", "kind", "model_fingerprint", "template", "template_text", "generation", "layers",
              "compute", "method", "re_encoder", "prompts")
# key fields only some caches have (the positive control's gold labels): absent ones leave the key as it was
OPTIONAL_KEY_NAMES = ("gold",)
# nucleus of the re-encode-multi draws under method.re_encode_multi_sampling: authors
MULTI_TOP_P = 0.9
# the config `method` switches that change an encode cache (each a Settings field)
METHOD_KEYS = ("truncation", "special_steps", "filter", "masked_prompt_modes", "re_encode_multi_sampling")


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
    # config `method` (inbedder.fidelity), keyword-only, no default: the caller passes the config's values
    truncation: str = field(kw_only=True)
    special_steps: str = field(kw_only=True)
    filter: str = field(kw_only=True)
    masked_prompt_modes: str = field(kw_only=True)
    re_encode_multi_sampling: str = field(kw_only=True)
    filter_instructions: tuple[str, ...] = ()
    # config `models.<m>.decoding`: greedy when temperature is None
    temperature: float | None = None
    top_p: float | None = None
    sample_seed: int = 42
    # config `models.<m>.keep_last_words`: each text cut to its last N space-separated words first
    keep_last_words: int | None = None

    def __post_init__(self) -> None:
        method_settings({"method": self.method()})  # a ValueError naming the key of a wrong value
        kind = kind_of(self.kind)
        if kind.generative and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.layers:
            raise ValueError("layers: at least one layer is needed (-1 = last)")
        if self.re_encode_multi and not kind.samples:
            raise ValueError(f"re-encode-multi samples answers; a {self.kind} model cannot "
                             f"({' or '.join(SAMPLING_KINDS)} only)")

    def decoding(self) -> str | dict[str, float | int | None]:
        """"greedy", or the sampling settings (config `models.<m>.decoding`) of a kind that samples."""
        if self.temperature is None or not kind_of(self.kind).samples:
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
    kind = kind_of(settings.kind)
    generative = kind.generative
    template = kind.prompt_template(settings.template)
    return {
        "format": CACHE_FORMAT,
        "kind": settings.kind,
        "model_fingerprint": model_fp,
        "template": template,
        "template_text": TEMPLATES.get(template, template),
        "generation": {"decoding": settings.decoding(), "max_new_tokens": settings.max_new_tokens,
                       "max_length": settings.max_length, "keep_last_words": settings.keep_last_words}
        if generative else None,
        "layers": [int(x) for x in settings.layers] if generative else None,
        "compute": {"device": settings.device, "dtype": settings.dtype, "batch_size": settings.batch_size},
        "method": {**settings.method(), "filter_instructions": list(settings.filter_instructions)}
        if generative else None,
        "re_encoder": ({"fingerprint": re_encoder_fp,
                        "multi": {"samples": MULTI_SAMPLES, "temperature": MULTI_TEMPERATURE,
                                  "seed": settings.seed,
                                  "top_p": MULTI_TOP_P if settings.re_encode_multi_sampling == "authors"
                                  else None}
                        if settings.re_encode_multi else None}
                       if settings.re_encode and generative else None),
        "prompts": {"n": len(prompts), "sha256": prompts_sha256(prompts)},
    }


def cache_key(fields: Mapping[str, Any]) -> str:
    """sha256 of the key fields."""
    return sha256_json(dict(fields))
