"""The `evaluate` metric (`mner_metric`): held to `span_utils` and `seqeval` on random tag sequences in both input forms,
its card's examples run, its errors name the sentence, and its Hub Space folder loads offline without this package."""

from __future__ import annotations

import doctest
import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_spans import BIO_TAGS, IOBES_TAGS, PROPERTY_SETTINGS, seqeval_default_scores, tagged_corpus

import mner_metric
from processes import REPO_ROOT, run, run_python
from span_utils import bio_scores, bio_to_spans, entity_scores


@pytest.fixture(scope="module")
def metric():
    return mner_metric.entity_metric()


def assert_equals_seqeval(scores: dict, gold: list[list[str]], pred: list[list[str]]) -> None:
    (precision, recall, f1), per_type = seqeval_default_scores(gold, pred)
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((precision, recall, f1), abs=1e-12)
    assert set(scores["per_type"]) == set(per_type)
    for name, row in per_type.items():
        mine = scores["per_type"][name]
        expected = (row["precision"], row["recall"], row["f1-score"])
        assert (mine["precision"], mine["recall"], mine["f1"]) == pytest.approx(expected, abs=1e-12)
        assert mine["number"] == row["support"]


def as_dicts(spans):
    return [{"start": start, "end": end, "label": label} for start, end, label in spans]


@PROPERTY_SETTINGS
@given(st.one_of(tagged_corpus(BIO_TAGS), tagged_corpus(IOBES_TAGS)), st.data())
def test_metric_equals_span_utils_and_seqeval_in_both_input_forms(metric, corpus, data):
    """Tags, spans (tuples with a score, dicts) and a mix of the two give span_utils' scores exactly, and those equal
    seqeval's default mode."""
    gold, pred = corpus
    expected = bio_scores(gold, pred)
    assert metric.compute(predictions=pred, references=gold) == expected
    gold_spans, pred_spans = [bio_to_spans(s) for s in gold], [bio_to_spans(s) for s in pred]
    scored = [[(*span, data.draw(st.floats(0, 1))) for span in sentence] for sentence in pred_spans]
    assert metric.compute(predictions=scored, references=[as_dicts(s) for s in gold_spans]) == expected
    assert metric.compute(predictions=pred_spans, references=gold) == expected  # spans against tags
    assert_equals_seqeval(metric.compute(predictions=pred, references=gold), gold, pred)


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.sampled_from(["PER", "LOC"])), max_size=8),
       st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.sampled_from(["PER", "LOC"])), max_size=8))
def test_overlapping_and_duplicate_spans_score_as_span_utils_does(metric, gold, pred):
    """Spans that no tag sequence can express (nested, overlapping, repeated) are scored as sets, like entity_scores."""
    gold, pred = [[(s, s + w, t) for s, w, t in gold]], [[(s, s + w, t) for s, w, t in pred]]
    assert metric.compute(predictions=pred, references=gold) == entity_scores(gold, pred)


def test_sentences_added_one_by_one_or_in_batches_score_as_one_call(metric):
    """add and add_batch store the same records as compute; an empty first sentence does not confuse the input form."""
    gold = [["O", "O"], ["B-PER", "I-PER", "O"], ["I-LOC", "O", "B-ORG"]]
    pred = [[], [(0, 1, "PER", 0.9)], [(0, 0, "LOC"), (2, 2, "PER")]]
    expected = entity_scores([bio_to_spans(s) for s in gold], [[span[:3] for span in s] for s in pred])
    assert metric.compute(predictions=pred, references=gold) == expected
    metric.add(prediction=pred[0], reference=gold[0])
    metric.add_batch(predictions=pred[1:], references=gold[1:])
    assert metric.compute() == expected
    assert expected["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "number": 1}


BAD_INPUTS = [
    ("unequal tag counts", [["B-PER", "O"]], [["B-PER"]], r"sentence 0: predictions have 2 tags but references 1"),
    ("bad tag", [["O"], ["B-PER", "X-PER"]], [["O"], ["O", "O"]],
     r"predictions\[1\]: invalid tag 'X-PER' at index 1"),
    ("string for a sentence", ["B-PER O"], [["B-PER", "O"]], r"predictions\[0\]: expected a list of tags or spans"),
    ("reversed span", [[(3, 1, "PER")]], [[]], r"predictions\[0\]\[0\]: \(3, 1, 'PER'\) is not a span"),
    ("span without label", [[{"start": 0, "end": 1}]], [[]], r"predictions\[0\]\[0\]: .* is not a span"),
    ("tags and spans in one sentence", [[]], [["B-PER", (0, 0, "PER")]],
     r"references\[0\]\[0\]: 'B-PER' is neither a BIO tag nor a span"),
    ("unequal sentence counts", [[]], [[], []], r"predictions have 1 sentences but references 2"),
]


@pytest.mark.parametrize("case, pred, gold, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_are_named(metric, case, pred, gold, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=pred, references=gold)


def test_card_examples_run_and_the_card_carries_the_metric_info(metric):
    """The examples of the inputs description (shown by `help(metric.compute)` and on the Hub card) give the printed
    results; the card's metadata makes a gradio metric Space tagged for evaluate, with the description and citation."""
    from huggingface_hub import RepoCard

    runner = doctest.DocTestRunner()
    test = doctest.DocTestParser().get_doctest(mner_metric._KWARGS_DESCRIPTION, {"metric": metric}, "card", None, 0)
    assert len(test.examples) == 4
    assert runner.run(test).failed == 0
    card = RepoCard(mner_metric.metric_card())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert {"evaluate", "metric"} <= set(card.data.tags)
    assert metric.info.description in card.text and metric.info.citation in card.text
    assert metric.info.inputs_description in card.text and metric.info.citation == mner_metric._CITATION


@pytest.mark.slow
def test_metric_space_loads_offline_without_the_package(tmp_path):
    """`python -m mner_metric FOLDER` writes a Space that `evaluate.load(FOLDER)` loads in a fresh process where this
    package's modules cannot be imported (as on a Hub user's machine); `evaluate.load(mner_metric.__file__)` loads the
    installed module. Both score like span_utils."""
    folder = tmp_path / "mner_entities"
    run([sys.executable, "-m", "mner_metric", str(folder)], cwd=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "app.py", "mner_entities.py", "mner_metric.py", "requirements.txt", "span_utils.py"
    ]  # fmt: skip
    gold, pred = [["B-PER", "I-PER", "O", "I-LOC"]], [[(0, 1, "PER", 0.9), (2, 3, "LOC", 0.4)]]
    expected = entity_scores([bio_to_spans(s) for s in gold], [[span[:3] for span in s] for s in pred])
    code = f"""
        import json, evaluate
        metric = evaluate.load({{path!r}})
        print(type(metric).__module__)
        print(json.dumps(metric.compute(predictions={pred!r}, references={gold!r})))
    """
    modules = str(tmp_path / "modules")
    output = run_python(code.replace("{path!r}", repr(str(folder))), tmp_path, hide_project=True,
                        HF_MODULES_CACHE=modules).splitlines()  # fmt: skip
    assert output[0].startswith("evaluate_modules.metrics.mner_entities.") and json.loads(output[1]) == expected
    installed = str(REPO_ROOT / "mner_metric.py")
    output = run_python(code.replace("{path!r}", repr(installed)), tmp_path, hide_project=False,
                        HF_MODULES_CACHE=modules).splitlines()  # fmt: skip
    assert output[0].startswith("evaluate_modules.metrics.mner_metric.") and json.loads(output[1]) == expected


def test_the_command_refuses_a_space_named_otherwise(tmp_path):
    """The Hub loads `<name>.py` from Space `org/<name>`: a repo id whose name is not the folder's is refused before
    anything is written (and long before any upload)."""
    with pytest.raises(SystemExit) as exit_info:
        mner_metric.main([str(tmp_path / "mner_entities"), "--push_to_hub", "org/entities"])
    assert exit_info.value.code == 2 and not (tmp_path / "mner_entities").exists()
    with pytest.raises(ValueError, match="use a Python identifier"):
        mner_metric.write_metric_space(tmp_path / "mner-entities")
