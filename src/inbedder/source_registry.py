"""The sources of sources.yaml as records: each declared once (hub dataset at a revision, or repository files at
a commit with URL and SHA-256), checked when read, looked up by name in a `Registry`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"


class DeclarationError(ValueError):
    """sources.yaml is malformed; the message names the source and key."""



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


def parse_source(name: str, spec: dict[str, Any], where: str) -> Source:
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
    return Registry({name: parse_source(name, spec, where) for name, spec in data["sources"].items()})
