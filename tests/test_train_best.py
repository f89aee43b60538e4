"""The model a fine-tune keeps: the best held-out check by the recipe's metric, across stops and resumes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_train import Killed, _kill_at, _weights, data, job, smollm2_dir, tiny_model  # noqa: F401

import inbedder.train as train_module
from inbedder.heldout import CURVE, better, plateau, read_curve
from inbedder.train import train_model
from inbedder.train_best import best_folders, prune_best


def _step_aware(monkeypatch, f1: dict[int, float] | None = None, loss: dict[int, float] | None = None):
    """Patch the held-out checks to score by the step training is at; returns the callback that tracks it."""
    from transformers import TrainerCallback

    at = {"step": 0}

    class Track(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            at["step"] = state.global_step

    real_f1, real_loss = train_module.heldout_f1, train_module.heldout_loss
    if f1 is not None:

        def fake_f1(*args, **kwargs):
            _, answers = real_f1(*args, **kwargs)
            return f1[at["step"]], [f"answer of step {at['step']}"] * len(answers)

        monkeypatch.setattr(train_module, "heldout_f1", fake_f1)
    if loss is not None:
        def fake_loss(*args, **kwargs):
            real_loss(*args, **kwargs)
            return loss[at["step"]]

        monkeypatch.setattr(train_module, "heldout_loss", fake_loss)
    return Track()


def _same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name, tensor in wa.items():
        assert torch.allclose(tensor, wb[name], rtol=1e-5, atol=1e-6), name


def _straight(tmp_path, base, data, steps: int):  # noqa: F811
    """The folder of a plain run of `steps` steps (a constant rate: the first steps of any longer run)."""
    out = tmp_path / f"straight-{steps}"
    train_model(job("causal", max_steps=steps, batch_size=2), base, data["train"], data["heldout"], out)
    return out


def test_the_kept_model_is_the_best_check_when_training_runs_to_its_cap(
    tmp_path, data, smollm2_dir, monkeypatch  # noqa: F811
):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    track = _step_aware(monkeypatch, f1={0: 0.1, 1: 0.2, 2: 0.5, 3: 0.3, 4: 0.2})
    out = tmp_path / "out"
    summary = train_model(job("causal", max_steps=4, batch_size=2, heldout_every=1), base, data["train"],
                          data["heldout"], out, extra_callbacks=[track])
    assert summary["steps"] == 4 and summary["stopped_early"] is False
    assert (summary["kept_step"], summary["kept_metric"], summary["heldout_metric"]) == (2, 0.5, "token_f1")
    assert summary["heldout_token_f1_after"] == 0.5  # the kept model's, not the last step's 0.2
    assert summary["heldout_loss_after"] == pytest.approx(read_curve(out / CURVE)[2]["loss"], abs=1e-6)
    lines = (out / "heldout_answers.jsonl").read_text().splitlines()
    answers = [json.loads(line)["answer_after"] for line in lines]
    assert set(answers) == {"answer of step 2"}
    monkeypatch.undo()
    _same_weights(out, _straight(tmp_path, base, data, 2))
    last = _weights(_straight(tmp_path, base, data, 4))
    assert any(not torch.allclose(t, last[n]) for n, t in _weights(out).items())  # not the last step's model
    assert not (out / "checkpoints").exists()  # the best folders go with the checkpoints


def test_a_flat_stop_by_the_loss_keeps_the_lowest_loss(
    tmp_path, data, smollm2_dir, monkeypatch  # noqa: F811
):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    # step 1 sets the best loss, 2 and 3 do not fall below it by more than 0.1: patience 2 stops at step 3
    track = _step_aware(monkeypatch, loss={0: 5.0, 1: 3.0, 2: 2.95, 3: 3.5})
    the_job = replace(job("causal", max_steps=6, batch_size=2, heldout_every=1,
                          stop_when_flat={"patience": 2, "min_delta": 0.1}), heldout_metric="loss")
    out = tmp_path / "out"
    summary = train_model(the_job, base, data["train"], data["heldout"], out, extra_callbacks=[track])
    assert summary["steps"] == 3 and summary["stopped_early"] is True and summary["plateau_step"] == 1
    assert summary["stop_reason"].startswith(
        "stop_when_flat: the held-out loss fell by no more than 0.1 below its best (3.0000 at step 1)"
    )
    # the kept model is the lowest loss checked (step 2: lower than step 1, though not by min_delta)
    assert (summary["kept_step"], summary["kept_metric"], summary["heldout_metric"]) == (2, 2.95, "loss")
    assert [p["loss"] for p in summary["heldout_curve"]] == [5.0, 3.0, 2.95, 3.5]
    monkeypatch.undo()
    _same_weights(out, _straight(tmp_path, base, data, 2))


def test_a_resumed_run_still_knows_its_best_check(tmp_path, data, smollm2_dir, monkeypatch):  # noqa: F811
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    f1 = {0: 0.0, 1: 0.5, 2: 0.2, 3: 0.3, 4: 0.1, 5: 0.1}
    the_job = job("causal", max_steps=5, save_steps=2, batch_size=2, heldout_every=1)
    out = tmp_path / "out"
    with pytest.raises(Killed):  # killed in step 4: checkpoint-2, checks 0-3, the best (step 1) saved
        train_model(the_job, base, data["train"], data["heldout"], out,
                    extra_callbacks=[_step_aware(monkeypatch, f1=f1), _kill_at(4)])
    assert [p.name for p in best_folders(out / "checkpoints")] == ["best-1"]
    monkeypatch.undo()
    summary = train_model(the_job, base, data["train"], data["heldout"], out,
                          extra_callbacks=[_step_aware(monkeypatch, f1=f1)])
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 5
    assert (summary["kept_step"], summary["kept_metric"]) == (1, 0.5)
    monkeypatch.undo()
    _same_weights(out, _straight(tmp_path, base, data, 1))


def test_best_folders_a_resume_may_need_are_kept(tmp_path):
    for step in (1, 3, 4, 7):
        (tmp_path / f"best-{step}").mkdir()
    prune_best(tmp_path, 4)  # resumes from checkpoint-4 need best-4; best-7 lies after it
    assert [p.name for p in best_folders(tmp_path)] == ["best-4", "best-7"]
    prune_best(tmp_path, 2)
    assert [p.name for p in best_folders(tmp_path)] == ["best-4", "best-7"]


def test_better_and_the_plateau_read_the_metrics_direction():
    assert better(0.3, 0.2, "token_f1") and not better(0.3, 0.2, "loss")
    assert better(2.0, 2.5, "loss", 0.4) and not better(2.0, 2.5, "loss", 0.5)
    assert better(1.0, float("nan"), "loss") and not better(float("nan"), 1.0, "loss")
    points = [{"step": s, "f1": 0.0, "loss": x} for s, x in enumerate([4.0, 3.0, 2.99, 3.2])]
    flat = plateau(points, 2, 0.05, "loss")
    assert (flat.stop, flat.best_step, flat.best_value, flat.flat_steps) == (True, 1, 3.0, (2, 3))
    assert plateau(points, None, metric="loss").best_step == 2


def test_the_metric_alone_keeps_the_checkpoints(tmp_path):
    table = tmp_path / "train.jsonl"
    table.write_text("{}\n")
    checked = job("causal", heldout_every=5)
    key = train_module.run_key(checked, "base", table, False)
    assert train_module.run_key(replace(checked, heldout_metric="loss"), "base", table, False) == key
    assert "heldout_metric" not in key["job"]
