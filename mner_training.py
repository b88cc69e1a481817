"""Training pieces of PromptMNER (package only) that `run_mner.py` and a `transformers.Trainer` share: the batch
collator and the optimizer (the Trainer's `compute_metrics` is `mner_trainer.SpanMetrics`).

- [`MNERCollator`]: dataset rows (words, BIO tags, cached CLIP image embeddings or images) to model batches through
  the processor, with the span labels; the `data_collator` of a `transformers.Trainer`.
- [`create_optimizer`]: AdamW with the parameter groups of PromptMNER: no weight decay on biases, LayerNorm weights
  and prompts; the parameters trained from scratch at their own rate; torch's fused kernel where there is one.
- [`check_loss`]: a NaN or infinite training loss stops the run, naming the step.
"""

from __future__ import annotations

import math

import torch

from mner_embedding_cache import load_row_image


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops rather than train on (and save) garbage."""


def check_loss(step: int, loss: float) -> float:
    """`loss` when it is finite, else a [`NonFiniteLossError`] naming the optimizer step."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"the training loss of optimizer step {step} is {loss}: the run stops (the learning rate may be too high "
            "for this model and data; the last checkpoint and the best-dev model so far are kept)"
        )
    return loss


class MNERCollator:
    """Batches dataset rows in `mner_data`'s schema through the processor: `tokens`, the span labels of `tags` (when
    the rows have them) and the image: cached `image_embeds` (`mner_embedding_cache.add_image_embeddings`) when the
    rows have that column, else the `image` or `image_path` encoded by the processor's CLIP now. A missing or
    unreadable image sends its example down the text-only path, as in the cache.

    As a `transformers.Trainer`'s `data_collator` it needs the rows whole: `TrainingArguments(
    remove_unused_columns=False)` (the Trainer would otherwise drop every column the model's `forward` does not name).
    """

    def __init__(self, processor, max_length: int | None = None, text_only: bool = False):
        self.processor, self.max_length, self.text_only = processor, max_length, text_only

    def image_inputs(self, rows: list[dict]) -> dict:
        """The processor's image argument for these rows: their cached embeddings or their images (None: none)."""
        if self.text_only:
            return {}
        if "image_embeds" in rows[0]:
            return {"image_embeds": [row["image_embeds"] for row in rows]}
        if "image" in rows[0] or "image_path" in rows[0]:
            return {"images": [load_row_image(row.get("image_path"), row.get("image"))[0] for row in rows]}
        return {}

    def __call__(self, rows: list[dict]) -> dict:
        if not rows or "tokens" not in rows[0]:
            columns = sorted(rows[0]) if rows else []
            raise ValueError(
                f"MNERCollator: the rows need a 'tokens' column (and 'tags' for labels), got {columns}; "
                "mner_data.from_hf_dataset converts a Hub NER dataset, and a transformers.Trainer needs "
                "TrainingArguments(remove_unused_columns=False) to pass the rows whole"
            )
        batch = self.processor(
            [row["tokens"] for row in rows],
            is_split_into_words=True,
            tags=[row["tags"] for row in rows] if "tags" in rows[0] else None,
            max_length=self.max_length,
            **self.image_inputs(rows),
        )
        return dict(batch)


# --- optimizer -----------------------------------------------------------------------------------------------

NEW_PARAMETERS = ("span_head.", "promptmner.visual_clues.")  # trained from scratch; the rest starts from the backbone
PROMPT_PARAMETERS = ("visual_clues.prompt_embeds", "visual_clues.prompt_log_logit_scale")  # the clue path's scoring

# Devices with torch's fused AdamW: one kernel over all parameters instead of a loop of element-wise ops.
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")


def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_learning_rate: float | None = None,
    device_type: str = "cpu",
    prompt_learning_rate: float | None = None,
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, LayerNorm weights, the prompt embeddings and a learnable temperature;
    `NEW_PARAMETERS` learn at `head_learning_rate` (default: `learning_rate`); with `prompt_learning_rate`, the
    continuous prompts and a learnable temperature (`PROMPT_PARAMETERS`) learn at that rate in a group of their own
    (see BENCHMARKS.md, "Visual clues"); torch's fused implementation on the devices that have it (`device_type`:
    where the parameters will be trained)."""
    no_decay = ("bias", "LayerNorm.weight", "prompt_embeds", "prompt_log_logit_scale")
    named = list(model.named_parameters())
    prompts = [p for n, p in named if n.endswith(PROMPT_PARAMETERS)] if prompt_learning_rate else []
    named = [(n, p) for n, p in named if all(p is not q for q in prompts)]
    groups = []
    for is_head, lr in ((False, learning_rate), (True, head_learning_rate or learning_rate)):
        part = [(n, p) for n, p in named if n.startswith(NEW_PARAMETERS) == is_head]
        groups += [
            {"params": [p for n, p in part if not n.endswith(no_decay)], "weight_decay": weight_decay, "lr": lr},
            {"params": [p for n, p in part if n.endswith(no_decay)], "weight_decay": 0.0, "lr": lr},
        ]
    if prompts:
        groups.append({"params": prompts, "weight_decay": 0.0, "lr": prompt_learning_rate})
    return torch.optim.AdamW(groups, lr=learning_rate, fused=device_type in FUSED_ADAMW_DEVICES)
