"""Training checkpoints: which ones a rerun may resume from, and when a rerun must start over.

Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG, trainer state) with no
atomic step, so a kill can leave any prefix of that sequence, or a file cut short. A checkpoint
counts as complete only once `checkpoint_complete.json` (written after Trainer's `on_save`, every
file flushed, sizes recorded) confirms it. `run_settings.json` beside the checkpoints holds the run
key they were made with; checkpoints of another key are thrown away, and the reason is returned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.files import write_json

RUN_SETTINGS = "run_settings.json"
# Files Trainer writes into a checkpoint besides the weights (named in the fault of a cut-short save).
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")
# Written once a checkpoint's save has finished: only checkpoints holding it are resumed from.
CHECKPOINT_MARKER = "checkpoint_complete.json"
log = logging.getLogger("inbedder.train")


@dataclass(frozen=True)
class CheckpointScan:
    """What a checkpoint folder holds: the newest complete checkpoint and why newer ones were rejected."""

    complete: Path | None
    rejected: tuple[str, ...]  # "checkpoint-<step>: <why>", newest first


def checkpoint_fault(path: Path) -> str | None:
    """Why a `checkpoint-<step>` folder cannot be resumed from, or None when it is complete.

    Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG, trainer state) with
    no atomic step, so a kill can leave any prefix of that sequence, or a file cut short. Only the
    marker written after Trainer's `on_save` (every file flushed, sizes recorded) makes it complete.
    """
    marker = path / CHECKPOINT_MARKER
    if not marker.exists():
        missing = [] if any(path.glob("*.safetensors")) else ["*.safetensors"]
        missing += [f for f in CHECKPOINT_FILES if not (path / f).exists()]
        detail = f"missing {', '.join(missing)}" if missing else "every file present but not confirmed"
        return f"no {CHECKPOINT_MARKER} (the save was cut short: {detail})"
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{CHECKPOINT_MARKER} unreadable ({err})"
    for name, size in sorted(recorded.items()):
        file = path / name
        if not file.exists():
            return f"{name} missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
    return None


def scan_checkpoints(folder: str | os.PathLike) -> CheckpointScan:
    """The newest complete `checkpoint-<step>` of `folder`, and each newer one's fault."""
    folder = Path(folder)
    found = folder.glob("checkpoint-*") if folder.is_dir() else []
    steps = sorted(
        ((int(p.name.rsplit("-", 1)[-1]), p) for p in found if p.name.rsplit("-", 1)[-1].isdigit()),
        reverse=True,
    )
    rejected = []
    for _, path in steps:
        fault = checkpoint_fault(path)
        if fault is None:
            return CheckpointScan(path, tuple(rejected))
        rejected.append(f"{path.name}: {fault}")
    return CheckpointScan(None, tuple(rejected))


def mark_checkpoint_complete(path: str | os.PathLike) -> None:
    """Flush every file of a finished checkpoint to disk, then record their sizes in the marker."""
    path = Path(path)
    sizes = {}
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name != CHECKPOINT_MARKER):
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
        sizes[file.name] = file.stat().st_size
    write_json(path / CHECKPOINT_MARKER, {"step": int(path.name.rsplit("-", 1)[-1]), "files": sizes})


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings, as `key: old -> new`."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
    return []


def prepare_checkpoints(ckpt_dir: Path, key: str, run_key: Mapping[str, Any], name: str) -> str | None:
    """Keep `ckpt_dir` if its checkpoints were made by the same run key, else empty it.

    Returns why existing checkpoints were thrown away (None when they were kept or there were none).
    """
    settings_file = ckpt_dir / RUN_SETTINGS
    reason = None
    if ckpt_dir.exists():
        old = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.exists() else None
        if old is None:
            reason = f"{settings_file} missing, so the checkpoints' settings are unknown"
        elif old.get("key") != key:
            old_key = {k: v for k, v in old.items() if k != "key"}
            changes = changed_keys(old_key, dict(run_key)) or ["the run key's format"]
            reason = f"checkpoints in {ckpt_dir} were made with other settings or data ({'; '.join(changes)})"
        if reason:
            if any(ckpt_dir.glob("checkpoint-*")):
                log.warning("%s: discarding checkpoints: %s", name, reason)
            else:
                reason = None  # nothing trained was lost
            shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return reason
