"""Cluster explanations (paper Fig. 1): the words that set each cluster's generated answers apart.

Each cluster becomes one document, the concatenation of its members' answers (for sentence encoders,
which generate nothing, the texts themselves). TF-IDF over those cluster documents weighs a word by
how often it occurs in the cluster and how few other clusters use it, so the top words of a cluster
are what its answers say that the other clusters' answers do not. Stopwords are the project's list
(`inbedder.text.STOPWORDS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from inbedder.text import STOPWORDS

TOP_WORDS = 10
_TOKEN_PATTERN = r"(?u)\b[^\W\d_]\w*\b"  # words that start with a letter (no bare numbers)


def cluster_documents(docs: Sequence[str], assignment: Sequence[int]) -> dict[int, str]:
    """One document per cluster id: its members' texts joined by newlines."""
    if len(docs) != len(assignment):
        raise ValueError(f"cluster_documents: {len(docs)} documents but {len(assignment)} cluster ids")
    members: dict[int, list[str]] = {}
    for doc, cluster in zip(docs, assignment, strict=True):
        members.setdefault(int(cluster), []).append(str(doc))
    return {c: "\n".join(members[c]) for c in sorted(members)}


def cluster_top_words(
    docs: Sequence[str], assignment: Sequence[int], top_n: int = TOP_WORDS
) -> dict[int, list[tuple[str, float]]]:
    """Per cluster, the `top_n` words with the highest TF-IDF weight against the other clusters."""
    by_cluster = cluster_documents(docs, assignment)
    ids = list(by_cluster)
    vectorizer = TfidfVectorizer(
        lowercase=True, stop_words=sorted(STOPWORDS), token_pattern=_TOKEN_PATTERN, sublinear_tf=True
    )
    try:
        weights = vectorizer.fit_transform([by_cluster[c] for c in ids]).toarray()
    except ValueError:  # every document empty or stopwords only: nothing to say
        return {c: [] for c in ids}
    vocab = vectorizer.get_feature_names_out()
    out = {}
    for row, cluster in zip(weights, ids, strict=True):
        order = np.argsort(-row, kind="stable")[:top_n]
        out[cluster] = [(str(vocab[i]), round(float(row[i]), 4)) for i in order if row[i] > 0]
    return out


def explain_clusters(
    docs: Sequence[str],
    assignment: Sequence[int],
    labels: Sequence[str] | None = None,
    top_n: int = TOP_WORDS,
) -> list[dict]:
    """Per cluster: id, size, top words (word, weight) and, when gold labels exist, the label counts."""
    words = cluster_top_words(docs, assignment, top_n=top_n)
    sizes = Counter(int(c) for c in assignment)
    out = []
    for cluster in sorted(sizes):
        entry = {"cluster": cluster, "size": sizes[cluster], "top_words": [list(w) for w in words[cluster]]}
        if labels is not None:
            counts = Counter(str(lab) for lab, c in zip(labels, assignment, strict=True) if int(c) == cluster)
            entry["labels"] = dict(counts.most_common())
        out.append(entry)
    return out
