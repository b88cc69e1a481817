"""Batch prediction with a PromptMNER model: JSONL in, JSONL out.

```bash
python predict_mner.py --model org/promptmner-twitter2015 --input tweets.jsonl --output entities.jsonl \
    [--batch_size 16] [--device cpu] [--image_dir DIR] [--stride N] [--threshold P] [--trust_remote_code]
```

Each input line is a JSON object `{"text": str, "image": "path" | null, "id": any}` (`image` and `id` optional).
Relative image paths are read from `--image_dir` when given, else from the current directory. Each output line,
in input order, is

    {"line": N, "id": ..., "entities": [{"entity_group", "score", "word", "start", "end"}, ...]}

or, for a line that cannot be processed (invalid JSON, no `text`, an image that is missing or unreadable...),

    {"line": N, "id": ..., "error": "ValueError: ..."}

(`line` is 1-based; `id` only when the input line has one). Blank lines are skipped. The run goes on after a bad
line; output is written and flushed batch by batch, so an interrupted run keeps every finished batch.

Exit status: 0 when at least one line was predicted (or the input has no lines), 1 when every line failed, and,
with `--fail_on_error`, 1 as soon as any line failed (after writing everything). A summary goes to stderr.

By default the model and processor are loaded with this package's own code (`PromptMNERForSpanNER`,
`PromptMNERProcessor`); `--trust_remote_code` loads them, and the pipeline, from the model repository's code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline_promptmner import MultimodalNERPipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder or Hub repo id (a saved PromptMNER model)")
    parser.add_argument("--input", required=True, type=Path, help="JSONL file: one {'text', 'image', 'id'} per line")
    parser.add_argument("--output", required=True, type=Path, help="JSONL file to write (overwritten)")
    parser.add_argument("--batch_size", type=int, default=16, help="chunks per model forward pass")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--image_dir", type=Path, default=None, help="folder of relative image paths")
    parser.add_argument("--stride", type=int, default=None, help="words shared by chunks of long texts")
    parser.add_argument("--threshold", type=float, default=None, help="minimum probability of an entity")
    parser.add_argument("--trust_remote_code", action="store_true", help="use the model repository's code")
    parser.add_argument("--fail_on_error", action="store_true", help="exit with 1 if any line failed")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def load_pipeline(args: argparse.Namespace):
    """The multimodal-ner pipeline for `--model` on `--device`."""
    if args.trust_remote_code:
        from transformers import pipeline

        return pipeline("multimodal-ner", model=args.model, device=args.device, trust_remote_code=True)
    from modeling_promptmner import PromptMNERForSpanNER
    from processing_promptmner import PromptMNERProcessor

    model = PromptMNERForSpanNER.from_pretrained(args.model).eval()
    # This package's own classes read the folder: no code from it runs (trust_remote_code=False stops the tokenizer
    # lookup from asking about the folder's auto_map).
    processor = PromptMNERProcessor.from_pretrained(args.model, trust_remote_code=False)
    return MultimodalNERPipeline(model=model, processor=processor, device=args.device)


# --- reading lines ----------------------------------------------------------------------------------------------


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """`(1-based line number, line)` for every non-blank line of a UTF-8 file (invalid bytes are replaced)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def count_lines(path: Path) -> int:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return sum(1 for line in handle if line.strip())


def parse_record(line: str, image_dir: Path | None, pipe) -> tuple[Any, dict]:
    """`(id, pipeline input)` of one JSONL line; raises `ValueError` / `FileNotFoundError` for a bad line.

    The image is opened here, so that a missing or unreadable image fails this line only.
    """
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a line must be a JSON object, got {type(record).__name__}")
    record_id = record.get("id")
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {'nothing' if text is None else type(text).__name__}")
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str) or not image:
            raise ValueError(f"'image' must be a file path or null, got {image!r}")
        path = Path(image)
        if image_dir is not None and not path.is_absolute():
            path = image_dir / path
        image = pipe.processor.load_image(path)
    return record_id, {"text": text, "image": image}


# --- predicting -------------------------------------------------------------------------------------------------


def error_message(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


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


def process_group(pipe, group: list[tuple[int, str]], args: argparse.Namespace, call_kwargs: dict) -> list[dict]:
    """Output records, in line order, for a group of input lines."""
    records: list[dict | None] = [None] * len(group)
    valid, inputs = [], []
    for position, (number, line) in enumerate(group):
        try:
            record_id, example = parse_record(line, args.image_dir, pipe)
        except Exception as err:  # noqa: BLE001 - a bad line becomes an error record
            records[position] = result_record(number, _peek_id(line), error=error_message(err))
            continue
        valid.append((position, number, record_id))
        inputs.append(example)
    for (position, number, record_id), result in zip(valid, predict_batch(pipe, inputs, args.batch_size, call_kwargs)):
        if isinstance(result, BaseException):
            records[position] = result_record(number, record_id, error=error_message(result))
        else:
            records[position] = result_record(number, record_id, entities=result)
    return records


def _peek_id(line: str) -> Any:
    """The line's `id` if it is a JSON object with one, else `None` (for error records of otherwise bad lines)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("id") if isinstance(record, dict) else None


def grouped(lines: Iterator[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    group: list[tuple[int, str]] = []
    for item in lines:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def run(args: argparse.Namespace, pipe=None) -> dict[str, int]:
    """Predict every line of `--input` into `--output`; return `{"lines", "ok", "errors"}`."""
    pipe = pipe if pipe is not None else load_pipeline(args)
    call_kwargs = {key: getattr(args, key) for key in ("stride", "threshold") if getattr(args, key) is not None}
    counts = {"lines": 0, "ok": 0, "errors": 0}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out, tqdm(
        total=count_lines(args.input), unit="line", desc="multimodal-ner", file=sys.stderr
    ) as progress:
        for group in grouped(read_lines(args.input), args.batch_size):
            for record in process_group(pipe, group, args, call_kwargs):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                counts["lines"] += 1
                counts["errors" if "error" in record else "ok"] += 1
            out.flush()
            os.fsync(out.fileno())
            progress.update(len(group))
    return counts


def exit_status(counts: dict[str, int], fail_on_error: bool) -> int:
    if counts["lines"] and not counts["ok"]:
        return 1
    return 1 if fail_on_error and counts["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = run(args)
    print(
        f"{counts['lines']} lines: {counts['ok']} predicted, {counts['errors']} errors -> {args.output}",
        file=sys.stderr,
    )
    return exit_status(counts, args.fail_on_error)


if __name__ == "__main__":
    sys.exit(main())
