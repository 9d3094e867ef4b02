"""Logging for workflow jobs: one log file per job, mirrored to the terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def job_logging(logfile: str | None):
    """Send the library's log records to ``logfile`` and stderr; log any crash before raising."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("tunnelscope")
    root.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    try:
        yield root
    except Exception:
        root.exception("job failed")
        raise
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
