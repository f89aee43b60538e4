"""Offline analogs on mirrored data: the NLU++ two-view tables and mteb's generic sets built from the mirror.

The construction of each is described in `inbedder.datasets` (the registry of every prepared dataset).
"""

from __future__ import annotations

import csv
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from inbedder.raw import SEED, DataError, check_records, decode, read_json

NLUPP_PAIRS_PER_VIEW = 300
NEWSGROUPS_SETS = 10
NEWSGROUPS_SET_SIZE = (1000, 10000)
NLUPP_ACTIONS = (
    "cancel_close_leave_freeze",
    "change",
    "make_open_apply_setup_get_activate",
    "request_info",
    "wrong_notworking_notshowing",
    "lost_stolen",
)
NLUPP_OBJECTS = (
    "account",
    "transfer_payment_deposit",
    "appointment",
    "balance",
    "card",
    "cheque",
    "direct_debit",
    "standing_order",
    "fees_interests",
    "loan",
    "mortgage",
    "overdraft",
    "withdrawal",
    "pin",
    "refund",
)
NLUPP_VIEWS = ("action", "object")


# ----------------------------------------------------------------------------------------------
# NLU++ two-view analogs


@dataclass(frozen=True)
class Utterance:
    """An NLU++ banking utterance with one action and one object label."""

    text: str
    action: str
    object: str

    def label(self, view: str) -> str:
        """The label of one view (`action` or `object`)."""
        return self.action if view == "action" else self.object


def nlupp_utterances(raw_dir: Path) -> list[Utterance]:
    """The 542 banking utterances with exactly one action and one object intent, in fold order."""
    ontology_path = raw_dir / "ontology.json"
    ontology = read_json(ontology_path.read_bytes(), str(ontology_path))
    known = set(ontology.get("intents", {})) if isinstance(ontology, dict) else set()
    unknown = [i for i in NLUPP_ACTIONS + NLUPP_OBJECTS if i not in known]
    if unknown:
        raise DataError(f"{ontology_path}: intents {unknown} are not in the ontology")
    folds = sorted((raw_dir / "banking").glob("fold*.json"), key=lambda p: int(p.stem[4:]))
    if not folds:
        raise FileNotFoundError(f"{raw_dir / 'banking'}: no fold*.json files")
    out = []
    for path in folds:
        records = read_json(path.read_bytes(), str(path))
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of utterances")
        check_records(records, ("text",), str(path), text=("text",))
        for row in records:
            intents = row.get("intents", [])
            actions = [i for i in intents if i in NLUPP_ACTIONS]
            objects = [i for i in intents if i in NLUPP_OBJECTS]
            if len(actions) == 1 and len(objects) == 1:
                out.append(Utterance(row["text"], actions[0], objects[0]))
    if not out:
        raise DataError(f"{raw_dir}: no utterance has exactly one action and one object intent")
    return out


def _distinct(utterances: list[Utterance]) -> list[Utterance]:
    seen, out = set(), []
    for u in utterances:
        if u.text not in seen:
            seen.add(u.text)
            out.append(u)
    return out


def _partners(items: list[Utterance], i: int, same: str) -> list[int]:
    """Indices of utterances sharing view `same` with item i and differing in the other view."""
    other = "object" if same == "action" else "action"
    a = items[i]
    return [
        j
        for j, b in enumerate(items)
        if b.label(same) == a.label(same) and b.label(other) != a.label(other) and b.text != a.text
    ]


def build_nlupp_clustering(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """NLU++ two-view clustering: all 542 texts under each view, label = that view's intent."""
    items = nlupp_utterances(raw["nlupp"])
    parts = [
        pd.DataFrame(
            {
                "subset": view,
                "text": [u.text for u in items],
                "label": [u.label(view) for u in items],
            }
        )
        for view in NLUPP_VIEWS
    ]
    return pd.concat(parts, ignore_index=True)


def build_nlupp_triplets(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """NLU++ two-view triplets (IntentEmotion-like): one per distinct utterance, mirrored across views."""
    items = _distinct(nlupp_utterances(raw["nlupp"]))
    rng = np.random.default_rng(seed)
    triplets = []
    for i in rng.permutation(len(items)).tolist():
        positives, negatives = _partners(items, i, "action"), _partners(items, i, "object")
        if not positives or not negatives:
            continue
        p = positives[int(rng.integers(len(positives)))]
        n = negatives[int(rng.integers(len(negatives)))]
        triplets.append((items[i].text, items[p].text, items[n].text))
    rows = [("action", a, p, n) for a, p, n in triplets] + [("object", a, n, p) for a, p, n in triplets]
    return pd.DataFrame(rows, columns=["subset", "anchor", "positive", "negative"])


def build_nlupp_pairs(
    raw: Mapping[str, Path],
    seed: int = SEED,
    pairs_per_view: int = NLUPP_PAIRS_PER_VIEW,
) -> pd.DataFrame:
    """NLU++ instructed pairs (InstructSTSB-like): pairs sharing one view, scored 1 in its subset, 0 in the other's."""
    items = _distinct(nlupp_utterances(raw["nlupp"]))
    rng = np.random.default_rng(seed)
    rows = []
    for shared, other in (("action", "object"), ("object", "action")):
        seen: set[frozenset[int]] = set()
        for i in rng.permutation(len(items)).tolist():
            if len(seen) == pairs_per_view:
                break
            partners = _partners(items, i, shared)
            if not partners:
                continue
            j = partners[int(rng.integers(len(partners)))]
            if frozenset((i, j)) in seen:
                continue
            seen.add(frozenset((i, j)))
            a, b = items[i].text, items[j].text
            rows.append((shared, a, b, 1.0))
            rows.append((other, a, b, 0.0))
        if len(seen) < pairs_per_view:
            raise DataError(
                f"nlupp_pairs: only {len(seen)} distinct pairs share the {shared} (wanted {pairs_per_view})"
            )
    return pd.DataFrame(rows, columns=["subset", "text1", "text2", "score"])


# ----------------------------------------------------------------------------------------------
# Generic tasks on mirrored data


def _subject(post: str) -> str | None:
    header = post.split("\n\n", 1)[0]
    for line in header.splitlines():
        if line.startswith("Subject:"):
            return line[len("Subject:") :].strip()
    return None


def newsgroups_subjects(archive: Path) -> pd.DataFrame:
    """Subject line and newsgroup of every post of a 20news-bydate archive, in (split, group, id) order."""
    rows = []
    with tarfile.open(archive) as tf:
        for member in tqdm(tf, desc="20 Newsgroups posts", unit="post", mininterval=2.0):
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or not parts[0].startswith("20news-bydate-"):
                continue
            post = tf.extractfile(member).read().decode("latin-1")
            subject = _subject(post)
            if subject:
                rows.append((parts[0].removeprefix("20news-bydate-"), parts[1], int(parts[2]), subject))
    if not rows:
        raise DataError(f"{archive}: no post with a Subject: header (is it a 20news-bydate archive?)")
    table = pd.DataFrame(rows, columns=["split", "group", "id", "subject"])
    return table.sort_values(["split", "group", "id"], ignore_index=True)


def build_twenty_newsgroups(
    raw: Mapping[str, Path],
    seed: int = SEED,
    n_sets: int = NEWSGROUPS_SETS,
    set_size: tuple[int, int] = NEWSGROUPS_SET_SIZE,
) -> pd.DataFrame:
    """TwentyNewsgroupsClustering as MTEB builds it: 10 sets of 1,000-10,000 subject lines, label = group."""
    pool = newsgroups_subjects(raw["twenty_newsgroups"] / "20news-bydate.tar.gz")
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(n_sets):
        size = int(rng.integers(set_size[0], min(set_size[1], len(pool)) + 1))
        picked = pool.iloc[rng.choice(len(pool), size=size, replace=False)]
        parts.append(
            pd.DataFrame(
                {
                    "subset": str(s),
                    "text": picked["subject"].to_numpy(),
                    "label": picked["group"].to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def build_stsb(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """STS Benchmark test pairs with their 0-5 scores."""
    path = raw["stsb"] / "sts-test.csv"
    label = str(path)
    names = ("genre", "file", "year", "id", "score", "sentence1", "sentence2")
    records = []
    for lineno, line in enumerate(decode(path.read_bytes()).split("\n"), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) < len(names):
            raise DataError(
                f"{label}:{lineno}: {len(fields)} tab-separated fields, expected at least {len(names)} "
                f"(column {names[len(fields)]!r} missing)"
            )
        records.append(dict(zip(names, fields[: len(names)])))
    check_records(records, names, label, text=("sentence1", "sentence2"))
    scores = []
    for i, r in enumerate(records):
        try:
            score = float(r["score"])
        except ValueError as err:
            raise DataError(f"{label}: column 'score', row {i}: {r['score']!r} is not a number") from err
        if not 0.0 <= score <= 5.0:
            raise DataError(f"{label}: column 'score', row {i}: {score} is outside 0-5")
        scores.append(score)
    return pd.DataFrame(
        {
            "subset": "default",
            "text1": [r["sentence1"] for r in records],
            "text2": [r["sentence2"] for r in records],
            "score": scores,
        }
    )


def build_banking77(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """Banking77 test as one clustering set (77 intents)."""
    path = raw["banking77"] / "test.csv"
    label = str(path)
    records = list(csv.DictReader(io.StringIO(decode(path.read_bytes()), newline="")))
    check_records(records, ("text", "category"), label)
    return pd.DataFrame(
        {
            "subset": "default",
            "text": [r["text"] for r in records],
            "label": [r["category"] for r in records],
        }
    )
