"""Word-level span helpers shared by the PromptMNER model, processor, pipeline and training script.

A span is `(start, end, label)` where `start` and `end` are word indices and `end` is INCLUSIVE, so
`(2, 2, "PER")` is the single word at index 2. A scored span is `(start, end, label, score)`.

One definition of "entity" for everyone: the span grid ([`span_label_grid`]) and its valid cells
([`valid_span_mask`]), overlap resolution ([`decode_spans`]), the output dicts ([`entity_dicts`]) and evaluation
([`entity_scores`]). Top-level imports are stdlib only, so this module imports without torch; [`valid_span_mask`]
imports torch when called.

BIO decoding follows conlleval / seqeval's default (non-strict) mode exactly, so scores reported by
[`bio_scores`] equal `seqeval.metrics` in default mode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "Span",
    "ScoredSpan",
    "enumerate_spans",
    "bio_to_spans",
    "spans_to_bio",
    "long_spans",
    "span_label_grid",
    "decode_spans",
    "entity_dicts",
    "valid_span_mask",
    "entity_scores",
    "bio_scores",
]

Span = tuple[int, int, str]
ScoredSpan = tuple[int, int, str, float]

OUTSIDE = "O"
_ENTITY_PREFIXES = "BIES"
_CONTINUING_PREFIXES = "IE"
_OPEN_PREFIXES = "BI"


def _check_grid_shape(num_words: int, max_span_length: int) -> None:
    """Reject sizes for which no meaningful span set exists."""
    if num_words < 0:
        raise ValueError(f"num_words must be >= 0, got {num_words}")
    if max_span_length < 1:
        raise ValueError(f"max_span_length must be >= 1, got {max_span_length}")


def enumerate_spans(num_words: int, max_span_length: int) -> list[tuple[int, int]]:
    """List every candidate span of at most `max_span_length` words.

    The order (by start, then end) is the order the model scores spans in, so
    callers can zip this list with a flattened score tensor.
    """
    _check_grid_shape(num_words, max_span_length)
    return [
        (start, end)
        for start in range(num_words)
        for end in range(start, min(start + max_span_length, num_words))
    ]


def _parse_tag(tag: str, index: int) -> tuple[str, str]:
    """Split a tag into `(prefix, type)`; `("O", "")` for the outside tag.

    Accepts `O` and `B-X` / `I-X` / `E-X` / `S-X` with a non-empty type
    `X` (everything after the first hyphen, as seqeval reads it).
    """
    if tag == OUTSIDE:
        return OUTSIDE, ""
    if len(tag) > 2 and tag[0] in _ENTITY_PREFIXES and tag[1] == "-":
        return tag[0], tag[2:]
    raise ValueError(
        f"invalid tag {tag!r} at index {index}: expected 'O' or B-/I-/E-/S- plus a type"
    )


def _continues(prev_prefix: str, prev_type: str, prefix: str, type_: str) -> bool:
    """Whether a tag extends the entity opened before it (seqeval default mode).

    Only `I-X`/`E-X` right after `B-X`/`I-X` of the same type continue;
    every other entity tag opens a new entity.  Hence an `I-X` after `O`, at
    sentence start, after another type, or after `E-`/`S-` starts an entity.
    """
    return (
        prefix in _CONTINUING_PREFIXES
        and prev_prefix in _OPEN_PREFIXES
        and prev_type == type_
    )


def bio_to_spans(tags: Sequence[str]) -> list[Span]:
    """Decode a BIO (or IOBES) tag sequence into entity spans, sorted by start.

    Uses conlleval semantics, identical to seqeval's default mode, so that span
    based evaluation matches the numbers reported in the literature.
    """
    spans: list[Span] = []
    prev_prefix, prev_type = OUTSIDE, ""
    for index, tag in enumerate(tags):
        prefix, type_ = _parse_tag(tag, index)
        if prefix != OUTSIDE:
            if _continues(prev_prefix, prev_type, prefix, type_):
                spans[-1] = (spans[-1][0], index, type_)
            else:
                spans.append((index, index, type_))
        prev_prefix, prev_type = prefix, type_
    return spans


def _check_span_in_range(span: Span, num_words: int) -> None:
    """Reject a span that is reversed or does not fit in `num_words` words."""
    start, end, _ = span
    if not 0 <= start <= end < num_words:
        raise ValueError(f"span {span!r} is out of range for {num_words} words")


def spans_to_bio(spans: Iterable[Span], num_words: int) -> list[str]:
    """Encode non-overlapping spans as BIO tags (`B-X` then `I-X`).

    Overlap cannot be expressed in BIO, so it is an error rather than a silent
    loss of an entity.
    """
    tags = [OUTSIDE] * num_words
    owner: dict[int, Span] = {}
    for span in spans:
        _check_span_in_range(span, num_words)
        start, end, label = span
        for index in range(start, end + 1):
            if index in owner:
                raise ValueError(f"spans {owner[index]!r} and {span!r} overlap")
            owner[index] = span
            tags[index] = ("B-" if index == start else "I-") + label
    return tags


def long_spans(spans: Iterable[Span], max_span_length: int) -> list[Span]:
    """Return the spans with more than `max_span_length` words: the gold spans the span grid cannot hold."""
    return [span for span in spans if span[1] - span[0] >= max_span_length]


def _gold_label_id(span: Span, max_span_length: int, label2id: Mapping[str, int]) -> int:
    """Label id of a gold span, rejecting spans the grid cannot hold."""
    start, end, label = span
    if end - start >= max_span_length:
        raise ValueError(
            f"span {span!r} has {end - start + 1} words, "
            f"more than max_span_length={max_span_length}"
        )
    if label not in label2id:
        raise ValueError(f"span {span!r} has a type missing from label2id")
    return label2id[label]


def span_label_grid(
    spans: Iterable[Span],
    num_words: int,
    max_span_length: int,
    label2id: Mapping[str, int],
    ignore_index: int = -100,
    *,
    drop_long_spans: bool = False,
) -> list[list[int]]:
    """Build the model's `num_words x max_span_length` span label grid.

    Cell `[i][d]` labels span `(i, i + d)`: the gold type's id, `label2id["O"]`
    for a non-entity span, or `ignore_index` where `i + d` runs past the
    sentence.  Gold spans longer than `max_span_length` raise `ValueError`
    unless `drop_long_spans` is set, in which case they are skipped (their
    cells are then plain non-entities); see [`long_spans`] to count them.
    Spans may nest; two different types on the same span are an error.
    """
    _check_grid_shape(num_words, max_span_length)
    if OUTSIDE not in label2id:
        raise ValueError(f"label2id has no {OUTSIDE!r} entry")
    outside_id = label2id[OUTSIDE]
    grid = [
        [
            outside_id if start + width < num_words else ignore_index
            for width in range(max_span_length)
        ]
        for start in range(num_words)
    ]
    assigned: dict[tuple[int, int], Span] = {}
    for span in spans:
        _check_span_in_range(span, num_words)
        start, end, label = span
        if drop_long_spans and end - start >= max_span_length:
            continue
        label_id = _gold_label_id(span, max_span_length, label2id)
        previous = assigned.setdefault((start, end), span)
        if previous[2] != label:
            raise ValueError(f"spans {previous!r} and {span!r} give one span two types")
        grid[start][end - start] = label_id
    return grid


def _decode_priority(candidate: ScoredSpan) -> tuple[float, int, int, str]:
    """Sort key: highest score, then shorter span, then earlier start, then label."""
    start, end, label, score = candidate
    return (-score, end - start, start, label)


def decode_spans(candidates: Iterable[ScoredSpan]) -> list[ScoredSpan]:
    """Greedily pick non-overlapping spans, best first, and return them by start.

    A candidate is kept when none of its words is covered by an already kept
    span.  The full sort key makes the result independent of input order.
    Callers pass entity candidates only (non-entity spans filtered out).
    """
    kept: list[ScoredSpan] = []
    covered: set[int] = set()
    for candidate in sorted(candidates, key=_decode_priority):
        words = range(candidate[0], candidate[1] + 1)
        if covered.isdisjoint(words):
            covered.update(words)
            kept.append(candidate)
    return sorted(kept, key=lambda candidate: candidate[0])


def _safe_ratio(numerator: int, denominator: int) -> float:
    """`numerator / denominator`, or 0.0 when the ratio is undefined."""
    return numerator / denominator if denominator else 0.0


def _prf(true_positives: int, n_pred: int, n_gold: int) -> dict:
    """Precision, recall, F1 and gold count, 0.0 where undefined (as seqeval)."""
    precision = _safe_ratio(true_positives, n_pred)
    recall = _safe_ratio(true_positives, n_gold)
    denominator = precision + recall
    f1 = 2 * precision * recall / denominator if denominator else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "number": n_gold}


def _span_set(spans: Iterable[Sequence]) -> set[Span]:
    """Distinct `(start, end, label)` triples; extra fields such as a score are dropped.

    Accepting lists (e.g. spans read from JSON) and scored spans lets callers pass
    dataset rows or [`decode_spans`] output directly.
    """
    return {(span[0], span[1], span[2]) for span in spans}


def _count_by_type(spans: Iterable[Span]) -> Counter:
    """Number of spans per type."""
    return Counter(span[2] for span in spans)


def entity_scores(
    gold: Sequence[Iterable[Span]], pred: Sequence[Iterable[Span]]
) -> dict:
    """Entity-level micro precision/recall/F1 by exact span and type, plus per type.

    `gold[k]` and `pred[k]` are the spans of sentence `k`; only the first
    three fields of each span are used and duplicates within a sentence count once.
    Per-type scores cover every type seen in gold or predictions, sorted by name.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    gold_counts: Counter = Counter()
    pred_counts: Counter = Counter()
    hit_counts: Counter = Counter()
    for gold_spans, pred_spans in zip(gold, pred):
        gold_set, pred_set = _span_set(gold_spans), _span_set(pred_spans)
        gold_counts.update(_count_by_type(gold_set))
        pred_counts.update(_count_by_type(pred_set))
        hit_counts.update(_count_by_type(gold_set & pred_set))
    scores = _prf(hit_counts.total(), pred_counts.total(), gold_counts.total())
    scores["per_type"] = {
        type_: _prf(hit_counts[type_], pred_counts[type_], gold_counts[type_])
        for type_ in sorted(gold_counts.keys() | pred_counts.keys())
    }
    return scores


def bio_scores(
    gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
) -> dict:
    """[`entity_scores`] on BIO-tagged sentences; equals seqeval's default mode."""
    if len(gold_tags) != len(pred_tags):
        raise ValueError(
            f"gold has {len(gold_tags)} sentences but pred has {len(pred_tags)}"
        )
    for index, (gold_sentence, pred_sentence) in enumerate(zip(gold_tags, pred_tags)):
        if len(gold_sentence) != len(pred_sentence):
            raise ValueError(
                f"sentence {index}: gold has {len(gold_sentence)} tags "
                f"but pred has {len(pred_sentence)}"
            )
    return entity_scores(
        [bio_to_spans(sentence) for sentence in gold_tags],
        [bio_to_spans(sentence) for sentence in pred_tags],
    )


def valid_span_mask(num_words, max_words: int, max_span_length: int):
    """Which cells of a `(B, W, L)` span grid are real spans.

    Args:
        num_words (`torch.Tensor` of shape `(batch_size,)`):
            The number of words of each example.
        max_words (`int`):
            `W`, the padded number of words (span start positions).
        max_span_length (`int`):
            `L`, the longest span in words.

    Returns:
        `torch.BoolTensor` of shape `(batch_size, max_words, max_span_length)`, on `num_words`' device: True at
        `[b, i, d]` when the span of words `i..i+d` ends before `num_words[b]`.
    """
    import torch

    starts = torch.arange(max_words, device=num_words.device)[:, None]  # (W, 1)
    ends = starts + torch.arange(max_span_length, device=num_words.device)[None, :]  # (W, L)
    return ends[None] < num_words[:, None, None]  # (B, W, L)


def entity_dicts(
    spans: Iterable[ScoredSpan],
    text: str,
    offsets: Sequence[tuple[int, int]],
    ignore_labels: Iterable[str] = (),
) -> list[dict]:
    """Word spans as the token-classification pipeline's aggregated entities.

    Args:
        spans (`Iterable[tuple[int, int, str, float]]`):
            Scored word spans `(start, end_inclusive, label, score)`.
        text (`str`):
            The text the words come from.
        offsets (`Sequence[tuple[int, int]]`):
            `offsets[i] = (start_char, end_char)` of word `i` in `text`.
        ignore_labels (`Iterable[str]`, *optional*):
            Labels to leave out.

    Returns:
        `list[dict]`: `{"entity_group", "score", "word", "start", "end"}` dicts sorted by `start`, with
        character offsets and `word == text[start:end]`.
    """
    ignored = set(ignore_labels)
    entities = [
        {
            "entity_group": label,
            "score": score,
            "word": text[offsets[start][0] : offsets[end][1]],
            "start": offsets[start][0],
            "end": offsets[end][1],
        }
        for start, end, label, score in spans
        if label not in ignored
    ]
    return sorted(entities, key=lambda entity: entity["start"])
