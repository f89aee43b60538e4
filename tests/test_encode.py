"""Encode: the one-pass cache against plain transformers calls, batching, precision, keys and validation.

The causal path runs on the real SmolLM2-135M (tests/conftest.py `smollm2`); the masked and seq2seq
paths, for which no real small model ships offline, on tiny randomly initialised models built from a
config (with the packaged models' real tokenizers); sentence encoders and the re-encoder on the real
all-MiniLM-L6-v2.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import MIRROR

from inbedder import encode, pooling
from inbedder.cache import WRITE_CHUNK_ROWS, Cache, CacheError, RowStore, Settings, load_cache, validate_cache
from inbedder.cache_settings import METHOD_KEYS
from inbedder.decoding import plan_batches, run_causal
from inbedder.encode import EncodeJob, encode_prompts, run_lm
from inbedder.fidelity import method_settings
from inbedder.loading import load_model
from inbedder.text import format_prompt

# the authors' `method` values (the config's defaults), passed to Settings explicitly
AUTHORS = {key: value for key, value in method_settings(None).items() if key in METHOD_KEYS}

NEED = "What does the customer need?"


def banking_prompts(n: int, instruction: str = NEED, start: int = 0) -> list[dict[str, str]]:
    """Real Banking77 test utterances (the offline mirror) as prompts."""
    with open(MIRROR / "banking77" / "test.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[start : start + n]
    return [{"text": r["text"], "instruction": instruction} for r in rows]


def encode_with(model_dir, kind: str, prompts, template: str, out, *, progress: bool = True, loaded=None,
                chunk_rows: int = WRITE_CHUNK_ROWS, **job) -> dict:
    """encode_prompts of the EncodeJob (model_dir, kind, template, **job), the config's defaults where job says none."""
    job = {"max_new_tokens": 3, "layers": (-1,), "device": "auto", "dtype": "auto", "decoding": "greedy", **job}
    return encode_prompts(EncodeJob(model_dir, kind, template, **job), prompts, out, progress=progress,
                          loaded=loaded, chunk_rows=chunk_rows)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ----------------------------------------------------------------------------------------------
# models (the tiny random ones, tiny_llama, tiny_roberta and tiny_t5, are in tests/conftest.py)


@pytest.fixture(scope="module")
def smol_fp32(smollm2):
    return load_model(smollm2, "causal", "cpu", "float32")


def causal_settings(**kw) -> Settings:
    base = {
        "kind": "causal",
        "template": "inbedder",
        "max_new_tokens": 3,
        "layers": (-1,),
        "batch_size": 32,
        "device": "cpu",
        "dtype": "float32",
        **AUTHORS,
    }
    return Settings(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# batching


def test_plan_batches_cover_every_prompt_longest_first():
    lengths = [5, 9, 9, 3, 9, 5, 5, 7, 7, 7, 7, 7, 1]
    batches = plan_batches(lengths, 4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 4 for b in batches)
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    # a batch ends at a length change once it is half full: the 9s and the 7s are batched alone
    assert [lengths[i] for i in batches[0]] == [9, 9, 9]
    assert {lengths[i] for i in batches[1]} == {7}
    assert plan_batches([], 4) == []


# ----------------------------------------------------------------------------------------------
# causal: against transformers itself (SmolLM2-135M, fp32)


def test_causal_states_match_plain_forward_and_hf_generate(smol_fp32):
    model, tok = smol_fp32
    prompts = banking_prompts(3) + [{"text": "card?", "instruction": NEED}]
    settings = causal_settings(layers=(-1, 15), batch_size=8)
    states, eos = run_lm(model, tok, settings, prompts, progress=False)
    for i, p in enumerate(prompts):
        enc = tok(format_prompt("inbedder", p["instruction"], p["text"]), return_tensors="pt")
        with torch.inference_mode():
            plain = model(**enc, output_hidden_states=True).hidden_states
            gen = model.generate(
                **enc,
                max_new_tokens=3,
                do_sample=False,
                output_hidden_states=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
        for layer, index in ((-1, 30), (15, 15)):
            # 1st-gen is the last prompt token's state of a plain forward pass
            np.testing.assert_allclose(
                states.tensors[f"first_gen@{layer}"][i], plain[index][0, -1].numpy(), atol=1e-4
            )
            np.testing.assert_allclose(
                states.tensors[f"prompt_mean@{layer}"][i], plain[index][0, :-1].mean(0).numpy(), atol=1e-4
            )
            # generation steps 1..T-1 are the states HF generate returns for those steps
            for t in range(1, 3):
                np.testing.assert_allclose(
                    states.tensors[f"gen@{layer}"][i, t - 1],
                    gen.hidden_states[t][index][0, -1].numpy(),
                    atol=1e-4,
                )
        new = gen.sequences[0, enc.input_ids.shape[1] :].tolist()
        assert states.gen_ids[i].tolist() == new
        assert states.prompt_len[i] == enc.input_ids.shape[1]
    assert states.gen_mask.all()
    assert eos == {2}


def test_batch_size_and_padding_do_not_change_embeddings(smol_fp32):
    model, tok = smol_fp32
    prompts = banking_prompts(10, start=20)
    one, _ = run_lm(model, tok, causal_settings(batch_size=1), prompts, progress=False)
    many, _ = run_lm(model, tok, causal_settings(batch_size=32), prompts, progress=False)
    assert (
        len({len(tok(format_prompt("inbedder", NEED, p["text"])).input_ids) for p in prompts}) > 3
    )  # padded
    np.testing.assert_array_equal(one.gen_ids, many.gen_ids)
    np.testing.assert_array_equal(one.gen_mask, many.gen_mask)
    for name, array in one.tensors.items():
        np.testing.assert_allclose(many.tensors[name], array, atol=1e-4, err_msg=name)


def test_bf16_stays_within_cosine_0999_of_fp32(smollm2, smol_fp32):
    prompts = banking_prompts(12, start=40)
    fp32, _ = run_lm(*smol_fp32, causal_settings(), prompts, progress=False)
    bf16_model = load_model(smollm2, "causal", "cpu", "bfloat16")
    bf16, _ = run_lm(*bf16_model, causal_settings(dtype="bfloat16"), prompts, progress=False)
    for name in ("first_gen@-1", "prompt_mean@-1"):
        cos = cosine_rows(fp32.tensors[name], bf16.tensors[name])
        assert cos.min() >= 0.999, (name, cos.min())
    # answer states are comparable where both precisions generated the same tokens
    same = (fp32.gen_ids == bf16.gen_ids).all(1)
    assert same.sum() >= len(prompts) // 2
    cos = cosine_rows(
        fp32.tensors["gen@-1"][same].reshape(-1, 576), bf16.tensors["gen@-1"][same].reshape(-1, 576)
    )
    assert cos.min() >= 0.999, cos.min()


def test_opt_with_projected_output_and_learned_positions(tmp_path, smollm2):
    """OPT-350m's layout (a 1024 -> 512 projection after the last layer, learned positions) under left padding."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        vocab_size=49152,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=16,
        do_layer_norm_before=False,
        max_position_embeddings=256,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    OPTForCausalLM(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(tmp_path)
    model, tok = load_model(tmp_path, "causal", "cpu", "float32")
    prompts = banking_prompts(5)
    one, _ = run_lm(model, tok, causal_settings(batch_size=1, layers=(-1, 1)), prompts, progress=False)
    many, _ = run_lm(model, tok, causal_settings(batch_size=8, layers=(-1, 1)), prompts, progress=False)
    assert one.tensors["first_gen@-1"].shape == (5, 16) and one.tensors["first_gen@1"].shape == (5, 32)
    for name, array in one.tensors.items():
        np.testing.assert_allclose(many.tensors[name], array, atol=1e-4, err_msg=name)
    for i, p in enumerate(prompts):
        enc = tok(format_prompt("inbedder", p["instruction"], p["text"]), return_tensors="pt")
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=2)
            plain = model(**enc, output_hidden_states=True).hidden_states
        assert many.gen_ids[i][many.gen_mask[i]].tolist() == gen[0, enc.input_ids.shape[1] :].tolist()
        np.testing.assert_allclose(many.tensors["first_gen@-1"][i], plain[-1][0, -1].numpy(), atol=1e-4)


# ----------------------------------------------------------------------------------------------
# cache files, keys and validation (tiny llama: fast)


def test_cache_files_keys_and_reuse(tiny_llama, tmp_path, monkeypatch):
    prompts = banking_prompts(6) + banking_prompts(2)  # duplicates are encoded once
    meta = encode_with(
        tiny_llama,
        "causal",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        batch_size=4,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    assert validate_cache(tmp_path, meta["cache_key"]) is None
    assert meta["prompts"]["n"] == 6 and meta["layers"] == [-1] and meta["compute"]["dtype"] == "float32"
    assert meta["generation"]["max_new_tokens"] == 3 and meta["template"] == "inbedder"
    assert set(meta["files"]) == {"prompts.jsonl", "answers.jsonl", "hidden.safetensors"}
    cache = load_cache(tmp_path, meta["cache_key"])
    assert set(cache.tensors) == {
        "first_gen@-1",
        "prompt_mean@-1",
        "gen@-1",
        "gen_ids",
        "gen_mask",
        "prompt_len",
    }
    assert cache.tensors["gen@-1"].shape == (6, 2, 32) and cache.tensors["gen_ids"].shape == (6, 3)
    assert [r["id"] for r in cache.answers] == list(range(6))
    assert all(
        len(r["tokens"]) == int(m.sum())
        for r, m in zip(cache.answers, cache.tensors["gen_mask"], strict=True)
    )

    # the same request reuses the cache without running the model
    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although the cache was valid")

    monkeypatch.setattr(encode, "run_lm", no_model)
    again = encode_with(
        tiny_llama,
        "causal",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        batch_size=4,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    assert again["cache_key"] == meta["cache_key"]
    # Snakemake removes meta.json before a rerun: it is recovered from hidden.safetensors, not recomputed
    (tmp_path / "meta.json").unlink()
    recovered = encode_with(
        tiny_llama,
        "causal",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        batch_size=4,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    assert recovered["cache_key"] == meta["cache_key"] and validate_cache(tmp_path, meta["cache_key"]) is None


def test_cache_key_changes_with_prompts_and_settings(tiny_llama, tmp_path):
    from inbedder.cache import cache_key, key_fields, model_fingerprint

    fp = model_fingerprint(tiny_llama)
    prompts = banking_prompts(5)
    key = cache_key(key_fields(causal_settings(), fp, prompts))
    assert key == cache_key(key_fields(causal_settings(), fp, [dict(p) for p in prompts]))
    others = [
        key_fields(causal_settings(), fp, prompts[:4]),
        key_fields(causal_settings(), fp, prompts[::-1]),
        key_fields(
            causal_settings(), fp, [*prompts[:4], {"text": prompts[4]["text"], "instruction": "Why?"}]
        ),
        key_fields(causal_settings(max_new_tokens=4), fp, prompts),
        key_fields(causal_settings(layers=(-1, 1)), fp, prompts),
        key_fields(causal_settings(template="alpaca"), fp, prompts),
        key_fields(causal_settings(dtype="bfloat16"), fp, prompts),
        key_fields(causal_settings(re_encode=True), fp, prompts, "r" * 64),
        key_fields(causal_settings(), "0" * 64, prompts),
    ]
    keys = {cache_key(f) for f in others}
    assert key not in keys and len(keys) == len(others)
    # a changed prompt set is a new cache: the old one is stale for the new key and is recomputed
    meta = encode_with(
        tiny_llama,
        "causal",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    new = encode_with(
        tiny_llama,
        "causal",
        prompts[:4],
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    assert new["cache_key"] != meta["cache_key"]
    assert "stale" in validate_cache(tmp_path, meta["cache_key"])
    assert len(load_cache(tmp_path).prompts) == 4


def test_truncated_corrupt_or_stale_caches_are_detected_and_recomputed(tiny_llama, tmp_path):
    prompts = banking_prompts(4)
    kw = {"max_new_tokens": 2, "device": "cpu", "dtype": "float32", "progress": False}
    meta = encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path, **kw)
    key = meta["cache_key"]
    hidden = tmp_path / "hidden.safetensors"
    good = hidden.read_bytes()
    (tmp_path / "first.safetensors").write_bytes(good)

    hidden.write_bytes(good[:-100])  # truncated
    assert "hidden.safetensors" in validate_cache(tmp_path, key)
    with pytest.raises(CacheError):
        load_cache(tmp_path)
    assert encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path, **kw)["cache_key"] == key
    assert validate_cache(tmp_path, key) is None  # recomputed
    from safetensors.numpy import load_file

    redone = load_file(str(hidden))
    for name, array in load_file(str(tmp_path / "first.safetensors")).items():
        np.testing.assert_array_equal(redone[name], array)
    good = hidden.read_bytes()

    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # same size, one corrupt byte of a tensor
    hidden.write_bytes(bytes(flipped))
    assert "sha256 differs" in validate_cache(tmp_path, key)

    hidden.write_bytes(good)
    assert validate_cache(tmp_path, key) is None
    stale = json.loads((tmp_path / "meta.json").read_text())
    stale["layers"] = [-2]  # meta.json of other settings, key not recomputed
    (tmp_path / "meta.json").write_text(json.dumps(stale))
    assert "does not match its own fields" in validate_cache(tmp_path)
    assert validate_cache(tmp_path, "0" * 64).startswith(str(tmp_path / "meta.json") + ": stale")
    (tmp_path / "meta.json").write_text("{")
    assert "not valid JSON" in validate_cache(tmp_path, key)
    (tmp_path / "meta.json").unlink()
    (tmp_path / "prompts.jsonl").write_text("")  # recovery checks every file, then gives up: recompute
    assert encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path, **kw)["cache_key"] == key
    assert validate_cache(tmp_path, key) is None


def test_states_are_written_in_chunks_in_prompt_order_and_read_back_mapped(tiny_llama, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    prompts = banking_prompts(9, start=60)
    kw = {"max_new_tokens": 3, "batch_size": 4, "layers": (-1, 1), "device": "cpu", "dtype": "float32",
          "progress": False}
    written: list[tuple[str, int]] = []  # (array, rows) of every write to a RowStore file
    real_write = RowStore._write

    def counted(self, name):
        written.append((name, sum(len(rows) for rows, _ in self._pending[name])))
        real_write(self, name)

    monkeypatch.setattr(RowStore, "_write", counted)
    whole = encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path / "whole", chunk_rows=10**6, **kw)
    assert [rows for name, rows in written if name == "first_gen@-1" and rows] == [9]  # one chunk, at the end
    written.clear()
    tiny = encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path / "tiny", chunk_rows=1, **kw)
    # with chunks of one row every batch is written as it finishes (longest prompts first)
    model, tok = load_model(tiny_llama, "causal", "cpu", "float32")
    lengths = [len(tok(format_prompt("inbedder", NEED, p["text"])).input_ids) for p in prompts]
    assert [rows for name, rows in written if name == "gen@1" and rows] == [len(b) for b in plan_batches(lengths, 4)]
    assert whole["cache_key"] == tiny["cache_key"]
    a = load_file(str(tmp_path / "whole" / "hidden.safetensors"))
    b = load_file(str(tmp_path / "tiny" / "hidden.safetensors"))
    assert set(a) == set(b) == {"first_gen@-1", "prompt_mean@-1", "gen@-1", "first_gen@1", "prompt_mean@1", "gen@1",
                                "gen_ids", "gen_mask", "prompt_len"}
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # rows are in prompt order although the batches ran longest first
    assert lengths != sorted(lengths, reverse=True)
    memory, _ = run_lm(model, tok, causal_settings(batch_size=4, layers=(-1, 1)), prompts, progress=False)
    for name, array in memory.tensors.items():
        np.testing.assert_array_equal(b[name], array, err_msg=name)
    np.testing.assert_array_equal(b["gen_ids"], memory.gen_ids)
    # the temporary files are gone; a loaded cache maps its arrays read-only instead of reading them
    assert not list((tmp_path / "tiny").glob(".hidden.*"))
    cache = load_cache(tmp_path / "tiny")
    assert all(isinstance(v, np.memmap) and not v.flags.writeable for v in cache.tensors.values())
    np.testing.assert_array_equal(pooling.embed(cache, "avg-gen", 1),
                                  pooling.embed(load_cache(tmp_path / "whole"), "avg-gen", 1))


def test_sentence_encoder_embeds_in_chunks(minilm, minilm_model, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "SENTENCE_CHUNK", 3)
    prompts = banking_prompts(7)
    encode_with(minilm, "sentence-encoder", prompts, "inbedder", tmp_path, device="cpu", dtype="float32",
                   progress=False, chunk_rows=2)
    cache = load_cache(tmp_path)
    np.testing.assert_allclose(pooling.embed(cache, "plain"), minilm_model.encode([p["text"] for p in prompts]),
                               atol=1e-5)


def test_eos_ends_the_answer_and_masks_later_steps(tiny_llama):
    model, tok = load_model(tiny_llama, "causal", "cpu", "float32")
    ids = [tok(format_prompt("inbedder", p["instruction"], p["text"])).input_ids for p in banking_prompts(3)]
    free = run_causal(model, ids, max_new_tokens=3, layers=(-1,), batch_size=4, eos=set(), pad_id=2)
    stop = int(free.gen_ids[0, 0])  # make the first answer token of prompt 0 an end token
    ended = run_causal(model, ids, max_new_tokens=3, layers=(-1,), batch_size=4, eos={stop}, pad_id=2)
    # the step that predicts EOS is valid, later steps are not (and ran for no prompt that had ended)
    assert ended.gen_mask[0].tolist() == [True, False, False] and ended.gen_ids[0].tolist() == [stop, -1, -1]
    np.testing.assert_allclose(ended.tensors["first_gen@-1"], free.tensors["first_gen@-1"], atol=1e-5)
    rows = encode.answer_rows(tok, [{"text": "x", "instruction": NEED}], ended, {stop}, [])
    assert (
        rows[0]["token_ids"] == [stop]
        and rows[0]["answer"] == ""
        and rows[0]["tokens"] == [tok.decode([stop])]
    )
    # the state at the EOS token itself is kept: the authors' stand-in when no later step counts
    assert ended.tensors["gen@-1"].shape[1] == 2 and np.abs(ended.tensors["gen@-1"][0, 0]).sum() > 0

    def cache_like(special_steps):
        meta = {"first_gen_in_prompt": True, "layer_index": {"-1": 2}, "num_layers": 2, "kind": "causal",
                "special_ids": [stop], "method": {"special_steps": special_steps}}
        tensors = {**ended.tensors, "gen_mask": ended.gen_mask, "gen_ids": ended.gen_ids,
                   "prompt_len": ended.prompt_len}
        return Cache(None, meta, [{"text": "x", "instruction": NEED}] * 3, None, tensors)

    first, at_eos = ended.tensors["first_gen@-1"][0], ended.tensors["gen@-1"][0, 0]
    np.testing.assert_allclose(pooling.embed(cache_like("keep_eos"), "avg-gen")[0], first)
    np.testing.assert_allclose(pooling.embed(cache_like("authors"), "avg-gen")[0], (first + at_eos) / 2, rtol=1e-6)
    np.testing.assert_allclose(pooling.embed(cache_like("authors"), "last-gen")[0], at_eos)


# ----------------------------------------------------------------------------------------------
# masked and seq2seq (tiny models)


def test_masked_lm_one_pass_with_masks(tiny_roberta, tmp_path):
    from inbedder.tokens import masked_prompt_ids

    prompts = banking_prompts(5)
    meta = encode_with(
        tiny_roberta,
        "masked",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        batch_size=2,
        layers=(-1, 1),
        device="cpu",
        dtype="float32",
        progress=False,
    )
    cache = load_cache(tmp_path)
    assert meta["first_gen_in_prompt"] is False and cache.tensors["gen_mask"].all()
    model, tok = load_model(tiny_roberta, "masked", "cpu", "float32")
    for i, p in enumerate(prompts):
        prompt = tok(
            format_prompt("inbedder", p["instruction"], p["text"]), add_special_tokens=False
        ).input_ids
        ids = torch.tensor([masked_prompt_ids(tok, prompt, 3)])
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True)
        at = slice(1 + len(prompt), 1 + len(prompt) + 3)
        assert cache.tensors["gen_ids"][i].tolist() == out.logits[0, at].argmax(-1).tolist()
        for layer, index in ((-1, 2), (1, 1)):
            h = out.hidden_states[index][0]
            np.testing.assert_allclose(
                pooling.embed(cache, "avg-gen", layer)[i], h[at].mean(0).numpy(), atol=1e-5
            )
            np.testing.assert_allclose(
                pooling.embed(cache, "1st-gen", layer)[i], h[at.start].numpy(), atol=1e-5
            )
            # the authors' prompt modes (method.masked_prompt_modes): <s> and the prompt; every position
            np.testing.assert_allclose(
                pooling.embed(cache, "avg-ppt", layer)[i], h[: 1 + len(prompt)].mean(0).numpy(), atol=1e-5
            )
            np.testing.assert_allclose(pooling.embed(cache, "avg-all", layer)[i], h.mean(0).numpy(), atol=1e-5)
        assert (
            cache.answers[i]["answer"]
            == tok.decode(cache.tensors["gen_ids"][i], skip_special_tokens=True).strip()
        )
    single, _ = run_lm(
        model, tok, Settings("masked", "inbedder", 3, (-1,), 1, "cpu", "float32", **AUTHORS), prompts, False
    )
    np.testing.assert_allclose(single.tensors["gen@-1"], cache.tensors["gen@-1"], atol=1e-4)
    # text_only: the prompt text alone; avg-all its tokens and the masks
    text_only, _ = run_lm(model, tok, Settings("masked", "inbedder", 3, (-1,), 1, "cpu", "float32",
                                               **{**AUTHORS, "masked_prompt_modes": "text_only"}),
                            prompts[:1], False)
    prompt = tok(format_prompt("inbedder", prompts[0]["instruction"], prompts[0]["text"]),
                 add_special_tokens=False).input_ids
    with torch.inference_mode():
        h = model(input_ids=torch.tensor([masked_prompt_ids(tok, prompt, 3)]),
                  output_hidden_states=True).hidden_states[-1][0]
    np.testing.assert_allclose(text_only.tensors["prompt_mean@-1"][0], h[1 : 1 + len(prompt)].mean(0), atol=1e-5)
    assert "all_mean@-1" not in text_only.tensors and text_only.prompt_len[0] == len(prompt)


def test_seq2seq_encoder_for_prompt_decoder_for_answer(tiny_t5, tmp_path):
    prompts = banking_prompts(4)
    encode_with(
        tiny_t5,
        "seq2seq",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        batch_size=4,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    cache = load_cache(tmp_path)
    model, tok = load_model(tiny_t5, "seq2seq", "cpu", "float32")
    for i, p in enumerate(prompts):
        enc = tok(format_prompt("inbedder", p["instruction"], p["text"]), return_tensors="pt")
        with torch.inference_mode():
            gen = model.generate(
                input_ids=enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=3, do_sample=False
            )
            steps = cache.tensors["gen_ids"][i][cache.tensors["gen_mask"][i]].tolist()
            dec = torch.tensor([[0, *steps[:-1]]])
            out = model(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                decoder_input_ids=dec,
                output_hidden_states=True,
            )
        assert gen[0, 1:].tolist()[: len(steps)] == steps
        np.testing.assert_allclose(
            cache.tensors["prompt_mean@-1"][i], out.encoder_last_hidden_state[0].mean(0).numpy(), atol=1e-5
        )
        np.testing.assert_allclose(
            cache.tensors["first_gen@-1"][i], out.decoder_hidden_states[-1][0, 0].numpy(), atol=1e-5
        )
        for t in range(1, len(steps)):
            np.testing.assert_allclose(
                cache.tensors["gen@-1"][i, t - 1], out.decoder_hidden_states[-1][0, t].numpy(), atol=1e-5
            )


# ----------------------------------------------------------------------------------------------
# sentence encoders, re-encode, the task entry point (real all-MiniLM-L6-v2)


@pytest.fixture(scope="module")
def minilm_model(minilm):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm), device="cpu")


def test_sentence_encoder_plain_and_prefixed(minilm, minilm_model, tmp_path):
    prompts = banking_prompts(4) + banking_prompts(4, instruction="How does the customer feel?")
    meta = encode_with(
        minilm,
        "sentence-encoder",
        prompts,
        "inbedder",
        tmp_path,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    assert meta["layers"] is None and "answers.jsonl" not in meta["files"]
    cache = load_cache(tmp_path)
    assert pooling.available_modes(cache) == ["plain", "prefixed"]
    texts = [p["text"] for p in prompts]
    np.testing.assert_allclose(pooling.embed(cache, "plain"), minilm_model.encode(texts), atol=1e-5)
    prefixed = [f"{p['instruction']}: {p['text']}" for p in prompts]
    np.testing.assert_allclose(pooling.embed(cache, "prefixed"), minilm_model.encode(prefixed), atol=1e-5)
    # plain ignores the instruction, prefixed follows it
    np.testing.assert_allclose(
        pooling.embed(cache, "plain")[:4], pooling.embed(cache, "plain")[4:], atol=1e-6
    )
    assert (
        cosine_rows(pooling.embed(cache, "prefixed")[:4], pooling.embed(cache, "prefixed")[4:]).max() < 0.999
    )


def test_re_encode_embeds_the_answers(tiny_llama, minilm, minilm_model, tmp_path):
    prompts = banking_prompts(5)
    encode_with(
        tiny_llama,
        "causal",
        prompts,
        "inbedder",
        tmp_path,
        max_new_tokens=3,
        device="cpu",
        dtype="float32",
        re_encoder_dir=minilm,
        progress=False,
    )
    cache = load_cache(tmp_path)
    answers = [a["answer"] for a in cache.answers]
    np.testing.assert_allclose(pooling.embed(cache, "re-encode"), minilm_model.encode(answers), atol=1e-5)
    filtered = [a["answer_filtered"] for a in cache.answers]
    np.testing.assert_allclose(
        pooling.embed(cache, "re-encode+filter"), minilm_model.encode(filtered), atol=1e-5
    )
    assert "re-encode-multi" not in pooling.available_modes(cache)  # off unless asked for
    assert (
        cache.meta["re_encoder"]["fingerprint"]
        == json.loads((minilm / "fingerprint.json").read_text())["sha256"]
    )


def test_re_encode_multi_averages_seeded_samples(tiny_llama, minilm, tmp_path):
    prompts = banking_prompts(3)
    kw = {
        "max_new_tokens": 2,
        "device": "cpu",
        "dtype": "float32",
        "re_encoder_dir": minilm,
        "re_encode_multi": True,
        "progress": False,
    }
    encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path / "a", **kw)
    encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path / "b", **kw)
    a, b = load_cache(tmp_path / "a"), load_cache(tmp_path / "b")
    multi = pooling.embed(a, "re-encode-multi")
    assert multi.shape == (3, 384) and np.isfinite(multi).all()
    np.testing.assert_allclose(multi, pooling.embed(b, "re-encode-multi"), atol=1e-6)  # seeded
    # the mean of 10 unit vectors sampled at T=0.8 is shorter than one greedy answer's unit vector
    assert (np.linalg.norm(multi, axis=1) < 1 - 1e-4).all()


def test_encode_task_uses_the_task_table_prompts(minilm, tmp_path):
    import pandas as pd

    from inbedder.encode import encode_task
    from inbedder.task_kinds import build_task_table, task_prompts
    from inbedder.tasks import prepared_path

    data = tmp_path / "data"
    rows = banking_prompts(6)
    table = pd.DataFrame(
        {
            "subset": ["intent"] * 6,
            "instruction": [NEED] * 6,
            "text": [r["text"] for r in rows],
            "label": list("aabbcc"),
        }
    )
    path = prepared_path("tiny_banking", data)
    path.parent.mkdir(parents=True)
    table.to_parquet(path)
    spec = {"kind": "clustering", "dataset": "tiny_banking", "instructions": {"intent": NEED}}
    task_table = build_task_table("TinyBanking", spec, tmp_path / "tasks" / "TinyBanking.parquet", data_dir=data,
                                  limit=4)
    job = EncodeJob(minilm, "sentence-encoder", "inbedder", max_new_tokens=0, layers=[-1], device="cpu",
                    dtype="float32", decoding="greedy")
    meta = encode_task(job, tmp_path / "tasks" / "TinyBanking.parquet", tmp_path / "cache", progress=False)
    expected = task_prompts("TinyBanking", spec, task_table)
    assert meta["prompts"]["n"] == len(expected) == 4
    assert [(p["text"], p["instruction"]) for p in load_cache(tmp_path / "cache").prompts] == [
        (p["text"], p["instruction"]) for p in expected
    ]


def test_rule_params_hold_the_settings_that_change_a_cache(root):
    from inbedder.config import load_config
    from inbedder.encode import job_from_params, re_encoder_name
    from inbedder.rule_params import encode_params as rule_params

    config = load_config(root / "config.yaml", root / "workflow" / "profiles" / "offline" / "run.yaml")
    task = "NLUPPTwoViewTriplets"
    tuned = rule_params("smollm2-135m", "inbedder", task, config)
    assert tuned["kind"] == "causal" and tuned["template"] == config["recipes"]["inbedder"]["template"]
    assert tuned["max_new_tokens"] == config["models"]["smollm2-135m"]["max_new_tokens"]
    assert tuned["layers"] == config.get("layers", [-1]) and tuned["re_encode_multi"] is False
    assert not {"task_spec", "limit"} & set(tuned)  # the rows come in as the task table (rule_params.task_table_params)
    assert rule_params("smollm2-135m", "alpaca", task, config)["template"] == "alpaca"
    # the encode job is built from the params whole: each of them is a field of EncodeJob
    job = job_from_params(tuned, "data/models/smollm2-135m", "data/models/minilm-l6")
    assert {k: getattr(job, k) for k in tuned} == tuned and job.re_encoder_dir == "data/models/minilm-l6"
    assert rule_params("smollm2-135m", "none", task, config)["template"] == "inbedder"
    encoder = rule_params("minilm-l6", "none", task, config)
    assert encoder["kind"] == "sentence-encoder" and encoder["max_new_tokens"] == 0 and encoder["layers"] == [-1]
    assert re_encoder_name("smollm2-135m", task, config) == config["re_encoder"]
    assert re_encoder_name("minilm-l6", task, config) is None
    with pytest.raises(KeyError, match="recipe 'sft'"):
        rule_params("smollm2-135m", "sft", task, config)
    # the method switches, and the instructions of the task the authors' filter drops
    assert tuned["method"]["filter"] == "authors" and tuned["method"]["truncation"] == "authors"
    assert tuned["filter_instructions"] == list(config["tasks"][task]["instructions"].values())
    assert rule_params("smollm2-135m", "none", "NLUPPInstructedPairs", config)["filter_instructions"] == []
    assert tuned["decoding"] == "greedy" and tuned["dtype"] == config["dtype"]
    paper = load_config(root / "config.yaml")
    llama = rule_params("llama-2-7b", "none", "IntentEmotion", paper)
    assert llama["decoding"] == {"temperature": 0.6, "top_p": 0.9, "seed": 42} and llama["dtype"] == "bfloat16"
    assert rule_params("opt-350m", "none", "IntentEmotion", paper)["dtype"] == "float32"


# ----------------------------------------------------------------------------------------------
# sampled decoding (config models.<m>.decoding)


def test_top_p_draws_only_from_the_nucleus():
    from inbedder.decoding import _next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    drawn = _next_tokens(logits, 1.0, torch.Generator().manual_seed(0), top_p=0.7)
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[2] == counts[3] == 0 and counts[0] > counts[1] > 1000  # 0.5 / 0.3 renormalised
    full = torch.bincount(_next_tokens(logits, 1.0, torch.Generator().manual_seed(0)), minlength=4).tolist()
    assert full[2] > 0 and full[3] > 0


def test_sampled_decoding_is_seeded_and_part_of_the_cache_key(tiny_llama, tmp_path):
    prompts = banking_prompts(6)

    def run(name, decoding):
        return encode_with(tiny_llama, "causal", prompts, "inbedder", tmp_path / name, max_new_tokens=4,
                              batch_size=4, device="cpu", dtype="float32", decoding=decoding, progress=False)

    sampled = {"temperature": 0.6, "top_p": 0.9, "seed": 1}
    a, b = run("a", sampled), run("b", sampled)
    c, greedy = run("c", {**sampled, "seed": 2}), run("greedy", "greedy")
    ids = {n: load_cache(tmp_path / n).tensors["gen_ids"].tolist() for n in ("a", "b", "c", "greedy")}
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"] and ids["a"] != ids["greedy"]
    assert a["cache_key"] == b["cache_key"] != c["cache_key"] != greedy["cache_key"]
    assert a["generation"]["decoding"] == {"temperature": 0.6, "top_p": 0.9, "seed": 1}
    assert greedy["generation"]["decoding"] == "greedy"
    with pytest.raises(ValueError, match="decoding: expected 'greedy'"):
        run("bad", {"top_p": 0.9})
