"""Time and memory of the `multimodal-ner` pipeline against the length of the text (not a test).

    python benchmarks/long_texts.py [--words 1000,2000,5000,10000,20000] [--repeats 2] [--no_write]

Two models, each text only and with one 320x240 JPEG:
- `window 64`: a random 2-layer RoBERTa of width 32 with 64 positions (5 continuous prompts, the tiny CLIP of the
  tests): about 40 words a chunk, so the cost of chunking itself shows;
- `MiniLM`: the real all-MiniLM-L6-v2 (512 positions) with 16 continuous prompts and the demo's small random CLIP ViT.
Both span heads are random, their "O" bias raised until 2% of the spans of a calibration text score as entities, as
a trained head's few (a plain random head calls every other span an entity, and its output then dominates the cost).

Texts: Twitter-2015 test tweets joined into one text (built-in tweet-like sentences where the data is absent), cut at
each word count. Every (model, image, words) runs in a fresh subprocess, which builds the model, warms up on a short
text and times one call on the long text (best of `--repeats`, one torch thread); it reports its peak RSS (VmHWM) and
how much of it the call added over the loaded model (the call's own memory). Prints a markdown table and writes it
into BENCHMARKS.md between `<!-- long-texts:start -->` and `<!-- long-texts:end -->`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from inputs import tweet_words, write_images  # noqa: E402
from report import cpu_name, publish_section  # noqa: E402

SECTION = "long-texts"
MODELS = ("window 64", "MiniLM")
ENTITY_SPAN_RATE = 0.02  # the share of spans the calibrated random head scores as entities (a trained head: few)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", default="1000,2000,5000,10000,20000", help="comma-separated word counts")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per run; the best one is reported")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no_write", action="store_true", help="print the table only")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run, as JSON `[model, image, words]`
    return parser.parse_args(argv)


def long_text(words: int) -> str:
    """The first `words` words of the Twitter-2015 test tweets joined (repeated as needed)."""
    pool = tweet_words()
    return " ".join(pool[index % len(pool)] for index in range(words))


def build_pipeline(model_name: str):
    """The pipeline of one of `MODELS` on the CPU with one torch thread."""
    import torch

    from mner_backbone import model_from_backbone
    from mner_demo import DEMO_CLIP_CONFIG, TINY_CLIP_CONFIG, demo_backbone
    from pipeline_promptmner import MultimodalNERPipeline
    from processing_promptmner import PromptMNERProcessor

    torch.manual_seed(0)
    backbone = demo_backbone()
    if model_name == "MiniLM":
        processor = PromptMNERProcessor.from_clip(backbone, clip_config=DEMO_CLIP_CONFIG, clip_pretrained=None)
        model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=16)
    else:
        from transformers import RobertaConfig, RobertaModel

        processor = PromptMNERProcessor.from_clip(backbone, clip_config=TINY_CLIP_CONFIG, clip_pretrained=None,
                                                  max_span_length=4)  # fmt: skip
        tokenizer = processor.tokenizer
        config = RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=64, type_vocab_size=1,
                               pad_token_id=tokenizer.pad_token_id, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=37)  # fmt: skip
        model = model_from_backbone(RobertaModel(config), processor=processor, prompts="continuous", num_prompts=5)
    calibrate_head(model.eval(), processor, long_text(30))
    return MultimodalNERPipeline(model=model, processor=processor, device="cpu", num_threads=1)


def calibrate_head(model, processor, text: str) -> None:
    """Raise the random span head's "O" bias so that `ENTITY_SPAN_RATE` of the spans of `text` score as entities."""
    import torch

    inputs = processor(text)
    with torch.no_grad():
        outputs = model(**inputs)
        logits = outputs.logits[outputs.span_mask]  # (S, C): the valid spans
        margins = logits[:, 1:].max(dim=-1).values - logits[:, 0]  # (S,): how far each span is from "O"
        model.span_head.classifier.bias[0] += torch.quantile(margins, 1 - ENTITY_SPAN_RATE)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(model_name: str, with_image: bool, words: int, repeats: int) -> dict:
    """Build, warm up, then time `repeats` calls on the long text: `{"seconds", "entities", "peak_mb", "added_mb"}`."""
    import tempfile

    ner = build_pipeline(model_name)
    text = long_text(words)
    with tempfile.TemporaryDirectory() as folder:
        (image,) = write_images(Path(folder), 1)
        make = (lambda t: {"text": t, "image": image}) if with_image else (lambda t: t)
        ner(make(long_text(200)))  # warm-up: every code path once
        loaded = peak_rss_mb()
        best, entities = float("inf"), 0
        for _ in range(repeats):
            start = time.perf_counter()
            entities = len(ner(make(text)))
            best = min(best, time.perf_counter() - start)
    peak = peak_rss_mb()
    return {"seconds": best, "entities": entities, "peak_mb": peak, "added_mb": peak - loaded}


def run_in_subprocess(model_name: str, with_image: bool, words: int, repeats: int) -> dict:
    """[`one_run`] in a fresh interpreter (its own peak RSS), with one OpenMP thread."""
    command = [sys.executable, __file__, "--one", json.dumps([model_name, with_image, words]), "--repeats", str(repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{model_name} {words} words failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], args: argparse.Namespace, load: tuple[float, float], seconds: float) -> str:
    lines = [
        "## Long texts: time and memory against the length of the text (CPU)",
        "",
        f"`python benchmarks/long_texts.py --words {args.words} --repeats {args.repeats}` (took {seconds / 60:.0f} min). "
        "One call of the pipeline on one long text (Twitter-2015 test tweets joined), best of "
        f"{args.repeats}, one torch thread, each run in a fresh process. `window 64`: a random 2-layer RoBERTa with 64 "
        "positions (about 40 words a chunk); `MiniLM`: all-MiniLM-L6-v2 with 16 continuous prompts (512 positions). "
        "'with image': one 320x240 JPEG. Peak RSS: the process's VmHWM; added: what the call added over the loaded "
        f"model. {cpu_name()}; load average {load[0]:.1f} before and {load[1]:.1f} after.",
        "",
        "| model | input | words | s | s per 1,000 words | peak RSS | added |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {'with image' if row['image'] else 'text only'} | {row['words']:,} | "
            f"{row['seconds']:.2f} | {1000 * row['seconds'] / row['words']:.3f} | {row['peak_mb']:.0f} MB | "
            f"{row['added_mb']:.0f} MB |"
        )
    lines.append("")
    for model in dict.fromkeys(row["model"] for row in rows):
        for image in (False, True):
            per_word = [row["seconds"] / row["words"] for row in rows if row["model"] == model and row["image"] == image]
            if len(per_word) > 1:
                lines.append(f"- {model}, {'with image' if image else 'text only'}: time per word from the shortest "
                             f"to the longest text x{per_word[-1] / per_word[0]:.2f} (max/min x"
                             f"{max(per_word) / min(per_word):.2f}).")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        model_name, with_image, words = json.loads(args.one)
        print(json.dumps(one_run(model_name, with_image, words, args.repeats)))
        return
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for model_name in args.models.split(","):
        for with_image in (False, True):
            for words in (int(value) for value in args.words.split(",")):
                result = run_in_subprocess(model_name, with_image, words, args.repeats)
                rows.append({"model": model_name, "image": with_image, "words": words, **result})
                print(f"{model_name} {'image' if with_image else 'text'} {words}: {result}", file=sys.stderr)
    text = markdown(rows, args, (load_before, os.getloadavg()[0]), time.perf_counter() - started)
    publish_section(args.output, SECTION, text, write=not args.no_write)


if __name__ == "__main__":
    main()
