"""Tiny random text backbones for the tests: 2 layers of width 32, any vocabulary."""

import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

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
