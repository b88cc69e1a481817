"""The `multimodal-ner` pipeline: tweet text (+ image) in, entities in the token-classification format out.

```python
from transformers import pipeline

ner = pipeline("multimodal-ner", model="org/promptmner-twitter2015", trust_remote_code=True)
ner({"text": "Kevin Durant arrives in Oklahoma City", "image": "tweet.jpg"})
# [{"entity_group": "PER", "score": 0.97, "word": "Kevin Durant", "start": 0, "end": 12}, ...]
ner(["a text without image", {"text": "...", "image": pil_image}], batch_size=8)
```

[`MultimodalNERPipeline`] is registered as `"multimodal-ner"` when this module is imported, and
[`save_pipeline`] writes a model folder whose `config.json` names it (`custom_pipelines`), with this file next to
the model code, so that `pipeline(..., trust_remote_code=True)` finds it from a Hub repo or a folder.

Inputs: a string, a `{"text": str, "image": PIL image | path | numpy array | None}` dict, or a list of these.
An example without an image takes the model's text-only path (no visual clue tokens). Outputs follow transformers'
aggregated token-classification format: per example a list of `{"entity_group", "score", "word", "start", "end"}`
sorted by `start`, where `start` / `end` are character offsets into the input string and
`word == text[start:end]`.

Long texts. The model reads at most `window` text tokens (special tokens included):

    window = min(tokenizer.model_max_length,
                 max_position_embeddings - pad_token_id - 1 - (num_prompts + 1 if the example has an image else 0))

since RoBERTa-style position ids start after the padding index and the visual clues (plus their closing separator)
take positions after the text. A longer text is cut into chunks of whole words that fit, consecutive chunks sharing
`stride` words (default `2 * max_span_length`), each chunk is run through the processor and the model, and the
span candidates of all chunks are merged (see [`merge_chunk_candidates`]).

Cost linear in the text. What travels with each chunk is that chunk's tensors and a few numbers; the whole text and
its word offsets travel once, with the first chunk (as one array: the library walks every list it is handed, so a list
of offsets in every chunk made the time quadratic). The model's output for a chunk is reduced to its span candidates
before the next chunk runs, and an example's image is encoded by CLIP once for all its chunks ([`ExampleImage`]).
"""

from __future__ import annotations

import math
import numbers
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

try:
    from .clip_promptmner import check_image_file, embed_present, image_file_path
    from .processing_promptmner import PromptMNERProcessor, check_utf8_text, named_errors
    from .span_utils import decode_spans, entity_dicts
    from .tweet_words import split_words
except ImportError:
    from clip_promptmner import check_image_file, embed_present, image_file_path
    from processing_promptmner import PromptMNERProcessor, check_utf8_text, named_errors
    from span_utils import decode_spans, entity_dicts
    from tweet_words import split_words


logger = logging.get_logger(__name__)

TASK = "multimodal-ner"
INPUT_KEYS = ("text", "image")
_METADATA_KEYS = ("image", "chunk", "is_last")
IMAGE_CACHE_SIZE = 64  # examples whose CLIP embedding the pipeline keeps while their chunks go through the model
# Images per CLIP forward pass on the CPU: a random RN50 tower encoded 7.6 / 8.2 / 6.9 images/s in batches of 1 / 4 / 16
# on one thread and 12.1 / 15.3 / 11.7 on two (2-core Xeon, BENCHMARKS.md "Against the peer and the floor"): larger
# batches fall out of the caches. An accelerator takes the batch's images at once.
CPU_IMAGE_BATCH = 4
_UNSET = object()  # a call argument not given (None given explicitly is checked like any other value)


def check_threshold(threshold: Any) -> float:
    """`threshold` as a float if it is a number in [0, 1] (not a bool, not NaN), else a `ValueError` naming it."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1] (a label probability), got {threshold!r}")
    return float(threshold)


# ----------------------------------------------------------------------------------------------------------------
# Chunking and merging (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def chunk_word_ranges(token_counts: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Cut words into consecutive `[start, end)` ranges of at most `budget` tokens, overlapping by `stride` words.

    `token_counts[i]` is the number of tokens of word `i`. A range is extended word by word while it fits. The next
    range starts `stride` words before the previous end, but shares at most half the previous range and starts late
    enough to reach the first word the previous one left out, so that every range covers new words. A word longer
    than `budget` on its own gets a range of its own (the caller shortens it). A text without words gives one empty
    range, so that every text yields one chunk.
    """
    if budget < 1:
        raise ValueError(f"the token budget must be >= 1, got {budget}")
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    num_words = len(token_counts)
    ranges: list[tuple[int, int]] = []
    start = 0
    while True:
        end, used = start, 0
        while end < num_words and (end == start or used + token_counts[end] <= budget):
            used += token_counts[end]
            end += 1
        ranges.append((start, end))
        if end >= num_words:
            return ranges
        start = end - min(stride, (end - start) // 2)
        while start < end and sum(token_counts[start : end + 1]) > budget:
            start += 1


def merge_chunk_candidates(
    candidates: Iterable[tuple[int, int, str, float, bool]],
) -> list[tuple[int, int, str, float]]:
    """Merge span candidates pooled from overlapping chunks into non-overlapping entities.

    Each candidate is `(start, end, label, score, at_cut_edge)` in global word indices (`end` inclusive), where
    `at_cut_edge` says that the span touches a word at which its chunk was cut (the first word of a chunk that does
    not start the text, or the last word of a chunk that does not end it): such a span may be the visible part of
    a longer entity, and its context is one-sided.

    The rule:

    1. Duplicates (same words and label, seen in several chunks) become one candidate: away from a cut edge if any
       chunk saw it there, with the best score among those.
    2. Candidates away from every cut edge are decoded first, greedily by score ([`decode_spans`]); then candidates
       at a cut edge fill in only words left uncovered. So a span inside a chunk always beats a (possibly
       truncated) span at another chunk's edge, whatever their scores.

    With a single chunk nothing is at a cut edge and the result is exactly `decode_spans` of the candidates.
    """
    best: dict[tuple[int, int, str], tuple[bool, float]] = {}
    for start, end, label, score, at_edge in candidates:
        key, value = (start, end, label), (not at_edge, score)
        if key not in best or value > best[key]:
            best[key] = value
    interior = [(*key, score) for key, (inside, score) in best.items() if inside]
    edge = [(*key, score) for key, (inside, score) in best.items() if not inside]
    kept = decode_spans(interior)
    covered = {index for start, end, _, _ in kept for index in range(start, end + 1)}
    kept += decode_spans([span for span in edge if covered.isdisjoint(range(span[0], span[1] + 1))])
    return sorted(kept, key=lambda span: span[0])


# ----------------------------------------------------------------------------------------------------------------
# CPU threads
# ----------------------------------------------------------------------------------------------------------------

_TORCH_THREADS_AT_IMPORT = torch.get_num_threads()
_threads_chosen = [None]  # the last count set_cpu_threads chose itself (it may choose again; a user's choice stays)


def _cpu_ticks() -> tuple[int, int] | None:
    """`(idle, total)` CPU time of the whole machine so far, in clock ticks (Linux), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])  # idle + iowait; up to steal


def available_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def idle_cpu_cores(seconds: float = 0.2) -> float | None:
    """How many of this process's cores the rest of the machine left idle over the next `seconds` (None where the
    system does not say)."""
    cores = available_cores()
    before = _cpu_ticks()
    time.sleep(seconds)
    after = _cpu_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return cores * (after[0] - before[0]) / (after[1] - before[1])


# A core counts as taken by other work when that work keeps it more than this busy: a thread beside a job that always
# runs loses most of its time slices (4x slower on 2 cores beside a busy loop, BENCHMARKS.md "Prediction at scale"),
# beside one that often waits it loses few, and a short blip in the sampled 0.2 s should not halve the threads.
TAKEN_CORE_BUSY = 0.75


def threads_for_idle_cores(idle: float | None, cores: int, processes: int = 1) -> int:
    """Torch threads for one of `processes` processes when other work leaves `idle` of the `cores` idle (None: not
    known): the process's share of the cores, less the cores other work has taken, at least one."""
    share = max(1, cores // max(1, processes))
    if idle is None:
        return share
    free = math.ceil(idle / max(1, processes) - (1 - TAKEN_CORE_BUSY))  # this process's cores more than 1/4 idle
    return max(1, min(share, free))


def default_num_threads(processes: int = 1) -> int:
    """Torch threads for one of `processes` processes of a job on this machine ([`threads_for_idle_cores`] of the
    cores it may run on and what other work leaves idle of them now)."""
    return threads_for_idle_cores(idle_cpu_cores(), available_cores(), processes)


def set_cpu_threads(num_threads: int | None = None, processes: int = 1) -> int:
    """Set torch's intra-op threads: `num_threads` if given, else [`default_num_threads`] unless someone already
    decided (`OMP_NUM_THREADS` set, or `torch.set_num_threads` called since this module was imported). Returns the
    number in use."""
    if num_threads is not None:
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"num_threads must be an integer >= 1, got {num_threads!r}")
        torch.set_num_threads(num_threads)
    elif "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() in (_TORCH_THREADS_AT_IMPORT, *_threads_chosen):
        _threads_chosen[0] = default_num_threads(processes)
        torch.set_num_threads(_threads_chosen[0])
    return torch.get_num_threads()


class ChunkCandidates:
    """A chunk's span candidates `(start, end, label, score)`, handed on as one object: the pipeline machinery walks
    lists and tuples item by item every time it moves or batches its data."""

    def __init__(self, spans: list[tuple[int, int, str, float]]):
        self.spans = spans


class ExampleImage:
    """An example's decoded image, shared by the example's chunks, with a key under which its CLIP embedding is
    cached while they go through the model (the key survives the copies DataLoader workers hand over)."""

    def __init__(self, image: Image.Image):
        self.image = image
        self.key = uuid.uuid4().hex


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


def _check_processor(processor: Any) -> None:
    """Reject objects that are not a PromptMNER processor (duck-typed: remote code has its own class objects)."""
    needed = ("tokenizer", "labels", "max_span_length", "image_scorer", "span_candidates")
    missing = [name for name in needed if not hasattr(processor, name)]
    if missing:
        raise TypeError(
            f"the multimodal-ner pipeline needs a PromptMNERProcessor, got {type(processor).__name__} "
            f"(missing {missing}); pass processor=PromptMNERProcessor.from_pretrained(...)"
        )


class MultimodalNERPipeline(ChunkPipeline):
    """Multimodal named entity recognition with a PromptMNER model: text plus an optional image per example.

    Build it with `pipeline("multimodal-ner", model=..., trust_remote_code=True)` (the processor is loaded from the
    model's repo or folder), or directly: `MultimodalNERPipeline(model=model, processor=processor, device="cpu")`.

    Call arguments (also accepted at construction):
        stride (`int`, *optional*): words shared by consecutive chunks of a text longer than the model's window;
            default `2 * max_span_length`, which puts any entity cut by one chunk whole in the next one, with
            `max_span_length + 1` or more words of left context.
        max_length (`int`, *optional*): a smaller window in tokens (special tokens included) than the model's.
        threshold (`float`, defaults to 0): minimum probability of an entity's label (a number in [0, 1]; `True`,
            `None` or a string is refused).
        ignore_labels (`list[str]`, *optional*): entity types to leave out of the output.
        aggregation_strategy: accepted for compatibility with `token-classification` callers; entities are always
            whole word spans, so any value gives the same output.
        num_threads (`int`, *optional*, construction only): torch threads on the CPU. By default the pipeline takes
            the cores that other work leaves idle when it is built ([`default_num_threads`]), unless
            `OMP_NUM_THREADS` is set or `torch.set_num_threads` was called after this module was imported: on a busy
            machine, as many threads as cores would fight the other work for them and run several times slower.
        batch_size, num_workers, device: as in every transformers pipeline (chunks are what is batched, padded by
            the library's default collate: word indices with 0, which the `word_mask` input marks as padding).
    """

    _load_processor = None  # the factory loads it when it can; `__init__` falls back to the model's folder / repo
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, processor=None, num_threads: int | None = None, **kwargs):
        if processor is None:
            processor = self._processor_for(model)
        _check_processor(processor)
        super().__init__(model=model, processor=processor, **kwargs)
        self._check_processor_matches_model()
        if self.model.training:
            logger.warning("The model is in training mode (dropout is active): call model.eval() for inference")
        if self.device.type == "cpu":
            set_cpu_threads(num_threads)

    @staticmethod
    def _processor_for(model) -> PromptMNERProcessor:
        """Load the processor saved next to the model (this module's own class: no further remote code)."""
        name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
        if not name:
            raise ValueError(
                "the multimodal-ner pipeline needs a processor: pass "
                "processor=PromptMNERProcessor.from_pretrained(...) (the model has no name_or_path to load it from)"
            )
        # Our own class reads the folder: no code from it runs (a tokenizer lookup would otherwise ask about it).
        return PromptMNERProcessor.from_pretrained(name, trust_remote_code=False)

    def _check_processor_matches_model(self) -> None:
        """The processor (processor_config.json) and the model (config.json) must agree on what both decide."""
        config = self.model.config
        model_labels = [config.id2label[index] for index in range(config.num_labels)]
        if list(self.processor.labels) != model_labels:
            raise ValueError(f"processor labels {self.processor.labels} differ from the model's {model_labels}")
        agreed = [("max_span_length", self.processor.max_span_length, config.max_span_length)]
        if self.processor.clip_embed_dim is not None:
            agreed.append(("clip_embed_dim", self.processor.clip_embed_dim, config.clip_embed_dim))
        for field, processor_value, model_value in agreed:
            if processor_value != model_value:
                raise ValueError(
                    f"{field} is {processor_value} in the processor (processor_config.json) but {model_value} in the "
                    f"model (config.json): the two were not saved together"
                )

    # -- parameters ----------------------------------------------------------------------------------------------

    def _sanitize_parameters(
        self, stride=None, max_length=None, threshold=_UNSET, ignore_labels=None, aggregation_strategy=None
    ):
        preprocess, postprocess = {}, {}
        if stride is not None:
            if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
                raise ValueError(f"stride must be an integer >= 0 (words), got {stride!r}")
            preprocess["stride"] = stride
        if max_length is not None:
            special = self.processor.tokenizer.num_special_tokens_to_add()
            if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= special:
                raise ValueError(f"max_length must be an integer > {special} (the special tokens), got {max_length!r}")
            preprocess["max_length"] = max_length
        if threshold is not _UNSET:  # None too: it is no number (the default is 0)
            postprocess["threshold"] = check_threshold(threshold)
        if ignore_labels is not None:
            collection = isinstance(ignore_labels, (list, tuple, set, frozenset))
            if not collection or not all(isinstance(label, str) for label in ignore_labels):
                raise ValueError(f"ignore_labels must be a list of labels (strings), got {ignore_labels!r}")
            postprocess["ignore_labels"] = list(ignore_labels)
        strategy = getattr(aggregation_strategy, "value", aggregation_strategy)
        if isinstance(strategy, str) and strategy.lower() == "none":
            logger.warning_once("aggregation_strategy='none' is not supported: PromptMNER predicts whole word spans")
        return preprocess, {}, postprocess

    def __call__(self, inputs, **kwargs):
        """Find entities in one example or a list of examples.

        Args:
            inputs: a string, a `{"text": str, "image": PIL.Image | path | numpy array | None}` dict, or a list of
                these (a dataset or generator of these streams).
            kwargs: `stride`, `max_length`, `threshold`, `ignore_labels`, `batch_size`, `num_workers` (see the class).

        Returns:
            For one example, a list of `{"entity_group", "score", "word", "start", "end"}` dicts sorted by `start`;
            for a list, one such list per example.
        """
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        if isinstance(inputs, list):
            self._check_examples(inputs)
        return super().__call__(inputs, **kwargs)

    def _check_examples(self, inputs: list) -> None:
        """Check every example of a list before any runs, so that a bad one is named by its index (`inputs[2]: ...`):
        its type, keys and text, its image's type, and that an image path is a file (decoding comes later)."""
        for index, example in enumerate(inputs):
            with named_errors(f"inputs[{index}]"):
                _, image = self._parse_input(example)
                if image is not None:
                    self._check_image(image)
                    if isinstance(image, (str, os.PathLike)):
                        check_image_file(image_file_path(image))

    # -- preprocess ----------------------------------------------------------------------------------------------

    @staticmethod
    def _parse_input(inputs: Any) -> tuple[str, Any]:
        """`(text, image or None)` from a string or a `{"text", "image"}` mapping."""
        if isinstance(inputs, str):
            return check_utf8_text(inputs, "input text"), None
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(INPUT_KEYS))
            if unknown:
                raise ValueError(f"unknown input keys {unknown}; an input has 'text' and optionally 'image'")
            text = inputs.get("text")
            if not isinstance(text, str):
                raise ValueError(f"input 'text' must be a string, got {type(text).__name__}")
            return check_utf8_text(text, "input 'text'"), inputs.get("image")
        raise TypeError(
            f"an input must be a string or a dict with 'text' and optionally 'image', got {type(inputs).__name__}"
        )

    def _check_image(self, image: Any) -> None:
        """The model reads images, and `image` is of a kind it reads."""
        if self.processor.image_scorer.vision is None:
            raise ValueError("an image was given but this model's processor is text-only (it has no CLIP image tower)")
        if not isinstance(image, (Image.Image, str, os.PathLike, np.ndarray)):
            raise TypeError(f"image must be a PIL image, a file path or a numpy array, got {type(image).__name__}")

    def _load_image(self, image: Any) -> Image.Image | None:
        if image is None:
            return None
        self._check_image(image)
        return self.processor.image_scorer.load_image(image)

    def window(self, has_image: bool) -> int:
        """The most text tokens (special tokens included) the model can read for one example."""
        config = self.model.config
        positions = config.max_position_embeddings - config.pad_token_id - 1
        if has_image:
            positions -= config.num_prompts + 1
        model_max_length = self.processor.tokenizer.model_max_length
        return min(positions, model_max_length) if model_max_length < 1_000_000 else positions

    def _token_counts(self, words: list[str]) -> list[int]:
        """Tokens per word, as the processor encodes pre-split words (a word without tokens becomes one unknown)."""
        if not words:
            return []
        # verbose=False: the whole text is longer than the model's window, which is why it is counted here.
        encoding = self.processor.tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
        counts = [0] * len(words)
        for word_id in encoding.word_ids():
            if word_id is not None:
                counts[word_id] += 1
        return [max(count, 1) for count in counts]

    def preprocess(self, inputs, stride: int | None = None, max_length: int | None = None):
        """Yield one model input per chunk of the example's words (one chunk when the text fits the window)."""
        text, image = self._parse_input(inputs)
        image = self._load_image(image)
        split = split_words(text)
        words = [word for word, _, _ in split]
        offsets = np.array([(start, end) for _, start, end in split], dtype=np.int64).reshape(-1, 2)  # (N, 2)
        window = self.window(image is not None)
        if max_length is not None:
            window = min(window, max_length)
        budget = window - self.processor.tokenizer.num_special_tokens_to_add()
        example_image = ExampleImage(image) if image is not None else None  # shared by the example's chunks
        if len(text.encode("utf-8")) + len(words) <= budget:  # no tokenizer makes more tokens: one chunk, no counting
            encoding = self.processor(words, is_split_into_words=True, max_length=window, truncation=True)
            if len(encoding.words[0]) == len(words):
                chunk = {"start": 0, "num_words": len(words), "cut_left": False, "cut_right": False, "text": text,
                         "offsets": offsets}  # fmt: skip
                yield {**encoding, "image": example_image, "chunk": chunk, "is_last": True}
                return
        counts = self._token_counts(words)
        stride = 2 * self.processor.max_span_length if stride is None else stride
        ranges = chunk_word_ranges(counts, budget, stride)
        unk = self.processor.tokenizer.unk_token
        for index, (start, end) in enumerate(ranges):
            # A word longer than the whole window (a garbage string of hundreds of sub-words) is read as unknown.
            chunk_words = [
                word if count <= budget or unk is None else unk
                for word, count in zip(words[start:end], counts[start:end])
            ]
            encoding = self.processor(chunk_words, is_split_into_words=True, max_length=window, truncation=True)
            chunk = {"start": start, "num_words": len(encoding.words[0]), "cut_left": start > 0,
                     "cut_right": end < len(words)}  # fmt: skip
            if index == 0:  # the whole text once per example, not once per chunk
                chunk.update(text=text, offsets=offsets)
            yield {**encoding, "image": example_image, "chunk": chunk, "is_last": index == len(ranges) - 1}

    # -- forward -------------------------------------------------------------------------------------------------

    def _image_inputs(self, images: list[ExampleImage | None]) -> dict[str, torch.Tensor]:
        """CLIP embeddings of the batch's images, each example's image encoded once for all its chunks (the distinct
        images of the batch in one CLIP call); `{}` when there is none."""
        if all(image is None for image in images):
            return {}
        scorer = self.processor.image_scorer
        if next(scorer.vision.parameters()).device != self.device:
            scorer.to(self.device)  # CLIP runs where the model runs (moved on first use only)
        cache = self._image_cache()
        by_key = {image.key: image for image in images if image is not None}  # copies from DataLoader workers too
        missing = [image for key, image in by_key.items() if key not in cache]
        if missing:
            size = min(len(missing), CPU_IMAGE_BATCH) if self.device.type == "cpu" else len(missing)
            encoded = scorer.encode_images([image.image for image in missing], batch_size=size)  # (M, D)
            for image, row in zip(missing, encoded):
                cache[image.key] = row
                if len(cache) > IMAGE_CACHE_SIZE:
                    cache.popitem(last=False)
        keys = [image.key if image is not None else None for image in images]
        encode = lambda distinct: torch.stack([cache[key] for key in distinct])  # noqa: E731
        embeds, has_image = embed_present(keys, encode, scorer.embed_dim)  # (B, D) float32 on CPU, (B,)
        return {"image_embeds": embeds.to(self.device, self.model.dtype), "has_image": has_image.to(self.device)}

    def _image_cache(self) -> OrderedDict:
        """The CLIP embeddings of the latest examples' images, by `ExampleImage.key` (oldest first)."""
        if not hasattr(self, "_recent_image_embeds"):
            self._recent_image_embeds = OrderedDict()
        return self._recent_image_embeds

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        images, chunks, is_last = (model_inputs.pop(key) for key in _METADATA_KEYS)
        batched = isinstance(chunks, list)  # batch_size > 1: the library's collate made lists of the metadata
        if batched and self.tokenizer.padding_side != "right":
            raise ValueError(
                "batching needs a tokenizer that pads on the right (word indices point into right-padded tokens), "
                f"got padding_side={self.tokenizer.padding_side!r}: set processor.tokenizer.padding_side = 'right' "
                "or use batch_size=1"
            )
        chunk_list, image_list = (chunks, images) if batched else ([chunks], [images])
        tensors = {**model_inputs, **self._image_inputs(image_list)}
        logits = self.model(**tensors).logits  # (B, W, L, C)
        # Only the candidates leave the forward pass (every non-"O" argmax span; the threshold filters them later), so
        # what waits for an example's last chunk does not grow with the logits of its chunks.
        candidates = self.processor.span_candidates(logits, [chunk["num_words"] for chunk in chunk_list])
        candidates = [ChunkCandidates(spans) for spans in candidates]
        return {"candidates": candidates if batched else candidates[0], "chunk": chunks, "is_last": is_last}

    # -- postprocess ---------------------------------------------------------------------------------------------

    def postprocess(self, all_outputs: list[dict[str, Any]], threshold: float = 0.0, ignore_labels=None) -> list[dict]:
        """Pool the span candidates of the example's chunks, merge them, and map words back to characters."""
        pooled = []
        for output in all_outputs:
            chunk = output["chunk"]
            last_word = chunk["num_words"] - 1
            for start, end, label, score in output["candidates"].spans:
                if score < threshold:
                    continue
                at_edge = (chunk["cut_left"] and start == 0) or (chunk["cut_right"] and end == last_word)
                pooled.append((chunk["start"] + start, chunk["start"] + end, label, score, at_edge))
        text, offsets = all_outputs[0]["chunk"]["text"], all_outputs[0]["chunk"]["offsets"].tolist()
        return entity_dicts(merge_chunk_candidates(pooled), text, offsets, ignore_labels=ignore_labels or ())

    # -- saving --------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model (with `custom_pipelines` in its config), this pipeline's code, and the processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        _add_endpoint_files(save_directory)


def _add_endpoint_files(folder: str | os.PathLike) -> None:
    """Add the Inference Endpoints `handler.py` and its `requirements.txt` (written by the installed package)."""
    try:
        from mner_serving import write_endpoint_files
    except ImportError:  # running as a downloaded model's remote code, without the promptmner package
        logger.warning(f"{folder}: no handler.py written (Inference Endpoints); it needs the promptmner package")
        return
    write_endpoint_files(folder)


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=MultimodalNERPipeline, pt_model=AutoModel, type="multimodal")


def save_pipeline(model, processor, folder: str | os.PathLike, **save_kwargs: Any) -> None:
    """Save model, processor and remote code so that `pipeline("multimodal-ner", model=folder, trust_remote_code=True)`
    works: transformers' `Pipeline.save_pretrained` writes `custom_pipelines` into `config.json` and copies this file
    (and the files it imports) next to the model code. `save_kwargs` go to `model.save_pretrained`.

    The model is not moved: the pipeline is built on the model's own device.
    """
    MultimodalNERPipeline(model=model, processor=processor, device=model.device).save_pretrained(folder, **save_kwargs)
