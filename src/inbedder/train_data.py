"""Training examples: prompts, tokenised inputs and labels with the paper's objective per model kind.

- causal (opt, llama, SmolLM2): `prompt + answer + EOS`; the loss is on the answer tokens and EOS
  only (prompt positions are labelled -100). Masks come from token counts, never from
  `ids == pad_id` (SmolLM2 pads with its EOS).
- masked (roberta): `<cls> prompt <mask> x len(answer) <sep>`: every answer position is masked at
  once; the MLM loss is on those positions only.
- seq2seq (t5): the prompt goes to the encoder, `answer + EOS` is the decoder's target.

Two config switches (`method.*`, docs/fidelity.md sections 5b and 7) decide how an example is built:

- `train_target`: `authors` tokenises the prompt, the answer and the EOS text as one string, with
  nothing between `### Response:` and the answer (causal; masked: prompt and answer, the tokenizer
  closing with its `</s>`/`[SEP]`), and labels every position after the first `len(tokenize(prompt))`;
  `space` tokenises the prompt and `" " + answer` apart and joins the ids. Seq2seq models are the
  same under both: the answer is the decoder's target.
- `train_answer_cut`: `authors` cuts the longest of instruction, input and answer (tokenised alone)
  only when the three together pass `max_length - 20` tokens, then cuts the whole example to
  `max_length` tokens from the right (which can take the end of the answer and its EOS); `quarter`
  cuts every answer to `max_length // 4` tokens and then the prompt's input text (then its
  instruction) until the example fits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.fidelity import switch
from inbedder.files import read_jsonl
from inbedder.model_kinds import KINDS, ModelKind, kind_of
from inbedder.text import format_prompt
from inbedder.tokens import IGNORE_INDEX, eos_id, pad_right, special_ids, text_ids

REQUIRED_FIELDS = ("instruction", "input", "output")
# Rows without an input text (most of Alpaca) are prompted without the input block, for both
# templates, as in the authors' training code.
NO_INPUT_PROMPT = "### Instruction:\n{instruction}\n\n### Response:"
TRAIN_TARGETS: tuple[str, ...] = switch("method.train_target").values
ANSWER_CUTS: tuple[str, ...] = switch("method.train_answer_cut").values
# The authors' cut leaves this many tokens of the model length for the template and special tokens.
AUTHORS_CUT_MARGIN = 20
# Which part the authors' cut shortens when several are the longest: input, then answer, then instruction.
AUTHORS_CUT_ORDER = ("input", "output", "instruction")


def check_train_method(train_target: str, train_answer_cut: str) -> None:
    """A ValueError naming the config key when a training switch has an unknown value."""
    for key, value, allowed in (
        ("method.train_target", train_target, TRAIN_TARGETS),
        ("method.train_answer_cut", train_answer_cut, ANSWER_CUTS),
    ):
        if value not in allowed:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def training_prompt(template: str, instruction: str, input: str) -> str:
    """The prompt of a training row: the recipe's template, or the no-input prompt when input is blank."""
    if not input.strip():
        return NO_INPUT_PROMPT.format(instruction=instruction)
    return format_prompt(template, instruction, input)


@dataclass(frozen=True)
class Encoded:
    """One tokenised training example: model inputs, the labels of the loss, whether the answer was cut."""

    input_ids: list[int]
    labels: list[int]
    answer_cut: bool = False


def _fit_prompt(tokenizer, kind: ModelKind, template: str, row: Mapping[str, str],
                budget: int) -> tuple[str, list[int]]:
    """The formatted prompt and its ids, cutting the input text (then the instruction) until they fit."""
    fields_ = {"instruction": row["instruction"], "input": row["input"]}
    add_special = kind.prompt_special_tokens  # masked prompts get their special tokens around the masks
    for name in ("input", "instruction"):
        for _ in range(8):
            text = training_prompt(template, fields_["instruction"], fields_["input"])
            ids = tokenizer(text, add_special_tokens=add_special).input_ids
            over = len(ids) - budget
            if over <= 0:
                return text, ids
            if not fields_[name]:
                break
            part_ids = text_ids(tokenizer, fields_[name])
            keep = max(0, len(part_ids) - over - 2)
            fields_[name] = tokenizer.decode(part_ids[:keep], skip_special_tokens=True)
    raise ValueError(
        f"prompt of template {template!r} does not fit {budget} tokens even with an empty input "
        f"and instruction"
    )


def _prompt_ids(tokenizer, kind: ModelKind, template: str, row: Mapping[str, str], budget: int) -> list[int]:
    """Token ids of the formatted prompt, cutting the input text (then the instruction) until they fit."""
    return _fit_prompt(tokenizer, kind, template, row, budget)[1]


def first_tokens(tokenizer, text: str, n: int) -> str:
    """The start of `text` that its first `n` tokens (tokenised alone, no special tokens) cover."""
    if n <= 0:
        return ""
    if tokenizer.is_fast:
        spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if n >= len(spans) else text[: spans[n - 1][1]]
    ids = text_ids(tokenizer, text)
    return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids[:n]))


def authors_row_cut(tokenizer, row: Mapping[str, str], max_length: int) -> dict[str, str]:
    """The authors' cut of a training row (docs/fidelity.md 5b): the longest part goes, only when needed.

    Instruction, input (when not blank) and answer are tokenised alone; when together they pass
    `max_length - 20` tokens, the longest of them (ties: input, then answer, then instruction) keeps
    only as many of its first tokens as leave the three at `max_length - 20` (none when the other two
    alone pass it; the example is then cut to `max_length` from the right when it is built).
    """
    names = ("instruction", "input", "output") if row["input"].strip() else ("instruction", "output")
    lengths = {name: len(text_ids(tokenizer, row[name])) for name in names}
    budget = max_length - AUTHORS_CUT_MARGIN
    total = sum(lengths.values())
    out = dict(row)
    if total <= budget:
        return out
    longest = max(lengths.values())
    name = next(n for n in AUTHORS_CUT_ORDER if lengths.get(n) == longest)
    out[name] = first_tokens(tokenizer, row[name], budget - (total - lengths[name]))
    return out


@dataclass(frozen=True)
class _Joined:
    """A causal or masked example before masking: `ids[:prompt]` the prompt (head special tokens
    included), the next `answer` ids the answer, the rest its end (EOS, or the closing special token)."""

    ids: list[int]
    prompt: int
    answer: int

    def keep_answer(self, n: int) -> _Joined:
        end = self.ids[self.prompt + self.answer :]
        return _Joined(self.ids[: self.prompt + n] + end, self.prompt, n)


def _join(tokenizer, kind: ModelKind, prompt: str, answer: str, train_target: str) -> _Joined:
    """Prompt and answer as one id sequence of a causal or masked model, per `train_target`."""
    return _Joined(*kind.join(tokenizer, prompt, answer, train_target))


def _cut_right(joined: _Joined, end: int, max_length: int) -> _Joined:
    """The example cut to `max_length` ids from the right, its last `end` ids (a closing token) kept."""
    if len(joined.ids) <= max_length:
        return joined
    ids = joined.ids[: max_length - end] + joined.ids[len(joined.ids) - end :]
    prompt = min(joined.prompt, max_length - end)
    return _Joined(ids, prompt, min(joined.answer, max_length - end - prompt))


def _quarter_cut(tokenizer, kind: ModelKind, template: str, row: Mapping[str, str], max_length: int,
                 train_target: str) -> _Joined:
    """The answer cut to `max_length // 4` tokens, then the prompt's input (then instruction) cut to fit."""
    keep = max(1, max_length // 4)
    prompt = training_prompt(template, row["instruction"], row["input"])
    joined = _join(tokenizer, kind, prompt, row["output"], train_target)
    joined = joined.keep_answer(min(joined.answer, keep))
    if len(joined.ids) <= max_length:
        return joined
    end = len(joined.ids) - joined.prompt - joined.answer
    head = len(kind.wrap_ids(tokenizer)[0])
    prompt, _ = _fit_prompt(tokenizer, kind, template, row, max_length - joined.answer - end - head)
    joined = _join(tokenizer, kind, prompt, row["output"], train_target)
    joined = joined.keep_answer(min(joined.answer, keep))
    over = len(joined.ids) - max_length  # only when a token merges across the prompt's end
    if over > 0:
        joined = joined.keep_answer(max(1, joined.answer - over))
    return _cut_right(joined, len(kind.wrap_ids(tokenizer)[1]), max_length)


def _decoder_example(tokenizer, kind: ModelKind, template: str, row: Mapping[str, str], max_length: int,
                     train_answer_cut: str) -> Encoded:
    """A seq2seq example: the prompt is the encoder's input, the answer and EOS the decoder's target."""
    answer = text_ids(tokenizer, row["output"])
    eos = eos_id(tokenizer)
    if train_answer_cut == "quarter":
        keep = max(1, max_length // 4)
        prompt = _prompt_ids(tokenizer, kind, template, row, max_length)
        return Encoded(prompt, answer[:keep] + [eos], len(answer) > keep)
    cut = authors_row_cut(tokenizer, row, max_length)
    prompt = tokenizer(training_prompt(template, cut["instruction"], cut["input"])).input_ids
    if len(prompt) > max_length:  # the whole prompt cut from the right, its special tokens kept
        head, tail = special_ids(tokenizer)
        text = text_ids(tokenizer, training_prompt(template, cut["instruction"], cut["input"]))
        prompt = head + text[: max_length - len(head) - len(tail)] + tail
    target = text_ids(tokenizer, cut["output"])
    kept = target[: max_length - 1]
    return Encoded(prompt, kept + [eos], cut["output"] != row["output"] or len(kept) < len(target))


def encode_example(
    tokenizer,
    kind: str,
    template: str,
    row: Mapping[str, str],
    max_length: int,
    *,
    train_target: str = "authors",
    train_answer_cut: str = "authors",
) -> Encoded:
    """Tokenise one `instruction, input, output` row with the paper's objective for `kind`.

    `train_target` and `train_answer_cut` are the `method` switches of the module docstring; the
    authors' values are the defaults. Under `authors` an example whose prompt alone leaves no room for
    an answer token (never at the paper's lengths: the 20-token margin holds the template) is cut as
    under `quarter`, so that every example teaches something.
    """
    model_kind = kind_of(kind)
    if not model_kind.trainable:
        trainable = ", ".join(k.name for k in KINDS.values() if k.trainable)
        raise ValueError(f"kind {kind!r} is not trainable; trainable kinds: {trainable}")
    check_train_method(train_target, train_answer_cut)
    row = {**row, "output": row["output"].strip()}
    if model_kind.decoder_target:
        return _decoder_example(tokenizer, model_kind, template, row, max_length, train_answer_cut)
    return _joined_example(tokenizer, model_kind, template, row, max_length, train_target, train_answer_cut)


def _joined_example(tokenizer, kind: ModelKind, template: str, row: Mapping[str, str], max_length: int,
                    train_target: str, train_answer_cut: str) -> Encoded:
    """A causal or masked example: prompt and answer joined, cut to `max_length`, labelled by its kind."""
    if train_answer_cut == "quarter":
        full = _join(tokenizer, kind, training_prompt(template, row["instruction"], row["input"]),
                     row["output"], train_target)
        joined = _quarter_cut(tokenizer, kind, template, row, max_length, train_target)
        was_cut = joined.answer < full.answer
    else:
        cut = authors_row_cut(tokenizer, row, max_length)
        prompt = training_prompt(template, cut["instruction"], cut["input"])
        full = _join(tokenizer, kind, prompt, cut["output"], train_target)
        end = len(kind.wrap_ids(tokenizer)[1])
        joined = _cut_right(full, end, max_length)
        if len(joined.ids) - joined.prompt - end <= 0:  # no label left
            joined = _quarter_cut(tokenizer, kind, template, cut, max_length, train_target)
        was_cut = cut["output"] != row["output"] or len(joined.ids) < len(full.ids)
    input_ids, labels = kind.labelled(tokenizer, joined.ids, joined.prompt, joined.answer)
    return Encoded(input_ids, labels, was_cut)


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
