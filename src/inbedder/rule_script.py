"""Around the one library call of every workflow/scripts/ script: the rule's log, a failure named in it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


@contextlib.contextmanager
def rule_script(log_path: str | os.PathLike, name: str, task: str) -> Iterator[logging.Logger]:
    """Send stderr and logging to `log_path`, yield logger `name`; a failure is logged as "<task> failed"."""
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
