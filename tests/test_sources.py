"""Sources: declarations, fetching from the mirror / a URL / the hub, checksums and the offline guard."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import datasets as hf_datasets
import pytest
import yaml

from inbedder import sources
from inbedder.datasets import DATASET_SOURCES, hub_only_datasets
from inbedder.files import sha256_file
from inbedder.source_registry import DeclarationError, Registry, load_sources
from inbedder.sources import ChecksumError, OfflineError, SourceError, fetch

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX40 = re.compile(r"^[0-9a-f]{40}$")
REGISTRY = load_sources()
FILE_SOURCES = [n for n in REGISTRY.names() if REGISTRY[n].files]
HUB_SOURCES = [n for n in REGISTRY.names() if REGISTRY[n].hub_only]


def test_every_source_is_declared_once_with_licence_and_pins():
    assert FILE_SOURCES == ["alpaca_5000", "c3", "stsb", "banking77", "nlupp", "twenty_newsgroups"]
    assert HUB_SOURCES == ["inbedder_qa", "alpaca_full", "intent_emotion", "nyt_clustering", "instruct_stsb"]
    for name in REGISTRY.names():
        src = REGISTRY[name]
        assert src.licence.strip(), name
        for f in src.files:
            assert HEX64.match(f.sha256), (name, f.name)
            if f.path:  # repository file: the raw URL of that path at the pinned commit
                assert HEX40.match(src.commit), name
                assert f.url == f"https://raw.githubusercontent.com/{src.repository}/{src.commit}/{f.path}"
    # The paper's evaluation sets are pinned to full commits (the authors' revisions).
    for name in ("intent_emotion", "nyt_clustering", "instruct_stsb"):
        assert HEX40.match(REGISTRY[name].hub["revision"]), name
    assert REGISTRY["intent_emotion"].hub["configs"] == ["emotion", "intent"]
    assert REGISTRY["nyt_clustering"].hub["configs"] == ["topic", "location"]
    # Every source a dataset needs is declared, and every declared source is used.
    used = {s for srcs in DATASET_SOURCES.values() for s in srcs}
    assert used == set(REGISTRY.names())


def test_hub_only_datasets_are_the_paper_sets():
    assert hub_only_datasets() == {
        "inbedder_qa", "inbedder_qa_heldout", "alpaca", "intent_emotion", "nyt_clustering", "instruct_stsb"
    }


def test_nlupp_fold_checksums_reproduce_the_mirror_readme_digest():
    # The mirror README gives `sha256sum fold*.json | sha256sum` (shell glob order: fold0, fold1, fold10, ...).
    folds = sorted(
        (f for f in REGISTRY["nlupp"].files if f.name.startswith("banking/")), key=lambda f: f.name
    )
    assert len(folds) == 20
    listing = "".join(f"{f.sha256}  {f.name.split('/')[1]}\n" for f in folds)
    digest = hashlib.sha256(listing.encode()).hexdigest()
    assert digest == "f76ed87df92b4608e9c2fd788aa426c16930a55be38784a6c13579d495092aca"


@pytest.mark.parametrize("name", FILE_SOURCES)
def test_fetch_from_mirror_copies_and_verifies(name, mirror, tmp_path):
    dest = tmp_path / name
    manifest = fetch(name, dest, mirror=mirror, offline=True)
    assert manifest["origin"] == "mirror"
    assert json.loads((dest / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    declared = {f.name: f.expected_in_mirror for f in REGISTRY[name].files}
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == declared
    for fname, digest in declared.items():
        assert sha256_file(dest / fname) == digest
    assert not [p for p in dest.rglob("*.tmp")]


def _partial_mirror(mirror: Path, tmp_path: Path, folder: str) -> Path:
    copy = tmp_path / "mirror"
    shutil.copytree(mirror / folder, copy / folder)
    for p in (copy / folder).rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return copy


def test_tampered_mirror_file_fails_naming_file_and_both_hashes(mirror, tmp_path):
    copy = _partial_mirror(mirror, tmp_path, "stsb")
    target = copy / "stsb" / "sts-dev.csv"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        fetch("stsb", tmp_path / "raw", mirror=copy, offline=True)
    message = str(err.value)
    assert str(target) in message
    assert "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234" in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert not (tmp_path / "raw" / "manifest.json").exists()


def test_missing_mirror_file_fails_naming_it(mirror, tmp_path):
    copy = _partial_mirror(mirror, tmp_path, "banking77")
    (copy / "banking77" / "test.csv").unlink()
    with pytest.raises(SourceError, match=r"banking77.*test\.csv is missing"):
        fetch("banking77", tmp_path / "raw", mirror=copy, offline=True)
    assert not (tmp_path / "raw" / "manifest.json").exists()


def test_offline_hub_only_source_fails_before_anything_is_attempted(
    socket_disabled, mirror, tmp_path, monkeypatch
):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub loader must not be called offline")

    monkeypatch.setattr(sources, "_from_hub", no_hub)
    monkeypatch.setattr(hf_datasets, "load_dataset", no_hub)
    for var in sources.OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    dest = tmp_path / "intent_emotion"
    with pytest.raises(OfflineError) as err:
        fetch("intent_emotion", dest, mirror=mirror, offline=True)
    message = str(err.value)
    assert "dataset 'intent_emotion' is only on the Hugging Face hub" in message
    assert "offline: false" in message
    assert not dest.exists()
    assert all(os.environ[var] == "1" for var in sources.OFFLINE_VARIABLES)


def test_offline_file_source_needs_the_mirror(socket_disabled, tmp_path):
    with pytest.raises(OfflineError, match=r"'c3'.*data_mirror is not set"):
        fetch("c3", tmp_path / "c3", mirror=None, offline=True)
    assert not (tmp_path / "c3").exists()


def _local_registry(tmp_path: Path, mirror: Path, sha: str) -> Registry:
    # A source whose URL is a local file:// URL: the download path of fetch, without a network.
    spec = {
        "sources": {
            "stsb_local": {
                "licence": "CC BY-SA 4.0",
                "files": [
                    {
                        "name": "sts-test.csv",
                        "url": (mirror / "stsb" / "sts-test.csv").as_uri(),
                        "sha256": sha,
                    }
                ],
            }
        }
    }
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_sources(path)


def test_fetch_from_url_downloads_and_verifies(mirror, tmp_path):
    good = "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a"
    manifest = fetch("stsb_local", tmp_path / "raw", registry=_local_registry(tmp_path, mirror, good))
    assert manifest["origin"] == "url"
    assert sha256_file(tmp_path / "raw" / "sts-test.csv") == good


def test_fetch_from_url_with_wrong_checksum_leaves_nothing(mirror, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        fetch("stsb_local", tmp_path / "raw", registry=_local_registry(tmp_path, mirror, wrong))
    assert "sts-test.csv" in str(err.value) and wrong in str(err.value)
    assert "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a" in str(err.value)
    assert not list((tmp_path / "raw").glob("*"))


def test_fetch_from_hub_saves_each_config_and_split(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, revision=None):
        calls.append((path, name, revision))
        rows = {"anchor": [f"{name} a"], "positive": [f"{name} p"], "negative": [f"{name} n"]}
        return hf_datasets.DatasetDict({"test": hf_datasets.Dataset.from_dict(rows)})

    monkeypatch.setattr(hf_datasets, "load_dataset", fake_load_dataset)
    manifest = fetch("intent_emotion", tmp_path / "ie", mirror=None, offline=False)
    revision = REGISTRY["intent_emotion"].hub["revision"]
    assert calls == [("BrandonZYW/IntentEmotion", c, revision) for c in ("emotion", "intent")]
    assert manifest["origin"] == "hub"
    assert [(f["name"], f["rows"]) for f in manifest["files"]] == [
        ("emotion/test.parquet", 1),
        ("intent/test.parquet", 1),
    ]
    for f in manifest["files"]:
        assert sha256_file(tmp_path / "ie" / f["name"]) == f["sha256"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"x": {"licence": "l"}}, r"sources\.x: declare exactly one of 'hub' or 'files'"),
        ({"x": {"licence": "l", "hub": {"id": "a/b"}}}, r"sources\.x\.hub: missing \['revision'\]"),
        ({"x": {"hub": {"id": "a/b", "revision": "main"}}}, r"sources\.x: 'licence' is required"),
        (
            {"x": {"licence": "l", "files": [{"name": "f", "path": "p", "sha256": "0" * 64}]}},
            r"sources\.x\.files\[0\]: a 'path' needs the source's 'repository' and 'commit'",
        ),
    ],
)
def test_malformed_declarations_name_the_source(spec, message, tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": spec}))
    with pytest.raises(DeclarationError, match=message):
        load_sources(path)


def test_unknown_source_is_named():
    with pytest.raises(KeyError, match="unknown source 'nope'"):
        REGISTRY["nope"]


# Where the data comes from: one decision (config data_mirror + offline + $INBEDDER_DATA_MIRROR)


def _workspace(tmp_path: Path, with_default: bool) -> Path:
    """A checkout folder `<tmp>/ws/clone`, with or without a mirror at its ../shared/data."""
    clone = tmp_path / "ws" / "clone"
    clone.mkdir(parents=True)
    if with_default:
        (tmp_path / "ws" / "shared" / "data").mkdir(parents=True)
    return clone


@pytest.mark.parametrize("offline", [False, "hub", True])
def test_auto_takes_the_variable_first(tmp_path, offline):
    clone = _workspace(tmp_path, with_default=True)
    named = tmp_path / "elsewhere"
    named.mkdir()
    origin = sources.resolve_origin("auto", offline, {"INBEDDER_DATA_MIRROR": str(named)}, cwd=clone)
    assert origin.mirror == named
    assert origin.describe() == f"mirror {named}: data_mirror: auto and INBEDDER_DATA_MIRROR={named}"


def test_auto_takes_shared_data_beside_the_checkout_when_it_exists(tmp_path):
    clone = _workspace(tmp_path, with_default=True)
    origin = sources.resolve_origin("auto", True, {}, cwd=clone)
    assert origin.mirror == (tmp_path / "ws" / "shared" / "data")
    assert origin.reason == "data_mirror: auto, INBEDDER_DATA_MIRROR not set, ../shared/data exists"


@pytest.mark.parametrize("offline", [False, "hub"])
def test_auto_downloads_when_no_mirror_is_found(tmp_path, offline):
    clone = _workspace(tmp_path, with_default=False)
    origin = sources.resolve_origin("auto", offline, {"INBEDDER_DATA_MIRROR": ""}, cwd=clone)
    assert origin.mirror is None
    assert origin.describe() == (
        "the declared URLs (download): data_mirror: auto, INBEDDER_DATA_MIRROR not set and "
        f"{tmp_path / 'ws' / 'shared' / 'data'} does not exist"
    )


def test_offline_true_without_a_mirror_fails_naming_the_folder_and_the_two_ways_out(tmp_path):
    clone = _workspace(tmp_path, with_default=False)
    with pytest.raises(OfflineError) as err:
        sources.resolve_origin("auto", True, {}, cwd=clone)
    assert str(err.value) == (
        f"offline: true but no data mirror was found: INBEDDER_DATA_MIRROR is not set and "
        f"{tmp_path / 'ws' / 'shared' / 'data'} does not exist. Either set INBEDDER_DATA_MIRROR=<folder> "
        f"(or data_mirror: <folder>) to a copy of the data mirror, or set offline: hub (or false) to "
        f"download the declared files (checked against their SHA-256)"
    )


def test_a_named_mirror_that_is_missing_is_an_error(tmp_path):
    clone = _workspace(tmp_path, with_default=True)
    with pytest.raises(SourceError, match=rf"data_mirror {re.escape(str(tmp_path))}/nope is not a folder"):
        sources.resolve_origin(str(tmp_path / "nope"), False, {}, cwd=clone)
    with pytest.raises(SourceError, match=r"INBEDDER_DATA_MIRROR=/no/such is not a folder"):
        sources.resolve_origin("auto", False, {"INBEDDER_DATA_MIRROR": "/no/such"}, cwd=clone)
    with pytest.raises(OfflineError, match=r"data_mirror: null downloads .* offline: true forbids"):
        sources.resolve_origin(None, True, {}, cwd=clone)
    assert sources.resolve_origin(None, "hub", {}, cwd=clone).mirror is None
    # A relative folder is taken from the working folder (the workflow's).
    assert sources.resolve_origin("../shared/data", False, {}, cwd=clone).mirror == tmp_path / "ws" / "shared" / "data"


def test_the_workflow_stops_before_any_job_when_offline_true_finds_no_mirror(root, tmp_path):
    # check_runtime runs when the Snakefile is read: the dry run fails with the same one message.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "INBEDDER_DATA_MIRROR"}
    workdir = tmp_path / "a" / "b"  # b/../shared/data does not exist
    workdir.mkdir(parents=True)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    result = subprocess.run(
        [snakemake, "-n", "-s", str(root / "Snakefile"), "-d", str(workdir), "--configfile",
         str(root / "config.yaml"), str(root / "workflow" / "profiles" / "offline" / "run.yaml"),
         "--config", "offline=True", "run=origin-check"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"offline: true but no data mirror was found: INBEDDER_DATA_MIRROR is not set and " \
        f"{tmp_path / 'a' / 'shared' / 'data'} does not exist" in out
    assert "rule fetch_source" not in out and not (workdir / "data").exists()
