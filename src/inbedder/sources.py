"""Data sources: declared once in sources.yaml (read by `inbedder.source_registry`), fetched by one code path
from three origins.

`fetch(name, dest_dir, mirror=..., offline=...)` fills `dest_dir` (normally `data/raw/<name>/`):
- a **mirror** folder: the declared files are copied and their SHA-256 checked;
- a **URL** (repository file at a commit, or a canonical archive): streamed to a temporary file,
  checked, then renamed; connection errors, time-outs, 5xx answers and short bodies are retried with
  back-off;
- the **Hugging Face hub**: `datasets.load_dataset` at the pinned revision, each config and split saved
  as `<config>/<split>.parquet`.
`manifest.json` is written last, atomically: its presence means the folder is complete.

Which origin a run uses is decided in one place, `resolve_origin` (config `data_mirror`, `offline`,
the environment): a named folder, or `auto` = `$INBEDDER_DATA_MIRROR`, else `../shared/data` when it
exists, else the declared URLs. `offline` is `false`, `hub` (never contact the Hugging Face hub; data
files come from the mirror or their URLs) or `true` (no network at all: file sources need the mirror).
`INBEDDER_SOURCE_URL_REWRITE="FROM=TO ..."` rewrites URL prefixes (an internal mirror of the hosts).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.files import atomic_path, sha256_file, write_json
from inbedder.source_registry import Registry, Source, load_sources

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
MIRROR_VARIABLE = "INBEDDER_DATA_MIRROR"
REWRITE_VARIABLE = "INBEDDER_SOURCE_URL_REWRITE"
# Where `data_mirror: auto` looks when INBEDDER_DATA_MIRROR is not set (relative to the working folder).
DEFAULT_MIRROR = Path("..") / "shared" / "data"
log = logging.getLogger("inbedder.sources")


class SourceError(RuntimeError):
    """A source cannot be fetched as declared; the message names the source and file."""


class ChecksumError(SourceError):
    """A file's SHA-256 differs from the declared one."""


class OfflineError(SourceError):
    """A source needs the network but the run is offline."""


class DownloadError(SourceError):
    """A URL could not be downloaded; the message names the URL, the last status and the tries."""


def go_offline() -> None:
    """Set the Hugging Face offline variables for this process and its children."""
    for var in OFFLINE_VARIABLES:
        os.environ[var] = "1"


def no_network(offline: bool | str) -> bool:
    """True for `offline: true` (no connection at all); `hub` only keeps the Hugging Face hub out."""
    return offline is True


@dataclass(frozen=True)
class Origin:
    """Where this run's file sources come from: a mirror folder, or None for their declared URLs."""

    mirror: Path | None
    reason: str

    def describe(self) -> str:
        """One line for a log: the origin and why."""
        where = f"mirror {self.mirror}" if self.mirror else "the declared URLs (download)"
        return f"{where}: {self.reason}"


def resolve_origin(
    data_mirror: str | os.PathLike | None,
    offline: bool | str = False,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> Origin:
    """Decide the origin of the file sources from config `data_mirror` and `offline` and the environment.

    A folder is used as it is (it must exist); `null` downloads; `auto` takes $INBEDDER_DATA_MIRROR,
    else ../shared/data when it exists, else downloads. With `offline: true` a download is an error,
    raised here, before any job runs.
    """
    env = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    if data_mirror is not None and str(data_mirror) != "auto":
        folder = (base / Path(data_mirror)).resolve()
        if not folder.is_dir():
            raise SourceError(
                f"data_mirror {folder} is not a folder: point data_mirror at a copy of the data mirror, "
                f"or set data_mirror: auto to use ${MIRROR_VARIABLE} or {DEFAULT_MIRROR} when found "
                f"and download the declared files otherwise"
            )
        return Origin(folder, f"data_mirror is set to {data_mirror}")
    if data_mirror is None:
        if no_network(offline):
            raise OfflineError(
                "data_mirror: null downloads the declared files, but offline: true forbids the network: "
                "set data_mirror to a copy of the data mirror (or auto), or set offline: hub or false"
            )
        return Origin(None, "data_mirror is null")
    named = env.get(MIRROR_VARIABLE, "").strip()
    if named:
        folder = (base / Path(named)).resolve()
        if not folder.is_dir():
            raise SourceError(
                f"{MIRROR_VARIABLE}={named} is not a folder ({folder}; data_mirror: auto): point it at a "
                f"copy of the data mirror, or unset it to use {DEFAULT_MIRROR} when found and download "
                f"the declared files otherwise"
            )
        return Origin(folder, f"data_mirror: auto and {MIRROR_VARIABLE}={named}")
    default = (base / DEFAULT_MIRROR).resolve()
    if default.is_dir():
        return Origin(default, f"data_mirror: auto, {MIRROR_VARIABLE} not set, {DEFAULT_MIRROR} exists")
    if no_network(offline):
        raise OfflineError(
            f"offline: true but no data mirror was found: {MIRROR_VARIABLE} is not set and {default} "
            f"does not exist. Either set {MIRROR_VARIABLE}=<folder> (or data_mirror: <folder>) to a copy "
            f"of the data mirror, or set offline: hub (or false) to download the declared files "
            f"(checked against their SHA-256)"
        )
    return Origin(
        None, f"data_mirror: auto, {MIRROR_VARIABLE} not set and {default} does not exist"
    )


def rewrite_url(url: str, environ: Mapping[str, str] | None = None) -> str:
    """Apply $INBEDDER_SOURCE_URL_REWRITE ("FROM=TO", several separated by spaces; first match wins)."""
    rules = (os.environ if environ is None else environ).get(REWRITE_VARIABLE, "")
    for rule in rules.split():
        prefix, sep, replacement = rule.partition("=")
        if not sep or not prefix:
            raise SourceError(f"{REWRITE_VARIABLE}: {rule!r} is not FROM=TO (e.g. https://=http://127.0.0.1:8000/)")
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


def _check_sha(path: Path, expected: str, source: str, label: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"source {source!r}: checksum mismatch for {label}: expected sha256 {expected}, got {actual}"
        )
    return actual


def _from_mirror(source: Source, mirror: Path, dest: Path) -> list[dict[str, Any]]:
    folder = mirror / source.mirror
    records = []
    for f in source.files:
        src = folder / f.name
        if not src.is_file():
            raise SourceError(
                f"source {source.name!r}: mirror file {src} is missing (expected sha256 {f.expected_in_mirror}; "
                f"data_mirror={mirror})"
            )
        _check_sha(src, f.expected_in_mirror, source.name, str(src))
        with atomic_path(dest / f.name) as tmp:
            shutil.copyfile(src, tmp)
        records.append(
            {"name": f.name, "sha256": f.expected_in_mirror, "bytes": src.stat().st_size, "origin": str(src)}
        )
    return records


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard a download tries: attempts, back-off before the 2nd (doubled after each), time-out."""

    tries: int = 5
    backoff: float = 2.0
    timeout: float = 60.0  # seconds without a byte, connecting or reading


class _Retryable(Exception):
    """A failed attempt worth repeating (connection error, time-out, 5xx, short or corrupt body)."""

    def __init__(self, what: str, actual: str | None = None, detail: str = "") -> None:
        super().__init__(what)
        self.actual = actual  # the checksum of a corrupt body
        self.detail = detail


def _stream(url: str, tmp: Path, timeout: float) -> tuple[int, int | None]:
    """Stream `url` into `tmp`; return the bytes received and the announced Content-Length."""
    request = urllib.request.Request(url, headers={"User-Agent": "inbedder-repro"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        announced = response.headers.get("Content-Length")
        received = 0
        while block := response.read1(1 << 20):  # what has arrived, not a full megabyte
            out.write(block)
            received += len(block)
    return received, int(announced) if announced and announced.isdigit() else None


def _download(
    url: str, target: Path, accepted: tuple[str, ...], source: str, policy: DownloadPolicy
) -> tuple[str, int]:
    """Download `url` to `target` (temporary file, checksum, rename), retrying transient failures."""
    last = None
    for attempt in range(1, policy.tries + 1):
        try:
            with atomic_path(target) as tmp:
                try:
                    received, announced = _stream(url, tmp, policy.timeout)
                except urllib.error.HTTPError as err:
                    if err.code < 500 and err.code not in (408, 429):
                        tries = "1 try" if attempt == 1 else f"{attempt} tries"
                        raise DownloadError(
                            f"source {source!r}: {url} answered HTTP {err.code} {err.reason} "
                            f"({tries}; a client error is not retried)"
                        ) from None
                    raise _Retryable(f"HTTP {err.code} {err.reason}") from None
                except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as err:
                    reason = getattr(err, "reason", err)
                    if isinstance(reason, TimeoutError) or isinstance(err, TimeoutError):
                        raise _Retryable(f"timed out (no data for {policy.timeout:g} s)") from None
                    raise _Retryable(f"connection error ({reason})") from None
                actual = sha256_file(tmp)
                if actual not in accepted:
                    if announced == received:  # complete as announced: other bytes, not a transient fault
                        raise ChecksumError(
                            f"source {source!r}: checksum mismatch for {target.name} downloaded from {url}: "
                            f"expected sha256 {' or '.join(accepted)}, got {actual} ({received} bytes as "
                            f"announced; not retried)"
                        )
                    if announced is not None:
                        detail = f"{received} of {announced} bytes: the body was cut short"
                    else:
                        detail = f"{received} bytes, no length announced"
                    raise _Retryable(f"checksum mismatch ({detail})", actual=actual, detail=detail)
            return actual, target.stat().st_size
        except _Retryable as err:
            last = err
            if attempt < policy.tries:
                wait = policy.backoff * 2 ** (attempt - 1)
                log.warning("source %s: %s: %s (try %d of %d); retrying in %g s",
                            source, url, err, attempt, policy.tries, wait)
                time.sleep(wait)
    tries = f"{policy.tries} tries" if policy.tries > 1 else "1 try"
    if last is not None and last.actual is not None:
        raise ChecksumError(
            f"source {source!r}: checksum mismatch for {target.name} downloaded from {url}: expected sha256 "
            f"{' or '.join(accepted)}, got {last.actual} ({last.detail}; gave up after {tries})"
        )
    raise DownloadError(f"source {source!r}: download of {url} failed: {last} (gave up after {tries})")


def _from_urls(source: Source, dest: Path, policy: DownloadPolicy) -> list[dict[str, Any]]:
    records = []
    for f in source.files:
        target = dest / f.name
        url = rewrite_url(f.url)
        # The mirror's copy, where it differs (a repack of the same content), is as good as the original.
        accepted = tuple(dict.fromkeys(x for x in (f.sha256, f.mirror_sha256) if x))
        if target.is_file() and sha256_file(target) in accepted:
            log.info("source %s: %s already downloaded and checked; kept", source.name, f.name)
            sha, size = sha256_file(target), target.stat().st_size
        else:
            sha, size = _download(url, target, accepted, source.name, policy)
        records.append({"name": f.name, "sha256": sha, "bytes": size, "origin": url})
    return records


def _from_hub(source: Source, dest: Path) -> list[dict[str, Any]]:
    from datasets import load_dataset

    hub = source.hub or {}
    records = []
    for config in hub.get("configs") or [None]:
        loaded = load_dataset(hub["id"], config, revision=hub["revision"])
        for split, table in loaded.items():
            name = f"{config or 'default'}/{split}.parquet"
            with atomic_path(dest / name) as tmp:
                table.to_parquet(str(tmp))
            records.append(
                {
                    "name": name,
                    "sha256": sha256_file(dest / name),
                    "bytes": (dest / name).stat().st_size,
                    "origin": f"hf://datasets/{hub['id']}@{hub['revision']}",
                    "config": config or "default",
                    "split": split,
                    "rows": len(table),
                }
            )
    return records


def _remove_leftovers(dest: Path) -> None:
    """Delete temporary files a killed fetch left behind (never taken for complete files)."""
    if dest.is_dir():
        for tmp in dest.rglob(".*.tmp"):
            tmp.unlink()


def _remove_empty_folders(dest: Path) -> None:
    """After a failed fetch into a new folder: remove the folders that hold nothing."""
    if not dest.is_dir():
        return
    for folder in sorted((p for p in dest.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(dest.iterdir()):
        dest.rmdir()


def fetch(
    name: str,
    dest_dir: str | os.PathLike,
    mirror: str | os.PathLike | None = None,
    offline: bool | str = False,
    registry: Registry | None = None,
    policy: DownloadPolicy | None = None,
) -> dict[str, Any]:
    """Fetch one declared source into `dest_dir` (mirror, URL or hub) and return its manifest.

    `mirror` is the resolved mirror folder (see `resolve_origin`) or None to download; `offline` is
    the config value (true, false or "hub").
    """
    source = (registry or load_sources())[name]
    dest = Path(dest_dir)
    mirror_dir = Path(mirror) if mirror else None
    if offline:
        go_offline()
        if source.hub_only:
            raise OfflineError(
                f"dataset {name!r} is only on the Hugging Face hub ({source.hub['id']}@{source.hub['revision']}) "
                f"and this run is offline: nothing was fetched. Select tasks that use the mirror, or set "
                f"offline: false on a machine with internet access."
            )
        if no_network(offline) and mirror_dir is None:
            raise OfflineError(
                f"source {name!r} needs its files from the mirror when offline: true, but data_mirror is not "
                f"set; set data_mirror to the mirror folder, or set offline: hub (or false) to download them."
            )
    existed = dest.exists()
    _remove_leftovers(dest)
    try:
        if mirror_dir is not None and source.mirror is not None:
            if not mirror_dir.is_dir():
                raise SourceError(f"source {name!r}: data_mirror {mirror_dir} is not a folder")
            origin, files = "mirror", _from_mirror(source, mirror_dir, dest)
        elif no_network(offline):
            raise OfflineError(
                f"source {name!r} has no mirror folder and this run is offline: true (set offline: hub or false)"
            )
        elif source.files:
            origin, files = "url", _from_urls(source, dest, policy or DownloadPolicy())
        else:
            origin, files = "hub", _from_hub(source, dest)
    except BaseException:
        if not existed:
            _remove_empty_folders(dest)
        raise
    manifest = {
        "source": name,
        "origin": origin,
        "licence": source.licence,
        "declaration": source.declaration(),
        "files": files,
    }
    write_json(dest / "manifest.json", manifest)
    return manifest


def read_manifest(raw_dir: str | os.PathLike) -> dict[str, Any]:
    """Read `manifest.json` of a fetched source folder, naming the folder if it is incomplete."""
    path = Path(raw_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: fetch the source first (rule fetch_source)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
