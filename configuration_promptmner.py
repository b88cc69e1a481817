"""PromptMNER configuration.

PromptMNER (Wang et al., DASFAA 2022) reads a tweet together with its image: a frozen CLIP scores a
vocabulary of prompts ("an image of a player", ...) against the image, the weighted prompt embeddings
become extra "visual clue" tokens after the text, a RoBERTa encoder with modality-aware self-attention
reads both, and a span classifier labels every word span.

The configuration is a `RobertaConfig` (so any BERT-family checkpoint's fields carry over unchanged)
with the fields the multimodal parts need.
"""

import math
import os

from transformers import AutoConfig, RobertaConfig

PROMPT_KINDS = ("continuous", "task_labels", "kb", "expert", "custom")
DEFAULT_LABELS = ("O", "PER", "LOC", "ORG", "MISC")


class PromptMNERConfig(RobertaConfig):
    r"""
    Configuration of [`PromptMNERModel`] and [`PromptMNERForSpanNER`]. Every field of `RobertaConfig` keeps its
    meaning (hidden size, layers, heads, dropout, ...). The fields below are the PromptMNER additions.

    Args:
        prompt_kind (`str`, defaults to `"continuous"`):
            Where the prompt embeddings come from: `"continuous"` learns them (the paper's best setting); the
            discrete kinds (`"task_labels"`, `"kb"`, `"expert"`, `"custom"`) freeze the CLIP text embeddings of a
            word vocabulary. Decides whether the prompt embeddings are a parameter or a frozen buffer.
        num_prompts (`int`, defaults to 100):
            Number of prompts K, hence of visual clue tokens appended after the text (paper: 30/50/100
            continuous prompts, 100 best).
        clip_embed_dim (`int`, defaults to 1024):
            Width of CLIP's joint image-text space (1024 for `RN50`); the image and prompt embeddings live there.
        clip_logit_scale (`float`, defaults to 100.0):
            CLIP's temperature `1/tau` for `p(P_i|I) = softmax(cos(s_i, v) / tau)`; pretrained CLIP learned 100.
        learnable_logit_scale (`bool`, defaults to `False`):
            Learn the temperature of `p(P_i|I)` (a parameter `prompt_log_logit_scale`, started at
            `clip_logit_scale`) instead of keeping CLIP's. The paper keeps CLIP's; continuous prompts start
            random and are learned through this softmax, and a fixed temperature decides how sharp it is before
            they have learned anything (see BENCHMARKS.md, "Visual clues").
        standardize_image_embeds (`bool`, defaults to `False`):
            Standardise each image embedding with the training images' per-dimension mean and standard deviation
            (buffers `image_embeds_mean` / `image_embeds_std`, set by `set_image_statistics`) before the cosine to
            the prompts. The paper scores CLIP's embeddings as they are; but a CLIP image tower fills a narrow cone
            (random towers extremely so: cosines of 0.98 to 1.000 between any two images), where cosines to any
            prompt barely differ between images and `p(P_i|I)` hardly depends on the image.
        whiten_image_embeds (`bool`, defaults to `False`):
            Whiten each image embedding with the training images' mean and covariance (ZCA: buffers
            `image_embeds_mean` / `image_embeds_whitening`, set by `set_image_statistics`; eigenvalues below 1e-3
            of the largest are raised to it) before the cosine to the prompts. Goes further than
            `standardize_image_embeds` (use one or the other): what tells images apart can sit in directions of
            small variance, which a linear probe reads but which barely move a cosine.
        clue_scale (`float`, defaults to 1.0):
            Multiplies the projected clue: `clue_i = clue_scale * p(P_i|I) * W s_i + b`. The paper's is 1. With
            K prompts the probabilities average 1/K, so a clue is K times smaller than a word embedding of the same
            norm; `clue_scale=K` gives the average clue that size.
        max_span_length (`int`, defaults to 8):
            Longest span, in words, that the span classifier scores; Twitter-2015/2017's longest entities have
            8-9 words.
        span_hidden_size (`int`, defaults to 1024):
            Width of the hidden layer of the span MLP over `[h_start ; h_end]`.
        span_dropout (`float`, defaults to 0.5):
            Dropout on the span representation (the paper trains with dropout 0.5).
        use_mas (`bool`, defaults to `True`):
            Modality-aware self-attention: four query projections, one per (query modality, key modality) pair.
            `False` is the paper's "w/o MAS" ablation: one query projection for every pair.
        sep_token_id (`int`, defaults to 2):
            Token that closes the visual clue segment (`[CLS] text [SEP] clues [SEP]`); the backbone tokenizer's
            separator (`</s>` = 2 for RoBERTa, `[SEP]` = 102 for BERT).
        type_vocab_size (`int`, defaults to 2):
            Token types: 0 for text tokens, 1 for visual clue tokens.
        id2label / label2id:
            Span labels; label 0 must be `"O"`, the not-an-entity class.

    Example:

    ```python
    >>> from configuration_promptmner import PromptMNERConfig
    >>> config = PromptMNERConfig(num_prompts=50, labels=["O", "PER", "LOC", "ORG", "OTHER"])
    >>> config.num_labels
    5
    ```
    """

    model_type = "promptmner"
    # Left out of the predictions `transformers.Trainer` gathers for `compute_metrics`: the span logits are the
    # prediction (`prompt_probs` is absent from batches without an image, so batches would not line up).
    keys_to_ignore_at_inference = ["span_mask", "prompt_probs", "hidden_states", "attentions"]

    def __init__(
        self,
        prompt_kind: str = "continuous",
        num_prompts: int = 100,
        clip_embed_dim: int = 1024,
        clip_logit_scale: float = 100.0,
        learnable_logit_scale: bool = False,
        standardize_image_embeds: bool = False,
        whiten_image_embeds: bool = False,
        clue_scale: float = 1.0,
        max_span_length: int = 8,
        span_hidden_size: int = 1024,
        span_dropout: float = 0.5,
        use_mas: bool = True,
        sep_token_id: int = 2,
        type_vocab_size: int = 2,
        labels: list[str] | None = None,
        **kwargs,
    ):
        if labels is not None:
            kwargs["id2label"] = dict(enumerate(labels))
            kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
        elif "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"] = dict(enumerate(DEFAULT_LABELS))
            kwargs["label2id"] = {label: i for i, label in enumerate(DEFAULT_LABELS)}
        super().__init__(type_vocab_size=type_vocab_size, **kwargs)
        self.prompt_kind = prompt_kind
        self.num_prompts = num_prompts
        self.clip_embed_dim = clip_embed_dim
        self.clip_logit_scale = clip_logit_scale
        self.learnable_logit_scale = learnable_logit_scale
        self.standardize_image_embeds = standardize_image_embeds
        self.whiten_image_embeds = whiten_image_embeds
        self.clue_scale = clue_scale
        self.max_span_length = max_span_length
        self.span_hidden_size = span_hidden_size
        self.span_dropout = span_dropout
        self.use_mas = use_mas
        self.sep_token_id = sep_token_id
        self.validate_promptmner()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "PromptMNERConfig":
        """`PretrainedConfig.from_pretrained`, with an invalid field reported together with the file that holds it."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as err:
            raise ValueError(f"{os.path.join(str(pretrained_model_name_or_path), 'config.json')}: {err}") from err

    def validate_architecture(self):
        """Raise `ValueError` naming the first encoder field that cannot build a model (e.g. `num_hidden_layers: -1`)."""
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings"):  # fmt: skip
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {value!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        for field in ("pad_token_id", "sep_token_id"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or not 0 <= value < self.vocab_size):
                raise ValueError(f"{field} must be a token id in [0, vocab_size={self.vocab_size}), got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )

    def validate_promptmner(self):
        """Raise `ValueError` naming the first invalid field: the encoder's, then the PromptMNER additions."""
        self.validate_architecture()
        if self.prompt_kind not in PROMPT_KINDS:
            raise ValueError(f"prompt_kind must be one of {PROMPT_KINDS}, got {self.prompt_kind!r}")
        for field in ("num_prompts", "clip_embed_dim", "max_span_length", "span_hidden_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        for field in ("clip_logit_scale", "clue_scale"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{field} must be a positive number, got {value!r}")
        if not 0.0 <= self.span_dropout < 1.0:
            raise ValueError(f"span_dropout must be in [0, 1), got {self.span_dropout!r}")
        for field in ("learnable_logit_scale", "standardize_image_embeds", "whiten_image_embeds"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be a bool, got {getattr(self, field)!r}")
        if self.standardize_image_embeds and self.whiten_image_embeds:
            raise ValueError("standardize_image_embeds and whiten_image_embeds are exclusive (whitening standardises)")
        if not isinstance(self.use_mas, bool):
            raise ValueError(f"use_mas must be a bool, got {self.use_mas!r}")
        if self.type_vocab_size < 2:
            raise ValueError(f"type_vocab_size must be at least 2 (text and visual tokens), got {self.type_vocab_size}")
        if self.id2label.get(0) != "O":
            raise ValueError(f"label 0 must be 'O' (not an entity), got id2label={self.id2label}")

    @property
    def entity_types(self) -> list[str]:
        """The entity labels, without `"O"`, in label-id order."""
        return [self.id2label[i] for i in range(1, self.num_labels)]


PromptMNERConfig.register_for_auto_class()
# Known to AutoConfig in this process, so that loading a saved folder's tokenizer (which reads its config.json)
# does not stop to ask whether to trust remote code the installed package already provides.
AutoConfig.register(PromptMNERConfig.model_type, PromptMNERConfig, exist_ok=True)
