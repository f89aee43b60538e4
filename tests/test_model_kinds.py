"""Model kinds: one class per kind in inbedder.model_kinds, the only code telling the kinds apart by name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from inbedder import model_kinds
from inbedder.answering import generate_answers
from inbedder.cache import load_cache
from inbedder.encode import EncodeJob, encode_prompts
from inbedder.loading import load_lm
from inbedder.model_kinds import KINDS, SAMPLING_KINDS, ModelKind, kind_of
from inbedder.tokens import IGNORE_INDEX
from inbedder.vocabulary import GENERATIVE_KINDS, MODEL_KINDS, TRAINABLE_KINDS

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "src" / "inbedder" / "model_kinds.py"
VOCABULARY = ROOT / "src" / "inbedder" / "vocabulary.py"
NAMES = set(MODEL_KINDS)
# the constants that spell a kind, or a set of kinds, by name (inbedder.vocabulary, inbedder.model_kinds)
KIND_CONSTANTS = {"CAUSAL", "MASKED", "SEQ2SEQ", "SENTENCE_ENCODER", "GENERATIVE_KINDS", "TRAINABLE_KINDS",
                  "SAMPLING_KINDS"}


# ---------------------------------------------------------------------------------------------- one home


def _kind_literals(node: ast.AST) -> list[str]:
    """The model-kind names a node spells as string literals (itself, or the items of a tuple/list/set)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in NAMES]


def _kind_constants(node: ast.AST) -> list[str]:
    """The kind constants a node names (`SENTENCE_ENCODER`, `vocabulary.GENERATIVE_KINDS`, in a tuple too)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    names = [i.id if isinstance(i, ast.Name) else i.attr if isinstance(i, ast.Attribute) else None
             for i in items]
    return [name for name in names if name in KIND_CONSTANTS]


def kind_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, kind name or constant) of every comparison with a kind name literal or a kind constant (`==`,
    `!=`, `in`, `not in`) and of every dict keyed by a kind name, in Python source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, name) for name in _kind_literals(operand) + _kind_constants(operand)]
        elif isinstance(node, ast.Dict):
            keys = [key for key in node.keys if key is not None]
            found += [(node.lineno, name) for key in keys for name in _kind_literals(key)]
    return found


_NAME = "|".join(map(re.escape, sorted(NAMES)))
_CONSTANT = "|".join(sorted(KIND_CONSTANTS))
# in a rule file: a kind name or kind constant after `==`, `!=` or `in` (maybe inside a tuple), or before one
_SMK_COMPARISON = re.compile(rf"""(?:==|!=|\bin\b)\s*[(\[{{]?[^\n]*?["'](?:{_NAME})["']"""
                             rf"""|["'](?:{_NAME})["']\s*(?:==|!=|\bin\b)"""
                             rf"""|(?:==|!=|\bin\b)\s*[(\[{{]?[^\n]*?\b(?:\w+\.)?(?:{_CONSTANT})\b"""
                             rf"""|\b(?:{_CONSTANT})\s*(?:==|!=|\bin\b)""")


def test_the_scanner_sees_every_form_of_comparison():
    code = ('a = kind == "causal"\nb = "masked" != kind\nc = kind in ("seq2seq", "x")\n'
            'd = kind not in ["sentence-encoder"]\ne = {"causal": 1}\nf = kind == CAUSAL\n'
            'g = {"kind": "causal"}\n')
    assert kind_comparisons(code) == [(1, "causal"), (2, "masked"), (3, "seq2seq"), (4, "sentence-encoder"),
                                      (5, "causal"), (6, "CAUSAL")]
    constants = ('a = kind != SENTENCE_ENCODER\nb = kind in vocabulary.TRAINABLE_KINDS\n'
                 'c = kind not in (GENERATIVE_KINDS)\nd = SAMPLING_KINDS == x\ne = ", ".join(TRAINABLE_KINDS)\n')
    assert kind_comparisons(constants) == [(1, "SENTENCE_ENCODER"), (2, "TRAINABLE_KINDS"),
                                           (3, "GENERATIVE_KINDS"), (4, "SAMPLING_KINDS")]
    assert _SMK_COMPARISON.search('if spec["kind"] in ("causal", "seq2seq"):')
    assert _SMK_COMPARISON.search('if "masked" == kind:')
    assert _SMK_COMPARISON.search('if MODELS[m]["kind"] == SENTENCE_ENCODER:')
    assert _SMK_COMPARISON.search('if kind not in vocabulary.GENERATIVE_KINDS:')
    assert not _SMK_COMPARISON.search('kind: "causal"')
    assert not _SMK_COMPARISON.search('from inbedder.vocabulary import SENTENCE_ENCODER')


def test_no_code_outside_model_kinds_compares_a_kind_name():
    offences = []
    for path in sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "workflow").rglob("*.py")]):
        if path in (HOME, VOCABULARY):
            continue
        offences += [f"{path.relative_to(ROOT)}:{line}: {name!r}"
                     for line, name in kind_comparisons(path.read_text(encoding="utf-8"))]
    for path in sorted([*(ROOT / "workflow").rglob("*.smk"), ROOT / "Snakefile"]):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _SMK_COMPARISON.search(line.split("#")[0]):
                offences.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offences == [], "ask inbedder.model_kinds.kind_of(name) instead:\n" + "\n".join(offences)


# ---------------------------------------------------------------------------------------------- the registry


def test_every_kind_has_one_class_named_as_in_the_vocabulary():
    assert tuple(KINDS) == MODEL_KINDS
    assert all(isinstance(kind_of(name), ModelKind) and kind_of(name).name == name for name in MODEL_KINDS)
    assert tuple(k for k in MODEL_KINDS if kind_of(k).generative) == GENERATIVE_KINDS
    assert tuple(k for k in MODEL_KINDS if kind_of(k).trainable) == TRAINABLE_KINDS
    assert SAMPLING_KINDS == ("causal", "seq2seq")


def test_an_unknown_kind_names_the_key_and_the_known_kinds():
    with pytest.raises(ValueError, match=r"models\.x\.kind: 'rnn' is not a model kind; known kinds: causal, "
                                         r"masked, seq2seq, sentence-encoder"):
        kind_of("rnn", "models.x.kind")
    with pytest.raises(ValueError, match="^kind: 'rnn'"):
        kind_of("rnn")


# ---------------------------------------------------------------------------------------------- behaviour


class Tok:
    """A tokenizer with BERT's special ids, enough for the kinds' id arithmetic."""

    cls_token_id, sep_token_id, mask_token_id, bos_token_id, eos_token_id, pad_token_id = 101, 102, 103, None, None, None
    name_or_path = "tok"


def test_loading_padding_and_attention():
    import transformers

    assert {k: kind_of(k).auto_class() for k in GENERATIVE_KINDS} == {
        "causal": transformers.AutoModelForCausalLM,
        "masked": transformers.AutoModelForMaskedLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }
    with pytest.raises(ValueError, match="'sentence-encoder' has no language-model class"):
        kind_of("sentence-encoder").auto_class()
    assert {k: kind_of(k).padding_side for k in GENERATIVE_KINDS} == {
        "causal": "left", "masked": "right", "seq2seq": "right"}
    assert {k: kind_of(k).truncation_side for k in GENERATIVE_KINDS} == {
        "causal": "left", "masked": "left", "seq2seq": "right"}
    assert kind_of("causal").attention("cpu") == "eager" and kind_of("causal").attention("cuda") is None
    assert kind_of("masked").attention("cpu") is None and kind_of("seq2seq").attention("cpu") is None
    assert {k: kind_of(k).marker_file for k in MODEL_KINDS}["sentence-encoder"] == "modules.json"


def test_prompting_template_and_budget():
    assert [kind_of(k).prompt_template("alpaca") for k in MODEL_KINDS] == ["alpaca"] * 3 + ["instructor"]
    assert kind_of("causal").prompt_fit(Tok(), 512, 3) == {"budget": 512, "add_special_tokens": True,
                                                            "side": "left"}
    assert kind_of("seq2seq").prompt_fit(Tok(), 512, 3)["side"] == "right"
    # a masked LM's prompt leaves room for its masks and the <cls>/<sep> around them
    assert kind_of("masked").prompt_fit(Tok(), 512, 3) == {"budget": 507, "add_special_tokens": False,
                                                            "side": "left"}
    assert [kind_of(k).default_mode for k in MODEL_KINDS] == ["1st-gen"] * 3 + ["prefixed"]


def test_decoding_goes_to_the_kinds_pass(monkeypatch):
    calls = {}
    for name in ("run_causal", "run_masked", "run_seq2seq"):
        monkeypatch.setattr(model_kinds, name, lambda *a, _name=name, **kw: calls.setdefault(_name, kw))
    args = {"max_new_tokens": 3, "layers": (-1,), "batch_size": 2, "eos": {7}}
    kind_of("causal").decode(None, Tok(), [[1]], **args, sampling={"temperature": 0.5})
    kind_of("masked").decode(None, Tok(), [[1]], **args, specials_in_prompt_modes=False)
    kind_of("seq2seq").decode(None, Tok(), [[1]], **args, keep_states=False)
    assert calls["run_causal"]["temperature"] == 0.5
    assert calls["run_causal"]["pad_id"] == 7  # no pad token: the EOS pads
    assert calls["run_masked"]["n_masks"] == 3 and calls["run_masked"]["specials_in_prompt_modes"] is False
    assert calls["run_seq2seq"]["keep_states"] is False
    with pytest.raises(ValueError, match="cannot generate answers with a model of kind 'sentence-encoder'"):
        kind_of("sentence-encoder").decode(None, Tok(), [[1]], **args)


def test_training_targets():
    ids, prompt, answer = [1, 5, 6, 8, 9, 2], 3, 2
    assert kind_of("causal").labelled(Tok(), ids, prompt, answer) == (ids, [IGNORE_INDEX] * 3 + [8, 9, 2])
    assert kind_of("masked").labelled(Tok(), ids, prompt, answer) == (
        [1, 5, 6, 103, 103, 2], [IGNORE_INDEX] * 3 + [8, 9] + [IGNORE_INDEX])
    assert kind_of("masked").wrap_ids(Tok()) == ([101], [102])
    assert kind_of("causal").wrap_ids(Tok()) == ([], [])
    assert [k for k in GENERATIVE_KINDS if kind_of(k).decoder_target] == ["seq2seq"]
    assert [k for k in GENERATIVE_KINDS if kind_of(k).answer_only_loss] == ["causal"]
    assert [k for k in GENERATIVE_KINDS if not kind_of(k).prompt_special_tokens] == ["masked"]
    with pytest.raises(ValueError, match="does not join"):
        kind_of("seq2seq").join(Tok(), "p", "a", "authors")


def test_pooling_rules():
    assert [k for k in GENERATIVE_KINDS if kind_of(k).drops_special_steps] == ["causal", "seq2seq"]
    assert [k for k in GENERATIVE_KINDS if kind_of(k).first_gen_is_first_kept] == ["seq2seq"]
    assert [k for k in GENERATIVE_KINDS if kind_of(k).applies_authors_filter] == ["causal", "seq2seq"]


# ---------------------------------------------------------------------------------------------- one path


@pytest.mark.parametrize("kind", GENERATIVE_KINDS)
def test_held_out_answers_are_the_encode_answers(kind, request, tmp_path):
    """generate_answers (the held-out check) and an encode job answer the same prompts alike: one pass."""
    fixture = {"causal": "tiny_llama", "masked": "tiny_roberta", "seq2seq": "tiny_t5"}[kind]
    model_dir = request.getfixturevalue(fixture)
    prompts = [{"text": t, "instruction": "What is it about?"}
               for t in ("a cat", "the report was late again", "rain", "one two three four five six")]
    job = EncodeJob(model_dir, kind, "{instruction} {input}", max_new_tokens=3, device="cpu", dtype="float32",
                    layers=[-1], decoding="greedy", batch_size=2)
    encode_prompts(job, prompts, tmp_path, progress=False)
    cache = load_cache(tmp_path)
    model, tokenizer = load_lm(model_dir, kind)
    texts = [f"{p['instruction']} {p['text']}" for p in prompts]
    answers = generate_answers(model, tokenizer, kind, texts, max_new_tokens=3, batch_size=3, progress=False)
    # the answer is every generated token, special tokens left out (an encode cache stops at the first EOS)
    expected = [tokenizer.decode(a["token_ids"], skip_special_tokens=True).strip() for a in cache.answers]
    assert answers == expected
    if kind != "masked":
        assert answers == [a["answer"] for a in cache.answers]
