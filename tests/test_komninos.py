"""The authors' re-encoder, average_word_embeddings_komninos: a sentence-transformers folder with word vectors
and mean pooling, no transformer and no config.json. A folder of that layout (the hub's, with the module and
tokenizer class paths of sentence-transformers 2.x and a pytorch_model.bin) goes through materialisation,
fingerprinting and encoding offline: the hub download is replaced by a copy of the local folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inbedder.config import load_config
from inbedder.models import materialize, read_fingerprint, resolve

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["", "the", "customer", "wants", "money", "card"]
DIM = 4


def komninos_layout(root: Path) -> Path:
    """A tiny folder laid out like sentence-transformers/average_word_embeddings_komninos on the hub."""
    import torch

    words, pooling = root / "0_WordEmbeddings", root / "1_Pooling"
    words.mkdir(parents=True)
    pooling.mkdir()
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "0_WordEmbeddings", "type": "sentence_transformers.models.WordEmbeddings"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (words / "wordembedding_config.json").write_text(json.dumps({
        "tokenizer_class": "sentence_transformers.models.tokenizer.WhitespaceTokenizer.WhitespaceTokenizer",
        "update_embeddings": False, "max_seq_length": 1000000}))
    (words / "whitespacetokenizer_config.json").write_text(json.dumps(
        {"vocab": VOCAB, "stop_words": [], "do_lower_case": False}))
    weight = torch.arange(len(VOCAB) * DIM, dtype=torch.float32).reshape(len(VOCAB), DIM)
    torch.save({"emb_layer.weight": weight}, words / "pytorch_model.bin")
    (pooling / "config.json").write_text(json.dumps({"word_embedding_dimension": DIM,
                                                     "pooling_mode_mean_tokens": True}))
    return root


def test_komninos_is_a_hub_sentence_encoder_of_the_registry():
    models = load_config(ROOT / "config.yaml")["models"]
    _, spec, source = resolve("komninos", models)
    assert spec["kind"] == "sentence-encoder" and spec["modes"] == ["plain"]
    assert (source.hub, source.revision) == ("sentence-transformers/average_word_embeddings_komninos", "main")


def test_a_komninos_layout_materialises_and_encodes_offline(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    import huggingface_hub

    from inbedder.cli import model_kind
    from inbedder.encode import encode_sentences

    snapshot = komninos_layout(tmp_path / "hub")
    calls = []

    def fake_snapshot_download(repo_id, revision, local_dir):
        calls.append((repo_id, revision))
        shutil.copytree(snapshot, local_dir)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    models = load_config(ROOT / "config.yaml")["models"]
    out = tmp_path / "models" / "komninos"
    record = materialize("komninos", models["komninos"], out)
    assert calls == [("sentence-transformers/average_word_embeddings_komninos", "main")]
    assert record["kind"] == "sentence-encoder" and list(record["files"]) == ["model.safetensors"]
    assert read_fingerprint(out)["sha256"] == record["sha256"]
    assert not (out / "config.json").exists() and model_kind(out) == "sentence-encoder"
    texts = ["customer wants money", "card", "unknown words only"]
    emb = encode_sentences(out, texts, batch_size=2, device="cpu", progress=False)
    rows = np.arange(len(VOCAB) * DIM, dtype=np.float32).reshape(len(VOCAB), DIM)
    assert emb.dtype == np.float32 and emb.shape == (3, DIM)
    np.testing.assert_allclose(emb[0], rows[[2, 3, 4]].mean(0))  # the mean of the word vectors
    np.testing.assert_allclose(emb[1], rows[5])
    # no word in the vocabulary (or an answer the filter emptied): the zero vector, whose cosine is undefined
    np.testing.assert_array_equal(emb[2], np.zeros(DIM))
    bf16 = encode_sentences(out, texts[:2], batch_size=2, device="cpu", dtype="bfloat16", progress=False)
    np.testing.assert_allclose(bf16, emb[:2], rtol=1e-2)
