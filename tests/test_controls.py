"""Controls: the positive control (mode gold) follows the instruction by construction and reaches each metric's
ceiling; the negative control (mode plain) is blind to the instruction; where each is scored."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inbedder import metrics
from inbedder.cache import load_cache
from inbedder.config import load_config
from inbedder.controls import ControlError, gold_inputs, gold_spec, gold_texts
from inbedder.encode import EncodeJob, encode_prompts
from inbedder.pooling import embed
from inbedder.rule_params import encode_params

ENCODER = {"max_new_tokens": 0, "layers": [-1], "device": "cpu", "dtype": "float32", "decoding": "greedy"}
ACTION, OBJECT = "What does the customer want to do?", "Which banking product or service is this about?"
LABELS = pd.DataFrame({
    "subset": ["action"] * 4 + ["object"] * 4,
    "text": ["open a savings account", "open a card", "close my card", "close a savings account"] * 2,
    "label": ["make_open", "make_open", "cancel_close", "cancel_close", "savings", "card", "card", "savings"],
})


def test_gold_texts_are_the_label_words_of_the_view_the_instruction_asks_about():
    prompts = [{"text": "open a card", "instruction": ACTION}, {"text": "open a card", "instruction": OBJECT}]
    assert gold_texts(prompts, LABELS, {"action": ACTION, "object": OBJECT}) == ["make open", "card"]
    with pytest.raises(ControlError, match="none of the views"):
        gold_texts([{"text": "open a card", "instruction": "Why?"}], LABELS, {"action": ACTION, "object": OBJECT})
    with pytest.raises(ControlError, match="no 'action' label"):
        gold_texts([{"text": "unseen", "instruction": ACTION}], LABELS, {"action": ACTION, "object": OBJECT})
    with pytest.raises(ControlError, match="missing column"):
        gold_texts(prompts, LABELS.drop(columns="label"), {"action": ACTION, "object": OBJECT})


def test_the_gold_mode_is_scored_where_a_task_names_its_gold_labels_and_only_by_sentence_encoders(root):
    config = load_config(root / "config.yaml", root / "workflow" / "profiles" / "offline" / "run.yaml")
    spec = gold_spec("minilm-l6", "NLUPPTwoViewTriplets", config)
    assert spec == {"dataset": "nlupp_clustering", "instructions": config["tasks"]["NLUPPTwoViewTriplets"]["instructions"]}
    assert gold_inputs("minilm-l6", "NLUPPInstructedPairs", config) == ["data/prepared/nlupp_clustering.parquet"]
    assert gold_spec("minilm-l6", "STSBenchmark", config) is None  # no gold labels: no positive control
    assert gold_spec("smollm2-135m", "NLUPPTwoViewTriplets", config) is None
    assert encode_params("minilm-l6", "none", "NLUPPTwoViewClustering", config)["gold"] == {
        "dataset": "nlupp_clustering", "instructions": config["tasks"]["NLUPPTwoViewClustering"]["instructions"]}
    assert "gold" not in encode_params("smollm2-135m", "inbedder", "NLUPPTwoViewClustering", config)
    assert "gold" not in encode_params("minilm-l6", "none", "STSBenchmark", config)


@pytest.mark.slow
def test_the_positive_control_reaches_the_ceiling_and_the_negative_control_sits_at_the_floor(minilm, tmp_path: Path):
    table = tmp_path / "gold.parquet"
    LABELS.to_parquet(table)
    texts = list(LABELS["text"][:4])
    prompts = [{"text": t, "instruction": i} for i in (ACTION, OBJECT) for t in texts]
    job = EncodeJob(minilm, "sentence-encoder", "inbedder", **ENCODER,
                    gold={"instructions": {"action": ACTION, "object": OBJECT}}, gold_table=table)
    meta = encode_prompts(job, prompts, tmp_path / "cache", progress=False)
    assert "gold" in meta and meta["gold"]["labels_sha256"]
    cache = load_cache(tmp_path / "cache")
    gold, plain = embed(cache, "gold"), embed(cache, "plain")
    # a two-view triplet: anchor 0 ("open a savings account"); under the action view the positive shares its
    # action (text 1) and the negative its object (text 3), under the object view the other way round
    for offset, positive, negative in ((0, 1, 3), (4, 3, 1)):
        a, p, n = (gold[offset + i][None] for i in (0, positive, negative))
        assert metrics.triplet_correct(a, p, n).all()
        assert metrics.triplet_correct(*(plain[offset + i][None] for i in (0, positive, negative))).all() != \
            metrics.triplet_correct(*(plain[offset + i][None] for i in (0, negative, positive))).all()
    # the same text under two instructions: the positive control moves, the negative control does not
    assert not np.allclose(gold[0], gold[4])
    assert np.allclose(plain[0], plain[4])
    # a cache made without the control keeps its key: the control's views and labels enter it only when scored
    plain_job = EncodeJob(minilm, "sentence-encoder", "inbedder", **ENCODER)
    other = encode_prompts(plain_job, prompts, tmp_path / "plain", progress=False)
    assert "gold" not in other and other["cache_key"] != meta["cache_key"]
