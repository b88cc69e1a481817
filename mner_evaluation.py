"""Evaluation of a training run (package only): the model's spans on a labelled split, their entity scores, the
results table and the predictions files.

- [`predict_spans`], [`span_scores`], [`evaluate`]: each example's decoded word spans, gathered from every process;
  entity-level micro P/R/F1 and per type against the gold BIO tags (conlleval semantics), computed by the project's
  `evaluate` metric (`mner_metric`), as the `Trainer`'s `compute_metrics` and the benchmarks compute them.
- [`results_table`]: the text table `run_mner.py` prints and the model card shows.
- [`write_prediction_files`]: the best model's predictions for error analysis: `predictions_<split>.jsonl` (text,
  words, gold and predicted entities) and `predictions_<split>.conll` (`word gold predicted` per line, the format
  conlleval reads).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from atomic_files import write_lines
from mner_metric import entity_metric
from span_utils import bio_to_spans, entity_dicts, spans_to_bio
from tweet_words import join_words

@torch.no_grad()
def predict_spans(model, dataloader, accelerator: Accelerator, processor) -> list[list[tuple[int, int, str, float]]]:
    """Each example's decoded `(start, end, label, score)` word spans, gathered from every process, in the
    dataloader's order."""
    model.eval()
    predictions = []
    for batch in dataloader:
        batch.pop("labels", None)
        outputs = model(**batch)
        num_words = (batch["word_start_index"] >= 0).sum(dim=1)
        spans = processor.decode_word_spans(outputs.logits, num_words)
        predictions.extend(accelerator.gather_for_metrics(spans, use_gather_object=True))
    return predictions


def span_scores(predictions: list[list[tuple]], gold_tags: list[list[str]]) -> dict:
    """Entity-level micro P/R/F1 (and per type) of predicted spans against the gold BIO tags (one list each per
    example, in the same order), by the `mner_metric` metric."""
    return entity_metric().compute(predictions=predictions, references=gold_tags)


def evaluate(model, dataloader, accelerator: Accelerator, processor, gold_tags: list[list[str]]) -> dict:
    """[`span_scores`] of the model's [`predict_spans`] (`gold_tags`: one list per example, in the dataloader's
    order)."""
    return span_scores(predict_spans(model, dataloader, accelerator, processor), gold_tags)




def fmt_prf(scores: dict) -> str:
    """`P/R/F1` in percent with two decimals."""
    return f"{100 * scores['precision']:.2f}/{100 * scores['recall']:.2f}/{100 * scores['f1']:.2f}"


def results_table(results: dict[str, dict]) -> str:
    """A text table: one row per split and entity type, P/R/F1 in percent."""
    lines = [f"{'split':<12}{'type':<10}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}", "-" * 55]
    for split, scores in results.items():
        rows = [("micro", scores)] + sorted(scores["per_type"].items())
        for name, s in rows:
            lines.append(
                f"{split:<12}{name:<10}{100 * s['precision']:>8.2f}{100 * s['recall']:>8.2f}"
                f"{100 * s['f1']:>8.2f}{s['number']:>9}"
            )
    return "\n".join(lines)


# --- predictions files ----------------------------------------------------------------------------------------


def _entities(spans: Iterable[Sequence], tokens: Sequence[str], scored: bool) -> list[dict]:
    """Word spans as entity dicts over `" ".join(tokens)` (character offsets, like the pipeline's output)."""
    text, offsets = join_words(tokens)
    entities = entity_dicts([(span[0], span[1], span[2], span[3] if scored else 0.0) for span in spans], text, offsets)
    if not scored:
        for entity in entities:
            del entity["score"]
    return entities


def prediction_record(tokens: Sequence[str], gold_tags: Sequence[str], predicted: Iterable[Sequence],
                      example_id: Any = None) -> dict:  # fmt: skip
    """One line of `predictions_<split>.jsonl`: `id` (when given), `text` (the words joined by spaces), `tokens`,
    and the `gold` and `predicted` entities (`{"entity_group", "word", "start", "end"}` with character offsets into
    `text`; predicted ones also have `score` when the spans carry one)."""
    predicted = list(predicted)
    record = {} if example_id is None else {"id": example_id}
    record.update(
        text=join_words(tokens)[0],
        tokens=list(tokens),
        gold=_entities(bio_to_spans(gold_tags), tokens, scored=False),
        predicted=_entities(predicted, tokens, scored=all(len(span) > 3 for span in predicted)),
    )
    return record


def conll_word(word: str) -> str:
    """A word as one CoNLL column: whitespace inside it becomes `_` (conlleval splits lines on spaces)."""
    return "_".join(word.split()) or "_"


def conll_lines(tokens: Sequence[str], gold_tags: Sequence[str], predicted: Iterable[Sequence]) -> list[str]:
    """`word gold_tag predicted_tag` per word (the gold tags as given; predicted spans as BIO)."""
    if len(tokens) != len(gold_tags):
        raise ValueError(f"{len(tokens)} words but {len(gold_tags)} gold tags")
    predicted_tags = spans_to_bio([tuple(span[:3]) for span in predicted], len(tokens))
    return [f"{conll_word(word)} {gold} {pred}" for word, gold, pred in zip(tokens, gold_tags, predicted_tags)]


def write_prediction_files(
    folder: str | os.PathLike,
    split: str,
    tokens: Sequence[Sequence[str]],
    gold_tags: Sequence[Sequence[str]],
    predicted: Sequence[Iterable[Sequence]],
    ids: Sequence[Any] | None = None,
) -> tuple[Path, Path]:
    """Write `predictions_<split>.jsonl` and `predictions_<split>.conll` in `folder`.

    Args:
        folder (`str` or `os.PathLike`): where to write (created if needed).
        split (`str`): the split's name, e.g. `"test"`.
        tokens (`Sequence[Sequence[str]]`): the words of each sentence.
        gold_tags (`Sequence[Sequence[str]]`): the gold BIO tags of each sentence, one per word.
        predicted (`Sequence[Iterable[tuple]]`): the predicted spans of each sentence, `(start, end, label[, score])`
            with `end` inclusive, non-overlapping.
        ids (`Sequence`, *optional*): an id per sentence (e.g. the image id), written to the JSONL file.

    Returns:
        `tuple[Path, Path]`: the JSONL and CoNLL files. In the CoNLL file, sentences are separated by a blank line;
        scoring it with conlleval or `seqeval` (default mode) gives the entity F1 that `span_utils.entity_scores`
        gives for the same gold tags and spans.
    """
    counts = {"tokens": len(tokens), "gold_tags": len(gold_tags), "predicted": len(predicted)}
    if ids is not None:
        counts["ids"] = len(ids)
    if len(set(counts.values())) != 1:
        raise ValueError(f"one entry per sentence is needed, got {counts}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jsonl, conll = folder / f"predictions_{split}.jsonl", folder / f"predictions_{split}.conll"
    rows = list(zip(tokens, gold_tags, [list(spans) for spans in predicted]))
    write_lines(conll, (line for row in rows for line in [*conll_lines(*row), ""]))
    records = (
        prediction_record(words, tags, spans, None if ids is None else ids[index])
        for index, (words, tags, spans) in enumerate(rows)
    )
    write_lines(jsonl, (json.dumps(record, ensure_ascii=False) for record in records))
    return jsonl, conll
