"""Token id sequences: the special tokens around a sequence, a masked LM's answer slots, padding.

Attention masks are built from lengths, never from `ids == pad_id` (SmolLM2 pads with its EOS, which
also ends its training examples).
"""

from __future__ import annotations

from collections.abc import Sequence

# The label of a position that carries no loss.
IGNORE_INDEX = -100


def special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that open and close a single sequence for an encoder (cls/bos, sep/eos)."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([first] if first is not None else []), ([last] if last is not None else [])


def eos_id(tokenizer) -> int:
    """The id that ends a training example: the tokenizer's EOS, else its SEP."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither an EOS nor a SEP token")
    return int(eos)


def text_ids(tokenizer, text: str) -> list[int]:
    """The ids of `text` tokenised alone, without special tokens."""
    return tokenizer(text, add_special_tokens=False).input_ids


def masked_prompt_ids(tokenizer, prompt_ids: Sequence[int], n_masks: int) -> list[int]:
    """`<cls> prompt <mask> x n_masks <sep>`: a masked LM's input that asks for an n-token answer."""
    if tokenizer.mask_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no mask token; not a masked LM")
    head, tail = special_ids(tokenizer)
    return head + list(prompt_ids) + [tokenizer.mask_token_id] * n_masks + tail


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int | None, device=None, value: int | None = None):
    """Right-pad id lists into (ids [B,T], attention mask [B,T]); the mask comes from lengths, not ids."""
    import torch

    if pad_id is None:
        raise ValueError("tokenizer has no pad token id")
    width = max(len(s) for s in sequences)
    fill = pad_id if value is None else value
    ids = torch.full((len(sequences), width), fill, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int, device):
    """Left-pad id lists into (ids [B,T], attention mask [B,T]), so every last token sits at the end."""
    import torch

    width = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, seq in enumerate(sequences):
        ids[r, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer, eos: set[int]) -> int:
    """The id a decoding pass pads with: the tokenizer's pad token, else the smallest EOS id, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if eos:
        return min(eos)
    return 0
