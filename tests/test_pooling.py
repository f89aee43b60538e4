"""Pooling: every mode from a hand-made cache, the filter, layers, lookup and the cache round trip."""

from __future__ import annotations

import numpy as np
import pytest

from inbedder import pooling
from inbedder.cache import Cache, CacheError, Settings, cache_key, key_fields, load_cache, write_cache
from inbedder.cache_settings import METHOD_KEYS
from inbedder.fidelity import method_settings
from inbedder.text import STOPWORDS, filter_vocabulary, keep_steps

# the authors' `method` values (the config's defaults), passed to Settings explicitly
AUTHORS = {key: value for key, value in method_settings(None).items() if key in METHOD_KEYS}

H = 4  # hidden size of the hand-made states
PROMPTS = [
    {"text": "I lost my card", "instruction": "What does the customer need?"},
    {"text": "Where is my money?", "instruction": "What does the customer need?"},
    {"text": "Card payment declined", "instruction": "How does the customer feel?"},
]
# step t predicts TOKENS[i][t]; prompt 1 ends with EOS at step 1, so its step 2 never ran
TOKENS = [
    ["\n", " card", " replacement"],
    [" Refund", "<|im_end|>"],
    [" the", " customer", " feel"],  # every step filtered -> fallback to step 0
]
FILLERS = ["Based", " on", "Sure", "!"]


def make_cache(tmp_path, layers=(-1, 2), first_gen_in_prompt=True, special_steps="keep_eos", filter="words",
               kind="causal", authors_ids=(6, 10, 11)) -> Cache:
    """A cache of a 4-layer model with random states: three prompts, three steps, two layers.

    Token id 2 is the EOS (the only special id); `authors_ids` are the ids the authors' filter drops.
    """
    rng = np.random.default_rng(0)
    n, steps = len(PROMPTS), 3
    tensors: dict[str, np.ndarray] = {}
    for layer in layers:
        tensors[f"first_gen@{layer}"] = rng.normal(size=(n, H)).astype(np.float32)
        tensors[f"prompt_mean@{layer}"] = rng.normal(size=(n, H)).astype(np.float32)
        tensors[f"gen@{layer}"] = rng.normal(size=(n, steps - 1, H)).astype(np.float32)
    tensors["gen_mask"] = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
    tensors["gen_ids"] = np.array([[5, 6, 7], [8, 2, -1], [9, 10, 11]], dtype=np.int64)
    tensors["prompt_len"] = np.array([7, 9, 5], dtype=np.int64)
    tensors["re-encode"] = rng.normal(size=(n, 3)).astype(np.float32)
    answers = [
        {
            "id": i,
            "answer": "".join(TOKENS[i]).strip(),
            "token_ids": [int(x) for x in tensors["gen_ids"][i] if x >= 0],
            "tokens": TOKENS[i],
            "instruction_tokens": ["What", " does", " the", " customer", " need", "?"]
            if i < 2
            else ["How", " does", " the", " customer", " feel", "?"],
            "answer_filtered": "",
        }
        for i in range(n)
    ]
    settings = Settings(
        kind=kind,
        template="inbedder",
        max_new_tokens=steps,
        layers=tuple(layers),
        batch_size=2,
        device="cpu",
        dtype="float32",
        **{**AUTHORS, "special_steps": special_steps, "filter": filter},
    )
    fields = key_fields(settings, "f" * 64, PROMPTS)
    meta = {
        **fields,
        "cache_key": cache_key(fields),
        "num_layers": 4,
        "layer_index": {str(x): (x + 5 if x < 0 else x) for x in layers},
        "first_gen_in_prompt": first_gen_in_prompt,
        "eos_ids": [2],
        "special_ids": [2],
        "filter": {"authors_ids": list(authors_ids), "words": {"filler_tokens": FILLERS}},
    }
    write_cache(tmp_path, meta, PROMPTS, answers, tensors)
    return load_cache(tmp_path)


def steps_of(cache, i, layer="-1"):
    t = cache.tensors
    return np.concatenate([t[f"first_gen@{layer}"][i][None], t[f"gen@{layer}"][i]])


def test_generation_modes_follow_their_definitions(tmp_path):
    cache = make_cache(tmp_path)
    t = cache.tensors
    np.testing.assert_array_equal(pooling.embed(cache, "1st-gen"), t["first_gen@-1"])
    np.testing.assert_array_equal(pooling.embed(cache, "avg-ppt"), t["prompt_mean@-1"])
    avg = pooling.embed(cache, "avg-gen")
    last = pooling.embed(cache, "last-gen")
    every = pooling.embed(cache, "avg-all")
    for i in range(cache.n):
        valid = t["gen_mask"][i]
        s = steps_of(cache, i)[valid]
        np.testing.assert_allclose(avg[i], s.mean(0), rtol=1e-6)
        np.testing.assert_allclose(last[i], s[-1], rtol=1e-6)
        # causal: prompt_len - 1 prompt states in prompt_mean, the last prompt token is step 0
        n_ppt = t["prompt_len"][i] - 1
        expected = (t["prompt_mean@-1"][i] * n_ppt + s.sum(0)) / (n_ppt + len(s))
        np.testing.assert_allclose(every[i], expected, rtol=1e-5)
    # prompt 1 stopped at EOS: its third step is excluded
    assert not np.allclose(avg[1], steps_of(cache, 1).mean(0))


def test_avg_all_without_first_gen_in_prompt(tmp_path):
    cache = make_cache(tmp_path, first_gen_in_prompt=False)
    t = cache.tensors
    every = pooling.embed(cache, "avg-all")
    s = steps_of(cache, 0)
    expected = (t["prompt_mean@-1"][0] * 7 + s.sum(0)) / (7 + 3)
    np.testing.assert_allclose(every[0], expected, rtol=1e-5)


def test_layers_by_configured_value_or_index(tmp_path):
    cache = make_cache(tmp_path)
    np.testing.assert_array_equal(pooling.embed(cache, "1st-gen", 2), cache.tensors["first_gen@2"])
    # -1 is hidden_states index 4 (the final output of a 4-layer model); 4 and -1 are the same entry
    np.testing.assert_array_equal(pooling.embed(cache, "1st-gen", 4), cache.tensors["first_gen@-1"])
    with pytest.raises(KeyError, match="layer 1 is not in the cache"):
        pooling.embed(cache, "avg-gen", 1)


def test_filter_removes_exactly_the_listed_tokens():
    instr = ["What", " does", " the", " customer", " need", "?"]
    tokens = [
        "\n",
        " Card",
        " the",
        " customer",
        "?",
        " Sure",
        "!",
        " Based",
        " on",
        " refund",
        " NEED",
        "Ġof",
    ]
    keep = keep_steps(tokens, [True] * len(tokens), instr, FILLERS)
    kept = [t for t, k in zip(tokens, keep, strict=True) if k]
    # dropped: "the" (stopword + instruction), "customer", "?" (instruction), "Sure" "!" "Based"
    # (fillers), "on" (stopword + filler), "NEED" (instruction, case-insensitive), "Ġof" (stopword,
    # marker stripped); kept: the newline (not listed) and the content words
    assert kept == ["\n", " Card", " refund"]
    assert filter_vocabulary(instr, FILLERS) >= {"customer", "?", "sure", "!", "based", "need"}
    assert "card" not in filter_vocabulary(instr, FILLERS)
    assert set(STOPWORDS) <= filter_vocabulary([], [])


def test_filter_respects_validity_and_falls_back_to_first_step():
    assert keep_steps([" card", " refund"], [True, False], [], []) == [True, False]
    assert keep_steps([" the", " of"], [True, True], [], []) == [True, False]  # fallback: step 0
    assert keep_steps([" the", " of"], [True, True], [], [], fallback=False) == [False, False]


def test_filtered_modes(tmp_path):
    cache = make_cache(tmp_path)
    avg = pooling.embed(cache, "avg-gen+filter")
    last = pooling.embed(cache, "last-gen+filter")
    every = pooling.embed(cache, "avg-all+filter")
    s0 = steps_of(cache, 0)
    # prompt 0: "\n" and " card" and " replacement" are all content or unlisted -> nothing dropped
    np.testing.assert_allclose(avg[0], s0.mean(0), rtol=1e-6)
    # prompt 1: " Refund" kept, EOS step kept (not a listed token), step 2 invalid
    np.testing.assert_allclose(avg[1], steps_of(cache, 1)[:2].mean(0), rtol=1e-6)
    # prompt 2: every token is a stopword or an instruction token -> 1st-gen alone
    np.testing.assert_allclose(avg[2], cache.tensors["first_gen@-1"][2], rtol=1e-6)
    np.testing.assert_allclose(last[2], cache.tensors["first_gen@-1"][2], rtol=1e-6)
    t = cache.tensors
    expected = (t["prompt_mean@-1"][2] * 4 + t["first_gen@-1"][2]) / 5
    np.testing.assert_allclose(every[2], expected, rtol=1e-5)


def test_cache_round_trip_lookup_and_modes(tmp_path):
    cache = make_cache(tmp_path)
    again = load_cache(tmp_path / "meta.json")
    assert again.prompts == [{"id": i, **p} for i, p in enumerate(PROMPTS)]
    assert again.answers[1]["tokens"] == TOKENS[1]
    for name, array in cache.tensors.items():
        np.testing.assert_array_equal(again.tensors[name], array)
        assert again.tensors[name].dtype == array.dtype
    table = pooling.lookup(tmp_path, "re-encode")
    assert list(table) == [(p["text"], p["instruction"]) for p in PROMPTS]
    np.testing.assert_array_equal(
        table[(PROMPTS[2]["text"], PROMPTS[2]["instruction"])], cache.tensors["re-encode"][2]
    )
    modes = pooling.available_modes(cache)
    assert modes == [
        "1st-gen",
        "avg-gen",
        "last-gen",
        "avg-ppt",
        "avg-all",
        "avg-gen+filter",
        "avg-gen+filter=authors",
        "avg-gen+filter=words",
        "last-gen+filter",
        "last-gen+filter=authors",
        "last-gen+filter=words",
        "avg-all+filter",
        "avg-all+filter=authors",
        "avg-all+filter=words",
        "re-encode",
    ]
    for mode in modes:
        out = pooling.embed(cache, mode)
        assert out.dtype == np.float32 and out.shape[0] == 3 and np.isfinite(out).all()
    with pytest.raises(KeyError, match="unknown mode"):
        pooling.embed(cache, "1st-gen+filter")
    with pytest.raises(KeyError, match="was not computed"):
        pooling.embed(cache, "plain")


def test_load_cache_refuses_an_edited_cache(tmp_path):
    make_cache(tmp_path)
    path = tmp_path / "answers.jsonl"
    path.write_text(path.read_text().replace("Refund", "Refunf"))
    with pytest.raises(CacheError, match="answers.jsonl: sha256 differs"):
        load_cache(tmp_path)


# ----------------------------------------------------------------------------------------------
# the authors' rules (config method.special_steps / method.filter: authors)


def test_authors_special_steps_drop_the_eos_step_and_stand_in_with_step_1(tmp_path):
    cache = make_cache(tmp_path, special_steps="authors")
    t = cache.tensors
    avg, last, every = (pooling.embed(cache, m) for m in ("avg-gen", "last-gen", "avg-all"))
    # prompt 0 predicts 5 6 7: nothing special, every step counts
    np.testing.assert_allclose(avg[0], steps_of(cache, 0).mean(0), rtol=1e-6)
    # prompt 1: step 1 predicts EOS (id 2) and step 2 never ran, so no step past 0 is left and the
    # state at the first generated token (step 1) stands in
    s1 = steps_of(cache, 1)
    np.testing.assert_allclose(avg[1], s1[:2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(last[1], s1[1], rtol=1e-6)
    n_ppt = t["prompt_len"][1] - 1
    np.testing.assert_allclose(every[1], (t["prompt_mean@-1"][1] * n_ppt + s1[:2].sum(0)) / (n_ppt + 2), rtol=1e-5)
    np.testing.assert_array_equal(pooling.embed(cache, "1st-gen"), t["first_gen@-1"])


def test_authors_filter_drops_ids_never_step_0_and_both_filters_score_from_one_cache(tmp_path):
    cache = make_cache(tmp_path, special_steps="authors", filter="authors", authors_ids=(6, 10, 11))
    avg = pooling.embed(cache, "avg-gen+filter")
    np.testing.assert_array_equal(avg, pooling.embed(cache, "avg-gen+filter=authors"))
    s0, s2 = steps_of(cache, 0), steps_of(cache, 2)
    # prompt 0: step 1 predicts id 6 (dropped); steps 0 and 2 stay
    np.testing.assert_allclose(avg[0], s0[[0, 2]].mean(0), rtol=1e-6)
    # prompt 2: steps 1 and 2 predict 10 and 11 (dropped): step 0 plus the stand-in step 1
    np.testing.assert_allclose(avg[2], s2[[0, 1]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pooling.embed(cache, "last-gen+filter")[0], s0[2], rtol=1e-6)
    # the words filter of the same cache: prompt 2's tokens are all stopwords/instruction -> step 0 alone
    words = pooling.embed(cache, "avg-gen+filter=words")
    np.testing.assert_allclose(words[2], s2[0], rtol=1e-6)
    assert not np.allclose(words[2], avg[2])
    with pytest.raises(KeyError, match="unknown mode"):
        pooling.embed(cache, "avg-gen+filter=nltk")


def test_seq2seq_under_the_authors_rule_any_step_can_go_and_1st_gen_is_the_first_left(tmp_path):
    cache = make_cache(tmp_path, special_steps="authors", filter="authors", kind="seq2seq",
                       first_gen_in_prompt=False, authors_ids=(5, 8, 9, 10, 11))
    s0, s1 = steps_of(cache, 0), steps_of(cache, 1)
    # unfiltered: prompt 1 keeps step 0 (predicts 8), drops step 1 (EOS)
    np.testing.assert_allclose(pooling.embed(cache, "avg-gen")[1], s1[0], rtol=1e-6)
    # filtered: prompt 0 loses step 0 (predicts 5), keeps 1 and 2, so its 1st-gen-like first step is 1
    np.testing.assert_allclose(pooling.embed(cache, "avg-gen+filter")[0], s0[1:].mean(0), rtol=1e-6)
    # filtered: prompt 1 loses everything -> the decoder start (step 0) stands in
    np.testing.assert_allclose(pooling.embed(cache, "avg-gen+filter")[1], s1[0], rtol=1e-6)


def test_a_one_token_answer_cache_still_has_the_stand_in_step(tmp_path):
    """max_new_tokens 1: gen_mask has one step, the state at the first generated token a second."""
    cache = make_cache(tmp_path, special_steps="authors")
    one = Cache(cache.path, cache.meta, cache.prompts, cache.answers,
                {**cache.tensors, "gen_mask": cache.tensors["gen_mask"][:, :1],
                 "gen_ids": cache.tensors["gen_ids"][:, :1],
                 "gen@-1": cache.tensors["gen@-1"][:, :1]})
    np.testing.assert_allclose(pooling.embed(one, "avg-gen")[0], steps_of(cache, 0)[:2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pooling.embed(one, "last-gen")[0], steps_of(cache, 0)[1], rtol=1e-6)
