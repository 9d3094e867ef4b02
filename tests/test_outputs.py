"""Tidy outputs: job progress as whole lines off a terminal, and ``tunnelscope layers``
columns that fit their longest entry."""

import io

from tunnelscope import joblog
from tunnelscope.commands.layers import print_columns


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_writes_whole_lines(monkeypatch):
    monkeypatch.setattr(joblog, "LINE_INTERVAL_S", 0.0)
    log = io.StringIO()
    for _ in joblog.progress_bar(range(3), desc="epoch 1/2", file=log, leave=False):
        pass
    bar = joblog.progress_bar(total=4, desc="epoch 2/2", file=log, leave=False)
    bar.update(4)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert [line.split(" [")[0] for line in text.splitlines()] == [
        "epoch 1/2: 1/3",
        "epoch 1/2: 2/3",
        "epoch 1/2: 3/3",
        "epoch 2/2: 4/4",
    ]


def test_progress_off_a_terminal_is_throttled_to_its_last_line():
    log = io.StringIO()
    bar = joblog.progress_bar(total=1000, desc="epoch 1/1", file=log, leave=False)
    for step in range(1000):
        bar.update()
        if step % 25 == 24:
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}")  # as the training loop does
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1: 1000/1000") and "loss=0.001" in lines[0]


def test_progress_on_a_terminal_is_tqdms_bar():
    bar = joblog.progress_bar(total=2, file=_Terminal(), leave=False)
    assert type(bar) is not joblog.LineProgress
    bar.close()


def test_layer_columns_fit_their_longest_entry(capsys):
    rows = [
        [1, "blocks.0.attn", "NonDynamicallyQuantizableLinear", "16x192", 192],
        [12, "features.0", "Conv2d", "64x32x32", 16384],
    ]
    print_columns(["index", "module", "type", "shape", "dim"], rows)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("index  module")
    for i, column in ((1, "module"), (2, "type"), (3, "shape")):  # each starts in one column on every line
        assert lines[1].index(rows[0][i]) == lines[2].index(rows[1][i]) == lines[0].index(column)
    assert len({len(line) for line in lines}) == 1  # index and dim right-aligned: every line ends in one column
