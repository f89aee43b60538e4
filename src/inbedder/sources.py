"""Data sources: declared once in sources.yaml, fetched by one code path from three origins.

`fetch(name, dest_dir, mirror=..., offline=...)` fills `dest_dir` (normally `data/raw/<name>/`):
- a **mirror** folder (config `data_mirror`): the declared files are copied and their SHA-256 checked;
- a **URL** (repository file at a commit, or a canonical archive): downloaded with urllib, checked the
  same way;
- the **Hugging Face hub**: `datasets.load_dataset` at the pinned revision, each config and split saved
  as `<config>/<split>.parquet`.
`manifest.json` is written last, atomically: its presence means the folder is complete.
Offline (`offline=True`) no socket is opened: the HF offline variables are set, a source that is only
on the hub fails before anything is attempted, and a file source needs the mirror.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from inbedder.files import atomic_path, sha256_file, write_json

RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class DeclarationError(ValueError):
    """sources.yaml is malformed; the message names the source and key."""


class SourceError(RuntimeError):
    """A source cannot be fetched as declared; the message names the source and file."""


class ChecksumError(SourceError):
    """A file's SHA-256 differs from the declared one."""


class OfflineError(SourceError):
    """A source needs the network but the run is offline."""


@dataclass(frozen=True)
class SourceFile:
    """One declared file: its name in the mirror and raw folder, its URL and checksum(s)."""

    name: str
    url: str
    sha256: str
    path: str | None = None
    mirror_sha256: str | None = None

    @property
    def expected_in_mirror(self) -> str:
        """The checksum the mirror's copy must have."""
        return self.mirror_sha256 or self.sha256


@dataclass(frozen=True)
class Source:
    """A declared source: hub dataset or repository files, with mirror folder and licence."""

    name: str
    licence: str
    description: str = ""
    mirror: str | None = None
    repository: str | None = None
    commit: str | None = None
    files: tuple[SourceFile, ...] = ()
    hub: dict[str, Any] | None = None

    @property
    def hub_only(self) -> bool:
        """True when the only origin is the hub (no mirror folder, no URL files)."""
        return self.hub is not None and self.mirror is None and not self.files

    def declaration(self) -> dict[str, Any]:
        """The declaration as plain data (what a rule's params carry, so a change refetches)."""
        return {
            "name": self.name,
            "mirror": self.mirror,
            "repository": self.repository,
            "commit": self.commit,
            "files": [f.__dict__ for f in self.files],
            "hub": self.hub,
        }


@dataclass
class Registry:
    """All declared sources, by name."""

    sources: dict[str, Source] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Source:
        if name not in self.sources:
            raise KeyError(f"unknown source {name!r} (declared in sources.yaml: {sorted(self.sources)})")
        return self.sources[name]

    def __contains__(self, name: object) -> bool:
        return name in self.sources

    def names(self) -> list[str]:
        """Declared source names, in file order."""
        return list(self.sources)


def _parse_source(name: str, spec: dict[str, Any], where: str) -> Source:
    if not isinstance(spec, dict):
        raise DeclarationError(f"{where}: sources.{name} must be a mapping")
    unknown = set(spec) - {"description", "licence", "mirror", "repository", "commit", "files", "hub"}
    if unknown:
        raise DeclarationError(f"{where}: sources.{name}: unknown keys {sorted(unknown)}")
    if "licence" not in spec:
        raise DeclarationError(f"{where}: sources.{name}: 'licence' is required")
    hub = spec.get("hub")
    files_spec = spec.get("files") or []
    if (hub is None) == (not files_spec):
        raise DeclarationError(f"{where}: sources.{name}: declare exactly one of 'hub' or 'files'")
    if hub is not None:
        missing = {"id", "revision"} - set(hub)
        if missing:
            raise DeclarationError(f"{where}: sources.{name}.hub: missing {sorted(missing)}")
    files = []
    for i, f in enumerate(files_spec):
        key = f"{where}: sources.{name}.files[{i}]"
        for required in ("name", "sha256"):
            if required not in f:
                raise DeclarationError(f"{key}: '{required}' is required")
        url = f.get("url")
        if f.get("path"):
            if not (spec.get("repository") and spec.get("commit")):
                raise DeclarationError(f"{key}: a 'path' needs the source's 'repository' and 'commit'")
            derived = RAW_URL.format(repository=spec["repository"], commit=spec["commit"], path=f["path"])
            if url is not None and url != derived:
                raise DeclarationError(f"{key}: url {url!r} is not the raw URL of its path ({derived!r})")
            url = derived
        if not url:
            raise DeclarationError(f"{key}: needs a 'url' or a repository 'path'")
        files.append(
            SourceFile(
                name=f["name"],
                url=url,
                sha256=f["sha256"].lower(),
                path=f.get("path"),
                mirror_sha256=(f.get("mirror_sha256") or None),
            )
        )
    return Source(
        name=name,
        licence=spec["licence"],
        description=spec.get("description", ""),
        mirror=spec.get("mirror"),
        repository=spec.get("repository"),
        commit=spec.get("commit"),
        files=tuple(files),
        hub=dict(hub) if hub is not None else None,
    )


def load_sources(path: str | os.PathLike | None = None) -> Registry:
    """Read the source declarations (default: the packaged sources.yaml)."""
    if path is None:
        text = resources.files("inbedder").joinpath("sources.yaml").read_text(encoding="utf-8")
        where = "inbedder/sources.yaml"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    data = yaml.safe_load(text) or {}
    if "sources" not in data:
        raise DeclarationError(f"{where}: top-level key 'sources' missing")
    return Registry({name: _parse_source(name, spec, where) for name, spec in data["sources"].items()})


def go_offline() -> None:
    """Set the Hugging Face offline variables for this process and its children."""
    for var in OFFLINE_VARIABLES:
        os.environ[var] = "1"


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


def _from_urls(source: Source, dest: Path, timeout: float = 120.0) -> list[dict[str, Any]]:
    records = []
    for f in source.files:
        target = dest / f.name
        with atomic_path(target) as tmp:
            request = urllib.request.Request(f.url, headers={"User-Agent": "inbedder-repro"})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            _check_sha(tmp, f.sha256, source.name, f"{f.name} downloaded from {f.url}")
        records.append({"name": f.name, "sha256": f.sha256, "bytes": target.stat().st_size, "origin": f.url})
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


def fetch(
    name: str,
    dest_dir: str | os.PathLike,
    mirror: str | os.PathLike | None = None,
    offline: bool = False,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Fetch one declared source into `dest_dir` (mirror, URL or hub) and return its manifest."""
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
        if mirror_dir is None:
            raise OfflineError(
                f"source {name!r} needs its files from the mirror when offline, but data_mirror is not set; "
                f"set data_mirror to the mirror folder, or set offline: false to download them."
            )
    if mirror_dir is not None and source.mirror is not None:
        if not mirror_dir.is_dir():
            raise SourceError(f"source {name!r}: data_mirror {mirror_dir} is not a folder")
        origin, files = "mirror", _from_mirror(source, mirror_dir, dest)
    elif offline:
        raise OfflineError(
            f"source {name!r} has no mirror folder and this run is offline (set offline: false)"
        )
    elif source.files:
        origin, files = "url", _from_urls(source, dest)
    else:
        origin, files = "hub", _from_hub(source, dest)
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
