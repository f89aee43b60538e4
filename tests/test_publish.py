"""Publishing a finished run as the reproduction of record (docs/results/<run>/)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from inbedder.files import sha256_file
from inbedder.publish import PublishError, main, publish


def finished_run(root: Path) -> Path:
    run = root / "results" / "rec"
    (run / "report").mkdir(parents=True)
    (run / "report" / "index.html").write_text("<html>report</html>")
    pd.DataFrame({"model": ["m"], "value": [0.5]}).to_csv(run / "scores.csv", index=False)
    (run / "skipped.csv").write_text("task,reason\n")
    summary = {"run": "rec", "generated": "2026-11-30 20:00 UTC", "git": {"commit": "abc123", "dirty": "no"},
               "config_sha256": "c0ffee", "scores_sha256": sha256_file(run / "scores.csv"),
               "verdicts": {"Claim 1": {"offline analogs": "supported", "paper tasks": "not run"}}}
    (run / "report" / "summary.json").write_text(json.dumps(summary))
    for name in ("smollm2-135m-inbedder", "smollm2-135m-inbedder@1"):
        folder = run / "models" / name
        folder.mkdir(parents=True)
        (folder / "train_summary.json").write_text(json.dumps({
            "steps": 250, "settings": {"max_steps": 250}, "seconds_per_step": 3.21,
            "resumed_from_step": 150 if name.endswith("@1") else 0,
            "heldout_curve": [{"step": 0, "f1": 0.058}, {"step": 250, "f1": 0.254}]}))
        (folder / "train_log.csv").write_text("step,loss\n1,2.0\n")
        (folder / "heldout_curve.csv").write_text("step,heldout_token_f1,seconds\n0,0.1,1\n")
        (folder / "model.safetensors").write_bytes(b"weights are not published")
        bench = run / "benchmarks" / "train" / f"{name}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text("s\th:m:s\tmax_rss\n120.0\t0:02:00\t900\n")
    bench = run / "benchmarks" / "encode" / "smollm2-135m-inbedder" / "T.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n30.0\t0:00:30\t700\n")
    return run


def test_publish_copies_the_record_with_its_provenance(tmp_path):
    run = finished_run(tmp_path)
    dest = publish(run, tmp_path / "docs" / "results" / "rec")
    assert (dest / "index.html").read_text() == "<html>report</html>"
    assert sorted(p.name for p in (dest / "training").iterdir()) == ["smollm2-135m-inbedder",
                                                                     "smollm2-135m-inbedder@1"]
    assert not list(dest.rglob("*.safetensors"))  # curves and summaries, never weights
    assert (dest / "training" / "smollm2-135m-inbedder@1" / "heldout_curve.csv").is_file()
    times = pd.read_csv(dest / "stage_times.csv")
    assert times.groupby("stage")["seconds"].sum().to_dict() == {"encode": 30.0, "train": 240.0}
    readme = (dest / "README.md").read_text()
    for text in ("`abc123`", "`c0ffee`", "| Claim 1 | supported | not run |", "| train | 2 | 4.0 |", "| all | 3 | 4.5 |",
                 "| smollm2-135m-inbedder@1 | 250 | step cap | 0: 5.8, 250: 25.4 | 3.21 | 150 |",
                 "has a benchmark of its last sitting only"):
        assert text in readme
    # publishing again replaces the folder
    (dest / "stale.txt").write_text("x")
    publish(run, dest)
    assert not (dest / "stale.txt").exists()


def test_an_unfinished_or_stale_run_is_refused(tmp_path, capsys):
    run = finished_run(tmp_path)
    pd.DataFrame({"model": ["m"], "value": [0.6]}).to_csv(run / "scores.csv", index=False)
    with pytest.raises(PublishError, match="rendered from another scores.csv"):
        publish(run, tmp_path / "out")
    (run / "report" / "summary.json").unlink()
    assert main([str(run), str(tmp_path / "out")]) == 2
    assert "summary.json is missing: finish the run first" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
