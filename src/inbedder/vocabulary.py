"""The names every stage shares: model kinds, recipes that do not train, embedding modes, score columns.

Each is defined here once; the config schema's enums list the same values, and a test holds the two
together (tests/test_config.py).
"""

from __future__ import annotations

# Model kinds (config `models.<name>.kind`). Generative kinds answer the instruction; all of them
# are fine-tuned with the paper's objective for their kind. What each kind does (loading, padding,
# prompting, decoding, training, pooling) is its class in `inbedder.model_kinds`.
CAUSAL = "causal"
MASKED = "masked"
SEQ2SEQ = "seq2seq"
SENTENCE_ENCODER = "sentence-encoder"
GENERATIVE_KINDS: tuple[str, ...] = (CAUSAL, MASKED, SEQ2SEQ)
TRAINABLE_KINDS: tuple[str, ...] = GENERATIVE_KINDS
MODEL_KINDS: tuple[str, ...] = (*GENERATIVE_KINDS, SENTENCE_ENCODER)

# Recipes that use a model as it is: the untouched model and the authors' released checkpoint.
UNTUNED = "none"
RELEASED = "released"
UNTRAINED_RECIPES: tuple[str, ...] = (UNTUNED, RELEASED)

# A fine-tune's training seed beyond the model's first: `<recipe>@<seed>` names its folders
# (results/<run>/models/<model>-inbedder@1/, its caches and score tables); the first seed keeps the
# plain recipe name, so adding seeds reuses the fine-tune already made.
TRAIN_SEED_SEP = "@"


def split_recipe(name: str) -> tuple[str, int | None]:
    """`inbedder@1` -> ("inbedder", 1); a plain recipe -> (recipe, None)."""
    recipe, sep, seed = str(name).partition(TRAIN_SEED_SEP)
    if not sep:
        return recipe, None
    if not seed.isdigit():
        raise ValueError(f"{name!r}: the training seed after {TRAIN_SEED_SEP!r} must be an integer >= 0")
    return recipe, int(seed)


# Embedding modes. Generation modes are pooled from the cached hidden states at any layer; the
# `+filter` variants drop uninformative answer steps first (with config `method.filter`, or the filter
# named after `=`: `+filter=authors`, `+filter=words`); stored modes are computed whole at encode
# time (sentence encoders: the text alone, `plain`, or behind the instruction, `prefixed`).
GENERATION_MODES: tuple[str, ...] = ("1st-gen", "avg-gen", "last-gen", "avg-ppt", "avg-all")
FILTERED_MODES: tuple[str, ...] = ("avg-gen+filter", "last-gen+filter", "avg-all+filter")
RE_ENCODE_MODES: tuple[str, ...] = ("re-encode", "re-encode+filter", "re-encode-multi")
# `gold`: the positive control, a sentence encoder embedding the gold label's words (inbedder.controls).
GOLD_MODE = "gold"
ENCODER_MODES: tuple[str, ...] = ("plain", "prefixed", GOLD_MODE)
STORED_MODES: tuple[str, ...] = (*RE_ENCODE_MODES, *ENCODER_MODES)
# The paper's order of the modes (tables and figures).
MODES: tuple[str, ...] = (
    "1st-gen",
    "avg-gen",
    "last-gen",
    "avg-ppt",
    "avg-all",
    "re-encode",
    "re-encode-multi",
    "avg-gen+filter",
    "last-gen+filter",
    "avg-all+filter",
    "avg-gen+filter=authors",
    "last-gen+filter=authors",
    "avg-all+filter=authors",
    "avg-gen+filter=words",
    "last-gen+filter=words",
    "avg-all+filter=words",
    "re-encode+filter",
    "plain",
    "prefixed",
    "gold",
)

# results/<run>/scores.csv: one row per score; the CI columns hold its bootstrap interval. `recipe` is
# the plain recipe, `train_seed` the fine-tune's training seed (empty for untrained models), `seed` the
# k-means seed of a clustering score (empty for deterministic scores).
SCORE_COLUMNS: tuple[str, ...] = ("model", "recipe", "mode", "layer", "task", "subset", "metric", "value", "seed",
                                  "train_seed", "n")
# Written by versions before training seeds: read as empty.
LATER_SCORE_COLUMNS: tuple[str, ...] = ("train_seed",)
CI_COLUMNS: tuple[str, ...] = ("ci_low", "ci_high")

# Instruction groups of the robustness tasks.
ROBUSTNESS_GROUPS: tuple[str, ...] = ("correct", "implicit", "incorrect")
