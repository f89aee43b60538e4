"""A fresh folder holding this working tree, as `git clone <project> <folder>` would: for the tests
that run `make` targets or the workflow somewhere without the data mirror beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every model `make models` materialises: a clone holding them all runs `make smoke` without
# materialising one again (gemma3-270m: ~2 min of joining and dequantising, and the package index).
PACKAGED = ("smollm2-135m", "gemma3-270m", "minilm-l6", "mpnet-base")
# The configuration files of the smoke profile (workflow/profiles/smoke/config.yaml), for a command
# line that adds one of its own (--configfile replaces the profile's list).
SMOKE_CONFIGS = ("config.yaml", "workflow/profiles/offline/run.yaml", "workflow/profiles/smoke/run.yaml")


def fresh_clone(dest: Path, models: bool = True) -> Path:
    """The working tree's files (tracked and new, not ignored) in `dest`, a link to this checkout's
    .venv and, with `models`, hard links of the packaged models `make models` materialised here (one
    not materialised here is left to the clone's own `make models`)."""
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
            if (ROOT / "data" / "models" / model / "fingerprint.json").exists():
                shutil.copytree(ROOT / "data" / "models" / model, dest / "data" / "models" / model,
                                copy_function=os.link)
    return dest


def copy_workspace(src: Path, dest: Path, leave_out: Iterable[str | Path] = ()) -> Path:
    """A copy of a clone that has run (its results, data and .snakemake metadata, modification times
    kept) without the paths of `leave_out` (relative to `src`): a run that continues there starts
    where `src` stopped. The packaged models are hard links, as in fresh_clone; nothing else is shared."""
    skipped = {src / p for p in leave_out}
    models = src / "data" / "models"

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder, n) in skipped]

    def copy(s: str, d: str) -> None:
        if Path(s).is_relative_to(models):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, symlinks=True, ignore=ignore, copy_function=copy)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the settings that choose the data origin or go offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INBEDDER_", "HF_", "TRANSFORMERS_"))}
    env.update(extra)
    return env


def clone_env(clone: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` with the clone's own package first on the path."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(clone / "src"), env.get("PYTHONPATH")]))}


def make(clone: Path, *targets: str, env: dict[str, str], timeout: int = 2400) -> subprocess.CompletedProcess:
    """`make <targets>` in `clone`, with the clone's own package first on the path; -o: the linked .venv
    is taken as set up (never reinstalled from the copied pins)."""
    return subprocess.run(
        ["make", "-o", ".venv/.installed", *targets],
        check=False, cwd=clone, env=clone_env(clone, env), capture_output=True, text=True, timeout=timeout,
    )


def snakemake(clone: Path, *args: str, env: dict[str, str], timeout: int = 2400) -> subprocess.CompletedProcess:
    """The clone's `snakemake <args>` in `clone`, with the clone's own package first on the path."""
    return subprocess.run(
        [str(clone / ".venv" / "bin" / "snakemake"), *args],
        check=False, cwd=clone, env=clone_env(clone, env), capture_output=True, text=True, timeout=timeout,
    )


@dataclass(frozen=True)
class SmokeRun:
    """A finished `make smoke` (workflow/profiles/smoke) in a fresh clone, the mirror named by
    $INBEDDER_DATA_MIRROR. Shared: a test may read it and run Snakemake there when nothing is to run
    (a rerun, a dry run); a test that changes a run works in a copy (copy_workspace). Made by the
    session fixture `smoke_run` of conftest.py."""

    workspace: Path
    run: str
    env: dict[str, str]  # what it ran with, the clone's package first on the path
    log: str  # make's stdout and stderr

    @property
    def results(self) -> Path:
        return self.workspace / "results" / self.run


def smoke_dry_run(extra: dict, tmp_path: Path) -> str:
    """The plan (`snakemake -n` output) of the smoke profile with `extra` layered over its config files."""
    import sys

    import yaml

    layer = tmp_path / "extra.yaml"
    layer.write_text(yaml.safe_dump(extra), encoding="utf-8")
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    done = subprocess.run(
        [snakemake, "-n", "--profile", "workflow/profiles/smoke", "--configfile", *SMOKE_CONFIGS, str(layer)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
