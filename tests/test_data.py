"""Tests for mner_data (the CoNLL reader, dataset builders, Twitter file fetching) and mner_demo's demo corpus.

All offline: hand-written files in tmp_path, the real Twitter-2015 text when ../shared has it
(skipped otherwise), ``file://`` URLs for the download path.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mner_data
from mner_data import (
    TWITTER_TEXT_SOURCES,
    DataFetchError,
    fetch_twitter,
    from_hf_dataset,
    label_list,
    load_mner_dataset,
    read_conll,
)
from mner_demo import DEMO_AMBIGUOUS_NAMES, DEMO_CORPUS_NOTE, make_demo_corpus
from span_utils import bio_to_spans

TWITTER2015 = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015"
COLUMNS = ["id", "tokens", "tags", "image_id", "image_path"]


def write(path: Path, text: str, newline: str = "\n") -> Path:
    """Write ``text`` (with ``\\n`` line ends replaced by ``newline``) as UTF-8 bytes."""
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def needs_twitter2015() -> Path:
    """The real Twitter-2015 folder, or skip the test."""
    if not TWITTER2015.is_dir():
        pytest.skip(f"{TWITTER2015} is absent")
    return TWITTER2015


# --- reader --------------------------------------------------------------------------------------------------

TWO_TWEETS = "IMGID:11\nRT\tO\nGeorge\tB-PER\nZimmerman\tI-PER\n\n\n\nIMGID:22\nin\tO\nParis\tB-LOC\n"


def test_reader_imgid_blank_lines_and_missing_final_blank(tmp_path):
    path = write(tmp_path / "train.txt", TWO_TWEETS)
    examples = read_conll(path, image_dir=tmp_path / "img")
    assert [example["id"] for example in examples] == ["train-0", "train-1"]
    assert examples[0]["tokens"] == ["RT", "George", "Zimmerman"]
    assert examples[0]["tags"] == ["O", "B-PER", "I-PER"]
    assert [example["image_id"] for example in examples] == ["11", "22"]
    assert examples[1]["image_path"] == str(tmp_path / "img" / "22.jpg")  # whether or not it exists
    assert read_conll(path)[0]["image_path"] is None


def test_reader_crlf_bom_trailing_blanks_and_extension(tmp_path):
    path = write(tmp_path / "dev.txt", "\ufeff" + TWO_TWEETS + "\n\n\n", newline="\r\n")
    examples = read_conll(path, image_dir="imgs", image_extension=".png")
    assert [example["tokens"] for example in examples] == [["RT", "George", "Zimmerman"], ["in", "Paris"]]
    assert examples[0]["image_id"] == "11"
    assert examples[1]["image_path"] == str(Path("imgs") / "22.png")
    with pytest.raises(ValueError, match="image_extension"):
        read_conll(path, image_extension="png")


def test_reader_space_separator_missing_blank_before_imgid_and_odd_tokens(tmp_path):
    text = "IMGID:1\nNew B-LOC\nYork  I-LOC \nIMGID:2\n\xa0\tO\nhi\tO \n"
    examples = read_conll(write(tmp_path / "t.txt", text))
    assert examples[0]["tokens"] == ["New", "York"] and examples[0]["tags"] == ["B-LOC", "I-LOC"]
    assert examples[1]["tokens"] == ["\xa0", "hi"]  # a non-breaking-space token is real data, kept as is
    assert examples[1]["tags"] == ["O", "O"]


def test_reader_plain_conll_without_imgid(tmp_path):
    text = "-DOCSTART-\tO\n\nJohn\tB-PER\nlives\tO\n\n\nin\tO\nRome\tB-LOC"
    examples = read_conll(write(tmp_path / "plain.txt", text), image_dir=tmp_path)
    assert [example["tokens"] for example in examples] == [["John", "lives"], ["in", "Rome"]]
    assert all(example["image_id"] is None and example["image_path"] is None for example in examples)


TOKENS = st.text(st.characters(codec="utf-8", exclude_categories=["Z", "C"]), min_size=1, max_size=6)
TAGS = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-OTHER", "I-OTHER"])
TWEETS = st.lists(st.lists(st.tuples(TOKENS, TAGS), min_size=1, max_size=5), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, database=None)
@given(tweets=TWEETS, newline=st.sampled_from(["\n", "\r\n"]), gap=st.integers(1, 3), final=st.integers(0, 2))
def test_reader_round_trip(tmp_path_factory, tweets, newline, gap, final):
    blocks = [f"IMGID:{n}\n" + "".join(f"{token}\t{tag}\n" for token, tag in tweet) for n, tweet in enumerate(tweets)]
    path = write(tmp_path_factory.mktemp("rt") / "x.txt", ("\n" * gap).join(blocks) + "\n" * final, newline)
    examples = read_conll(path)
    assert [example["tokens"] for example in examples] == [[token for token, _ in tweet] for tweet in tweets]
    assert [example["tags"] for example in examples] == [[tag for _, tag in tweet] for tweet in tweets]
    assert [example["image_id"] for example in examples] == [str(n) for n in range(len(tweets))]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("IMGID:1\na\tO\tX\n", 2, "2 fields"),
        ("IMGID:1\na b c\n", 2, "2 fields"),
        ("IMGID:1\nword\n", 2, "2 fields"),
        ("IMGID:1\n\tO\n", 2, "empty token"),
        ("IMGID:1\n  \tB-PER\n", 2, "empty token"),
        ("IMGID:1\na\tB-\n", 2, "invalid tag"),
        ("IMGID:1\na\tX-PER\n", 2, "invalid tag"),
        ("IMGID:1\na\tPER\n", 2, "invalid tag"),
        ("IMGID:1\na\tE-PER\n", 2, "only BIO"),
        ("IMGID:1\na\tO\r\nb\tB-PER\r\nc\tZ\r\n", 4, "invalid tag"),
        ("a\tO\n\nIMGID:1\nb\tO\n", 1, "not preceded by an IMGID"),
        ("IMGID:1\na\tO\n\nb\tO\n", 4, "not preceded by an IMGID"),
        ("IMGID:\na\tO\n", 1, "empty id"),
        ("IMGID:  \na\tO\n", 1, "empty id"),
        ("IMGID:1\n\nIMGID:2\na\tO\n", 1, "no token line"),
        ("IMGID:1\na\tO\n\nIMGID:2\n\n", 4, "no token line"),
    ],
)
def test_reader_malformed_lines_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        read_conll(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_reader_rejects_non_utf8_with_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("IMGID:1\nJos\tO\nJosé\tB-PER\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8") as info:
        read_conll(path)
    assert str(info.value).startswith(f"{path}:3: ")


# --- real Twitter-2015 text ----------------------------------------------------------------------------------


def test_real_twitter2015_files():
    folder = needs_twitter2015()
    raw = load_mner_dataset(folder / "train.txt", folder / "valid.txt", folder / "test.txt", image_dir="images")
    assert {split: raw[split].num_rows for split in raw} == {"train": 4000, "validation": 1000, "test": 3257}
    assert label_list(raw) == ["O", "LOC", "ORG", "OTHER", "PER"]
    for split in raw:
        assert raw[split].column_names == COLUMNS
        ids = raw[split]["id"]
        assert len(set(ids)) == len(ids)
        for tokens, tags, image_id in zip(raw[split]["tokens"], raw[split]["tags"], raw[split]["image_id"]):
            assert tokens and len(tokens) == len(tags) and image_id
            assert all(tag == "O" or tag[:2] in ("B-", "I-") for tag in tags)
            bio_to_spans(tags)  # raises on an invalid tag
    assert raw["train"][0]["image_path"] == str(Path("images") / "1015799.jpg")
    assert raw["train"][0]["tags"][8:10] == ["B-PER", "I-PER"]


# --- labels and datasets -------------------------------------------------------------------------------------


def test_label_list_accepts_examples_datasets_and_nesting():
    examples = [{"tags": ["B-PER", "I-PER", "O"]}, {"tags": ["O", "I-MISC", "B-LOC"]}]
    assert label_list(examples) == ["O", "LOC", "MISC", "PER"]
    dataset = datasets.Dataset.from_list(examples)
    assert label_list(dataset) == label_list(datasets.DatasetDict({"train": dataset})) == label_list([dataset])
    assert label_list([{"tags": ["O"]}]) == ["O"]
    with pytest.raises(ValueError, match="no 'tags' column"):
        label_list(datasets.Dataset.from_dict({"ner_tags": [["O"]]}))


def test_load_mner_dataset_splits_and_columns(tmp_path):
    train = write(tmp_path / "train.txt", TWO_TWEETS)
    test = write(tmp_path / "test.txt", "IMGID:9\nApple\tB-ORG\n")
    raw = load_mner_dataset(train_file=train, test_file=test, image_dir=tmp_path, image_extension=".png")
    assert list(raw) == ["train", "test"]
    assert raw["train"].column_names == COLUMNS
    assert raw["test"][0] == {
        "id": "test-0", "tokens": ["Apple"], "tags": ["B-ORG"], "image_id": "9",
        "image_path": str(tmp_path / "9.png"),
    }  # fmt: skip
    assert raw["train"].features["tags"] == datasets.List(datasets.Value("string"))
    with pytest.raises(ValueError, match="at least one"):
        load_mner_dataset()


@pytest.mark.parametrize("text", ["", "\n\n", "-DOCSTART-\n\n"], ids=["empty", "blank lines", "docstart only"])
def test_load_mner_dataset_names_a_file_without_examples(tmp_path, text):
    train = write(tmp_path / "train.txt", text)
    with pytest.raises(ValueError, match=f"^{train}: no examples"):
        load_mner_dataset(train_file=train)


def test_from_hf_dataset_classlabel_ints_and_paths():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
            "image": datasets.Value("string"),
        }
    )
    source = datasets.Dataset.from_dict(
        {"id": ["a", "b"], "tokens": [["Kevin", "Durant"], ["in", "Paris"]], "ner_tags": [[1, 2], [0, 3]],
         "image": ["imgs/17.jpg", None]},
        features=features,
    )  # fmt: skip
    converted = from_hf_dataset(source)
    assert converted.column_names == COLUMNS
    assert converted["tags"] == [["B-PER", "I-PER"], ["O", "B-LOC"]]
    assert converted["id"] == ["a", "b"]
    assert converted["image_path"] == ["imgs/17.jpg", None]
    assert converted["image_id"] == ["17", None]
    split_dict = from_hf_dataset(datasets.DatasetDict({"train": source.remove_columns(["id", "image"])}))
    assert split_dict["train"]["id"] == ["train-0", "train-1"]
    assert split_dict["train"]["image_path"] == [None, None]


def test_from_hf_dataset_pil_images_string_tags_and_errors():
    pictures = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    source = datasets.Dataset.from_dict(
        {"words": [["Apple"], ["hi", "there"]], "labels": [["B-ORG"], ["O", "O"]], "picture": pictures}
    )
    converted = from_hf_dataset(source, tokens_column="words", tags_column="labels", image_column="picture")
    assert converted.column_names == COLUMNS + ["image"]
    assert isinstance(converted.features["image"], datasets.Image)
    assert converted[0]["image"].getpixel((0, 0)) == (255, 0, 0)
    assert converted["image_id"] == ["example-0", "example-1"] and converted["image_path"] == [None, None]
    with pytest.raises(ValueError, match="not found"):
        from_hf_dataset(source, tokens_column="words", tags_column="labels", image_column="photo")
    bad = datasets.Dataset.from_dict({"tokens": [["a"]], "ner_tags": [["B-"]]})
    with pytest.raises(ValueError, match="example 0: invalid tag"):
        from_hf_dataset(bad)
    ints = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [[1, 0]]})
    with pytest.raises(ValueError, match="label_names"):
        from_hf_dataset(ints)
    assert from_hf_dataset(ints, label_names=["O", "B-LOC"])["tags"] == [["B-LOC", "O"]]
    mismatched = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [["O"]]})
    with pytest.raises(ValueError, match="2 tokens but 1 tags"):
        from_hf_dataset(mismatched)


# --- Twitter file fetching -----------------------------------------------------------------------------------


def test_twitter_sources_are_pinned():
    for name, source in TWITTER_TEXT_SOURCES.items():
        assert len(source["commit"]) == 40
        assert set(source["files"]) == {"train", "validation", "test"}
        prefix = f"https://raw.githubusercontent.com/jefferyYu/UMT/{source['commit']}/data/{name}/"
        for spec in source["files"].values():
            assert spec["url"] == prefix + spec["filename"]
    for spec in TWITTER_TEXT_SOURCES["twitter2015"]["files"].values():
        assert len(spec["sha256"]) == 64


def test_fetch_twitter_uses_verified_local_files(tmp_path):
    folder = needs_twitter2015()
    for filename in ("train.txt", "valid.txt", "test.txt"):
        shutil.copy(folder / filename, tmp_path / filename)
    paths = fetch_twitter("twitter2015", tmp_path)
    assert paths == {split: tmp_path / name for split, name in mner_data.SPLIT_FILENAMES.items()}


def test_fetch_twitter_checksum_mismatch_says_what_to_download(tmp_path):
    folder = needs_twitter2015()
    for filename in ("train.txt", "valid.txt", "test.txt"):
        shutil.copy(folder / filename, tmp_path / filename)
    (tmp_path / "valid.txt").write_bytes((folder / "valid.txt").read_bytes().replace(b"B-LOC", b"B-ORG", 1))
    with pytest.raises(DataFetchError) as info:
        fetch_twitter("twitter2015", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "valid.txt") in message and "sha256" in message
    assert TWITTER_TEXT_SOURCES["twitter2015"]["files"]["validation"]["url"] in message


def toy_source(tmp_path: Path, sha256: bool = True) -> tuple[dict, dict[str, bytes]]:
    """A fake dataset whose 'remote' files are file:// URLs into tmp_path/remote."""
    remote = tmp_path / "remote"
    remote.mkdir()
    contents, files = {}, {}
    for split, filename in mner_data.SPLIT_FILENAMES.items():
        contents[split] = f"IMGID:{split}\n{split}\tO\nParis\tB-LOC\n".encode()
        (remote / filename).write_bytes(contents[split])
        files[split] = {
            "filename": filename,
            "url": (remote / filename).as_uri(),
            "sha256": hashlib.sha256(contents[split]).hexdigest() if sha256 else None,
            "num_examples": 1,
        }
    return {"repository": "toy", "commit": "0" * 40, "files": files}, contents


def test_fetch_twitter_downloads_atomically_and_verifies(tmp_path, monkeypatch):
    source, contents = toy_source(tmp_path)
    monkeypatch.setitem(TWITTER_TEXT_SOURCES, "toy", source)
    data_dir = tmp_path / "data"
    paths = fetch_twitter("toy", data_dir)
    assert {split: path.read_bytes() for split, path in paths.items()} == contents
    assert sorted(path.name for path in data_dir.iterdir()) == ["test.txt", "train.txt", "valid.txt"]

    (tmp_path / "remote" / "test.txt").write_bytes(b"IMGID:x\ntampered\tO\n")
    (data_dir / "test.txt").unlink()
    with pytest.raises(DataFetchError, match="by hand") as info:
        fetch_twitter("toy", data_dir)
    assert str(data_dir / "test.txt") in str(info.value)
    assert sorted(path.name for path in data_dir.iterdir()) == ["train.txt", "valid.txt"]  # no partial file

    source["files"]["test"]["url"] = (tmp_path / "remote" / "missing.txt").as_uri()
    with pytest.raises(DataFetchError, match="by hand"):
        fetch_twitter("toy", data_dir)
    with pytest.raises(ValueError, match="unknown Twitter dataset"):
        fetch_twitter("twitter2019", data_dir)


def test_fetch_twitter_refuses_unverified_files_unless_allowed(tmp_path, monkeypatch):
    source, _ = toy_source(tmp_path, sha256=False)
    monkeypatch.setitem(TWITTER_TEXT_SOURCES, "toy", source)
    with pytest.raises(DataFetchError, match="allow_unverified"):
        fetch_twitter("toy", tmp_path / "data")
    assert not list((tmp_path / "data").iterdir())
    paths = fetch_twitter("toy", tmp_path / "data", allow_unverified=True)
    with pytest.raises(DataFetchError, match="allow_unverified"):  # now local, still unverified
        fetch_twitter("toy", tmp_path / "data")
    paths["train"].write_text("IMGID:1\na\tO\n\nIMGID:2\nb\tO\n", encoding="utf-8")
    with pytest.raises(DataFetchError, match="2 examples, expected 1"):
        fetch_twitter("toy", tmp_path / "data", allow_unverified=True)


# --- demo corpus ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo corpus and its examples, read back through the public reader."""
    folder = tmp_path_factory.mktemp("demo")
    paths = make_demo_corpus(folder)
    raw = load_mner_dataset(paths["train"], paths["validation"], paths["test"], folder / "images", ".png")
    return folder, paths, raw


def all_files(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder``."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_demo_corpus_is_deterministic(demo, tmp_path):
    folder, paths, _ = demo
    assert paths == {split: folder / name for split, name in mner_data.SPLIT_FILENAMES.items()}
    make_demo_corpus(tmp_path / "again")
    assert all_files(tmp_path / "again") == all_files(folder)
    small = make_demo_corpus(tmp_path / "small", num_train=30, num_validation=5, num_test=5, seed=0)
    other = make_demo_corpus(tmp_path / "other", num_train=30, num_validation=5, num_test=5, seed=1)
    assert other["train"].read_bytes() != small["train"].read_bytes()
    # each split has its own random stream: a smaller corpus is a prefix of the default one
    assert paths["validation"].read_text(encoding="utf-8").startswith(small["validation"].read_text(encoding="utf-8"))
    assert (folder / "README.txt").read_text(encoding="utf-8").strip() == DEMO_CORPUS_NOTE
    assert "not Twitter data" in DEMO_CORPUS_NOTE


def test_demo_corpus_reads_back_with_images(demo):
    folder, _, raw = demo
    assert {split: raw[split].num_rows for split in raw} == {"train": 600, "validation": 150, "test": 150}
    assert label_list(raw) == ["O", "LOC", "ORG", "PER"]
    image_paths = [path for split in raw for path in raw[split]["image_path"]]
    assert len(set(image_paths)) == 900
    for path in image_paths:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"


def test_demo_corpus_label_balance_and_structure(demo):
    examples = [example for split in demo[2].values() for example in split]
    spans = [bio_to_spans(example["tags"]) for example in examples]
    types = Counter(span[2] for sentence in spans for span in sentence)
    assert min(types.values()) / max(types.values()) > 0.75, types
    counts = Counter(min(len(sentence), 2) for sentence in spans)
    assert all(counts[n] > 0.1 * len(examples) for n in (0, 1, 2)), counts  # none / one / two entities
    assert any(span[1] > span[0] for sentence in spans for span in sentence)  # multi-word names
    words = Counter(token for example in examples for token in example["tokens"])
    assert words["President"] and words["city"]  # text cues that decide the type


def test_demo_ambiguous_names_take_several_types(demo):
    types_of = defaultdict(set)
    for split in demo[2].values():
        for example in split:
            for start, end, type_ in bio_to_spans(example["tags"]):
                types_of[" ".join(example["tokens"][start : end + 1])].add(type_)
    for name in DEMO_AMBIGUOUS_NAMES:
        assert len(types_of[name]) >= 2, (name, types_of[name])
    assert types_of["Kevin Durant"] == {"PER"} and types_of["New York"] == {"LOC"}


def test_demo_images_differ_by_type(demo):
    colours = defaultdict(list)
    for example in demo[2]["train"]:
        spans = bio_to_spans(example["tags"])
        if len(spans) == 1:  # the image shows the type of a lone entity
            with Image.open(example["image_path"]) as image:
                colours[spans[0][2]].append(np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0))
    means = {type_: np.mean(values, axis=0) for type_, values in colours.items()}
    assert set(means) == {"PER", "LOC", "ORG"}
    for first, second in (("PER", "LOC"), ("PER", "ORG"), ("LOC", "ORG")):
        assert np.linalg.norm(means[first] - means[second]) > 20, means
    spread = np.std(np.stack(colours["LOC"]), axis=0)
    assert spread.max() > 3  # jittered, not one colour per class
