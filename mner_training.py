"""Training library of PromptMNER (package only: never shipped with a model). `run_mner.py` is its script.

- Backbone conversion: a new [`PromptMNERForSpanNER`] from a pretrained BERT-family text encoder
  ([`model_from_backbone`]): embeddings and layers copied, the three extra MAS queries started as copies of the
  pretrained `query`, BERT-style position tables shifted to RoBERTa-style ids.
- [`RunArguments`]: the validated settings of one run.
- Image embeddings computed once with the frozen CLIP and cached on disk ([`add_image_embeddings`]), the batch
  collator, the optimizer ([`create_optimizer`]), evaluation, checkpoints (save / latest / load), the model
  folder, `all_results.json`, the results table and the model card.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from transformers import AutoModel
from transformers.utils import logging

from clip_promptmner import embed_present
from configuration_promptmner import PromptMNERConfig
from mner_data import TWITTER_TEXT_SOURCES
from mner_demo import DEMO_CORPUS_NOTE
from modeling_promptmner import PromptMNERForSpanNER
from pipeline_promptmner import WIDGET_EXAMPLES, MultimodalNERPipeline, usage_snippets
from prompt_vocabularies import load_vocabulary
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
    logger.warning(
        "PromptMNER from backbone %s: %d tensors copied; derived: %s; initialised fresh: %s",
        getattr(backbone.config, "_name_or_path", None) or type(backbone).__name__,
        len(report["copied"]),
        ", ".join(f"{how} ({count})" for how, count in derived.items()),
        ", ".join(fresh),
    )
    return model


# --- arguments -----------------------------------------------------------------------------------------------


@dataclass
class RunArguments:
    """The settings of one training run (`run_mner.py`'s command line; its `--help` documents each field).

    Validated on creation: an inconsistent value raises a `ValueError` that names its command-line option.
    `prompt_vocabulary` (a spec: names, a `+`-combination or a file) is resolved to its list of words.
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
    checkpointing_steps: str | None = None
    resume_from_checkpoint: str | None = None
    with_tracking: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None

    def __post_init__(self):
        sources = [name for name in ("dataset", "train_file", "hf_dataset") if getattr(self, name)]
        if not self.demo and not sources:
            raise ValueError(
                "give --dataset, --train_file (with --validation_file/--test_file), --hf_dataset or --demo"
            )
        if len(sources) > 1:
            raise ValueError(f"{' and '.join('--' + name for name in sources)} are exclusive")
        if self.dataset is not None and self.dataset not in TWITTER_TEXT_SOURCES:
            raise ValueError(f"--dataset must be one of {sorted(TWITTER_TEXT_SOURCES)}, got {self.dataset!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs", "num_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "head_learning_rate"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.checkpointing_steps not in (None, "epoch") and not str(self.checkpointing_steps).isdigit():
            raise ValueError(f"--checkpointing_steps must be an integer or 'epoch', got {self.checkpointing_steps!r}")
        if self.prompt_init not in ("random", "vocabulary"):
            raise ValueError(f"--prompt_init must be 'random' or 'vocabulary', got {self.prompt_init!r}")
        if not isinstance(self.prompt_vocabulary, list):
            default = self.prompts if self.prompts != "continuous" else "task_labels+kb+expert"
            self.prompt_vocabulary = load_vocabulary(self.prompt_vocabulary or default)  # names a bad name/file:line
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")


# --- image embeddings: computed once with CLIP, cached on disk ----------------------------------------------


def embedding_fingerprint(dataset: datasets.Dataset, processor) -> str:
    """A hash of everything the image embeddings depend on: CLIP weights, preprocessing and the image files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(processor.clip_vision.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([processor.image_size, processor.image_mean, processor.image_std,
                              processor.image_interpolation, processor.image_resize_mode]).encode())  # fmt: skip
    for image in dataset["image"] if "image" in dataset.column_names else ():  # images stored in the dataset
        digest.update(image["bytes"] if image and image.get("bytes") else str(image).encode())
    for path in dataset["image_path"]:
        stat = os.stat(path) if path and os.path.isfile(path) else None
        digest.update(f"{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}".encode())
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
    Encode every split's images once with CLIP and cache them on disk, keyed by [`embedding_fingerprint`].

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
        fingerprint = embedding_fingerprint(dataset, processor)
        out[split] = dataset.map(
            image_embedding_function(processor, counter),
            batched=True,
            batch_size=batch_size,
            cache_file_name=str(cache_dir / f"image-embeds-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            load_from_cache_file=True,
            desc=f"CLIP image embeddings ({split})",
        )
    return out, counter


def image_report(data: datasets.DatasetDict) -> dict:
    """Per split: examples, how many took the text-only path and the first few reasons."""
    report = {}
    for split, dataset in data.items():
        errors = [e for e in dataset["image_error"] if e is not None]
        report[split] = {"examples": len(dataset), "text_only": len(errors), "first_errors": errors[:3]}
    return report


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

# Devices with torch's fused AdamW: one kernel over all parameters instead of a loop of element-wise ops.
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")


def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_learning_rate: float | None = None,
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, LayerNorm weights and the prompt embeddings; `NEW_PARAMETERS` learn at
    `head_learning_rate` (default: `learning_rate`); torch's fused implementation on the devices that have it
    (`device_type`: where the parameters will be trained)."""
    no_decay = ("bias", "LayerNorm.weight", "prompt_embeds")
    groups = []
    for is_head, lr in ((False, learning_rate), (True, head_learning_rate or learning_rate)):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(NEW_PARAMETERS) == is_head]
        groups += [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay, "lr": lr},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0, "lr": lr},
        ]
    return torch.optim.AdamW(groups, lr=learning_rate, fused=device_type in FUSED_ADAMW_DEVICES)


# --- evaluation ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, dataloader, accelerator: Accelerator, processor, gold_tags: list[list[str]]) -> dict:
    """Entity-level micro P/R/F1 (and per type) of the model's decoded spans against the gold BIO tags
    (`gold_tags`: one list per example, in the dataloader's order)."""
    model.eval()
    predictions = []
    for batch in dataloader:
        batch.pop("labels", None)
        outputs = model(**batch)
        num_words = (batch["word_start_index"] >= 0).sum(dim=1)
        spans = processor.decode_word_spans(outputs.logits, num_words)
        predictions.extend(accelerator.gather_for_metrics(spans, use_gather_object=True))
    gold = [bio_to_spans(tags) for tags in gold_tags]
    predicted = [[span[:3] for span in example] for example in predictions]
    return entity_scores(gold, predicted)


# --- checkpoints ---------------------------------------------------------------------------------------------

TRAINING_STATE_DIR = "training"  # checkpoints, best-dev model and logs; never pushed to the Hub


def new_progress() -> dict:
    """The progress record of a run that starts from scratch."""
    return {"step": 0, "step_losses": [], "best_f1": -1.0, "best_epoch": None, "history": []}


def checkpoint_step(checkpoint: str) -> int:
    """`.../step_120` -> 120 (the optimizer step the checkpoint was taken after)."""
    return int(Path(checkpoint).name.split("_")[-1])


def latest_checkpoint(state_dir: Path) -> str | None:
    """The complete checkpoint of `state_dir` with the highest step, or None."""
    candidates = [p for p in state_dir.glob("checkpoints/step_*") if not p.name.endswith(".partial")]
    candidates.sort(key=lambda p: checkpoint_step(str(p)))
    return str(candidates[-1]) if candidates else None


def save_checkpoint(accelerator: Accelerator, state_dir: Path, step: int, progress: dict) -> None:
    """Accelerate state (model, optimizer, scheduler, RNGs, sampler) plus the best-dev bookkeeping.

    Written to a temporary folder and renamed, so a run killed while saving never leaves a partial checkpoint.
    """
    folder = state_dir / "checkpoints" / f"step_{step}"
    partial = folder.with_name(folder.name + ".partial")
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "progress.json").write_text(json.dumps(progress, indent=2))
        partial.rename(folder)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike) -> dict:
    """Restore the Accelerate state of a [`save_checkpoint`] folder; returns its progress record."""
    if not (Path(checkpoint) / "progress.json").is_file():
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: not a run_mner checkpoint (no progress.json)")
    accelerator.load_state(str(checkpoint))
    return json.loads((Path(checkpoint) / "progress.json").read_text())


# --- the model folder ----------------------------------------------------------------------------------------


def save_model_folder(accelerator: Accelerator, model, processor, folder: Path) -> None:
    """Model, processor, `custom_pipelines` and their remote code in one folder, written by the main process.

    transformers' `Pipeline.save_pretrained` is what writes `custom_pipelines` into `config.json` and copies the
    pipeline's code; the pipeline is built on the model's own device.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        MultimodalNERPipeline(model=model, processor=processor, device=model.device).save_pretrained(folder)
    accelerator.wait_for_everyone()


def write_results(output_dir: str | os.PathLike, summary: dict) -> None:
    """`all_results.json`, written atomically (a temporary file renamed)."""
    target = Path(output_dir) / "all_results.json"
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(summary, indent=2))
    os.replace(partial, target)


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None) -> None:
    """Upload a run's output folder, without its training state and data, to the Hub repository `repo_id`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        ignore_patterns=[f"{TRAINING_STATE_DIR}/**", "data/**"],
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

## Training arguments

```json
{json.dumps(training_args, indent=2, default=str)}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
