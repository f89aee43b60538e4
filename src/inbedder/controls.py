"""Controls: where the floor and the ceiling of an instruction-awareness task lie.

- Negative control: an instruction-blind encoder, a sentence encoder fed the text alone (mode `plain`):
  the same embedding whatever the instruction, so it fixes the floor of every instruction-awareness
  metric (50% success on the two-view triplets by construction). The report's claims call a comparison
  of two runs that both lie within its interval "at the floor" (inbedder.report.claims).
- Positive control: a sentence encoder that embeds, for each (text, instruction), the words of the
  text's gold label under the view the instruction asks about (mode `gold`): embeddings that follow the
  instruction by construction, the ceiling that shows each metric can be reached. A task offers it when
  its config names the prepared table of its gold labels (`tasks.<name>.gold`: rows `subset, text,
  label`, one subset per view, the view keys of `tasks.<name>.instructions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from inbedder.model_kinds import kind_of
from inbedder.task_kinds import modes_for
from inbedder.tasks import prepared_path
from inbedder.vocabulary import GOLD_MODE


class ControlError(ValueError):
    """A positive control that cannot be built; the message names the task, text or view at fault."""


def gold_spec(model: str, task: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the encode job of a sentence encoder needs for mode `gold` on a task ({dataset, instructions}), or
    None when the mode is not scored there (not in the model's modes, or the task names no gold labels)."""
    spec, task_spec = config["models"][model], config["tasks"][task]
    if kind_of(spec["kind"]).generative or GOLD_MODE not in modes_for(task_spec, spec.get("modes", [])):
        return None
    instructions = {k: v for k, v in (task_spec.get("instructions") or {}).items() if isinstance(v, str)}
    if len(instructions) < 2:
        raise ControlError(f"tasks.{task}.gold: the positive control needs one instruction per view "
                           f"(tasks.{task}.instructions has {sorted(instructions)})")
    return {"dataset": str(task_spec["gold"]), "instructions": instructions}


def gold_inputs(model: str, task: str, config: Mapping[str, Any], data_dir: str | Path = "data") -> list[str]:
    """The prepared gold-label table the encode job of (model, task) reads, if any (a rule input)."""
    spec = gold_spec(model, task, config)
    return [str(prepared_path(spec["dataset"], data_dir))] if spec else []


def gold_texts(prompts: Sequence[Mapping[str, str]], labels: pd.DataFrame, instructions: Mapping[str, str],
               where: str = "gold labels") -> list[str]:
    """For each prompt, the words of its text's label under the view its instruction asks about."""
    missing = [c for c in ("subset", "text", "label") if c not in labels.columns]
    if missing:
        raise ControlError(f"{where}: missing column(s) {missing}; expected subset, text, label")
    view_of = {instruction: view for view, instruction in instructions.items()}
    label_of = {(str(s), str(t)): str(lab) for s, t, lab in zip(labels["subset"], labels["text"], labels["label"],
                                                               strict=True)}
    out = []
    for p in prompts:
        view = view_of.get(p["instruction"])
        if view is None:
            raise ControlError(f"{where}: instruction {p['instruction']!r} is none of the views {sorted(view_of.values())}")
        label = label_of.get((view, p["text"]))
        if label is None:
            raise ControlError(f"{where}: no {view!r} label for the text {p['text'][:80]!r}")
        out.append(label.replace("_", " "))
    return out
