"""One cached pass per (model, task): generated answers and the hidden states every embedding mode needs.

An encode job is an `EncodeJob` (built from the encode rule's params by `job_from_params`, passed whole).
`encode_prompts` fills `results/<run>/cache/<model>-<recipe>/<task>/` (the format, its key and its
validation are owned by `inbedder.cache`): the distinct prompts of a task table, the answers generated
for them and the hidden states every embedding mode is pooled from (`inbedder.pooling`), in phases:
the cache key (`_key`), reuse of a valid cache, the model run into a `RowStore` (`_compute`), the meta
and the files (`inbedder.cache.write_cache`).

How a kind prompts and decodes is its `inbedder.model_kinds` class; the model runs themselves are in
`inbedder.decoding`. The states are written to disk as the batches finish (`inbedder.cache.RowStore`, a
temporary folder in the cache folder) and streamed into `hidden.safetensors` at the end, so an encode
job's memory does not grow with the number of prompts; sentence encoders embed `SENTENCE_CHUNK` texts
at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inbedder.cache import (
    META,
    METHOD_KEYS,
    MULTI_SAMPLES,
    MULTI_TEMPERATURE,
    MULTI_TOP_P,
    WRITE_CHUNK_ROWS,
    RowStore,
    Settings,
    cache_key,
    check_cache,
    distinct_prompts,
    key_fields,
    model_fingerprint,
    recover_meta,
    validate_cache,
    write_cache,
)
from inbedder.config import resolve_device, resolve_dtype
from inbedder.controls import gold_texts
from inbedder.decoding import StepStates, eos_ids
from inbedder.fidelity import method_settings
from inbedder.files import sha256_file
from inbedder.loading import load_model, sentence_model
from inbedder.model_kinds import kind_of
from inbedder.task_kinds import modes_for, table_prompts
from inbedder.tasks import read_task_table
from inbedder.text import (
    STOPWORD_LIST_NAME,
    TEMPLATES,
    authors_filter_ids,
    decode_tokens,
    filler_tokens,
    format_prompt,
    instruction_tokens,
    keep_steps,
    prompt_token_ids,
)
from inbedder.vocabulary import GOLD_MODE

log = logging.getLogger(__name__)

# texts a sentence encoder embeds per call when an encode writes its cache (one call up to this many)
SENTENCE_CHUNK = 8192


def encode_sentences(model_dir: str | os.PathLike, texts: Sequence[str], *, batch_size: int, device: str,
                     dtype: str = "float32", progress: bool = True, model=None) -> np.ndarray:
    """Embed texts with a sentence-transformers folder: float32 [N, H], duplicates computed once."""
    import torch

    if model is None:
        model = sentence_model(model_dir, device, dtype)
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    emb = model.encode(unique, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=progress)
    emb = emb.to(torch.float32).cpu().numpy()
    where = {t: i for i, t in enumerate(unique)}
    return emb[[where[t] for t in texts]]


def _sentences_into(sink: RowStore, name: str, model, texts: Sequence[str], *, batch_size: int, device: str,
                    progress: bool) -> None:
    """Embed `texts` into array `name` of `sink`, `SENTENCE_CHUNK` texts per call."""
    for start in range(0, len(texts), SENTENCE_CHUNK):
        part = texts[start : start + SENTENCE_CHUNK]
        sink.put(name, range(start, start + len(part)),
                 encode_sentences(None, part, batch_size=batch_size, device=device, progress=progress, model=model))


# ----------------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class EncodeJob:
    """One encode job: the model folder and its kind, how it is prompted and decoded, compute, re-encoder.

    `method` holds config `method` keys (the authors' value for any left out); `filter_instructions`
    are the task's instructions the authors' filter drops the tokens of; `decoding` is "greedy" or
    config `models.<m>.decoding` (temperature, top_p, seed); `keep_last_words` cuts each text to its
    last N space-separated words before it is prompted (the prompts keep their full text as keys);
    `re_encoder_dir` is the sentence encoder of the re-encode modes (None: no re-encode mode).
    """

    model_dir: str | os.PathLike
    kind: str
    template: str
    # config values, keyword-only and without a default (the schema holds the defaults; the caller passes them)
    max_new_tokens: int = field(kw_only=True)
    layers: Sequence[int] = field(kw_only=True)
    device: str = field(kw_only=True)
    dtype: str = field(kw_only=True)
    decoding: str | Mapping[str, Any] = field(kw_only=True)
    batch_size: int = 32
    re_encoder_dir: str | os.PathLike | None = None
    re_encode_multi: bool = False
    max_length: int = 512
    seed: int = 0
    method: Mapping[str, str] | None = None
    filter_instructions: Sequence[str] = ()
    keep_last_words: int | None = None
    gold: Mapping[str, Any] | None = None  # the positive control's views (inbedder.controls.gold_spec)
    gold_table: str | os.PathLike | None = None  # the prepared table of its gold labels

    def settings(self) -> Settings:
        """The cache settings of this job (device and dtype resolved, `method` completed)."""
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        switches = method_settings({"method": dict(self.method or {})})
        generative = kind_of(self.kind).generative
        return Settings(kind=self.kind, template=self.template,
                        max_new_tokens=int(self.max_new_tokens if generative else 0),
                        layers=tuple(int(x) for x in self.layers), batch_size=int(self.batch_size),
                        device=device, dtype=dtype, max_length=int(self.max_length),
                        re_encode=self.re_encoder_dir is not None, re_encode_multi=bool(self.re_encode_multi),
                        seed=int(self.seed),
                        **{k: switches[k] for k in METHOD_KEYS},
                        filter_instructions=tuple(dict.fromkeys(str(x) for x in self.filter_instructions)),
                        keep_last_words=None if self.keep_last_words is None else int(self.keep_last_words),
                        **_sampling(self.decoding))


def job_from_params(params: Mapping[str, Any], model_dir: str | os.PathLike,
                    re_encoder_dir: str | os.PathLike | None = None,
                    gold_table: str | os.PathLike | None = None) -> EncodeJob:
    """An EncodeJob from the `settings` params of the encode rule (`inbedder.rule_params.encode_params`)."""
    return EncodeJob(model_dir=model_dir, re_encoder_dir=re_encoder_dir, gold_table=gold_table, **params)


def _sampling(decoding: str | Mapping[str, Any]) -> dict[str, Any]:
    """Settings fields of config `models.<m>.decoding`."""
    if decoding == "greedy" or decoding is None:
        return {}
    if not isinstance(decoding, Mapping) or "temperature" not in decoding:
        raise ValueError(f"decoding: expected 'greedy' or {{temperature, top_p, seed}}, got {decoding!r}")
    top_p = decoding.get("top_p")
    return {"temperature": float(decoding["temperature"]),
            "top_p": None if top_p is None or float(top_p) >= 1.0 else float(top_p),
            "sample_seed": int(decoding["seed"])}


# ----------------------------------------------------------------------------------------------
# the entry points


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, mininterval=2.0, smoothing=0.1)


def encode_task(job: EncodeJob, table: str | os.PathLike, out_dir: str | os.PathLike, *,
                progress: bool = True) -> dict[str, Any]:
    """The encode rule's entry point: the distinct prompts of a task table file, then encode_prompts."""
    return encode_prompts(job, table_prompts(read_task_table(table)), out_dir, progress=progress)


def encode_prompts(job: EncodeJob, prompts: Sequence[Mapping[str, str]], out_dir: str | os.PathLike, *,
                   progress: bool = True, loaded: tuple[Any, Any] | None = None,
                   chunk_rows: int = WRITE_CHUNK_ROWS) -> dict[str, Any]:
    """Write the encode cache of `prompts` into `out_dir` (reused when valid); return its meta.

    `loaded`: the job's (model, tokenizer), already in memory. `chunk_rows`: rows of a state array held
    in memory before they are written (the cache is the same for any value).
    """
    out = Path(out_dir)
    prompts = distinct_prompts(prompts)
    if not prompts:
        raise ValueError(f"{out}: no prompts to encode")
    settings = job.settings()
    fields = _key(job, settings, prompts)
    key = cache_key(fields)
    reason = validate_cache(out, key)
    if reason is None or (recover_meta(out, key) and validate_cache(out, key) is None):
        log.info("%s: valid cache %s reused", out, key[:12])
        return check_cache(out, key)
    log.info("%s: encoding %d prompts (%s)", out, len(prompts), reason)
    _clear(out)
    start = time.perf_counter()
    sink = RowStore(tempfile.mkdtemp(prefix=".hidden.", suffix=".parts", dir=out), len(prompts), chunk_rows)
    try:
        answers, extra = _compute(job, settings, prompts, sink, progress, loaded)
        seconds = time.perf_counter() - start
        meta = {**fields, "cache_key": key, "model_dir": str(job.model_dir),
                "re_encoder_dir": str(job.re_encoder_dir) if fields["re_encoder"] else None, **extra,
                "stats": {"seconds": round(seconds, 3), "prompts_per_second": round(len(prompts) / seconds, 3)},
                "versions": _versions()}
        return write_cache(out, meta, prompts, answers, sink)
    finally:
        sink.remove()


def _key(job: EncodeJob, settings: Settings, prompts: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """The fields the cache key hashes (the template checked first)."""
    generative = kind_of(settings.kind).generative
    if generative and settings.template not in TEMPLATES and "{input}" not in settings.template:
        raise ValueError(f"template {settings.template!r} is neither a known name ({sorted(TEMPLATES)}) nor "
                         f"has {{input}}")
    re_fp = model_fingerprint(job.re_encoder_dir) if settings.re_encode and generative else None
    fields = key_fields(settings, model_fingerprint(job.model_dir), prompts, re_fp)
    if job.gold:  # the positive control: its views and labels enter the key (absent otherwise: keys unchanged)
        if job.gold_table is None:
            raise ValueError("mode gold needs the prepared table of the task's gold labels (gold_table)")
        fields["gold"] = {"instructions": dict(job.gold["instructions"]),
                          "labels_sha256": sha256_file(job.gold_table)}
    return fields


def _clear(out: Path) -> None:
    """Make the folder an incomplete cache: no meta.json, no states of a killed job."""
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # from here on the folder is incomplete until meta.json is back
    for stale in out.glob(".hidden.*.parts"):  # the states of a job that was killed
        shutil.rmtree(stale, ignore_errors=True)


def _compute(job: EncodeJob, settings: Settings, prompts: Sequence[Mapping[str, str]], sink: RowStore,
             progress: bool, loaded) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """Run the model over the prompts, its arrays written to `sink`: (answers.jsonl rows or None, meta)."""
    if not kind_of(settings.kind).generative:
        model = sentence_model(job.model_dir, settings.device, settings.dtype)
        for name, texts in (("plain", [p["text"] for p in prompts]),
                            ("prefixed", [format_prompt("instructor", p["instruction"], p["text"])
                                          for p in prompts])):
            _sentences_into(sink, name, model, texts, batch_size=settings.batch_size, device=settings.device,
                            progress=progress)
        if job.gold:
            labels = gold_texts(prompts, pd.read_parquet(job.gold_table), job.gold["instructions"],
                                f"{job.gold_table} (tasks.<task>.gold)")
            _sentences_into(sink, GOLD_MODE, model, labels, batch_size=settings.batch_size,
                            device=settings.device, progress=progress)
        return None, {}
    answers, extra = _encode_lm(job.model_dir, settings, prompts, progress, loaded, sink)
    if settings.re_encode:
        re_encode(job.re_encoder_dir, answers, device=settings.device, batch_size=settings.batch_size,
                  progress=progress, sink=sink)
        if settings.re_encode_multi:
            sink.put("re-encode-multi", slice(None),
                     _re_encode_multi(job.model_dir, settings, prompts, job.re_encoder_dir, progress, loaded))
    return answers, extra


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _tokenize(tokenizer, settings: Settings, prompts: Sequence[Mapping[str, str]]) -> list[list[int]]:
    """The prompts' token ids, fitted to the kind (`ModelKind.prompt_fit`) and cut by `method.truncation`."""
    fit = kind_of(settings.kind).prompt_fit(tokenizer, settings.max_length, settings.max_new_tokens)
    words = settings.keep_last_words

    def text(p: Mapping[str, str]) -> str:
        return p["text"] if words is None else " ".join(p["text"].split(" ")[-words:])

    return [prompt_token_ids(tokenizer, settings.template, text(p), p["instruction"],
                             truncation=settings.truncation, **fit) for p in prompts]


def run_lm(model, tokenizer, settings: Settings, prompts: Sequence[Mapping[str, str]],
           progress: bool = True, sink: RowStore | None = None) -> tuple[StepStates, set[int]]:
    """Tokenise and run a loaded language model over the prompts: (states, EOS ids); with a `sink`
    the states are written to it as the batches finish."""
    import torch

    ids = _tokenize(tokenizer, settings, prompts)
    eos = eos_ids(model, tokenizer)
    bar = _progress_bar(len(prompts), f"encode ({settings.kind}, {settings.dtype})", progress)
    sampling = None
    if settings.temperature is not None:
        device = next(model.parameters()).device
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p,
                    "generator": torch.Generator(device=device).manual_seed(settings.sample_seed)}
    try:
        states = kind_of(settings.kind).decode(
            model, tokenizer, ids, max_new_tokens=settings.max_new_tokens, layers=settings.layers,
            batch_size=settings.batch_size, eos=eos, sampling=sampling, progress=bar.update, sink=sink,
            specials_in_prompt_modes=settings.masked_prompt_modes == "authors")
    finally:
        bar.close()
    return states, eos


def answer_rows(tokenizer, prompts: Sequence[Mapping[str, str]], states: StepStates, eos: set[int],
                fillers: Sequence[str], filter_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """answers.jsonl rows: the answer, its token ids, decoded tokens and the filtered answer.

    The filtered answer (what `re-encode+filter` embeds) leaves out the ids of `filter_ids` (config
    `method.filter: authors`) or, without them, the tokens the `words` filter drops.
    """
    instr_cache: dict[str, list[str]] = {}
    drop = None if filter_ids is None else {int(t) for t in filter_ids}
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
        if drop is None:
            keep = keep_steps(tokens, [True] * len(tokens), instr, fillers, fallback=False)
        else:
            keep = [t not in drop for t in valid]
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


def _encode_lm(model_dir, settings: Settings, prompts, progress: bool, loaded, sink: RowStore):
    """Run the model, its states and token arrays written to `sink`: (answers.jsonl rows, meta fields)."""
    model, tokenizer = loaded if loaded is not None else load_model(model_dir, settings.kind, settings.device,
                                                                     settings.dtype)
    states, eos = run_lm(model, tokenizer, settings, prompts, progress, sink)
    fillers = filler_tokens(tokenizer)
    filter_ids = (authors_filter_ids(tokenizer, settings.filter_instructions)
                  if kind_of(settings.kind).applies_authors_filter else [])
    answers = answer_rows(tokenizer, prompts, states, eos, fillers,
                          filter_ids if settings.filter == "authors" else None)
    for name in ("gen_ids", "gen_mask", "prompt_len"):
        sink.put(name, slice(None), getattr(states, name))
    extra = {
        "num_layers": states.num_layers,
        "layer_index": states.layer_index,
        "hidden_size": {k: int(v.shape[-1]) for k, v in states.tensors.items() if k.startswith("first_gen@")},
        "first_gen_in_prompt": states.first_gen_in_prompt,
        "eos_ids": sorted(eos),
        "special_ids": sorted({int(t) for t in tokenizer.all_special_ids} | eos),
        "filter": {"authors_ids": filter_ids,
                   "words": {"stopwords": STOPWORD_LIST_NAME, "filler_tokens": fillers,
                             "step_token": "the token each generation step predicts, decoded alone, space marker "
                                           "stripped, lower-cased"}},
        "answers": {"mean_tokens": float(states.gen_mask.sum(1).mean()),
                    "ended_by_eos": float(np.mean([any(int(t) in eos for t in row if t >= 0)
                                                   for row in states.gen_ids]))},
    }
    return answers, extra


def re_encode(re_encoder_dir, answers: Sequence[Mapping[str, Any]], *, device: str, batch_size: int,
              progress: bool = True, sink: RowStore | None = None) -> dict[str, np.ndarray] | None:
    """`re-encode` and `re-encode+filter`: the answer and the filtered answer embedded by a sentence encoder
    (an answer whose every token the filter drops is embedded as the empty string); written to `sink`
    when given, else returned."""
    model = sentence_model(re_encoder_dir, device)
    if sink is not None:
        for name, key in (("re-encode", "answer"), ("re-encode+filter", "answer_filtered")):
            _sentences_into(sink, name, model, [a[key] for a in answers], batch_size=batch_size, device=device,
                            progress=progress)
        return None
    return {
        "re-encode": encode_sentences(re_encoder_dir, [a["answer"] for a in answers], batch_size=batch_size,
                                      device=device, progress=progress, model=model),
        "re-encode+filter": encode_sentences(re_encoder_dir, [a["answer_filtered"] for a in answers],
                                             batch_size=batch_size, device=device, progress=progress, model=model),
    }


def _re_encode_multi(model_dir, settings: Settings, prompts, re_encoder_dir, progress: bool, loaded) -> np.ndarray:
    """Mean embedding of MULTI_SAMPLES answers sampled at MULTI_TEMPERATURE (seeded)."""
    import torch

    model, tokenizer = loaded if loaded is not None else load_model(model_dir, settings.kind, settings.device,
                                                                     settings.dtype)
    ids = _tokenize(tokenizer, settings, prompts)
    eos = eos_ids(model, tokenizer)
    encoder = sentence_model(re_encoder_dir, settings.device)
    kind = kind_of(settings.kind)
    total = None
    for sample in range(MULTI_SAMPLES):
        generator = torch.Generator(device=settings.device).manual_seed(settings.seed * 1000 + sample)
        bar = _progress_bar(len(prompts), f"re-encode-multi sample {sample + 1}/{MULTI_SAMPLES}", progress)
        sampling = {"temperature": MULTI_TEMPERATURE, "generator": generator,
                    "top_p": MULTI_TOP_P if settings.re_encode_multi_sampling == "authors" else None}
        states = kind.decode(model, tokenizer, ids, max_new_tokens=settings.max_new_tokens,
                             layers=settings.layers, batch_size=settings.batch_size, eos=eos, sampling=sampling,
                             keep_states=False, progress=bar.update)
        bar.close()
        texts = []
        for row, m in zip(states.gen_ids, states.gen_mask, strict=True):
            kept = [int(t) for t, ok in zip(row, m, strict=True) if ok and int(t) not in eos]
            texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
        emb = encode_sentences(re_encoder_dir, texts, batch_size=settings.batch_size, device=settings.device,
                               progress=False, model=encoder)
        total = emb if total is None else total + emb
    return total / MULTI_SAMPLES


def re_encoder_name(model: str, task: str, config: Mapping[str, Any]) -> str | None:
    """The sentence encoder (config `re_encoder`) when a re-encode mode of the model is scored on the task."""
    spec = config["models"][model]
    modes = modes_for(config["tasks"][task], spec.get("modes", []))
    if not kind_of(spec["kind"]).generative or not any(m.startswith("re-encode") for m in modes):
        return None
    name = config.get("re_encoder")
    if not name:
        raise ValueError(f"models.{model}.modes has a re-encode mode but config `re_encoder` is not set")
    if name not in config["models"] or kind_of(config["models"][name]["kind"]).generative:
        raise ValueError(f"re_encoder: {name!r} is not a sentence-encoder key of models")
    return str(name)
