"""PyTorch PromptMNER model.

Read top-down: embeddings -> visual clues -> modality-aware self-attention -> layer -> encoder ->
pretrained base -> model -> span head -> span model.

Sequence layout inside the encoder. The text block comes first, padded to the batch's longest text; the
visual block follows, padded to the same length for every example:

    [CLS] w_1 .. w_N [SEP] <pad> ..   |   clue_1 .. clue_K [SEP]
    <------- text block: T -------->      <-- visual block: V = K + 1 -->

Position ids are computed per example (the visual block continues right after the example's own text),
and padding is masked out of every softmax, so where the padding sits in memory changes nothing: an
example's result does not depend on what it is batched with. An example without an image masks its whole
visual block, which is exactly the text-only model.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

try:
    from .configuration_promptmner import PromptMNERConfig
    from .prompt_vocabularies import prompt_softmax
    from .span_utils import valid_span_mask
except ImportError:
    from configuration_promptmner import PromptMNERConfig
    from prompt_vocabularies import prompt_softmax
    from span_utils import valid_span_mask


logger = logging.get_logger(__name__)

TEXT, VISUAL = 0, 1
WHITENING_EPSILON = 1e-3  # `whiten_image_embeds`: eigenvalues are floored at this fraction of the largest


@dataclass
class PromptMNERModelOutput(ModelOutput):
    """
    Output of [`PromptMNERModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length + visual_length, hidden_size)`):
            Final hidden states of the text block followed by the visual block (`visual_length` is 0 when no
            example of the batch has an image, `num_prompts + 1` otherwise); the text block alone,
            `(batch_size, text_length, hidden_size)`, with `text_states_only`.
        attention_mask (`torch.BoolTensor` of shape `(batch_size, text_length + visual_length)`):
            Which positions are real tokens; examples without an image have their visual block masked.
        prompt_probs (`torch.FloatTensor` of shape `(batch_size, num_prompts)`, *optional*):
            `p(P_i | I)`, the relevance of each prompt to the example's image; zero rows for examples without
            an image. `None` when no example has an image.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Embedding output and each layer's output, each `(batch_size, sequence_length, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Each layer's attention weights `(batch_size, num_heads, sequence_length, sequence_length)` (eager only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    attention_mask: torch.BoolTensor | None = None
    prompt_probs: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PromptMNERSpanOutput(ModelOutput):
    """
    Output of [`PromptMNERForSpanNER`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Cross-entropy over every valid span (labels != -100), when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_words, max_span_length, num_labels)`):
            `logits[b, i, d]` scores the span of words `i .. i + d` of example `b`; label 0 is "O".
        span_mask (`torch.BoolTensor` of shape `(batch_size, num_words, max_span_length)`):
            Which cells are real spans (`i + d` is a word of the example).
        prompt_probs (`torch.FloatTensor` of shape `(batch_size, num_prompts)`, *optional*):
            See [`PromptMNERModelOutput`].
        hidden_states, attentions: see [`PromptMNERModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    span_mask: torch.BoolTensor | None = None
    prompt_probs: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def check_same_shape(name: str, tensor: torch.Tensor | None, reference_name: str, reference: torch.Tensor) -> None:
    """Raise a `ValueError` naming both tensors and shapes unless `tensor` (when given) has `reference`'s shape:
    inputs of one batch must agree, or broadcasting would silently pair one example's mask with another's tokens."""
    if tensor is not None and tuple(tensor.shape) != tuple(reference.shape):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but {reference_name} has shape {tuple(reference.shape)}: "
            "they must agree in batch size and length"
        )


def check_batch_inputs(input_ids, attention_mask, image_embeds, has_image, clip_embed_dim: int) -> None:
    """The encoder's inputs describe one batch: `input_ids` `(B, T)`, `attention_mask` `(B, T)`, `image_embeds`
    `(B, D)`, `has_image` `(B,)`; a `ValueError` names the tensor and both shapes otherwise."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    check_same_shape("attention_mask", attention_mask, "input_ids", input_ids)
    batch = input_ids.shape[0]
    if image_embeds is not None and (image_embeds.ndim != 2 or tuple(image_embeds.shape) != (batch, clip_embed_dim)):
        raise ValueError(
            f"image_embeds has shape {tuple(image_embeds.shape)} but input_ids has shape {tuple(input_ids.shape)}: "
            f"expected ({batch}, {clip_embed_dim}), one CLIP embedding per example"
        )
    if has_image is not None and tuple(has_image.shape) != (batch,):
        raise ValueError(
            f"has_image has shape {tuple(has_image.shape)} but input_ids has shape {tuple(input_ids.shape)}: "
            f"expected ({batch},), one flag per example"
        )


def text_position_ids(attention_mask: torch.Tensor, padding_idx: int) -> torch.LongTensor:
    """RoBERTa position ids: real tokens count from `padding_idx + 1`, padding sits at `padding_idx`."""
    mask = attention_mask.long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx  # (B, T)


def additive_mask(mask: torch.BoolTensor, dtype: torch.dtype) -> torch.Tensor:
    """`(B, L)` bool (True: attend) -> `(B, 1, 1, L)` to add to attention scores: 0, or the dtype's minimum."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)[
        :, None, None, :
    ]


def uniform_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout` with the same distribution; on CPU the keep mask comes from a uniform draw (`rand >= p`), because
    torch's CPU Bernoulli sampling is slower (see BENCHMARKS.md). Another random stream than `F.dropout`'s; elsewhere
    `F.dropout` itself."""
    if not training or p == 0.0 or p >= 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    keep = torch.rand(x.shape, device=x.device).ge_(p)  # float32 draw whatever x's dtype: 1.0 where kept, else 0.0
    return x * keep.div_(1.0 - p).to(x.dtype)


class PromptMNERDropout(nn.Dropout):
    """`nn.Dropout` through `uniform_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_dropout(x, self.p, self.training)


class PromptMNEREmbeddings(nn.Module):
    """RoBERTa embeddings with a second token type (visual clues) and positions that continue after the text."""

    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = PromptMNERDropout(config.hidden_dropout_prob)
        self.padding_idx = config.pad_token_id
        self.sep_token_id = config.sep_token_id  # closes the visual clue segment

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        clue_embeds: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """Text `(B, T)` and, if given, projected clues `(B, K, H)` followed by the closing [SEP] -> `(B, T + V, H)`."""
        positions = text_position_ids(attention_mask, self.padding_idx)  # (B, T)
        types = torch.full_like(input_ids, TEXT)
        if clue_embeds is None:
            embeds = self.word_embeddings(input_ids)  # (B, T, H)
        else:
            batch_size, text_length = input_ids.shape
            sep_ids = torch.full((batch_size, 1), self.sep_token_id, dtype=input_ids.dtype, device=input_ids.device)
            words = self.word_embeddings(torch.cat([input_ids, sep_ids], dim=1))  # one lookup: (B, T + 1, H)
            visual_inputs = torch.cat([clue_embeds, words[:, text_length:].to(clue_embeds.dtype)], dim=1)  # (B, V, H)
            text_lengths = attention_mask.sum(dim=1, keepdim=True)  # (B, 1)
            offsets = torch.arange(visual_inputs.shape[1], device=input_ids.device)  # (V,)
            visual_positions = self.padding_idx + 1 + text_lengths + offsets  # (B, V)
            positions = torch.cat([positions, visual_positions], dim=1)  # (B, T + V)
            types = torch.cat([types, torch.full_like(visual_positions, VISUAL)], dim=1)  # (B, T + V)
            embeds = torch.cat([words[:, :text_length], visual_inputs], dim=1)  # (B, T + V, H)
        if positions.max() >= self.position_embeddings.num_embeddings:
            raise ValueError(
                f"A sequence needs position {int(positions.max())} but the model has "
                f"max_position_embeddings={self.position_embeddings.num_embeddings}: shorten the text "
                f"(truncation) or use fewer prompts."
            )
        embeds = embeds + self.position_embeddings(positions) + self.token_type_embeddings(types)
        return self.dropout(self.LayerNorm(embeds))


class PromptMNERVisualClues(nn.Module):
    """
    Prompt-based visual clues: `p(P_i|I) = softmax_i(scale * cos(s_i, v))`, clue `w_i = p(P_i|I) * s_i`, projected
    to the encoder width. The prompt embeddings `s_i` are a frozen buffer for a discrete vocabulary (CLIP text
    embeddings computed once by the processor) and a parameter for continuous prompts, so both share this code.
    """

    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        prompt_embeds = torch.empty(config.num_prompts, config.clip_embed_dim)
        if config.prompt_kind == "continuous":
            self.prompt_embeds = nn.Parameter(prompt_embeds)
        else:
            self.register_buffer("prompt_embeds", prompt_embeds, persistent=True)
        self.logit_scale = config.clip_logit_scale
        if config.learnable_logit_scale:  # log-parameterised, as CLIP learns its own; starts at CLIP's temperature
            self.prompt_log_logit_scale = nn.Parameter(torch.tensor(math.log(config.clip_logit_scale)))
        if config.standardize_image_embeds:  # the training images' statistics, set by `set_image_statistics`
            self.register_buffer("image_embeds_mean", torch.zeros(config.clip_embed_dim), persistent=True)
            self.register_buffer("image_embeds_std", torch.ones(config.clip_embed_dim), persistent=True)
        if config.whiten_image_embeds:  # the training images' mean and ZCA matrix, set by `set_image_statistics`
            self.register_buffer("image_embeds_mean", torch.zeros(config.clip_embed_dim), persistent=True)
            self.register_buffer("image_embeds_whitening", torch.eye(config.clip_embed_dim), persistent=True)
        self.projection = nn.Linear(config.clip_embed_dim, config.hidden_size)
        self.clue_scale = float(config.clue_scale)

    def current_logit_scale(self) -> torch.Tensor | float:
        """The temperature `1/tau` in use: CLIP's fixed one, or the learned `exp(prompt_log_logit_scale)`."""
        if hasattr(self, "prompt_log_logit_scale"):
            return self.prompt_log_logit_scale.exp()
        return self.logit_scale

    @torch.no_grad()
    def set_image_statistics(self, image_embeds: torch.Tensor) -> None:
        """Store the statistics of `(N, D)` image embeddings (the training images'): the per-dimension mean and
        standard deviation for `standardize_image_embeds`, the mean and the ZCA whitening matrix
        `U diag((lambda + 1e-3 lambda_max)^-1/2) Uᵀ` of their covariance for `whiten_image_embeds`."""
        if not hasattr(self, "image_embeds_mean"):
            raise ValueError(
                "set_image_statistics needs a model configured with standardize_image_embeds=True or "
                "whiten_image_embeds=True"
            )
        image_embeds = torch.as_tensor(image_embeds, dtype=torch.float32)
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.image_embeds_mean.shape[0] or len(image_embeds) < 2:
            expected = f"(N >= 2, {self.image_embeds_mean.shape[0]})"
            raise ValueError(f"image_embeds must have shape {expected}, got {tuple(image_embeds.shape)}")
        image_embeds = image_embeds.to(self.image_embeds_mean.device)
        self.image_embeds_mean.copy_(image_embeds.mean(dim=0))
        if hasattr(self, "image_embeds_std"):
            self.image_embeds_std.copy_(image_embeds.std(dim=0).clamp_min(1e-6))
        if hasattr(self, "image_embeds_whitening"):
            covariance = torch.cov(image_embeds.double().T)  # (D, D)
            eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
            floor = WHITENING_EPSILON * eigenvalues.max().clamp_min(1e-12)
            scales = (eigenvalues.clamp_min(0) + floor).rsqrt()  # (D,)
            self.image_embeds_whitening.copy_((eigenvectors * scales) @ eigenvectors.T)

    def prompt_probabilities(self, image_embeds: torch.FloatTensor) -> torch.FloatTensor:
        """`p(P_i | I)` for each image: `(B, D)` image embeddings -> `(B, K)` probabilities."""
        return prompt_softmax(self.standardized(image_embeds), self.prompt_embeds, self.current_logit_scale())  # (B, K)

    def standardized(self, image_embeds: torch.FloatTensor) -> torch.FloatTensor:
        """`(B, D)` image embeddings as the prompts see them: standardised with `standardize_image_embeds`,
        whitened with `whiten_image_embeds`, else unchanged."""
        if hasattr(self, "image_embeds_whitening"):
            centered = image_embeds.to(self.image_embeds_mean.dtype) - self.image_embeds_mean
            return centered @ self.image_embeds_whitening  # (B, D); the ZCA matrix is symmetric
        if not hasattr(self, "image_embeds_mean"):
            return image_embeds
        return (image_embeds - self.image_embeds_mean) / self.image_embeds_std  # (B, D)

    def forward(self, image_embeds: torch.FloatTensor) -> tuple[torch.FloatTensor, torch.FloatTensor]:
        probs = self.prompt_probabilities(image_embeds)  # (B, K)
        # projection(p_i * s_i) = p_i * (W s_i) + b: the K prompts are projected once, not once per example.
        projected = F.linear(self.prompt_embeds, self.projection.weight)  # (K, H)
        if self.clue_scale != 1.0:
            projected = self.clue_scale * projected
        return probs.unsqueeze(-1) * projected + self.projection.bias, probs  # (B, K, H), (B, K)


def split_key_attention(query_to_text, query_to_visual, key, value, attention_mask, text_length, dropout, scaling):
    """MAS scores as two matmuls, one per key modality: `[Q_to_text K_textᵀ | Q_to_visual K_visualᵀ]`, with the
    scaling and the mask applied inside each matmul (`baddbmm`), then one softmax over all keys. Used on CPU,
    where torch's SDPA has no fused kernel for the stacked queries' unequal head sizes and its fallback scales and
    masks in passes of their own. Queries `(B, heads, Q, d)` (Q = L, or T for the text block's queries alone), keys
    and values `(B, heads, L, d)`, attention_mask additive `(B, 1, 1, L)` -> context `(B, Q, heads, d)`."""
    batch_size, heads, length, head_dim = value.shape
    flat = lambda x: x.reshape(batch_size * heads, -1, head_dim)  # noqa: E731  (B, h, N, d) -> (B*h, N, d)
    mask = attention_mask.expand(batch_size, heads, 1, length).reshape(batch_size * heads, 1, length)  # (B*h, 1, L)
    t = text_length
    to_text = torch.baddbmm(mask[..., :t], flat(query_to_text), flat(key[:, :, :t]).mT, alpha=scaling)  # (B*h, Q, T)
    to_visual = torch.baddbmm(mask[..., t:], flat(query_to_visual), flat(key[:, :, t:]).mT, alpha=scaling)  # (.., V)
    probs = torch.cat([to_text, to_visual], dim=-1).softmax(dim=-1)  # (B*h, Q, L)
    probs = uniform_dropout(probs, dropout, training=dropout > 0)
    context = torch.bmm(probs, flat(value))  # (B*h, Q, d)
    return context.view(batch_size, heads, -1, head_dim).transpose(1, 2)  # (B, Q, heads, d)


def stack_queries_and_keys(query_to_text, query_to_visual, key, text_length):
    """The stacking trick that turns MAS into one standard attention call: every query becomes
    `[q_to_text ; q_to_visual]`, a text key `[k ; 0]` and a visual key `[0 ; k]`, so `query . key` is the score of the
    (query modality, key modality) pair. Queries `(B, heads, Q, d)`, key `(B, heads, L, d)` -> query
    `(B, heads, Q, 2d)`, key `(B, heads, L, 2d)`."""
    head_dim = key.shape[-1]
    query = torch.cat([query_to_text, query_to_visual], dim=-1)  # (B, heads, Q, 2d)
    text_key = F.pad(key[:, :, :text_length], (0, head_dim))  # (B, heads, T, 2d): [k ; 0]
    visual_key = F.pad(key[:, :, text_length:], (head_dim, 0))  # (B, heads, V, 2d): [0 ; k]
    return query, torch.cat([text_key, visual_key], dim=2)  # (B, heads, L, 2d)


class PromptMNERSelfAttention(nn.Module):
    """
    Modality-aware self-attention (MAS), after LUKE's entity-aware attention. Keys and values are shared; the
    query projection depends on the (query modality, key modality) pair: `query` (text->text, the pretrained
    one), `t2v_query`, `v2t_query`, `v2v_query`. One softmax runs over all keys. With `use_mas=False` (ablation)
    `query` serves every pair.

    Each token needs two queries, one for text keys and one for visual keys; a single matmul per modality gives
    both with the key and value (`fused_projection`). The scores then come from one attention call on stacked
    queries and keys (`stack_queries_and_keys`; the path for CUDA and other attention implementations) or, on
    CPU, from two matmuls, one per key modality (`split_key_attention`). The eager path computes all four score
    matrices and assembles them block by block; it is the reference the tests hold the other paths to.
    """

    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_heads * self.head_dim
        # What pretrained weights expect; the paper's eq. 3 prints sqrt(N + |V*|), which we read as a typo.
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        if config.use_mas:
            self.t2v_query = nn.Linear(config.hidden_size, config.hidden_size)
            self.v2t_query = nn.Linear(config.hidden_size, config.hidden_size)
            self.v2v_query = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = PromptMNERDropout(config.attention_probs_dropout_prob)
        self.is_causal = False  # read by transformers' attention functions

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = x.shape
        return x.view(batch_size, length, -1, self.head_dim).transpose(1, 2)  # (B, heads, L, d)

    def pair_queries(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """The projections for (text->text, text->visual, visual->text, visual->visual)."""
        if self.config.use_mas:
            return self.query, self.t2v_query, self.v2t_query, self.v2v_query
        return self.query, self.query, self.query, self.query

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        text_length: int,
        output_attentions: bool = False,
        text_queries_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        hidden_states `(B, L, H)` with the text block in `[:text_length]`; attention_mask `(B, 1, 1, L)`, additive
        (0 for real tokens, the dtype's minimum for padding; built once per forward by the model). Returns the
        context `(B, Q, H)` and, in eager mode, the attention weights. Q is L, or the text block's T with
        `text_queries_only` (a last layer whose visual outputs nothing reads: its visual tokens stay keys and values
        and ask no query).
        """
        batch_size, length, hidden_size = hidden_states.shape
        query_length = text_length if text_queries_only else length
        implementation = self.config._attn_implementation
        dropout = self.dropout.p if self.training else 0.0
        if output_attentions or implementation == "eager":
            context, weights = self.eager_attention(hidden_states, attention_mask, text_length)
            context = context.transpose(1, 2)[:, :query_length]  # (B, Q, heads, d)
        elif not self.config.use_mas or length == text_length:
            query, key, value = self.text_projections(hidden_states, query_length)  # (B, Q, H), (B, L, H) x 2
            context, weights = self.attention_call(self.split_heads(query), self.split_heads(key),
                                                   self.split_heads(value), attention_mask, dropout)  # fmt: skip
        else:
            to_text, to_visual, key, value = self.modality_projections(hidden_states, text_length, text_queries_only)
            if self.scores_per_key_modality(hidden_states.device):
                mask = attention_mask.to(value.dtype)  # a no-op unless autocast lowered the precision
                context = split_key_attention(to_text, to_visual, key, value, mask, text_length, dropout, self.scale)
                weights = None
            else:
                query, key = stack_queries_and_keys(to_text, to_visual, key, text_length)  # (B, heads, Q|L, 2d)
                context, weights = self.attention_call(query, key, value, attention_mask, dropout)
        return context.reshape(batch_size, query_length, hidden_size), weights

    def scores_per_key_modality(self, device: torch.device) -> bool:
        """`split_key_attention` (CPU `sdpa`) rather than one attention call on stacked queries and keys."""
        return self.config._attn_implementation == "sdpa" and device.type == "cpu"

    def attention_call(self, query, key, value, attention_mask, dropout):
        """The configured attention implementation (`ALL_ATTENTION_FUNCTIONS`) -> context `(B, Q, heads, d)`."""
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, None)
        mask = attention_mask.to(query.dtype)  # a no-op unless autocast lowered the query's precision
        return attention(self, query, key, value, mask, dropout=dropout, scaling=self.scale)

    def text_projections(self, hidden_states: torch.Tensor, query_length: int):
        """`query` of the first `query_length` tokens `(B, Q, H)`, `key` and `value` of all `(B, L, H)`, with one
        projection for every pair (a sequence without visual tokens, or the ablation without MAS): one matmul on the
        concatenated weights while autograd records (its backward is one matmul too), three plain ones otherwise,
        which spares concatenating the weights on every call (a third of the projections' time on a short tweet)."""
        if torch.is_grad_enabled():
            query, key, value = self.fused_projection(hidden_states, self.query).chunk(3, dim=-1)
            return query[:, :query_length], key, value
        return self.query(hidden_states[:, :query_length]), self.key(hidden_states), self.value(hidden_states)

    def fused_projection(self, hidden_states: torch.Tensor, *queries: nn.Linear) -> torch.Tensor:
        """`(B, N, H)` -> `(B, N, (len(queries) + 2) * H)`: the given query projections, the key and the value
        from one matmul on concatenated weights."""
        layers = (*queries, self.key, self.value)
        weight = torch.cat([layer.weight for layer in layers])  # ((n + 2) * H, H)
        hidden_states = hidden_states.contiguous()  # lets the 3-d matmul fold to one 2-d addmm
        return F.linear(hidden_states, weight, torch.cat([layer.bias for layer in layers]))

    def modality_projections(self, hidden_states: torch.Tensor, text_length: int, text_queries_only: bool = False):
        """Each token's query for text keys and its query for visual keys (text tokens: `query`, `t2v_query`;
        visual tokens: `v2t_query`, `v2v_query`), `(B, heads, Q, d)` each, Q = L or, with `text_queries_only`, the
        text block's T; the keys and the values `(B, heads, L, d)`. One matmul per modality on concatenated weights
        while autograd records; in inference, plain matmuls, which spares concatenating the weights on every call
        (see `text_projections`)."""
        text, visual = hidden_states.split([text_length, hidden_states.shape[1] - text_length], dim=1)
        if torch.is_grad_enabled():
            project = self.fused_projection
        else:
            project = lambda x, *queries: torch.cat([layer(x) for layer in (*queries, self.key, self.value)], -1)  # noqa: E731
        visual_queries = () if text_queries_only else (self.v2t_query, self.v2v_query)
        text_part = self.heads_first(project(text, self.query, self.t2v_query))  # (4, B, heads, T, d)
        visual_part = self.heads_first(project(visual, *visual_queries))  # (2 or 4, B, heads, V, d)
        if text_queries_only:
            key, value = torch.cat([text_part[2:], visual_part], dim=3).unbind(0)  # (B, heads, L, d) each
            return text_part[0], text_part[1], key, value
        return torch.cat([text_part, visual_part], dim=3).unbind(0)  # (4, B, heads, L, d) -> 4 x (B, heads, L, d)

    def heads_first(self, projections: torch.Tensor) -> torch.Tensor:
        """`(B, N, n * H)`, n projections side by side -> `(n, B, heads, N, d)`, a view; the `torch.cat` after it
        makes the one copy that leaves each projection contiguous per head, so the attention matmuls read them
        without another."""
        batch_size, length, width = projections.shape
        split = projections.view(batch_size, length, width // self.all_head_size, self.num_heads, self.head_dim)
        return split.permute(2, 0, 3, 1, 4)  # (n, B, heads, N, d)

    def eager_attention(self, hidden_states, attention_mask, text_length):
        key = self.split_heads(self.key(hidden_states))  # (B, heads, L, d)
        value = self.split_heads(self.value(hidden_states))  # (B, heads, L, d)
        tt, tv, vt, vv = self.pair_queries()
        scores = {
            pair: self.split_heads(projection(hidden_states)) @ key.transpose(-1, -2)  # (B, heads, L, L)
            for pair, projection in (("tt", tt), ("tv", tv), ("vt", vt), ("vv", vv))
        }
        t = text_length
        from_text = torch.cat([scores["tt"][:, :, :t, :t], scores["tv"][:, :, :t, t:]], dim=-1)  # (B, h, T, L)
        from_visual = torch.cat([scores["vt"][:, :, t:, :t], scores["vv"][:, :, t:, t:]], dim=-1)  # (B, h, V, L)
        scores = torch.cat([from_text, from_visual], dim=2) * self.scale + attention_mask  # (B, heads, L, L)
        weights = self.dropout(scores.softmax(dim=-1))  # (B, heads, L, L)
        return weights @ value, weights  # (B, heads, L, d)


class PromptMNERSelfOutput(nn.Module):
    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = PromptMNERDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class PromptMNERAttention(nn.Module):
    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.self = PromptMNERSelfAttention(config)
        self.output = PromptMNERSelfOutput(config)

    def forward(self, hidden_states, attention_mask, text_length, output_attentions=False, text_queries_only=False):
        context, weights = self.self(hidden_states, attention_mask, text_length, output_attentions, text_queries_only)
        return self.output(context, hidden_states[:, : context.shape[1]]), weights  # (B, Q, H)


class PromptMNERIntermediate(nn.Module):
    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class PromptMNEROutput(nn.Module):
    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = PromptMNERDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class PromptMNERLayer(GradientCheckpointingLayer):
    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.attention = PromptMNERAttention(config)
        self.intermediate = PromptMNERIntermediate(config)
        self.output = PromptMNEROutput(config)

    def forward(self, hidden_states, attention_mask, text_length, output_attentions=False, text_queries_only=False):
        attention_output, weights = self.attention(hidden_states, attention_mask, text_length, output_attentions,
                                                   text_queries_only)  # fmt: skip
        layer_output = self.output(self.intermediate(attention_output), attention_output)  # (B, Q, H)
        return layer_output, weights


class PromptMNEREncoder(nn.Module):
    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.layer = nn.ModuleList([PromptMNERLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask, text_length, output_attentions=False, output_hidden_states=False,
                text_states_only=False):  # fmt: skip
        """`text_states_only`: the last layer computes the text block alone (its visual tokens are keys and values
        only), so the last states are `(B, T, H)`."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        last = len(self.layer) - 1
        for index, layer in enumerate(self.layer):
            text_queries_only = text_states_only and index == last
            hidden_states, weights = layer(hidden_states, attention_mask, text_length, output_attentions,
                                           text_queries_only)  # fmt: skip
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


def weights_source(name_or_path: str, subfolder: str = "") -> str:
    """The weights file of a model folder (or Hub repo) as error messages name it."""
    location = os.path.join(name_or_path, subfolder) if subfolder else name_or_path
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.isfile(os.path.join(location, name)):
            return os.path.join(location, name)
    return f"{location}/model.safetensors"


def _listed(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_loading_info(info: dict, source: str, allow_mismatched: bool = False) -> None:
    """Raise a `ValueError` naming `source` and the tensors when the weights do not fit the model built from the
    configuration: tensors the model has and the file lacks (they would be left at random values), tensors of the
    file the model has no place for (a config with fewer layers or another head), or (unless `allow_mismatched`)
    tensors whose shape differs, each with both shapes."""
    problems = []
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    if missing:
        problems.append(f"{len(missing)} tensors of the model are not in the file: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors of the file have no place in the model: {_listed(unexpected)}")
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched and not allow_mismatched:
        shapes = [f"{name} is {tuple(saved)} in the file but {tuple(expected)} in the model"
                  for name, saved, expected in mismatched]  # fmt: skip
        problems.append(f"{len(mismatched)} tensors have another shape: {_listed(shapes, 3)}")
    if problems:
        raise ValueError(
            f"{source}: the weights do not match the model that config.json describes; " + "; ".join(problems)
            + ". The configuration and the weights were not saved together (or one of them was edited)"
        )


class PromptMNERPreTrainedModel(PreTrainedModel):
    config_class = PromptMNERConfig
    base_model_prefix = "promptmner"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["PromptMNERLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a local folder without `config.json`, or weights that cannot be read,
        give an `OSError` naming the folder and the file. Weights that do not fit the configuration (tensors missing
        from the file or not in the model, or of another shape) are a `ValueError` naming the file and the tensors,
        where transformers would initialise the missing ones at random and only log it; `ignore_mismatched_sizes=True`
        still opts into re-initialising tensors of another shape."""
        folder = str(pretrained_model_name_or_path or "")
        if os.path.isdir(folder) and kwargs.get("config") is None:
            config_file = os.path.join(folder, kwargs.get("subfolder") or "", "config.json")
            if not os.path.isfile(config_file):
                raise OSError(f"{config_file} not found: a PromptMNER model folder needs its config.json")
        return_info = kwargs.pop("output_loading_info", False)
        allow_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        try:  # mismatched shapes come back in the loading info (named below) instead of a generic error
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, ignore_mismatched_sizes=True,
                **kwargs,
            )  # fmt: skip
        except SafetensorError as err:
            raise OSError(f"{folder}: cannot read the model weights (model.safetensors): {err}") from err
        check_loading_info(info, weights_source(folder, kwargs.get("subfolder") or ""), allow_mismatched)
        return (model, info) if return_info else model

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear, Embedding (padding row zeroed) and LayerNorm, RoBERTa style
        if isinstance(module, PromptMNERVisualClues):
            # Random prompts of about unit norm, like the CLIP text embeddings that discrete prompts hold.
            init.normal_(module.prompt_embeds, std=module.prompt_embeds.shape[-1] ** -0.5)
            if hasattr(module, "prompt_log_logit_scale"):
                init.constant_(module.prompt_log_logit_scale, math.log(module.logit_scale))
            if hasattr(module, "image_embeds_mean"):
                init.zeros_(module.image_embeds_mean)
            if hasattr(module, "image_embeds_std"):
                init.ones_(module.image_embeds_std)
            if hasattr(module, "image_embeds_whitening"):
                init.eye_(module.image_embeds_whitening)


class PromptMNERModel(PromptMNERPreTrainedModel):
    """The PromptMNER encoder: text tokens and prompt-based visual clue tokens under modality-aware attention."""

    _keys_to_ignore_on_load_unexpected = [r"^span_head\."]  # the encoder alone, loaded from a span model's folder

    def __init__(self, config: PromptMNERConfig):
        super().__init__(config)
        self.embeddings = PromptMNEREmbeddings(config)
        self.visual_clues = PromptMNERVisualClues(config)
        self.encoder = PromptMNEREncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def visual_block(self, image_embeds, has_image):
        """Projected clues `(B, K, H)`, the mask of the visual block (clues + [SEP]) `(B, K + 1)`, `p(P_i|I)` `(B, K)`."""
        clues, probs = self.visual_clues(image_embeds)  # (B, K, H), (B, K)
        visual_mask = has_image[:, None].expand(-1, clues.shape[1] + 1)  # (B, K + 1)
        return clues, visual_mask, probs * has_image[:, None]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        has_image: torch.BoolTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        text_states_only: bool = False,
    ) -> PromptMNERModelOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
            Text token ids with the backbone's special tokens (`[CLS] ... [SEP]`).
        attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*):
            1 for real tokens, 0 for padding.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, clip_embed_dim)`, *optional*):
            CLIP image embeddings from the processor. `None`: text-only for the whole batch.
        has_image (`torch.BoolTensor` of shape `(batch_size,)`, *optional*):
            Which examples have an image; the others take the text-only path. Defaults to all when
            `image_embeds` is given.
        text_states_only (`bool`, *optional*, defaults to `False`):
            Compute the last layer at the text block only: its visual tokens serve as keys and values but ask no
            query, and `last_hidden_state` is `(batch_size, text_length, hidden_size)`. The text states are the same;
            a head that reads only them (the span head) saves the last layer's work on the clue tokens, which is
            most of it with the paper's 100 prompts. Ignored when every layer's hidden states or attentions are
            asked for (they hold every position). [`PromptMNERForSpanNER`] sets it in inference.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_batch_inputs(input_ids, attention_mask, image_embeds, has_image, self.config.clip_embed_dim)
        text_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        clue_embeds, prompt_probs, mask = None, None, text_mask
        if image_embeds is not None:
            if has_image is None:
                has_image = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if has_image.any():
                clue_embeds, visual_mask, prompt_probs = self.visual_block(image_embeds, has_image.bool())
                mask = torch.cat([text_mask, visual_mask], dim=1)  # (B, T + V)
        hidden_states = self.embeddings(input_ids, text_mask, clue_embeds)  # (B, T + V, H)
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            hidden_states, additive_mask(mask, hidden_states.dtype), input_ids.shape[1], output_attentions,
            output_hidden_states, text_states_only and not (output_attentions or output_hidden_states),
        )
        output = PromptMNERModelOutput(
            last_hidden_state=hidden_states,
            attention_mask=mask,
            prompt_probs=prompt_probs,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


def span_end_index(num_words: int, max_span_length: int, device=None) -> torch.LongTensor:
    """`end[i, d] = i + d`: the last word of the span that starts at word `i` and has `d + 1` words. `(W, L)`."""
    starts = torch.arange(num_words, device=device)[:, None]  # (W, 1)
    return starts + torch.arange(max_span_length, device=device)[None, :]  # (W, L)


class PromptMNERSpanHead(nn.Module):
    """Scores every span from `[h_start ; h_end]`, the hidden states of its first and last word, with an MLP."""

    def __init__(self, config: PromptMNERConfig):
        super().__init__()
        self.dropout = PromptMNERDropout(config.span_dropout)
        self.dense = nn.Linear(2 * config.hidden_size, config.span_hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.classifier = nn.Linear(config.span_hidden_size, config.num_labels)

    def forward(self, span_representations: torch.Tensor) -> torch.Tensor:
        """`(B, W, L, 2H)` span representations -> `(B, W, L, C)` logits."""
        hidden = self.activation(self.dense(self.dropout(span_representations)))
        return self.classifier(self.dropout(hidden))

    def score_word_pairs(self, start_hidden: torch.Tensor, end_hidden: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """The logits of [`forward`] without the dropout, without building `[h_start ; h_end]` for every span: the
        first layer is linear, `W [h_s ; h_e] + b = W_s h_s + W_e h_e + b`, so it runs once per word instead of once
        per span (`max_span_length` times fewer multiplications, the bulk of the head's cost). `start_hidden`,
        `end_hidden` `(B, W, H)`: each word's first and last token; `ends` `(W, L)`: the last word of each span."""
        weight_start, weight_end = self.dense.weight.chunk(2, dim=1)  # (S, H) each
        from_start = F.linear(start_hidden, weight_start, self.dense.bias)  # (B, W, S)
        from_end = F.linear(end_hidden, weight_end)  # (B, W, S)
        hidden = self.activation(from_start[:, :, None] + from_end[:, ends])  # (B, W, 1, S) + (B, W, L, S)
        return self.classifier(hidden)  # (B, W, L, C)


class PromptMNERForSpanNER(PromptMNERPreTrainedModel):
    """PromptMNER with the span classifier: multimodal named entity recognition by span prediction."""

    def __init__(self, config: PromptMNERConfig):
        super().__init__(config)
        self.promptmner = PromptMNERModel(config)
        self.span_head = PromptMNERSpanHead(config)
        self.post_init()

    def check_word_inputs(self, input_ids, word_start_index, word_end_index, word_mask, labels) -> None:
        """`word_start_index`, `word_end_index` (and `word_mask`) `(B, W)` for the `B` examples of `input_ids`, and
        `labels` `(B, W, max_span_length)`; a `ValueError` names the tensor and both shapes otherwise."""
        if word_start_index.ndim != 2 or word_start_index.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"word_start_index has shape {tuple(word_start_index.shape)} but input_ids has shape "
                f"{tuple(input_ids.shape)}: expected ({input_ids.shape[0]}, number of words)"
            )
        check_same_shape("word_end_index", word_end_index, "word_start_index", word_start_index)
        check_same_shape("word_mask", word_mask, "word_start_index", word_start_index)
        expected = (*word_start_index.shape, self.config.max_span_length)
        if labels is not None and tuple(labels.shape) != expected:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)} but word_start_index has shape "
                f"{tuple(word_start_index.shape)}: expected {expected} (batch, words, max_span_length)"
            )

    def word_states(self, text_hidden, word_start_index, word_end_index, word_mask=None):
        """The hidden states of each word's first and last token `(B, W, H)` each, the last word of each (start word,
        length) cell `(W, L)` (clamped to the words there are) and the valid-span mask `(B, W, L)`. `word_mask`
        `(B, W)` marks the real words; `None`: `word_start_index >= 0`."""
        num_words = word_start_index.shape[1]
        if word_mask is None:
            word_mask = word_start_index >= 0  # (B, W)
        elif word_mask.shape != word_start_index.shape:
            raise ValueError(
                f"word_mask has shape {tuple(word_mask.shape)} but word_start_index {tuple(word_start_index.shape)}"
            )
        gather = lambda index: text_hidden.gather(  # noqa: E731 - (B, W) token index -> (B, W, H) hidden states
            1, index.clamp(min=0).unsqueeze(-1).expand(-1, -1, text_hidden.shape[-1])
        )
        start_hidden, end_hidden = gather(word_start_index), gather(word_end_index)  # (B, W, H) each
        ends = span_end_index(num_words, self.config.max_span_length, text_hidden.device)  # (W, L)
        span_mask = valid_span_mask(word_mask.bool().sum(dim=1), num_words, self.config.max_span_length)  # (B, W, L)
        return start_hidden, end_hidden, ends.clamp(max=num_words - 1), span_mask

    def span_representations(self, text_hidden, word_start_index, word_end_index, word_mask=None):
        """`[h_start ; h_end]` for every (start word, length) cell: `(B, W, L, 2H)` and the valid-span mask `(B, W, L)`
        (see [`word_states`])."""
        start_hidden, end_hidden, ends, span_mask = self.word_states(
            text_hidden, word_start_index, word_end_index, word_mask
        )
        end_hidden = end_hidden[:, ends]  # (B, W, L, H)
        start_hidden = start_hidden[:, :, None].expand_as(end_hidden)  # (B, W, L, H)
        return torch.cat([start_hidden, end_hidden], dim=-1), span_mask  # (B, W, L, 2H)

    def forward(
        self,
        input_ids: torch.LongTensor,
        word_start_index: torch.LongTensor,
        word_end_index: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        has_image: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> PromptMNERSpanOutput | tuple:
        r"""
        word_start_index, word_end_index (`torch.LongTensor` of shape `(batch_size, num_words)`):
            Token index of each word's first and last sub-word; -1 for padding words (or any token index when
            `word_mask` marks them).
        word_mask (`torch.Tensor` of shape `(batch_size, num_words)`, *optional*):
            1 for real words, 0 for padding words (real words come first), like LUKE's `entity_attention_mask`.
            Defaults to `word_start_index >= 0`.
        labels (`torch.LongTensor` of shape `(batch_size, num_words, max_span_length)`, *optional*):
            Label id of the span of words `i .. i + d` at `[b, i, d]`; -100 for cells to ignore.

        See [`PromptMNERModel.forward`] for the other arguments.

        Example, with the model the README's first command trains (`accelerate launch run_mner.py` writes it to
        `outputs/demo`): the same text, with a drawn face and then a drawn landscape.

        ```python
        >>> import torch
        >>> from transformers import AutoModel, AutoProcessor

        >>> processor = AutoProcessor.from_pretrained("outputs/demo", trust_remote_code=True)
        >>> model = AutoModel.from_pretrained("outputs/demo", trust_remote_code=True).eval()
        >>> for image in ("test_00000.png", "test_00001.png"):
        ...     inputs = processor(text="Jordan arrives in town today", images=f"outputs/demo/data/images/{image}")
        ...     with torch.no_grad():
        ...         outputs = model(**inputs)
        ...     entities = processor.post_process(outputs, inputs)[0]
        ...     print(tuple(outputs.logits.shape), [(entity["word"], entity["entity_group"]) for entity in entities])
        (1, 5, 8, 4) [('Jordan', 'PER')]
        (1, 5, 8, 4) [('Jordan', 'LOC')]
        ```

        The logits score every span of up to `max_span_length` (8) words starting at each of the 5 words, for each of
        the 4 labels (`O`, `LOC`, `ORG`, `PER`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self.check_word_inputs(input_ids, word_start_index, word_end_index, word_mask, labels)
        outputs = self.promptmner(
            input_ids,
            attention_mask=attention_mask,
            image_embeds=image_embeds,
            has_image=has_image,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            # the head reads the text block alone; while autograd records, every layer runs whole, so each
            # parameter gets the gradient (zero or not) it always got
            text_states_only=not torch.is_grad_enabled(),
        )
        text_hidden = outputs.last_hidden_state[:, : input_ids.shape[1]]  # (B, T, H)
        if self.training and self.span_head.dropout.p > 0:  # dropout draws a mask for every span: build them all
            representations, span_mask = self.span_representations(text_hidden, word_start_index, word_end_index,
                                                                   word_mask)  # fmt: skip
            logits = self.span_head(representations)  # (B, W, L, C)
        else:  # the same logits, the head's first layer once per word (see PromptMNERSpanHead.score_word_pairs)
            start_hidden, end_hidden, ends, span_mask = self.word_states(text_hidden, word_start_index,
                                                                         word_end_index, word_mask)  # fmt: skip
            logits = self.span_head.score_word_pairs(start_hidden, end_hidden, ends)  # (B, W, L, C)
        loss = None
        if labels is not None:
            labels = labels.masked_fill(~span_mask, -100)  # cells past the last word never count
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        output = PromptMNERSpanOutput(
            loss=loss,
            logits=logits,
            span_mask=span_mask,
            prompt_probs=outputs.prompt_probs,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


PromptMNERForSpanNER.register_for_auto_class("AutoModel")
