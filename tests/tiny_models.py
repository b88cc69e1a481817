"""Tiny random models for the tests (text backbones of 2 layers of width 32, any vocabulary; a span model on one of
them) and the comparison of the entities they predict."""

import numpy as np
import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from mner_backbone import model_from_backbone

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def tiny_roberta(
    vocab_size: int = 120, pad_token_id: int = 1, max_positions: int = 40, num_layers: int = 2, seed: int = 0
) -> RobertaModel:
    """A random RoBERTa with one token type, like the pretrained ones."""
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=vocab_size, max_position_embeddings=max_positions, type_vocab_size=1, pad_token_id=pad_token_id,
        **{**TINY, "num_hidden_layers": num_layers},
    )  # fmt: skip
    return RobertaModel(config).eval()


def tiny_bert(vocab_size: int, pad_token_id: int = 0, max_positions: int = 512, seed: int = 0) -> BertModel:
    """A random BERT (positions counted from 0, two token types)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, max_position_embeddings=max_positions, pad_token_id=pad_token_id, **TINY)
    return BertModel(config).eval()


def tiny_span_model(processor, max_positions: int = 64, num_layers: int = 2):
    """A random PromptMNER model (5 continuous prompts) on a tiny RoBERTa, its head biased so that many spans come out
    as entities, as a trained head's would."""
    tokenizer = processor.tokenizer
    backbone = tiny_roberta(len(tokenizer), tokenizer.pad_token_id, max_positions, num_layers)
    model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=5)
    with torch.no_grad():
        model.span_head.classifier.bias.copy_(torch.tensor([0.0, 0.5, 0.4, 0.3, 0.2]))
    return model.eval()


def assert_same_entities(actual, expected, tolerance=1e-5):
    """Same spans, labels and words; scores equal up to float rounding of differently padded batches."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert [{k: v for k, v in e.items() if k != "score"} for e in got] == [
            {k: v for k, v in e.items() if k != "score"} for e in want
        ]
        assert np.allclose([e["score"] for e in got], [e["score"] for e in want], atol=tolerance, rtol=0)
