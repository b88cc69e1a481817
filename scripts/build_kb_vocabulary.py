#!/usr/bin/env python
"""Regenerate the KB-retrieved prompt vocabulary (`prompt_vocabulary_kb.py`) from WordNet.

The paper's "KB-retrieved" prompts are related words of the task labels taken from a lexical knowledge base. This
script reads the Princeton WordNet 3.0 database files directly (stdlib only, no NLTK): on Debian/Ubuntu they come
with `apt-get install wordnet-base` in `/usr/share/wordnet`.

Retrieval rule, per task label (see `SEEDS`):

1. Start from the label's seed noun senses (e.g. `person` sense 1, "a human being").
2. Walk the hyponym relation (`~`, "is a kind of"; not instance hyponyms, which are proper names) breadth first,
   down to `MAX_DEPTH` levels; the seed synsets themselves are depth 0.
3. Keep a lemma (`_` -> space) when it is lowercase ASCII letters, spaces or hyphens (no proper nouns), has at most
   `MAX_WORDS` words and 3 to `MAX_CHARS` characters, and is common: its sense in the walked synset has a SemCor tag
   count (`cntlist.rev`) of at least `MIN_COUNT`.
4. Drop a lemma if the sense it was reached through, or its first (most frequent) noun sense, is offensive: a
   WordNet usage label (`;u` pointer) of ethnic slur, disparagement or obscenity, or a gloss saying "offensive",
   "derogatory", "insulting"... (so "bastard" goes, while "boy", whose rare sense 4 is a slur, stays).
5. Rank by tag count (descending; a lemma reached through several senses keeps its best), then depth, then
   alphabetically; keep the first `CAPS[label]` of each label. Labels are listed in `SEEDS` order and a word already
   taken by an earlier label is not repeated.

Everything is a pure function of the database files, so the output is byte-identical from run to run; the header of
the generated module records the WordNet version and the SHA-256 of the files read.

Usage (from the repository root):

    python scripts/build_kb_vocabulary.py                      # rewrite prompt_vocabulary_kb.py
    python scripts/build_kb_vocabulary.py --check              # exit 1 if the shipped file is out of date
    python scripts/build_kb_vocabulary.py --output /tmp/kb.py --wordnet-dir /usr/share/wordnet
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "prompt_vocabulary_kb.py"
REGENERATE_COMMAND = "python scripts/build_kb_vocabulary.py --wordnet-dir /usr/share/wordnet"

# Task label -> seed noun senses (lemma, 1-based WordNet sense number).
SEEDS: dict[str, tuple[tuple[str, int], ...]] = {
    "person": (("person", 1),),  # a human being
    "location": (("location", 1),),  # a point or extent in space
    "organization": (("organization", 1),),  # a group of people who work together
    # MISC/OTHER entities in tweets are mostly events, products and works (tournaments, phones, films).
    "miscellaneous": (("event", 1), ("product", 1), ("work_of_art", 1)),
}
CAPS = {"person": 80, "location": 60, "organization": 70, "miscellaneous": 40}
MAX_DEPTH = 3
MIN_COUNT = 3
MAX_WORDS = 3
MAX_CHARS = 24
DATABASE_FILES = ("index.noun", "data.noun", "cntlist.rev")
OFFENSIVE_GLOSS = re.compile(r"\b(offensive|slur|derogatory|disparaging|obscene|vulgar|insulting)\b", re.IGNORECASE)
OFFENSIVE_USAGE = frozenset({"ethnic_slur", "disparagement", "obscenity"})  # first lemma of the usage synset
LEMMA_PATTERN = re.compile(r"[a-z]+(?:[ -][a-z]+)*")


@dataclass(frozen=True)
class Synset:
    """One noun synset of `data.noun`."""

    offset: int
    lex_filenum: int
    lemmas: tuple[tuple[str, int], ...]  # (lemma as written, lex_id)
    pointers: tuple[tuple[str, int, str], ...]  # (symbol, target offset, target pos)
    gloss: str


class WordNetNouns:
    """Read-only access to the noun part of a WordNet database folder (the `wndb(5)` format)."""

    def __init__(self, wordnet_dir: str | Path):
        self.folder = Path(wordnet_dir)
        missing = [name for name in DATABASE_FILES if not (self.folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"WordNet database files {missing} not found in {str(self.folder)!r}; on Debian/Ubuntu install them "
                "with `apt-get install wordnet-base` (they go to /usr/share/wordnet)"
            )
        self.senses = self._read_index(self.folder / "index.noun")
        self.tag_counts = self._read_counts(self.folder / "cntlist.rev")
        self._data = (self.folder / "data.noun").read_bytes()
        self._cache: dict[int, Synset] = {}

    @staticmethod
    def _read_index(path: Path) -> dict[str, tuple[int, ...]]:
        """`index.noun`: lemma -> synset offsets, in WordNet's sense order."""
        senses = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line or line.startswith(" "):  # the license header lines start with two spaces
                continue
            fields = line.split()
            synset_count, pointer_count = int(fields[2]), int(fields[3])
            offsets = fields[6 + pointer_count : 6 + pointer_count + synset_count]
            senses[fields[0]] = tuple(int(offset) for offset in offsets)
        return senses

    @staticmethod
    def _read_counts(path: Path) -> dict[str, int]:
        """`cntlist.rev`: sense key -> SemCor tag count."""
        counts = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            key, _, count = line.split()
            counts[key] = int(count)
        return counts

    def synset(self, offset: int) -> Synset:
        """Parse the `data.noun` line at byte `offset`."""
        if offset not in self._cache:
            end = self._data.index(b"\n", offset)
            head, _, gloss = self._data[offset:end].decode("utf-8").partition(" | ")
            fields = head.split()
            if int(fields[0]) != offset:
                raise ValueError(f"data.noun: no synset at byte offset {offset}")
            word_count = int(fields[3], 16)
            lemmas = tuple((fields[4 + 2 * i], int(fields[5 + 2 * i], 16)) for i in range(word_count))
            index = 4 + 2 * word_count
            pointer_count = int(fields[index])
            pointers = tuple(
                (fields[index + 1 + 4 * i], int(fields[index + 2 + 4 * i]), fields[index + 3 + 4 * i])
                for i in range(pointer_count)
            )
            self._cache[offset] = Synset(offset, int(fields[1]), lemmas, pointers, gloss.strip())
        return self._cache[offset]

    def sense_offset(self, lemma: str, sense_number: int) -> int:
        """Offset of a lemma's `sense_number`-th (1-based) noun sense."""
        offsets = self.senses.get(lemma.lower())
        if not offsets or not 1 <= sense_number <= len(offsets):
            raise KeyError(f"WordNet has no noun sense {lemma}#{sense_number}")
        return offsets[sense_number - 1]

    def tag_count(self, lemma: str, synset: Synset, lex_id: int) -> int:
        """SemCor tag count of `lemma` in `synset` (sense key `lemma%1:lexfile:lexid::`)."""
        return self.tag_counts.get(f"{lemma.lower()}%1:{synset.lex_filenum:02d}:{lex_id:02d}::", 0)

    def hyponyms(self, synset: Synset) -> list[int]:
        return [target for symbol, target, pos in synset.pointers if symbol == "~" and pos == "n"]

    def is_offensive(self, synset: Synset) -> bool:
        """Whether a synset has an offensive usage label (`;u` to ethnic slur, disparagement, obscenity) or gloss."""
        for symbol, target, _ in synset.pointers:
            if symbol == ";u" and self.synset(target).lemmas[0][0].lower() in OFFENSIVE_USAGE:
                return True
        return OFFENSIVE_GLOSS.search(synset.gloss) is not None

    def first_sense(self, lemma: str) -> Synset | None:
        offsets = self.senses.get(lemma.lower())
        return self.synset(offsets[0]) if offsets else None

    def version(self) -> str:
        """The WordNet version named in the license header of `data.noun`."""
        match = re.search(rb"WordNet (\d+(?:\.\d+)*) Copyright", self._data[:4096])
        return match.group(1).decode() if match else "unknown"

    def license_text(self) -> list[str]:
        """The license header of `data.noun` (lines starting with two spaces and a line number)."""
        lines = []
        for raw in self._data[:8192].decode("utf-8", errors="replace").splitlines():
            match = re.match(r"  \d+ ?(.*)$", raw)
            if not match:
                break
            lines.append(match.group(1).rstrip())
        return lines


def clean_lemma(lemma: str) -> str | None:
    """WordNet lemma -> prompt word (`_` -> space), or `None` if it fails the shape filter."""
    word = lemma.replace("_", " ")
    if not LEMMA_PATTERN.fullmatch(word):
        return None
    if len(word.split()) > MAX_WORDS or not 3 <= len(word) <= MAX_CHARS:
        return None
    return word


def related_words(wordnet: WordNetNouns, seeds: tuple[tuple[str, int], ...]) -> list[tuple[str, int, int]]:
    """`(word, tag count, depth)` of the filtered hyponym closure of `seeds`, best first (see module docstring)."""
    roots = [wordnet.sense_offset(lemma, number) for lemma, number in seeds]
    depth = {offset: 0 for offset in roots}
    queue = deque(roots)
    best: dict[str, tuple[int, int]] = {}  # word -> (count, depth)
    offensive: set[str] = set()
    while queue:
        offset = queue.popleft()
        synset = wordnet.synset(offset)
        for lemma, lex_id in synset.lemmas:
            word = clean_lemma(lemma)
            count = wordnet.tag_count(lemma, synset, lex_id)
            if word is None or count < MIN_COUNT:
                continue
            first = wordnet.first_sense(lemma)
            if wordnet.is_offensive(synset) or (first is not None and wordnet.is_offensive(first)):
                offensive.add(word)
            previous = best.get(word)
            if previous is None or (-count, depth[offset]) < (-previous[0], previous[1]):
                best[word] = (count, depth[offset])
        if depth[offset] < MAX_DEPTH:
            for target in wordnet.hyponyms(synset):
                if target not in depth:
                    depth[target] = depth[offset] + 1
                    queue.append(target)
    kept = [(word, count, level) for word, (count, level) in best.items() if word not in offensive]
    return sorted(kept, key=lambda item: (-item[1], item[2], item[0]))


def build_vocabulary(wordnet: WordNetNouns) -> dict[str, list[str]]:
    """Task label -> its KB words (capped, no word repeated across labels), in `SEEDS` order."""
    taken: set[str] = set()
    vocabulary = {}
    for label, seeds in SEEDS.items():
        words = [word for word, _, _ in related_words(wordnet, seeds) if word not in taken]
        vocabulary[label] = words[: CAPS[label]]
        taken.update(vocabulary[label])
    return vocabulary


def file_digests(wordnet: WordNetNouns) -> dict[str, str]:
    return {name: hashlib.sha256((wordnet.folder / name).read_bytes()).hexdigest() for name in DATABASE_FILES}


def render_module(wordnet: WordNetNouns, vocabulary: dict[str, list[str]]) -> str:
    """The source of `prompt_vocabulary_kb.py` (deterministic: no dates, no absolute paths)."""
    version = wordnet.version()
    total = sum(len(words) for words in vocabulary.values())
    lines = [
        "# GENERATED FILE - do not edit by hand. Regenerate with:",
        f"#     {REGENERATE_COMMAND}",
        "#",
        f"# Source: Princeton WordNet {version} noun database (index.noun, data.noun, cntlist.rev), as shipped by the",
        "# Debian/Ubuntu package `wordnet-base` (/usr/share/wordnet). SHA-256 of the files read:",
        *(f"#     {name}  {digest}" for name, digest in file_digests(wordnet).items()),
        f"# Rule: hyponyms of the seed senses down to depth {MAX_DEPTH}, lowercase lemmas of at most {MAX_WORDS} words and",
        f"# {MAX_CHARS} characters with a SemCor tag count >= {MIN_COUNT}, minus offensive words (usage label or gloss);",
        "# ranked by tag count, capped per label (see scripts/build_kb_vocabulary.py).",
        "#",
        f"# License: WordNet {version} license (permissive, BSD-style). Its notice, which must accompany copies:",
        "#",
        *(f"#   {line}".rstrip() for line in wordnet.license_text()),
        '"""KB-retrieved prompt words: WordNet hyponyms of the task labels (generated; see the header comment)."""',
        "",
        "KB_SOURCE = {",
        f'    "knowledge_base": "Princeton WordNet {version}",',
        '    "license": "WordNet 3.0 license (https://wordnet.princeton.edu/license-and-commercial-use)",',
        '    "relation": "hyponym closure of the seed senses",',
        f'    "seeds": {dict((label, [f"{lemma}#{number}" for lemma, number in seeds]) for label, seeds in SEEDS.items())!r},',
        f'    "max_depth": {MAX_DEPTH},',
        f'    "min_tag_count": {MIN_COUNT},',
        f'    "caps": {CAPS!r},',
        f'    "command": "{REGENERATE_COMMAND}",',
        "}",
        "",
        f"# {total} words, by task label; within a label, most frequent (SemCor) first.",
        "KB_VOCABULARY_BY_LABEL = {",
    ]
    for label, words in vocabulary.items():
        lines.append(f'    "{label}": (')
        lines.extend(f'        "{word}",' for word in words)
        lines.append("    ),")
    lines += [
        "}",
        "",
        "KB_VOCABULARY = tuple(word for words in KB_VOCABULARY_BY_LABEL.values() for word in words)",
        "",
    ]
    return "\n".join(lines)


def generate(wordnet_dir: str | Path = DEFAULT_WORDNET_DIR) -> str:
    """The generated module's source for the WordNet database in `wordnet_dir`."""
    wordnet = WordNetNouns(wordnet_dir)
    return render_module(wordnet, build_vocabulary(wordnet))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR, help="WordNet database folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="module to write")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if --output differs")
    args = parser.parse_args(argv)
    source = generate(args.wordnet_dir)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != source:
            print(f"{args.output} is out of date; regenerate with: {REGENERATE_COMMAND}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(source, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
