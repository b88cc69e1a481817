"""Prediction at scale on CPU: lines/s of the batch prediction command on 1 vs 2 processes, and its peak memory
against the input's size (not a test).

    python benchmarks/prediction_scale.py [--lines 256 --batch_size 16 --repeats 2 \
        --memory_lines 10000,100000 --no_write]

Threads and processes: two models, the demo's (all-MiniLM-L6-v2 with 16 continuous prompts) and the paper's setting
(MiniLM-L6 with 100 continuous prompts), both with the demo's small random open_clip ViT and random span heads;
`--lines` tweet-like lines, every third one with its own random 320x240 JPEG read from disk. Each model is measured
on the quiet machine and under a competing job (a process that keeps one core busy, started by this script), with
the default commands (`promptmner-predict`, and `accelerate launch --multi_gpu --num_processes 2 -m predict_mner`)
and with the settings one would try by hand (`--num_threads 1` / `2`, `--num_workers 0` / `2`, two processes with
`--num_cpu_threads_per_process 2`), in interleaved rounds; the best round's lines/s of the prediction loop is
reported (model loading excluded, as the command prints it), and each default against the best setting by hand for
the same number of processes. Whether all outputs are identical is checked too.

Memory: a tiny random model (2 layers of width 32 on the MiniLM tokenizer, tiny CLIP) over generated inputs of
`--memory_lines` lines (one in ten with an image of a shared set), one process with one DataLoader worker: the
kernel's peak RSS of the largest process (`wait4`), and the peak of the summed proportional set size (PSS: pages a
forked worker shares with its parent count once) of the command's process tree, sampled every 20 ms. Bounded
memory means these stay flat while the input grows.

Prints a markdown section and writes it into `BENCHMARKS.md` between `<!-- prediction-scale:start -->` and
`<!-- prediction-scale:end -->` (replacing an earlier run's section and leaving the rest of the file alone).

Bad lines under load (`--bad_lines 5000`, this measurement only): `--bad_lines` lines, one in `--bad_every` bad,
the kinds in turn (corrupt and truncated image files, a missing image, invalid JSON, a text that is not a string,
a lone surrogate in the text or the id, an empty object, a JSON array), the others like the throughput input (every
third with one of 100 random 320x240 JPEGs), predicted with the same model by one process (one thread) and by 2
gloo processes. Each output must hold exactly one record per line in input order, an error record naming the fault
exactly at the bad lines and entities at the others (else the script fails); the section (`prediction-bad-lines`)
gives lines/s, the counts per kind, and whether the two outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mner_demo import DEMO_CLIP_CONFIG, TINY_CLIP_CONFIG, demo_backbone  # noqa: E402
from mner_backbone import model_from_backbone  # noqa: E402
from pipeline_promptmner import save_pipeline  # noqa: E402
from processing_promptmner import PromptMNERProcessor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inputs import write_images  # noqa: E402
from report import cpu_name, publish_section  # noqa: E402

SECTION = "prediction-scale"
MODELS = {"demo (16 prompts)": 16, "paper (100 prompts)": 100}
LOADS = ("quiet", "competing job")
BAD_LINES_SECTION = "prediction-bad-lines"
TEXTS = [
    "RT @NBA: LeBron James scores 40 points as the Cavaliers beat the Warriors in Oakland #NBAFinals",
    "Barack Obama meets Angela Merkel in Berlin to talk about the European Union",
    "Manchester United sign a new striker from Real Madrid , says Sky Sports",
    "Taylor Swift performs in New York City tonight ! http://t.co/abc123",
    "Apple unveils the new iPhone in Cupertino , California",
    "Serena Williams wins Wimbledon for the seventh time",
]
SUMMARY = re.compile(
    r"(\d+) lines: (\d+) predicted, (\d+) errors .*\((\d+) lines in this run, ([0-9.]+) s, ([0-9.]+) lines/s"
    r".*?(?:, (\d+) DataLoader workers?(?: and (\d+) torch threads?)? each)?\)$",
    re.M,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=256, help="lines of the throughput input")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best one is reported")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, of {list(LOADS)}")
    parser.add_argument("--memory_lines", default="10000,100000", help="comma-separated input sizes for memory")
    parser.add_argument("--memory_batch_size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no_write", action="store_true", help="print the section only")
    parser.add_argument("--bad_lines", type=int, default=0,
                        help="measure only bad lines under load: an input of this many lines")  # fmt: skip
    parser.add_argument("--bad_every", type=int, default=10, help="one line in this many is bad (--bad_lines)")
    args = parser.parse_args()
    args.memory_sizes = [int(size) for size in args.memory_lines.split(",") if size]
    args.model_names, args.load_names = args.models.split(","), args.loads.split(",")
    if not set(args.model_names) <= set(MODELS) or not set(args.load_names) <= set(LOADS):
        parser.error(f"--models are of {list(MODELS)}, --loads of {list(LOADS)}")
    return args


# --- models and inputs --------------------------------------------------------------------------------------------


def save_minilm_model(folder: Path, num_prompts: int) -> Path:
    """MiniLM-L6 with `num_prompts` continuous prompts and the demo CLIP, saved as a pipeline folder."""
    torch.manual_seed(0)
    processor = PromptMNERProcessor.from_clip(demo_backbone(), clip_config=DEMO_CLIP_CONFIG, clip_pretrained=None)
    model = model_from_backbone(demo_backbone(), processor=processor, prompts="continuous", num_prompts=num_prompts)
    save_pipeline(model.eval(), processor, folder)
    return folder


def save_tiny_model(folder: Path) -> Path:
    """A 2-layer width-32 BERT on the MiniLM tokenizer with 5 prompts and a tiny CLIP, saved as a pipeline folder."""
    torch.manual_seed(0)
    processor = PromptMNERProcessor.from_clip(demo_backbone(), clip_config=TINY_CLIP_CONFIG, clip_pretrained=None)
    tokenizer = processor.tokenizer
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37,
                                     pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    backbone = transformers.BertModel(config).eval()
    model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=5)
    save_pipeline(model.eval(), processor, folder)
    return folder


def write_posts(path: Path, count: int, image_every: int, num_images: int) -> None:
    """`count` JSONL lines, written one at a time; every `image_every`-th line has one of `num_images` images."""
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            record = {"id": f"post-{index}", "text": TEXTS[index % len(TEXTS)]}
            if index % image_every == 0:
                record["image"] = f"{(index // image_every) % num_images}.jpg"
            handle.write(json.dumps(record) + "\n")


# The kinds of bad line, in turn: (name, line, a fragment its error record must have). `{n}` is the line's number.
BAD_KINDS = [
    ("corrupt image file", lambda n: json.dumps({"id": n, "text": "x", "image": "corrupt.jpg"}), "corrupt.jpg"),
    ("missing image", lambda n: json.dumps({"id": n, "text": "x", "image": f"absent/{n}.jpg"}), "absent/"),
    ("invalid JSON", lambda n: f'{{"id": {n}, "text": "cut', "ValueError: invalid JSON"),
    ("text not a string", lambda n: json.dumps({"id": n, "text": ["a", "list"]}), "'text' must be a string, got list"),
    ("lone surrogate in the text", lambda n: json.dumps({"id": n, "text": "Kevin \ud800 Durant"}),
     "'text' holds a lone surrogate U+D800 at character 6"),
    ("lone surrogate in the id", lambda n: json.dumps({"id": f"{n}\udc00", "text": "x"}),
     "'id' holds a lone surrogate U+DC00"),
    ("truncated image file", lambda n: json.dumps({"id": n, "text": "x", "image": "truncated.jpg"}), "truncated.jpg"),
    ("empty object", lambda n: "{}", "'text' must be a string, got nothing"),
    ("not an object", lambda n: json.dumps([n, "text"]), "a line must be a JSON object, got list"),
]  # fmt: skip


def write_bad_posts(path: Path, image_dir: Path, count: int, bad_every: int, num_images: int) -> dict[int, int]:
    """`count` JSONL lines whose every `bad_every`-th is bad (the kinds of `BAD_KINDS` in turn), the others as in
    [`write_posts`]; writes the corrupt and truncated image files into `image_dir`. Returns `{line number: kind}`."""
    (image_dir / "corrupt.jpg").write_bytes(b"not a JPEG at all")
    (image_dir / "truncated.jpg").write_bytes((image_dir / "0.jpg").read_bytes()[:300])
    bad = {}
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            number = index + 1
            if number % bad_every == 0:
                kind = (number // bad_every - 1) % len(BAD_KINDS)
                bad[number] = kind
                handle.write(BAD_KINDS[kind][1](number) + "\n")
                continue
            record = {"id": f"post-{index}", "text": TEXTS[index % len(TEXTS)]}
            if index % 3 == 0:
                record["image"] = f"{(index // 3) % num_images}.jpg"
            handle.write(json.dumps(record) + "\n")
    return bad


def check_one_record_per_line(output: Path, count: int, bad: dict[int, int]) -> dict[str, int]:
    """Raise `RuntimeError` unless `output` has one record per input line (1..count) in order, an error record naming
    its fault at each bad line and entities at every other; return the error records per kind."""
    per_kind = dict.fromkeys((name for name, _, _ in BAD_KINDS), 0)
    with open(output, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    if [record["line"] for record in records] != list(range(1, count + 1)):
        raise RuntimeError(f"{output}: {len(records)} records, not one per line 1..{count} in order")
    for record in records:
        number = record["line"]
        if number in bad:
            name, _, fragment = BAD_KINDS[bad[number]]
            if fragment not in record.get("error", ""):
                raise RuntimeError(f"{output}, line {number} ({name}): no error naming {fragment!r}: {record}")
            per_kind[name] += 1
        elif "entities" not in record:
            raise RuntimeError(f"{output}, line {number}: a good line without entities: {record}")
    return per_kind


# --- running the command and measuring it ---------------------------------------------------------------------------


def command(processes: int, model: Path, source: Path, target: Path, image_dir: Path, batch_size: int,
            console_script: bool = False, options: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The prediction command: `python -m predict_mner` (or, with `console_script`, the installed
    `promptmner-predict`, which runs the same code) or `accelerate launch` of it with `processes` processes;
    `options` go to the launcher when they are its own (`--num_cpu_threads_per_process`), else to the command."""
    launcher_options = [option for option in options if option.startswith("--num_cpu_threads_per_process")]
    command_options = [option for option in options if option not in launcher_options]
    if processes == 1:
        script = Path(sys.executable).with_name("promptmner-predict")
        if console_script and not script.is_file():
            raise FileNotFoundError(f"{script} is missing: install the package (pip install -e .)")
        launcher = [str(script)] if console_script else [sys.executable, "-m", "predict_mner"]
    else:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    *launcher_options, "-m", "predict_mner"]  # fmt: skip
    return launcher + ["--model", str(model), "--input", str(source), "--output", str(target), "--image_dir",
                       str(image_dir), "--batch_size", str(batch_size), "--overwrite", *command_options]  # fmt: skip


def child_env(threads: int | None = None) -> dict:
    """The environment of a run: offline, this checkout importable, `threads` torch threads (default: torch's)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "ACCELERATE_", "OMP_"))}
    path = [entry for entry in (env.get("PYTHONPATH"), str(ROOT)) if entry]
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(path))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def tree_pss_mb(pid: int) -> float:
    """The summed proportional set size of `pid`'s process tree: pages shared by forked workers count once."""
    total = 0
    for member in descendants(pid):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue  # the process ended while we looked
        match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        total += int(match.group(1)) if match else 0
    return total / 1024


def run_measured(arguments: list[str], cwd: Path, threads: int | None = None, sample_memory: bool = True) -> dict:
    """Run the command; its summary figures, wall time, the kernel's peak RSS of its largest process and, with
    `sample_memory`, the sampled peak of its process tree's summed PSS (a /proc walk every 20 ms, which takes CPU
    time from the command: throughput runs go without it)."""
    start = time.perf_counter()
    process = subprocess.Popen(arguments, cwd=cwd, env=child_env(threads), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss_mb(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        sampler.start()
    stderr = process.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    if sample_memory:
        sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed ({process.returncode}):\n{stderr[-4000:]}")
    match = SUMMARY.search(stderr)
    if match is None:
        raise RuntimeError(f"no summary line in the command's output:\n{stderr[-2000:]}")
    lines, _, errors, predicted, seconds, rate, workers, threads = match.groups()
    return {"lines": int(lines), "errors": int(errors), "seconds": float(seconds), "lines_per_s": float(rate),
            "chose": f"{counted(threads, 'thread')}, {counted(workers, 'worker')}",
            "wall_s": time.perf_counter() - start, "max_rss_mb": usage.ru_maxrss / 1024,
            "tree_peak_mb": peak[0]}  # fmt: skip


def counted(number: str | None, noun: str) -> str:
    """`1 thread`, `2 threads`, `? threads` (a summary line that did not say)."""
    return f"{number or '?'} {noun}{'' if number == '1' else 's'}"


# --- the two measurements -----------------------------------------------------------------------------------------


# (name, processes, options): the default commands first, then what one would try by hand.
THREAD_SETTINGS = [
    ("default", 1, ()),
    ("--num_threads 1", 1, ("--num_threads=1",)),
    ("--num_threads 2", 1, ("--num_threads=2",)),
    ("--num_threads 1 --num_workers 0", 1, ("--num_threads=1", "--num_workers=0")),
    ("--num_threads 2 --num_workers 2", 1, ("--num_threads=2", "--num_workers=2")),
    ("default", 2, ()),
    ("--num_cpu_threads_per_process 2", 2, ("--num_cpu_threads_per_process=2",)),
]


class CompetingJob:
    """A process that keeps one core busy (a pure Python loop) while the block runs: another user's job."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2)  # let the scheduler see it
        return self

    def __exit__(self, *exc_info):
        self.process.kill()
        self.process.wait()


def measure_throughput(args: argparse.Namespace, work: Path) -> dict:
    """Best lines/s of every (model, load, setting) over interleaved rounds, and whether all outputs agree."""
    write_images(work / "images", (args.lines + 2) // 3)
    source = work / "posts.jsonl"
    write_posts(source, args.lines, image_every=3, num_images=(args.lines + 2) // 3)
    results, outputs = {}, {}
    for model_name in args.model_names:
        num_prompts = MODELS[model_name]
        model = save_minilm_model(work / f"minilm_{num_prompts}", num_prompts)
        for load in args.load_names:
            with CompetingJob() if load == "competing job" else _quiet():
                for _ in range(args.repeats):
                    for name, processes, options in THREAD_SETTINGS:
                        target = work / f"out_{num_prompts}_{processes}_{len(outputs)}.jsonl"
                        arguments = command(processes, model, source, target, work / "images", args.batch_size,
                                            console_script=processes == 1, options=options)  # fmt: skip
                        result = run_measured(arguments, work, threads=None, sample_memory=False)
                        key = (model_name, load, processes, name)
                        chosen = results[key]["chosen"] if key in results else []
                        if key not in results or result["lines_per_s"] > results[key]["lines_per_s"]:
                            results[key] = result
                        results[key]["chosen"] = chosen + [result["chose"]]  # what every round's run chose
                        outputs.setdefault(num_prompts, set()).add(target.read_bytes())
                        print(f"{key}: {result['lines_per_s']:.1f} lines/s", file=sys.stderr)
    return {"runs": results, "identical": all(len(found) == 1 for found in outputs.values())}


class _quiet:
    """No competing job."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def measure_memory(args: argparse.Namespace, work: Path) -> list[dict]:
    """Peak memory of one process over inputs of growing size."""
    model = save_tiny_model(work / "tiny")
    write_images(work / "small_images", 8, size=(64, 48))
    rows = []
    for size in args.memory_sizes:
        source = work / f"posts_{size}.jsonl"
        write_posts(source, size, image_every=10, num_images=8)
        target = work / f"out_{size}.jsonl"
        result = run_measured(command(1, model, source, target, work / "small_images", args.memory_batch_size), work)
        result.update(size=size, input_mb=source.stat().st_size / 2**20, output_mb=target.stat().st_size / 2**20)
        print(f"{size} lines: peak RSS {result['max_rss_mb']:.0f} MB", file=sys.stderr)
        rows.append(result)
        source.unlink(), target.unlink()
    return rows


def measure_bad_lines(args: argparse.Namespace, work: Path) -> dict:
    """One process (one thread) and 2 gloo processes over `--bad_lines` lines with bad ones: each output checked by
    [`check_one_record_per_line`]."""
    model = save_minilm_model(work / "minilm", num_prompts=100)
    images = work / "images"
    write_images(images, 100)
    source = work / "bad_posts.jsonl"
    bad = write_bad_posts(source, images, args.bad_lines, args.bad_every, num_images=100)
    runs = {}
    for name, processes, threads in [("1 process, 1 thread", 1, 1), ("2 processes", 2, None)]:
        target = work / f"bad_out_{processes}.jsonl"
        arguments = command(processes, model, source, target, images, args.batch_size, console_script=True)
        result = run_measured(arguments, work, threads)
        result["per_kind"] = check_one_record_per_line(target, args.bad_lines, bad)
        if result["lines"] != args.bad_lines or result["errors"] != len(bad):
            raise RuntimeError(f"{name}: the command counted {result['lines']} lines, {result['errors']} errors")
        print(f"{name}: {result['lines_per_s']:.1f} lines/s, {result['errors']} error records", file=sys.stderr)
        runs[name] = result
    outputs = {path.read_bytes() for path in work.glob("bad_out_*.jsonl")}
    return {"runs": runs, "bad": len(bad), "identical": len(outputs) == 1}


# --- the report ---------------------------------------------------------------------------------------------------


def bad_lines_markdown(args: argparse.Namespace, result: dict, took: float) -> str:
    one, two = result["runs"]["1 process, 1 thread"], result["runs"]["2 processes"]
    rows = [
        f"| {label} | {run['lines']:,} | {run['lines'] - run['errors']:,} | {run['errors']:,} | "
        f"{run['lines_per_s']:.1f} | {run['wall_s']:.1f} s |"
        for label, run in [("`OMP_NUM_THREADS=1 promptmner-predict` (1 process, 1 thread)", one),
                           ("`accelerate launch --multi_gpu --num_processes 2 -m predict_mner` (gloo)", two)]
    ]  # fmt: skip
    kinds = [f"| {name} | {count:,} | {two['per_kind'][name]:,} |" for name, count in one["per_kind"].items()]
    return "\n".join(
        [
            "## Bad lines under load (CPU)",
            "",
            f"`python benchmarks/prediction_scale.py --bad_lines {args.bad_lines} --bad_every {args.bad_every} "
            f"--batch_size {args.batch_size}` (took {took:.0f} s). {cpu_name()} ({os.cpu_count()} logical CPUs), "
            f"torch {torch.__version__}, transformers {transformers.__version__}; load average "
            f"{args.load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run.",
            "",
            f"{args.bad_lines:,} lines, one in {args.bad_every} bad ({result['bad']:,}; the kinds below in turn), the "
            "others tweet-like, every third with one of 100 random 320x240 JPEGs; the throughput model above "
            f"(MiniLM-L6, 100 continuous prompts, the demo's small random CLIP ViT), `--batch_size {args.batch_size}`, "
            "one DataLoader worker per process. Both outputs hold exactly one record per line, in input order, an "
            "error record naming the fault at every bad line and entities at every other (checked line by line; "
            f"the script fails otherwise); they are {'' if result['identical'] else 'NOT '}identical byte for byte. "
            "Lines/s are a lower bound: the script samples memory (a /proc walk every 20 ms) during each run, and "
            "the machine's other jobs show in the load average.",
            "",
            "| command | lines | entity records | error records | lines/s | wall time |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "| bad line | error records, 1 process | error records, 2 processes |",
            "|---|---:|---:|",
            *kinds,
        ]
    )


def threads_rows(args: argparse.Namespace, throughput: dict) -> tuple[list[str], list[str]]:
    """The table's rows and, per (model, load, processes), the default against the best setting by hand."""
    runs, rows, verdicts = throughput["runs"], [], []
    for model_name in args.model_names:
        for load in args.load_names:
            for processes in (1, 2):
                group = {name: runs[(model_name, load, processes, name)]
                         for name, count, _ in THREAD_SETTINGS if count == processes}  # fmt: skip
                best_name = max(group, key=lambda name: group[name]["lines_per_s"])
                for name, result in group.items():
                    mark = " (best)" if name == best_name else ""
                    chose = f" (chose {' / '.join(result['chosen'])})" if name == "default" else ""
                    rows.append(f"| {model_name} | {load} | {processes} | {name}{chose}{mark} | "
                                f"{result['lines_per_s']:.1f} |")  # fmt: skip
                ratio = group["default"]["lines_per_s"] / group[best_name]["lines_per_s"]
                verdicts.append(f"{model_name}, {load}, {processes} process{'es' if processes > 1 else ''}: default / "
                                f"best by hand = **{ratio:.2f}** ({best_name})")  # fmt: skip
    return rows, verdicts


def markdown(args: argparse.Namespace, throughput: dict, memory: list[dict], took: float) -> str:
    memory_rows = [
        f"| {row['size']:,} | {row['input_mb']:.1f} MB | {row['output_mb']:.1f} MB | {row['lines_per_s']:.0f} | "
        f"{row['max_rss_mb']:.0f} MB | {row['tree_peak_mb']:.0f} MB |"
        for row in memory
    ]
    rows, verdicts = threads_rows(args, throughput)
    return "\n".join(
        [
            "## Prediction at scale (CPU)",
            "",
            f"`python benchmarks/prediction_scale.py --lines {args.lines} --batch_size {args.batch_size} --repeats "
            f"{args.repeats} --models '{args.models}' --loads '{args.loads}' --memory_lines {args.memory_lines}` "
            f"(took {took / 60:.0f} min). {cpu_name()} "
            f"({os.cpu_count()} logical CPUs), torch {torch.__version__}, transformers {transformers.__version__}; "
            f"load average {args.load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run (the competing "
            "job is this script's own).",
            "",
            f"**Threads and processes.** {args.lines} tweet-like lines, every third with its own random 320x240 JPEG; "
            "MiniLM-L6 with 16 (the demo's) or 100 (the paper's) continuous prompts and the demo's small random CLIP "
            f"ViT; `--batch_size {args.batch_size}`. 'default': `promptmner-predict` as it comes (one process), and "
            "`accelerate launch --multi_gpu --num_processes 2 -m predict_mner` (two gloo processes, which accelerate "
            "gives one thread each); the other rows are settings tried by hand. 'competing job': another process "
            f"keeps one core busy. Best of {args.repeats} interleaved rounds; lines/s of the prediction loop as the "
            "command prints it (model loading excluded); no memory sampling during these runs. 'chose': the torch threads "
            "and DataLoader workers per process the default took in each round, as its summary line says.",
            "",
            "| model | load | processes | setting | lines/s |",
            "|---|---|---:|---|---:|",
            *rows,
            "",
            *[f"- {verdict}" for verdict in verdicts],
            "",
            f"All outputs of a model are {'' if throughput['identical'] else 'NOT '}identical byte for byte.",
            "",
            f"**Memory against input size.** Tiny random model, one process with one DataLoader worker, "
            f"`--batch_size {args.memory_batch_size}`, one line in ten with a small image. Peak RSS of the largest "
            "process (the kernel's `ru_maxrss`) and the sampled peak of the process tree's summed PSS (main "
            "process and worker; shared pages count once).",
            "",
            "| input lines | input | output | lines/s | peak RSS, largest process | peak PSS, process tree |",
            "|---:|---:|---:|---:|---:|---:|",
            *memory_rows,
        ]
    )


def main() -> None:
    args = parse_args()
    args.load_before = os.getloadavg()[0]
    start = time.perf_counter()
    if args.bad_lines:
        with tempfile.TemporaryDirectory() as folder:
            result = measure_bad_lines(args, Path(folder))
        section = bad_lines_markdown(args, result, time.perf_counter() - start)
        publish_section(args.output, BAD_LINES_SECTION, section, write=not args.no_write)
        return
    with tempfile.TemporaryDirectory() as folder:
        throughput = measure_throughput(args, Path(folder))
        memory = measure_memory(args, Path(folder))
    section = markdown(args, throughput, memory, time.perf_counter() - start)
    publish_section(args.output, SECTION, section, write=not args.no_write)


if __name__ == "__main__":
    main()
