"""Tests for span_utils: hand-worked examples plus property tests against seqeval."""

from __future__ import annotations

import itertools
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from span_utils import (
    entity_dicts,
    valid_span_mask,
    bio_scores,
    bio_to_spans,
    decode_spans,
    entity_scores,
    enumerate_spans,
    long_spans,
    span_label_grid,
    spans_to_bio,
)

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, database=None)
TYPES = ["PER", "LOC", "ORG", "OTHER"]
BIO_TAGS = ["O"] + [f"{prefix}-{type_}" for type_ in TYPES for prefix in "BI"]
IOBES_TAGS = BIO_TAGS + [f"{prefix}-{type_}" for type_ in TYPES for prefix in "ES"]
LABEL2ID = {"O": 0, "PER": 1, "LOC": 2}


# --------------------------------------------------------------------------- enumerate_spans


def test_enumerate_spans_exact_small_case():
    assert enumerate_spans(4, 2) == [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]


@pytest.mark.parametrize("num_words, max_span_length", [(0, 1), (1, 1), (5, 3), (7, 7), (4, 10)])
def test_enumerate_spans_count_and_order(num_words, max_span_length):
    spans = enumerate_spans(num_words, max_span_length)
    expected_count = sum(min(max_span_length, num_words - start) for start in range(num_words))
    assert len(spans) == expected_count
    assert spans == sorted(spans)
    assert all(
        0 <= start <= end < num_words and end - start < max_span_length for start, end in spans
    )


def test_enumerate_spans_hand_count():
    # n=5, L=3: starts 0..4 contribute 3+3+3+2+1 = 12 spans.
    assert len(enumerate_spans(5, 3)) == 12


@pytest.mark.parametrize("num_words, max_span_length", [(3, 0), (3, -1), (-1, 2)])
def test_enumerate_spans_rejects_bad_sizes(num_words, max_span_length):
    with pytest.raises(ValueError):
        enumerate_spans(num_words, max_span_length)


# --------------------------------------------------------------------------- bio_to_spans


@pytest.mark.parametrize(
    "tags, spans",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [(0, 1, "PER"), (3, 3, "LOC")]),
        (["O", "I-PER", "I-PER", "O"], [(1, 2, "PER")]),  # I- after O opens an entity
        (["I-ORG", "O"], [(0, 0, "ORG")]),  # I- at sentence start
        (["B-PER", "I-LOC", "I-LOC"], [(0, 0, "PER"), (1, 2, "LOC")]),  # type change splits
        (["I-PER", "I-PER", "I-LOC"], [(0, 1, "PER"), (2, 2, "LOC")]),
        (["B-PER", "B-PER"], [(0, 0, "PER"), (1, 1, "PER")]),  # adjacent B- B-
        (["B-PER", "I-PER", "B-PER", "I-PER"], [(0, 1, "PER"), (2, 3, "PER")]),
        (["O", "O", "O"], []),
        ([], []),
        (["B-ORG", "I-ORG", "I-ORG"], [(0, 2, "ORG")]),  # entity running to the end
        (["B-MISC-X", "I-MISC-X"], [(0, 1, "MISC-X")]),  # type is everything after the first '-'
    ],
)
def test_bio_to_spans_examples(tags, spans):
    assert bio_to_spans(tags) == spans


@pytest.mark.parametrize(
    "tags, spans",
    [
        (["S-PER", "I-PER"], [(0, 0, "PER"), (1, 1, "PER")]),  # S- closes its entity
        (["B-PER", "E-PER", "I-PER"], [(0, 1, "PER"), (2, 2, "PER")]),  # E- closes too
        (["E-PER", "E-PER"], [(0, 0, "PER"), (1, 1, "PER")]),
        (["B-LOC", "I-LOC", "E-LOC", "S-ORG"], [(0, 2, "LOC"), (3, 3, "ORG")]),
    ],
)
def test_bio_to_spans_iobes_like_seqeval(tags, spans):
    assert bio_to_spans(tags) == spans


@pytest.mark.parametrize(
    "tags, bad_tag, index",
    [
        (["O", "X-PER"], "X-PER", 1),
        (["B-"], "B-", 0),
        (["O", "O", "B"], "B", 2),
        (["b-PER"], "b-PER", 0),
    ],
)
def test_bio_to_spans_rejects_bad_tags(tags, bad_tag, index):
    with pytest.raises(ValueError, match=rf"'{bad_tag}' at index {index}"):
        bio_to_spans(tags)


# --------------------------------------------------------------------------- spans_to_bio


def test_spans_to_bio_example():
    spans = [(3, 3, "LOC"), (0, 1, "PER")]
    assert spans_to_bio(spans, 5) == ["B-PER", "I-PER", "O", "B-LOC", "O"]


def test_spans_to_bio_empty():
    assert spans_to_bio([], 3) == ["O", "O", "O"]
    assert spans_to_bio([], 0) == []


@pytest.mark.parametrize(
    "spans, message",
    [
        ([(0, 2, "PER"), (2, 3, "LOC")], r"\(0, 2, 'PER'\) and \(2, 3, 'LOC'\) overlap"),
        ([(1, 1, "PER"), (1, 1, "PER")], "overlap"),
        ([(3, 4, "PER")], r"\(3, 4, 'PER'\) is out of range"),
        ([(-1, 0, "PER")], "out of range"),
        ([(2, 1, "PER")], "out of range"),
    ],
)
def test_spans_to_bio_rejects_invalid(spans, message):
    with pytest.raises(ValueError, match=message):
        spans_to_bio(spans, 4)


# --------------------------------------------------------------------------- span_label_grid


def test_span_label_grid_hand_example():
    # 3 words, spans of up to 2 words; cell [i][d] is span (i, i + d).
    grid = span_label_grid([(0, 1, "PER"), (2, 2, "LOC")], 3, 2, LABEL2ID)
    assert grid == [
        [0, 1],  # (0,0) O, (0,1) PER
        [0, 0],  # (1,1) O, (1,2) O
        [2, -100],  # (2,2) LOC, (2,3) past the end
    ]


def test_span_label_grid_nested_spans_and_custom_ignore():
    grid = span_label_grid([(0, 1, "PER"), (0, 0, "LOC")], 2, 3, LABEL2ID, ignore_index=-1)
    assert grid == [[2, 1, -1], [0, -1, -1]]


def test_span_label_grid_empty_sentence():
    assert span_label_grid([], 0, 4, LABEL2ID) == []


def test_span_label_grid_rejects_too_long_span():
    with pytest.raises(ValueError, match=r"\(0, 2, 'PER'\) has 3 words"):
        span_label_grid([(0, 2, "PER")], 4, 2, LABEL2ID)


def test_span_label_grid_can_drop_and_count_long_spans():
    spans = [(0, 2, "PER"), (3, 3, "LOC")]
    assert long_spans(spans, 2) == [(0, 2, "PER")]
    grid = span_label_grid(spans, 4, 2, LABEL2ID, drop_long_spans=True)
    assert grid == span_label_grid([(3, 3, "LOC")], 4, 2, LABEL2ID)


@pytest.mark.parametrize(
    "spans, label2id, message",
    [
        ([(0, 0, "MISC")], LABEL2ID, r"\(0, 0, 'MISC'\) has a type missing"),
        ([(0, 0, "PER")], {"PER": 1}, "no 'O' entry"),
        ([(0, 3, "PER")], LABEL2ID, r"\(0, 3, 'PER'\) is out of range"),
        ([(0, 1, "PER"), (0, 1, "LOC")], LABEL2ID, "two types"),
    ],
)
def test_span_label_grid_rejects_invalid(spans, label2id, message):
    with pytest.raises(ValueError, match=message):
        span_label_grid(spans, 3, 2, label2id)


# --------------------------------------------------------------------------- decode_spans


def test_decode_spans_resolves_overlap():
    candidates = [
        (2, 3, "PER", 0.6),
        (0, 2, "ORG", 0.9),
        (1, 1, "PER", 0.8),
        (5, 5, "LOC", 0.1),
        (3, 4, "LOC", 0.7),
    ]
    # 0.9 (0-2) kept; 0.8 (1) overlaps it; 0.7 (3-4) kept; 0.6 (2-3) overlaps; 0.1 (5) kept.
    assert decode_spans(candidates) == [(0, 2, "ORG", 0.9), (3, 4, "LOC", 0.7), (5, 5, "LOC", 0.1)]


@pytest.mark.parametrize(
    "candidates, expected",
    [
        ([(0, 1, "PER", 0.5), (1, 1, "LOC", 0.5)], [(1, 1, "LOC", 0.5)]),  # shorter wins
        ([(1, 2, "A", 0.5), (0, 1, "B", 0.5)], [(0, 1, "B", 0.5)]),  # then earlier start
        ([(0, 0, "PER", 0.5), (0, 0, "LOC", 0.5)], [(0, 0, "LOC", 0.5)]),  # then label
    ],
)
def test_decode_spans_ties_are_deterministic(candidates, expected):
    for order in itertools.permutations(candidates):
        assert decode_spans(order) == expected


def test_decode_spans_empty():
    assert decode_spans([]) == []


# --------------------------------------------------------------------------- entity_scores


def test_entity_scores_hand_example():
    gold = [[(0, 1, "PER"), (3, 3, "LOC")], [(0, 0, "ORG"), (2, 3, "OTHER")], []]
    pred = [[(0, 1, "PER"), (3, 3, "PER")], [], [(2, 2, "LOC")]]
    # Only (0,1,PER) in sentence 0 matches: tp = 1, n_gold = 4, n_pred = 3.
    # micro P = 1/3, R = 1/4, F1 = 2 * (1/12) / (7/12) = 2/7.
    # PER: tp 1, gold 1, pred 2 -> P 1/2, R 1, F1 2/3.
    # LOC: tp 0, gold 1, pred 1 (wrong sentence) -> 0, 0, 0.
    # ORG, OTHER: gold 1, pred 0 -> 0, 0, 0 (precision undefined -> 0.0).
    scores = entity_scores(gold, pred)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx(2 / 7)
    assert scores["number"] == 4
    assert list(scores["per_type"]) == ["LOC", "ORG", "OTHER", "PER"]
    assert scores["per_type"]["PER"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "number": 1}
    )
    for type_ in ["LOC", "ORG", "OTHER"]:
        assert scores["per_type"][type_] == {
            "precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1
        }


def test_entity_scores_empty_corpus_is_all_zero():
    assert entity_scores([], []) == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 0, "per_type": {}
    }


def test_entity_scores_accepts_lists_scored_spans_and_duplicates():
    gold = [[[0, 1, "PER"], [0, 1, "PER"]]]
    pred = [[(0, 1, "PER", 0.9)]]
    scores = entity_scores(gold, pred)
    assert (scores["precision"], scores["recall"], scores["number"]) == (1.0, 1.0, 1)


def test_entity_scores_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 sentences but pred has 1"):
        entity_scores([[], []], [[]])


def test_bio_scores_rejects_sentence_length_mismatch():
    with pytest.raises(ValueError, match="sentence 1"):
        bio_scores([["O"], ["O", "B-PER"]], [["O"], ["O"]])


# --------------------------------------------------------------------------- property tests

bio_sentences = st.lists(st.sampled_from(BIO_TAGS), max_size=12)


@st.composite
def non_overlapping_spans(draw):
    """Sorted non-overlapping spans and a sentence length that holds them."""
    spans = []
    position = 0
    for _ in range(draw(st.integers(0, 5))):
        start = position + draw(st.integers(0, 3))
        end = start + draw(st.integers(0, 3))
        spans.append((start, end, draw(st.sampled_from(TYPES))))
        position = end + 1
    return spans, position + draw(st.integers(0, 3))


@st.composite
def tagged_corpus(draw, tags):
    """Aligned (gold, pred) tag corpora: same sentence count and lengths.

    At least one sentence, because seqeval raises TypeError on an empty corpus.
    """
    gold, pred = [], []
    for length in draw(st.lists(st.integers(0, 12), min_size=1, max_size=6)):
        gold.append(draw(st.lists(st.sampled_from(tags), min_size=length, max_size=length)))
        pred.append(draw(st.lists(st.sampled_from(tags), min_size=length, max_size=length)))
    return gold, pred


@PROPERTY_SETTINGS
@given(bio_sentences)
def test_bio_round_trip_is_fixed_point(tags):
    spans = bio_to_spans(tags)
    canonical = spans_to_bio(spans, len(tags))
    assert bio_to_spans(canonical) == spans
    assert spans_to_bio(bio_to_spans(canonical), len(tags)) == canonical


@PROPERTY_SETTINGS
@given(non_overlapping_spans())
def test_spans_round_trip(spans_and_length):
    spans, num_words = spans_and_length
    assert bio_to_spans(spans_to_bio(spans, num_words)) == spans


@PROPERTY_SETTINGS
@given(non_overlapping_spans(), st.integers(1, 5))
def test_grid_marks_exactly_the_short_gold_spans(spans_and_length, max_span_length):
    spans, num_words = spans_and_length
    label2id = {"O": 0, **{type_: index + 1 for index, type_ in enumerate(TYPES)}}
    grid = span_label_grid(spans, num_words, max_span_length, label2id, drop_long_spans=True)
    marked = {
        (start, start + width, TYPES[cell - 1])
        for start, row in enumerate(grid)
        for width, cell in enumerate(row)
        if cell > 0
    }
    assert marked == set(spans) - set(long_spans(spans, max_span_length))
    valid = {
        (start, start + width)
        for start, row in enumerate(grid)
        for width, cell in enumerate(row)
        if cell >= 0
    }
    assert valid == set(enumerate_spans(num_words, max_span_length))


def seqeval_default_scores(gold, pred):
    """seqeval (default, non-strict mode) micro scores and per-type report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        micro = (precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred))
        report = classification_report(gold, pred, output_dict=True)
    per_type = {name: row for name, row in report.items() if not name.endswith(" avg")}
    return micro, per_type


def assert_matches_seqeval(gold, pred):
    ours = bio_scores(gold, pred)
    (precision, recall, f1), per_type = seqeval_default_scores(gold, pred)
    assert ours["precision"] == pytest.approx(precision, abs=1e-12)
    assert ours["recall"] == pytest.approx(recall, abs=1e-12)
    assert ours["f1"] == pytest.approx(f1, abs=1e-12)
    assert set(ours["per_type"]) == set(per_type)
    for name, row in per_type.items():
        mine = ours["per_type"][name]
        assert mine["precision"] == pytest.approx(row["precision"], abs=1e-12)
        assert mine["recall"] == pytest.approx(row["recall"], abs=1e-12)
        assert mine["f1"] == pytest.approx(row["f1-score"], abs=1e-12)
        assert mine["number"] == row["support"]


@PROPERTY_SETTINGS
@given(tagged_corpus(BIO_TAGS))
def test_bio_scores_match_seqeval_default_mode(corpus):
    assert_matches_seqeval(*corpus)


@PROPERTY_SETTINGS
@given(tagged_corpus(IOBES_TAGS))
def test_bio_scores_match_seqeval_default_mode_with_iobes_tags(corpus):
    assert_matches_seqeval(*corpus)


scored_candidates = st.lists(
    st.builds(
        lambda start, extra, label, score: (start, start + extra, label, score),
        st.integers(0, 10),
        st.integers(0, 4),
        st.sampled_from(TYPES),
        st.sampled_from([0.1, 0.5, 0.9, 1.0]),  # few values, so ties are common
    ),
    max_size=15,
)


@PROPERTY_SETTINGS
@given(st.data(), scored_candidates)
def test_decode_spans_is_non_overlapping_maximal_and_order_free(data, candidates):
    kept = decode_spans(candidates)
    assert all(candidate in candidates for candidate in kept)
    assert kept == sorted(kept, key=lambda candidate: candidate[0])
    for first, second in zip(kept, kept[1:]):
        assert first[1] < second[0]
    for candidate in candidates:  # anything dropped collides with a kept span
        assert any(candidate[0] <= other[1] and other[0] <= candidate[1] for other in kept)
    assert decode_spans(data.draw(st.permutations(candidates))) == kept


def test_valid_span_mask_marks_spans_that_end_inside_the_example():
    import torch

    mask = valid_span_mask(torch.tensor([3, 0, 1]), max_words=3, max_span_length=2)
    assert mask.dtype == torch.bool and mask.shape == (3, 3, 2)
    assert mask[0].tolist() == [[True, True], [True, True], [True, False]]
    assert not mask[1].any()
    assert mask[2].tolist() == [[True, False], [False, False], [False, False]]
    assert [(i, i + d) for i, d in mask[0].nonzero().tolist()] == enumerate_spans(3, 2)


def test_entity_dicts_maps_words_to_characters_sorted_by_start():
    text = "Obama met  Merkel in Berlin"
    offsets = [(0, 5), (6, 9), (11, 17), (18, 20), (21, 27)]
    spans = [(4, 4, "LOC", 0.5), (0, 0, "PER", 0.9), (2, 4, "MISC", 0.1)]
    entities = entity_dicts(spans, text, offsets, ignore_labels=["MISC"])
    assert entities == [
        {"entity_group": "PER", "score": 0.9, "word": "Obama", "start": 0, "end": 5},
        {"entity_group": "LOC", "score": 0.5, "word": "Berlin", "start": 21, "end": 27},
    ]
    assert entity_dicts(spans[2:], text, offsets)[0]["word"] == "Merkel in Berlin"
