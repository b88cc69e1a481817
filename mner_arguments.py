"""The settings of a training run (package only): each declared once, with its type, default, help and choices.

`run_mner.py`'s command line is derived from these dataclasses by transformers' `HfArgumentParser` (one argument group
per dataclass, as `run_ner.py` does), and [`RunArguments`], which has every field of the four groups, validates the
values: an inconsistent one raises a `ValueError` that names its command-line option. The files and folders the
settings name are checked by `mner_run_inputs.check_run_inputs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from transformers import HfArgumentParser, SchedulerType

from configuration_promptmner import PROMPT_KINDS
from mner_data import TWITTER_TEXT_SOURCES
from prompt_vocabularies import load_vocabulary

PROMPT_INITS = ("random", "vocabulary", "kmeans")
# The vocabulary a processor of continuous prompts carries when none is given: --prompt_init vocabulary starts from
# it, and explanations name learned prompts by their nearest words in it.
CONTINUOUS_PROMPTS_VOCABULARY = "task_labels+kb+expert"


def setting(default, help: str, **metadata):  # noqa: A002 - `help` is argparse's name
    """A dataclass field with its command-line help (and any other `add_argument` keyword, e.g. `choices`)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class DataArguments:
    _argument_group_name = "data"

    dataset: str | None = setting(None, "Twitter-2015 or -2017 (text fetched and verified; images from --image_dir)",
                                  choices=sorted(TWITTER_TEXT_SOURCES))  # fmt: skip
    data_dir: str | None = setting(None, "folder with train/valid/test.txt (downloaded there when --dataset is set)")
    image_dir: str | None = setting(None, "folder with the images <IMGID><--image_extension>")
    image_extension: str = setting(".jpg", "file extension of the images in --image_dir")
    train_file: str | None = setting(None, "CoNLL+IMGID training file")
    validation_file: str | None = setting(None, "CoNLL+IMGID development file (evaluated after every epoch)")
    test_file: str | None = setting(None, "CoNLL+IMGID test file (evaluated with the best-dev model)")
    hf_dataset: str | None = setting(
        None, "a `datasets` dataset with tokens, ner_tags and image columns: a Hub id, a folder saved with save_to_disk, "
        "or a folder that load_dataset reads (python -m mner_hub_dataset writes one)"
    )
    tokens_column: str = setting("tokens", "--hf_dataset's column of words")
    tags_column: str = setting("ner_tags", "--hf_dataset's column of BIO tags (ClassLabel ids or strings)")
    image_column: str = setting("image", "--hf_dataset's column of images (Image feature or file paths)")
    max_train_samples: int | None = setting(None, "use only the first N training examples")
    max_eval_samples: int | None = setting(None, "use only the first N dev and test examples")
    max_length: int = setting(256, "max text tokens (whole words are kept)")
    cache_dir: str | None = setting(None, "image-embedding cache (None: <output_dir>/../.cache/promptmner)")
    image_batch_size: int = setting(64, "images per CLIP forward pass")
    demo: bool = setting(False, "generate and use the offline demo corpus")
    allow_unverified_data: bool = setting(False, "accept dataset files whose checksum is not pinned")


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: str = setting("roberta-base", "BERT-family text backbone (Hub id or folder)")
    clip_model: str = setting("RN50", "open_clip model name (the paper's CNN CLIP: RN50)")
    clip_pretrained: str | None = setting("openai", "open_clip pretrained tag ('none': random weights)")
    clip_config: str | None = setting(None, "JSON file with an open_clip model config (random weights)")
    prompts: str = setting(
        "continuous", f"{' | '.join(kind for kind in PROMPT_KINDS if kind != 'custom')}, a '+'-combination "
        "(kb+expert) or a file of words"
    )  # fmt: skip
    prompt_vocabulary: str | None = setting(
        None, "vocabulary the processor carries: for continuous prompts, the one they start from (--prompt_init "
        f"vocabulary) and the words explanations name (None: {CONTINUOUS_PROMPTS_VOCABULARY}); discrete: --prompts"
    )  # fmt: skip
    prompt_init: str = setting(
        "random", "continuous prompts: random, the vocabulary's words, or k-means centroids of the training images",
        choices=PROMPT_INITS,
    )  # fmt: skip
    standardize_image_embeds: bool = setting(
        False, "standardise image embeddings with the training images' mean and std before scoring the prompts "
        "(not in the paper; see docs/visual-clues.md)"
    )  # fmt: skip
    whiten_image_embeds: bool = setting(
        False, "whiten image embeddings (ZCA with the training images' mean and covariance) before scoring the "
        "prompts; instead of --standardize_image_embeds (not in the paper; see docs/visual-clues.md)"
    )  # fmt: skip
    clue_scale: float | None = setting(
        None, "multiply the projected clues p(P_i|I) W s_i (None: 1, the paper's; see docs/visual-clues.md)"
    )
    prompt_temperature: float | None = setting(None, "1/tau of p(P_i|I) (None: the CLIP's own, 100 when pretrained)")
    learnable_temperature: bool = setting(False, "learn 1/tau, from its initial value")
    num_prompts: int = setting(100, "number of continuous prompts (paper: 30, 50 or 100)")
    prompt_template: str = setting("an image of {}", "the prompt around each vocabulary word")
    max_span_length: int = setting(8, "longest span in words")
    span_dropout: float = setting(0.5, "dropout of the span classifier (paper: 0.5)")
    no_mas: bool = setting(False, "ablation: one query projection for all modalities")
    text_only: bool = setting(False, "ablation: no visual clues at all")


@dataclass
class OptimizerArguments:
    _argument_group_name = "training"

    per_device_train_batch_size: int = setting(32, "training examples per process and step (paper: 32)")
    per_device_eval_batch_size: int = setting(64, "evaluation examples per process and forward pass")
    learning_rate: float = setting(1e-4, "AdamW learning rate (paper: 1e-4)")
    head_learning_rate: float | None = setting(
        None, "learning rate of the parameters trained from scratch (span classifier, clue projection, prompts); "
        "None: --learning_rate"
    )  # fmt: skip
    prompt_learning_rate: float | None = setting(
        None, "learning rate of the continuous prompts (and a learnable temperature); None: --head_learning_rate"
    )
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases, LayerNorm weights and prompts)")
    num_train_epochs: int = setting(10, "passes over the training data")
    max_train_steps: int | None = setting(None, "optimizer steps in all; overrides --num_train_epochs")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    lr_scheduler_type: str = setting("linear", "learning-rate schedule after the warmup",
                                     choices=[kind.value for kind in SchedulerType])  # fmt: skip
    warmup_ratio: float = setting(0.1, "fraction of the steps with a linear warmup")
    max_grad_norm: float = setting(1.0, "gradients are clipped to this norm")
    seed: int = setting(42, "seed of the model's initialisation, the data order and dropout")


@dataclass
class OutputArguments:
    _argument_group_name = "output"

    output_dir: str = setting("outputs/promptmner", "becomes a complete Hub repository")
    overwrite_output_dir: bool = setting(
        False, "replace the run a non-empty --output_dir holds (its checkpoints and training state are deleted)"
    )
    checkpointing_steps: str | None = setting(None, "save the training state every N steps, or 'epoch'")
    resume_from_checkpoint: str | None = setting(None, "a checkpoint folder, or 'latest'")
    with_tracking: bool = setting(False, "log to TensorBoard (the `tracking` extra)")
    push_to_hub: bool = setting(False, "upload the output folder to --hub_model_id")
    hub_model_id: str | None = setting(None, "org/name of the Hub repository")
    hub_space_id: str | None = setting(None, "org/name of a Gradio Space to push the model's Space folder to")
    hub_token: str | None = setting(None, "Hub token (None: the one huggingface_hub finds)")


ARGUMENT_GROUPS = (DataArguments, ModelArguments, OptimizerArguments, OutputArguments)


@dataclass
class RunArguments(OutputArguments, OptimizerArguments, ModelArguments, DataArguments):
    """The settings of one training run: every field of the four groups, validated on creation.

    `prompt_words` is not a setting: it is `prompt_vocabulary` (or `prompts`) resolved to its list of words (a bad
    name or file is named with its line).
    """

    prompt_words: list[str] = field(init=False, default_factory=list)

    def __post_init__(self):
        self.check_sources()
        self.check_counts()
        self.check_rates()
        self.check_options()
        default = self.prompts if self.prompts != "continuous" else CONTINUOUS_PROMPTS_VOCABULARY
        self.prompt_words = load_vocabulary(self.prompt_vocabulary or default)

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
        """Learning rates, warmup, dropout, decay and clipping: finite and in their ranges."""
        rates = ("learning_rate", "head_learning_rate", "prompt_learning_rate", "prompt_temperature", "max_grad_norm",
                 "clue_scale")  # fmt: skip
        for name in rates:
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.span_dropout < 1:
            raise ValueError(f"--span_dropout must be in [0, 1), got {self.span_dropout}")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        for name in (*rates, "warmup_ratio", "span_dropout", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}")

    def check_options(self) -> None:
        """Choices and the options that go together or exclude each other."""
        if self.checkpointing_steps not in (None, "epoch"):
            if not str(self.checkpointing_steps).isdigit() or int(self.checkpointing_steps) < 1:
                raise ValueError(
                    f"--checkpointing_steps must be a positive integer or 'epoch', got {self.checkpointing_steps!r}"
                )
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"--prompt_init must be 'random', 'vocabulary' or 'kmeans', got {self.prompt_init!r}")
        if self.resume_from_checkpoint == "":
            raise ValueError("--resume_from_checkpoint must be a checkpoint folder or 'latest', got ''")
        if self.standardize_image_embeds and self.whiten_image_embeds:
            raise ValueError("--standardize_image_embeds and --whiten_image_embeds are exclusive: choose one")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.hub_space_id and not self.push_to_hub:
            raise ValueError("--hub_space_id needs --push_to_hub (and --hub_model_id, the model the Space serves)")

    def num_visual_tokens(self) -> int:
        """Tokens the visual clues add after the text: the prompts and their closing separator (0: text-only)."""
        if self.text_only:
            return 0
        return (self.num_prompts if self.prompts == "continuous" else len(self.prompt_words)) + 1

    def settings(self) -> dict:
        """The settings as given (every field but the derived `prompt_words`)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.init}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` keeps the description's line breaks and shows each option's default."""


def argument_parser(description: str | None = None) -> HfArgumentParser:
    """The command line of `run_mner.py`: one option per field of [`ARGUMENT_GROUPS`], grouped as they are."""
    return HfArgumentParser(ARGUMENT_GROUPS, description=description, formatter_class=HelpFormatter)


def parse_args(argv: list[str], description: str | None = None) -> RunArguments:
    """[`RunArguments`] from a command line. argparse stops on an unknown option or a value of the wrong type (exit
    status 2, naming it); `RunArguments` raises a `ValueError` naming an inconsistent one."""
    namespace = argument_parser(description).parse_args(argv)
    return RunArguments(**vars(namespace))
