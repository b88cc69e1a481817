"""The `multimodal-ner` pipeline against its peer and its floor, side by side in one run on the CPU (not a test).

    python benchmarks/peer_token_classification.py [--num_examples 512 --image_examples 64 --batch_size 16]

- **Text only, against the peer**: transformers' `token-classification` pipeline (`aggregation_strategy="simple"`)
  on the same backbone, all-MiniLM-L6-v2 (its weights in both; random heads), over the same Twitter-2015 test tweets,
  one by one (`ner(text)` in a loop) and batched (`batch_size=N`).
- **With images, against the floor**: the multimodal pipeline with one 320x240 JPEG per tweet, against the least any
  implementation must do for it: the CLIP image tower alone on the same images (decoding and preprocessing included)
  plus the text-only model on the same texts, one by one and batched alike, for each of `--num_prompts` (the demo's
  16 and the paper's 100): that many visual clue tokens make the multimodal encoder's sequences longer than the
  text-only floor's, which is the method's own cost, not the pipeline's.
- **Against the floor of the method**: the same CLIP work, then the processor and the multimodal model's forward pass
  (clue tokens and all) on the precomputed embeddings: what the pipeline adds to the method itself.
- **Where the time goes** (one by one and batched, with images): image decoding and preprocessing, the CLIP tower, the
  text side (tokenization, encoder, span head), post-processing, each timed on its own over the same examples.

Every setting runs `--repeats` interleaved rounds and reports the best (which filters out other load); torch threads
are set once for all (`--threads`, default 1). Prints markdown and writes it into BENCHMARKS.md between
`<!-- peer:start -->` and `<!-- peer:end -->`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from inputs import tweets, write_images  # noqa: E402
from mner_backbone import model_from_backbone  # noqa: E402
from mner_demo import DEMO_CLIP_CONFIG, demo_backbone  # noqa: E402
from pipeline_promptmner import CPU_IMAGE_BATCH, MultimodalNERPipeline  # noqa: E402
from processing_promptmner import PromptMNERProcessor  # noqa: E402
from report import cpu_name, publish_section  # noqa: E402

SECTION = "peer"
BIO_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-OTHER", "I-OTHER"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=512, help="tweets for the text-only comparison")
    parser.add_argument("--image_examples", type=int, default=64, help="tweets with an image for the floor comparison")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_prompts", default="16,100",
                        help="comma-separated continuous prompt counts, one multimodal model each (demo 16, paper 100)")
    parser.add_argument("--clip", choices=["RN50", "demo"], default="RN50",
                        help="random open_clip RN50 (the paper's CLIP, its real cost) or the demo's small ViT")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per setting; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for everything")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no_write", action="store_true", help="print the report only")
    args = parser.parse_args(argv)
    args.prompt_counts = [int(count) for count in args.num_prompts.split(",") if count]
    if not args.prompt_counts or min(args.prompt_counts) < 1:
        parser.error(f"--num_prompts must be positive integers separated by commas, got {args.num_prompts!r}")
    return args


def build(args: argparse.Namespace):
    """`({prompt count: multimodal-ner pipeline}, token-classification pipeline)` on the same MiniLM weights and one
    CLIP, with random heads."""
    backbone = demo_backbone()
    torch.manual_seed(0)
    if args.clip == "demo":
        processor = PromptMNERProcessor.from_clip(backbone, clip_config=DEMO_CLIP_CONFIG, clip_pretrained=None)
    else:
        processor = PromptMNERProcessor.from_clip(backbone, clip_model_name="RN50", clip_pretrained=None)
    ners = {}
    for count in args.prompt_counts:
        model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=count)
        ners[count] = MultimodalNERPipeline(model=model.eval(), processor=processor, device="cpu",
                                            num_threads=args.threads)  # fmt: skip
    peer_model = transformers.AutoModelForTokenClassification.from_pretrained(
        backbone, num_labels=len(BIO_LABELS), id2label=dict(enumerate(BIO_LABELS))
    ).eval()
    peer = transformers.pipeline("token-classification", model=peer_model, tokenizer=processor.tokenizer,
                                 aggregation_strategy="simple", device="cpu")  # fmt: skip
    return ners, peer


def best_rates(runs: dict, repeats: int) -> dict:
    """Best examples/s of each `(run, count)` over `repeats` rounds that interleave the runs."""
    rates = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for key, (run, count) in runs.items():
            start = time.perf_counter()
            run()
            rates[key] = max(rates[key], count / (time.perf_counter() - start))
    return rates


def batches(items: list, size: int) -> list[list]:
    return [items[begin : begin + size] for begin in range(0, len(items), size)]


def floor_run(ner, texts: list[str], images: list[str], size: int):
    """The floor of the multimodal pipeline: CLIP alone on the images (at most `CPU_IMAGE_BATCH` a pass, its fastest
    batch on the CPU, as the pipeline does), then the text-only model on the texts."""
    scorer = ner.processor.image_scorer

    def run():
        for group in batches(images, size):
            scorer.encode_images(group, batch_size=min(len(group), CPU_IMAGE_BATCH))
        if size == 1:
            [ner(text) for text in texts]
        else:
            ner(texts, batch_size=size)

    return run


def method_floor_run(ner, texts: list[str], images: list[str], size: int):
    """The floor of the method itself: CLIP alone on the images as above, then the processor and the multimodal model
    (clue tokens and all) on the texts with those embeddings, with no pipeline around them and no post-processing."""
    scorer, processor = ner.processor.image_scorer, ner.processor

    def run():
        for text_group, image_group in zip(batches(texts, size), batches(images, size)):
            embeds = scorer.encode_images(image_group, batch_size=min(len(image_group), CPU_IMAGE_BATCH))  # (B, D)
            inputs = processor(text_group, image_embeds=list(embeds), return_tensors="pt")
            with torch.inference_mode():
                ner.model(**inputs)

    return run


def parts(ner, texts: list[str], images: list[str], size: int) -> dict:
    """Seconds of each part of the multimodal pipeline's work on the examples, timed on its own."""
    scorer, processor = ner.processor.image_scorer, ner.processor
    timings = {}
    start = time.perf_counter()
    decoded = [scorer.load_image(path) for path in images]
    pixels = [scorer.pixel_values(group) for group in batches(decoded, min(size, CPU_IMAGE_BATCH))]
    timings["image decoding and preprocessing"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        embeds = torch.cat([scorer.vision(group) for group in pixels])
    timings["CLIP image tower"] = time.perf_counter() - start
    start = time.perf_counter()
    encoded = [processor(group, image_embeds=list(embeds[i : i + len(group)]), return_tensors="pt")
               for i, group in zip(range(0, len(texts), size), batches(texts, size))]  # fmt: skip
    timings["tokenization (processor)"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = [ner.model(**inputs) for inputs in encoded]
    timings["encoder and span head"] = time.perf_counter() - start
    start = time.perf_counter()
    for inputs, output in zip(encoded, outputs):
        processor.post_process(output, inputs)
    timings["post-processing"] = time.perf_counter() - start
    return timings


def text_alone_seconds(ner, texts: list[str], size: int) -> float:
    """Seconds of the encoder and span head on the same texts without images: what the clue tokens add is measured
    against it."""
    encoded = [ner.processor(group, return_tensors="pt") for group in batches(texts, size)]
    start = time.perf_counter()
    with torch.inference_mode():
        [ner.model(**inputs) for inputs in encoded]
    return time.perf_counter() - start


def markdown(args, source, text_rates, image_rates, timings, text_tokens, text_alone, loads, seconds) -> str:
    size, counts = args.batch_size, args.prompt_counts
    lines = [
        "## Against the peer and the floor (CPU)",
        "",
        f"`python benchmarks/peer_token_classification.py --num_examples {args.num_examples} --image_examples "
        f"{args.image_examples} --batch_size {size} --num_prompts {args.num_prompts} --clip {args.clip} --repeats "
        f"{args.repeats} --threads {args.threads}` (took {seconds / 60:.0f} min). {source}; all-MiniLM-L6-v2 weights "
        f"in every pipeline (random heads); multimodal models with {' and '.join(map(str, counts))} continuous "
        f"prompts; random open_clip `{args.clip}` image tower; one random 320x240 JPEG per tweet, read from disk. Best "
        f"of {args.repeats} interleaved rounds. {cpu_name()}, {args.threads} torch thread(s), torch "
        f"{torch.__version__}, transformers {transformers.__version__}; load average {loads[0]:.1f} before and "
        f"{loads[1]:.1f} after.",
        "",
        f"| examples/s | one by one | batched (`batch_size={size}`) |",
        "|---|---:|---:|",
    ]
    rows = [("`multimodal-ner`, text only", text_rates, "ours"),
            ("`token-classification` (simple)", text_rates, "peer")]  # fmt: skip
    rows += [(f"`multimodal-ner`, with images, {count} prompts", image_rates, f"ours {count}") for count in counts]
    rows += [("floor: CLIP tower + text-only model", image_rates, "floor")]
    rows += [(f"floor of the method, {count} prompts: CLIP tower + multimodal model", image_rates, f"method {count}")
             for count in counts]  # fmt: skip
    for label, rates, name in rows:
        lines.append(f"| {label} | {rates[(name, 1)]:.1f} | {rates[(name, size)]:.1f} |")
    ratio = lambda rates, name, other, batch: rates[(name, batch)] / rates[(other, batch)]  # noqa: E731

    def against(floor: str) -> str:  # "16 prompts: 94% one by one, 94% batched; ..." of ours against a floor
        return "; ".join(
            f"{count} prompts: {ratio(image_rates, f'ours {count}', floor.format(count=count), 1):.0%} one by one, "
            f"{ratio(image_rates, f'ours {count}', floor.format(count=count), size):.0%} batched" for count in counts
        )

    batching = ", ".join(
        f"{image_rates[(f'ours {count}', size)] / image_rates[(f'ours {count}', 1)]:.2f}x with {count} prompts"
        for count in counts
    )
    lines += [
        "",
        f"**Text only, ours / peer: {ratio(text_rates, 'ours', 'peer', 1):.2f}x one by one, "
        f"{ratio(text_rates, 'ours', 'peer', size):.2f}x batched** (target >= 0.95x). "
        f"**With images, ours / floor: {against('floor')}** (target >= 90%). Against the floor of the method (the "
        f"same CLIP work and the multimodal model's forward pass with its clue tokens, nothing else): "
        f"{against('method {count}')}. "
        f"With images, batched / one by one: {batching}.",
        "",
        f"Where the time goes with images ({args.image_examples} tweets; each part timed on its own, seconds):",
        "",
        "| part | " + " | ".join(f"{count} prompts, one by one | {count} prompts, batched" for count in counts) + " |",
        "|---|" + "---:|" * (2 * len(counts)),
    ]
    for part in timings[(counts[0], 1)]:
        cells = " | ".join(f"{timings[(count, batch)][part]:.2f}" for count in counts for batch in (1, size))
        lines.append(f"| {part} | {cells} |")
    lines += ["", what_limits(timings, counts, text_tokens, text_alone)]
    return "\n".join(lines)


def what_limits(timings: dict, counts: list[int], text_tokens: float, text_alone: float) -> str:
    """One sentence per comparison on what bounds it, from the parts' timings and the encoder's time on the texts
    alone (one by one)."""
    shares = ", ".join(
        f"{timings[(count, 1)]['CLIP image tower'] / sum(timings[(count, 1)].values()):.0%} with {count} prompts"
        for count in counts
    )
    encoder = ", ".join(f"{timings[(count, 1)]['encoder and span head']:.2f} s with {count}" for count in counts)
    return (
        "What limits each: text only, the span head and its post-processing are the difference to the peer (the "
        "encoder is the same); with images, the CLIP tower takes most of the time one by one "
        f"({shares}), and the encoder's sequences carry the clue tokens besides the tweet's {text_tokens:.0f} text "
        "tokens on average, which the text-only floor does not: the encoder and span head took "
        f"{encoder} clue tokens, one by one, against {text_alone:.2f} s on the texts alone, so the gap to the floor "
        "grows with the prompt count (the last layer already computes the text block alone)."
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts, source = tweets(args.num_examples)
    ners, peer = build(args)
    ner = ners[args.prompt_counts[0]]  # text only, every prompt count runs the same encoder without clue tokens
    size = args.batch_size
    text_runs = {
        ("ours", 1): (lambda: [ner(text) for text in texts], len(texts)),
        ("peer", 1): (lambda: [peer(text) for text in texts], len(texts)),
        ("ours", size): (lambda: ner(texts, batch_size=size), len(texts)),
        ("peer", size): (lambda: peer(texts, batch_size=size), len(texts)),
    }
    ner(texts[:size], batch_size=size), peer(texts[:size], batch_size=size)  # warm-up
    text_rates = best_rates(text_runs, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        image_texts = texts[: args.image_examples]
        images = write_images(Path(folder), len(image_texts))
        examples = [{"text": text, "image": image} for text, image in zip(image_texts, images)]
        image_runs = {("floor", 1): (floor_run(ner, image_texts, images, 1), len(examples)),
                      ("floor", size): (floor_run(ner, image_texts, images, size), len(examples))}  # fmt: skip
        for count, multimodal in ners.items():
            multimodal(examples[:size], batch_size=size)  # warm-up
            one_by_one = lambda m=multimodal: [m(example) for example in examples]  # noqa: E731
            image_runs[(f"ours {count}", 1)] = (one_by_one, len(examples))
            image_runs[(f"ours {count}", size)] = (lambda m=multimodal: m(examples, batch_size=size), len(examples))
            for batch in (1, size):
                image_runs[(f"method {count}", batch)] = (method_floor_run(multimodal, image_texts, images, batch),
                                                          len(examples))  # fmt: skip
        image_rates = best_rates(image_runs, args.repeats)
        timings = {(count, batch): parts(ners[count], image_texts, images, batch)
                   for count in args.prompt_counts for batch in (1, size)}  # fmt: skip
        text_alone = text_alone_seconds(ner, image_texts, 1)
    text_tokens = sum(len(ids) for ids in ner.processor.tokenizer(image_texts)["input_ids"]) / len(image_texts)
    loads = (load_before, os.getloadavg()[0])
    seconds = time.perf_counter() - started
    report = markdown(args, source, text_rates, image_rates, timings, text_tokens, text_alone, loads, seconds)
    publish_section(args.output, SECTION, report, write=not args.no_write)


if __name__ == "__main__":
    main()
