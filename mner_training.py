"""Training library of PromptMNER (package only: never shipped with a model). `run_mner.py` is its script.

- Backbone conversion: a new [`PromptMNERForSpanNER`] from a pretrained BERT-family text encoder
  ([`model_from_backbone`]): embeddings and layers copied, the three extra MAS queries started as copies of the
  pretrained `query`, BERT-style position tables shifted to RoBERTa-style ids.
- [`RunArguments`]: the validated settings of one run; [`check_run_inputs`]: the files and folders it reads and
  writes (data files, backbone, checkpoint, output folder), checked before any data work.
- Image embeddings computed once with the frozen CLIP and cached on disk ([`add_image_embeddings`]: embeddings
  only, joined to freshly read text), the batch collator, the optimizer ([`create_optimizer`]), evaluation,
  checkpoints tied to their run's arguments (save / latest / check / load), the model folder (replaced whole),
  `all_results.json`, the results table and the model card.
- A test hook, [`kill_point`]: `$PROMPTMNER_TEST_KILL_AT` makes a run SIGKILL itself at a named point.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModel
from transformers.utils import logging

from clip_promptmner import embed_present
from configuration_promptmner import PromptMNERConfig
from mner_data import TWITTER_TEXT_SOURCES
from mner_demo import DEMO_CORPUS_NOTE
from mner_serving import SPACE_FOLDER, WIDGET_EXAMPLES, serving_section, usage_snippets
from modeling_promptmner import PromptMNERForSpanNER
from pipeline_promptmner import MultimodalNERPipeline
from prompt_vocabularies import kmeans_prompt_embeds, load_vocabulary
from span_utils import bio_to_spans, entity_scores

logger = logging.get_logger(__name__)

# Backbones whose position ids start after the padding index (RoBERTa style) rather than at 0 (BERT style).
ROBERTA_STYLE_POSITIONS = ("roberta", "xlm-roberta", "camembert", "bertweet")
BERT_STYLE_POSITIONS = ("bert",)


# --- backbone conversion -------------------------------------------------------------------------------------


def processor_config_kwargs(processor) -> dict:
    """The [`PromptMNERConfig`] fields that a [`PromptMNERProcessor`] decides."""
    fields = {
        "clip_embed_dim": processor.clip_embed_dim,  # None for a text-only processor (no CLIP)
        "clip_logit_scale": processor.clip_logit_scale,
        "max_span_length": processor.max_span_length,
        "labels": list(processor.labels),
        "sep_token_id": processor.tokenizer.sep_token_id,
    }
    return {name: value for name, value in fields.items() if value is not None}


def backbone_position_offset(backbone_config) -> int:
    """How many rows to prepend to a backbone's position table so that its ids follow RoBERTa's convention."""
    if backbone_config.model_type in ROBERTA_STYLE_POSITIONS:
        return 0
    if backbone_config.model_type in BERT_STYLE_POSITIONS:
        return backbone_config.pad_token_id + 1
    raise ValueError(
        f"Backbone model_type {backbone_config.model_type!r} is not supported; supported: "
        f"{ROBERTA_STYLE_POSITIONS + BERT_STYLE_POSITIONS}"
    )


def backbone_to_config(backbone_config, **kwargs) -> PromptMNERConfig:
    """A [`PromptMNERConfig`] with the backbone's architecture and the given PromptMNER fields."""
    fields = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "layer_norm_eps",
        "initializer_range",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    )
    architecture = {field: getattr(backbone_config, field) for field in fields if hasattr(backbone_config, field)}
    architecture["max_position_embeddings"] = (
        backbone_config.max_position_embeddings + backbone_position_offset(backbone_config)
    )
    return PromptMNERConfig(**{**architecture, **kwargs})


def convert_backbone_state_dict(backbone_state: dict, backbone_config, config: PromptMNERConfig):
    """
    Map a BERT-family encoder's state dict onto [`PromptMNERModel`]'s names.

    Returns the new state dict (without the `promptmner.` prefix) and a report `{"copied": [...], "derived":
    {name: how}, "dropped": [...]}`. The pooler has no counterpart and is dropped.
    """
    state, report = {}, {"copied": [], "derived": {}, "dropped": []}
    for name, tensor in backbone_state.items():
        name = name.split(".", 1)[1] if name.split(".", 1)[0] in ("roberta", "bert", "model") else name
        if name.startswith("pooler.") or name.endswith("position_ids") or name.endswith("token_type_ids"):
            report["dropped"].append(name)
            continue
        state[name] = tensor
        report["copied"].append(name)
    offset = backbone_position_offset(backbone_config)
    if offset:
        table = state["embeddings.position_embeddings.weight"]
        state["embeddings.position_embeddings.weight"] = torch.cat([table.new_zeros(offset, table.shape[1]), table])
        report["derived"]["promptmner.embeddings.position_embeddings.weight"] = f"BERT positions shifted by {offset}"
    types = state["embeddings.token_type_embeddings.weight"]
    if types.shape[0] < config.type_vocab_size:
        missing = config.type_vocab_size - types.shape[0]
        state["embeddings.token_type_embeddings.weight"] = torch.cat([types, types[:1].expand(missing, -1)])
        report["derived"]["promptmner.embeddings.token_type_embeddings.weight"] = "visual type copied from text type"
    if config.use_mas:
        for layer in range(config.num_hidden_layers):
            prefix = f"encoder.layer.{layer}.attention.self."
            for pair in ("t2v", "v2t", "v2v"):
                for kind in ("weight", "bias"):
                    state[f"{prefix}{pair}_query.{kind}"] = state[f"{prefix}query.{kind}"].clone()
                    report["derived"][f"promptmner.{prefix}{pair}_query.{kind}"] = "copy of pretrained query"
    return state, report


def model_from_backbone(
    backbone,
    processor=None,
    prompts: str = "continuous",
    num_prompts: int | None = None,
    prompt_embeds: torch.Tensor | None = None,
    **config_kwargs,
) -> PromptMNERForSpanNER:
    """
    Start a new PromptMNER model from a pretrained BERT-family text encoder and a PromptMNER processor.

    Args:
        backbone (`str` or `PreTrainedModel`):
            A Hub id, a local folder or a loaded encoder (RoBERTa, XLM-R, BERTweet, CamemBERT, BERT, MiniLM...).
            Embeddings and layers are copied; `t2v_query`, `v2t_query` and `v2v_query` start as copies of the
            pretrained `query`; the visual token type starts as the text one for backbones with a single token
            type; BERT-style position embeddings are shifted to RoBERTa-style ids.
        processor ([`PromptMNERProcessor`], *optional*):
            Supplies the CLIP width and temperature, the labels, the span length, the separator token and, for
            discrete prompts, the prompt embeddings (`processor.vocabulary_embeds()`).
        prompts (`str`): `"continuous"` (learned prompts) or a discrete kind (`"task_labels"`, `"kb"`,
            `"expert"`, `"custom"`) whose embeddings come from `prompt_embeds` or the processor.
        num_prompts (`int`, *optional*): number of prompts; for discrete kinds the vocabulary size.
        prompt_embeds (`torch.Tensor` of shape `(num_prompts, clip_embed_dim)`, *optional*):
            Initial (continuous) or frozen (discrete) prompt embeddings. Continuous prompts without them
            start at random.
        config_kwargs: any other [`PromptMNERConfig`] field (e.g. `span_dropout`, `use_mas`, `labels`).

    The returned model has `model.loading_report`: which weights were copied, derived or initialised fresh
    (also logged).
    """
    if isinstance(backbone, str):
        backbone = AutoModel.from_pretrained(backbone)
    if processor is not None:
        config_kwargs = {**processor_config_kwargs(processor), **config_kwargs}
    if prompt_embeds is None and prompts != "continuous":
        if processor is None:
            raise ValueError(f"prompts={prompts!r} needs `prompt_embeds` or a `processor` to encode its vocabulary")
        prompt_embeds = processor.vocabulary_embeds()
    if prompt_embeds is not None:
        num_prompts, config_kwargs["clip_embed_dim"] = prompt_embeds.shape
    config = backbone_to_config(backbone.config, prompt_kind=prompts, num_prompts=num_prompts or 100, **config_kwargs)
    model = PromptMNERForSpanNER(config)
    state_dict, report = convert_backbone_state_dict(backbone.state_dict(), backbone.config, config)
    incompatible = model.promptmner.load_state_dict(state_dict, strict=False)
    if incompatible.unexpected_keys:
        raise ValueError(f"Backbone weights with no place in PromptMNER: {incompatible.unexpected_keys}")
    if prompt_embeds is not None:
        with torch.no_grad():
            model.promptmner.visual_clues.prompt_embeds.copy_(prompt_embeds)
        report["derived"]["promptmner.visual_clues.prompt_embeds"] = f"{prompts} prompt embeddings (CLIP text)"
    fresh = sorted(
        name
        for name, _ in model.state_dict().items()
        if not (name.startswith("promptmner.") and name[len("promptmner.") :] in state_dict)
        and name not in report["derived"]
    )
    report["initialised_fresh"] = fresh
    model.loading_report = report
    derived = {}
    for how in report["derived"].values():
        derived[how] = derived.get(how, 0) + 1
    logger.info(
        "PromptMNER from backbone %s: %d tensors copied; derived: %s; initialised fresh: %s",
        getattr(backbone.config, "_name_or_path", None) or type(backbone).__name__,
        len(report["copied"]),
        ", ".join(f"{how} ({count})" for how, count in derived.items()),
        ", ".join(fresh),
    )
    return model


@torch.no_grad()
def fit_clue_path_to_images(model, image_embeds: torch.Tensor, kmeans_generator: torch.Generator | None = None) -> None:
    """What a new model's clue path takes from the `(N, D)` embeddings of its training images: the statistics of
    `standardize_image_embeds` / `whiten_image_embeds` when its config has either, then, with `kmeans_generator`,
    its continuous prompts at the k-means centroids of the images as the prompts see them (standardised or whitened
    first; see BENCHMARKS.md, "Visual clues")."""
    clues = model.promptmner.visual_clues
    if model.config.standardize_image_embeds or model.config.whiten_image_embeds:
        clues.set_image_statistics(image_embeds)
    if kmeans_generator is not None:
        num_prompts = clues.prompt_embeds.shape[0]
        clues.prompt_embeds.copy_(kmeans_prompt_embeds(clues.standardized(image_embeds), num_prompts, kmeans_generator))


# --- arguments -----------------------------------------------------------------------------------------------


@dataclass
class RunArguments:
    """The settings of one training run (`run_mner.py`'s command line; its `--help` documents each field).

    Validated on creation: an inconsistent value raises a `ValueError` that names its command-line option.
    `prompt_vocabulary` (a spec: names, a `+`-combination or a file) is resolved to its list of words. The data
    files, backbone, checkpoint and output folder the settings name are checked by [`check_run_inputs`].
    """

    # data
    dataset: str | None = None
    data_dir: str | None = None
    image_dir: str | None = None
    image_extension: str = ".jpg"
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    hf_dataset: str | None = None
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    image_column: str = "image"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 256
    cache_dir: str | None = None
    image_batch_size: int = 64
    demo: bool = False
    allow_unverified_data: bool = False
    # model
    model_name_or_path: str = "roberta-base"
    clip_model: str = "RN50"
    clip_pretrained: str | None = "openai"
    clip_config: str | None = None
    prompts: str = "continuous"
    prompt_vocabulary: str | list[str] | None = None
    prompt_init: str = "random"
    standardize_image_embeds: bool = False
    whiten_image_embeds: bool = False
    clue_scale: float | None = None
    learnable_temperature: bool = False
    prompt_temperature: float | None = None
    num_prompts: int = 100
    prompt_template: str = "an image of {}"
    max_span_length: int = 8
    span_dropout: float = 0.5
    no_mas: bool = False
    text_only: bool = False
    # training
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None
    prompt_learning_rate: float | None = None
    weight_decay: float = 0.01
    num_train_epochs: int = 10
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    # output
    output_dir: str = "outputs/promptmner"
    overwrite_output_dir: bool = False
    checkpointing_steps: str | None = None
    resume_from_checkpoint: str | None = None
    with_tracking: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_space_id: str | None = None
    hub_token: str | None = None

    def __post_init__(self):
        self.check_sources()
        self.check_counts()
        self.check_rates()
        if self.checkpointing_steps not in (None, "epoch"):
            if not str(self.checkpointing_steps).isdigit() or int(self.checkpointing_steps) < 1:
                raise ValueError(
                    f"--checkpointing_steps must be a positive integer or 'epoch', got {self.checkpointing_steps!r}"
                )
        if self.prompt_init not in ("random", "vocabulary", "kmeans"):
            raise ValueError(f"--prompt_init must be 'random', 'vocabulary' or 'kmeans', got {self.prompt_init!r}")
        if self.resume_from_checkpoint == "":
            raise ValueError("--resume_from_checkpoint must be a checkpoint folder or 'latest', got ''")
        if not isinstance(self.prompt_vocabulary, list):
            default = self.prompts if self.prompts != "continuous" else "task_labels+kb+expert"
            self.prompt_vocabulary = load_vocabulary(self.prompt_vocabulary or default)  # names a bad name/file:line
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.hub_space_id and not self.push_to_hub:
            raise ValueError("--hub_space_id needs --push_to_hub (and --hub_model_id, the model the Space serves)")

    def check_sources(self) -> None:
        """Exactly one data source."""
        sources = [name for name in ("dataset", "train_file", "hf_dataset") if getattr(self, name)]
        if not self.demo and not sources:
            raise ValueError(
                "give --dataset, --train_file (with --validation_file/--test_file), --hf_dataset or --demo"
            )
        if len(sources) > 1:
            raise ValueError(f"{' and '.join('--' + name for name in sources)} are exclusive")
        if self.dataset is not None and self.dataset not in TWITTER_TEXT_SOURCES:
            raise ValueError(f"--dataset must be one of {sorted(TWITTER_TEXT_SOURCES)}, got {self.dataset!r}")

    def check_counts(self) -> None:
        """Sizes, counts and the seed: positive integers (the seed: any non-negative 32-bit integer)."""
        positive = (
            "per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs", "num_prompts",
            "gradient_accumulation_steps", "image_batch_size", "max_span_length", "max_length",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (or left out), got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")

    def check_rates(self) -> None:
        """Learning rates, warmup, dropout, decay and clipping in their ranges."""
        rates = ("learning_rate", "head_learning_rate", "prompt_learning_rate", "prompt_temperature", "max_grad_norm",
                 "clue_scale")  # fmt: skip
        for name in rates:
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.standardize_image_embeds and self.whiten_image_embeds:
            raise ValueError("--standardize_image_embeds and --whiten_image_embeds are exclusive: choose one")
        if not 0 <= self.span_dropout < 1:
            raise ValueError(f"--span_dropout must be in [0, 1), got {self.span_dropout}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight_decay must be >= 0, got {self.weight_decay}")

    def num_visual_tokens(self) -> int:
        """Tokens the visual clues add after the text: the prompts and their closing separator (0: text-only)."""
        if self.text_only:
            return 0
        return (self.num_prompts if self.prompts == "continuous" else len(self.prompt_vocabulary)) + 1


# --- the files and folders of a run, checked before any data work -------------------------------------------

# A backbone folder needs one of these to build its tokenizer (fast tokenizer, WordPiece, byte-level BPE,
# SentencePiece or BERTweet's BPE codes); without any, transformers would fall back to a misleading message.
BACKBONE_TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
    "bpe.codes",
)  # fmt: skip


def is_local_path(name: str) -> bool:
    """Whether `name` can only be a local path (not a Hub id `name` or `org/name`)."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_data_files(args: RunArguments) -> None:
    """The CoNLL files exist and are not empty; `--train_file` comes with `--validation_file`; the image folder
    exists; the CLIP config file is a JSON object."""
    if args.train_file and not args.validation_file:
        raise ValueError("--train_file needs --validation_file: the model is evaluated on dev after every epoch")
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(args, name)
        if path is None:
            continue
        if not Path(path).is_file():
            raise ValueError(f"--{name} {path}: no such file")
        if Path(path).stat().st_size == 0:
            raise ValueError(f"--{name} {path}: the file is empty")
    if args.image_dir is not None and not Path(args.image_dir).is_dir():
        raise ValueError(f"--image_dir {args.image_dir}: no such folder")
    if args.hf_dataset and is_local_path(args.hf_dataset) and not Path(args.hf_dataset).is_dir():
        raise ValueError(f"--hf_dataset {args.hf_dataset}: no such folder")
    if args.clip_config is not None:
        config = read_json_record(Path(args.clip_config), "an open_clip model config (--clip_config)")
        if "vision_cfg" not in config or "embed_dim" not in config:
            raise ValueError(f"--clip_config {args.clip_config}: not an open_clip model config (no vision_cfg)")


def check_backbone(args: RunArguments) -> None:
    """`--model_name_or_path`: a folder with `config.json` and tokenizer files (or a Hub id), a supported model
    type, and enough positions for `--max_length` text tokens plus the visual clue tokens."""
    name = args.model_name_or_path
    if is_local_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--model_name_or_path {name}: no such folder")
        if not (folder / "config.json").is_file():
            raise ValueError(f"--model_name_or_path {name}: the folder has no config.json")
        if not any((folder / file).is_file() for file in BACKBONE_TOKENIZER_FILES):
            raise ValueError(
                f"--model_name_or_path {name}: the folder has no tokenizer files (one of "
                f"{', '.join(BACKBONE_TOKENIZER_FILES)})"
            )
    try:
        config = AutoConfig.from_pretrained(name)
        offset = backbone_position_offset(config)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model_name_or_path {name}: {err}") from err
    capacity = config.max_position_embeddings + offset - config.pad_token_id - 1  # positions after the padding id
    needed = args.max_length + args.num_visual_tokens()
    if needed > capacity:
        raise ValueError(
            f"--max_length {args.max_length} plus {args.num_visual_tokens()} visual clue tokens need {needed} "
            f"positions, but the backbone {name} has {capacity}: use --max_length "
            f"{capacity - args.num_visual_tokens()} or less"
        )


def resolve_checkpoint(args: RunArguments) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names (`latest`: the newest of the output folder), or None."""
    if args.resume_from_checkpoint == "latest":
        return latest_checkpoint(Path(args.output_dir) / TRAINING_STATE_DIR)
    return args.resume_from_checkpoint


def check_output_dir(args: RunArguments, checkpoint: str | None) -> None:
    """An output folder that holds anything is only written into with `--overwrite_output_dir` or to resume one
    of its checkpoints (transformers' convention)."""
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output_dir {output}: exists and is not a folder")
    if args.overwrite_output_dir or checkpoint is not None or not output.is_dir() or not any(output.iterdir()):
        return
    resume = " and no checkpoint to resume from" if args.resume_from_checkpoint else ""
    raise ValueError(
        f"--output_dir {output}: the folder is not empty{resume}; use --overwrite_output_dir to replace its "
        "run, --resume_from_checkpoint latest to continue it, or another --output_dir"
    )


def check_run_inputs(args: RunArguments) -> None:
    """Everything a run reads or writes, checked before any data work: data files, image folder, CLIP config,
    backbone, the checkpoint to resume from (tied to these arguments) and the output folder."""
    check_data_files(args)
    check_backbone(args)
    checkpoint = resolve_checkpoint(args)
    if checkpoint is not None:
        check_checkpoint(checkpoint, run_signature(args))
    check_output_dir(args, checkpoint)


def clear_previous_run(args: RunArguments) -> None:
    """With `--overwrite_output_dir` (and nothing to resume), delete the training state of the run the folder
    held (checkpoints, best-dev model, logs), so that no later `--resume_from_checkpoint latest` picks it up. Its
    model files stay until the new run's replace them."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    if args.overwrite_output_dir and resolve_checkpoint(args) is None and state_dir.exists():
        logger.warning("--overwrite_output_dir: deleting the previous run's training state %s", state_dir)
        shutil.rmtree(state_dir)


# --- image embeddings: computed once with CLIP, cached on disk ----------------------------------------------


def clip_fingerprint(processor) -> str:
    """A hash of what turns an image into an embedding: the CLIP image tower's weights and the preprocessing."""
    digest = hashlib.sha256()
    for name, tensor in sorted(processor.clip_vision.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([processor.image_size, processor.image_mean, processor.image_std,
                              processor.image_interpolation, processor.image_resize_mode]).encode())  # fmt: skip
    return digest.hexdigest()


def image_source_digest(path: str | None, stored: dict | None) -> bytes:
    """What one example's image is: the sha256 of its bytes (stored in the dataset, or its file's) and its path.

    A missing or unreadable file gets its own marker, so the example's text-only path is cached too.
    """
    if stored is not None:
        content = stored.get("bytes") or str(stored).encode()
        return b"stored|" + hashlib.sha256(content).digest()
    if path is None:
        return b"none"
    try:
        with open(path, "rb") as handle:
            return f"file|{path}|".encode() + hashlib.file_digest(handle, "sha256").digest()
    except OSError as err:  # the example takes the text-only path; its error is what gets cached
        return f"unreadable|{path}|{type(err).__name__}".encode()


def embedding_fingerprint(images: datasets.Dataset, processor) -> str:
    """A hash of everything a table of image embeddings depends on: the CLIP weights, the preprocessing and the
    content of each row's image, in order (`images`: the `image_path` and optional `image` columns)."""
    digest = hashlib.sha256(clip_fingerprint(processor).encode())
    stored = images["image"] if "image" in images.column_names else [None] * len(images)
    for path, image in zip(images["image_path"], stored):
        digest.update(image_source_digest(path, image))
    return digest.hexdigest()[:32]


def image_embedding_function(processor, counter: dict):
    """A batched `datasets.map` function adding `image_embeds` (None without an image), `has_image` and
    `image_error` columns; `counter["encoder_calls"]` counts the CLIP batches it runs."""
    decode = datasets.Image().decode_example

    def encode(images: list) -> torch.Tensor:
        counter["encoder_calls"] += 1
        return processor.encode_images(images, batch_size=len(images))

    def embed(batch: dict) -> dict:
        images, errors = [], []
        stored = batch.get("image") or [None] * len(batch["image_path"])
        for path, image in zip(batch["image_path"], stored):
            source = decode(image) if image is not None else path
            try:
                images.append(processor.load_image(source) if source is not None else None)
                errors.append(None if source is not None else "no image")
            except (OSError, ValueError) as err:  # missing or unreadable: this example takes the text-only path
                images.append(None)
                errors.append(f"{type(err).__name__}: {err}")
        embeds, has_image = embed_present(images, encode, processor.clip_embed_dim)  # (B, D), (B,)
        has_image = has_image.tolist()
        rows = [row.tolist() if present else None for row, present in zip(embeds, has_image)]
        return {"image_embeds": rows, "has_image": has_image, "image_error": errors}

    return embed


def add_image_embeddings(
    raw: datasets.DatasetDict, processor, cache_dir: str | os.PathLike, batch_size: int = 64
) -> tuple[datasets.DatasetDict, dict]:
    """
    Encode every split's images once with CLIP and cache the embeddings on disk, keyed by
    [`embedding_fingerprint`] (CLIP weights, preprocessing, image contents).

    Only the embeddings are cached: the cached table holds `image_embeds`, `has_image` and `image_error` and
    nothing else, and is joined row by row to the text just read, so an edited text file is never answered with
    the tokens or tags of an earlier run.

    Args:
        raw (`datasets.DatasetDict`): splits in `mner_data`'s schema (`image_path`, optionally `image`).
        processor ([`PromptMNERProcessor`]): loads, preprocesses and encodes the images.
        cache_dir (`str` or `os.PathLike`): folder of the cached embeddings (created if needed).
        batch_size (`int`): images per CLIP forward pass.

    Returns:
        The splits with `image_embeds`, `has_image` and `image_error` columns, and `{"encoder_calls": n}`: how
        many CLIP batches ran (0 when everything came from the cache). Under several processes, call it in
        `accelerator.main_process_first()` so that the main process fills the cache.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    counter = {"encoder_calls": 0}
    out = datasets.DatasetDict()
    for split, dataset in raw.items():
        if "image" in dataset.column_names:  # images stored in the dataset: read their bytes, decode on demand
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        images = dataset.select_columns([name for name in ("image_path", "image") if name in dataset.column_names])
        fingerprint = embedding_fingerprint(images, processor)
        embeddings = images.map(
            image_embedding_function(processor, counter),
            batched=True,
            batch_size=batch_size,
            remove_columns=images.column_names,
            cache_file_name=str(cache_dir / f"image-embeds-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            load_from_cache_file=True,
            desc=f"CLIP image embeddings ({split})",
        )
        out[split] = datasets.concatenate_datasets([dataset, embeddings], axis=1)
    return out, counter


def image_report(data: datasets.DatasetDict) -> dict:
    """Per split: examples, how many took the text-only path and the first few reasons."""
    report = {}
    for split, dataset in data.items():
        errors = [e for e in dataset["image_error"] if e is not None]
        report[split] = {"examples": len(dataset), "text_only": len(errors), "first_errors": errors[:3]}
    return report


def format_image_report(report: dict) -> str:
    """[`image_report`] as sentences: one per split, then the first reasons of each split that has text-only
    examples."""
    lines = []
    for split, row in report.items():
        with_image = row["examples"] - row["text_only"]
        lines.append(f"  {split}: {row['examples']} examples, {with_image} with an image, "
                     f"{row['text_only']} on the text-only path")  # fmt: skip
        lines += [f"    e.g. {error}" for error in row["first_errors"]]
    return "\n".join(lines)


# --- batches -------------------------------------------------------------------------------------------------


class MNERCollator:
    """Batches dataset rows through the processor: tokens, span labels and cached image embeddings."""

    def __init__(self, processor, max_length: int, text_only: bool):
        self.processor, self.max_length, self.text_only = processor, max_length, text_only

    def __call__(self, rows: list[dict]) -> dict:
        image_embeds = None if self.text_only else [row["image_embeds"] for row in rows]
        batch = self.processor(
            [row["tokens"] for row in rows],
            is_split_into_words=True,
            image_embeds=image_embeds,
            tags=[row["tags"] for row in rows],
            max_length=self.max_length,
        )
        return dict(batch)


# --- optimizer -----------------------------------------------------------------------------------------------

NEW_PARAMETERS = ("span_head.", "promptmner.visual_clues.")  # trained from scratch; the rest starts from the backbone
PROMPT_PARAMETERS = ("visual_clues.prompt_embeds", "visual_clues.prompt_log_logit_scale")  # the clue path's scoring

# Devices with torch's fused AdamW: one kernel over all parameters instead of a loop of element-wise ops.
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")


def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_learning_rate: float | None = None,
    device_type: str = "cpu",
    prompt_learning_rate: float | None = None,
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, LayerNorm weights, the prompt embeddings and a learnable temperature;
    `NEW_PARAMETERS` learn at `head_learning_rate` (default: `learning_rate`); with `prompt_learning_rate`, the
    continuous prompts and a learnable temperature (`PROMPT_PARAMETERS`) learn at that rate in a group of their own
    (see BENCHMARKS.md, "Visual clues"); torch's fused implementation on the devices that have it (`device_type`:
    where the parameters will be trained)."""
    no_decay = ("bias", "LayerNorm.weight", "prompt_embeds", "prompt_log_logit_scale")
    named = list(model.named_parameters())
    prompts = [p for n, p in named if n.endswith(PROMPT_PARAMETERS)] if prompt_learning_rate else []
    named = [(n, p) for n, p in named if all(p is not q for q in prompts)]
    groups = []
    for is_head, lr in ((False, learning_rate), (True, head_learning_rate or learning_rate)):
        part = [(n, p) for n, p in named if n.startswith(NEW_PARAMETERS) == is_head]
        groups += [
            {"params": [p for n, p in part if not n.endswith(no_decay)], "weight_decay": weight_decay, "lr": lr},
            {"params": [p for n, p in part if n.endswith(no_decay)], "weight_decay": 0.0, "lr": lr},
        ]
    if prompts:
        groups.append({"params": prompts, "weight_decay": 0.0, "lr": prompt_learning_rate})
    return torch.optim.AdamW(groups, lr=learning_rate, fused=device_type in FUSED_ADAMW_DEVICES)


# --- evaluation ----------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_spans(model, dataloader, accelerator: Accelerator, processor) -> list[list[tuple[int, int, str, float]]]:
    """Each example's decoded `(start, end, label, score)` word spans, gathered from every process, in the
    dataloader's order."""
    model.eval()
    predictions = []
    for batch in dataloader:
        batch.pop("labels", None)
        outputs = model(**batch)
        num_words = (batch["word_start_index"] >= 0).sum(dim=1)
        spans = processor.decode_word_spans(outputs.logits, num_words)
        predictions.extend(accelerator.gather_for_metrics(spans, use_gather_object=True))
    return predictions


def span_scores(predictions: list[list[tuple]], gold_tags: list[list[str]]) -> dict:
    """Entity-level micro P/R/F1 (and per type) of predicted spans against the gold BIO tags (one list each per
    example, in the same order)."""
    gold = [bio_to_spans(tags) for tags in gold_tags]
    return entity_scores(gold, [[span[:3] for span in example] for example in predictions])


def evaluate(model, dataloader, accelerator: Accelerator, processor, gold_tags: list[list[str]]) -> dict:
    """[`span_scores`] of the model's [`predict_spans`] (`gold_tags`: one list per example, in the dataloader's
    order)."""
    return span_scores(predict_spans(model, dataloader, accelerator, processor), gold_tags)


# --- checkpoints ---------------------------------------------------------------------------------------------

TRAINING_STATE_DIR = "training"  # checkpoints, best-dev model and logs; never pushed to the Hub

# Test hook: a process whose environment sets this variable to a kill point's name SIGKILLs itself when it gets
# there, so that tests can interrupt a real run at a precise point. Points: `after_step:<n>` (after optimizer step
# n and its checkpoint), `evaluation:<epoch>` (the epoch's dev evaluation has run, its result is not recorded),
# `best_model_save:<epoch>` (the new best-dev folder is written, not yet in place). Unset, it costs one lookup.
KILL_POINT_ENV = "PROMPTMNER_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process when `$PROMPTMNER_TEST_KILL_AT` equals `name` (see `KILL_POINT_ENV`)."""
    if name and os.environ.get(KILL_POINT_ENV) == name:
        print(f"{KILL_POINT_ENV}={name}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def new_progress() -> dict:
    """The progress record of a run that starts from scratch."""
    return {"step": 0, "step_losses": [], "best_f1": -1.0, "best_epoch": None, "history": []}


# Settings that may change between a run and its resumption: where things go, how often state is saved, how
# results are reported. Every other `RunArguments` field must be what the checkpoint was taken with.
RESUME_INDEPENDENT_ARGUMENTS = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "checkpointing_steps", "cache_dir",
    "image_batch_size", "per_device_eval_batch_size", "with_tracking", "push_to_hub", "hub_model_id", "hub_token",
    "hub_space_id",
)  # fmt: skip
CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def run_signature(args: RunArguments) -> dict:
    """The training arguments a checkpoint is tied to (JSON values): all but `RESUME_INDEPENDENT_ARGUMENTS`."""
    settings = {k: v for k, v in asdict(args).items() if k not in RESUME_INDEPENDENT_ARGUMENTS}
    return json.loads(json.dumps(settings))


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """`.../step_120` -> 120 (the optimizer step the checkpoint was taken after)."""
    return int(CHECKPOINT_NAME.fullmatch(Path(checkpoint).name).group(1))


def latest_checkpoint(state_dir: Path) -> str | None:
    """The complete checkpoint of `state_dir` with the highest step, or None (`.partial` / `.old` folders of an
    interrupted save are not checkpoints)."""
    candidates = [p for p in state_dir.glob("checkpoints/step_*") if CHECKPOINT_NAME.fullmatch(p.name)]
    candidates.sort(key=checkpoint_step)
    return str(candidates[-1]) if candidates else None


def write_json(path: Path, value) -> None:
    """Write a JSON file atomically: a temporary file next to it, then renamed over it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)


def copy_file(source: Path, target: Path) -> None:
    """Copy a file beside `target`, then rename it over `target`: a killed copy never leaves a truncated file."""
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target`; an existing `target` is moved aside first and removed last."""
    old = target.with_name(target.name + ".old")
    if old.exists():  # left by a run killed between the two renames below
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(accelerator: Accelerator, state_dir: Path, step: int, progress: dict, signature: dict) -> None:
    """Accelerate state (model, optimizer, scheduler, RNGs, sampler), the best-dev bookkeeping (`progress.json`)
    and the run's training arguments (`run_arguments.json`, see [`run_signature`]).

    Written to a temporary folder that then replaces `step_<step>` (an existing one too: a resumed run saves its
    steps again), so a run killed while saving never leaves a partial checkpoint.
    """
    folder = state_dir / "checkpoints" / f"step_{step}"
    partial = folder.with_name(folder.name + ".partial")
    if accelerator.is_main_process and partial.exists():  # the leftovers of a run killed while saving
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        write_json(partial / "progress.json", progress)
        write_json(partial / "run_arguments.json", signature)
        replace_folder(partial, folder)
    accelerator.wait_for_everyone()


def read_json_record(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a `ValueError` naming the file and `what` it should be."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path}: missing ({what})") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable, expected {what} ({type(err).__name__}: {err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def check_checkpoint(checkpoint: str | os.PathLike, signature: dict) -> dict:
    """The progress record of a [`save_checkpoint`] folder, after checking that it is one and that it was taken
    with the training arguments `signature`; a `ValueError` names the file or the arguments that differ."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: no such folder")
    progress = read_json_record(checkpoint / "progress.json", "the checkpoint's progress record")
    missing = {"step", "step_losses", "best_f1", "best_epoch", "history"} - set(progress)
    if missing:
        raise ValueError(f"{checkpoint / 'progress.json'}: not a run_mner progress record (no {sorted(missing)})")
    for weights in sorted(checkpoint.glob("*.safetensors")):
        try:
            safe_open(str(weights), framework="pt").keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights}: unreadable checkpoint weights ({type(err).__name__}: {err})") from err
    saved = read_json_record(checkpoint / "run_arguments.json", "the training arguments of the checkpoint's run")
    differ = sorted(name for name in saved.keys() | signature.keys() if saved.get(name) != signature.get(name))
    if differ:
        listed = "; ".join(f"--{name} {signature.get(name)!r} (checkpoint: {saved.get(name)!r})" for name in differ)
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it belongs to a run with other training arguments: {listed}. "
            "Resume with the checkpoint's arguments, or start afresh with --overwrite_output_dir"
        )
    return progress


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike, signature: dict) -> dict:
    """Restore the Accelerate state of a [`save_checkpoint`] folder (checked by [`check_checkpoint`]); returns
    its progress record. A damaged state file raises a `ValueError` naming the checkpoint."""
    progress = check_checkpoint(checkpoint, signature)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as err:  # safetensors, torch.load and accelerate each raise their own types: name the folder
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: the saved training state cannot be restored "
                         f"({type(err).__name__}: {err})") from err  # fmt: skip
    return progress


# --- the model folder ----------------------------------------------------------------------------------------


def save_model_folder(accelerator: Accelerator, model, processor, folder: Path, kill_point_name: str = "") -> None:
    """Model, processor, `custom_pipelines` and their remote code in one folder, written by the main process.

    transformers' `Pipeline.save_pretrained` is what writes `custom_pipelines` into `config.json` and copies the
    pipeline's code; the pipeline is built on the model's own device. The folder is written as `<folder>.partial`
    and then replaces `folder`, so a run killed while saving leaves the previous folder whole.
    `kill_point_name` names the [`kill_point`] between the two.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial = folder.with_name(folder.name + ".partial")
        if partial.exists():  # the leftovers of a run killed while saving
            shutil.rmtree(partial)
        model = accelerator.unwrap_model(model)
        MultimodalNERPipeline(model=model, processor=processor, device=model.device).save_pretrained(partial)
        kill_point(kill_point_name)
        replace_folder(partial, folder)
    accelerator.wait_for_everyone()


def write_results(output_dir: str | os.PathLike, summary: dict) -> None:
    """`all_results.json`, written atomically (a temporary file renamed)."""
    target = Path(output_dir) / "all_results.json"
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(summary, indent=2))
    os.replace(partial, target)


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None) -> None:
    """Upload a run's output folder, without its training state, data, Space folder and predictions files, to the
    Hub repository `repo_id`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        ignore_patterns=[f"{TRAINING_STATE_DIR}/**", "data/**", f"{SPACE_FOLDER}/**", "predictions_*"],
        commit_message="Upload PromptMNER model",
    )


# --- results and the model card ------------------------------------------------------------------------------


def fmt_prf(scores: dict) -> str:
    """`P/R/F1` in percent with two decimals."""
    return f"{100 * scores['precision']:.2f}/{100 * scores['recall']:.2f}/{100 * scores['f1']:.2f}"


def results_table(results: dict[str, dict]) -> str:
    """A text table: one row per split and entity type, P/R/F1 in percent."""
    lines = [f"{'split':<12}{'type':<10}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}", "-" * 55]
    for split, scores in results.items():
        rows = [("micro", scores)] + sorted(scores["per_type"].items())
        for name, s in rows:
            lines.append(
                f"{split:<12}{name:<10}{100 * s['precision']:>8.2f}{100 * s['recall']:>8.2f}"
                f"{100 * s['f1']:>8.2f}{s['number']:>9}"
            )
    return "\n".join(lines)


def clue_path_note(arguments: RunArguments) -> str:
    """One card line naming the clue-path options of issue 15 the model was trained with ('' for the paper's)."""
    if arguments.text_only:
        return ""
    options = [
        "standardised image embeddings" if arguments.standardize_image_embeds else "",
        "whitened image embeddings" if arguments.whiten_image_embeds else "",
        "k-means prompts" if arguments.prompts == "continuous" and arguments.prompt_init == "kmeans" else "",
        f"prompt temperature {arguments.prompt_temperature:g}" if arguments.prompt_temperature is not None else "",
        "learnable temperature" if arguments.learnable_temperature else "",
        f"clue scale {arguments.clue_scale:g}" if arguments.clue_scale not in (None, 1.0) else "",
    ]
    options = [option for option in options if option]
    if not options:
        return ""
    return (f"\nVisual clue path: {', '.join(options)} (options beyond the paper's method; see the project's "
            "BENCHMARKS.md, 'Visual clues').\n")  # fmt: skip


def model_card(arguments: RunArguments, summary: dict, labels: list[str]):
    """A `huggingface_hub.ModelCard`: metadata with the measured results, usage, and the training arguments."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = "promptmner-demo (generated)" if arguments.demo else (arguments.dataset or "custom")
    eval_results = [
        EvalResult(
            task_type="token-classification",
            task_name="Multimodal Named Entity Recognition",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"entity {metric}",
            metric_value=round(100 * scores[metric], 2),
        )
        for split, scores in summary["results"].items()
        for metric in ("precision", "recall", "f1")
    ]
    card_data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="token-classification",
        tags=["promptmner", "multimodal-ner", "ner", "clip", "twitter", "span-prediction"],
        datasets=[arguments.dataset] if arguments.dataset else None,
        base_model=None if arguments.demo else arguments.model_name_or_path,
        model_name=arguments.hub_model_id or Path(arguments.output_dir).name,
        eval_results=eval_results,
        widget=WIDGET_EXAMPLES,
    )
    repo = arguments.hub_model_id or "path/to/this/folder"
    settings = asdict(arguments)
    training_args = {k: v for k, v in sorted(settings.items()) if k not in ("hub_token", "prompt_vocabulary")}
    training_args["prompt_vocabulary_size"] = len(arguments.prompt_vocabulary)
    demo_note = f"\n> **Demo model.** {DEMO_CORPUS_NOTE}\n" if arguments.demo else ""
    demo_note += clue_path_note(arguments)
    body = f"""
# {card_data.model_name}

PromptMNER (Wang et al., DASFAA 2022) multimodal named entity recognition: a frozen CLIP scores prompts
against the tweet's image, the prompt-based visual clues join the text under modality-aware self-attention,
and a span classifier labels every word span. Labels: {", ".join(labels[1:])}.
{demo_note}
## Results (entity-level micro P/R/F1, best-dev checkpoint)

```
{results_table(summary["results"])}
```

{usage_snippets(repo)}
Without an image the model takes its text-only path.

{serving_section(repo, arguments.hub_space_id)}

## Training arguments

```json
{json.dumps(training_args, indent=2, default=str)}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
