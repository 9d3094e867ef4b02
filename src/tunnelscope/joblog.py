"""Logging for workflow jobs: one log file per job, mirrored to the terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from tqdm import tqdm


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


# Between a bar's plain lines off a terminal: at most one per LINE_INTERVAL_S (its last line,
# when it closes, always comes).
LINE_INTERVAL_S = 30.0


class LineProgress(tqdm):
    """tqdm for a file that is not a terminal (a job's log, a cluster job's output): each
    refresh a whole line, no carriage-return frames, no bar glyphs; the last line when it closes
    (one per epoch for the training loop's per-epoch bars)."""

    def __init__(self, *args, **kwargs):
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.0), LINE_INTERVAL_S)
        kwargs.setdefault("bar_format", "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        # tqdm passes msg="" to erase a bar; the opening 0/N adds nothing to a log.
        if msg is None and self.n != self.initial:
            self.fp.write(f"{self}\n")
            self.fp.flush()
            self._last_line_n = self.n
        return False

    def clear(self, nolock=False):
        pass

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        # shown with the next line, not as a line of its own (every 25 steps in training)
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def close(self):
        if not self.disable and self.n != getattr(self, "_last_line_n", self.initial):
            self.display()
        self.leave = False  # the line above is the bar's last word: nothing to erase or repeat
        super().close()


def progress_bar(*args, file=None, **kwargs) -> tqdm:
    """A progress bar (tqdm's arguments): tqdm's own on a terminal, else ``LineProgress``."""
    stream = file if file is not None else sys.stderr
    cls = tqdm if getattr(stream, "isatty", lambda: False)() else LineProgress
    return cls(*args, file=stream, **kwargs)
