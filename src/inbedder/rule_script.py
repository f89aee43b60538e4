"""What every script of workflow/scripts/ does around its one library call: log to the rule's log, name a failure."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


@contextlib.contextmanager
def rule_script(log_path: str | os.PathLike, name: str, task: str) -> Iterator[logging.Logger]:
    """Run a rule script's body with stderr and logging sent to `log_path`; yield the logger `name`.

    An exception is written to the log as "<task> failed" with its traceback, then raised again, so
    Snakemake marks the job failed and shows the log.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(log_path, "w", encoding="utf-8") as log_file, contextlib.redirect_stderr(log_file):
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        log = logging.getLogger(name)
        try:
            yield log
        except Exception:
            log.exception("%s failed", task)
            raise
        finally:
            root.handlers[:] = handlers  # as they were: a test runs several scripts in one process
            root.setLevel(level)
