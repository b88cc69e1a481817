"""CI's check of the README's first command: its printed comparison table equals the `all_results.json` it wrote.

    python3 .ci/check_demo_run.py <log of the command> <its output folder>

Standard library only (it runs outside the command's environment). Exit status 1 with the reason otherwise.
"""

import json
import re
import sys
from pathlib import Path

HEADER = "Demo corpus, entity F1 (%):  text-only  multimodal  difference"


def check(log: str, output: Path) -> list[str]:
    """The printed rows, compared with the results file; raises `ValueError` naming what disagrees."""
    lines = log.splitlines()
    if HEADER not in lines:
        raise ValueError(f"the command did not print its result table ({HEADER!r})")
    rows = lines[lines.index(HEADER) + 1 : lines.index(HEADER) + 3]
    summary = json.loads((output / "all_results.json").read_text())
    for row in rows:
        match = re.fullmatch(r"\s+(\w+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)", row)
        if match is None:
            raise ValueError(f"not a row of the table: {row!r}")
        split, *printed = match.groups()
        written = summary["demo_comparison"][split]
        expected = [100 * written[key] for key in ("text_only_f1", "multimodal_f1", "difference")]
        if any(abs(float(value) - want) > 0.006 for value, want in zip(printed, expected)):
            raise ValueError(f"{split}: printed {printed}, all_results.json has {expected}")
    if sorted(summary["results"]) != ["test", "validation"]:
        raise ValueError(f"all_results.json has results for {sorted(summary['results'])}")
    return rows


if __name__ == "__main__":
    try:
        rows = check(Path(sys.argv[1]).read_text(), Path(sys.argv[2]))
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
        sys.exit(f"the README's first command: {type(err).__name__}: {err}")
    print("the README's first command printed its table and wrote all_results.json:", HEADER, *rows, sep="\n")
