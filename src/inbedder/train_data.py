"""Training examples: prompts, tokenised inputs and labels with the paper's objective per model kind.

- causal (opt, llama, SmolLM2): `prompt + answer + EOS`; the loss is on the answer tokens and EOS
  only (prompt positions are labelled -100). Masks come from token counts, never from
  `ids == pad_id` (SmolLM2 pads with its EOS).
- masked (roberta): `<cls> prompt <mask> x len(answer) <sep>`: every answer position is masked at
  once; the MLM loss is on those positions only.
- seq2seq (t5): the prompt goes to the encoder, `answer + EOS` is the decoder's target.

The answer follows the prompt's final `### Response:` after one space (causal and masked).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.files import read_jsonl
from inbedder.models import TRAINABLE_KINDS, masked_prompt_ids, special_ids
from inbedder.text import format_prompt

IGNORE_INDEX = -100
REQUIRED_FIELDS = ("instruction", "input", "output")
# Rows without an input text (most of Alpaca) are prompted without the input block, for both
# templates, as in the authors' training code.
NO_INPUT_PROMPT = "### Instruction:\n{instruction}\n\n### Response:"


def training_prompt(template: str, instruction: str, input: str) -> str:
    """The prompt of a training row: the recipe's template, or the no-input prompt when input is blank."""
    if not input.strip():
        return NO_INPUT_PROMPT.format(instruction=instruction)
    return format_prompt(template, instruction, input)


@dataclass(frozen=True)
class Encoded:
    """One tokenised training example: model inputs and the labels of the loss."""

    input_ids: list[int]
    labels: list[int]


def _answer_text(answer: str, kind: str) -> str:
    """The answer as it follows the prompt: one leading space after `### Response:` for decoders."""
    answer = answer.strip()
    return answer if kind == "seq2seq" else " " + answer


def eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither an EOS nor a SEP token")
    return int(eos)


def _prompt_ids(tokenizer, kind: str, template: str, row: Mapping[str, str], budget: int) -> list[int]:
    """Token ids of the formatted prompt, cutting the input text (then the instruction) until they fit."""
    fields_ = {"instruction": row["instruction"], "input": row["input"]}
    add_special = kind != "masked"  # masked prompts get their special tokens around the masks
    for name in ("input", "instruction"):
        for _ in range(8):
            ids = tokenizer(
                training_prompt(template, fields_["instruction"], fields_["input"]),
                add_special_tokens=add_special,
            ).input_ids
            over = len(ids) - budget
            if over <= 0:
                return ids
            if not fields_[name]:
                break
            text_ids = tokenizer(fields_[name], add_special_tokens=False).input_ids
            keep = max(0, len(text_ids) - over - 2)
            fields_[name] = tokenizer.decode(text_ids[:keep], skip_special_tokens=True)
    raise ValueError(
        f"prompt of template {template!r} does not fit {budget} tokens even with an empty input "
        f"and instruction"
    )


def encode_example(tokenizer, kind: str, template: str, row: Mapping[str, str], max_length: int) -> Encoded:
    """Tokenise one `instruction, input, output` row with the paper's objective for `kind`."""
    if kind not in TRAINABLE_KINDS:
        raise ValueError(f"kind {kind!r} is not trainable; trainable kinds: {', '.join(TRAINABLE_KINDS)}")
    answer = tokenizer(_answer_text(row["output"], kind), add_special_tokens=False).input_ids
    answer = answer[: max(1, max_length // 4)]
    eos = eos_id(tokenizer)
    if kind == "causal":
        prompt = _prompt_ids(tokenizer, kind, template, row, max_length - len(answer) - 1)
        target = answer + [eos]
        return Encoded(prompt + target, [IGNORE_INDEX] * len(prompt) + target)
    if kind == "masked":
        head, tail = special_ids(tokenizer)
        prompt = _prompt_ids(tokenizer, kind, template, row, max_length - len(answer) - len(head) - len(tail))
        input_ids = masked_prompt_ids(tokenizer, prompt, len(answer))
        labels = [IGNORE_INDEX] * (len(head) + len(prompt)) + answer + [IGNORE_INDEX] * len(tail)
        return Encoded(input_ids, labels)
    prompt = _prompt_ids(tokenizer, kind, template, row, max_length)
    return Encoded(prompt, answer + [eos])


class EncodedDataset:
    """A list of encoded examples served to the Trainer as dicts."""

    def __init__(self, examples: Sequence[Encoded]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}


@dataclass
class Collator:
    """Right-pads a batch; attention masks come from lengths; labels are padded with -100."""

    pad_id: int

    def __call__(self, batch: Sequence[Mapping[str, list[int]]]) -> dict[str, Any]:
        """Stack a batch of encoded examples into tensors."""
        from inbedder.models import pad_right

        input_ids, attention = pad_right([b["input_ids"] for b in batch], self.pad_id)
        labels, _ = pad_right([b["labels"] for b in batch], self.pad_id, value=IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def read_rows(path: str | os.PathLike, what: str, limit: int | None = None) -> list[dict[str, str]]:
    """Read `instruction, input, output` rows, naming the file, line and field at fault."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{what}: {path} has no rows")
    for i, row in enumerate(rows, 1):
        missing = [k for k in REQUIRED_FIELDS if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(
                f"{path}:{i}: field(s) {missing} missing or not text (need {list(REQUIRED_FIELDS)})"
            )
    return rows[:limit] if limit else rows
