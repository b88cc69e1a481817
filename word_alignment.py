"""Word alignment with a fast tokenizer: the checks a tokenizer must pass and the word-aligned encoding.

[`check_tokenizer`] rejects tokenizers that cannot map tokens back to words; [`load_tokenizer`] loads byte-level
BPE tokenizers (RoBERTa) with `add_prefix_space=True`; [`encode_words`] encodes pre-split words and gives each
word's first and last token index, truncating whole trailing words only. Ships with every model as remote code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

__all__ = ["check_tokenizer", "check_tokenizer_file", "encode_words", "load_tokenizer"]


def _json_find(node: Any, type_name: str) -> list[dict]:
    """All JSON objects with `"type": type_name` in a nested tokenizer serialisation."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == type_name:
            found.append(node)
        for value in node.values():
            found += _json_find(value, type_name)
    elif isinstance(node, list):
        for value in node:
            found += _json_find(value, type_name)
    return found


def _needs_prefix_space(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a byte-level BPE tokenizer (RoBERTa, GPT-2) lacks `add_prefix_space=True`.

    Without it, pre-split words are encoded as if each started a text (no leading-space marker), which is not
    how the backbone saw words during pretraining.
    """
    pre_tokenizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer")
    return any(not node.get("add_prefix_space", False) for node in _json_find(pre_tokenizer, "ByteLevel"))


def check_tokenizer(tokenizer: Any) -> None:
    """Reject tokenizers that cannot give word-aligned encodings."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase) or not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer must be a fast (Rust `tokenizers`) Hugging Face tokenizer, got {type(tokenizer).__name__}: "
            "word alignment needs `word_ids()`"
        )
    if _needs_prefix_space(tokenizer):
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} is a byte-level BPE tokenizer without add_prefix_space=True, "
            "which pre-split words need; load it with "
            "AutoTokenizer.from_pretrained(name, add_prefix_space=True) or pass its name to from_clip"
        )


def check_tokenizer_file(path: str | os.PathLike) -> None:
    """Raise an `OSError` naming `path` unless it is a `tokenizer.json` that a fast tokenizer can be built from: a
    damaged one would otherwise fail deep in the loader (`KeyError: 'added_tokens'`) without naming the file."""
    from tokenizers import Tokenizer

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        content = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OSError(f"{path}: not a readable tokenizer file ({type(err).__name__}: {err})") from err
    added = content.get("added_tokens") if isinstance(content, dict) else None
    if not isinstance(added, list) or not all(isinstance(token, dict) and "id" in token for token in added):
        raise OSError(f"{path}: not a tokenizer file: it has no 'added_tokens' list of tokens with their ids")
    try:
        Tokenizer.from_str(text)
    except Exception as err:  # the Rust library raises its own exception type for any invalid content
        raise OSError(f"{path}: not a valid tokenizer file ({err})") from err


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, reloaded with `add_prefix_space=True` for byte-level BPE tokenizers."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if getattr(tokenizer, "is_fast", False) and _needs_prefix_space(tokenizer):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **{**kwargs, "add_prefix_space": True})
    return tokenizer


def encode_words(
    tokenizer: PreTrainedTokenizerBase, batch_words: list[list[str]], truncation: bool, max_length: int | None
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Tokenize pre-split words; return the tensors (with word start / end indices) and words kept per example.

    Words the tokenizer maps to no token at all (control or zero-width characters) are encoded as the unknown
    token, so every word keeps at least one token. Truncation only drops whole trailing words (a word is never
    cut in the middle), so word indices, tags and character offsets stay aligned.
    """
    if truncation and max_length is None and tokenizer.model_max_length < 1_000_000:
        max_length = tokenizer.model_max_length
    if not truncation:
        max_length = None
    if max_length is not None and max_length < tokenizer.num_special_tokens_to_add() + 1:
        raise ValueError(f"max_length={max_length} leaves no room for words after the special tokens")
    token_words = [list(words) for words in batch_words]
    measure = tokenizer(token_words, is_split_into_words=True, truncation=False, return_token_type_ids=False)
    if _replace_tokenless_words(tokenizer, token_words, measure):
        measure = tokenizer(token_words, is_split_into_words=True, truncation=False, return_token_type_ids=False)
    num_kept = [len(words) for words in token_words]
    for index, words in enumerate(token_words):
        length = len(measure["input_ids"][index])
        if max_length is None or length <= max_length or not words:
            continue
        ends = _word_token_bounds(measure.word_ids(index), len(words))[1]
        trailing_specials = length - 1 - ends[-1]
        num_kept[index] = sum(1 for end in ends if end + 1 + trailing_specials <= max_length)

    encoding = tokenizer(
        [words[:kept] for words, kept in zip(token_words, num_kept)],
        is_split_into_words=True,
        padding=True,
        truncation=False,
        return_token_type_ids=False,
        return_attention_mask=True,
        return_tensors="pt",
    )
    batch_size = len(token_words)
    max_words = max(num_kept, default=0)
    word_start = torch.full((batch_size, max_words), -1, dtype=torch.long)
    word_end = torch.full((batch_size, max_words), -1, dtype=torch.long)
    for index, kept in enumerate(num_kept):
        starts, ends = _word_token_bounds(encoding.word_ids(index), kept)
        if any(start < 0 for start in starts):
            raise RuntimeError(f"text[{index}]: a word has no token after re-encoding; word alignment failed")
        word_start[index, :kept] = torch.tensor(starts, dtype=torch.long)
        word_end[index, :kept] = torch.tensor(ends, dtype=torch.long)
    data = {
        "input_ids": encoding["input_ids"],
        "attention_mask": encoding["attention_mask"],
        "word_start_index": word_start,
        "word_end_index": word_end,
        "word_mask": (word_start >= 0).long(),  # (B, W)
    }
    return data, num_kept

def _replace_tokenless_words(tokenizer: PreTrainedTokenizerBase, token_words: list[list[str]], encoding) -> bool:
    """Replace, in place, the words that produced no token by the unknown token; return whether any did."""
    changed = False
    for index, words in enumerate(token_words):
        present = {word_id for word_id in encoding.word_ids(index) if word_id is not None}
        missing = [position for position in range(len(words)) if position not in present]
        if not missing:
            continue
        if tokenizer.unk_token is None:
            raise ValueError(
                f"text[{index}]: words {[words[p] for p in missing]} produce no tokens and the tokenizer has no "
                "unk_token to stand for them"
            )
        for position in missing:
            words[position] = tokenizer.unk_token
        changed = True
    return changed

def _word_token_bounds(word_ids: list[int | None], num_words: int) -> tuple[list[int], list[int]]:
    """Index of the first and last token of each of the first `num_words` words (-1 if it has none)."""
    starts, ends = [-1] * num_words, [-1] * num_words
    for token_index, word_id in enumerate(word_ids):
        if word_id is None or word_id >= num_words:
            continue
        if starts[word_id] < 0:
            starts[word_id] = token_index
        ends[word_id] = token_index
    return starts, ends
