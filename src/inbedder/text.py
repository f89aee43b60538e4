"""Prompt templates, the stopword list and answer normalisation shared by every stage."""

from __future__ import annotations

import re
import string
from collections import Counter

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

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
STOPWORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS)

# Phrases the paper also filters: chat-style openers that carry no content.
FILLER_PHRASES: tuple[str, ...] = ("Based on", "Sure!")

_WORD = re.compile(r"\w+(?:'\w+)?")


def format_prompt(template: str, instruction: str, input: str) -> str:
    """Fill a named template (or a literal template string) with an instruction and an input text."""
    pattern = TEMPLATES.get(template, template)
    if "{input}" not in pattern:
        raise ValueError(f"template {template!r} is neither a known name ({sorted(TEMPLATES)}) nor has {{input}}")
    return pattern.format(instruction=instruction, input=input)


def remove_stopwords(answer: str) -> str:
    """Drop stopwords from an answer, keeping word order and the original casing (the paper's answers)."""
    words = _WORD.findall(answer)
    kept = [w for w in words if w.lower() not in STOPWORDS]
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
