"""Files and folders written whole (package only): the one home of write-then-rename.

Every file and folder this package writes outside a model's own `save_pretrained` is first written beside its target
as `<target>.partial` and then renamed over it, so a process killed at any point leaves the old file or the new one,
never a half-written one; a full disk or any other error removes the partial file and leaves the old one as it was.

- [`replacing`]: the context manager under the file helpers: yields the partial path, renames it over the target
  when the block ends without error, removes it otherwise.
- [`write_text`], [`write_json`], [`write_lines`], [`copy_file`]: the common cases.
- [`fresh_partial_folder`], [`replace_folder`]: a folder written whole (a checkpoint, a best-dev model). Putting it
  in place takes two renames (the old folder aside, the new one in); a process killed between them leaves the old
  folder at `<target>.old`, which the next [`replace_folder`] or [`recover_folder`] puts back first.

A leftover `<target>.partial` of a killed process is overwritten by the next write of the same target.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"


def partial_path(target: str | os.PathLike) -> Path:
    """`<target>.partial`: where `target` is written before it is renamed into place."""
    target = Path(target)
    return target.with_name(target.name + PARTIAL_SUFFIX)


@contextmanager
def replacing(target: str | os.PathLike) -> Iterator[Path]:
    """Write a file whole: the block writes the yielded path (`<target>.partial`, in the target's folder, which is
    created), which then replaces `target` in one rename; if the block raises, it is removed and `target` is left
    as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 to `target`, whole, its line ends as they are (on every platform)."""
    with replacing(target) as partial:
        partial.write_text(text, encoding="utf-8", newline="")


def write_json(target: str | os.PathLike, value: Any, **dumps_kwargs: Any) -> None:
    """`value` as indented JSON to `target`, whole (`dumps_kwargs` go to `json.dumps`, e.g. `ensure_ascii=False`)."""
    write_text(target, json.dumps(value, **{"indent": 2, **dumps_kwargs}))


def write_lines(target: str | os.PathLike, lines: Iterable[str]) -> None:
    """Each of `lines` and a line end to `target`, whole; `lines` may be a generator (streamed to disk)."""
    with replacing(target) as partial, open(partial, "w", encoding="utf-8", newline="") as handle:
        for line in lines:
            handle.write(line + "\n")


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A copy of `source`'s bytes at `target`, whole."""
    with replacing(target) as partial:
        shutil.copyfile(source, partial)


def fresh_partial_folder(target: str | os.PathLike) -> Path:
    """`<target>.partial`, emptied of what a killed process may have left there, to write the new folder into."""
    partial = partial_path(target)
    if partial.exists():
        shutil.rmtree(partial)
    return partial


def recover_folder(target: str | os.PathLike) -> None:
    """Undo what a process killed inside [`replace_folder`] left: put `<target>.old` back when `target` is missing
    (killed between the two renames), else remove it (killed before removing it)."""
    target = Path(target)
    old = target.with_name(target.name + OLD_SUFFIX)
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old)
    else:
        old.rename(target)


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `new` at `target`: an existing `target` is moved aside to `<target>.old` first and
    removed last, so that at every instant one complete folder is at `target` or at `<target>.old`."""
    new, target = Path(new), Path(target)
    recover_folder(target)
    old = target.with_name(target.name + OLD_SUFFIX)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)
