"""A fresh folder holding this working tree, as `git clone <project> <folder>` would: for the tests
that run `make` targets somewhere without the data mirror beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ("smollm2-135m", "minilm-l6", "mpnet-base")


def fresh_clone(dest: Path, models: bool = True) -> Path:
    """The working tree's files (tracked and new, not ignored) in `dest`, a link to this checkout's
    .venv and, with `models`, hard links of the packaged models `make models` materialised here."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    if models:
        for model in PACKAGED:
            shutil.copytree(ROOT / "data" / "models" / model, dest / "data" / "models" / model, copy_function=os.link)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the settings that choose the data origin or go offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INBEDDER_", "HF_", "TRANSFORMERS_"))}
    env.update(extra)
    return env


def make(clone: Path, *targets: str, env: dict[str, str], timeout: int = 2400) -> subprocess.CompletedProcess:
    """`make <targets>` in `clone`, with the clone's own package first on the path; -o: the linked .venv
    is taken as set up (never reinstalled from the copied pins)."""
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(clone / "src"), env.get("PYTHONPATH")]))}
    return subprocess.run(
        ["make", "-o", ".venv/.installed", *targets],
        check=False, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout,
    )
