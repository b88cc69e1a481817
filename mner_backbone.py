"""A new PromptMNER model from a pretrained text encoder (package only): the one conversion path for every
BERT-family backbone (RoBERTa, XLM-R, BERTweet, CamemBERT, BERT, MiniLM).

- [`model_from_backbone`]: embeddings and layers copied; the three extra MAS queries (`t2v_query`, `v2t_query`,
  `v2v_query`) started as copies of the pretrained `query`; BERT-style position tables shifted to RoBERTa-style ids;
  a report of what was copied, derived and initialised fresh.
- [`fit_clue_path_to_images`]: what a new model's clue path takes from its training images (the statistics of the
  optional standardisation or whitening, k-means prompts).
"""

from __future__ import annotations

import torch
from transformers import AutoModel
from transformers.utils import logging

from configuration_promptmner import PromptMNERConfig
from modeling_promptmner import PromptMNERForSpanNER
from prompt_vocabularies import kmeans_prompt_embeds

logger = logging.get_logger(__name__)

# Backbones whose position ids start after the padding index (RoBERTa style) rather than at 0 (BERT style).
ROBERTA_STYLE_POSITIONS = ("roberta", "xlm-roberta", "camembert", "bertweet")
BERT_STYLE_POSITIONS = ("bert",)


def processor_config_kwargs(processor) -> dict:
    """The [`PromptMNERConfig`] fields that a [`PromptMNERProcessor`] decides."""
    fields = {
        "clip_embed_dim": processor.clip_embed_dim,  # None for a text-only processor (no CLIP)
        "clip_logit_scale": processor.image_scorer.clip_logit_scale,
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
