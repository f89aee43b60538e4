"""The fidelity registry, the authors' stopword list, and the reference implementation of the authors'
causal-LM aggregation (tests/authors_reference.py) on the real packaged SmolLM2."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from authors_reference import (
    MODES,
    authors_causal,
    authors_causal_filters,
    authors_filter_words,
    filter_token_ids,
)

from inbedder import fidelity, pooling
from inbedder.cache import load_cache
from inbedder.config import schema
from inbedder.encode import EncodeJob, encode_prompts
from inbedder.fidelity import AUTHORS_COMMIT, SWITCHES, Citation, Switch, authors_stopwords, switch
from inbedder.text import FILLER_PHRASES, authors_filter_ids

ROOT = Path(__file__).resolve().parents[1]
# A clone or bare mirror of zhang-yu-wei/InBedder holding commit e7747148.
AUTHORS_REPO_CANDIDATES = [os.environ.get("INBEDDER_AUTHORS_REPO", ""), str(ROOT.parent / "InBedder")]
QA = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------
# the registry


def test_switches_are_well_formed():
    assert isinstance(SWITCHES, tuple) and len(SWITCHES) >= 10
    keys = [s.key for s in SWITCHES]
    assert len(keys) == len(set(keys)), keys
    for s in SWITCHES:
        assert isinstance(s, Switch) and dataclasses.is_dataclass(s)
        assert s.authors in s.values and s.ours in s.values and s.authors != s.ours
        assert s.follows and all(isinstance(c, Citation) for c in s.follows)
        assert set(s.moves) <= set(fidelity.PAPER_TABLES)
        assert s.description.endswith(".") and len(s.description) < 600
        for c in s.follows:
            text = str(c)
            assert text.startswith(c.path + ":") and str(c.first) in text
        assert s.citations.count(";") == len(s.follows) - 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.authors = s.ours  # type: ignore[misc]
    # the ten differences, by key
    for key in ("method.truncation", "method.special_steps", "method.filter", "re_encoder",
                "recipes.<recipe>.epochs", "method.train_answer_cut", "models.<model>.decoding",
                "method.re_encode_multi_sampling", "method.train_target", "models.<model>.dtype",
                "method.masked_prompt_modes", "method.reranking_map"):
        assert switch(key).key == key


def test_switch_lookup_and_validation_name_the_fault():
    with pytest.raises(KeyError, match="no fidelity switch 'nope'.*method.truncation"):
        switch("nope")
    good = switch("method.filter")
    with pytest.raises(ValueError, match="switch 'method.filter'.*must be among"):
        dataclasses.replace(good, authors="nltk")
    with pytest.raises(ValueError, match="switch 'method.filter'.*the same"):
        dataclasses.replace(good, ours="authors")
    with pytest.raises(ValueError, match="switch 'method.filter'.*cites none"):
        dataclasses.replace(good, follows=())
    with pytest.raises(ValueError, match="switch 'method.filter'.*moves"):
        dataclasses.replace(good, moves=("figure 9",))
    with pytest.raises(ValueError, match="first <= last"):
        Citation("evaluation.py", 5, 4, "x")
    with pytest.raises(ValueError, match="relative"):
        Citation("/abs/evaluation.py", 1, 1, "x")


def test_the_authors_stopword_list_is_nltks_179_words():
    words = authors_stopwords()
    assert len(words) == 179 == len(set(words))
    assert words[:4] == ("i", "me", "my", "myself") and words[-1] == "wouldn't"
    assert all(w == w.lower() and w == w.strip() for w in words)
    assert {"the", "don't", "should've", "needn", "ma", "y"} <= set(words)
    # content words scikit-learn's list holds and NLTK's does not
    assert not {"top", "bill", "interest", "call", "back", "show"} & set(words)
    header = (ROOT / "src" / "inbedder" / "data" / fidelity.STOPWORDS_FILE).read_text(encoding="utf-8")
    assert "Apache License 2.0" in header and "NLTK" in header


def _authors_repo() -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for candidate in AUTHORS_REPO_CANDIDATES:
        if not candidate:
            continue
        probe = subprocess.run(["git", "-C", candidate, "cat-file", "-e", f"{AUTHORS_COMMIT}^{{commit}}"],
                               check=False, capture_output=True)
        if probe.returncode == 0:
            return Path(candidate)
    pytest.skip(f"no copy of zhang-yu-wei/InBedder holding commit {AUTHORS_COMMIT} "
                f"(set INBEDDER_AUTHORS_REPO to a clone or mirror of it)")


def test_every_citation_holds_its_text_in_the_authors_repository():
    repo = _authors_repo()
    files: dict[str, list[str]] = {}
    for s in SWITCHES:
        for c in s.follows:
            if c.path not in files:
                shown = subprocess.run(["git", "-C", str(repo), "show", f"{AUTHORS_COMMIT}:{c.path}"],
                                       check=False, capture_output=True, text=True)
                assert shown.returncode == 0, f"switch {s.key!r}: {c.path} is not in {AUTHORS_COMMIT}"
                files[c.path] = shown.stdout.splitlines()
            lines = files[c.path]
            assert c.last <= len(lines), f"switch {s.key!r}: {c} past the end ({len(lines)} lines)"
            cited = "\n".join(lines[c.first - 1 : c.last])
            assert c.needle in cited, f"switch {s.key!r}: {c} does not hold {c.needle!r}:\n{cited}"


# ----------------------------------------------------------------------------------------------
# the authors' filter ids on a byte-level BPE tokenizer (SmolLM2's, the GPT-2 scheme OPT uses too)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2))


def test_filter_ids_are_each_word_encoded_alone_and_case_sensitive(tokenizer):
    the, space_the = tokenizer.convert_tokens_to_ids("the"), tokenizer.convert_tokens_to_ids("\u0120the")
    stop_ids = filter_token_ids(tokenizer, authors_stopwords())
    assert the in stop_ids and space_the not in stop_ids  # a word on its own has no leading space
    task_ids = filter_token_ids(tokenizer, authors_filter_words(["How does the customer feel?",
                                                                 "What does the customer need?"]))
    assert space_the in task_ids  # ... the instruction sentence brings the mid-sentence form
    assert tokenizer.convert_tokens_to_ids("\u0120") in task_ids  # "Based on " ends in a lone space token
    how, cap_how = tokenizer.encode("how"), tokenizer.encode("How")
    assert how != cap_how and set(cap_how) <= task_ids and set(how) <= stop_ids
    assert len(authors_filter_words(["x"])) == 1 + 2 + 179


# ----------------------------------------------------------------------------------------------
# the reference aggregation on the real model


PROMPTS = [
    QA.format(input="I want to top up my card with cash.", instruction="What does the customer need?"),
    QA.format(input="My card payment was declined twice today, I'm furious!", instruction="How does the customer feel?"),
    QA.format(input="The Lakers won the championship after a close final game.", instruction="What is the topic of news?"),
    QA.format(input="Where can I find the nearest ATM?", instruction="What does the customer need?"),
    # a one-token answer, then EOS
    ("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nHi<|im_end|>\n<|im_start|>user\nSay yes"
     "<|im_end|>\n<|im_start|>assistant\n"),
    # a two-token answer, then EOS
    "Q: What is 2+2?\nA: 4<|im_end|>\nQ: What is 3+3?\nA:",
]
MAX_NEW = 8


@pytest.fixture(scope="module")
def lm(smollm2, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    # one thread: a 135M model on a handful of short prompts gains nothing from more, and on a busy
    # machine two spinning threads were 10-20x slower here than one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    yield model, tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(lm):
    model, tok = lm
    return authors_causal(model, tok, PROMPTS, max_new_tokens=MAX_NEW, batch_size=len(PROMPTS))


def _teacher_forced(model, tok, prompt: str, gen_ids: list[int]) -> tuple[np.ndarray, int]:
    """Last-layer states of one plain forward pass over the prompt and the generated tokens fed back."""
    import torch

    ids = tok(prompt, return_tensors="pt").input_ids[0]
    full = torch.cat([ids, torch.tensor(gen_ids[:-1], dtype=torch.long)])[None]
    with torch.inference_mode():
        states = model(input_ids=full, output_hidden_states=True).hidden_states[-1][0]
    return states.float().numpy(), len(ids)


@pytest.mark.slow
def test_reference_shapes_and_first_gen_is_the_last_prompt_state(lm, reference):
    import torch

    model, tok = lm
    hidden = model.config.hidden_size
    assert set(reference.vectors) == set(MODES)
    for mode, v in reference.vectors.items():
        assert v.shape == (len(PROMPTS), hidden) and v.dtype == np.float32 and np.isfinite(v).all(), mode
    assert len(reference.gen_ids) == len(reference.kept) == len(reference.answers) == len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        with torch.inference_mode():
            states = model(**tok(prompt, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]
        assert _cos(reference.vectors["1st-gen"][i], states[-1].numpy()) > 0.9999
        assert _cos(reference.vectors["avg-ppt"][i], states[:-1].mean(0).numpy()) > 0.9999


@pytest.mark.slow
def test_reference_drops_the_steps_that_predict_special_tokens(lm, reference):
    model, tok = lm
    special = set(tok.all_special_ids)
    kinds = set()
    for i, prompt in enumerate(PROMPTS):
        ids = reference.gen_ids[i]
        expected_kept = [t not in special for t in ids[1:]]
        assert reference.kept[i] == expected_kept
        answer = [t for t in ids if t not in special]
        if not any(t in special for t in ids):
            kinds.add("hit max_new_tokens")
        elif len(answer) == 1:
            kinds.add("1 token, then EOS")
        else:
            kinds.add(">= 2 tokens, then EOS")
        states, n_prompt = _teacher_forced(model, tok, prompt, ids)
        # step t >= 1 is the state at generated token t-1, i.e. position n_prompt - 1 + t
        steps = [states[n_prompt - 1 + t] for t in range(1, len(ids)) if expected_kept[t - 1]]
        assert reference.fell_back[i] == (not steps)
        if not steps:
            steps = [states[n_prompt]]
        first = states[n_prompt - 1]
        want = {"avg-gen": np.mean([first, *steps], axis=0), "last-gen": steps[-1],
                "avg-all": np.mean([*states[:n_prompt], *steps], axis=0)}
        for mode, vector in want.items():
            assert _cos(reference.vectors[mode][i], vector) > 0.9999, (i, mode, reference.answers[i])
    assert kinds == {"hit max_new_tokens", "1 token, then EOS", ">= 2 tokens, then EOS"}, kinds


@pytest.mark.slow
def test_reference_falls_back_to_the_first_generated_token(lm):
    model, tok = lm
    prompts = PROMPTS[:2]
    every_id = range(len(tok))
    filtered = authors_causal(model, tok, prompts, max_new_tokens=3, filter_ids=every_id)
    assert filtered.answers_filtered == ["", ""] and all(len(row) == 3 for row in filtered.gen_ids)
    single = authors_causal(model, tok, prompts, max_new_tokens=1)  # their code has no step 1 there
    assert all(len(row) == 1 for row in single.gen_ids)
    for ref in (filtered, single):
        assert ref.fell_back == [True, True]
        for i, prompt in enumerate(prompts):
            states, n_prompt = _teacher_forced(model, tok, prompt, ref.gen_ids[i] + [0])
            at_first_token = states[n_prompt]
            assert _cos(ref.vectors["last-gen"][i], at_first_token) > 0.9999
            assert _cos(ref.vectors["avg-gen"][i], (states[n_prompt - 1] + at_first_token) / 2) > 0.9999
            assert _cos(ref.vectors["avg-all"][i], states[: n_prompt + 1].mean(0)) > 0.9999


def test_method_settings_fill_the_authors_values_and_name_a_bad_key():
    assert fidelity.method_settings({})["filter"] == "authors"
    assert fidelity.method_settings({"method": {"filter": "words"}})["filter"] == "words"
    with pytest.raises(ValueError, match="method.filter: 'nltk' is not one of"):
        fidelity.method_settings({"method": {"filter": "nltk"}})
    with pytest.raises(ValueError, match=r"method: unknown key\(s\) \['filtre'\]"):
        fidelity.method_settings({"method": {"filtre": "words"}})
    # the reranking MAP is a known deviation no config selects: not a key of the block
    rerank = switch("method.reranking_map")
    assert not rerank.configurable and rerank.ours == "map_at_1000" and rerank.authors == "v1"
    assert [s.key for s in SWITCHES if not s.configurable] == ["method.reranking_map"]
    assert "reranking_map" not in fidelity.method_settings({})
    assert len(fidelity.method_settings({})) == sum(
        s.key.startswith(fidelity.METHOD_PREFIX) and s.configurable for s in SWITCHES) == 7
    with pytest.raises(ValueError, match=r"method: unknown key\(s\) \['reranking_map'\]"):
        fidelity.method_settings({"method": {"reranking_map": "v1"}})


def test_the_schemas_method_block_is_the_registrys():
    """One home each: the switches hold the authors' values, the schema's `method` block defaults to them."""
    block = schema()["properties"]["method"]["properties"]
    configurable = {s.key.removeprefix(fidelity.METHOD_PREFIX): s for s in SWITCHES
                    if s.key.startswith(fidelity.METHOD_PREFIX) and s.configurable}
    assert set(block) == set(configurable)
    for name, s in configurable.items():
        assert block[name]["default"] == s.authors, name
        assert tuple(block[name]["enum"]) == s.values, name
    assert fidelity.method_settings({"method": {k: v["default"] for k, v in block.items()}}) == \
        fidelity.method_settings({})


def test_the_setting_switches_hold_the_papers_training_values():
    """The paper's hyper-parameters live in the registry; the paper profile's train_defaults match them."""
    import yaml

    theirs = {key.rsplit(".", 1)[-1]: switch(key).authors for key in (
        "models.<model>.train.learning_rate", "models.<model>.train.lr_scheduler",
        "models.<model>.train.batch_size", "models.<model>.train.max_length")}
    assert theirs == {"learning_rate": 2e-5, "lr_scheduler": "cosine", "batch_size": 64, "max_length": 512}
    assert fidelity.AUTHORS_SEQ2SEQ_LR == 1e-4 and fidelity.AUTHORS_WARMUP == 0.03
    assert switch("models.<model>.variant").authors == "base"
    assert switch("models.<model>.source").authors == "hub"
    assert set(fidelity.AUTHORS_TRAIN_DATA) == set(fidelity.AUTHORS_EPOCHS) == {"inbedder", "alpaca"}
    paper = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    defaults = paper["train_defaults"]
    ours = (defaults["learning_rate"], defaults["lr_scheduler"], defaults["warmup_ratio"], defaults["max_length"])
    assert ours == (theirs["learning_rate"], theirs["lr_scheduler"], fidelity.AUTHORS_WARMUP, theirs["max_length"])
    assert defaults["batch_size"] * defaults["grad_accum"] == theirs["batch_size"]
    assert paper["models"]["flan-t5-large"]["train"]["learning_rate"] == fidelity.AUTHORS_SEQ2SEQ_LR
    assert {r: paper["recipes"][r]["dataset"] for r in fidelity.AUTHORS_TRAIN_DATA} == {
        r: data for r, (data, _) in fidelity.AUTHORS_TRAIN_DATA.items()}


def test_the_filler_phrases_are_the_authors_fillers_as_words():
    assert FILLER_PHRASES == tuple(f.rstrip() for f in fidelity.AUTHORS_FILLERS) == ("Based on", "Sure!")


# ----------------------------------------------------------------------------------------------
# our encode cache against the reference, on >= 64 real prompts


INSTRUCTIONS = ("What does the customer need?", "How does the customer feel?")
CHAT = "<|im_start|>user\n{say}<|im_end|>\n<|im_start|>assistant\n"


def _agreement_prompts(mirror) -> list[dict[str, str]]:
    """56 banking77 queries under two instructions (QA template), and chat turns that end early."""
    import pandas as pd

    texts = pd.read_csv(mirror / "banking77" / "test.csv")["text"].iloc[::50].head(28).tolist()
    rows = [{"text": QA.format(input=t, instruction=q), "instruction": q} for t in texts for q in INSTRUCTIONS]
    shots = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nHi<|im_end|>\n"
    for say in ("Say yes", "Say no", "Say ok", "Say hello", "Say thanks", "Say bye"):
        rows.append({"text": shots + CHAT.format(say=say), "instruction": INSTRUCTIONS[0]})
    rows += [{"text": f"Q: What is {a}+{a}?\nA: {2 * a}<|im_end|>\nQ: What is {a + 1}+{a + 1}?\nA:",
              "instruction": INSTRUCTIONS[1]} for a in (2, 3)]
    return rows


@pytest.mark.slow
def test_our_cache_equals_the_authors_aggregation_on_smollm2(lm, smollm2, mirror, tmp_path):
    """Every mode, unfiltered and with the authors' filter, within cosine 0.9999 of tests/authors_reference.py."""
    model, tok = lm
    prompts = _agreement_prompts(mirror)
    assert len(prompts) >= 64
    job = EncodeJob(smollm2, "causal", "{input}", max_new_tokens=MAX_NEW, batch_size=8, device="cpu",
                    dtype="float32", layers=(-1,), decoding="greedy", filter_instructions=INSTRUCTIONS,
                    method={"special_steps": "authors", "filter": "authors", "truncation": "authors"})
    encode_prompts(job, prompts, tmp_path, progress=False, loaded=(model, tok))
    cache = load_cache(tmp_path)
    texts = [p["text"] for p in prompts]
    plain, filtered = authors_causal_filters(
        model, tok, texts, [(None, None), (authors_filter_words(INSTRUCTIONS), None)], max_new_tokens=MAX_NEW,
        batch_size=1,
    )
    assert set(cache.meta["filter"]["authors_ids"]) == filter_token_ids(tok, authors_filter_words(INSTRUCTIONS))
    special = set(tok.all_special_ids)
    kinds = set()
    for i, row in enumerate(cache.answers):
        ref_ids = plain.gen_ids[i]
        ours = row["token_ids"]
        assert ours == ref_ids[: len(ours)], (i, row["answer"], plain.answers[i])
        assert all(t in special for t in ref_ids[len(ours):])  # the reference pads after EOS
        answer = [t for t in ours if t not in special]
        kinds.add("hit max_new_tokens" if len(answer) == MAX_NEW else
                  "1 token, then EOS" if len(answer) == 1 else ">= 2 tokens, then EOS")
        assert row["answer_filtered"] == filtered.answers_filtered[i].strip()
    assert kinds == {"hit max_new_tokens", "1 token, then EOS", ">= 2 tokens, then EOS"}, kinds
    worst = {}
    for mode in MODES:
        for ours_mode, ref in ((mode, plain), (f"{mode}+filter", filtered)):
            if ours_mode.endswith("+filter") and mode in ("1st-gen", "avg-ppt"):
                continue
            vectors = pooling.embed(cache, ours_mode)
            worst[ours_mode] = min(_cos(vectors[i], ref.vectors[mode][i]) for i in range(len(prompts)))
    assert min(worst.values()) >= 0.9999, worst
    assert any(filtered.fell_back) and any(plain.fell_back)  # the stand-in step was exercised


# ----------------------------------------------------------------------------------------------
# the authors' filter ids on a sentencepiece tokenizer (Gemma-3's: BOS added, no dummy prefix)


def test_filter_ids_on_gemma3_sentencepiece_carry_bos_and_only_the_unprefixed_word_forms():
    from conftest import packaged_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(packaged_model("gemma3-270m")))
    ids = tok.convert_tokens_to_ids
    stop_ids = set(authors_filter_ids(tok, []))
    task_ids = set(authors_filter_ids(tok, INSTRUCTIONS))
    # our ids are the reference's: every filter string encoded on its own, the union
    assert task_ids == filter_token_ids(tok, authors_filter_words(INSTRUCTIONS))
    assert stop_ids == filter_token_ids(tok, authors_filter_words([]))
    assert (len(stop_ids), len(task_ids)) == (155, 163)
    # a word encoded alone opens with <bos>, a special id (the special-token rule drops it anyway), no <eos>
    assert tok.convert_ids_to_tokens(tok.encode("the")) == ["<bos>", "the"]
    assert tok.bos_token_id in stop_ids and tok.bos_token_id in tok.all_special_ids
    assert tok.eos_token_id not in task_ids
    # no dummy prefix: a word alone is its unprefixed piece; inside a text a word is the "\u2581" piece,
    # which the stopwords never bring and the instruction sentences do
    the, space_the = ids("the"), ids("\u2581the")
    assert the != space_the and the in stop_ids and space_the not in stop_ids and space_the in task_ids
    in_text = tok("I want to top up the card", add_special_tokens=False).input_ids
    assert space_the in in_text and the not in in_text
    # case-sensitive: "how" is a stopword, "How" comes from the instruction, neither prefixed form is in
    how, cap_how = ids("how"), ids("How")
    assert tok.encode("how")[1:] == [how] and tok.encode("How")[1:] == [cap_how] and how != cap_how
    assert how in stop_ids and cap_how not in stop_ids and cap_how in task_ids
    assert not {ids("\u2581how"), ids("\u2581How")} & task_ids
    # "Based on " adds the mid-text "\u2581on" and a lone "\u2581"; a word in pieces adds every piece
    assert tok.convert_ids_to_tokens(tok.encode("Based on ")) == ["<bos>", "Based", "\u2581on", "\u2581"]
    assert {ids("\u2581on"), ids("\u2581"), ids("on")} <= stop_ids
    assert tok.convert_ids_to_tokens(tok.encode("needn")) == ["<bos>", "need", "n"]
    assert {ids("need"), ids("n")} <= stop_ids
