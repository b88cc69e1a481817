"""Twitter-2015/2017 as a Hub `datasets` dataset with images (`mner_hub_dataset`): the rows, images and counts of the
real Twitter-2015 files, the folder `load_dataset` reads, and `run_mner.py --hf_dataset` on it training exactly as on
the CoNLL files (same tokens, tags, image embeddings, losses)."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
from huggingface_hub import DatasetCard
from conftest import SPLIT_FILES, TWITTER2015, run_args

import mner_data
import mner_embedding_cache
import mner_hub_dataset
from processes import launch_run_mner, run
from span_utils import bio_to_spans

def test_rows_carry_the_files_tokens_tags_and_image_bytes(twitter_slice, slice_dataset, tmp_path):
    """Each row is the CoNLL example: its id, IMGID, words, tags (ClassLabel ids of the BIO names) and the image file's
    bytes unchanged, or None where the file is missing or cannot be decoded, as the report counts."""
    loaded = datasets.load_dataset(str(slice_dataset["folder"]), cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded) == ["test", "train", "validation"]
    tags = loaded["train"].features["ner_tags"].feature
    assert isinstance(tags, datasets.ClassLabel)
    assert tags.names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-OTHER", "I-OTHER", "B-PER", "I-PER"]
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    for split, path in slice_dataset["files"].items():
        examples = mner_data.read_conll(path, image_dir=twitter_slice["image_dir"])
        rows = loaded[split].cast_column("image", datasets.Image(decode=False))
        assert rows["id"] == [example["id"] for example in examples]
        assert rows["image_id"] == [example["image_id"] for example in examples]
        assert rows["tokens"] == [example["tokens"] for example in examples]
        assert [[tags.int2str(tag) for tag in row] for row in rows["ner_tags"]] == [e["tags"] for e in examples]
        missing = 0
        for example, image in zip(examples, rows["image"]):
            if example["image_id"] in twitter_slice["missing"]:
                assert image is None
                missing += 1
            else:
                assert image["bytes"] == Path(example["image_path"]).read_bytes()
        report = slice_dataset["report"][split]
        assert report["missing"] + report["unreadable"] == missing
        assert report["entities"] == dict(Counter(span[2] for e in examples for span in bio_to_spans(e["tags"])))
    assert slice_dataset["report"]["train"]["unreadable"] + slice_dataset["report"]["validation"]["unreadable"] + \
        slice_dataset["report"]["test"]["unreadable"] == 1  # the one corrupt JPEG  # fmt: skip


def test_hf_dataset_gives_the_conll_examples_and_image_embeddings(twitter_slice, slice_dataset, tiny_processor,
                                                                   tmp_path):
    """`mner_data.load_hf_dataset(<folder>)` (what `--hf_dataset` reads) gives the CoNLL reader's ids, tokens and
    tags, and the image-embedding cache gives the same embeddings, bit for bit, and the same text-only examples."""
    files = slice_dataset["files"]
    from_conll = mner_data.load_mner_dataset(files["train"], files["validation"], files["test"],
                                             image_dir=twitter_slice["image_dir"])  # fmt: skip
    from_hub = mner_data.load_hf_dataset(str(slice_dataset["folder"]))
    for split in from_conll:
        for column in ("id", "tokens", "tags"):
            assert from_hub[split][column] == from_conll[split][column]
    conll, _ = mner_embedding_cache.add_image_embeddings(from_conll, tiny_processor, tmp_path / "a", batch_size=8)
    hub, _ = mner_embedding_cache.add_image_embeddings(from_hub, tiny_processor, tmp_path / "b", batch_size=8)
    for split in conll:
        assert hub[split]["has_image"] == conll[split]["has_image"]
        assert hub[split]["image_embeds"] == conll[split]["image_embeds"]
    assert sum(not present for present in conll["train"]["has_image"]) >= 2


def test_the_card_names_the_source_counts_missing_images_and_license(slice_dataset):
    card = DatasetCard.load(slice_dataset["folder"] / "README.md")
    assert card.data.license == "other" and card.data.task_ids == ["named-entity-recognition"]
    assert [config["data_files"][0]["split"] for config in card.data.configs] == ["train"]
    text = card.text
    for split, row in slice_dataset["report"].items():
        assert f"| {split} | {row['examples']} | {row['tokens']} |" in text
    assert "cannot be decoded" in text and "is missing" in text
    assert str(slice_dataset["folder"].parent) not in text and "/tmp" not in text  # no local paths in a pushed card
    assert "No license is granted here" in text


BAD_COMMANDS = [
    ("no source", [], r"give either --dataset or the --train_file"),
    ("two sources", ["--dataset", "twitter2015", "--train_file", "a.txt"], r"give either --dataset"),
    ("missing file", ["--train_file", "nope.txt"], r"--train_file nope.txt: no such file"),
    ("missing image folder", ["--train_file", "nope.txt", "--image_dir", "imgs"], r"--image_dir imgs: no such folder"),
    ("unverifiable 2017 text", ["--dataset", "twitter2017", "--data_dir", "."], r"no pinned checksum is known"),
]


@pytest.mark.parametrize("case, arguments, message", BAD_COMMANDS, ids=[case[0] for case in BAD_COMMANDS])
def test_bad_commands_are_named_before_any_work(case, arguments, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        mner_hub_dataset.main([*arguments, "--output_dir", "out"])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last_line.startswith("python -m mner_hub_dataset: error:")
    assert re.search(message, last_line), last_line
    assert not (tmp_path / "out").exists()


def test_a_full_output_folder_is_kept_unless_overwritten(twitter_slice, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    arguments = ["--train_file", str(twitter_slice["folder"] / "train.txt"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        mner_hub_dataset.main(arguments)
    assert "the folder is not empty; use --overwrite_output_dir" in capsys.readouterr().err
    mner_hub_dataset.main([*arguments, "--overwrite_output_dir"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "data"]


@pytest.mark.slow
def test_command_on_the_twitter2015_text(tmp_path):
    """`python -m mner_hub_dataset --dataset twitter2015` on the real text (checksums verified), no image folder: the
    counts of the UMT files (4000/1000/3257 tweets), every image missing and counted, the card with the pinned
    commit, both datasets' citations and the license caveat."""
    if not TWITTER2015.is_dir():
        pytest.skip("../shared/data/twitter2015 is absent")
    output = tmp_path / "twitter2015"
    result = run([sys.executable, "-m", "mner_hub_dataset", "--dataset", "twitter2015", "--data_dir", str(TWITTER2015),
                  "--output_dir", str(output)], cwd=tmp_path)  # fmt: skip
    loaded = datasets.load_dataset(str(output), cache_dir=str(tmp_path / "cache"))
    assert {split: len(part) for split, part in loaded.items()} == {"train": 4000, "validation": 1000, "test": 3257}
    for split, name in SPLIT_FILES.items():
        examples = mner_data.read_conll(TWITTER2015 / name)
        entities = Counter(span[2] for example in examples for span in bio_to_spans(example["tags"]))
        assert f"{split}: {len(examples)} tweets, {sum(entities.values())} entities {dict(sorted(entities.items()))}, " \
               f"{len(examples)} images missing, 0 unreadable" in result.stdout  # fmt: skip
        assert loaded[split]["image"] == [None] * len(examples)
    card = DatasetCard.load(output / "README.md").text
    assert mner_data.UMT_COMMIT in card and card.count("UMT's file at the pinned commit") == 3
    assert all(key in card for key in ("zhang2018adaptive", "lu2018visual", "yu2020improving", "No license"))


@pytest.mark.slow
def test_run_mner_trains_on_the_dataset_as_on_the_conll_files(twitter_slice, slice_dataset, tiny_backbone,
                                                               clip_config_file, tmp_path):
    """`--hf_dataset <folder>` and the CoNLL files with their image folder: the same image report, per-step losses,
    dev and test scores and predictions files."""
    steps = ("--max_train_steps", "3", "--num_train_epochs", "1")
    conll = launch_run_mner(run_args(twitter_slice, tiny_backbone, clip_config_file, tmp_path / "conll", *steps),
                            cwd=tmp_path)  # fmt: skip
    hub_args = run_args(twitter_slice, tiny_backbone, clip_config_file, tmp_path / "hub", *steps)
    first = hub_args.index("--train_file")
    hub_args[first : hub_args.index("--model_name_or_path")] = ["--hf_dataset", str(slice_dataset["folder"])]
    launch_run_mner(hub_args, cwd=tmp_path, HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    results = [json.loads((tmp_path / run_ / "all_results.json").read_text()) for run_ in ("conll", "hub")]
    assert results[1]["step_losses"] == results[0]["step_losses"] and len(results[0]["step_losses"]) == 3
    assert results[1]["results"] == results[0]["results"]
    reports = [r["image_report"] for r in results]
    assert [{s: r["text_only"] for s, r in report.items()} for report in reports][0] == \
        {s: r["text_only"] for s, r in reports[1].items()}  # fmt: skip
    for split in ("validation", "test"):
        files = [(tmp_path / run_ / f"predictions_{split}.jsonl").read_text() for run_ in ("conll", "hub")]
        assert files[0] == files[1]
    assert "Image embeddings:" in conll.stdout
