"""The authors' aggregation for causal LMs, written independently from the rules in docs/fidelity.md.

The rules, as read in zhang-yu-wei/InBedder at e7747148 (lm_encoders_hf/causallm_encoder_hf.py):

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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inbedder.fidelity import AUTHORS_FILLERS, authors_stopwords

MODES = ("1st-gen", "avg-gen", "last-gen", "avg-ppt", "avg-all")


@dataclass(frozen=True)
class Reference:
    """The authors' vectors of one layer, with the bookkeeping behind them, in prompt order."""

    vectors: dict[str, np.ndarray]  # mode -> [N, H] float32
    gen_ids: list[list[int]]  # the T generated ids of each row (pad ids after an early end included)
    kept: list[list[bool]]  # per row, for steps 1..T-1: whether the step is averaged
    fell_back: list[bool]  # per row: no step >= 1 kept, so step 1 stood in
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
    import torch

    drop_ids: set[int] | None = None
    if filter_words is not None or filter_ids is not None:
        drop_ids = filter_token_ids(tokenizer, filter_words or []) | {int(i) for i in filter_ids or []}
    special = {int(i) for i in tokenizer.all_special_ids}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = {"do_sample": False, "num_beams": 1, **dict(generation or {})}
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    device = next(model.parameters()).device
    columns: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    gen_rows: list[list[int]] = []
    kept_rows: list[list[bool]] = []
    fell_back: list[bool] = []
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
                    kept = [not (t in special or (drop_ids is not None and t in drop_ids)) for t in ids[1:]]
                    chosen = [steps[t][layer][b, -1].float() for t in range(1, len(ids)) if kept[t - 1]]
                    if not chosen:
                        chosen = [steps[1][layer][b, -1].float() if len(steps) > 1 else
                                  _one_more_step(model, features["input_ids"][b, real], ids[0], layer).float()]
                    gen_states = torch.stack(chosen)
                    first = prompt_states[-1]
                    columns["1st-gen"].append(first)
                    columns["avg-ppt"].append(prompt_states[:-1].mean(0))
                    columns["avg-gen"].append(torch.cat([first[None], gen_states]).mean(0))
                    columns["last-gen"].append(gen_states[-1])
                    columns["avg-all"].append(torch.cat([prompt_states, gen_states]).mean(0))
                    gen_rows.append(ids)
                    kept_rows.append(kept)
                    fell_back.append(not any(kept))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    vectors = {m: torch.stack(v).cpu().numpy().astype(np.float32) for m, v in columns.items()}
    answers = tokenizer.batch_decode(gen_rows, skip_special_tokens=True)
    filtered = [[t for t in row if drop_ids is None or t not in drop_ids] for row in gen_rows]
    return Reference(vectors, gen_rows, kept_rows, fell_back, answers,
                     tokenizer.batch_decode(filtered, skip_special_tokens=True))
