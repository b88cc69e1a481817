"""Tweet word splitting: a raw string into words with character offsets, and pre-split words back into a text.

[`split_words`] is the word rule of PromptMNER's processor and pipeline (mentions, hashtags, URLs, emoji and
abbreviations kept whole); [`join_words`] joins pre-split words with single spaces. Stdlib only; ships with every
model as remote code.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["join_words", "split_words"]

_ZERO_WIDTH_JOINER = "\u200d"
_URL_RE = re.compile(r"(?:[a-z][a-z0-9+.\-]*://|www\.)\S", re.IGNORECASE)
_ABBREVIATION_RE = re.compile(r"(?:[^\W\d_]\.){2,}")
_URL_TRAILING = set(".,;:!?\"'\u2026\u00bb\u201d\u2019")
_CLOSING_BRACKETS = {")": "(", "]": "[", "}": "{"}
_HANDLE_PREFIXES = "@#$"


def _is_extender(char: str) -> bool:
    """Whether `char` belongs to the character before it (combining mark, joiner, emoji modifier...)."""
    return unicodedata.category(char) in ("Mn", "Me", "Cf") or 0x1F3FB <= ord(char) <= 0x1F3FF


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _clusters(chunk: str) -> list[tuple[int, int]]:
    """Split a whitespace-free chunk into user-perceived characters (approximate grapheme clusters)."""
    clusters = []
    index = 0
    while index < len(chunk):
        end = index + 1
        if _is_regional_indicator(chunk[index]) and end < len(chunk) and _is_regional_indicator(chunk[end]):
            end += 1  # a flag is a pair of regional indicators
        while end < len(chunk) and (_is_extender(chunk[end]) or chunk[end - 1] == _ZERO_WIDTH_JOINER):
            end += 1
        clusters.append((index, end))
        index = end
    return clusters


def _is_edge_symbol(chunk: str, cluster: tuple[int, int]) -> bool:
    """Whether a cluster is punctuation or a symbol (Unicode categories P* and S*, emoji included; not `_`)."""
    char = chunk[cluster[0]]
    return char != "_" and unicodedata.category(char)[0] in "PS"


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _group_runs(chunk: str, clusters: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge consecutive identical clusters ("!!!", "...", a repeated emoji) into one word."""
    runs: list[tuple[int, int]] = []
    previous = None
    for start, end in clusters:
        piece = chunk[start:end]
        if runs and piece == previous:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
        previous = piece
    return runs


def _peel_trailing(chunk: str, clusters: list[tuple[int, int]], is_url: bool) -> int:
    """Number of trailing clusters to split off the core of a chunk."""
    core_end = len(clusters)
    while core_end > 0:
        start, end = clusters[core_end - 1]
        text = chunk[clusters[0][0] : clusters[core_end - 1][1]]
        char = chunk[start:end]
        if is_url:
            opening = _CLOSING_BRACKETS.get(char)
            unbalanced = opening is not None and text.count(opening) < text.count(char)
            if not (char in _URL_TRAILING or unbalanced):
                break
        else:
            if not _is_edge_symbol(chunk, (start, end)) or _ABBREVIATION_RE.fullmatch(text):
                break
        core_end -= 1
    return len(clusters) - core_end


def _split_chunk(chunk: str) -> list[tuple[int, int]]:
    """Split one whitespace-free chunk into `(start, end)` word offsets relative to the chunk."""
    clusters = _clusters(chunk)
    core_start = 0
    while core_start < len(clusters) and _is_edge_symbol(chunk, clusters[core_start]):
        start, end = clusters[core_start]
        keeps_handle = chunk[start] in _HANDLE_PREFIXES and end < len(chunk) and _is_word_char(chunk[end])
        if keeps_handle:
            break
        core_start += 1
    core = clusters[core_start:]
    is_url = bool(core) and _URL_RE.match(chunk, core[0][0]) is not None
    num_trailing = _peel_trailing(chunk, core, is_url) if core else 0
    core_end = len(core) - num_trailing
    words = _group_runs(chunk, clusters[:core_start])
    if core_end > 0:
        words.append((core[0][0], core[core_end - 1][1]))
    words += _group_runs(chunk, core[core_end:])
    return words


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Split a raw string into words with character offsets: `[(word, start, end), ...]`, `text[start:end] == word`.

    The rule, designed for tweets:

    1. Split on whitespace (Python's `str.split` notion of whitespace).
    2. In each chunk, peel punctuation and symbols (Unicode categories `P*` and `S*`, emoji included) off both
       edges; each peeled run of one repeated character (`"!!!"`, `"..."`, `"😂😂"`) is one word, different
       characters are separate words (`"?!"` -> `"?"`, `"!"`).
    3. Kept intact: `@mentions`, `#hashtags` and `$cashtags` (a leading `@`/`#`/`$` followed by a letter, digit
       or `_`); URLs (`scheme://...` or `www....`), which only lose trailing sentence punctuation and unbalanced
       closing brackets; dotted abbreviations such as `"U.S."` or `"e.g."`; everything inside a word (apostrophes,
       hyphens, dots, slashes: `"don't"`, `"Jean-Luc"`, `"3.5"`).
    4. Combining marks, zero-width joiners, emoji skin-tone modifiers and flag pairs stay with their character.

    Example: `"RT @user: Obama visits the U.S. today!!! http://t.co/x."` gives `RT`, `@user`, `:`, `Obama`,
    `visits`, `the`, `U.S.`, `today`, `!!!`, `http://t.co/x`, `.`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = []
    for match in re.finditer(r"\S+", text):
        offset = match.start()
        for start, end in _split_chunk(match.group()):
            words.append((text[offset + start : offset + end], offset + start, offset + end))
    return words


def join_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join pre-split words with single spaces; return the text and each word's `(start, end)` in it."""
    offsets = []
    position = 0
    for word in words:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), offsets
