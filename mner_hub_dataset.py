"""Twitter-2015/2017 (or any CoNLL+IMGID files and their image folder) as a Hub `datasets` dataset with the images in
it (package only): the public MNER repositories hand the text out in one place and the images in another.

    python -m mner_hub_dataset --dataset twitter2015 --data_dir data/twitter2015 --image_dir data/twitter2015_images \
        --output_dir hub/twitter2015 [--push_to_hub org/twitter2015-mner]

- [`build_dataset`]: a `DatasetDict` (train/validation/test) with `id` (`<file stem>-<n>`, as `mner_data.read_conll`
  names the examples), `image_id` (the `IMGID`), `tokens`, `ner_tags` (`ClassLabel` with the BIO names) and `image`
  (`datasets.Image`, the file's bytes; None when the file is missing or unreadable, counted per split with reasons).
- [`dataset_card`]: its `huggingface_hub.DatasetCard`: the source of the text (UMT's repository and pinned commit,
  each file's sha256), counts per split and per type, the missing images, the citations, the license caveat.
- [`write_dataset_folder`], [`push_dataset_folder`]: Parquet shards under `data/` and the card as README.md, written
  whole; `datasets.load_dataset(<folder>)` reads the folder and, once uploaded, the Hub repository;
  `run_mner.py --hf_dataset <folder or repo>` trains on it with the examples, tags and images of the CoNLL files.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tempfile
from collections import Counter
from pathlib import Path

import datasets

import mner_data
from mner_console import quiet_library_progress_bars
from mner_embedding_cache import load_row_image
from span_utils import bio_to_spans

DEFAULT_MAX_SHARD_BYTES = 500 * 1024**2  # the size datasets' push_to_hub cuts shards at

CITATIONS = {
    "twitter2015": """\
@inproceedings{zhang2018adaptive,
  title     = {Adaptive Co-attention Network for Named Entity Recognition in Tweets},
  author    = {Zhang, Qi and Fu, Jinlan and Liu, Xiaoyu and Huang, Xuanjing},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {32},
  number    = {1},
  year      = {2018}
}""",
    "twitter2017": """\
@inproceedings{lu2018visual,
  title     = {Visual Attention Model for Name Tagging in Multimodal Social Media},
  author    = {Lu, Di and Neves, Leonardo and Carvalho, Vitor and Zhang, Ning and Ji, Heng},
  booktitle = {Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics},
  pages     = {1990--1999},
  year      = {2018}
}""",
    "umt": """\
@inproceedings{yu2020improving,
  title     = {Improving Multimodal Named Entity Recognition via Entity Span Detection with Unified Multimodal
               Transformer},
  author    = {Yu, Jianfei and Jiang, Jing and Yang, Li and Xia, Rui},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics},
  pages     = {3342--3352},
  year      = {2020}
}""",
}
PRETTY_NAMES = {"twitter2015": "Twitter-2015", "twitter2017": "Twitter-2017"}

LICENSE_CAVEAT = """\
The tweets and their images belong to their authors and are subject to Twitter's (now X's) terms; the dataset
authors distributed them for research, and the text files carry no license of their own. No license is granted here:
check that your use and any redistribution are allowed before you publish this dataset, and keep its repository
private or gated (`python -m mner_hub_dataset --push_to_hub` creates it private)."""


# --- building --------------------------------------------------------------------------------------------------


def bio_names(types: list[str]) -> list[str]:
    """The `ClassLabel` names: `O`, then `B-` and `I-` of each type, types sorted (`O, B-LOC, I-LOC, B-ORG, ...`)."""
    return ["O"] + [f"{prefix}-{type_}" for type_ in types for prefix in "BI"]


def features(names: list[str]) -> datasets.Features:
    """The dataset's schema."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
            "image": datasets.Image(),
        }
    )


def embedded_image(path: str | None) -> tuple[dict | None, str | None]:
    """`({"bytes", "path"}, None)` for an image file the run can decode (`load_row_image`, the same check), its bytes
    unchanged and its file name; `(None, why)` for a missing or unreadable one."""
    image, error = load_row_image(path)
    if image is None:
        return None, error
    return {"bytes": Path(path).read_bytes(), "path": Path(path).name}, None


def image_problem(example: dict, error: str) -> tuple[str, str]:
    """`("missing" or "unreadable", a line for the card)` of an example without a usable image; the line names the
    image file, not the folder it was looked for in (a card must not carry local paths)."""
    if example["image_path"] is None:
        return "missing", f"{example['id']}: no image (no IMGID line, or no image folder given)"
    name = Path(example["image_path"]).name
    if error.startswith("FileNotFoundError"):
        return "missing", f"{example['id']}: {name} is missing"
    return "unreadable", f"{example['id']}: {name} cannot be decoded ({error.split(':')[0]})"


def _rows(examples: list[dict], names: list[str], report: dict):
    """The rows of one split, with their images; each missing or unreadable image counted in `report`."""
    index = {name: position for position, name in enumerate(names)}
    for example in examples:
        image, error = embedded_image(example["image_path"])
        if error is not None:
            kind, line = image_problem(example, error)
            report[kind] += 1
            if len(report["first_errors"]) < 3:
                report["first_errors"].append(line)
        yield {"id": example["id"], "image_id": example["image_id"], "tokens": example["tokens"],
               "ner_tags": [index[tag] for tag in example["tags"]], "image": image}  # fmt: skip


def split_report(examples: list[dict]) -> dict:
    """Counts of one split before its images are read: examples, tokens, entities per type."""
    types = Counter(span[2] for example in examples for span in bio_to_spans(example["tags"]))
    return {"examples": len(examples), "tokens": sum(len(example["tokens"]) for example in examples),
            "entities": dict(sorted(types.items())), "missing": 0, "unreadable": 0, "first_errors": []}  # fmt: skip


def build_dataset(files: dict[str, str | Path], image_dir: str | Path | None, image_extension: str = ".jpg",
                  cache_dir: str | Path | None = None) -> tuple[datasets.DatasetDict, dict]:  # fmt: skip
    """The splits of `files` (`{"train": path, ...}`, read by `mner_data.read_conll`) with their images from
    `image_dir`, and the report the card shows: per split its examples, tokens, entities per type and the missing
    and unreadable images with the first reasons. The Arrow tables are written as they are built (the images never
    all sit in memory) into a new folder inside `cache_dir` (default: datasets' cache), so that nothing built before
    is ever reused; the returned splits read them from there."""
    examples = {split: mner_data.read_conll(path, image_dir=image_dir, image_extension=image_extension)
                for split, path in files.items()}  # fmt: skip
    for split, rows in examples.items():
        if not rows:
            raise ValueError(f"{files[split]}: no examples (the file has no token lines)")
    names = bio_names(mner_data.label_list(list(examples.values()))[1:])
    report = {split: split_report(rows) for split, rows in examples.items()}
    cache_dir = Path(cache_dir or datasets.config.HF_DATASETS_CACHE)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = tempfile.mkdtemp(prefix="promptmner-hub-dataset-", dir=cache_dir)
    dataset = datasets.DatasetDict({
        split: datasets.Dataset.from_generator(
            _rows, features=features(names), cache_dir=str(cache_dir), keep_in_memory=False,
            gen_kwargs={"examples": rows, "names": tuple(names), "report": report[split]},
        )  # fmt: skip
        for split, rows in examples.items()
    })  # fmt: skip
    return dataset, report


# --- the card --------------------------------------------------------------------------------------------------


def size_category(count: int) -> str:
    """The Hub's size category of `count` examples."""
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if count < bound:
            return name
    return "100K<n<1M"


def source_section(name: str | None, files: dict[str, str | Path]) -> list[str]:
    """Where the text comes from: each file with its sha256 and, for a Twitter dataset, whether it is UMT's file at
    the pinned commit."""
    sources = mner_data.TWITTER_TEXT_SOURCES.get(name)
    lines = ["## Source", ""]
    if sources:
        lines += [f"The text is the CoNLL form that the UMT repository ({sources['repository']}) distributes, at "
                  f"commit `{sources['commit']}`; the images are UMT's image archive (`IMGID:<id>` is `<id>.jpg`).",
                  ""]  # fmt: skip
    lines += ["| split | file | sha256 | |", "|---|---|---|---|"]
    for split, path in files.items():
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        pinned = sources["files"][split]["sha256"] if sources else None
        note = ("UMT's file at the pinned commit" if digest == pinned else
                "not UMT's file at the pinned commit (edited, a slice, or no checksum pinned)" if sources else "")  # fmt: skip
        lines.append(f"| {split} | `{Path(path).name}` | `{digest}` | {note} |")
    return lines + [""]


def counts_section(report: dict) -> list[str]:
    """Counts per split and per entity type, and the missing images with their first reasons."""
    types = sorted({type_ for row in report.values() for type_ in row["entities"]})
    lines = ["## Counts", "", "| split | tweets | tokens | " + " | ".join(types) + " | entities | images missing | "
             "images unreadable |", "|---|" + "---:|" * (len(types) + 5)]  # fmt: skip
    for split, row in report.items():
        per_type = " | ".join(str(row["entities"].get(type_, 0)) for type_ in types)
        lines.append(f"| {split} | {row['examples']} | {row['tokens']} | {per_type} | {sum(row['entities'].values())} "
                     f"| {row['missing']} | {row['unreadable']} |")  # fmt: skip
    lines += ["", "An example whose image is missing or unreadable has `image = None`; PromptMNER gives it its text-only "
              "path. The first of them per split:", ""]  # fmt: skip
    lines += [f"- {split}: {error}" for split, row in report.items() for error in row["first_errors"]] or ["- none"]
    return lines + [""]


def dataset_card(name: str | None, files: dict[str, str | Path], report: dict, names: list[str]):
    """The `huggingface_hub.DatasetCard` of a built dataset (`name`: `twitter2015`, `twitter2017` or None for other
    files)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    pretty = PRETTY_NAMES.get(name, "CoNLL+IMGID multimodal NER data")
    data = DatasetCardData(
        pretty_name=f"{pretty} (multimodal NER, with images)", language=["en"], license="other",
        task_categories=["token-classification"], task_ids=["named-entity-recognition"],
        size_categories=[size_category(sum(row["examples"] for row in report.values()))],
        tags=["multimodal", "ner", "image"] + (["twitter"] if name else []),
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in report]}],
    )  # fmt: skip
    citations = [CITATIONS["twitter2015"], CITATIONS["twitter2017"], CITATIONS["umt"]] if name else []
    body = [
        f"# {pretty} for multimodal named entity recognition, with images", "",
        "Tweets with their images, tagged in BIO with the entity types " + ", ".join(sorted(
            {type_ for row in report.values() for type_ in row["entities"]})) + ". Columns: `id` (`<file>-<n>`), "
        "`image_id` (the tweet's `IMGID`), `tokens`, `ner_tags` (`ClassLabel`: " + ", ".join(names) + ") and "
        "`image` (`datasets.Image`, the original file's bytes). Built with `python -m mner_hub_dataset` of the "
        "promptmner package; `run_mner.py --hf_dataset <this repository>` trains PromptMNER on it.", "",
        *source_section(name, files), *counts_section(report),
        "## License and terms of use", "", LICENSE_CAVEAT, "",
    ]  # fmt: skip
    if citations:
        body += ["## Citation", "", "Twitter-2015, Twitter-2017 and the UMT distribution of their text:", "",
                 "```bibtex", "\n".join(citations), "```", ""]  # fmt: skip
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# --- the folder and the upload -----------------------------------------------------------------------------------


def write_dataset_folder(dataset: datasets.DatasetDict, card, folder: str | Path,
                         max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:  # fmt: skip
    """`data/<split>-<i>-of-<n>.parquet` shards of at most about `max_shard_bytes`, and the card as README.md, written
    as `<folder>.partial` and then put in `folder`'s place whole."""
    from atomic_files import fresh_partial_folder, replace_folder

    partial = fresh_partial_folder(folder)
    (partial / "data").mkdir(parents=True)
    for split, part in dataset.items():
        shards = max(1, math.ceil(part.data.nbytes / max_shard_bytes))
        for index in range(shards):
            shard = part.shard(shards, index, contiguous=True)
            shard.to_parquet(str(partial / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"))
    card.save(partial / "README.md")
    replace_folder(partial, folder)
    return Path(folder)


def push_dataset_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Upload a [`write_dataset_folder`] folder to the dataset repository `repo_id` (created private by default: see
    the card's license caveat); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=url.repo_id, repo_type="dataset", folder_path=str(folder),
                      commit_message="Upload the dataset with its images")  # fmt: skip
    return str(url)


# --- the command -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mner_hub_dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(mner_data.TWITTER_TEXT_SOURCES),
                        help="Twitter-2015 or -2017: the text files of --data_dir, verified against the pinned "
                        "checksums (downloaded there when absent)")  # fmt: skip
    parser.add_argument("--data_dir", help="folder of train/valid/test.txt (default: data/<--dataset>)")
    parser.add_argument("--allow_unverified_data", action="store_true", help="accept files without a pinned checksum")
    for split in ("train", "validation", "test"):
        parser.add_argument(f"--{split}_file", help=f"CoNLL+IMGID {split} file (instead of --dataset)")
    parser.add_argument("--image_dir", help="folder of the images <IMGID><--image_extension> (none: no images)")
    parser.add_argument("--image_extension", default=".jpg", help="file extension of the images")
    parser.add_argument("--output_dir", required=True, help="the dataset folder to write (must not exist or be empty)")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--max_shard_size", type=int, default=500, help="Parquet shard size in MB")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this dataset repository")
    parser.add_argument("--public", action="store_true", help="create the Hub repository public (default: private)")
    parser.add_argument("--hub_token", help="a Hub token (default: the logged-in user's)")
    return parser


def text_files(args: argparse.Namespace) -> dict[str, str | Path]:
    """The split files the arguments name, each checked to exist; ValueError naming the argument otherwise."""
    given = {split: getattr(args, f"{split}_file") for split in ("train", "validation", "test")}
    given = {split: path for split, path in given.items() if path}
    if bool(args.dataset) == bool(given):
        raise ValueError("give either --dataset or the --train_file/--validation_file/--test_file to convert")
    if args.dataset:
        data_dir = args.data_dir or f"data/{args.dataset}"
        return mner_data.fetch_twitter(args.dataset, data_dir, allow_unverified=args.allow_unverified_data)
    for split, path in given.items():
        if not Path(path).is_file():
            raise ValueError(f"--{split}_file {path}: no such file")
    return given


def check_output_dir(args: argparse.Namespace) -> None:
    """The output folder may be absent or empty, or replaced with --overwrite_output_dir."""
    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output_dir {folder}: not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not args.overwrite_output_dir:
        raise ValueError(f"--output_dir {folder}: the folder is not empty; use --overwrite_output_dir to replace it")
    if args.image_dir and not Path(args.image_dir).is_dir():
        raise ValueError(f"--image_dir {args.image_dir}: no such folder")
    if args.max_shard_size < 1:
        raise ValueError(f"--max_shard_size must be >= 1 (MB), got {args.max_shard_size}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    quiet_library_progress_bars()
    try:
        check_output_dir(args)
        files = text_files(args)
        with tempfile.TemporaryDirectory(prefix="promptmner-hub-dataset-") as cache_dir:
            dataset, report = build_dataset(files, args.image_dir, args.image_extension, cache_dir)
            names = dataset["train" if "train" in dataset else next(iter(dataset))].features["ner_tags"].feature.names
            card = dataset_card(args.dataset, files, report, names)
            folder = write_dataset_folder(dataset, card, args.output_dir, args.max_shard_size * 1024**2)
    except (ValueError, mner_data.DataFetchError) as err:
        print(f"python -m mner_hub_dataset: error: {err}", file=sys.stderr)
        sys.exit(2)
    for split, row in report.items():
        print(f"{split}: {row['examples']} tweets, {sum(row['entities'].values())} entities {row['entities']}, "
              f"{row['missing']} images missing, {row['unreadable']} unreadable")  # fmt: skip
    print(f"wrote {folder}: datasets.load_dataset({str(folder)!r})")
    if args.push_to_hub:
        print(f"pushed: {push_dataset_folder(folder, args.push_to_hub, args.hub_token, private=not args.public)}")
    return report


if __name__ == "__main__":
    main()
