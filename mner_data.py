"""Data for PromptMNER: the Twitter-2015/2017 CoNLL reader, the features schema, the Hub-dataset conversion and
the checksummed fetch of the Twitter text files (the demo corpus lives in `mner_demo`).

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
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import datasets

from atomic_files import replacing, write_text
from span_utils import bio_to_spans

__all__ = [
    "SPLIT_FILENAMES",
    "TWITTER_TEXT_SOURCES",
    "UMT_COMMIT",
    "DataFetchError",
    "fetch_twitter",
    "from_hf_dataset",
    "label_list",
    "limit_samples",
    "load_hf_dataset",
    "load_mner_dataset",
    "mner_features",
    "read_conll",
    "write_conll",
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


def write_conll(path: Path, examples: list[tuple[str, list[str], list[str]]]) -> None:
    """Write ``(image_id, tokens, tags)`` tweets in the IMGID CoNLL form, blank line between tweets."""
    blocks = []
    for image_id, tokens, tags in examples:
        lines = [f"{IMGID_PREFIX}{image_id}"] + [f"{token}\t{tag}" for token, tag in zip(tokens, tags)]
        blocks.append("\n".join(lines) + "\n")
    write_text(path, "\n".join(blocks))


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
            if not examples:
                raise ValueError(f"{path}: no examples (the file has no token lines)")
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


def load_hf_dataset(
    name_or_path: str, tokens_column: str = "tokens", tags_column: str = "ner_tags", image_column: str = "image"
) -> datasets.DatasetDict:
    """A `datasets` dataset, converted with :func:`from_hf_dataset`: a Hub repository, a ``save_to_disk`` folder, or a
    folder of data files that ``load_dataset`` reads (e.g. the Parquet shards and card of ``python -m
    mner_hub_dataset``).

    It must have named splits (a ``DatasetDict``), else ``ValueError``.
    """
    folder = Path(name_or_path)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():  # written by save_to_disk
        dataset = datasets.load_from_disk(name_or_path)
    else:
        dataset = datasets.load_dataset(name_or_path)
    if not isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"--hf_dataset {name_or_path}: needs named splits (train, validation[, test])")
    return from_hf_dataset(dataset, tokens_column, tags_column, image_column)


def limit_samples(
    raw: datasets.DatasetDict, max_train_samples: int | None = None, max_eval_samples: int | None = None
) -> datasets.DatasetDict:
    """Keep only the first ``max_train_samples`` training and ``max_eval_samples`` validation and test examples."""
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and split in raw:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


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
    """Download ``url`` to ``target`` whole (``atomic_files.replacing``), checked before it takes its place.

    A checksum mismatch raises :class:`DataFetchError` and leaves no file behind.
    """
    digest = hashlib.sha256()
    with replacing(target) as partial:
        with open(partial, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise DataFetchError(f"the download of {url} has sha256 {digest.hexdigest()}, expected {expected_sha256}")


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
