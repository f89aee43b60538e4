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


def pytest_configure(config):
    """Under pytest-xdist, one torch and BLAS thread per worker: the workers and the workflow jobs they
    start share the cores, and threads that spin waiting for a busy core made small forward passes
    here 5-10x slower (3.5 s alone, 41 s beside a smoke run)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)


# one smoke run for the session

# Modules that run the workflow: first the one built around the shared smoke run (its resume test waits
# for it), then the download run, which runs beside the smoke run and compares with it at its end.
WORKFLOW_MODULES = ("test_workflow.py", "test_download.py")


def pytest_collection_modifyitems(config, items):
    """Longest first. Under pytest-xdist (pyproject addopts: `--dist loadfile --no-loadscope-reorder`) a
    worker takes a module whole and the next one in this order when it is done, so the workflow modules
    go first, on separate workers, then the others, most tests first (the order xdist's own reordering
    would give), so that short modules fill the end."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.path.name] = counts.get(item.path.name, 0) + 1

    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in WORKFLOW_MODULES:
            return (WORKFLOW_MODULES.index(name), 0)
        return (len(WORKFLOW_MODULES), -counts[name])

    items.sort(key=rank)  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, mirror) -> SmokeRun:
    """The smoke profile end to end, once per test run (~2 min idle, 15-25 min on a busy machine: a
    test that asks for it first needs a time limit that covers it). Under pytest-xdist the workers share
    it: the first to ask builds it under a file lock in the run's common temporary folder, the others
    wait for it and reuse it."""
    from filelock import FileLock

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker else base  # pytest-<n>/, the parent of every worker's popen-gw<i>/
    workspace, log = shared / "smoke-run", shared / "smoke-run.log"
    env = clean_env(INBEDDER_DATA_MIRROR=str(mirror))
    with FileLock(str(shared / "smoke-run.lock")):
        if not log.exists():
            workspace.mkdir()
            result = make(fresh_clone(workspace), "smoke", "SMOKE_RUN=smoke", env=env)
            log.write_text(f"rc {result.returncode}\n" + result.stdout + result.stderr)
    text = log.read_text()
    if not text.startswith("rc 0\n"):
        pytest.fail(f"`make smoke` failed in {workspace}:\n{text[-4000:]}")
    return SmokeRun(workspace, "smoke", clone_env(workspace, env), text.split("\n", 1)[1])


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
