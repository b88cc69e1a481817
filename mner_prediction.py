"""Batch prediction over JSONL files at any scale.

This is the library behind `promptmner-predict` and `accelerate launch -m predict_mner` (see `predict_mner.py`):

- **Reading** ([`read_lines`], [`parse_line`]): the input is streamed line by line, never loaded whole. A line is
  `{"text": str, "image": path | null, "id": any}`; a bad line (invalid JSON, no text, an unknown key, a missing or
  unreadable image, an image URL, a lone surrogate such as `"\\ud800"` in its id, text or image, which UTF-8 cannot
  write, an id that standard JSON cannot hold such as `NaN` or `1e400`...) becomes an error record naming its line
  and the field.
- **Sharding** ([`LineBlocks`]): the non-blank lines not done yet are cut into blocks of `batch_size` lines.
  Block `k` belongs to process `k % num_processes` (the processes of any `accelerate launch` topology), and within
  that process to DataLoader worker `j % num_workers`, where `j` counts the process's own blocks; the worker parses
  the lines and decodes their images, so the process only runs the model. Every process (and worker) reads the
  whole file but parses only its own lines.
- **Rounds** ([`predict_rounds`]): in each round every process predicts one block on its own device, and
  Accelerate's `gather_object` brings the records to the main process, which writes them in input order. A round's
  blocks are consecutive and every block is the same batch as in a one-process run with the same `batch_size`, so
  the output is the same file, line for line (byte for byte where the devices compute alike: tested on CPU).
- **Output** ([`OutputLock`], [`open_output`], [`OutputFiles`]): the main process holds `<output>.lock` (a second
  run writing the same output is refused at its start, naming the first one's pid), appends whole rounds to
  `<output>.partial` (one write, flushed and synced per round) and renames it to `<output>` at the end, so the
  output file is never half written. Before each round's records it appends their input lines' digests to the
  state file `<output>.partial.json` (first line: the run's settings). `resume=True` keeps the longest prefix of
  complete blocks of the partial file whose input lines still have their recorded digests ([`check_state`]: an
  edited line is named) and continues after it, with any number of processes: no line lost, none duplicated, no
  half line, no stale record. Memory stays bounded by the batch size: a round's records, and at most two blocks
  per DataLoader worker waiting.

Every output record has `line` (1-based line number in the input) and, when the input line has one that can be
written, `id`, then
either `entities` (the `multimodal-ner` pipeline's output) or `error` (`"ExceptionType: message"`).

"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from atomic_files import write_text
from clip_promptmner import image_file_path, load_image
from mner_runtime import main_process_value
from output_lock import OutputLock, RefusedError, check_not_locked, lock_path
from pipeline_promptmner import available_cores, idle_cpu_cores, threads_for_idle_cores
from processing_promptmner import check_utf8_text

PARTIAL_SUFFIX = ".partial"
STATE_SUFFIX = ".partial.json"
LINE_KEYS = ("text", "image", "id")


# ----------------------------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PredictionJob:
    """What to predict and where to write it.

    Args:
        input (`Path`): JSONL file, one `{"text", "image", "id"}` object per line (blank lines are skipped).
        output (`Path`): JSONL file to write; `<output>.partial` and `<output>.partial.json` hold a run in progress.
        model (`str`): the model folder or repo id (recorded so that a resumed run uses the same model).
        image_dir (`Path`, *optional*): folder of relative image paths (default: the current directory).
        batch_size (`int`): input lines per block, and chunks per model forward pass.
        num_workers (`int`, *optional*): DataLoader workers per process that parse lines and decode images (0:
            in-process; None: [`default_num_workers`] when the run starts).
        stride (`int`, *optional*), threshold (`float`, *optional*): passed to the pipeline.
        resume (`bool`): continue an interrupted run's `<output>.partial`.
        overwrite (`bool`): start over even if `<output>` or `<output>.partial` exists.
    """

    input: Path
    output: Path
    model: str = ""
    image_dir: Path | None = None
    batch_size: int = 16
    num_workers: int = 1
    stride: int | None = None
    threshold: float | None = None
    resume: bool = False
    overwrite: bool = False
    call_kwargs: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.input, self.output = Path(self.input), Path(self.output)
        self.image_dir = Path(self.image_dir) if self.image_dir is not None else None
        settings = {"stride": self.stride, "threshold": self.threshold}
        self.call_kwargs = {key: value for key, value in settings.items() if value is not None}

    def fingerprint(self) -> dict:
        """What a resumed run must share with the interrupted one for the output to be one run's output."""
        return {
            "input": str(self.input.resolve()),
            "input_bytes": self.input.stat().st_size,
            "model": str(self.model),
            "image_dir": str(self.image_dir.resolve()) if self.image_dir is not None else None,
            **{key: getattr(self, key) for key in ("stride", "threshold")},
        }


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def state_path(output: Path) -> Path:
    return output.with_name(output.name + STATE_SUFFIX)


def check_job(job: PredictionJob) -> None:
    """Validate the job before anything is opened; `ValueError` names the argument."""
    if job.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {job.batch_size}")
    if job.num_workers is not None and job.num_workers < 0:
        raise ValueError(f"--num_workers must be >= 0, got {job.num_workers}")
    if job.stride is not None and job.stride < 0:
        raise ValueError(f"--stride must be >= 0 (words), got {job.stride}")
    if job.threshold is not None and not 0.0 <= job.threshold <= 1.0:
        raise ValueError(f"--threshold must be a probability in [0, 1], got {job.threshold}")
    if job.resume and job.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if not job.input.is_file():
        raise ValueError(f"--input {job.input} is not a file")
    if job.image_dir is not None and not job.image_dir.is_dir():
        raise ValueError(f"--image_dir {job.image_dir} is not a folder")
    check_output_paths(job)


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_output_paths(job: PredictionJob) -> None:
    """The output must not be (a link to) the input, a folder, or an earlier result that was not meant to go."""
    output, partial = job.output, partial_path(job.output)
    for path in (output, partial, state_path(output), lock_path(output)):
        if _same_file(path, job.input):
            raise ValueError(f"--output {output} would overwrite the input file {job.input} ({path})")
        if path.is_dir():
            raise ValueError(f"--output {output}: {path} is a folder")
    check_not_locked(output, "--output")
    if job.overwrite:
        return
    if partial.exists() and not job.resume:
        raise ValueError(
            f"--output {output}: an interrupted run left {partial}; pass --resume to continue it or --overwrite to "
            "start over"
        )
    if output.exists() and not job.resume:
        raise ValueError(f"--output {output} exists; pass --overwrite to replace it (or --resume to keep it)")


# ----------------------------------------------------------------------------------------------------------------
# Reading and parsing lines (lazy)
# ----------------------------------------------------------------------------------------------------------------


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """`(1-based line number, line)` for every non-blank line of a UTF-8 file (invalid bytes are replaced), read
    lazily: one line in memory at a time."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def grouped(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    group: list[Any] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def scan_input(path: Path, nth: int) -> tuple[int, int]:
    """`(number of non-blank lines, line number of the nth non-blank line or 0)`, streaming the file once."""
    total, line_of_nth = 0, 0
    for number, _ in read_lines(path):
        total += 1
        if total == nth:
            line_of_nth = number
    return total, line_of_nth


def error_message(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def check_json_value(value: Any, name: str) -> Any:
    """Return a decoded JSON value if it can be written back as standard JSON in UTF-8, else raise `ValueError`
    naming the field and where in it (`'id'[2]['a']`) the culprit is: a lone surrogate in a string or a key (see
    `check_utf8_text`), or a number that JSON's `NaN` / `Infinity` extensions (or `1e400`) made non-finite."""
    if isinstance(value, str):
        return check_utf8_text(value, name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} is {json.dumps(value)}, which standard JSON cannot hold; give a number or a text")
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_json_value(item, f"{name}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_utf8_text(key, f"a key of {name}")
            check_json_value(item, f"{name}[{key!r}]")
    return value


def peek_id(line: str) -> Any:
    """The line's `id` if it is a JSON object with one that can be written (no lone surrogate), else `None` (for
    error records of otherwise bad lines)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    try:
        return check_json_value(record.get("id"), "'id'")
    except ValueError:  # parse_record raised this same error for the line: its error record names the id
        return None


def parse_record(line: str, image_dir: Path | None, load_image: Callable[[Path], Any]) -> tuple[Any, dict]:
    """`(id, pipeline input)` of one JSONL line; raises `ValueError` / `FileNotFoundError` for a bad line.

    The image is decoded here (by `load_image`), so that a missing or unreadable image fails this line only.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    # The id first: an id that cannot be written is this line's error, and its error record has no id.
    record_id = check_json_value(record.get("id"), "'id'")
    unknown = sorted(set(record) - set(LINE_KEYS))
    if unknown:  # as the pipeline and the endpoint handler refuse them: a misspelt key is never silently dropped
        raise ValueError(f"unknown keys {unknown}; a line has 'text' and optionally 'image' and 'id'")
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {'nothing' if text is None else type(text).__name__}")
    check_utf8_text(text, "'text'")
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise ValueError(f"'image' must be a file path or null, got {image!r}")
        check_utf8_text(image, "'image'")
        path = image_file_path(image)
        if image_dir is not None and not path.is_absolute():
            path = image_dir / path
        image = load_image(path)
    return record_id, {"text": text, "image": image}


def parse_line(number: int, line: str, image_dir: Path | None, load_image: Callable[[Path], Any]) -> dict:
    """`{"line", "id", "input"}` for a good line, `{"line", "id", "error"}` for a bad one."""
    try:
        record_id, example = parse_record(line, image_dir, load_image)
    except Exception as err:  # noqa: BLE001 - a bad line becomes an error record naming it
        return {"line": number, "id": peek_id(line), "error": error_message(err)}
    return {"line": number, "id": record_id, "input": example}


# ----------------------------------------------------------------------------------------------------------------
# Sharding: blocks of lines per process and DataLoader worker
# ----------------------------------------------------------------------------------------------------------------


class LineBlocks(IterableDataset):
    """The parsed blocks of `batch_size` non-blank lines that belong to one process, streamed from the file.

    The first `skip` non-blank lines (a multiple of `batch_size`: the blocks a resumed run already has) are left
    out; of the blocks after them, block `k` belongs to process `k % num_processes`, and the process's `j`-th own
    block is read by DataLoader worker `j % num_workers`, which is the order in which a DataLoader takes items from
    its workers, so the process receives its blocks in input order.

    Args:
        path (`Path`): the JSONL input.
        batch_size (`int`): lines per block.
        load_image (`Callable`): decodes an image file (`clip_promptmner.load_image`).
        image_dir (`Path`, *optional*): folder of relative image paths.
        process_index (`int`), num_processes (`int`): this process and how many share the input.
        skip (`int`): non-blank lines to leave out at the start.
    """

    def __init__(
        self,
        path: Path,
        batch_size: int,
        load_image: Callable[[Path], Any],
        image_dir: Path | None = None,
        process_index: int = 0,
        num_processes: int = 1,
        skip: int = 0,
    ):
        if skip % batch_size:
            raise ValueError(f"skip ({skip}) must be a multiple of batch_size ({batch_size})")
        self.path, self.batch_size, self.load_image, self.image_dir = path, batch_size, load_image, image_dir
        self.process_index, self.num_processes, self.first_block = process_index, num_processes, skip // batch_size

    def own_blocks(self) -> Iterator[list[tuple[int, str]]]:
        """This process's raw blocks, in order (every process reads the whole file; only its blocks are kept)."""
        for index, block in enumerate(grouped(read_lines(self.path), self.batch_size)):
            if index >= self.first_block and (index - self.first_block) % self.num_processes == self.process_index:
                yield block

    def __iter__(self) -> Iterator[list[dict]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for own_index, block in enumerate(self.own_blocks()):
            if own_index % num_workers == worker_id:
                yield [parse_line(number, line, self.image_dir, self.load_image) for number, line in block]


def _keep_block(block: list[dict]) -> list[dict]:
    """The DataLoader's collate function: a block is already a batch."""
    return block


def block_loader(dataset: LineBlocks, num_workers: int) -> DataLoader:
    """A DataLoader over `dataset`'s blocks; with workers, at most `2 * num_workers` blocks wait in memory."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_keep_block)


# ----------------------------------------------------------------------------------------------------------------
# Predicting
# ----------------------------------------------------------------------------------------------------------------


def result_record(number: int, record_id: Any, **fields: Any) -> dict:
    """One output line: `line`, then `id` when the input had one, then the result fields."""
    record = {"line": number}
    if record_id is not None:
        record["id"] = record_id
    record.update(fields)
    return record


def predict_batch(pipe, inputs: list[dict], batch_size: int, call_kwargs: dict) -> list[list[dict] | BaseException]:
    """Entities per input; if the batch fails, the inputs are retried one by one so the error names its line."""
    if not inputs:
        return []
    try:
        return list(pipe(inputs, batch_size=batch_size, **call_kwargs))
    except Exception:  # noqa: BLE001 - attributed below, one input at a time
        results: list[list[dict] | BaseException] = []
        for example in inputs:
            try:
                results.append(pipe(example, **call_kwargs))
            except Exception as err:  # noqa: BLE001 - recorded in the output
                results.append(err)
        return results


def predict_block(pipe, block: list[dict], batch_size: int, call_kwargs: dict) -> list[dict]:
    """Output records, in line order, for a parsed block (see [`parse_line`])."""
    inputs = [item["input"] for item in block if "input" in item]
    results = iter(predict_batch(pipe, inputs, batch_size, call_kwargs))
    records = []
    for item in block:
        if "error" in item:
            records.append(result_record(item["line"], item["id"], error=item["error"]))
            continue
        result = next(results)
        if isinstance(result, BaseException):
            records.append(result_record(item["line"], item["id"], error=error_message(result)))
        else:
            records.append(result_record(item["line"], item["id"], entities=result))
    return records


def predict_rounds(pipe, loader: DataLoader, batch_size: int, call_kwargs: dict) -> Iterator[list[dict]]:
    """Per round, the records of one block per process, gathered on every process and sorted by line.

    Every process takes part in every round (with no records once its blocks are done) until all are done, as
    `gather_object` needs all of them.
    """
    from accelerate.utils import gather_object

    blocks = iter(loader)
    while True:
        block = next(blocks, None)
        records = predict_block(pipe, block, batch_size, call_kwargs) if block is not None else []
        gathered = gather_object([(block is None, records)])
        yield sorted((record for _, part in gathered for record in part), key=lambda record: record["line"])
        if all(done for done, _ in gathered):
            return


# ----------------------------------------------------------------------------------------------------------------
# Output: append-only partial file, resume, rename at the end
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """How much of the output is done: complete records, the last one's input line, and the error records."""

    records: int = 0
    last_line: int = 0
    errors: int = 0
    offset: int = 0  # bytes of the partial file that hold those records

    def counts(self) -> dict[str, int]:
        return {"lines": self.records, "ok": self.records - self.errors, "errors": self.errors}


def _parse_output_line(path: Path, index: int, raw: bytes, last_line: int) -> dict:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}, line {index}: not a JSON record ({err}); pass --overwrite to start over") from None
    number = record.get("line") if isinstance(record, dict) else None
    if not isinstance(number, int) or number <= last_line:
        raise ValueError(f"{path}, line {index}: 'line' {number!r} does not follow {last_line}; pass --overwrite")
    return record


def scan_output(path: Path, block_size: int = 1) -> Progress:
    """The progress an output (or partial output) file holds, up to its last complete block of `block_size` records.

    A trailing line without its newline (a write cut by a kill) and the records of an incomplete last block are left
    out. Raises `ValueError` naming the file and line if a complete line is not a record, or lines go backwards.
    """
    kept, current = Progress(), Progress()
    with open(path, "rb") as handle:
        for index, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                break
            record = _parse_output_line(path, index, raw, current.last_line)
            current.records += 1
            current.last_line = record["line"]
            current.errors += "error" in record
            current.offset += len(raw)
            if current.records % block_size == 0:
                kept = Progress(**asdict(current))
    return kept


def line_digest(number: int, line: str) -> list:
    """`[number, digest]` of an input line as the state file records it: its number and a hash of its text (without
    the line end), so that a resumed run can tell that the lines it keeps are still the input's."""
    text = line.rstrip("\n").encode("utf-8", "surrogatepass")
    return [number, hashlib.blake2b(text, digest_size=8).hexdigest()]


def _damaged(path: Path, reason: str) -> RefusedError:
    return RefusedError(f"{path} is damaged ({reason}); pass --overwrite to start over")


def check_state(path: Path, fingerprint: dict, job_input: Path, lines: Iterator[tuple[int, str]], count: int) -> int:
    """A resumed run must be the interrupted run's continuation: the state file's first line must hold the same
    fingerprint (input path and size, model and settings), and its next `count` lines the digests of the input's
    first `count` non-blank lines (taken from `lines`), which the partial output holds records of. Returns the byte
    offset after those lines; a difference is a [`RefusedError`] naming the first input line that differs."""
    if not path.is_file():
        raise RefusedError(f"{path} is missing: the partial output cannot be checked; pass --overwrite to start over")
    with open(path, "rb") as handle:
        header = handle.readline()
        try:
            stored = json.loads(header)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _damaged(path, str(err)) from None
        if not isinstance(stored, dict):
            raise _damaged(path, "its first line is not the run's settings")
        for key, value in fingerprint.items():
            if stored.get(key) != value:
                raise RefusedError(
                    f"--resume: {key} was {stored.get(key)!r} in the interrupted run and is {value!r} now ({path}); "
                    "pass --overwrite to start over"
                )
        offset = len(header)
        for index in range(count):
            raw = handle.readline()
            try:
                number, digest = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
                raise _damaged(path, f"it records {index} input lines, the partial output {count}") from None
            now_number, now_line = next(lines, (None, None))
            if now_number is None:
                raise RefusedError(
                    f"--resume: --input {job_input} has {index} non-blank lines, but the partial output holds {count}; "
                    "pass --overwrite to start over"
                )
            if line_digest(now_number, now_line) != [number, digest]:
                first = number if now_number == number else min(number, now_number)
                raise RefusedError(
                    f"--resume: line {first} of --input {job_input} is not what it was when the interrupted run "
                    "predicted it (the first line that differs), so the records kept would not be this input's; "
                    "pass --overwrite to start over"
                )
            offset += len(raw)
    return offset


class OutputFiles:
    """What the main process appends to while a run goes: the records to `<output>.partial`, and before them one
    `[line, digest]` per record (see [`line_digest`]) to the state file `<output>.partial.json`, whose first line is
    the run's fingerprint. The digests come from the process's own pass over the input (`lines`, positioned after
    the lines done), so a resumed run can check the content of the lines it keeps, not only the input's size."""

    def __init__(self, records, state, lines: Iterator[tuple[int, str]], lock: OutputLock):
        self.records, self.state, self.lines, self.lock = records, state, lines, lock

    def write_round(self, records: list[dict], last_line: int) -> int:
        """Append a round's digests, then its records, each in one write, flushed and synced; return the last line
        written. A `RuntimeError` if the records do not continue the file in input order (they always should)."""
        if not records:
            return last_line
        lines = [record["line"] for record in records]
        if lines[0] <= last_line or lines != sorted(set(lines)):
            raise RuntimeError(f"records out of input order: lines {lines} after line {last_line}")
        digests = []
        for number in lines:
            read_number, line = next(self.lines, (None, ""))
            if read_number != number:
                raise RuntimeError(f"a record of input line {number} where the input's next line is {read_number}")
            digests.append(line_digest(number, line))
        _append_synced(self.state, "".join(json.dumps(digest) + "\n" for digest in digests))
        _append_synced(self.records, "".join(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
                                             for record in records))  # fmt: skip
        return lines[-1]

    def finish(self, output: Path) -> None:
        """Close the complete partial file and rename it to `output` (atomic on one file system)."""
        self.records.close()
        os.replace(partial_path(output), output)
        self.state.close()
        state_path(output).unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        """Close the files, the pass over the input and release the lock (idempotent)."""
        self.records.close()
        self.state.close()
        if hasattr(self.lines, "close"):
            self.lines.close()
        self.lock.release()


def _append_synced(handle, text: str) -> None:
    handle.write(text.encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())


def open_output(job: PredictionJob, lock: OutputLock) -> tuple[OutputFiles, Progress]:
    """Open `<output>.partial` and its state for appending (main process only, holding `lock`); return them and the
    progress the partial file already holds.

    Without `resume` any earlier partial file is discarded; the output file itself is only ever replaced by
    [`OutputFiles.finish`]. With `resume`, the partial file is cut after its last complete block, once the state
    file says that its records are this input's, line for line ([`check_state`]).
    """
    partial, state = partial_path(job.output), state_path(job.output)
    lines = read_lines(job.input)
    if job.resume and partial.exists():
        progress = scan_output(partial, job.batch_size)
        state_offset = check_state(state, job.fingerprint(), job.input, lines, progress.records)
        records, digests = open(partial, "r+b"), open(state, "r+b")
        for handle, offset in ((records, progress.offset), (digests, state_offset)):
            handle.truncate(offset)
            handle.seek(offset)
        return OutputFiles(records, digests, lines, lock), progress
    job.output.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)  # before the new state: a state file never describes an older partial file
    write_text(state, json.dumps(job.fingerprint()) + "\n")
    return OutputFiles(open(partial, "wb"), open(state, "ab"), lines, lock), Progress()


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _main_process_start(job: PredictionJob) -> tuple[OutputFiles | None, Progress, int | None]:
    """Lock and open the output and count the input (main process only): `(output files, progress, non-blank input
    lines)`; `(None, progress, None)` when `--resume` finds the output already complete."""
    lock = OutputLock(job.output, "--output").acquire()
    files = None
    try:
        if job.resume and not partial_path(job.output).exists() and job.output.exists():
            lock.release()
            return None, scan_output(job.output), None
        files, progress = open_output(job, lock)
        total, line_of_last = scan_input(job.input, progress.records)
        if progress.records and line_of_last != progress.last_line:
            raise RefusedError(
                f"--resume: {partial_path(job.output)} ends with input line {progress.last_line}, but the input's "
                f"non-blank line {progress.records} is line {line_of_last}: it does not match --input {job.input}"
            )
    except BaseException:
        if files is not None:
            files.close()
        lock.release()
        raise
    return files, progress, total


def _start(job: PredictionJob, state) -> tuple[OutputFiles | None, Progress, int | None]:
    """[`_main_process_start`] on the main process, its outcome shared with all: an error there stops every process
    (the main one re-raises it, the others raise an error that quotes it: a [`RefusedError`] for a refusal, else a
    `RuntimeError`)."""
    files, error, outcome = None, None, None
    if state.is_main_process:
        try:
            files, progress, total = _main_process_start(job)
            outcome = ("ok", progress, total)
        except Exception as err:  # noqa: BLE001 - shared with the other processes below, then re-raised
            kind = "refused" if isinstance(err, RefusedError) else "error"
            error, outcome = err, (kind, str(err) if kind == "refused" else error_message(err), None)
    outcome = main_process_value(outcome, state)
    if error is not None:
        raise error
    if outcome[0] == "refused":
        raise RefusedError(outcome[1])
    if outcome[0] == "error":
        raise RuntimeError(f"the main process could not start: {outcome[1]}")
    return files, outcome[1], outcome[2]


def workers_for_idle_cores(idle: float | None, cores: int, processes: int = 1) -> int:
    """DataLoader workers for one of `processes` processes when other work leaves `idle` of the `cores` idle (None: not
    known): one, which parses lines and decodes images while the model runs, unless other work has taken a core of
    this process's share; then none, as a worker could only take time slices from the model's thread on the cores
    left (BENCHMARKS.md, "Prediction at scale": the 100-prompt model beside a busy loop, 0.88 of the best without)."""
    share = threads_for_idle_cores(None, cores, processes)  # what the process gets when nothing else runs
    return 1 if threads_for_idle_cores(idle, cores, processes) >= share else 0


def default_num_workers(processes: int = 1) -> int:
    """[`workers_for_idle_cores`] of this machine now."""
    return workers_for_idle_cores(idle_cpu_cores(), available_cores(), processes)


def predict_file(pipe, job: PredictionJob, state=None) -> dict:
    """Predict every line of `job.input` into `job.output` with `pipe`, across all processes of `state`.

    Args:
        pipe: a `multimodal-ner` pipeline on this process's device.
        job (`PredictionJob`): the files and settings (validated by [`check_job`] before anything is opened).
        state (`accelerate.PartialState`, *optional*): the processes (default: the current ones).

    Returns:
        `dict`: on every process, `{"lines", "ok", "errors"}` of the whole output, plus `"predicted"` (lines this
        run predicted; fewer than `"lines"` after `--resume`) and `"seconds"` (of this run's prediction loop).
    """
    from accelerate import PartialState

    state = state if state is not None else PartialState()
    check_job(job)
    if job.num_workers is None:
        job.num_workers = default_num_workers(state.num_processes)
    state.wait_for_everyone()  # every process checks the paths before the main one creates the partial file
    files, progress, total = _start(job, state)
    if total is None:  # --resume of a run that had finished
        return {**progress.counts(), "predicted": 0, "seconds": 0.0}
    resumed = progress.records
    try:
        start = time.perf_counter()
        progress = _predict_into(pipe, job, state, files, progress, total)
        seconds = time.perf_counter() - start
        if state.is_main_process:
            files.finish(job.output)
    finally:
        if files is not None:
            files.close()
    state.wait_for_everyone()
    return main_process_value({**progress.counts(), "predicted": progress.records - resumed, "seconds": seconds},
                              state)


def _predict_into(pipe, job: PredictionJob, state, files: OutputFiles | None, progress: Progress,
                  total: int) -> Progress:  # fmt: skip
    """The prediction loop; the main process appends each round to `files` and shows a progress bar."""
    from mner_console import progress_bar

    dataset = LineBlocks(job.input, job.batch_size, load_image, job.image_dir,
                         state.process_index, state.num_processes, skip=progress.records)  # fmt: skip
    rounds = predict_rounds(pipe, block_loader(dataset, job.num_workers), job.batch_size, job.call_kwargs)
    with progress_bar(total, desc="multimodal-ner", unit="lines", initial=progress.records,
                      disable=not state.is_main_process) as bar:  # fmt: skip
        for records in rounds:
            if state.is_main_process:
                progress.last_line = files.write_round(records, progress.last_line)
                progress.records += len(records)
                progress.errors += sum("error" in record for record in records)
                bar.update(len(records))
    return progress


# ----------------------------------------------------------------------------------------------------------------
# The command's exit status
# ----------------------------------------------------------------------------------------------------------------


def exit_status(counts: dict[str, int], fail_on_error: bool) -> int:
    """0 when some line was predicted (or there were none), 1 when every line failed or, with `fail_on_error`,
    when any did."""
    if counts["lines"] and not counts["ok"]:
        return 1
    return 1 if fail_on_error and counts["errors"] else 0
