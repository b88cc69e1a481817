"""Training PromptMNER with `transformers.Trainer` (package only): the `compute_metrics` that scores span logits as the
project's own evaluation does. The `data_collator` is `mner_training.MNERCollator` (with
`TrainingArguments(remove_unused_columns=False)`), the optimizer optionally `mner_training.create_optimizer`; the
saved folder is written by `pipeline_promptmner.save_pipeline` (docs/hugging-face-stack.md).

- [`SpanMetrics`]: the Trainer's `compute_metrics`. The model's logits are `(N, W, L, C)` span grids and its labels
  `(N, W, L)`; the spans are decoded like `mner_evaluation.predict_spans` decodes them
  (`PromptMNERProcessor.decode_word_spans`: non-overlapping, best first) and scored by the `mner_metric` metric, so
  `trainer.evaluate()` reports the F1 that `mner_evaluation.evaluate` and `run_mner.py` report for the same weights.
- [`flat_scores`]: the metric's nested result as the flat `{name: number}` the Trainer logs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mner_metric import entity_metric
from span_utils import bio_to_spans

IGNORE_INDEX = -100


def flat_scores(scores: dict) -> dict[str, float]:
    """`precision`, `recall`, `f1`, `number` and `<TYPE>_<score>` per type: what the Trainer logs (as `eval_f1`, ...)
    and what `metric_for_best_model` names."""
    flat = {name: scores[name] for name in ("precision", "recall", "f1", "number")}
    for type_, row in scores["per_type"].items():
        flat.update({f"{type_}_{name}": value for name, value in row.items()})
    return flat


def _batches(predictions, label_ids) -> list[tuple[np.ndarray, np.ndarray]]:
    """`(logits, labels)` per chunk: one chunk when the Trainer concatenated the batches (padding the word axis with
    -100), one per batch with `eval_do_concat_batches=False`. Extra model outputs in `predictions` are dropped."""
    chunks = list(zip(predictions, label_ids)) if isinstance(label_ids, list) else [(predictions, label_ids)]
    return [(logits[0] if isinstance(logits, (tuple, list)) else logits, labels) for logits, labels in chunks]


def label_grid_spans(labels: np.ndarray, label_names: Sequence[str]) -> list[list[tuple[int, int, str]]]:
    """The gold spans that a `(N, W, L)` label grid marks: cell `[n, i, d]` labels words `i..i+d` of example `n`."""
    outside = list(label_names).index("O")
    spans = [[] for _ in range(labels.shape[0])]
    for n, i, d in np.argwhere((labels != IGNORE_INDEX) & (labels != outside)).tolist():
        spans[n].append((i, i + d, label_names[labels[n, i, d]]))
    return spans


class SpanMetrics:
    """`compute_metrics` for a `transformers.Trainer` training PromptMNER.

    Args:
        processor ([`PromptMNERProcessor`]): decodes the logits (its labels and span length are the model's).
        gold_tags (`list[list[str]]`, *optional*): the BIO tags of the evaluated dataset, in its order (e.g.
            `dataset["tags"]`). Scored against them, the results are `run_mner.py`'s exactly, counting as missed the
            gold entities that the label grid cannot hold (longer than `max_span_length` words, or cut off by
            `max_length`). Without them the gold entities are read from the labels, which lack those entities.
            Tags of another dataset are refused: every gold entity the labels mark must be one of the tags'.
    """

    def __init__(self, processor, gold_tags: Sequence[Sequence[str]] | None = None):
        self.processor = processor
        self.gold_tags = None if gold_tags is None else [list(tags) for tags in gold_tags]

    def __call__(self, eval_prediction) -> dict[str, float]:
        if eval_prediction.label_ids is None:
            raise ValueError("SpanMetrics needs the labels of the evaluated dataset: its rows need 'tags'")
        predicted, gold = [], []
        for logits, labels in _batches(eval_prediction.predictions, eval_prediction.label_ids):
            num_words = (labels[:, :, 0] != IGNORE_INDEX).sum(axis=1)  # cell (i, 0) is valid for every real word
            predicted += self.processor.decode_word_spans(torch.from_numpy(np.asarray(logits)), num_words)
            gold += label_grid_spans(labels, self.processor.labels)
        references = gold if self.gold_tags is None else self.checked_gold_tags(gold)
        return flat_scores(entity_metric().compute(predictions=predicted, references=references))

    def checked_gold_tags(self, grid_spans: list[list[tuple]]) -> list[list[str]]:
        """The gold tags, once they are known to be the evaluated dataset's: as many examples, and every entity the
        labels mark among the tags' entities."""
        if len(self.gold_tags) != len(grid_spans):
            raise ValueError(f"SpanMetrics has gold tags for {len(self.gold_tags)} examples but the Trainer evaluated "
                             f"{len(grid_spans)}: give it the tags of the dataset being evaluated")  # fmt: skip
        for index, (tags, spans) in enumerate(zip(self.gold_tags, grid_spans)):
            if not set(spans) <= set(bio_to_spans(tags)):
                raise ValueError(f"SpanMetrics: example {index}'s labels mark {sorted(set(spans))}, which its gold tags "
                                 f"{tags} do not: give it the tags of the dataset being evaluated")  # fmt: skip
        return self.gold_tags
