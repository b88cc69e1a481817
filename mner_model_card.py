"""The model card of a trained PromptMNER model (package only): `huggingface_hub.ModelCard` with the measured results
in its metadata, the usage, the serving section and the training arguments.

- [`model_card`]: the whole card of a `run_mner.py` run.
- [`usage_snippets`], [`serving_section`], `WIDGET_EXAMPLES`: its usage section (pipeline, `AutoModel` +
  `AutoProcessor`, the batch command), what serves the model (the Hub's widget does not run `trust_remote_code`
  models; the pipeline, an Inference Endpoint with `handler.py` and a Gradio Space do) and the widget's texts.
"""

from __future__ import annotations

import json
from pathlib import Path

from mner_arguments import RunArguments
from mner_evaluation import results_table

# The card's widget texts (the hosted widget does not run this model; they stay as sample texts).
WIDGET_EXAMPLES = [
    {"text": "Kevin Durant arrives in Oklahoma City for the game against the Lakers", "example_title": "Sports"},
    {"text": "RT @CNN: Angela Merkel meets Barack Obama at the White House", "example_title": "Politics"},
    {"text": "Taylor Swift performs in New York tonight with Ed Sheeran", "example_title": "Music"},
]


def clue_path_note(arguments: RunArguments) -> str:
    """One card line naming the clue-path options beyond the paper's that the model was trained with ('' for none)."""
    if arguments.text_only:
        return ""
    options = [
        "standardised image embeddings" if arguments.standardize_image_embeds else "",
        "whitened image embeddings" if arguments.whiten_image_embeds else "",
        "k-means prompts" if arguments.prompts == "continuous" and arguments.prompt_init == "kmeans" else "",
        f"prompt temperature {arguments.prompt_temperature:g}" if arguments.prompt_temperature is not None else "",
        "learnable temperature" if arguments.learnable_temperature else "",
        f"clue scale {arguments.clue_scale:g}" if arguments.clue_scale not in (None, 1.0) else "",
    ]
    options = [option for option in options if option]
    if not options:
        return ""
    return (f"\nVisual clue path: {', '.join(options)} (options beyond the paper's method; see the project's "
            "docs/visual-clues.md).\n")  # fmt: skip


def model_card(arguments: RunArguments, summary: dict, labels: list[str], dataset_note: str | None = None):
    """A `huggingface_hub.ModelCard`: metadata with the measured results, usage, and the training arguments.

    `dataset_note`: a paragraph about the training data (the demo's generated corpus says what it is).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = "promptmner-demo (generated)" if arguments.demo else (arguments.dataset or "custom")
    eval_results = [
        EvalResult(
            task_type="token-classification",
            task_name="Multimodal Named Entity Recognition",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"entity {metric}",
            metric_value=round(100 * scores[metric], 2),
        )
        for split, scores in summary["results"].items()
        for metric in ("precision", "recall", "f1")
    ]
    card_data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="token-classification",
        tags=["promptmner", "multimodal-ner", "ner", "clip", "twitter", "span-prediction"],
        datasets=[arguments.dataset] if arguments.dataset else None,
        base_model=None if arguments.demo else arguments.model_name_or_path,
        model_name=arguments.hub_model_id or Path(arguments.output_dir).name,
        eval_results=eval_results,
        widget=WIDGET_EXAMPLES,
    )
    repo = arguments.hub_model_id or "path/to/this/folder"
    training_args = {name: value for name, value in sorted(arguments.settings().items()) if name != "hub_token"}
    training_args["prompt_vocabulary_size"] = len(arguments.prompt_words)
    notes = f"\n> **Demo model.** {dataset_note}\n" if arguments.demo and dataset_note else ""
    notes += clue_path_note(arguments)
    body = f"""
# {card_data.model_name}

PromptMNER (Wang et al., DASFAA 2022) multimodal named entity recognition: a frozen CLIP scores prompts
against the tweet's image, the prompt-based visual clues join the text under modality-aware self-attention,
and a span classifier labels every word span. Labels: {", ".join(labels[1:])}.
{notes}
## Results (entity-level micro P/R/F1, best-dev checkpoint)

```
{results_table(summary["results"])}
```

{usage_snippets(repo)}
Without an image the model takes its text-only path.

{serving_section(repo, arguments.hub_space_id)}

## Training arguments

```json
{json.dumps(training_args, indent=2, default=str)}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def usage_snippets(repo_id: str) -> str:
    """The model card's usage section (markdown): pipeline, AutoModel + AutoProcessor, and the batch command."""
    return f"""## Usage

With the `multimodal-ner` pipeline (the output is the aggregated format of the `token-classification` pipeline):

```python
from transformers import pipeline

ner = pipeline("multimodal-ner", model="{repo_id}", trust_remote_code=True)
ner({{"text": "Kevin Durant arrives in Oklahoma City", "image": "tweet.jpg"}})  # image: path or PIL image
ner("Kevin Durant arrives in Oklahoma City")  # no image: the model's text-only path
ner([{{"text": "...", "image": "a.jpg"}}, "another tweet"], batch_size=16)
```

With the model and processor:

```python
from PIL import Image
from transformers import AutoModel, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
inputs = processor(text="Kevin Durant arrives in Oklahoma City", images=Image.open("tweet.jpg"), return_tensors="pt")
entities = processor.post_process(model(**inputs), inputs)
```

Batch prediction over a JSONL file (`{{"text": ..., "image": "path or null", "id": ...}}` per line), with the
`promptmner` package installed:

```bash
promptmner-predict --model {repo_id} --input tweets.jsonl --output entities.jsonl --batch_size 16
```
"""


def serving_section(repo_id: str, space_id: str | None = None) -> str:
    """The model card's "Serving" section (markdown): what the Hub page can and cannot do, and the three ways."""
    space = (
        f"This model's Space: [{space_id}](https://huggingface.co/spaces/{space_id})."
        if space_id
        else "`run_mner.py` wrote a ready Space folder in its output folder (`space/`, not part of this repository); "
        "`--push_to_hub --hub_space_id org/name` pushes it."
    )
    body = json.dumps({"inputs": {"text": "Kevin Durant arrives in Oklahoma City", "image": "<base64 JPEG/PNG>"},
                       "parameters": {"threshold": 0.5}})  # fmt: skip
    return f"""## Serving

**The Hub's hosted inference widget on this page does not run this model**: the widget and serverless
inference only serve models run by an inference provider, and they never execute `trust_remote_code` code. The
widget examples are kept as sample texts. Three ways work:

1. **The pipeline**, on your machine: `pipeline("multimodal-ner", model="{repo_id}", trust_remote_code=True)`
   (see Usage).
2. **A dedicated Inference Endpoint**: this repository has a custom `handler.py` and a `requirements.txt`; deploy it
   from the model page (Deploy > Inference Endpoints) and send JSON (`image`: base64 JPEG/PNG or a data URL,
   optional; `inputs` may be a list; `parameters`: `threshold`, `batch_size`, `ignore_labels`):

   ```bash
   curl https://<your-endpoint>.endpoints.huggingface.cloud \\
     -H "Authorization: Bearer $HF_TOKEN" -H "Content-Type: application/json" \\
     -d '{body}'
   # [{{"entity_group": "PER", "score": 0.98, "word": "Kevin Durant", "start": 0, "end": 12}}, ...]
   ```

3. **A Gradio Space** with the entities highlighted and the image's top prompts `p(P_i|I)`. {space}
"""
