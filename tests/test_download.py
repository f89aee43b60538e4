"""The download path of the data stage against a local HTTP server standing in for the real hosts.

The server (a thread of this process) serves the mirror's files under the URL paths of sources.yaml
(`/<host>/<path>`); `INBEDDER_SOURCE_URL_REWRITE=https://=http://127.0.0.1:<port>/` points the same
code that talks to GitHub and figshare at it. Faults are injected per request: 404, 5xx, a body cut
short, a stall, a kill -9 in the middle of a download.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from workspace import SMOKE_CONFIGS, SmokeRun, clean_env, fresh_clone, make, snakemake

from inbedder import sources
from inbedder.files import sha256_file
from inbedder.source_registry import load_sources
from inbedder.sources import ChecksumError, DownloadError, DownloadPolicy, fetch

pytestmark = pytest.mark.enable_socket

REGISTRY = load_sources()
FILE_SOURCES = [n for n in REGISTRY.names() if REGISTRY[n].files]
FAST = DownloadPolicy(tries=3, backoff=0.05, timeout=2.0)
STSB_TEST = "raw.githubusercontent.com/zhangzhenhu/Semantic-Texual-Similarity-Toolkits/" \
    "c55a72f51bd15a8bd75114247c06984b432050f9/data/stsbenchmark/sts-test.csv"
STSB_TEST_SHA = "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a"


class Hosts(http.server.ThreadingHTTPServer):
    """Serves `routes` (URL path -> file); `faults[path]` is a list of behaviours, one per request."""

    daemon_threads = True

    def __init__(self, routes: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.faults: dict[str, list[str]] = {}
        self.hits: dict[str, int] = {}
        self.release = threading.Event()  # ends every stall
        self.lock = threading.Lock()

    @property
    def rewrite(self) -> str:
        return f"https://=http://127.0.0.1:{self.server_address[1]}/"

    def next_fault(self, path: str) -> str:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            pending = self.faults.get(path)
            return pending.pop(0) if pending else "ok"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Hosts

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        path = self.path.lstrip("/")
        fault = self.server.next_fault(path)
        file = self.server.routes.get(path)
        if file is None or fault == "404":
            self.send_error(404, "Not Found")
            return
        if fault in ("500", "503"):
            self.send_error(int(fault))
            return
        body = file.read_bytes()
        if fault == "changed":  # the same length, other bytes: what a moved pin would serve
            body = bytes([body[0] ^ 1]) + body[1:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "short":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "stall":  # half the body, then nothing until released
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.server.release.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)


def routes_for(mirror: Path) -> dict[str, Path]:
    """URL path (host + path of the declared URL) -> the mirror's copy of that file."""
    routes = {}
    for name in FILE_SOURCES:
        src = REGISTRY[name]
        for f in src.files:
            url = urlsplit(f.url)
            routes[url.netloc + url.path] = mirror / src.mirror / f.name
    return routes


@pytest.fixture()
def hosts(mirror, monkeypatch):
    server = Hosts(routes_for(mirror))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(sources.REWRITE_VARIABLE, server.rewrite)
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


def leftovers(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []


@pytest.mark.parametrize("name", FILE_SOURCES)
def test_every_file_source_downloads_and_checks(name, hosts, tmp_path):
    dest = tmp_path / name
    manifest = fetch(name, dest, mirror=None, offline="hub", policy=FAST)
    assert manifest["origin"] == "url"
    for f, record in zip(REGISTRY[name].files, manifest["files"]):
        assert record["origin"].startswith("http://127.0.0.1:")
        assert sha256_file(dest / f.name) == record["sha256"] in (f.sha256, f.mirror_sha256)
    assert not list(dest.rglob(".*.tmp"))


def test_url_rewrite_applies_the_first_matching_prefix():
    env = {sources.REWRITE_VARIABLE: "https://example.org/=http://a/ https://=http://b/"}
    assert sources.rewrite_url("https://example.org/x", env) == "http://a/x"
    assert sources.rewrite_url("https://raw.githubusercontent.com/y", env) == "http://b/raw.githubusercontent.com/y"
    assert sources.rewrite_url("ftp://z", env) == "ftp://z"
    with pytest.raises(sources.SourceError, match="INBEDDER_SOURCE_URL_REWRITE: 'nonsense' is not FROM=TO"):
        sources.rewrite_url("https://x", {sources.REWRITE_VARIABLE: "nonsense"})


def test_404_fails_at_once_naming_url_and_status_and_leaves_nothing(hosts, tmp_path):
    hosts.faults[STSB_TEST] = ["404"]
    dest = tmp_path / "stsb"
    with pytest.raises(DownloadError) as err:
        fetch("stsb", dest, mirror=None, offline="hub", policy=FAST)
    url = f"http://127.0.0.1:{hosts.server_address[1]}/{STSB_TEST}"
    assert str(err.value) == (
        f"source 'stsb': {url} answered HTTP 404 Not Found (1 try; a client error is not retried)"
    )
    assert hosts.hits[STSB_TEST] == 1
    # The files before it in the declaration were complete and checked (kept for the rerun); no
    # temporary file, no sts-test.csv, no manifest.
    assert sorted(p.name for p in leftovers(dest)) == ["sts-dev.csv", "sts-train.csv"]


def test_500_twice_then_200_succeeds(hosts, tmp_path):
    hosts.faults[STSB_TEST] = ["500", "500"]
    manifest = fetch("stsb", tmp_path / "stsb", mirror=None, offline="hub", policy=FAST)
    assert hosts.hits[STSB_TEST] == 3
    assert sha256_file(tmp_path / "stsb" / "sts-test.csv") == STSB_TEST_SHA
    assert manifest["files"][2]["sha256"] == STSB_TEST_SHA


def test_5xx_every_time_gives_up_naming_url_status_and_tries(hosts, tmp_path):
    hosts.faults[STSB_TEST] = ["503"] * 3
    dest = tmp_path / "stsb"
    with pytest.raises(DownloadError) as err:
        fetch("stsb", dest, mirror=None, offline="hub", policy=FAST)
    url = f"http://127.0.0.1:{hosts.server_address[1]}/{STSB_TEST}"
    assert str(err.value) == (
        f"source 'stsb': download of {url} failed: HTTP 503 Service Unavailable (gave up after 3 tries)"
    )
    assert not (dest / "sts-test.csv").exists() and not list(dest.rglob(".*.tmp"))


def test_a_body_cut_short_is_a_checksum_error_then_succeeds_when_the_server_heals(hosts, mirror, tmp_path):
    body = (mirror / "stsb" / "sts-test.csv").read_bytes()
    half = hashlib.sha256(body[: len(body) // 2]).hexdigest()
    hosts.faults[STSB_TEST] = ["short"] * 3
    dest = tmp_path / "stsb"
    with pytest.raises(ChecksumError) as err:
        fetch("stsb", dest, mirror=None, offline="hub", policy=FAST)
    url = f"http://127.0.0.1:{hosts.server_address[1]}/{STSB_TEST}"
    assert str(err.value) == (
        f"source 'stsb': checksum mismatch for sts-test.csv downloaded from {url}: expected sha256 "
        f"{STSB_TEST_SHA}, got {half} ({len(body) // 2} of {len(body)} bytes: the body was cut short; "
        f"gave up after 3 tries)"
    )
    assert not (dest / "sts-test.csv").exists() and not (dest / "manifest.json").exists()
    assert not list(dest.rglob(".*.tmp"))
    # Healed: one more short body, then the whole file; the rerun keeps the two checked files.
    hosts.faults[STSB_TEST] = ["short"]
    hits = dict(hosts.hits)
    fetch("stsb", dest, mirror=None, offline="hub", policy=FAST)
    assert sha256_file(dest / "sts-test.csv") == STSB_TEST_SHA
    assert hosts.hits[STSB_TEST] == hits[STSB_TEST] + 2
    assert all(hosts.hits[p] == hits[p] for p in hits if p != STSB_TEST)


def test_a_complete_body_with_another_checksum_is_not_retried(hosts, mirror, tmp_path):
    body = (mirror / "stsb" / "sts-test.csv").read_bytes()
    changed = hashlib.sha256(bytes([body[0] ^ 1]) + body[1:]).hexdigest()
    hosts.faults[STSB_TEST] = ["changed"]
    dest = tmp_path / "stsb"
    with pytest.raises(ChecksumError) as err:
        fetch("stsb", dest, mirror=None, offline="hub", policy=FAST)
    url = f"http://127.0.0.1:{hosts.server_address[1]}/{STSB_TEST}"
    assert str(err.value) == (
        f"source 'stsb': checksum mismatch for sts-test.csv downloaded from {url}: expected sha256 "
        f"{STSB_TEST_SHA}, got {changed} ({len(body)} bytes as announced; not retried)"
    )
    assert hosts.hits[STSB_TEST] == 1
    assert not (dest / "sts-test.csv").exists() and not list(dest.rglob(".*.tmp"))


def test_a_stalled_server_times_out_with_a_clear_error(hosts, tmp_path):
    hosts.faults[STSB_TEST] = ["stall"] * 2
    dest = tmp_path / "stsb"
    policy = DownloadPolicy(tries=2, backoff=0.05, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch("stsb", dest, mirror=None, offline="hub", policy=policy)
    assert time.monotonic() - started < 20
    url = f"http://127.0.0.1:{hosts.server_address[1]}/{STSB_TEST}"
    assert str(err.value) == (
        f"source 'stsb': download of {url} failed: timed out (no data for 1 s) (gave up after 2 tries)"
    )
    assert not (dest / "sts-test.csv").exists() and not list(dest.rglob(".*.tmp"))


def test_kill_9_mid_download_then_rerun_never_takes_a_partial_file(hosts, tmp_path):
    hosts.faults[STSB_TEST] = ["stall"]
    dest = tmp_path / "stsb"
    code = (
        "import sys; from inbedder.sources import fetch; "
        "fetch('stsb', sys.argv[1], mirror=None, offline='hub')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in dest.glob(".sts-test.csv.*.tmp") if p.stat().st_size > 0]:
            assert proc.poll() is None, "the fetch ended before the kill point"
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # What the kill left: the temporary file, never under the file's own name, and no manifest.
    assert [p.name for p in dest.glob(".sts-test.csv.*.tmp")]
    assert not (dest / "sts-test.csv").exists() and not (dest / "manifest.json").exists()
    hosts.release.set()
    manifest = fetch("stsb", dest, mirror=None, offline="hub", policy=FAST)
    assert sha256_file(dest / "sts-test.csv") == STSB_TEST_SHA
    assert [r["sha256"] for r in manifest["files"]] == [f.sha256 for f in REGISTRY["stsb"].files]
    assert not list(dest.rglob(".*.tmp"))


# --- the workflow, in a fresh folder with no mirror -------------------------------------------------

# The smoke DAG's data, downloaded: the task table of every smoke task (from the nlupp and stsb data)
# and the training tables of the fine-tuned recipe (from the c3 data). Every score is computed from a
# task table and a model only (encode: rule inputs model, table; evaluate: cache, table), so equal task
# tables give equal scores; the session's smoke run (from the mirror) is the reference, and its own
# tests cover the encoding and scoring of those tables.
SMOKE_TASKS = ("NLUPPTwoViewTriplets", "NLUPPTwoViewClustering", "NLUPPInstructedPairs", "STSBenchmark")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # this run, then the shared smoke run when it is not finished yet
def test_smoke_profile_downloads_when_no_mirror_is_found_and_its_tables_equal_the_mirror_run(
    hosts, mirror, request, tmp_path_factory
):
    base = tmp_path_factory.mktemp("anywhere")  # base/../shared/data does not exist
    env = clean_env()
    downloaded = fresh_clone(base / "clone-online")
    online = {**env, sources.REWRITE_VARIABLE: hosts.rewrite}
    run = "smoke-download"
    results = downloaded / "results" / run
    result = snakemake(
        downloaded, *[f"results/{run}/tasks/{task}.parquet" for task in SMOKE_TASKS],
        f"results/{run}/train/inbedder.jsonl", f"results/{run}/train/inbedder.heldout.jsonl",
        "--profile", "workflow/profiles/smoke", "--configfile", *SMOKE_CONFIGS, "--config", f"run={run}",
        env=online,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    result = make(downloaded, "data", env=online)  # the other three offline sources
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # Asked for only now: under pytest-xdist another worker builds it while this run downloads.
    smoke_run: SmokeRun = request.getfixturevalue("smoke_run")
    mirrored = smoke_run.workspace  # `make smoke` with INBEDDER_DATA_MIRROR set

    for name in ("c3", "nlupp", "stsb"):
        log = (downloaded / "data" / "logs" / "data" / "fetch_source" / f"{name}.log").read_text()
        assert "origin the declared URLs (download): data_mirror: auto, INBEDDER_DATA_MIRROR not set" in log
        assert f"{base / 'shared' / 'data'} does not exist" in log
        log = (mirrored / "data" / "logs" / "data" / "fetch_source" / f"{name}.log").read_text()
        assert f"origin mirror {mirror}: data_mirror: auto and INBEDDER_DATA_MIRROR={mirror}" in log
    assert set(hosts.hits) == set(routes_for(mirror)) and all(n == 1 for n in hosts.hits.values())
    for name in FILE_SOURCES:
        manifest = json.loads((downloaded / "data" / "raw" / name / "manifest.json").read_text())
        assert manifest["origin"] == "url", name
        for f, record in zip(REGISTRY[name].files, manifest["files"]):
            assert sha256_file(downloaded / "data" / "raw" / name / f.name) == record["sha256"]
    for task in SMOKE_TASKS:
        table, reference = (pd.read_parquet(r / "tasks" / f"{task}.parquet") for r in (results, smoke_run.results))
        assert len(table) > 0 and table.attrs == reference.attrs, task
        pd.testing.assert_frame_equal(table, reference, check_exact=True)
    # the scores of the mirror run came from those tables
    scored = set(pd.read_csv(smoke_run.results / "scores.csv")["task"])
    assert scored == set(SMOKE_TASKS)
    # What the fine-tuning of the smoke run reads, from the downloaded c3, is what it read from the mirror.
    for table in ("inbedder.jsonl", "inbedder.heldout.jsonl"):
        assert (results / "train" / table).read_bytes() == (smoke_run.results / "train" / table).read_bytes()
