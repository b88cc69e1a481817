"""Gradio app of a PromptMNER model, the `app.py` of its Hugging Face Space.

    python app.py --model outputs/demo            # a saved model folder, offline
    python app.py --model org/promptmner-twitter  # a Hub repository

A text box and an optional image in; out come the entities highlighted in the text (type and score), a table of
them, and a bar chart of the prompts with the highest `p(P_i|I)` for the image: the visual clues the model reads.
Continuous (learned) prompts are named by index and by their nearest vocabulary words, as `promptmner-explain`
shows them.

The app imports no `promptmner` module: model, processor and pipeline load with `trust_remote_code=True`, and the
explanations come from the model's own `prompt_vocabularies.py`. Which model it serves: `--model`, else the
environment variable `PROMPTMNER_MODEL`, else the first `models:` entry of the README.md next to this file (the
Space's front matter). `examples.json` next to this file (a list of `{"text", "image"}`, image paths relative to it)
gives the examples; without it the app shows built-in text examples. Gradio binds `--host` (default: Gradio's own,
127.0.0.1 unless `GRADIO_SERVER_NAME` says otherwise, as a Space does) and never opens a share link.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLES_FILE = "examples.json"
TYPE_COLORS = {"PER": "#f4a3a3", "LOC": "#a3c9f4", "ORG": "#a8e6a3", "MISC": "#f4d9a3", "OTHER": "#f4d9a3"}
TEXT_EXAMPLES = [
    "Kevin Durant arrives in Oklahoma City for the game against the Lakers",
    "RT @CNN: Angela Merkel meets Barack Obama at the White House",
    "Taylor Swift performs in New York tonight with Ed Sheeran",
]


# ----------------------------------------------------------------------------------------------------------------
# Which model, which examples
# ----------------------------------------------------------------------------------------------------------------


def model_from_readme(folder: Path = HERE) -> str | None:
    """The first `models:` entry of the Space README's front matter in `folder`, if any."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import metadata_load

    models = (metadata_load(readme) or {}).get("models") or []
    return models[0] if models else None


def resolve_model(explicit: str | None, folder: Path = HERE) -> str:
    """`explicit`, else `$PROMPTMNER_MODEL`, else the README's `models:`; a clear error when none is set."""
    model = explicit or os.environ.get("PROMPTMNER_MODEL") or model_from_readme(folder)
    if not model:
        raise SystemExit(
            "no model to serve: pass --model FOLDER_OR_REPO_ID, set PROMPTMNER_MODEL, or list it under `models:` "
            f"in {folder / 'README.md'}"
        )
    return model


def load_examples(folder: Path = HERE) -> list[list[str | None]]:
    """`[[text, image path or None], ...]` from `examples.json` in `folder`, else the built-in text examples."""
    path = folder / EXAMPLES_FILE
    if not path.is_file():
        return [[text, None] for text in TEXT_EXAMPLES]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of {{'text', 'image'}} objects, got {type(entries).__name__}")
    examples = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            raise ValueError(f"{path}: entry {index} must be an object with a string 'text'")
        image = entry.get("image")
        if image is not None and not (folder / image).is_file():
            raise ValueError(f"{path}: entry {index} names the image {image!r}, which is not in {folder}")
        examples.append([entry["text"], None if image is None else str(folder / image)])
    return examples


# ----------------------------------------------------------------------------------------------------------------
# Model and explanations
# ----------------------------------------------------------------------------------------------------------------


def load_pipeline(model: str):
    """The model's `multimodal-ner` pipeline (its remote code), on the GPU when there is one."""
    import torch
    from transformers import pipeline

    device = 0 if torch.cuda.is_available() else -1
    return pipeline("multimodal-ner", model=model, trust_remote_code=True, device=device)


def sibling_module(obj: Any, name: str):
    """The module `name` of the code that defined `obj`'s class (a model's remote code, or the installed files)."""
    package = type(obj).__module__.rpartition(".")[0]
    return importlib.import_module(f"{package}.{name}" if package else name)


class PromptExplainer:
    """The prompts of highest `p(P_i|I)` for an image, with the model's prompts and temperature.

    Args:
        ner: the model's `multimodal-ner` pipeline.
        vocabulary_embeds_path: `prompt_vocabulary_embeds.safetensors`, to name continuous prompts by their nearest
            vocabulary words (without it they are named by index only).
        top (`int`): how many prompts.
    """

    def __init__(self, ner, vocabulary_embeds_path: str | None = None, top: int = 10):
        self.model, self.processor, self.top = ner.model, ner.processor, top
        self.vocabularies = sibling_module(self.processor, "prompt_vocabularies")
        self.continuous = self.model.config.prompt_kind == "continuous"
        self.vocab_embeds = None
        if self.continuous and vocabulary_embeds_path is not None:
            self.vocab_embeds, _ = self.vocabularies.load_vocabulary_embeds(
                vocabulary_embeds_path, self.processor.prompt_vocabulary, self.processor.prompt_template
            )

    @property
    def available(self) -> bool:
        """Whether the model reads images at all (a text-only processor has no CLIP image tower)."""
        return self.processor.image_scorer.vision is not None

    def __call__(self, image) -> list[dict[str, Any]]:
        """`[{"prompt", "index", "probability"[, "nearest_words"]}, ...]`, most probable first."""
        return self.vocabularies.explain_model_images(
            self.model, self.processor, [image], k=self.top, vocab_embeds=self.vocab_embeds
        )[0]


# ----------------------------------------------------------------------------------------------------------------
# What the page shows (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def prompt_name(entry: dict[str, Any]) -> str:
    """A prompt's name on the chart: its word, or `"prompt 7 ~ player, team"` for a continuous prompt."""
    words = entry.get("nearest_words")
    if not words:
        return entry["prompt"]
    return f"{entry['prompt']} ~ " + ", ".join(word for word, _ in words)


def prompt_chart(entries: list[dict[str, Any]]):
    """The bar chart's data: one row per prompt, `prompt` and `probability`, most probable first."""
    import pandas as pd

    return pd.DataFrame(
        {"prompt": [prompt_name(e) for e in entries], "probability": [e["probability"] for e in entries]}
    )


def entity_mark(entity: dict[str, Any]) -> str:
    """An entity's mark in the highlighted text: its type and score, e.g. `"PER 0.97"`."""
    return f"{entity['entity_group']} {entity['score']:.2f}"


def highlighted(text: str, entities: list[dict[str, Any]]) -> dict[str, Any]:
    """`gr.HighlightedText`'s value: the text with each entity marked by its type and score."""
    marks = [{"entity": entity_mark(e), "start": e["start"], "end": e["end"]} for e in entities]
    return {"text": text, "entities": marks}


def entity_rows(entities: list[dict[str, Any]]) -> list[list[Any]]:
    """The entity table: `[word, type, score, start, end]` per entity."""
    return [[e["word"], e["entity_group"], round(e["score"], 4), e["start"], e["end"]] for e in entities]


def mark_colors(entities: list[dict[str, Any]]) -> dict[str, str]:
    """One color per entity type, for every mark of the highlighted text."""
    return {entity_mark(e): TYPE_COLORS.get(e["entity_group"], "#d9d9d9") for e in entities}


# ----------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------


def predict(ner, explainer: PromptExplainer, text: str, image, threshold: float):
    """Entities of `text` (+ `image`) and the image's top prompts, as the page's output values."""
    import gradio as gr

    if not text or not text.strip():
        raise gr.Error("Enter a text.")
    if image is not None and not explainer.available:
        raise gr.Error("This model is text-only: it has no CLIP image tower, leave the image empty.")
    example = text if image is None else {"text": text, "image": image}
    try:  # the pipeline checks the threshold (a number in [0, 1]) and names it
        entities = ner(example, threshold=threshold)
    except (TypeError, ValueError) as error:
        raise gr.Error(str(error)) from error
    marked = gr.HighlightedText(value=highlighted(text, entities), color_map=mark_colors(entities))
    if image is None:
        note = f"{len(entities)} entities. No image: the model took its text-only path (no visual clues)."
        return marked, entity_rows(entities), prompt_chart([]), note
    note = f"{len(entities)} entities. The chart shows the image's top {explainer.top} prompts p(P_i|I)."
    return marked, entity_rows(entities), prompt_chart(explainer(image)), note


def build_demo(ner, explainer: PromptExplainer, model: str, examples: list[list[str | None]]):
    """The Gradio Blocks page."""
    import gradio as gr

    labels = [label for label in ner.processor.labels if label != "O"]
    with gr.Blocks(title=f"PromptMNER: {model}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# PromptMNER multimodal NER\nModel: `{model}`. Entity types: {', '.join(labels)}. "
            "The image is optional; the chart shows the prompts the model finds most relevant to it, `p(P_i|I)`."
        )
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Text", lines=3, elem_id="text")
                image = gr.Image(label="Image (optional)", type="pil", sources=["upload"], elem_id="image")
                threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Threshold", elem_id="threshold")
                submit = gr.Button("Find entities", variant="primary", elem_id="submit")
            with gr.Column():
                marked = gr.HighlightedText(label="Entities (type and score)", elem_id="entities")
                table = gr.Dataframe(
                    headers=["word", "type", "score", "start", "end"], label="Entity table", elem_id="entity-table"
                )
                chart = gr.BarPlot(
                    x="prompt", y="probability", sort="-y", label="Top visual-clue prompts p(P_i|I)",
                    x_label_angle=-30, elem_id="prompts",
                )  # fmt: skip
                note = gr.Markdown(elem_id="note")
        run = lambda t, i, th: predict(ner, explainer, t, i, th)  # noqa: E731
        submit.click(run, inputs=[text, image, threshold], outputs=[marked, table, chart, note])
        gr.Examples(examples=examples, inputs=[text, image])
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or Hub repo id (default: $PROMPTMNER_MODEL or README models:)")
    parser.add_argument("--host", help="address to bind (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: Gradio's, 7860)")
    parser.add_argument("--top", type=int, default=10, help="prompts shown in the chart (default 10)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = resolve_model(args.model)
    ner = load_pipeline(model)
    vocabularies = sibling_module(ner.processor, "prompt_vocabularies")
    explainer = PromptExplainer(ner, vocabularies.find_vocabulary_embeds(model), top=args.top)
    demo = build_demo(ner, explainer, model, load_examples())
    # The example images lie next to this file, which may not be the working directory.
    demo.launch(server_name=args.host, server_port=args.port, share=False, allowed_paths=[str(HERE)])


if __name__ == "__main__":
    main(sys.argv[1:])
