"""Answers to formatted prompts (the held-out check of a fine-tune), decoded as an encode job decodes.

The prompt text is tokenised whole (no cut: the held-out questions are short) with the special tokens
its kind adds, and its kind's `decode` (`inbedder.decoding`, the pass the encode cache is written
with) answers it greedily without keeping any state; the answer is the generated tokens up to the
end of the answer, special tokens left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from inbedder.decoding import eos_ids
from inbedder.loading import torch_dtype
from inbedder.model_kinds import kind_of


def generate_answers(
    model,
    tokenizer,
    kind: str,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    autocast_dtype: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to formatted prompts, in prompt order (masked LMs: argmax at `max_new_tokens` masks)."""
    import torch
    from tqdm.auto import tqdm

    model_kind = kind_of(kind)
    ids = [tokenizer(p, add_special_tokens=model_kind.prompt_special_tokens).input_ids for p in prompts]
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=torch_dtype(autocast_dtype))
        if autocast_dtype and autocast_dtype != "float32"
        else contextlib.nullcontext()
    )
    bar = tqdm(total=len(prompts), desc=f"answering ({kind})", unit="prompt", disable=not progress)
    try:
        with torch.inference_mode(), autocast:
            states = model_kind.decode(model, tokenizer, ids, max_new_tokens=max_new_tokens, layers=(-1,),
                                       batch_size=batch_size, eos=eos_ids(model, tokenizer),
                                       keep_states=False, progress=bar.update)
    finally:
        bar.close()
    steps = [[int(t) for t, ok in zip(row, mask, strict=True) if ok]
             for row, mask in zip(states.gen_ids, states.gen_mask, strict=True)]
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in steps]
