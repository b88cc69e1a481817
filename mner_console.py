"""What the commands print while they work (package only): a live progress bar in a terminal, a few plain lines in a
log file or CI.

tqdm redraws its bar with carriage returns; in a terminal that is one line, but a log file keeps every redraw (a demo
run wrote about 600 of them, plus a nested "Writing model shards" bar at every save). So:

- [`progress_bar`]: a tqdm bar when the stream is a terminal, else a [`LineProgress`] that writes one line at every 10%
  of the total (and at the end);
- [`quiet_library_progress_bars`]: transformers' own bars (loading and writing weights, instant for this package's
  internal saves) always off; datasets' and huggingface_hub's off outside a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return hasattr(stream, "isatty") and stream.isatty()


def _duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class LineProgress:
    """A progress report for logs: `desc: 61/304 step (20%), loss=0.1234, 40 s elapsed, about 2 min 40 s left`,
    one line each time another tenth of `total` is done, and one at the end (`close`).

    The subset of tqdm's interface that the commands use: `update(n)`, `set_postfix(**values)`, `close()`, and use
    as a context manager.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it", initial: int = 0, file: TextIO | None = None,
                 fraction: float = 0.1):  # fmt: skip
        self.total, self.desc, self.unit, self.count = max(0, int(total)), desc, unit, int(initial)
        self.file = sys.stderr if file is None else file
        self.step = max(1, round(self.total * fraction))  # units between two lines
        self.next_report = (self.count // self.step + 1) * self.step
        self.postfix: dict[str, Any] = {}
        self.started, self.initial, self.closed = time.perf_counter(), self.count, False

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.next_report and self.count < self.total:
            self.next_report = (self.count // self.step + 1) * self.step
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.count > self.initial or self.total == 0:
                self._write()

    def line(self) -> str:
        """The current report, without its line end."""
        elapsed = time.perf_counter() - self.started
        percent = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc + ': ' if self.desc else ''}{self.count}/{self.total} {self.unit}{percent}"]
        parts += [f"{name}={value}" for name, value in self.postfix.items()]
        parts.append(f"{_duration(elapsed)} elapsed")
        done = self.count - self.initial
        if 0 < done and self.count < self.total:
            parts.append(f"about {_duration(elapsed / done * (self.total - self.count))} left")
        return ", ".join(parts)

    def _write(self) -> None:
        print(self.line(), file=self.file, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class NoProgress:
    """A progress report that writes nothing (processes other than the main one)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        pass


def progress_bar(total: int, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False,
             file: TextIO | None = None):  # fmt: skip
    """A tqdm bar on a terminal, a [`LineProgress`] elsewhere, a [`NoProgress`] when `disable`."""
    if disable:
        return NoProgress()
    file = sys.stderr if file is None else file
    if is_terminal(file):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, file=file)


def quiet_library_progress_bars() -> None:
    """transformers' progress bars off; datasets' and huggingface_hub's too unless stderr is a terminal."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if not is_terminal():
        import datasets
        import huggingface_hub

        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
