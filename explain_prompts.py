"""Print the visual clues a PromptMNER model sees in an image: its most probable prompts.

    python explain_prompts.py --model outputs/promptmner --image tweet.jpg [--top 10] [--nearest 3] [--json]

Loads the processor and the model saved in `--model` (a folder or a Hub repo id), encodes each image with the
processor's CLIP image tower, and ranks the MODEL's prompt embeddings by `p(P_i | I)` as the model computes it
(its temperature; with the optional clue-path settings, its standardised or whitened image embeddings and learned
temperature).
Discrete prompts are shown as their vocabulary words. Continuous prompts are shown by index, each with the nearest
words of the processor's vocabulary when `prompt_vocabulary_embeds.safetensors` (written by a processor that had
CLIP's text tower) is in the model folder or given with `--vocabulary_embeds`.
"""

from __future__ import annotations

import argparse
import json
import sys

from mner_runtime import load_model_and_processor
from prompt_vocabularies import (
    PROMPT_VOCABULARY_EMBEDS_NAME,
    explain_model_images,
    find_vocabulary_embeds,
    load_vocabulary_embeds,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder or Hub repo id of a saved model and processor")
    parser.add_argument("--processor", help="processor folder / repo id, if not the model's")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s)")
    parser.add_argument("--top", type=int, default=10, help="prompts shown per image (default 10)")
    parser.add_argument("--nearest", type=int, default=3, help="nearest vocabulary words per continuous prompt")
    parser.add_argument("--vocabulary_embeds", help=f"a {PROMPT_VOCABULARY_EMBEDS_NAME} file (continuous prompts)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top < 1 or args.nearest < 1:
        parser.error("--top and --nearest must be >= 1")
    return args


def format_explanation(image: str, entries: list[dict]) -> str:
    lines = [f"{image}:"]
    for rank, entry in enumerate(entries, start=1):
        line = f"  {rank:>2}. {entry['probability']:.4f}  {entry['prompt']}"
        if "nearest_words" in entry:
            line += "  ~ " + ", ".join(f"{word} ({cosine:.3f})" for word, cosine in entry["nearest_words"])
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, processor = load_model_and_processor(args.model, args.processor)
    if processor.image_scorer.vision is None:
        print("error: the processor has no CLIP image tower (text-only model): nothing to explain", file=sys.stderr)
        return 2
    vocab_embeds = None
    if model.config.prompt_kind == "continuous":
        path = args.vocabulary_embeds or find_vocabulary_embeds(args.model)
        if path is None:
            print(
                f"note: no {PROMPT_VOCABULARY_EMBEDS_NAME}; continuous prompts are shown without nearest words",
                file=sys.stderr,
            )
        else:
            vocab_embeds, _ = load_vocabulary_embeds(path, processor.prompt_vocabulary, processor.prompt_template)
    explanations = explain_model_images(
        model, processor, args.image, k=args.top, num_words=args.nearest, vocab_embeds=vocab_embeds
    )
    if args.json:
        print(json.dumps(dict(zip(args.image, explanations)), indent=2))
    else:
        header = f"prompt kind: {model.config.prompt_kind}, {model.config.num_prompts} prompts, template "
        print(header + repr(processor.prompt_template))
        for image, entries in zip(args.image, explanations):
            print(format_explanation(image, entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
