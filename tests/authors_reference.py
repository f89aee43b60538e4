"""The authors' aggregation for causal, seq2seq and masked LMs, written independently from the rules in
docs/fidelity.md (sections 2, 3 and 9).

Causal LMs, as read in zhang-yu-wei/InBedder at e7747148 (lm_encoders_hf/causallm_encoder_hf.py):

- prompts are tokenised with left padding and left truncation at `max_input_length` tokens, then
  `generate(output_hidden_states=True, return_dict_in_generate=True)` runs; `hidden_states[0]` holds
  the prompt pass, `hidden_states[t]` (t >= 1) the state AT generated token t-1, which predicts
  generated token t. Call them steps: step 0 is the last prompt token (1st-gen), step t the state at
  generated token t-1;
- step t >= 1 is dropped when the token it predicts (generated token t) is special (any id of
  `tokenizer.all_special_ids`: EOS, pad, ...) or, with a filter, is one of the filter ids: the ids of
  `tokenizer.encode(word)` for each filter word encoded on its own (special tokens included, case and
  leading spaces as given). Step 0 is never dropped;
- when every step t >= 1 is dropped, step 1 (the state at the first generated token) stands in;
- 1st-gen = step 0; avg-ppt = mean of the prompt tokens' states except the last; avg-gen = mean of
  step 0 and the kept steps; last-gen = the last kept step; avg-all = mean of every prompt token's
  state and the kept steps.

Where the authors' code fails, this one defines: a generation of one token (every row of a batch
ended at its first token, or max_new_tokens=1) has no step 1 in `hidden_states` and their line 281
raises IndexError; here step 1 is then computed by one more forward pass over the prompt and that
token, so each row's result does not depend on its batch. A one-token prompt's avg-ppt is the mean of
nothing (NaN), as in their code.

Seq2seq LMs (lm_encoders_hf/seq2seqlm_encoder_hf.py):

- prompts are tokenised with right padding and right truncation at `max_input_length` tokens, special
  tokens added after the cut (the end of a long prompt goes), then `generate(output_hidden_states=True,
  return_dict_in_generate=True)` runs on the encoder-decoder;
- avg-ppt = mean of the encoder's states (`encoder_hidden_states[layer]`) over the non-pad positions
  of the attention mask, special tokens included;
- decoder step k (k >= 0) is `decoder_hidden_states[k][layer]`: the state at the decoder start for
  k = 0, at generated token k-1 after; it predicts generated token k (`sequences[:, k+1]`, the first
  column being the decoder start). Step k is dropped when that token is special
  (`get_special_tokens_mask(..., already_has_special_tokens=True)`: EOS, pad after an early end, unk,
  ...) or, with a filter, one of the filter ids (as for causal LMs). Any step can be dropped, step 0
  included;
- 1st-gen = the first kept step; avg-gen = mean of the kept steps; last-gen = the last kept step;
  when no step is kept the decoder-start state (step 0) stands in for all three. There is no avg-all.

Where the authors' code fails, this one defines: a BERT-style tokenizer's `token_type_ids`, which an
encoder-decoder does not take, are not passed to `generate` (only input ids and attention mask).

Masked LMs (lm_encoders_hf/maskedlm_encoder_hf.py):

- `n_masks` mask tokens are appended to the text (`text + mask_token * n_masks`, no space), and the
  whole is tokenised with the tokenizer's special tokens, right padding and left truncation at
  `max_input_length` (the start of a long text goes, the masks stay); one forward pass runs;
- avg-ppt = mean over the positions whose id is not the mask, pad or EOS id (so `<s>`/`[CLS]` is in,
  `</s>`/`[SEP]` out); avg-gen = mean over the mask positions; avg-all = mean over every non-pad
  position (specials and masks included); the answer is the argmax of the logits at each mask. They
  define no 1st-gen; here it is the first mask's state. They take no filter: `encode` accepts
  `filter_words` and never uses it.

Where the authors' code fails, this one defines: a tokenizer without an EOS token (BERT's WordPiece:
`eos_token_id` is None, and their `torch.ne(input_ids, None)` raises) uses its SEP id instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inbedder.fidelity import AUTHORS_FILLERS, authors_stopwords

MODES = ("1st-gen", "avg-gen", "last-gen", "avg-ppt", "avg-all")
SEQ2SEQ_MODES = ("1st-gen", "avg-gen", "last-gen", "avg-ppt")
MASKED_MODES = ("1st-gen", "avg-gen", "avg-ppt", "avg-all")


@dataclass(frozen=True)
class Reference:
    """The authors' vectors of one layer, with the bookkeeping behind them, in prompt order."""

    vectors: dict[str, np.ndarray]  # mode -> [N, H] float32
    gen_ids: list[list[int]]  # the T generated ids of each row (pad ids after an early end included;
    # masked LMs: the argmax id at each mask)
    kept: list[list[bool]]  # per row, whether each step is averaged: causal steps 1..T-1, seq2seq 0..T-1
    fell_back: list[bool]  # per row: nothing kept, so the stand-in step stood in
    answers: list[str]  # generated text, special tokens skipped
    answers_filtered: list[str]  # the same without the filter ids (what their re-encode embeds)


def authors_filter_words(instructions: Sequence[str]) -> list[str]:
    """A task's filter words as the authors' configs build them: instructions, fillers, NLTK stopwords."""
    return [*instructions, *AUTHORS_FILLERS, *authors_stopwords()]


def filter_token_ids(tokenizer, words: Iterable[str]) -> set[int]:
    """Every id of every word encoded on its own, with the tokenizer's default special tokens."""
    ids: set[int] = set()
    for word in words:
        ids.update(int(i) for i in tokenizer.encode(word))
    return ids


def _drop_ids(tokenizer, filter_words: Sequence[str] | None, filter_ids: Iterable[int] | None) -> set[int] | None:
    """The ids a filter drops (None: no filter): the words' ids and any ids given as such."""
    if filter_words is None and filter_ids is None:
        return None
    return filter_token_ids(tokenizer, filter_words or []) | {int(i) for i in filter_ids or []}


def _one_more_step(model, prompt_ids, token: int, layer: int):
    """State at `token` appended to the prompt: step 1 when generate stopped after one token."""
    import torch

    ids = torch.cat([prompt_ids, torch.tensor([token], device=prompt_ids.device)])[None]
    out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer][0, -1]


def authors_causal(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    layer: int = -1,
    max_new_tokens: int = 20,
    max_input_length: int = 512,
    batch_size: int = 8,
    filter_words: Sequence[str] | None = None,
    filter_ids: Iterable[int] | None = None,
    generation: Mapping[str, Any] | None = None,
) -> Reference:
    """The five modes of `layer` for each prompt, by the authors' rules (greedy unless `generation` says)."""
    return authors_causal_filters(
        model, tokenizer, prompts, [(filter_words, filter_ids)], layer=layer, max_new_tokens=max_new_tokens,
        max_input_length=max_input_length, batch_size=batch_size, generation=generation,
    )[0]


Filter = tuple[Sequence[str] | None, Iterable[int] | None]  # (filter_words, filter_ids); (None, None): none


def authors_causal_filters(
    model,
    tokenizer,
    prompts: Sequence[str],
    filters: Sequence[Filter],
    *,
    layer: int = -1,
    max_new_tokens: int = 20,
    max_input_length: int = 512,
    batch_size: int = 8,
    generation: Mapping[str, Any] | None = None,
) -> list[Reference]:
    """`authors_causal` under each filter of `filters`, from one generation (the filter does not change
    what is generated, only which steps are averaged)."""
    import torch

    drops = [_drop_ids(tokenizer, words, ids) for words, ids in filters]
    special = {int(i) for i in tokenizer.all_special_ids}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = {"do_sample": False, "num_beams": 1, **dict(generation or {})}
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    device = next(model.parameters()).device
    columns: list[dict[str, list]] = [{m: [] for m in MODES} for _ in filters]
    gen_rows: list[list[int]] = []
    kept_rows: list[list[list[bool]]] = [[] for _ in filters]
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                features = tokenizer(batch, padding=True, truncation=True, max_length=max_input_length,
                                     return_tensors="pt").to(device)
                out = model.generate(**features, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                     return_dict_in_generate=True, output_hidden_states=True, **settings)
                width = features["input_ids"].shape[1]
                generated = out.sequences[:, width:]
                steps = out.hidden_states
                if len(steps) != generated.shape[1]:
                    raise RuntimeError(f"generate returned {len(steps)} hidden-state steps for "
                                       f"{generated.shape[1]} generated tokens")
                for b in range(len(batch)):
                    real = features["attention_mask"][b].bool()
                    prompt_states = steps[0][layer][b, real].float()
                    ids = [int(t) for t in generated[b]]
                    gen_rows.append(ids)
                    first, ppt = prompt_states[-1], prompt_states[:-1].mean(0)  # the same under every filter
                    for drop_ids, cols, kept_of in zip(drops, columns, kept_rows, strict=True):
                        kept = [not (t in special or (drop_ids is not None and t in drop_ids)) for t in ids[1:]]
                        chosen = [steps[t][layer][b, -1].float() for t in range(1, len(ids)) if kept[t - 1]]
                        if not chosen:
                            chosen = [steps[1][layer][b, -1].float() if len(steps) > 1 else
                                      _one_more_step(model, features["input_ids"][b, real], ids[0], layer).float()]
                        gen_states = torch.stack(chosen)
                        cols["1st-gen"].append(first)
                        cols["avg-ppt"].append(ppt)
                        cols["avg-gen"].append(torch.cat([first[None], gen_states]).mean(0))
                        cols["last-gen"].append(gen_states[-1])
                        cols["avg-all"].append(torch.cat([prompt_states, gen_states]).mean(0))
                        kept_of.append(kept)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    answers = tokenizer.batch_decode(gen_rows, skip_special_tokens=True)
    references = []
    for drop_ids, cols, kept_of in zip(drops, columns, kept_rows, strict=True):
        vectors = {m: torch.stack(v).cpu().numpy().astype(np.float32) for m, v in cols.items()}
        filtered = [[t for t in row if drop_ids is None or t not in drop_ids] for row in gen_rows]
        references.append(Reference(vectors, gen_rows, kept_of, [not any(k) for k in kept_of], answers,
                                    tokenizer.batch_decode(filtered, skip_special_tokens=True)))
    return references


def authors_seq2seq(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    layer: int = -1,
    max_new_tokens: int = 20,
    max_input_length: int = 512,
    batch_size: int = 4,
    filter_words: Sequence[str] | None = None,
    filter_ids: Iterable[int] | None = None,
) -> Reference:
    """1st-gen, avg-gen, last-gen and avg-ppt of `layer` (encoder and decoder) per prompt, greedy."""
    import torch

    drop_ids = _drop_ids(tokenizer, filter_words, filter_ids)
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "right", "right"
    device = next(model.parameters()).device
    columns: dict[str, list] = {m: [] for m in SEQ2SEQ_MODES}
    gen_rows: list[list[int]] = []
    kept_rows: list[list[bool]] = []
    fell_back: list[bool] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start : start + batch_size])
                features = tokenizer(batch, padding=True, truncation=True, max_length=max_input_length,
                                     return_tensors="pt").to(device)
                out = model.generate(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                                     max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     return_dict_in_generate=True, output_hidden_states=True)
                encoder_states = out.encoder_hidden_states[layer]
                decoder_steps = [step[layer] for step in out.decoder_hidden_states]  # k -> [B, 1, H]
                for b in range(len(batch)):
                    sequence = [int(t) for t in out.sequences[b]]
                    predicted = sequence[1:]  # sequence[0] is the decoder start
                    if len(decoder_steps) != len(predicted):
                        raise RuntimeError(f"generate returned {len(decoder_steps)} decoder steps for "
                                           f"{len(predicted)} generated tokens")
                    special = tokenizer.get_special_tokens_mask(predicted, already_has_special_tokens=True)
                    kept = [not (s or (drop_ids is not None and t in drop_ids))
                            for t, s in zip(predicted, special, strict=True)]
                    chosen = [decoder_steps[k][b, 0].float() for k in range(len(predicted)) if kept[k]]
                    if not chosen:
                        chosen = [decoder_steps[0][b, 0].float()]
                    real = features["attention_mask"][b].bool()
                    columns["avg-ppt"].append(encoder_states[b, real].float().mean(0))
                    columns["1st-gen"].append(chosen[0])
                    columns["avg-gen"].append(torch.stack(chosen).mean(0))
                    columns["last-gen"].append(chosen[-1])
                    gen_rows.append(predicted)
                    kept_rows.append(kept)
                    fell_back.append(not any(kept))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    vectors = {m: torch.stack(v).cpu().numpy().astype(np.float32) for m, v in columns.items()}
    filtered = [[t for t in row if drop_ids is None or t not in drop_ids] for row in gen_rows]
    return Reference(vectors, gen_rows, kept_rows, fell_back,
                     tokenizer.batch_decode(gen_rows, skip_special_tokens=True),
                     tokenizer.batch_decode(filtered, skip_special_tokens=True))


def authors_masked(
    model,
    tokenizer,
    prompts: Sequence[str],
    n_masks: int,
    *,
    layer: int = -1,
    max_input_length: int = 512,
    batch_size: int = 4,
) -> Reference:
    """1st-gen, avg-gen, avg-ppt and avg-all of `layer` per prompt, from one pass with `n_masks` masks."""
    import torch

    end_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    device = next(model.parameters()).device
    columns: dict[str, list] = {m: [] for m in MASKED_MODES}
    gen_rows: list[list[int]] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = [p + tokenizer.mask_token * n_masks for p in prompts[start : start + batch_size]]
                features = tokenizer(batch, padding=True, truncation=True, max_length=max_input_length,
                                     return_tensors="pt").to(device)
                out = model(**features, output_hidden_states=True)
                states = out.hidden_states[layer]
                for b in range(len(batch)):
                    ids = features["input_ids"][b]
                    is_mask = ids == mask_id
                    if int(is_mask.sum()) != n_masks:
                        raise RuntimeError(f"prompt {start + b}: {int(is_mask.sum())} masks after tokenising, "
                                           f"not {n_masks}")
                    not_pad = ids != pad_id
                    h = states[b].float()
                    columns["avg-ppt"].append(h[~is_mask & not_pad & (ids != end_id)].mean(0))
                    columns["avg-gen"].append(h[is_mask].mean(0))
                    columns["avg-all"].append(h[not_pad].mean(0))
                    columns["1st-gen"].append(h[is_mask][0])
                    gen_rows.append([int(t) for t in out.logits[b, is_mask].argmax(-1)])
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    vectors = {m: torch.stack(v).cpu().numpy().astype(np.float32) for m, v in columns.items()}
    answers = tokenizer.batch_decode(gen_rows, skip_special_tokens=True)
    return Reference(vectors, gen_rows, [[True] * n_masks for _ in gen_rows], [False] * len(gen_rows),
                     answers, answers)
