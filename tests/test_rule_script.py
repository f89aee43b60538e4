"""The frame of every workflow script: logging and stderr into the rule's log, a failure named there."""

from __future__ import annotations

import logging
import sys

import pytest

from inbedder.rule_script import rule_script


def test_logging_and_stderr_go_to_the_rules_log(tmp_path):
    path = tmp_path / "job.log"
    with rule_script(path, "some_rule", "doing the job") as log:
        log.info("%d rows", 3)
        logging.getLogger("inbedder.other").warning("from the library")
        print("a library's progress bar", file=sys.stderr)
    text = path.read_text(encoding="utf-8")
    assert "some_rule 3 rows" in text and "inbedder.other from the library" in text
    assert "a library's progress bar" in text


def test_a_failure_is_named_with_its_traceback_and_raised(tmp_path):
    path = tmp_path / "job.log"
    with pytest.raises(KeyError, match="missing"), rule_script(path, "some_rule", "encoding m on t"):
        raise KeyError("missing")
    text = path.read_text(encoding="utf-8")
    assert "some_rule encoding m on t failed" in text
    assert "Traceback" in text and "KeyError: 'missing'" in text
