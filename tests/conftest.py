"""Shared fixtures: the repository root, the data mirror, the packaged models, tiny random models and
one finished smoke run that the end-to-end tests share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from workspace import SmokeRun, clean_env, clone_env, fresh_clone, make

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


# one smoke run for the session

SMOKE_GROUP = "smoke_run"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marker
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n`, `--dist loadgroup`): the tests that use the shared smoke run go to one
    worker, which builds it once, and start first; they are the longest chain of the suite, and the other
    workers take the rest meanwhile. Without xdist the marker does nothing and only the order changes."""
    smoke = [item for item in items if SMOKE_GROUP in getattr(item, "fixturenames", ())]
    for item in smoke:
        item.add_marker(pytest.mark.xdist_group(SMOKE_GROUP))
    smoke_ids = {id(item) for item in smoke}
    items[:] = smoke + [item for item in items if id(item) not in smoke_ids]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, mirror) -> SmokeRun:
    """The smoke profile end to end, once per session (~4 min idle, 15-25 min on a busy machine: a test
    that asks for it first needs a time limit that covers it)."""
    workspace = fresh_clone(tmp_path_factory.mktemp("smoke-run"))
    env = clean_env(INBEDDER_DATA_MIRROR=str(mirror))
    result = make(workspace, "smoke", "SMOKE_RUN=smoke", env=env)
    if result.returncode != 0:
        pytest.fail(f"`make smoke` failed in {workspace}:\n{(result.stdout + result.stderr)[-4000:]}")
    return SmokeRun(workspace, "smoke", clone_env(workspace, env), result.stdout + result.stderr)


# models


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return packaged_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm() -> Path:
    return packaged_model("minilm-l6")


# tiny models: random weights (no real small masked or seq2seq model ships offline), real tokenizers


def save_tiny_model(tmp_path_factory, name: str, model_class, config, tokenizer_dir: Path) -> Path:
    """A randomly initialised model (seed 0) of `config` saved with a real tokenizer; its folder."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(name)
    model_class(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2, tie_word_embeddings=True)
    return save_tiny_model(tmp_path_factory, "tiny-llama", LlamaForCausalLM, cfg, smollm2)


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory, minilm):
    from transformers import RobertaConfig, RobertaForMaskedLM

    cfg = RobertaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, pad_token_id=0, max_position_embeddings=600, type_vocab_size=1)
    return save_tiny_model(tmp_path_factory, "tiny-roberta", RobertaForMaskedLM, cfg, minilm)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, minilm):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=0, eos_token_id=102, decoder_start_token_id=0)
    return save_tiny_model(tmp_path_factory, "tiny-t5", T5ForConditionalGeneration, cfg, minilm)
