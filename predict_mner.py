"""Batch prediction with a PromptMNER model: JSONL in, JSONL out, on one process or many.

```bash
promptmner-predict --model org/promptmner-twitter2015 --input posts.jsonl --output entities.jsonl \
    [--batch_size 16] [--num_workers 1] [--image_dir DIR] [--stride N] [--threshold P] [--trust_remote_code] \
    [--resume | --overwrite] [--fail_on_error] [--device cpu]
accelerate launch -m predict_mner --model ... --input posts.jsonl --output entities.jsonl   # any topology
```

Each input line is a JSON object `{"text": str, "image": "path" | null, "id": any}` (`image` and `id` optional).
Relative image paths are read from `--image_dir` when given, else from the current directory. The input is read
lazily and images are decoded in `--num_workers` DataLoader workers per process. Each output line, in input
order, is

    {"line": N, "id": ..., "entities": [{"entity_group", "score", "word", "start", "end"}, ...]}

or, for a line that cannot be processed (invalid JSON, no `text`, an image that is missing or unreadable...),

    {"line": N, "id": ..., "error": "ValueError: ..."}

(`line` is the 1-based input line; `id` only when the input line has one). Blank lines are skipped. Under
`accelerate launch` the lines are shared between the processes and the output is the same, line for line, as one
process's.

The run writes `<output>.partial` and renames it to `<output>` when it is complete. After an interruption,
`--resume` continues after the last complete block of lines, once it has checked that the input lines it keeps are
unchanged (their digests are in `<output>.partial.json`; an edited line is named); the final file equals an
uninterrupted run's. An existing output is never replaced unless `--overwrite` is given. While a run writes
`<output>`, it holds `<output>.lock` (naming its pid): a second run writing the same output is refused at its start;
a killed run's lock is released with its process and blocks nothing.

Exit status: 0 when at least one line was predicted (or the input has no lines), 1 when every line failed and,
with `--fail_on_error`, 1 as soon as any line failed (after writing everything); 2 for invalid arguments (a
`--model` folder that does not exist, a `--device` this machine lacks...), an output locked by another run, or a
`--resume` that does not match the partial output. A summary goes to stderr.

By default the model and processor are loaded with this package's own code (`PromptMNERForSpanNER`,
`PromptMNERProcessor`); `--trust_remote_code` loads them, and the pipeline, from the model repository's code.
The library behind this command is `mner_prediction`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import mner_prediction
import mner_runtime


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="model folder or Hub repo id (a saved PromptMNER model)")
    add("--input", required=True, type=Path, help="JSONL file: one {'text', 'image', 'id'} object per line")
    add("--output", required=True, type=Path, help="JSONL file to write (never the input)")
    add("--batch_size", type=int, default=16, help="lines per block, and chunks per model forward pass")
    add("--num_workers", type=int, default=None,
        help="DataLoader workers per process for parsing and images (0: none; default: one, none when other work has "
        "taken a core of the process's share)")
    add("--device", default=None, help="'cpu', 'cuda:1', ... for one process (default: Accelerate's device)")
    add("--num_threads", type=int, default=None,
        help="torch threads per process on the CPU (default: the process's share of the cores that other work leaves "
        "idle; OMP_NUM_THREADS, which accelerate launch sets, wins)")
    add("--image_dir", type=Path, default=None, help="folder of relative image paths")
    add("--stride", type=int, default=None, help="words shared by chunks of long texts")
    add("--threshold", type=float, default=None, help="minimum probability of an entity")
    add("--trust_remote_code", action="store_true", help="use the model repository's code")
    add("--fail_on_error", action="store_true", help="exit with 1 if any line failed")
    add("--resume", action="store_true", help="continue an interrupted run's <output>.partial")
    add("--overwrite", action="store_true", help="replace an existing output (and discard a partial one)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, mner_prediction.PredictionJob]:
    """The arguments and the prediction job; invalid ones stop with a message naming the argument (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = ("input", "output", "model", "image_dir", "batch_size", "num_workers", "stride", "threshold", "resume",
             "overwrite")  # fmt: skip
    job = mner_prediction.PredictionJob(**{name: getattr(args, name) for name in names})
    try:
        mner_prediction.check_job(job)
        mner_runtime.check_model_location(args.model, "--model")
        mner_runtime.check_device(args.device, "--device")
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.num_threads is not None and args.num_threads < 1:
        parser.error(f"--num_threads must be >= 1, got {args.num_threads}")
    return args, job


def parallelism_note(pipe, job: mner_prediction.PredictionJob) -> str:
    """`, W DataLoader workers and N torch threads each` (threads on the CPU only): the defaults depend on the machine's
    load, so the summary says what the run took."""
    note = f", {job.num_workers} DataLoader worker{'' if job.num_workers == 1 else 's'}"
    if pipe.device.type == "cpu":
        threads = torch.get_num_threads()
        note += f" and {threads} torch thread{'' if threads == 1 else 's'}"
    return note + " each"


def main(argv: list[str] | None = None) -> int:
    args, job = parse_args(argv)
    # The command's parallelism is torch's threads and the DataLoader workers; the tokenizer's own thread pool would
    # compete with them for the same cores (and warns once the workers fork).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    state = mner_runtime.process_state(args.device)
    if args.device is not None and state.num_processes > 1:
        raise SystemExit(f"--device {args.device} names one device; under `accelerate launch` leave it out")
    pipe = mner_runtime.load_pipeline(args.model, args.device or state.device, args.trust_remote_code, args.num_threads)
    try:
        counts = mner_prediction.predict_file(pipe, job, state)
    except mner_prediction.RefusedError as err:  # another run holds the output, or --resume does not match
        print(f"promptmner-predict: error: {err}", file=sys.stderr)
        return 2
    if state.is_main_process:
        rate = counts["predicted"] / counts["seconds"] if counts["seconds"] else 0.0
        print(
            f"{counts['lines']} lines: {counts['ok']} predicted, {counts['errors']} errors -> {job.output} "
            f"({counts['predicted']} lines in this run, {counts['seconds']:.1f} s, {rate:.1f} lines/s, "
            f"{state.num_processes} process{'es' if state.num_processes > 1 else ''}{parallelism_note(pipe, job)})",
            file=sys.stderr,
        )
    return mner_prediction.exit_status(counts, args.fail_on_error)


if __name__ == "__main__":
    sys.exit(main())
