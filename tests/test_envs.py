"""The conda envs of envs/ are honest: each installs the package with one extra of pyproject.toml, and
what its rules import (their scripts' imports and the libraries their entry points load on the way)
resolves with only that extra's distributions and theirs: anything else is blocked in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SELF = canonicalize_name(PROJECT["name"])

# Libraries a rule's entry point imports inside functions (not at module level), by script.
LOADED_ON_THE_WAY = {
    "fetch_source.py": ["datasets", "huggingface_hub"],
    "prepare_dataset.py": [],
    "training_table.py": [],
    "collect_scores.py": [],
    "materialize_model.py": ["transformers", "sentence_transformers", "huggingface_hub", "gguf", "accelerate"],
    "train_model.py": ["transformers", "matplotlib.pyplot", "safetensors.torch"],
    "lr_sweep.py": ["transformers", "matplotlib.pyplot", "safetensors.torch"],
    "task_table.py": ["mteb", "datasets", "pyarrow.parquet"],
    "encode_task.py": ["transformers", "sentence_transformers", "safetensors.numpy"],
    "evaluate_task.py": ["mteb", "datasets", "safetensors.numpy", "inbedder.pooling", "inbedder.cache"],
    "render_report.py": ["jinja2", "matplotlib.pyplot", "sklearn.decomposition", "inbedder.pooling",
                         "inbedder.tasks", "pyarrow.parquet", "safetensors.numpy", "yaml"],
}


def rules_by_env() -> dict[str, list[str]]:
    """env file -> scripts of the rules that use it."""
    out: dict[str, list[str]] = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=(?:local)?rule \w+:)", smk.read_text(encoding="utf-8")):
            env = re.search(r'conda:\s*"\.\./\.\./envs/([\w.-]+)"', block)
            script = re.search(r'script:\s*"\.\./scripts/([\w.-]+)"', block)
            if env and script:
                out.setdefault(env.group(1), []).append(script.group(1))
    return out


def env_extra(env_file: str) -> str:
    """The extra an env installs: its pip section is exactly `-e ..[<extra>]`."""
    spec = yaml.safe_load((ROOT / "envs" / env_file).read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert len(pip) == 1, f"envs/{env_file}: the pip section installs the package with one extra, got {pip}"
    match = re.fullmatch(r"-e \.\.\[([\w-]+)\]", pip[0])
    assert match, f"envs/{env_file}: expected '-e ..[<extra>]', got {pip[0]!r}"
    return match.group(1)


def closure(requirements: list[str]) -> set[str]:
    """Distributions (canonical names) the requirements install, following installed metadata."""
    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == SELF:  # the package itself: its core and the extras asked for
            todo += [Requirement(r) for r in PROJECT["dependencies"]]
            todo += [Requirement(r) for extra in req.extras for r in PROJECT["optional-dependencies"][extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(req.name) or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(dep)
    return seen


def script_imports(script: str) -> list[str]:
    """Modules a script imports at module level."""
    import ast

    tree = ast.parse((ROOT / "workflow" / "scripts" / script).read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


BLOCKER = """
import importlib, importlib.machinery as machinery, json, sys
blocked = set(json.loads(sys.argv[1]))
class Hidden:  # the path finder, blind to the blocked distributions: as if they were not installed
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            return None
        return machinery.PathFinder.find_spec(name, path, target)
    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return machinery.PathFinder.find_distributions(*args, **kwargs)
    @classmethod
    def invalidate_caches(cls):
        machinery.PathFinder.invalidate_caches()
sys.meta_path[:] = [Hidden if f is machinery.PathFinder else f for f in sys.meta_path]
for script, module in json.loads(sys.argv[2]):
    try:
        importlib.import_module(module)
    except ImportError as err:
        sys.exit(f"{script} imports {module}: {type(err).__name__}: {err}")
"""


def test_every_rule_env_installs_one_extra_and_every_script_is_listed():
    envs = rules_by_env()
    assert set(envs) == {p.name for p in (ROOT / "envs").glob("*.yaml")}
    for env_file in envs:
        assert env_extra(env_file) in PROJECT["optional-dependencies"]
    scripts = {s for group in envs.values() for s in group}
    assert scripts == {p.name for p in (ROOT / "workflow" / "scripts").glob("*.py")} == set(LOADED_ON_THE_WAY)


@pytest.mark.parametrize("env_file", sorted(rules_by_env()))
def test_an_env_holds_what_its_rules_import(env_file):
    allowed = closure([f"{PROJECT['name']}[{env_extra(env_file)}]"])
    installed = metadata.packages_distributions()
    blocked = sorted(m for m, dists in installed.items()
                     if not {canonicalize_name(d) for d in dists} & (allowed | {SELF}))
    assert "torch" in blocked or env_file == "torch.yaml"  # the check bites: torch is outside the light envs
    modules = [(s, m) for s in rules_by_env()[env_file] for m in script_imports(s) + LOADED_ON_THE_WAY[s]]
    run = subprocess.run([sys.executable, "-c", BLOCKER, json.dumps(blocked), json.dumps(modules)],
                         check=False, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, f"envs/{env_file}: {run.stderr.strip().splitlines()[-1:]}"
