"""Batch prediction at scale (`mner_prediction`, `predict_mner`): streaming, sharding across `accelerate launch`
processes, resumable atomic output, and the predictions files of a training run.

The command runs in real subprocesses (one process, and two gloo processes under `accelerate launch --multi_gpu`)
on a tiny random model saved with `save_pipeline`, over a JSONL file with images and bad lines."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from seqeval.metrics import f1_score, precision_score, recall_score

import mner_prediction
import mner_runtime
from conftest import TWEET_SENTENCES
from processes import REPO_ROOT, child_env, run
from mner_evaluation import write_prediction_files
from mner_prediction import LineBlocks, PredictionJob, check_job, predict_file, scan_output
from span_utils import bio_to_spans, entity_scores
from tiny_models import assert_same_entities


# --- fixtures: a saved tiny model, a posts file with images and bad lines -----------------------------------------


@pytest.fixture(scope="module")
def pipe(saved_folder):
    """The pipeline loaded from the saved folder, as the command loads it (this module's own `pipe`)."""
    return mner_runtime.load_pipeline(str(saved_folder), "cpu")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "corrupt.png").write_bytes(b"not an image")
    return folder


# Of every 100 lines, 10 bad ones of every kind (line index % 100 -> the line, a fragment its error must have) ...
BAD_POSTS = {
    11: ('{"id": "b", "text": "broken', "ValueError: invalid JSON"),
    17: (json.dumps({"id": "s", "text": "Kevin \ud800 Durant"}), "'text' holds a lone surrogate U+D800 at character 6"),
    23: (json.dumps({"text": "x", "image": "missing.png"}), "FileNotFoundError"),
    29: (json.dumps({"id": "\udc00", "text": "x"}), "'id' holds a lone surrogate U+DC00 at character 0"),
    37: (json.dumps({"id": 1, "text": 5, "image": "0.png"}), "'text' must be a string, got int"),
    41: (json.dumps([1, 2]), "a line must be a JSON object, got list"),
    53: ("{}", "'text' must be a string, got nothing"),
    67: (json.dumps({"text": "y", "image": "corrupt.png"}), "corrupt.png"),
    71: (json.dumps({"id": {"post": ["\ud800"]}, "text": "z"}), "'id'['post'][0] holds a lone surrogate U+D800"),
    83: (json.dumps({"text": "z", "image": 3}), "'image' must be a file path or null, got 3"),
}
BLANK_POSTS = {59: "", 97: "   "}  # ... and 2 blank ones (skipped)


def posts_lines(count: int) -> list[str]:
    """`count` JSONL lines: texts with and without images and ids, 10% bad lines of every kind, blank lines too."""
    lines = []
    for index in range(count):
        record = {"id": f"post-{index}" if index % 5 else index, "text": TWEET_SENTENCES[index % len(TWEET_SENTENCES)]}
        if index % 7 == 3:
            del record["id"]
        if index % 3 == 0:
            record["image"] = f"{index % 4}.png"
        bad = BAD_POSTS.get(index % 100, (BLANK_POSTS.get(index % 100),))[0]
        lines.append(json.dumps(record) if bad is None else bad)
    return lines


def writable_id(line: str):
    """The `id` an output record of `line` carries: the input's, when it has one that UTF-8 can write."""
    try:
        given = json.loads(line)
        record_id = given.get("id") if isinstance(given, dict) else None
        json.dumps(record_id, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeEncodeError):
        return None
    return record_id


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("posts") / "posts.jsonl", posts_lines(300))


def command(saved_folder: Path, source: Path, target: Path, image_dir: Path, *extra: str, processes: int = 1):
    """`promptmner-predict ...` (one process: the installed console script) or
    `accelerate launch --multi_gpu ... -m predict_mner ...`."""
    if processes == 1:
        launcher = [str(Path(sys.executable).with_name("promptmner-predict"))]  # installed by `pip install -e .`
    else:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "-m", "predict_mner"]  # fmt: skip
    arguments = ["--model", str(saved_folder), "--input", str(source), "--output", str(target), "--image_dir",
                 str(image_dir), "--batch_size", "4", *extra]  # fmt: skip
    return launcher + arguments


def run_command(arguments: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    # One thread per process in every run (child_env's default), so that one and two processes compute bit for bit
    # the same.
    return run(arguments, cwd, expect=expect)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def reference(saved_folder, posts, image_dir, tmp_path_factory) -> bytes:
    """The output of one plain process (`promptmner-predict`)."""
    folder = tmp_path_factory.mktemp("reference")
    run_command(command(saved_folder, posts, folder / "entities.jsonl", image_dir), cwd=folder)
    return (folder / "entities.jsonl").read_bytes()


# --- reading and sharding -----------------------------------------------------------------------------------------


def test_reader_streams_lines_before_the_input_is_complete(tmp_path):
    """Blocks come out of a named pipe while its writer still holds the rest back: nothing reads the file whole."""
    fifo = tmp_path / "posts.jsonl"
    os.mkfifo(fifo)
    released, finished = threading.Event(), threading.Event()

    def writer():
        with open(fifo, "w", encoding="utf-8") as handle:
            handle.write("\n".join(json.dumps({"text": f"first {i}"}) for i in range(4)) + "\n")
            handle.flush()
            released.wait(timeout=1800)  # only a reader that waits for the end of the input waits this long
            handle.write(json.dumps({"text": "last"}) + "\n")
        finished.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    blocks = iter(LineBlocks(fifo, batch_size=2, load_image=str))
    first = next(blocks)
    assert not finished.is_set(), "the reader waited for the end of the input"
    assert [item["input"]["text"] for item in first] == ["first 0", "first 1"]
    released.set()
    rest = [item["input"]["text"] for block in blocks for item in block]
    assert rest == ["first 2", "first 3", "last"]
    thread.join(timeout=10)


@pytest.mark.parametrize("num_processes, num_workers, skip", [(1, 0, 0), (2, 2, 0), (3, 2, 6), (2, 2, 9)])
def test_blocks_are_shared_once_and_each_process_gets_them_in_order(tmp_path, num_processes, num_workers, skip):
    """Through real DataLoader workers: every non-blank line after `skip` lands in exactly one process, in order."""
    lines = [json.dumps({"text": f"t{i}"}) if i % 6 else " " for i in range(1, 52)]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    non_blank = [number for number, line in enumerate(lines, start=1) if line.strip()]
    shares = []
    for process in range(num_processes):
        dataset = LineBlocks(source, 3, str, None, process, num_processes, skip=skip)
        loader = mner_prediction.block_loader(dataset, num_workers)
        shares.append([[item["line"] for item in block] for block in loader])
    for blocks in shares:
        flat = [number for block in blocks for number in block]
        assert flat == sorted(flat) and all(len(block) == 3 for block in blocks[:-1])
    rounds = [number for blocks in zip(*[s + [[]] * (len(shares[0]) - len(s)) for s in shares]) for b in blocks
              for number in b]  # fmt: skip
    assert rounds == non_blank[skip:]  # round by round, the processes' blocks are consecutive
    with pytest.raises(ValueError, match="multiple of batch_size"):
        LineBlocks(source, 3, str, skip=4)


# --- arguments and existing files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 0}, "--batch_size"),
        ({"num_workers": -1}, "--num_workers"),
        ({"threshold": 1.5}, "--threshold"),
        ({"stride": -2}, "--stride"),
        ({"input": "absent.jsonl"}, "--input absent.jsonl is not a file"),
        ({"image_dir": "no_such_folder"}, "--image_dir"),
        ({"resume": True, "overwrite": True}, "exclude each other"),
        ({"output": "in.jsonl"}, "would overwrite the input"),
        ({"output": "link.jsonl"}, "would overwrite the input"),
        ({"output": "in.jsonl.partial"}, "would overwrite the input"),
        ({"output": "folder"}, "is a folder"),
        ({"output": "done.jsonl"}, "exists; pass --overwrite"),
        ({"output": "cut.jsonl"}, "an interrupted run left"),
    ],
)
def test_bad_arguments_are_named_before_anything_is_opened(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", ['{"text": "a"}'])
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    (tmp_path / "folder").mkdir()
    (tmp_path / "done.jsonl").write_text("kept\n")
    (tmp_path / "cut.jsonl.partial").write_text("kept\n")
    if change.get("output") == "in.jsonl.partial":
        (tmp_path / "in.jsonl").rename(tmp_path / "in.jsonl.partial")
        change = {**change, "input": "in.jsonl.partial", "output": "in.jsonl"}
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(ValueError, match=message):
        check_job(PredictionJob(**{"input": "in.jsonl", "output": "out.jsonl", **change}))
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--device", "cuda:99"], "--device cuda:99: this machine has"),
        (["--device", "gpu0"], "--device gpu0: not a device name"),
        (["--model", "./no_such_model"], "--model ./no_such_model: the folder does not exist"),
        (["--model", "{tmp}/gone/model"], "--model {tmp}/gone/model: the folder does not exist"),
    ],
)
def test_command_names_a_device_or_model_folder_it_cannot_use(tmp_path, monkeypatch, capsys, arguments, message):
    """Exit status 2 naming the option, before the model loads: no CUDA error deep in the first batch, no "malformed
    Hub repo id" for a folder that does not exist."""
    import predict_mner

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", ['{"text": "a"}'])
    (tmp_path / "model").mkdir()
    argv = ["--model", "model", "--input", "in.jsonl", "--output", "out.jsonl"]
    argv += [argument.format(tmp=tmp_path) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        predict_mner.parse_args(argv)
    assert exit_info.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


@pytest.mark.slow
def test_second_command_on_the_same_output_is_refused_then_a_killed_runs_lock_is_taken_over(
    saved_folder, posts, image_dir, reference, tmp_path
):
    """`promptmner-predict` twice on one output: the second exits with 2 at once, naming the first one's pid (not a
    crash at its end, nor "an interrupted run left ..."). The first is then killed (kill -9): its lock file stays,
    naming a process that is gone, and `--resume` takes it over and finishes the same file as an uninterrupted run."""
    target = tmp_path / "entities.jsonl"
    partial, lock = mner_prediction.partial_path(target), mner_prediction.lock_path(target)
    with open(tmp_path / "first.txt", "w") as log:
        first = subprocess.Popen(command(saved_folder, posts, target, image_dir), cwd=tmp_path, env=child_env(),
                                 stdout=log, stderr=log, start_new_session=True)  # fmt: skip
        try:
            while first.poll() is None and not (partial.exists() and partial.read_bytes().count(b"\n") >= 4):
                time.sleep(0.01)
            os.killpg(first.pid, signal.SIGSTOP)  # a live run that holds the output, frozen there for the test
            second = run_command(command(saved_folder, posts, target, image_dir), cwd=tmp_path, expect=2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert f"--output {target} is being written by another run (pid {first.pid} on " in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert lock.read_text().startswith(f"pid {first.pid} on ") and not target.exists()
    run_command(command(saved_folder, posts, target, image_dir, "--resume"), cwd=tmp_path)
    assert target.read_bytes() == reference and not lock.exists()


@pytest.mark.slow
def test_command_refuses_its_input_as_output_with_exit_status_2(saved_folder, posts, image_dir, tmp_path):
    link = tmp_path / "link.jsonl"
    link.symlink_to(posts)
    before = posts.read_bytes()
    done = run_command(command(saved_folder, posts, link, image_dir, "--overwrite"), cwd=tmp_path, expect=2)
    assert "--output" in done.stderr and "would overwrite the input file" in done.stderr
    assert posts.read_bytes() == before and not (tmp_path / "link.jsonl.partial").exists()


def test_existing_output_is_replaced_only_on_request(pipe, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps({"text": text}) for text in TWEET_SENTENCES[:3]])
    target = tmp_path / "out.jsonl"
    target.write_text("an earlier result\n")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        predict_file(pipe, PredictionJob(source, target, batch_size=2))
    assert target.read_text() == "an earlier result\n"
    counts = predict_file(pipe, PredictionJob(source, target, batch_size=2, overwrite=True))
    assert counts == {"lines": 3, "ok": 3, "errors": 0, "predicted": 3, "seconds": pytest.approx(counts["seconds"])}
    assert [r["line"] for r in read_records(target)] == [1, 2, 3]
    assert not list(tmp_path.glob("out.jsonl.*")), "the partial file and its state are gone"
    complete = target.read_bytes()
    counts = predict_file(pipe, PredictionJob(source, target, batch_size=2, resume=True))  # already complete
    assert (counts["lines"], counts["predicted"]) == (3, 0) and target.read_bytes() == complete


@pytest.mark.parametrize(
    "lines, ok, fail_on_error, status",
    [(0, 0, False, 0), (3, 3, True, 0), (3, 1, False, 0), (3, 1, True, 1), (3, 0, False, 1), (3, 0, True, 1)],
)
def test_exit_status(lines, ok, fail_on_error, status):
    counts = {"lines": lines, "ok": ok, "errors": lines - ok}
    assert mner_prediction.exit_status(counts, fail_on_error) == status


# --- the command: error records, input order, ids -----------------------------------------------------------------


@pytest.mark.slow
def test_command_writes_error_records_and_all_good_lines(saved_folder, pipe, image_dir, tmp_path):
    image_file = image_dir / "0.png"
    lines = [
        json.dumps({"id": "a", "text": TWEET_SENTENCES[0]}),
        '{"id": "b", "text": "broken',  # invalid JSON
        json.dumps({"id": "c", "text": TWEET_SENTENCES[1], "image": image_file.name}),
        json.dumps({"id": "d", "text": TWEET_SENTENCES[2], "image": "missing.jpg"}),
        "",  # blank: skipped
        json.dumps({"text": TWEET_SENTENCES[3], "image": None}),
        json.dumps({"id": "f", "image": image_file.name}),  # no text
        json.dumps([1, 2]),
        json.dumps({"id": 7, "text": TWEET_SENTENCES[4]}),
    ]
    source, target = write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "out" / "entities.jsonl"
    run_command(command(saved_folder, source, target, image_dir, "--batch_size", "3"), cwd=tmp_path)
    records = read_records(target)
    assert [r["line"] for r in records] == [1, 2, 3, 4, 6, 7, 8, 9]
    assert [r.get("id") for r in records] == ["a", None, "c", "d", None, "f", None, 7]
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {2, 4, 7, 8}
    assert errors[2].startswith("ValueError: invalid JSON")
    assert errors[4].startswith("FileNotFoundError") and "missing.jpg" in errors[4]
    assert "'text' must be a string" in errors[7]
    assert "JSON object" in errors[8]
    good = {r["line"]: r["entities"] for r in records if "entities" in r}
    expected = pipe(
        [
            TWEET_SENTENCES[0],
            {"text": TWEET_SENTENCES[1], "image": str(image_file)},
            TWEET_SENTENCES[3],
            TWEET_SENTENCES[4],
        ]
    )
    assert_same_entities([good[1], good[3], good[6], good[9]], expected)

    write_jsonl(source, ['{"text": 1}', "not json"])
    run_command(command(saved_folder, source, target, image_dir, "--overwrite"), cwd=tmp_path, expect=1)  # all failed
    assert len(target.read_text().splitlines()) == 2


@pytest.mark.slow
def test_command_writes_lone_surrogate_lines_as_error_records(saved_folder, image_dir, tmp_path):
    """A lone surrogate (`"\\ud800"` in JSON) in a line's text, id, nested id or image path fails that line only: its
    error names the field and the character, its record has no id when the id cannot be written, the run goes on."""
    lines = [
        json.dumps({"id": "a", "text": TWEET_SENTENCES[0]}),
        json.dumps({"id": "b", "text": "Kevin \ud800 Durant"}),
        json.dumps({"id": "c\udfff", "text": TWEET_SENTENCES[1]}),
        json.dumps({"id": {"post": [7, "\ud800"]}, "text": TWEET_SENTENCES[2]}),
        json.dumps({"id": "e", "text": TWEET_SENTENCES[3], "image": "\udc00.png"}),
        '{"id": "\\ud83d\\ude00", "text": "LeBron \\ud83d\\ude00 in Oakland"}',  # a surrogate pair: one emoji
        json.dumps({"text": TWEET_SENTENCES[4], "image": "0.png"}),
    ]
    source, target = write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "entities.jsonl"
    done = run_command(command(saved_folder, source, target, image_dir, "--batch_size", "3"), cwd=tmp_path)
    records = read_records(target)  # strict UTF-8
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.get("id") for r in records] == ["a", "b", None, None, "e", "\U0001F600", None]
    errors = {r["line"]: r["error"] for r in records if "error" in r}
    assert errors == {
        2: "ValueError: 'text' holds a lone surrogate U+D800 at character 6, which UTF-8 cannot encode",
        3: "ValueError: 'id' holds a lone surrogate U+DFFF at character 1, which UTF-8 cannot encode",
        4: "ValueError: 'id'['post'][1] holds a lone surrogate U+D800 at character 0, which UTF-8 cannot encode",
        5: "ValueError: 'image' holds a lone surrogate U+DC00 at character 0, which UTF-8 cannot encode",
    }
    assert all("entities" in records[index] for index in (0, 5, 6))
    assert "7 lines: 3 predicted, 4 errors" in done.stderr


@pytest.fixture
def one_thread():
    """Torch on one thread in this process for the test, as in the commands' subprocesses (`child_env`): on this
    shared 2-core machine two threads per process oversubscribe the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_bad_lines_under_load_give_one_record_per_line_in_order(pipe, posts, image_dir, reference, one_thread,
                                                                tmp_path):  # fmt: skip
    """300 lines, 10% bad of every kind (corrupt and missing images, bad JSON, bad or missing text, lone surrogates,
    empty objects): `promptmner-predict` (the reference run, batches of 4, one DataLoader worker) and the library in
    this process (batches of 7, no worker) give exactly one record per non-blank line, in input order, an error
    naming the fault exactly at the bad lines, and the pipeline's own entities at every other line."""
    lines = posts_lines(300)
    non_blank = [number for number, line in enumerate(lines, start=1) if line.strip()]
    bad = {number: BAD_POSTS[(number - 1) % 100][1] for number in non_blank if (number - 1) % 100 in BAD_POSTS}
    assert len(bad) == 30 and len(non_blank) == 294
    target = tmp_path / "entities.jsonl"
    counts = predict_file(pipe, PredictionJob(posts, target, image_dir=image_dir, batch_size=7, num_workers=0))
    assert (counts["lines"], counts["ok"], counts["errors"]) == (len(non_blank), len(non_blank) - len(bad), len(bad))

    good = [number for number in non_blank if number not in bad]
    inputs = []
    for number in good:
        record = json.loads(lines[number - 1])
        image = str(image_dir / record["image"]) if "image" in record else None
        inputs.append({"text": record["text"], "image": image})
    expected = pipe(inputs, batch_size=8)
    for name, output in [("promptmner-predict", reference.decode("utf-8")), ("predict_file", target.read_text())]:
        records = [json.loads(line) for line in output.splitlines()]
        assert [r["line"] for r in records] == non_blank, name
        errors = {r["line"]: r["error"] for r in records if "error" in r}
        assert set(errors) == set(bad), name
        for number, fragment in bad.items():
            assert fragment in errors[number], f"{name}, line {number}: {fragment!r} not in {errors[number]!r}"
        assert [r.get("id") for r in records] == [writable_id(lines[number - 1]) for number in non_blank], name
        assert_same_entities([r["entities"] for r in records if "entities" in r], expected)


# --- interruption and resume --------------------------------------------------------------------------------------


def test_interrupted_run_keeps_finished_blocks_and_resumes(pipe, tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(source, [json.dumps({"text": text}) for text in TWEET_SENTENCES[:5]])
    calls = []

    def crashing_pipe(inputs, **kwargs):
        calls.append(len(inputs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return pipe(inputs, **kwargs)

    crashing_pipe.processor = pipe.processor
    job = PredictionJob(source, target, model="tiny", batch_size=2, num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        predict_file(crashing_pipe, job)
    assert not target.exists(), "the output file only appears complete"
    records = read_records(mner_prediction.partial_path(target))
    assert [r["line"] for r in records] == [1, 2] and all("entities" in r for r in records)

    counts = predict_file(pipe, PredictionJob(source, target, model="tiny", batch_size=2, resume=True))
    assert (counts["lines"], counts["predicted"]) == (5, 3)
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    predict_file(pipe, PredictionJob(source, uninterrupted, model="tiny", batch_size=2))
    assert target.read_bytes() == uninterrupted.read_bytes()

    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        predict_file(crashing_pipe, PredictionJob(source, target, model="tiny", batch_size=2, overwrite=True))
    write_jsonl(source, [json.dumps({"text": text}) for text in TWEET_SENTENCES[:6]])  # the input changed
    with pytest.raises(ValueError, match="input_bytes was"):
        predict_file(pipe, PredictionJob(source, target, model="tiny", batch_size=2, resume=True))


def interrupted_run(pipe, source: Path, target: Path, crash_at: int = 3, **job) -> None:
    """A run of `source` into `target` whose pipeline raises KeyboardInterrupt at its `crash_at`-th block."""
    calls = []

    def crashing_pipe(inputs, **kwargs):
        calls.append(len(inputs))
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return pipe(inputs, **kwargs)

    crashing_pipe.processor = pipe.processor
    with pytest.raises(KeyboardInterrupt):
        predict_file(crashing_pipe, PredictionJob(source, target, model="tiny", batch_size=2, num_workers=0, **job))


def test_resume_refuses_an_input_edited_in_the_lines_it_keeps(pipe, tmp_path):
    """An edit that keeps the input's size (the first check) is found by the digests of the lines done: `--resume`
    names the first edited line and changes nothing; an edit after them resumes to the edited input's output."""
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"id": index, "text": text}) for index, text in enumerate(TWEET_SENTENCES[:7])]
    write_jsonl(source, lines)
    interrupted_run(pipe, source, target)  # blocks of lines 1-2 and 3-4 done
    partial, state = mner_prediction.partial_path(target), mner_prediction.state_path(target)
    assert [r["line"] for r in read_records(partial)] == [1, 2, 3, 4]
    assert len(state.read_text().splitlines()) == 1 + 4  # the settings, then one digest per record

    edited = lines.copy()
    edited[2] = edited[2].replace("Manchester", "Manchestre")  # same size, line 3 done
    write_jsonl(source, edited)
    before = {path: path.read_bytes() for path in (partial, state)}
    with pytest.raises(mner_prediction.RefusedError, match=r"--resume: line 3 of --input \S*in.jsonl is not what it was"):
        predict_file(pipe, PredictionJob(source, target, model="tiny", batch_size=2, resume=True))
    assert {path: path.read_bytes() for path in (partial, state)} == before

    edited = lines.copy()
    edited[5] = edited[5].replace("Apple", "Appel")  # same size, line 6 not done yet
    write_jsonl(source, edited)
    with open(state, "ab") as handle:  # a kill between a round's digests and its records leaves digests ahead
        handle.write(b'[5, "0123456789abcdef"]\n')
    predict_file(pipe, PredictionJob(source, target, model="tiny", batch_size=2, resume=True))
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    predict_file(pipe, PredictionJob(source, uninterrupted, model="tiny", batch_size=2))
    assert target.read_bytes() == uninterrupted.read_bytes()
    assert not list(tmp_path.glob("out.jsonl.*")), "the partial file, its state and the lock are gone"


def test_a_second_run_on_the_same_output_is_refused_at_its_start(pipe, tmp_path):
    """While a run holds `<output>.lock`, another run writing that output is refused before it opens anything,
    naming the first one's pid; a lock left by a killed run (no process holds it) is taken over."""
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(source, [json.dumps({"text": text}) for text in TWEET_SENTENCES[:3]])
    lock = mner_prediction.OutputLock(target, "--output").acquire()  # as the main process of a live run holds it
    try:
        with pytest.raises(mner_prediction.RefusedError, match=rf"--output \S*out.jsonl is being written by another "
                           rf"run \(pid {os.getpid()} on \S+, started [^;]+; lock file \S*out.jsonl.lock\)"):
            predict_file(pipe, PredictionJob(source, target, batch_size=2))
        assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl.lock"]
    finally:
        lock.release()
    mner_prediction.lock_path(target).write_text("pid 999999 on a-host, started 2026-01-01 00:00:00\n")  # stale
    counts = predict_file(pipe, PredictionJob(source, target, batch_size=2))
    assert counts["ok"] == 3 and not mner_prediction.lock_path(target).exists()


def strict_json(line: str):
    """`json.loads` that refuses NaN and Infinity, as standard JSON parsers do."""
    return json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}: {line}"))


def test_output_is_standard_json_and_unknown_keys_are_errors(pipe, tmp_path):
    """A NaN or 1e400 id and an unknown key make error records naming them; every output line is standard JSON."""
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(source, ['{"id": NaN, "text": "a"}', '{"id": 1e400, "text": "b"}', '{"id": [1, -Infinity], "text": 3}',
                         json.dumps({"id": "k", "text": "c", "img": "a.png"}), json.dumps({"id": 1.5, "text": "d"})])
    predict_file(pipe, PredictionJob(source, target, batch_size=2, num_workers=0))
    records = [strict_json(line) for line in target.read_text().splitlines()]
    assert [r.get("id") for r in records] == [None, None, None, "k", 1.5]
    assert records[0]["error"] == "ValueError: 'id' is NaN, which standard JSON cannot hold; give a number or a text"
    assert "'id' is Infinity" in records[1]["error"] and "'id'[1] is -Infinity" in records[2]["error"]
    assert records[3]["error"].startswith("ValueError: unknown keys ['img']") and "entities" in records[4]


def test_partial_output_keeps_its_complete_blocks_only(tmp_path):
    """A half-written last line and the records of an unfinished block are left out; a damaged line is an error."""
    partial = tmp_path / "out.jsonl.partial"
    records = [json.dumps({"line": n, "entities": []}) for n in (1, 2, 4, 5, 6)]
    partial.write_bytes(("\n".join(records) + '\n{"line": 7, "entit').encode())
    progress = scan_output(partial, block_size=2)
    assert (progress.records, progress.last_line) == (4, 5)
    assert partial.read_bytes()[: progress.offset].decode().splitlines() == records[:4]
    assert scan_output(partial, block_size=1).records == 5
    partial.write_text(records[0] + "\n" + '{"line": 2, "entities": [}\n' + records[2] + "\n")
    with pytest.raises(ValueError, match=r"out.jsonl.partial, line 2: not a JSON record"):
        scan_output(partial)
    partial.write_text(records[1] + "\n" + records[0] + "\n")
    with pytest.raises(ValueError, match=r"line 2: 'line' 1 does not follow 2"):
        scan_output(partial)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_file(saved_folder, posts, image_dir, reference, tmp_path):
    """kill -9 of a one-process run part way; `--resume` under two processes finishes the same file as an
    uninterrupted run, byte for byte."""
    target = tmp_path / "entities.jsonl"
    partial = mner_prediction.partial_path(target)
    with open(tmp_path / "stderr.txt", "w") as log:
        process = subprocess.Popen(command(saved_folder, posts, target, image_dir), cwd=tmp_path, env=child_env(),
                                   stdout=log, stderr=log, start_new_session=True)  # fmt: skip
        while process.poll() is None:  # until 40 records are written (or the run ends, which fails below)
            if partial.exists() and partial.read_bytes().count(b"\n") >= 40:
                break
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)  # the process and its DataLoader workers
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert not target.exists()
    done = partial.read_bytes().count(b"\n")
    assert 40 <= done < reference.count(b"\n")

    finished = run_command(command(saved_folder, posts, target, image_dir, "--resume", processes=2), cwd=tmp_path)
    assert target.read_bytes() == reference
    resumed_lines = reference.count(b"\n") - done // 4 * 4  # the kept blocks are not predicted again
    assert f"({resumed_lines} lines in this run" in finished.stderr


# --- several processes --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_write_the_same_file_as_one(saved_folder, posts, image_dir, reference, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on CPU), two DataLoader workers per process."""
    target = tmp_path / "entities.jsonl"
    done = run_command(command(saved_folder, posts, target, image_dir, "--num_workers", "2", processes=2), cwd=tmp_path)
    assert target.read_bytes() == reference
    records = read_records(target)
    lines = posts_lines(300)
    non_blank = [number for number, line in enumerate(lines, start=1) if line.strip()]
    assert [r["line"] for r in records] == non_blank  # input order, blank lines skipped
    errors = sum("error" in r for r in records)
    bad = sum((number - 1) % 100 in BAD_POSTS for number in non_blank)
    assert errors == bad and f"{len(non_blank)} lines: {len(non_blank) - bad} predicted, {bad} errors" in done.stderr
    assert "2 processes" in done.stderr
    for record in records:
        # passed through when present and writable (error records too), else absent
        assert record.get("id") == writable_id(lines[record["line"] - 1])
    assert sum("id" in record for record in records) > 200


# --- predictions files of a training run --------------------------------------------------------------------------


def random_sentence(rng: random.Random) -> tuple[list[str], list[str], list[tuple]]:
    """Words, gold tags (including `I-` after `O`, which opens an entity as in conlleval) and predicted spans."""
    length = rng.randint(1, 12)
    vocabulary = ["Kevin", "Durant", "in", "Oklahoma", "City", "RT", "@NBA", "New York", ""]  # odd words too
    words = [rng.choice(vocabulary) for _ in range(length)]
    gold = [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-OTHER"]) for _ in range(length)]
    predicted = [(start, end, label if rng.random() < 0.9 else "MISC", rng.random())
                 for start, end, label in bio_to_spans(gold) if rng.random() < 0.7]  # fmt: skip
    for start in range(length):  # a few spurious single-word entities on free words
        if rng.random() < 0.1 and all(not s <= start <= e for s, e, _, _ in predicted):
            predicted.append((start, start, "LOC", rng.random()))
    predicted.sort()
    return words, gold, predicted


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """Words, gold and predicted tags of a `word gold predicted` file, sentences separated by blank lines."""
    words, gold, predicted = [[]], [[]], [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line:
            words.append([]), gold.append([]), predicted.append([])
            continue
        word, gold_tag, predicted_tag = line.split(" ")
        words[-1].append(word), gold[-1].append(gold_tag), predicted[-1].append(predicted_tag)
    return words[:-1], gold[:-1], predicted[:-1]


def test_conll_file_scored_by_seqeval_gives_the_entity_scores(tmp_path):
    rng = random.Random(0)
    sentences = [random_sentence(rng) for _ in range(200)]
    tokens, gold, predicted = map(list, zip(*sentences))
    jsonl, conll = write_prediction_files(tmp_path / "run", "test", tokens, gold, predicted, ids=range(200))
    assert (jsonl.name, conll.name) == ("predictions_test.jsonl", "predictions_test.conll")
    words, gold_read, predicted_read = read_conll(conll)
    assert gold_read == gold and len(words) == 200
    assert words[0] == ["_" if not w.strip() else w.replace(" ", "_") for w in tokens[0]]
    expected = entity_scores([bio_to_spans(tags) for tags in gold], predicted)
    assert f1_score(gold_read, predicted_read) == pytest.approx(expected["f1"], abs=1e-12)
    assert precision_score(gold_read, predicted_read) == pytest.approx(expected["precision"], abs=1e-12)
    assert recall_score(gold_read, predicted_read) == pytest.approx(expected["recall"], abs=1e-12)
    assert 0.05 < expected["f1"] < 0.95

    records = read_records(jsonl)
    assert [r["id"] for r in records] == list(range(200))
    for record, (words_, tags, spans) in zip(records, sentences):
        assert record["tokens"] == words_ and record["text"] == " ".join(words_)
        assert [(e["word"], e["entity_group"]) for e in record["gold"]] == [
            (" ".join(words_[s : e + 1]), label) for s, e, label in bio_to_spans(tags)
        ]
        assert [(e["word"], e["entity_group"], e["score"]) for e in record["predicted"]] == [
            (" ".join(words_[s : e + 1]), label, score) for s, e, label, score in spans
        ]
        for entity in record["gold"] + record["predicted"]:
            assert record["text"][entity["start"] : entity["end"]] == entity["word"]
    with pytest.raises(ValueError, match="one entry per sentence"):
        write_prediction_files(tmp_path, "dev", tokens, gold[:-1], predicted)


# --- the benchmark script -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_writes_its_section(tmp_path):
    """`benchmarks/prediction_scale.py` on tiny settings: its section keeps the rest of the file, has a row per
    setting, says for each number of processes how the default compares with the best setting (the ratio of its
    rows), and has one memory row per input size."""
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nkept text\n")
    arguments = [sys.executable, str(REPO_ROOT / "benchmarks" / "prediction_scale.py"), "--lines", "8",
                 "--batch_size", "4", "--repeats", "1", "--models", "demo (16 prompts)", "--loads", "quiet",
                 "--memory_lines", "40,80", "--memory_batch_size", "8", "--output", str(output)]  # fmt: skip
    run(arguments, tmp_path, env=child_env(hide_extras=False))  # the benchmarks' extras (figures) are installed
    text = output.read_text()
    assert text.startswith("# Benchmarks\n\nkept text\n")
    body = text.split("<!-- prediction-scale:start -->")[1].split("<!-- prediction-scale:end -->")[0]
    rows = re.findall(r"^\| demo \(16 prompts\) \| quiet \| (\d) \| ([^|]+?) \| ([0-9.]+) \|$", body, re.M)
    settings = [(processes, setting.removesuffix(" (best)")) for processes, setting, _ in rows]
    assert settings[1] == ("1", "--num_threads 1") and len(rows) == 7
    # the default rows say what the command chose (one round here), read from its summary line; the counts depend
    # on the machine's load
    for processes, setting in settings:
        if setting.startswith("default"):
            assert re.fullmatch(r"default \(chose (1 thread|(?!1 )\d+ threads), (1 worker|0 workers)\)", setting), setting
    for processes in ("1", "2"):
        rates = {setting: float(rate) for count, setting, rate in rows if count == processes}
        default = next(rate for setting, rate in rates.items() if setting.startswith("default"))
        ratio = re.search(rf"quiet, {processes} process(es)?: default / best by hand = \*\*([0-9.]+)\*\*", body)
        assert float(ratio.group(2)) == pytest.approx(default / max(rates.values()), abs=0.006)
    assert re.search(r"are (NOT )?identical byte for byte", body)  # equality itself: the tests above, 1 thread each
    sizes = re.findall(r"^\| (\d+) \| [0-9.]+ MB \| [0-9.]+ MB \| \d+ \| (\d+) MB \| (\d+) MB \|$", body, re.M)
    assert [int(size) for size, _, _ in sizes] == [40, 80] and all(int(rss) > 50 for _, rss, _ in sizes)


def test_benchmark_bad_lines_input_and_check(pipe, one_thread, tmp_path):
    """The input of `prediction_scale.py --bad_lines` (every kind of bad line) and its check of the output: a real
    output passes with one error record per kind; a record missing, two swapped, a bad line predicted or a good line
    failed make the check fail."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prediction_scale", REPO_ROOT / "benchmarks" / "prediction_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    images, source, target = tmp_path / "images", tmp_path / "posts.jsonl", tmp_path / "entities.jsonl"
    bench.write_images(images, 4, size=(64, 48))
    count = 4 * len(bench.BAD_KINDS)
    bad = bench.write_bad_posts(source, images, count, bad_every=4, num_images=4)
    assert sorted(bad) == list(range(4, count + 1, 4)) and sorted(bad.values()) == list(range(len(bench.BAD_KINDS)))
    predict_file(pipe, PredictionJob(source, target, image_dir=images, batch_size=5, num_workers=0))
    assert bench.check_one_record_per_line(target, count, bad) == {name: 1 for name, _, _ in bench.BAD_KINDS}

    records = target.read_text(encoding="utf-8").splitlines()
    first_good = json.loads(records[0])
    broken = {
        "a record missing": records[:-1],
        "two records swapped": [records[1], records[0], *records[2:]],
        "a bad line predicted": [*records[:3], json.dumps({"line": 4, "entities": []}), *records[4:]],
        "a good line failed": [json.dumps({"line": 1, "id": first_good["id"], "error": "ValueError: x"}), *records[1:]],
    }
    for name, lines in broken.items():
        write_jsonl(target, lines)
        with pytest.raises(RuntimeError):
            bench.check_one_record_per_line(target, count, bad)


def test_a_missing_folder_named_like_a_repo_id_is_named_as_a_folder(tmp_path, monkeypatch):
    """`outputs/demo` is a folder to its user and a valid repo id to the Hub client: when neither is there, the error
    says first that there is no such folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for trust_remote_code in (False, True):
        with pytest.raises(OSError, match=r"^outputs/demo: there is no such folder here, and loading it as a Hub"):
            mner_runtime.load_pipeline("outputs/demo", "cpu", trust_remote_code=trust_remote_code)
