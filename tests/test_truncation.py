"""Config `method.truncation` on prompts longer than the budget: which tokens survive, per model kind and
template, on the packaged models' real tokenizers (SmolLM2: byte-level BPE without BOS; Gemma-3:
sentencepiece with BOS; all-MiniLM-L6-v2's WordPiece for the masked and seq2seq paths)."""

from __future__ import annotations

import csv

import pytest
from conftest import MIRROR, packaged_model

from inbedder.cache import Settings
from inbedder.cache_settings import METHOD_KEYS
from inbedder.encode import _tokenize
from inbedder.fidelity import method_settings
from inbedder.text import format_prompt, prompt_token_ids

# the authors' `method` values (the config's defaults), passed to Settings explicitly
AUTHORS = {key: value for key, value in method_settings(None).items() if key in METHOD_KEYS}

NEED = "What does the customer need?"
BUDGET = 512


@pytest.fixture(scope="module")
def article() -> str:
    """About 1,000 tokens of real text: 80 Banking77 queries in a row."""
    with open(MIRROR / "banking77" / "test.csv", encoding="utf-8") as fh:
        return " ".join(r["text"] for r in list(csv.DictReader(fh))[:80])


def _tok(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(packaged_model(name)))


@pytest.fixture(scope="module")
def smol():
    return _tok("smollm2-135m")


@pytest.fixture(scope="module")
def gemma():
    return _tok("gemma3-270m")


@pytest.fixture(scope="module")
def wordpiece():
    return _tok("minilm-l6")


def _settings(kind: str, template: str, truncation: str) -> Settings:
    return Settings(kind=kind, template=template, max_new_tokens=3, layers=(-1,), batch_size=1, device="cpu",
                    dtype="float32", max_length=BUDGET, **{**AUTHORS, "truncation": truncation})


def _cut(tok, kind, template, truncation, text) -> list[int]:
    (ids,) = _tokenize(tok, _settings(kind, template, truncation), [{"text": text, "instruction": NEED}])
    return ids


@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_causal_authors_cut_keeps_the_tail_so_the_alpaca_template_loses_its_instruction(name, article, request):
    tok = request.getfixturevalue(name)
    full = tok(format_prompt("inbedder", NEED, article)).input_ids
    assert len(full) > BUDGET + 200
    qa = _cut(tok, "causal", "inbedder", "authors", article)
    assert len(qa) == BUDGET
    text = tok.decode(qa, skip_special_tokens=True)
    assert text.endswith(f"### Instruction:\n{NEED}\n\n### Response:")  # the tail survives
    assert not text.startswith("### Input:")  # the start of the prompt went
    assert qa[-40:] == full[-40:]
    if tok.bos_token_id is not None and full[0] == tok.bos_token_id:
        assert qa[0] == tok.bos_token_id  # special tokens are added after the cut
    alpaca = tok.decode(_cut(tok, "causal", "alpaca", "authors", article), skip_special_tokens=True)
    assert NEED not in alpaca and "### Instruction:" not in alpaca  # the paper's Alpaca rows lost it
    assert alpaca.endswith("### Response:")


@pytest.mark.parametrize("name", ["smol", "gemma"])
def test_keep_instruction_cuts_the_input_text_at_its_end(name, article, request):
    tok = request.getfixturevalue(name)
    for template in ("inbedder", "alpaca"):
        ids = _cut(tok, "causal", template, "keep_instruction", article)
        assert len(ids) <= BUDGET
        text = tok.decode(ids, skip_special_tokens=True)
        assert NEED in text and text.endswith("### Response:")
        start = text.index(article[:40])  # the input text starts intact
        assert start >= 0 and article[-60:] not in text


def test_seq2seq_authors_cut_is_on_the_right_and_drops_the_instruction(wordpiece, article):
    ids = _cut(wordpiece, "seq2seq", "inbedder", "authors", article)
    assert len(ids) == BUDGET
    assert ids[0] == wordpiece.cls_token_id and ids[-1] == wordpiece.sep_token_id
    text = wordpiece.decode(ids, skip_special_tokens=True)
    assert text.startswith("# # # input :")  # the start survives ...
    assert "instruction" not in text and "response" not in text  # ... the instruction block went


def test_masked_authors_cut_leaves_room_for_the_masks_and_specials(wordpiece, article):
    ids = _cut(wordpiece, "masked", "inbedder", "authors", article)
    assert len(ids) == BUDGET - 3 - 2  # three <mask> tokens, [CLS] and [SEP] come after
    text = wordpiece.decode(ids)
    assert text.endswith("# # # response :") and "what does the customer need?" in text


def test_short_prompts_are_never_cut_and_a_bad_value_is_named(smol):
    short = {"text": "I lost my card", "instruction": NEED}
    for truncation in ("authors", "keep_instruction"):
        assert _cut(smol, "causal", "inbedder", truncation, short["text"]) == smol(
            format_prompt("inbedder", NEED, short["text"])).input_ids
    with pytest.raises(ValueError, match="method.truncation: 'middle'"):
        prompt_token_ids(smol, "inbedder", "x " * 600, NEED, 16, truncation="middle")


def test_keep_last_words_cuts_the_text_before_the_prompt_and_only_on_clustering_tasks(smol, root):
    from inbedder.config import load_config
    from inbedder.rule_params import encode_params

    text = "one two three four five six seven"
    settings = Settings(kind="causal", template="inbedder", max_new_tokens=3, layers=(-1,), batch_size=1,
                        device="cpu", dtype="float32", keep_last_words=3, **AUTHORS)
    (ids,) = _tokenize(smol, settings, [{"text": text, "instruction": NEED}])
    assert ids == smol(format_prompt("inbedder", NEED, "five six seven")).input_ids
    paper = load_config(root / "config.yaml")
    assert encode_params("opt-1.3b", "alpaca", "NYTClustering", paper)["keep_last_words"] == 400
    assert encode_params("opt-1.3b", "alpaca", "TwentyNewsgroupsClustering", paper)["keep_last_words"] == 400
    assert encode_params("opt-1.3b", "alpaca", "IntentEmotion", paper)["keep_last_words"] is None
    assert encode_params("opt-1.3b", "inbedder", "NYTClustering", paper)["keep_last_words"] is None
    assert encode_params("opt-350m", "alpaca", "NYTClustering", paper)["keep_last_words"] is None
