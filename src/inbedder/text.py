"""Words shared by every stage: prompt building, the step filter with its word lists, answer normalisation.

Prompt building is `format_prompt` (a template filled with an instruction and a text) and
`prompt_token_ids` (its token ids, an over-long prompt cut to fit by config `method.truncation`).

The step filter (which generation steps the `+filter` modes and `re-encode+filter` keep) has two
variants (config `method.filter`):
- `authors`: a step is dropped when the token id it predicts is one of `authors_filter_ids`: every id
  of NLTK's English stopwords, of the task's instructions and of the fillers "Based on " / "Sure! ",
  each string encoded on its own with the tokenizer's special tokens (case-sensitive);
- `words`: `keep_steps`, fed by `instruction_tokens` and `filler_tokens`: a step is dropped when its
  token (decoded on its own, the tokenizer's space marker stripped, lower-cased) is one of
  scikit-learn's stopwords, a token of the row's own instruction, or a token of the filler phrases.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from inbedder.fidelity import AUTHORS_FILLERS, authors_stopwords, switch

# Templates of the paper (section 3 of DESIGN.md). `{input}` is the text, `{instruction}` the question.
TEMPLATES: dict[str, str] = {
    "inbedder": "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:",
    "alpaca": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
    "instructor": "{instruction}: {input}",
    "plain": "{input}",
}

# The stopword list used for answers (training data) and for filtering generation steps:
# scikit-learn's ENGLISH_STOP_WORDS (318 words, from the Glasgow Information Retrieval Group list).
STOPWORD_LIST_NAME = "scikit-learn ENGLISH_STOP_WORDS (Glasgow IR group list, 318 words)"


@functools.cache
def stopwords() -> frozenset[str]:
    """The stopword list (`STOPWORD_LIST_NAME`), read from scikit-learn when first asked for: importing
    scikit-learn takes ~0.7 s, paid otherwise by every job and workflow start that imports this module."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def __getattr__(name: str) -> Any:  # `STOPWORDS`, the list as a module constant, made when first read
    if name == "STOPWORDS":
        return stopwords()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Phrases the paper also filters: chat-style openers that carry no content (the authors' fillers as words,
# without the trailing space their filter config keeps).
FILLER_PHRASES: tuple[str, ...] = tuple(phrase.rstrip() for phrase in AUTHORS_FILLERS)
SPACE_MARKERS = ("\u0120", "\u2581", "\u010a")  # byte-level BPE space, sentencepiece space, BPE newline

_WORD = re.compile(r"\w+(?:'\w+)?")


# ----------------------------------------------------------------------------------------------
# prompts


def format_prompt(template: str, instruction: str, input: str) -> str:
    """Fill a named template (or a literal template string) with an instruction and an input text."""
    pattern = TEMPLATES.get(template, template)
    if "{input}" not in pattern:
        raise ValueError(f"template {template!r} is neither a known name ({sorted(TEMPLATES)}) nor has {{input}}")
    return pattern.format(instruction=instruction, input=input)


TRUNCATIONS = switch("method.truncation").values


def prompt_token_ids(tokenizer, template: str, text: str, instruction: str, budget: int,
                     add_special_tokens: bool = True, truncation: str = "keep_instruction",
                     side: str = "left") -> list[int]:
    """Token ids of the formatted prompt, at most `budget` of them.

    `truncation="authors"`: the whole prompt is cut on `side` (left: its start goes, the tail of the
    text, the instruction block of the InBedder template and `### Response:` stay; right: its end
    goes), special tokens added after the cut, as a tokenizer with `truncation_side` set does.
    `"keep_instruction"`: the input text is cut at its end until the prompt fits.
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"method.truncation: {truncation!r} is not one of {', '.join(TRUNCATIONS)}")
    prompt = format_prompt(template, instruction, text)
    ids = tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids
    if len(ids) <= budget:
        return list(ids)
    if truncation == "authors":
        if side not in ("left", "right"):
            raise ValueError(f"truncation side must be 'left' or 'right', got {side!r}")
        before = tokenizer.truncation_side
        tokenizer.truncation_side = side
        try:
            ids = tokenizer(prompt, add_special_tokens=add_special_tokens, truncation=True, max_length=budget).input_ids
        finally:
            tokenizer.truncation_side = before
        return list(ids)
    text_ids = tokenizer(text, add_special_tokens=False).input_ids
    keep = max(0, len(text_ids) - (len(ids) - budget) - 2)
    while True:
        short = tokenizer.decode(text_ids[:keep], skip_special_tokens=True)
        ids = tokenizer(format_prompt(template, instruction, short), add_special_tokens=add_special_tokens).input_ids
        if len(ids) <= budget:
            return list(ids)
        if keep == 0:
            raise ValueError(f"template {template!r}: the prompt does not fit max_length {budget} even with an "
                             f"empty input (instruction {instruction[:60]!r})")
        keep = max(0, keep - max(1, len(ids) - budget))


# ----------------------------------------------------------------------------------------------
# the step filter


def authors_filter_words(instructions: Sequence[str]) -> list[str]:
    """The strings of the authors' filter for a task: its instructions, the fillers, NLTK's stopwords."""
    return list(dict.fromkeys([*instructions, *AUTHORS_FILLERS, *authors_stopwords()]))


def authors_filter_ids(tokenizer, instructions: Sequence[str]) -> list[int]:
    """Sorted ids the authors' filter drops: each filter string encoded on its own, special tokens included."""
    ids: set[int] = set()
    for word in authors_filter_words(instructions):
        ids.update(int(t) for t in tokenizer(word).input_ids)
    return sorted(ids)


def decode_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (the filter decides per generation step from these)."""
    return [tokenizer.decode([int(t)]) for t in ids]


def filler_tokens(tokenizer) -> list[str]:
    """Decoded tokens of the filler phrases ("Based on", "Sure!"), with and without a leading space."""
    out: list[str] = []
    for phrase in FILLER_PHRASES:
        for variant in (phrase, " " + phrase):
            out += decode_tokens(tokenizer, tokenizer(variant, add_special_tokens=False).input_ids)
    return list(dict.fromkeys(out))


def instruction_tokens(tokenizer, instruction: str) -> list[str]:
    """The instruction's tokens, decoded one by one, as they appear inside a prompt and on their own."""
    out: list[str] = []
    for variant in (instruction, " " + instruction):
        out += decode_tokens(tokenizer, tokenizer(variant, add_special_tokens=False).input_ids)
    return list(dict.fromkeys(out))


def normalize_token(token: str) -> str:
    """A decoded token as the filter compares it: space markers and whitespace stripped, lower-cased."""
    for marker in SPACE_MARKERS:
        token = token.replace(marker, " ")
    return token.strip().lower()


def filter_vocabulary(instruction_tokens: Sequence[str], filler_tokens: Sequence[str]) -> frozenset[str]:
    """Normalised tokens the filter drops: stopwords, the instruction's tokens and the filler phrases' tokens."""
    words = {normalize_token(t) for t in (*instruction_tokens, *filler_tokens)}
    return frozenset((words | stopwords()) - {""})


def keep_steps(tokens: Sequence[str], valid: Sequence[bool], instruction_tokens: Sequence[str],
               filler_tokens: Sequence[str], fallback: bool = True) -> list[bool]:
    """Which generation steps the filter keeps (step t predicts tokens[t]); with `fallback`, step 0 if none."""
    vocab = filter_vocabulary(instruction_tokens, filler_tokens)
    keep = [bool(v) and normalize_token(t) not in vocab for t, v in zip(tokens, valid, strict=False)]
    keep += [False] * (len(valid) - len(keep))
    if fallback and not any(keep) and keep:
        keep[0] = True
    return keep


# ----------------------------------------------------------------------------------------------
# answers


def remove_stopwords(answer: str) -> str:
    """Drop stopwords from an answer, keeping word order and the original casing (the paper's answers)."""
    words = _WORD.findall(answer)
    stop = stopwords()
    kept = [w for w in words if w.lower() not in stop]
    return " ".join(kept)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between a predicted and a reference answer, after SQuAD normalisation."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)
