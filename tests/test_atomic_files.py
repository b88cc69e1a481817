"""Files and folders written whole (`atomic_files`): after an error or a SIGKILL at any step, the target holds the old
content or the new one, never part of either, and the next write or recovery cleans up."""

import json
import os
import signal
import sys

import pytest

import atomic_files
from atomic_files import copy_file, partial_path, recover_folder, replace_folder, write_json, write_lines, write_text
from processes import run


def test_each_helper_writes_its_target_whole(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    write_text(target, "one\r\ntwo\n")
    assert target.read_bytes() == b"one\r\ntwo\n"  # line ends as given, on every platform
    write_json(tmp_path / "a.json", {"é": [1, 2]}, ensure_ascii=False)
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == {"é": [1, 2]}
    write_lines(tmp_path / "a.lines", (str(index) for index in range(3)))
    assert (tmp_path / "a.lines").read_text() == "0\n1\n2\n"
    copy_file(target, tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_bytes() == target.read_bytes()
    assert not list(tmp_path.rglob("*.partial"))


def test_an_error_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"f1": 0.5})

    def lines():
        yield "first"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_lines(target, lines())
    with pytest.raises(TypeError):
        write_json(target, {"f1": object()})
    assert json.loads(target.read_text()) == {"f1": 0.5}
    assert not partial_path(target).exists()


KILLED_WHILE_WRITING = """
import os, signal, sys
from atomic_files import write_lines

def lines():
    for index in range(1000):
        if index == 500:
            os.kill(os.getpid(), signal.SIGKILL)
        yield f"new line {index}"

write_lines(sys.argv[1], lines())
"""


@pytest.mark.slow
def test_a_process_killed_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "predictions.conll"
    write_text(target, "old\n")
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WHILE_WRITING)
    done = run([sys.executable, str(script), str(target)], tmp_path, expect=None)
    assert done.returncode == -signal.SIGKILL
    assert target.read_text() == "old\n"
    assert partial_path(target).exists()  # what the killed writer left
    write_text(target, "new\n")  # the next write of the same target takes its place
    assert target.read_text() == "new\n" and not partial_path(target).exists()


KILLED_WHILE_REPLACING = """
import os, signal, sys
from pathlib import Path
import atomic_files

renames = 0
rename = Path.rename

def rename_then_maybe_die(self, target):
    global renames
    renames += 1
    result = rename(self, target)
    if renames == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    return result

Path.rename = rename_then_maybe_die
atomic_files.replace_folder(sys.argv[1], sys.argv[2])
"""


def make_folder(path, content):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(content)
    return path


def content(path):
    return (path / "model.safetensors").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("killed_after_renames", [1, 2])
def test_a_process_killed_between_the_renames_of_a_folder_leaves_a_whole_one(tmp_path, killed_after_renames):
    """Killed after the old folder went aside (1) or after the new one came in (2): one whole folder is at the
    target or at `<target>.old`; the next replacement or `recover_folder` puts the right one in place."""
    target = make_folder(tmp_path / "best_model", "old")
    new = make_folder(tmp_path / "best_model.partial", "new")
    script = tmp_path / "replacer.py"
    script.write_text(KILLED_WHILE_REPLACING)
    done = run([sys.executable, str(script), str(new), str(target), str(killed_after_renames)], tmp_path, expect=None)
    assert done.returncode == -signal.SIGKILL
    old = tmp_path / "best_model.old"
    if killed_after_renames == 1:
        assert not target.exists() and content(old) == "old" and content(new) == "new"
        recover_folder(target)  # what a resumed run does first (recover_training_state): the previous one is back
        assert content(target) == "old" and not old.exists()
        os.rename(target, old)  # as the kill left it again, then the save is retried
        replace_folder(new, target)
        assert content(target) == "new"
    else:
        assert content(target) == "new" and content(old) == "old"
        recover_folder(target)
        assert content(target) == "new"
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == ["best_model"]


def test_replacing_a_folder_that_is_not_there_yet(tmp_path):
    new = make_folder(tmp_path / "step_4.partial", "weights")
    replace_folder(new, tmp_path / "step_4")
    assert content(tmp_path / "step_4") == "weights" and not new.exists()
    recover_folder(tmp_path / "step_4")  # nothing to recover: nothing changes
    assert content(tmp_path / "step_4") == "weights"
    assert atomic_files.fresh_partial_folder(tmp_path / "step_4") == tmp_path / "step_4.partial"
