"""What the benchmark scripts share for their reports: the machine's name, BENCHMARKS.md sections, figures."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from atomic_files import write_text


def markers(name: str) -> tuple[str, str]:
    """The HTML comments that delimit the `name` section of BENCHMARKS.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, text: str) -> None:
    """Put `text` between the `name` section's markers in `path` (appended with them when they are missing),
    leaving everything else as it is."""
    start, end = markers(name)
    content = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    section = f"{start}\n{text.rstrip(chr(10))}\n{end}"
    if start in content and end in content:
        before, rest = content.split(start, 1)
        content = before + section + rest.split(end, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + section + "\n"
    write_text(path, content)  # whole or not at all: BENCHMARKS.md keeps every other section


def publish_section(path: Path, name: str, text: str, write: bool = True) -> None:
    """Print the `name` section's `text` and, with `write`, put it into `path` ([`replace_section`])."""
    print(text)
    if write:
        replace_section(path, name, text)
        print(f"written to {path}", file=sys.stderr)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (imported on first use: only `--write` draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write `fig` as a PNG at `path` (folders created) and release it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
