"""Our encode cache against the authors' seq2seq and masked-LM aggregation (tests/authors_reference.py).

Tiny randomly initialised T5 and RoBERTa (tests/conftest.py `tiny_t5`, `tiny_roberta`: no real small
model of either kind ships offline) with the real all-MiniLM-L6-v2 WordPiece tokenizer, on real
Banking77 test queries under two instructions, with `method` set to the authors' rules. Every mode the
authors define is held against the reference per row, within cosine 0.9999; for seq2seq the `+filter`
modes too, answers that end early, answers that hold a special token, and the stand-in (no step kept).
Prompts are cut at `MAX_LENGTH` tokens so that the authors' truncation (right for seq2seq, left for
masked LMs) is part of what is compared.
"""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
from authors_reference import (
    MASKED_MODES,
    SEQ2SEQ_MODES,
    authors_filter_words,
    authors_masked,
    authors_seq2seq,
    filter_token_ids,
)

from inbedder.text import format_prompt

INSTRUCTIONS = ("What does the customer need?", "How does the customer feel?")
METHOD = {"special_steps": "authors", "filter": "authors", "masked_prompt_modes": "authors", "truncation": "authors"}
MAX_NEW = 6
N_MASKS = 3
MAX_LENGTH = 35  # tokens, special ones included: 10 of the 24 prompts below are longer
LAYERS = (-1, 1)
SEP, UNK = 102, 100  # [SEP] is the tiny T5's EOS (tests/conftest.py); [UNK] is special and ends nothing
# The token the tiny T5 (seed 0, unit-length output rows) predicts most for these prompts, and one it
# often predicts first: their output rows are swapped with [SEP]'s and [UNK]'s, so that answers end
# early or hold a special token at varied steps. A random T5 this small otherwise says one token for
# every prompt, to the end.
OFTEN, OFTEN_FIRST = 10524, 21066


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; on a busy machine more threads only spin
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(mirror) -> list[dict[str, str]]:
    """24 prompts: 12 Banking77 test queries, each under both instructions."""
    with open(mirror / "banking77" / "test.csv", encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)][::97][:12]
    return [{"text": t, "instruction": q} for t in texts for q in INSTRUCTIONS]


def _texts(prompts) -> list[str]:
    return [format_prompt("inbedder", p["instruction"], p["text"]) for p in prompts]


def _encode(model_dir, kind, prompts, out, filter_instructions, max_new_tokens):
    from inbedder.cache import load_cache
    from inbedder.encode import EncodeJob, encode_prompts

    job = EncodeJob(model_dir, kind, "inbedder", max_new_tokens=max_new_tokens, layers=LAYERS, batch_size=5,
                    device="cpu", dtype="float32", decoding="greedy", max_length=MAX_LENGTH, method=METHOD,
                    filter_instructions=filter_instructions)
    encode_prompts(job, prompts, out, progress=False)
    cache = load_cache(out)
    assert [(p["text"], p["instruction"]) for p in cache.prompts] == [(p["text"], p["instruction"]) for p in prompts]
    return cache


def _top_word(tokenizer, counts: Counter) -> str:
    """The most counted id that is a word of its own: decoded, it encodes back to that one id."""
    return next(w for w in (tokenizer.decode([t]) for t, _ in counts.most_common())
                if len(tokenizer.encode(w, add_special_tokens=False)) == 1)


def _some_cut(tokenizer, texts) -> None:
    lengths = [len(tokenizer(t).input_ids) for t in texts]
    assert 0 < sum(n > MAX_LENGTH for n in lengths) < len(texts), lengths


# ----------------------------------------------------------------------------------------------
# seq2seq


@pytest.fixture(scope="module")
def t5_that_ends(tiny_t5, tmp_path_factory, one_thread):
    """tests/conftest.py's tiny T5 whose answers end early, hold [UNK], or run to MAX_NEW (see OFTEN)."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_t5)
    with torch.no_grad():
        rows = model.get_output_embeddings().weight  # tied to the input embeddings: a relabelled vocabulary
        rows.copy_(rows / rows.norm(dim=1, keepdim=True))
        for special, token in ((SEP, OFTEN), (UNK, OFTEN_FIRST)):
            rows[[special, token]] = rows[[token, special]].clone()
    path = tmp_path_factory.mktemp("t5-that-ends")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_t5).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def seq2seq_run(t5_that_ends, prompts, tmp_path_factory):
    """(cache, the authors' tokenizer, model, references per layer, filtered ones, filter instructions)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(t5_that_ends).eval()
    tok = AutoTokenizer.from_pretrained(t5_that_ends, use_fast=False)  # as seq2seqlm_encoder_hf.py:52 loads it
    texts = _texts(prompts)
    refs = {layer: authors_seq2seq(model, tok, texts, layer=layer, max_new_tokens=MAX_NEW,
                                   max_input_length=MAX_LENGTH, batch_size=8) for layer in LAYERS}
    # a third filter "instruction" of two words the model says: the one most often the only word kept in
    # an answer and the one kept most often, so that the filter drops kept steps and leaves some rows
    # nothing (the stopwords and instructions rarely meet a random model's words)
    plain = refs[-1]
    kept_words = [[t for k, t in enumerate(ids) if kept[k]] for ids, kept in zip(plain.gen_ids, plain.kept, strict=True)]
    alone = Counter(words[0] for words in kept_words if len(set(words)) == 1)
    often = Counter(t for words in kept_words for t in words)
    instructions = [*INSTRUCTIONS, f"{_top_word(tok, alone)} {_top_word(tok, often)}"]
    filtered = {layer: authors_seq2seq(model, tok, texts, layer=layer, max_new_tokens=MAX_NEW,
                                       max_input_length=MAX_LENGTH, batch_size=8,
                                       filter_words=authors_filter_words(instructions)) for layer in LAYERS}
    cache = _encode(t5_that_ends, "seq2seq", prompts, tmp_path_factory.mktemp("seq2seq-cache"), instructions,
                    MAX_NEW)
    return cache, tok, model, refs, filtered, instructions


def test_seq2seq_prompts_cover_the_cases(seq2seq_run, prompts):
    _, tok, _, refs, filtered, instructions = seq2seq_run
    _some_cut(tok, _texts(prompts))
    ref = refs[-1]
    special = set(tok.all_special_ids)
    kinds = Counter()
    for ids in ref.gen_ids:
        answer_end = ids.index(SEP) + 1 if SEP in ids else len(ids)
        kinds["nothing kept"] += not any(t not in special for t in ids)
        kinds["ended later"] += 1 < answer_end < MAX_NEW
        kinds["ran to max_new_tokens"] += SEP not in ids and len(ids) == MAX_NEW
        kinds["[UNK] in the answer"] += UNK in ids[:answer_end]
        kinds["step 0 dropped, a later one kept"] += ids[0] in special and any(t not in special for t in ids)
    assert all(kinds[k] >= 2 for k in ("nothing kept", "ended later", "ran to max_new_tokens",
                                       "[UNK] in the answer")), kinds
    assert kinds["step 0 dropped, a later one kept"] >= 1, kinds  # 1st-gen is then not the decoder start
    assert ref.fell_back == [not any(k) for k in ref.kept] and any(ref.fell_back) and not all(ref.fell_back)
    # the filter drops steps the special-token rule keeps, and leaves some rows nothing
    more = [f != p for f, p in zip(filtered[-1].kept, ref.kept, strict=True)]
    assert sum(more) >= 3 and sum(filtered[-1].fell_back) > sum(ref.fell_back), (more, instructions)
    # get_special_tokens_mask on generated ids is membership of the tokenizer's special ids
    for ids in ref.gen_ids:
        assert tok.get_special_tokens_mask(ids, already_has_special_tokens=True) == [int(t in special) for t in ids]


def test_seq2seq_cache_holds_the_authors_answers_and_filter_ids(seq2seq_run):
    cache, tok, _, refs, filtered, instructions = seq2seq_run
    special = set(tok.all_special_ids)
    # the slow tokenizer the authors load gives the ids our (fast) one stored
    assert set(cache.meta["filter"]["authors_ids"]) == filter_token_ids(tok, authors_filter_words(instructions))
    for i, row in enumerate(cache.answers):
        ref_ids = refs[-1].gen_ids[i]
        ours = row["token_ids"]  # up to and including EOS
        assert ours == ref_ids[: len(ours)], (i, ours, ref_ids)
        assert all(t in special for t in ref_ids[len(ours):])  # [PAD] after an early end
        assert row["answer"] == refs[-1].answers[i].strip()
        assert row["answer_filtered"] == filtered[-1].answers_filtered[i].strip()


def test_seq2seq_every_mode_equals_the_authors_aggregation(seq2seq_run):
    from inbedder import pooling

    cache, *_, refs, filtered, _ = seq2seq_run
    worst = {}
    for layer in LAYERS:
        for mode in SEQ2SEQ_MODES:
            worst[f"{mode}@{layer}"] = _cosines(pooling.embed(cache, mode, layer), refs[layer].vectors[mode]).min()
            if mode in ("avg-gen", "last-gen"):
                for name in (f"{mode}+filter", f"{mode}+filter=authors"):
                    vectors = pooling.embed(cache, name, layer)
                    worst[f"{name}@{layer}"] = _cosines(vectors, filtered[layer].vectors[mode]).min()
    assert min(worst.values()) >= 0.9999, worst


def test_seq2seq_stand_in_when_the_filter_drops_every_id(seq2seq_run, prompts):
    """A filter of every id leaves no step: the decoder start stands in (avg-gen+filter, last-gen+filter)."""
    from inbedder import pooling
    from inbedder.cache import Cache

    cache, tok, model, *_ = seq2seq_run
    every = range(model.config.vocab_size)
    meta = {**cache.meta, "filter": {**cache.meta["filter"], "authors_ids": list(every)}}
    dropped_all = Cache(cache.path, meta, cache.prompts, cache.answers, cache.tensors)
    ref = authors_seq2seq(model, tok, _texts(prompts), max_new_tokens=MAX_NEW, max_input_length=MAX_LENGTH,
                          batch_size=8, filter_ids=every)
    assert all(ref.fell_back)
    start = cache.tensors["first_gen@-1"]  # the state at the decoder start
    for mode in ("avg-gen", "last-gen"):
        ours = pooling.embed(dropped_all, f"{mode}+filter", -1)
        assert _cosines(ours, ref.vectors[mode]).min() >= 0.9999, mode
        assert _cosines(ours, start).min() >= 0.9999, mode


# ----------------------------------------------------------------------------------------------
# masked


@pytest.fixture(scope="module")
def masked_run(tiny_roberta, prompts, tmp_path_factory, one_thread):
    """(cache, tokenizer, references per layer)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_roberta).eval()
    tok = AutoTokenizer.from_pretrained(tiny_roberta)
    texts = _texts(prompts)
    refs = {layer: authors_masked(model, tok, texts, N_MASKS, layer=layer, max_input_length=MAX_LENGTH,
                                  batch_size=8) for layer in LAYERS}
    # a filter "instruction" holding the word the masks predict most, for the `+filter` modes below
    instructions = [*INSTRUCTIONS, _top_word(tok, Counter(t for ids in refs[-1].gen_ids for t in ids))]
    cache = _encode(tiny_roberta, "masked", prompts, tmp_path_factory.mktemp("masked-cache"), instructions,
                    N_MASKS)
    return cache, tok, refs


def test_masked_every_mode_equals_the_authors_aggregation(masked_run, prompts):
    from inbedder import pooling

    cache, tok, refs = masked_run
    _some_cut(tok, [t + tok.mask_token * N_MASKS for t in _texts(prompts)])
    assert tok.eos_token_id is None and tok.sep_token_id == SEP  # WordPiece: [SEP] ends the sequence
    np.testing.assert_array_equal(cache.tensors["gen_ids"], np.array(refs[-1].gen_ids))
    worst = {}
    for layer in LAYERS:
        for mode in MASKED_MODES:
            worst[f"{mode}@{layer}"] = _cosines(pooling.embed(cache, mode, layer), refs[layer].vectors[mode]).min()
    assert min(worst.values()) >= 0.9999, worst


# maskedlm_encoder_hf.py takes filter_words and never uses them (lines 101-109 and 140-186): the authors'
# masked avg-gen with a filter is their avg-gen, and so is ours under method.filter: authors.
def test_masked_filter_modes_are_the_authors_unfiltered_ones(masked_run):
    from inbedder import pooling
    from inbedder.text import authors_filter_ids

    cache, tok, refs = masked_run
    assert cache.meta["filter"]["authors_ids"] == []  # the masked cache records no ids to drop ...
    would_drop = authors_filter_ids(tok, cache.meta["method"]["filter_instructions"])
    assert np.isin(cache.tensors["gen_ids"], would_drop).any(1).any()  # ... though the words meet some rows
    cosines = _cosines(pooling.embed(cache, "avg-gen+filter", -1), refs[-1].vectors["avg-gen"])
    assert cosines.min() >= 0.9999, {int(i): float(cosines[i]) for i in np.flatnonzero(cosines < 0.9999)}
