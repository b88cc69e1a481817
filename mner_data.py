"""Data for PromptMNER: the Twitter-2015/2017 CoNLL reader, dataset builders, fetching and a demo corpus.

Every example, whatever its source, has the same columns::

    id          str         "<file stem>-<n>" for CoNLL files (n counts from 0)
    tokens      list[str]   words of the tweet
    tags        list[str]   one BIO tag per word ("O", "B-PER", "I-LOC", ...)
    image_id    str | None  the id after ``IMGID:``; None for plain CoNLL files
    image_path  str | None  ``<image_dir>/<image_id><image_extension>`` (not checked for existence here)

:func:`from_hf_dataset` may add a sixth column, ``image``, when the source dataset carries
decoded images rather than paths.

Nothing here imports torch, so the module is cheap to import in data-only tools.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

from span_utils import bio_to_spans

__all__ = [
    "DEMO_AMBIGUOUS_NAMES",
    "DEMO_CORPUS_NOTE",
    "DEMO_IMAGE_EXTENSION",
    "SPLIT_FILENAMES",
    "TWITTER_TEXT_SOURCES",
    "UMT_COMMIT",
    "DataFetchError",
    "fetch_twitter",
    "from_hf_dataset",
    "label_list",
    "load_mner_dataset",
    "make_demo_corpus",
    "mner_features",
    "read_conll",
]

IMGID_PREFIX = "IMGID:"
DOCSTART = "-DOCSTART-"
SPLIT_FILENAMES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


# --- CoNLL reader ----------------------------------------------------------------------------------------------


def _tag_error(tag: str) -> str | None:
    """Why ``tag`` is not a BIO tag (``O``, ``B-X`` or ``I-X``), or None when it is one.

    Uses :func:`span_utils.bio_to_spans`'s tag parser, then narrows IOBES to BIO because the
    Twitter files (and everything this module writes) are BIO.
    """
    try:
        bio_to_spans([tag])
    except ValueError as err:
        return f"invalid tag {tag!r} ({err})"
    if tag != "O" and tag[0] not in "BI":
        return f"invalid tag {tag!r}: only BIO tags (O, B-X, I-X) are accepted"
    if any(char.isspace() for char in tag):
        return f"invalid tag {tag!r}: whitespace inside the tag"
    return None


def _split_token_line(line: str) -> tuple[str, str] | str:
    """``(token, tag)`` of a token line, or a string saying why the line is malformed.

    ``token<TAB>tag`` is the format; a line without any tab may use whitespace instead when it
    then has exactly two fields.  The tag may carry surrounding spaces; the token is kept as is
    (the real data has a U+00A0 token) but must not be empty.
    """
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) != 2:
        return f"expected 'token<TAB>tag' (2 fields), got {len(fields)} field(s): {line!r}"
    token, tag = fields[0], fields[1].strip(" ")
    if not token.strip(" "):
        return f"empty token in line {line!r}"
    error = _tag_error(tag)
    return error if error else (token, tag)


def _read_lines(path: Path) -> list[str]:
    """The file's lines without terminators; ``\\r\\n`` and a UTF-8 BOM are tolerated."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_number = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line_number}: not UTF-8 ({err.reason} at byte {err.start})") from err
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


class _TweetBuilder:
    """Accumulates the lines of one file into examples, with the file's naming conventions."""

    def __init__(self, path: Path, uses_imgid: bool, image_dir: str | os.PathLike | None, image_extension: str):
        self.path, self.uses_imgid = path, uses_imgid
        self.image_dir, self.image_extension = image_dir, image_extension
        self.examples: list[dict] = []
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.image_id: str | None = None
        self.imgid_line: int | None = None

    def error(self, line_number: int, message: str) -> ValueError:
        """A ValueError located at ``<path>:<line_number>``."""
        return ValueError(f"{self.path}:{line_number}: {message}")

    def start_image(self, image_id: str, line_number: int) -> None:
        """Open a tweet at an ``IMGID:`` line, closing the previous one."""
        self.close()
        if self.image_id is not None:
            raise self.error(self.imgid_line, f"IMGID:{self.image_id} is followed by no token line")
        if not image_id:
            raise self.error(line_number, "IMGID line with an empty id")
        self.image_id, self.imgid_line = image_id, line_number

    def add_token(self, token: str, tag: str, line_number: int) -> None:
        """Append one word to the open tweet."""
        if self.uses_imgid and self.image_id is None and not self.tokens:
            raise self.error(line_number, "token line not preceded by an IMGID line (this file uses IMGID lines)")
        self.tokens.append(token)
        self.tags.append(tag)

    def close(self) -> None:
        """Finish the open tweet, if it has words."""
        if not self.tokens:
            return
        image_path = None
        if self.image_id is not None and self.image_dir is not None:
            image_path = str(Path(self.image_dir) / f"{self.image_id}{self.image_extension}")
        self.examples.append(
            {
                "id": f"{self.path.stem}-{len(self.examples)}",
                "tokens": self.tokens,
                "tags": self.tags,
                "image_id": self.image_id,
                "image_path": image_path,
            }
        )
        self.tokens, self.tags, self.image_id, self.imgid_line = [], [], None, None

    def finish(self) -> list[dict]:
        """Close the last tweet and return every example."""
        self.close()
        if self.image_id is not None:
            raise self.error(self.imgid_line, f"IMGID:{self.image_id} is followed by no token line")
        return self.examples


def read_conll(
    path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    image_extension: str = ".jpg",
) -> list[dict]:
    """Read a Twitter-2015/2017 CoNLL file (or a plain two-column CoNLL file) into examples.

    The format is an ``IMGID:<id>`` line, then ``token<TAB>tag`` lines, a blank line between
    tweets.  Missing trailing blank lines, ``\\r\\n`` line ends, runs of blank lines, a missing
    blank line before an ``IMGID`` line and ``-DOCSTART-`` lines are tolerated.  A file without
    any IMGID line is plain CoNLL: tweets are separated by blank lines and ``image_id`` is None.
    ``image_path`` is ``<image_dir>/<id><image_extension>`` when ``image_dir`` is given.

    Raises ``ValueError("<path>:<line>: ...")`` on a malformed line.
    """
    if image_extension and not image_extension.startswith("."):
        raise ValueError(f"image_extension must start with '.', got {image_extension!r}")
    path = Path(path)
    lines = _read_lines(path)
    builder = _TweetBuilder(path, any(line.startswith(IMGID_PREFIX) for line in lines), image_dir, image_extension)
    for line_number, line in enumerate(lines, start=1):
        if not line.strip(" \t"):
            builder.close()
        elif line.startswith(IMGID_PREFIX):
            builder.start_image(line[len(IMGID_PREFIX):].strip(), line_number)
        elif line.startswith(DOCSTART):
            builder.close()
        else:
            parsed = _split_token_line(line)
            if isinstance(parsed, str):
                raise builder.error(line_number, parsed)
            builder.add_token(*parsed, line_number)
    return builder.finish()


# --- labels and datasets -------------------------------------------------------------------------------------


def _tag_sequences(source) -> Iterator[list[str]]:
    """Every tag sequence in a DatasetDict, Dataset, example dict, or an iterable of those."""
    if isinstance(source, datasets.Dataset):
        if "tags" not in source.column_names:
            raise ValueError(f"dataset has no 'tags' column (columns: {source.column_names})")
        yield from source["tags"]
    elif isinstance(source, Mapping) and "tags" in source:
        yield source["tags"]
    elif isinstance(source, Mapping):
        for value in source.values():
            yield from _tag_sequences(value)
    elif isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        for item in source:
            yield from _tag_sequences(item)
    else:
        raise TypeError(f"cannot find tags in an object of type {type(source).__name__}")


def label_list(datasets_or_examples) -> list[str]:
    """``["O"]`` plus the sorted entity types found in the data (e.g. LOC, MISC/OTHER, ORG, PER).

    Accepts a ``DatasetDict``, a ``Dataset``, a list of example dicts, or any nesting of those.
    """
    types: set[str] = set()
    for tags in _tag_sequences(datasets_or_examples):
        types.update(span[2] for span in bio_to_spans(tags))
    return ["O"] + sorted(types)


def mner_features(with_image: bool = False) -> datasets.Features:
    """The ``datasets.Features`` of the common schema (plus an ``image`` column if asked)."""
    features = {
        "id": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("string")),
        "tags": datasets.List(datasets.Value("string")),
        "image_id": datasets.Value("string"),
        "image_path": datasets.Value("string"),
    }
    if with_image:
        features["image"] = datasets.Image()
    return datasets.Features(features)


def load_mner_dataset(
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    image_extension: str = ".jpg",
) -> datasets.DatasetDict:
    """Read CoNLL files into a ``DatasetDict`` with the splits whose file is given."""
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    splits = {}
    for split, path in files.items():
        if path is not None:
            examples = read_conll(path, image_dir=image_dir, image_extension=image_extension)
            splits[split] = datasets.Dataset.from_list(examples, features=mner_features())
    if not splits:
        raise ValueError("load_mner_dataset needs at least one of train_file, validation_file, test_file")
    return datasets.DatasetDict(splits)


def _tag_names(features: datasets.Features, tags_column: str, label_names: list[str] | None) -> list[str] | None:
    """Names of integer tags (from a ClassLabel or ``label_names``), or None for string tags."""
    feature = getattr(features[tags_column], "feature", None)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        return None
    if label_names is not None:
        return list(label_names)
    raise ValueError(
        f"column {tags_column!r} has feature {features[tags_column]}: expected a list of ClassLabel or of "
        "strings; pass label_names=[...] for plain integer tags"
    )


def _image_mode(features: datasets.Features, image_column: str | None) -> str:
    """How the image column stores images: 'none', 'pil' (Image feature) or 'path' (strings)."""
    if image_column is None or image_column not in features:
        if image_column not in (None, "image"):
            raise ValueError(f"image column {image_column!r} not found (columns: {list(features)})")
        return "none"
    feature = features[image_column]
    if isinstance(feature, datasets.Image):
        return "pil"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "path"
    raise ValueError(f"image column {image_column!r} has feature {feature}: expected Image() or string paths")


def _convert_hf_split(
    ds: datasets.Dataset, tokens_column: str, tags_column: str, image_column: str | None,
    label_names: list[str] | None, id_prefix: str,
) -> datasets.Dataset:
    """:func:`from_hf_dataset` for one ``Dataset``."""
    for column in (tokens_column, tags_column):
        if column not in ds.column_names:
            raise ValueError(f"column {column!r} not found (columns: {ds.column_names})")
    names = _tag_names(ds.features, tags_column, label_names)
    mode = _image_mode(ds.features, image_column)
    has_id = "id" in ds.column_names
    inputs = [tokens_column, tags_column] + (["id"] if has_id else []) + ([image_column] if mode == "path" else [])

    def convert(tokens_batch, tags_batch, *rest):
        *rest, indices = rest  # datasets passes the indices last
        ids = rest[0] if has_id else [f"{id_prefix}-{index}" for index in indices]
        paths = rest[-1] if mode == "path" else [None] * len(indices)
        out = {"id": [], "tokens": [], "tags": [], "image_id": [], "image_path": []}
        for index, example_id, tokens, tags, path in zip(indices, ids, tokens_batch, tags_batch, paths):
            tags = [names[tag] for tag in tags] if names is not None else list(tags)
            if len(tags) != len(tokens):
                raise ValueError(f"example {index}: {len(tokens)} tokens but {len(tags)} tags")
            for tag in tags:
                if error := _tag_error(tag):
                    raise ValueError(f"example {index}: {error}")
            out["id"].append(str(example_id))
            out["tokens"].append(list(tokens))
            out["tags"].append(tags)
            out["image_id"].append(str(example_id) if mode == "pil" else (Path(path).stem if path else None))
            out["image_path"].append(path or None)
        return out

    keep = [image_column] if mode == "pil" else []
    converted = ds.map(
        convert, batched=True, with_indices=True, input_columns=inputs,
        remove_columns=[column for column in ds.column_names if column not in keep],
        features=mner_features() if mode != "pil" else None,
    )
    if mode == "pil":
        if image_column != "image":
            converted = converted.rename_column(image_column, "image")
        converted = converted.cast(mner_features(with_image=True))
    return converted.select_columns(list(mner_features(with_image=mode == "pil")))


def from_hf_dataset(
    ds: datasets.Dataset | datasets.DatasetDict,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    image_column: str | None = "image",
    label_names: list[str] | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Convert a Hub-style NER dataset (or DatasetDict) into this module's schema.

    Tags may be integers with a ``ClassLabel`` feature (or plain integers named by
    ``label_names``) or strings; they must be BIO.  The image column, when present, holds either
    paths (strings, which become ``image_path``; ``image_id`` is the file stem) or images (a
    ``datasets.Image`` feature): those are kept, undecoded, in an ``image`` column, with
    ``image_path`` None and ``image_id`` the example id.  ``id`` is taken from an ``id`` column
    when there is one, else ``<split or 'example'>-<index>``.  An absent default ``image`` column
    means no images; any other absent column is an error.
    """
    if isinstance(ds, datasets.DatasetDict):
        return datasets.DatasetDict(
            {split: _convert_hf_split(part, tokens_column, tags_column, image_column, label_names, split)
             for split, part in ds.items()}
        )
    return _convert_hf_split(ds, tokens_column, tags_column, image_column, label_names, "example")


# --- Twitter-2015/2017 text files ----------------------------------------------------------------------------

# The UMT repository (Yu et al., ACL 2020) at the commit whose data/ files the project checked: the
# stored copies of data/twitter2015/{train,valid,test}.txt at this commit have exactly the character
# counts, beginning and end of the files in ../shared/data/twitter2015, whose sha256 are pinned below.
UMT_COMMIT = "f2e9574abb8f557b1a364692e0bef059512c31de"
_UMT_RAW = f"https://raw.githubusercontent.com/jefferyYu/UMT/{UMT_COMMIT}/data"


def _umt_files(name: str, sha256: dict[str, str | None], num_examples: dict[str, int]) -> dict:
    """Per-split description of the UMT text files of one dataset."""
    return {
        split: {
            "filename": filename,
            "url": f"{_UMT_RAW}/{name}/{filename}",
            "sha256": sha256[split],
            "num_examples": num_examples[split],
        }
        for split, filename in SPLIT_FILENAMES.items()
    }


TWITTER_TEXT_SOURCES = {
    "twitter2015": {
        "repository": "https://github.com/jefferyYu/UMT",
        "commit": UMT_COMMIT,
        "files": _umt_files(
            "twitter2015",
            sha256={
                "train": "a6246e37aa1c8acd738747fa8257e01775f2a1cc0d4f36f82f9d41d6246ad6fa",
                "validation": "9dcc7f9df7331de3c9cdf67a3450e041c41c6254b5e43925c576e2dfaaabe2ad",
                "test": "edb2665b89bfe58bca06a2c10b9b31cbfa95456135b6a4cbf55c872e48d9b8f9",
            },
            num_examples={"train": 4000, "validation": 1000, "test": 3257},
        ),
    },
    "twitter2017": {
        "repository": "https://github.com/jefferyYu/UMT",
        "commit": UMT_COMMIT,
        # Not verified: no copy of the 2017 files was available offline to hash, so there is no
        # checksum; fetch_twitter refuses these files unless allow_unverified=True, and then checks
        # the example counts (3373/723/723) instead.
        "files": _umt_files(
            "twitter2017",
            sha256={"train": None, "validation": None, "test": None},
            num_examples={"train": 3373, "validation": 723, "test": 723},
        ),
    },
}


class DataFetchError(RuntimeError):
    """A dataset file could not be fetched or verified; the message says how to get it by hand."""


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _by_hand(name: str, split: str, spec: dict, target: Path) -> str:
    """The manual-download instruction for one file."""
    return f"download {spec['url']} by hand and save it as {target} ({name} {split} split)"


def _download(url: str, target: Path, expected_sha256: str | None, timeout: float) -> None:
    """Download ``url`` to ``target`` atomically: a temp file in the same folder, checked, then renamed.

    A checksum mismatch raises :class:`DataFetchError` and leaves no file behind.
    """
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise DataFetchError(f"the download of {url} has sha256 {digest.hexdigest()}, expected {expected_sha256}")
        os.replace(temp_name, target)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def _verify(name: str, split: str, spec: dict, path: Path, allow_unverified: bool) -> None:
    """Check a local file against its pinned checksum, or its example count when it has none."""
    expected = spec["sha256"]
    if expected is not None:
        actual = _sha256(path)
        if actual != expected:
            raise DataFetchError(
                f"{path} has sha256 {actual}, expected {expected} (UMT commit {UMT_COMMIT}); "
                f"delete it and {_by_hand(name, split, spec, path)}"
            )
        return
    if not allow_unverified:
        raise DataFetchError(
            f"{path}: no pinned checksum is known for {name} {split}, so the file cannot be verified; "
            "pass allow_unverified=True to use it anyway"
        )
    try:
        count = len(read_conll(path))
    except ValueError as err:
        raise DataFetchError(f"{err}; delete it and {_by_hand(name, split, spec, path)}") from err
    if count != spec["num_examples"]:
        raise DataFetchError(
            f"{path} has {count} examples, expected {spec['num_examples']}; "
            f"delete it and {_by_hand(name, split, spec, path)}"
        )


def fetch_twitter(
    name: str, data_dir: str | os.PathLike, allow_unverified: bool = False, timeout: float = 60.0
) -> dict[str, Path]:
    """The Twitter-2015/2017 text files (``{"train", "validation", "test"}`` -> path) in ``data_dir``.

    Files already in ``data_dir`` are verified against the pinned sha256; missing ones are
    downloaded from the UMT repository at :data:`UMT_COMMIT` with ``urllib`` (atomic write) and
    verified.  A file without a pinned checksum is refused unless ``allow_unverified=True``.
    Any failure raises :class:`DataFetchError` saying what to download and where to put it.
    Images are not fetched: get UMT's image archive and pass its folder as ``image_dir``.
    """
    if name not in TWITTER_TEXT_SOURCES:
        raise ValueError(f"unknown Twitter dataset {name!r}; choose one of {sorted(TWITTER_TEXT_SOURCES)}")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, spec in TWITTER_TEXT_SOURCES[name]["files"].items():
        target = data_dir / spec["filename"]
        if not target.exists():
            if spec["sha256"] is None and not allow_unverified:
                raise DataFetchError(
                    f"no pinned checksum is known for {name} {split} ({spec['url']}); pass allow_unverified=True "
                    f"to download it to {target} unverified (its example count is checked instead)"
                )
            try:
                _download(spec["url"], target, spec["sha256"], timeout)
            except (OSError, http.client.HTTPException, DataFetchError) as err:  # URLError is an OSError
                message = f"fetching {spec['url']} failed ({err}); {_by_hand(name, split, spec, target)}"
                raise DataFetchError(message) from err
        _verify(name, split, spec, target, allow_unverified)
        paths[split] = target
    return paths


# --- demo corpus ---------------------------------------------------------------------------------------------

DEMO_CORPUS_NOTE = (
    "This is a generated demo corpus, not Twitter data: template sentences around names that are "
    "ambiguous between person, location and organization, with images drawn by code (a face for PER, a "
    "landscape for LOC, a logo for ORG) so that the image decides the type. It exists to exercise the "
    "pipeline offline; scores on it say nothing about Twitter-2015/2017."
)
DEMO_IMAGE_EXTENSION = ".png"
DEMO_TYPES = ("PER", "LOC", "ORG")

DEMO_AMBIGUOUS_NAMES = [
    "Jordan", "Phoenix", "Morgan", "Chelsea", "Washington", "Paris", "Apple", "Madison", "Orlando",
    "Sydney", "Austin", "Florence", "Lincoln", "Dallas", "Houston", "Victoria", "Georgia", "Savannah",
    "Charlotte", "Denver", "Jackson", "Tesla",
]

# Names whose type the text alone decides (two-word names included).
_DEMO_FIXED_NAMES = {
    "PER": ["Kevin Durant", "Taylor Swift", "Serena Williams", "Lionel Messi", "Emma Watson", "Obama"],
    "LOC": ["New York", "Los Angeles", "San Francisco", "London", "Tokyo", "Berlin"],
    "ORG": ["Microsoft", "Google", "United Nations", "Real Madrid", "Red Cross", "NASA"],
}

# {X}: the ambiguous name, typed by the image.
_DEMO_AMBIGUOUS_TEMPLATES = [
    "{X} arrives in town today",
    "Great news from {X} tonight",
    "Everyone is talking about {X}",
    "Can't believe what happened with {X} !",
    "Look at {X} right now",
    "So proud of {X} this week",
    "{X} is trending again",
    "Photo of the day : {X}",
    "Big weekend for {X}",
    "Just saw {X} , amazing",
]

# Text cues that decide the type of {X} (the image agrees with them).
_DEMO_CUE_TEMPLATES = {
    "PER": ["President {X} gave a speech today", "Actor {X} won the award", "Happy birthday to Mr. {X}"],
    "LOC": ["We just landed in the city of {X}", "Weather in {X} : sunny and warm", "Greetings from downtown {X}"],
    "ORG": ["The CEO of {X} resigned today", "Shares of {X} fell sharply", "{X} Inc. announced new products"],
}

# Two entities: the ambiguous {X} (typed by the image) and a text-typed {PER}/{LOC}/{ORG}.
_DEMO_PAIR_TEMPLATES = [
    "{PER} posted a photo of {X}",
    "{X} was the talk of {LOC} today",
    "{ORG} shares news about {X}",
    "Fans in {LOC} love {X}",
    "{X} and {PER} , what a day",
    "Breaking : {ORG} and {X} make headlines",
]

_DEMO_NO_ENTITY = [
    "What a beautiful morning",
    "Can't wait for the weekend !",
    "This is the best thing I have seen all day",
    "Who else is watching this ?",
    "Good vibes only",
    "Coffee first , then everything else",
]


def _fill(template: str, slots: dict[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Tokens and BIO tags of a template whose ``{SLOT}`` words are replaced by ``(text, type)``."""
    tokens, tags = [], []
    for word in template.split():
        if word in slots:
            text, type_ = slots[word]
            names = text.split()
            tokens += names
            tags += [f"B-{type_}"] + [f"I-{type_}"] * (len(names) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags


def _demo_sentence(rng: random.Random) -> tuple[list[str], list[str], str]:
    """One demo tweet: ``(tokens, tags, image type)``; the image type is that of the ambiguous name."""
    kind = rng.choices(["ambiguous", "cue", "pair", "none"], weights=[45, 20, 20, 15])[0]
    image_type = rng.choice(DEMO_TYPES)
    name = rng.choice(DEMO_AMBIGUOUS_NAMES)
    if kind == "ambiguous":
        tokens, tags = _fill(rng.choice(_DEMO_AMBIGUOUS_TEMPLATES), {"{X}": (name, image_type)})
    elif kind == "cue":
        template = rng.choice(_DEMO_CUE_TEMPLATES[image_type])
        if "{X} Inc." in template:  # the suffix is part of the organisation name
            template = template.replace("{X} Inc.", "{X}")
            name = f"{name} Inc."
        tokens, tags = _fill(template, {"{X}": (name, image_type)})
    elif kind == "pair":
        template = rng.choice(_DEMO_PAIR_TEMPLATES)
        slots = {"{X}": (name, image_type)}
        for type_ in DEMO_TYPES:
            slots[f"{{{type_}}}"] = (rng.choice(_DEMO_FIXED_NAMES[type_]), type_)
        tokens, tags = _fill(template, slots)
    else:
        tokens = rng.choice(_DEMO_NO_ENTITY).split()
        tags = ["O"] * len(tokens)
    if rng.random() < 0.4:
        tokens.append(f"http://t.co/{rng.getrandbits(40):010x}")
        tags.append("O")
    return tokens, tags, image_type


def _jitter_colour(rng: np.random.Generator, base: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    """``base`` with each channel moved by up to ``spread``."""
    return tuple(int(np.clip(channel + rng.integers(-spread, spread + 1), 0, 255)) for channel in base)


def _draw_person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A face: skin-toned circle with eyes and mouth, hair and shoulders, on a plain background."""
    skin = [(241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)]
    draw.rectangle([0, 0, size, size], fill=_jitter_colour(rng, (150, 150, 160), 60))
    cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.38, 0.5)
    r = size * rng.uniform(0.2, 0.3)
    shirt, hair = _jitter_colour(rng, (60, 60, 120), 60), _jitter_colour(rng, (50, 35, 20), 30)
    draw.ellipse([cx - 1.6 * r, cy + 1.0 * r, cx + 1.6 * r, cy + 3.0 * r], fill=shirt)
    draw.ellipse([cx - r * 1.05, cy - r * 1.15, cx + r * 1.05, cy + r * 0.4], fill=hair)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter_colour(rng, skin[rng.integers(len(skin))], 12))
    eye = max(1.0, r * 0.13)
    for side in (-1, 1):
        ex, ey = cx + side * r * 0.4, cy - r * 0.15
        draw.ellipse([ex - eye, ey - eye, ex + eye, ey + eye], fill=(20, 20, 20))
    mouth = [cx - r * 0.45, cy + r * 0.05, cx + r * 0.45, cy + r * 0.6]
    draw.arc(mouth, 20, 160, fill=(120, 30, 30), width=max(1, size // 40))


def _draw_landscape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A landscape: sky, sun, optional mountain, then green or sand ground bands."""
    horizon = size * rng.uniform(0.45, 0.65)
    draw.rectangle([0, 0, size, horizon], fill=_jitter_colour(rng, (110, 170, 230), 25))
    sx, sy, sr = size * rng.uniform(0.15, 0.85), size * rng.uniform(0.1, 0.3), size * rng.uniform(0.07, 0.12)
    draw.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=_jitter_colour(rng, (250, 220, 60), 10))
    if rng.random() < 0.5:
        peak = size * rng.uniform(0.2, 0.8)
        draw.polygon([(peak - size * 0.35, horizon), (peak, horizon - size * 0.25), (peak + size * 0.35, horizon)],
                     fill=_jitter_colour(rng, (110, 110, 120), 20))
    ground = _jitter_colour(rng, (70, 150, 60) if rng.random() < 0.6 else (215, 190, 130), 20)
    draw.rectangle([0, horizon, size, size], fill=ground)
    band = horizon + (size - horizon) * rng.uniform(0.4, 0.7)
    shade = rng.uniform(0.75, 1.1)
    draw.rectangle([0, band, size, size], fill=tuple(min(255, int(channel * shade)) for channel in ground))


def _draw_logo(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A logo: bold saturated squares in a grid and a dark bar (the brand name) on white."""
    palette = [(230, 40, 40), (30, 90, 220), (30, 170, 70), (250, 180, 0), (150, 40, 180), (20, 20, 20)]
    draw.rectangle([0, 0, size, size], fill=_jitter_colour(rng, (248, 248, 248), 7))
    cells = int(rng.integers(1, 3))
    cell_fraction = rng.uniform(0.18, 0.26) if cells == 2 else rng.uniform(0.3, 0.45)
    cell, gap = size * cell_fraction, max(1.0, size * 0.03)
    x0 = size * rng.uniform(0.08, 0.92 - cells * cell_fraction - 0.03)
    y0 = size * rng.uniform(0.06, 0.68 - cells * cell_fraction - 0.03)
    for row in range(cells):
        for col in range(cells):
            x, y = x0 + col * (cell + gap), y0 + row * (cell + gap)
            draw.rectangle([x, y, x + cell, y + cell], fill=palette[rng.integers(len(palette))])
    bar_y = size * rng.uniform(0.72, 0.82)
    draw.rectangle([size * 0.12, bar_y, size * rng.uniform(0.55, 0.9), bar_y + size * 0.08],
                   fill=_jitter_colour(rng, (40, 40, 40), 30))


_DRAWERS = {"PER": _draw_person, "LOC": _draw_landscape, "ORG": _draw_logo}


def _demo_image(image_type: str, rng: np.random.Generator, size: int) -> Image.Image:
    """The picture of one entity type, with random layout, shades and pixel noise."""
    image = Image.new("RGB", (size, size))
    _DRAWERS[image_type](ImageDraw.Draw(image), rng, size)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0.0, 8.0, (size, size, 3)).round().astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_conll(path: Path, examples: list[tuple[str, list[str], list[str]]]) -> None:
    """Write ``(image_id, tokens, tags)`` tweets in the IMGID CoNLL form, blank line between tweets."""
    blocks = []
    for image_id, tokens, tags in examples:
        lines = [f"{IMGID_PREFIX}{image_id}"] + [f"{token}\t{tag}" for token, tag in zip(tokens, tags)]
        blocks.append("\n".join(lines) + "\n")
    path.write_text("\n".join(blocks), encoding="utf-8", newline="\n")


def make_demo_corpus(
    output_dir: str | os.PathLike,
    num_train: int = 600,
    num_validation: int = 150,
    num_test: int = 150,
    seed: int = 0,
    image_size: int = 64,
) -> dict[str, Path]:
    """Write the generated demo corpus (see :data:`DEMO_CORPUS_NOTE`) and return its three files.

    ``output_dir`` gets ``train.txt``, ``valid.txt``, ``test.txt`` (IMGID CoNLL), ``README.txt``
    (the note) and ``images/<id>.png``; read it back with ``read_conll(path, output_dir / "images",
    image_extension=".png")``.  Every example with entities shows the type of its ambiguous name
    in the image; entity-free tweets have an image of a random type.  The output is a pure
    function of the arguments (same bytes on every run).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    output_dir = Path(output_dir)
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.txt").write_text(DEMO_CORPUS_NOTE + "\n", encoding="utf-8", newline="\n")
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    paths = {}
    for split_index, (split, count) in enumerate(counts.items()):
        if count < 0:
            raise ValueError(f"number of {split} examples must be >= 0, got {count}")
        text_rng = random.Random(f"promptmner-demo-{seed}-{split}")
        examples = []
        for index in range(count):
            tokens, tags, image_type = _demo_sentence(text_rng)
            image_id = f"{split}_{index:05d}"
            image_rng = np.random.default_rng([seed, split_index, index])
            _demo_image(image_type, image_rng, image_size).save(image_dir / f"{image_id}{DEMO_IMAGE_EXTENSION}")
            examples.append((image_id, tokens, tags))
        paths[split] = output_dir / SPLIT_FILENAMES[split]
        _write_conll(paths[split], examples)
    return paths
