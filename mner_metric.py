"""The entity metric of PromptMNER as an `evaluate` module: entity-level micro precision, recall and F1, and per type,
by exact span and type, with conlleval semantics (an `I-` after `O` opens an entity), equal to `seqeval`'s default
mode.

- [`MNEREntityMetric`]: the `evaluate.Metric`. Its inputs are, per sentence, BIO tags (like `seqeval`) or word spans
  `(start, end, label)` (end inclusive; `{"start", "end", "label"}` dicts work too); the scoring is
  `span_utils.entity_scores`, the one implementation the whole project uses (`span_utils.bio_to_spans` reads tags).
- [`entity_metric`]: an instance kept in memory, what the package's own evaluations compute with.
- [`metric_card`], [`write_metric_space`], `python -m mner_metric FOLDER [--push_to_hub org/name]`: the folder of a
  Hub metric Space (this module, `span_utils.py`, a loading script named after the folder, the card, the widget app)
  and its upload; `evaluate.load(FOLDER)` and, once pushed, `evaluate.load("org/name")` load it.

`evaluate.load(mner_metric.__file__)` loads this module offline. It imports only `datasets`, `evaluate` and
`span_utils`, so that the published Space runs without the rest of the package.
"""

from __future__ import annotations

import argparse
import numbers
import sys
import textwrap
from pathlib import Path

import datasets
import evaluate

try:  # loaded by evaluate from a Space folder, span_utils.py beside it
    from .span_utils import bio_to_spans, entity_scores
except ImportError:  # the installed package's top-level module
    from span_utils import bio_to_spans, entity_scores

_DESCRIPTION = """\
Entity-level micro precision, recall and F1 of named entity recognition, and the same scores per entity type, by
exact span and type: a predicted entity counts only when its first word, last word and type all equal a reference
entity's. Tags are read with conlleval semantics, as `seqeval` reads them in its default mode: an `I-X` that does not
continue a `B-X` or `I-X` opens a new entity, so the scores equal `seqeval`'s on the same tag sequences. Inputs are
per sentence either BIO (or IOBES) tags, like `seqeval`'s, or word spans `(start, end, label)` with the end word
included, which is what span-based models (PromptMNER's decoder, nested or overlapping predictions) produce; the two
forms may be mixed, and duplicate spans within a sentence count once. This is the metric of PromptMNER (multimodal
NER on Twitter-2015/2017) and computes with its `span_utils.entity_scores`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list`): per sentence, the predicted BIO tags (`["B-PER", "I-PER", "O"]`) or the
        predicted word spans (`[(0, 1, "PER")]` or `[{"start": 0, "end": 1, "label": "PER"}]`; a fourth field of a
        tuple, such as a score, is ignored).
    references (`list` of `list`): per sentence, the reference tags or spans, in the same order.

Returns:
    precision (`float`): correct predicted entities / predicted entities (0.0 when nothing is predicted).
    recall (`float`): correct predicted entities / reference entities (0.0 when there are none).
    f1 (`float`): the harmonic mean of precision and recall (0.0 when both are 0).
    number (`int`): the number of reference entities.
    per_type (`dict`): for every type in the references or predictions, its own `precision`, `recall`, `f1` and
        `number`.

Examples:

    `metric` is `evaluate.load("mner_metric.py")`, or the Hub Space's `evaluate.load("<org>/<name>")`:

    >>> results = metric.compute(predictions=[["B-PER", "I-PER", "O", "B-LOC"]],
    ...                          references=[["B-PER", "I-PER", "O", "B-ORG"]])
    >>> round(results["f1"], 4), results["per_type"]["PER"]["f1"], results["number"]
    (0.5, 1.0, 2)
    >>> results = metric.compute(predictions=[[(0, 1, "PER", 0.98), (3, 3, "LOC", 0.61)]],
    ...                          references=[["O", "I-PER", "I-PER", "B-LOC"]])
    >>> results["precision"], results["recall"], results["per_type"]["LOC"]
    (0.5, 0.5, {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'number': 1})
"""

_CITATION = """\
@inproceedings{wang2022promptmner,
  title     = {PromptMNER: Prompt-Based Entity-Related Visual Clue Extraction and Integration for Multimodal Named
               Entity Recognition},
  author    = {Wang and others},
  booktitle = {Database Systems for Advanced Applications (DASFAA)},
  year      = {2022}
}
@inproceedings{tjong-kim-sang-de-meulder-2003-introduction,
  title     = {Introduction to the {C}o{NLL}-2003 Shared Task: Language-Independent Named Entity Recognition},
  author    = {Tjong Kim Sang, Erik F. and De Meulder, Fien},
  booktitle = {Proceedings of the Seventh Conference on Natural Language Learning at HLT-NAACL 2003},
  pages     = {142--147},
  year      = {2003}
}
@misc{seqeval,
  title  = {{seqeval}: A Python framework for sequence labeling evaluation},
  author = {Hiroki Nakayama},
  year   = {2018},
  url    = {https://github.com/chakki-works/seqeval}
}
"""

_LIMITATIONS = """\
Exact match only: a predicted entity one word too long, or of the right extent with another type, is both a false
positive and a false negative, as in conlleval. The scores are micro averages over entities, so frequent types weigh
more; the per-type scores show the rest. BIO tags are read leniently (conlleval, `seqeval`'s default mode): an
`I-X` after `O` or after another type opens an entity rather than being an error, which is how the Twitter-2015
reference files, which contain such sequences, have always been scored. Only IOB1/IOB2/IOBES prefixes are read
(`B-`, `I-`, `E-`, `S-`, and `O`); any other tag is an error naming the sentence and the tag.
"""

SPAN_FEATURE = {"start": datasets.Value("int64"), "end": datasets.Value("int64"), "label": datasets.Value("string")}
FEATURES = datasets.Features({"predictions": datasets.List(SPAN_FEATURE), "references": datasets.List(SPAN_FEATURE)})
SPAN_KEYS = ("start", "end", "label")


def _span(item, where: str) -> tuple[int, int, str]:
    """`(start, end, label)` of one span given as a tuple/list (a fourth field, e.g. a score, ignored) or a dict."""
    if isinstance(item, dict):
        fields = tuple(item.get(key) for key in SPAN_KEYS)
    elif isinstance(item, (list, tuple)) and len(item) in (3, 4):
        fields = tuple(item[:3])
    else:
        raise ValueError(f"{where}: {item!r} is neither a BIO tag nor a span (start, end, label)")
    start, end, label = fields
    integers = all(isinstance(value, numbers.Integral) and not isinstance(value, bool) for value in (start, end))
    if not (integers and 0 <= start <= end and isinstance(label, str) and label):
        raise ValueError(f"{where}: {item!r} is not a span: expected word indices 0 <= start <= end and a label")
    return int(start), int(end), label


def sentence_spans(sentence, where: str) -> list[dict]:
    """One sentence's entities as `{"start", "end", "label"}` records: BIO/IOBES tags decoded by
    `span_utils.bio_to_spans` (conlleval semantics), or spans as given."""
    if isinstance(sentence, str):
        raise ValueError(f"{where}: expected a list of tags or spans for the sentence, got the string {sentence!r}")
    items = list(sentence)
    if all(isinstance(item, str) for item in items):
        try:
            spans = bio_to_spans(items)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    else:
        spans = [_span(item, f"{where}[{index}]") for index, item in enumerate(items)]
    return [dict(zip(SPAN_KEYS, span)) for span in spans]


def _check_tag_lengths(prediction, reference, index: int) -> None:
    """Two tag sequences of one sentence must tag the same words (as `seqeval` requires)."""
    is_tags = lambda s: not isinstance(s, str) and len(s) and all(isinstance(tag, str) for tag in s)  # noqa: E731
    if is_tags(prediction) and is_tags(reference) and len(prediction) != len(reference):
        raise ValueError(f"sentence {index}: predictions have {len(prediction)} tags but references {len(reference)}")


def span_records(predictions, references) -> tuple[list, list]:
    """Both sides of a batch as span records, sentence by sentence, each error naming its side and sentence."""
    if predictions is None or references is None:
        return predictions, references
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"predictions have {len(predictions)} sentences but references {len(references)}")
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        _check_tag_lengths(prediction, reference, index)
    return (
        [sentence_spans(sentence, f"predictions[{index}]") for index, sentence in enumerate(predictions)],
        [sentence_spans(sentence, f"references[{index}]") for index, sentence in enumerate(references)],
    )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MNEREntityMetric(evaluate.Metric):
    """Entity-level micro P/R/F1 and per type (conlleval semantics) of BIO tags or word spans; see the module."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=FEATURES,
            reference_urls=["https://www.clips.uantwerpen.be/conll2003/ner/", "https://github.com/chakki-works/seqeval"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add sentences (BIO tags or spans, see below) to the metric's stack; they are stored as spans."""
        predictions, references = span_records(predictions, references)
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one sentence (BIO tags or spans, see below) to the metric's stack; it is stored as spans."""
        if prediction is not None and reference is not None:
            (prediction,), (reference,) = span_records([prediction], [reference])
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references) -> dict:
        return entity_scores(_as_tuples(references), _as_tuples(predictions))


def _as_tuples(sentences: list[list[dict]]) -> list[list[tuple]]:
    """Stored span records back as `span_utils` spans."""
    return [[tuple(span[key] for key in SPAN_KEYS) for span in sentence] for sentence in sentences]


def entity_metric() -> MNEREntityMetric:
    """A [`MNEREntityMetric`] that keeps its inputs in memory (no cache files): what `run_mner.py`, the `Trainer`'s
    `compute_metrics` and the benchmarks compute their scores with."""
    return MNEREntityMetric(keep_in_memory=True)


# --- the Hub metric Space ------------------------------------------------------------------------------------------

SPACE_TITLE = "PromptMNER entity F1"


def metric_card(title: str = SPACE_TITLE) -> str:
    """The README.md of the metric's Space: the Space's metadata, then the card (description, how to use it, inputs
    and outputs with examples, limitations, citation), from the texts the metric's `MetricInfo` carries."""
    summary = _DESCRIPTION.split(". ")[0].replace("\n", " ") + "."
    return f"""---
title: {title}
emoji: 🏷️
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: 3.19.1
app_file: app.py
pinned: false
tags:
- evaluate
- metric
description: >-
  {summary}
---

# Metric Card for {title}

## Metric Description

{_DESCRIPTION}
## How to Use

```python
import evaluate

metric = evaluate.load("<org>/<name>")   # this Space; offline: evaluate.load("<folder of this Space>")
metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])
```

### Inputs, outputs and examples
{_KWARGS_DESCRIPTION}
## Limitations and Bias

{_LIMITATIONS}
## Citation

```bibtex
{_CITATION}```
"""


# evaluate copies the files a loading script imports relatively (`from .x import`) beside it: span_utils.py for
# mner_metric.py. Those import lines carry no comment (evaluate would read one as the URL of the file), and the
# templates are indented here because evaluate reads every unindented import line of this module as one of its own.
_LOADING_SCRIPT = textwrap.dedent('''\
    """{title}: the loading script of this metric Space (written by `python -m mner_metric`).

    It imports span_utils here so that evaluate fetches span_utils.py beside it for mner_metric.py.
    """

    from .span_utils import entity_scores
    from .mner_metric import MNEREntityMetric

    __all__ = ["MNEREntityMetric", "entity_scores"]
    ''')

_APP = textwrap.dedent('''\
    import os

    import evaluate
    from evaluate.utils import launch_gradio_widget

    module = evaluate.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}.py"))
    launch_gradio_widget(module)
    ''')


def write_metric_space(folder: str | Path, title: str = SPACE_TITLE) -> Path:
    """Write the metric's Space into `folder`, whose name is the metric's (and the Hub repository's) name: the loading
    script `<name>.py`, this module and `span_utils.py` beside it, the card as README.md, the widget's `app.py` and
    `requirements.txt`. Each file is written whole."""
    from atomic_files import copy_file, write_text

    folder = Path(folder)
    name = folder.name
    if not name.isidentifier() or name in ("mner_metric", "span_utils"):
        raise ValueError(f"{folder}: the folder's name is the metric's module name: use a Python identifier such as "
                         "'mner_entities' (not mner_metric or span_utils)")  # fmt: skip
    write_text(folder / f"{name}.py", _LOADING_SCRIPT.format(title=title))
    copy_file(Path(__file__), folder / "mner_metric.py")
    copy_file(Path(sys.modules[bio_to_spans.__module__].__file__), folder / "span_utils.py")
    write_text(folder / "README.md", metric_card(title))
    write_text(folder / "app.py", _APP.format(name=name))
    write_text(folder / "requirements.txt", f"evaluate>={evaluate.__version__}\ndatasets>={datasets.__version__}\n")
    return folder


def check_space_name(folder: str | Path, repo_id: str) -> None:
    """The Space's name must be the folder's: `evaluate.load("org/name")` reads `name.py` from it."""
    if repo_id.split("/")[-1] != Path(folder).name:
        raise ValueError(f"--push_to_hub {repo_id}: the Space's name must be the folder's, {Path(folder).name!r} "
                         f"(evaluate.load('{repo_id}') reads {repo_id.split('/')[-1]}.py)")  # fmt: skip


def push_metric_space(folder: str | Path, repo_id: str, token: str | None = None) -> str:
    """Upload a [`write_metric_space`] folder to the Space `repo_id`, whose name must be the folder's (evaluate loads
    `<name>.py` from it); returns the Space's URL."""
    from huggingface_hub import HfApi

    check_space_name(folder, repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    api.upload_folder(repo_id=url.repo_id, repo_type="space", folder_path=str(folder),
                      commit_message="Upload the PromptMNER entity metric")  # fmt: skip
    return str(url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mner_metric",
        description="Write PromptMNER's entity metric as a Hub metric Space folder (evaluate.load(FOLDER) loads it "
        "offline) and optionally push it.",
    )
    parser.add_argument("folder", help="the Space folder to write; its name is the metric's name (e.g. mner_entities)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload to this Space (org/<the folder's name>)")
    parser.add_argument("--hub_token", help="a Hub token (default: the logged-in user's)")
    parser.add_argument("--title", default=SPACE_TITLE, help="the Space's title")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.push_to_hub:
            check_space_name(args.folder, args.push_to_hub)
        folder = write_metric_space(args.folder, args.title)
    except ValueError as err:
        print(f"python -m mner_metric: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {folder}: evaluate.load({str(folder)!r})")
    if args.push_to_hub:
        print(f"pushed: {push_metric_space(folder, args.push_to_hub, args.hub_token)}")


if __name__ == "__main__":
    main()
