"""What the commands print outside a terminal: a line per tenth of the work, no redrawn progress bars."""

import io
import re

from mner_console import LineProgress, NoProgress, progress_bar


def test_a_log_gets_one_line_per_tenth_and_one_at_the_end():
    log = io.StringIO()
    bar = progress_bar(304, desc="train", unit="steps", file=log)
    assert isinstance(bar, LineProgress)  # a StringIO is not a terminal
    for step in range(304):
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    counts = [int(re.match(r"train: (\d+)/304 steps", line).group(1)) for line in lines]
    assert counts == [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 304]
    assert lines[0].startswith("train: 30/304 steps (10%), loss=0.0333, ") and "left" in lines[0]
    assert lines[-1].startswith("train: 304/304 steps (100%), loss=0.0033, ") and "left" not in lines[-1]


def test_a_resumed_count_reports_from_where_it_starts():
    log = io.StringIO()
    with progress_bar(100, desc="lines", unit="lines", initial=45, file=log) as bar:
        for _ in range(55):
            bar.update(1)
    counts = [int(re.match(r"lines: (\d+)/100", line).group(1)) for line in log.getvalue().splitlines()]
    assert counts == [50, 60, 70, 80, 90, 100]


def test_large_updates_small_totals_and_nothing_done():
    log = io.StringIO()
    with progress_bar(3, file=log, unit="blocks") as bar:
        bar.update(2)
        bar.update(1)
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == ["2/3 blocks (67%)", "3/3 blocks (100%)"]
    idle = io.StringIO()
    progress_bar(10, file=idle, initial=10).close()  # a resumed run that had finished: nothing new to report
    assert idle.getvalue() == ""
    assert isinstance(progress_bar(10, disable=True), NoProgress)
