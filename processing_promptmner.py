"""PromptMNER processor: tweet text + image in, model tensors out; span logits in, entities out.

[`PromptMNERProcessor`] composes what turns a raw example into the inputs of the PromptMNER model, as transformers'
processors compose a tokenizer and an image processor, and merges their outputs:

- the text backbone's **fast tokenizer**, word-aligned through `word_ids()` (`word_alignment`);
- the **frozen CLIP** (`clip_promptmner.CLIPImageScorer`, `processor.image_scorer`): image preprocessing and the
  open_clip image tower, so an image becomes one L2-normalised CLIP image embedding (`image_embeds`); the model
  scores its prompts against it;
- the **prompt vocabulary and template** (`"an image of {}"`), whose CLIP text embeddings the model keeps as its
  discrete prompt embeddings ([`PromptMNERProcessor.encode_prompts`]);
- the **span label set** (`labels[0] == "O"`) and the longest span in words (`max_span_length`), and the
  post-processing of span logits into entities.

A saved processor is self-contained: `processor_config.json` (the CLIP settings are flat keys in it), the tokenizer
files and `clip_vision.safetensors` (the image tower's weights; safetensors only, nothing is unpickled when loading).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

try:
    from .clip_promptmner import (
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        CLIPImageScorer,
        embed_present,
        resolve_clip_vision_file,
        resolve_saved_file,
    )
    from .configuration_promptmner import DEFAULT_LABELS
    from .prompt_vocabularies import TASK_LABELS, load_vocabulary, save_vocabulary_embeds
    from .span_utils import bio_to_spans, decode_spans, entity_dicts, span_label_grid, valid_span_mask
    from .tweet_words import join_words, split_words
    from .word_alignment import check_tokenizer, check_tokenizer_file, encode_words, load_tokenizer
except ImportError:
    from clip_promptmner import (
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        CLIPImageScorer,
        embed_present,
        resolve_clip_vision_file,
        resolve_saved_file,
    )
    from configuration_promptmner import DEFAULT_LABELS
    from prompt_vocabularies import TASK_LABELS, load_vocabulary, save_vocabulary_embeds
    from span_utils import bio_to_spans, decode_spans, entity_dicts, span_label_grid, valid_span_mask
    from tweet_words import join_words, split_words
    from word_alignment import check_tokenizer, check_tokenizer_file, encode_words, load_tokenizer


logger = logging.get_logger(__name__)

# The paper's "task labels" vocabulary.
DEFAULT_PROMPT_VOCABULARY = TASK_LABELS
DEFAULT_PROMPT_TEMPLATE = "an image of {}"
# Runtime objects kept out of `to_dict` (not JSON, and large); the scorer's settings are saved in their place.
_RUNTIME_ATTRIBUTES = ("image_scorer", "_vocabulary_embeds")


def check_utf8_text(text: str, name: str = "text") -> str:
    """Return `text` if UTF-8 can encode it, else raise `ValueError` naming `name`, the character and its index.

    A Python string can hold a lone surrogate (`"\\ud800"` in JSON gives one) that no tokenizer, file or JSON
    writer in UTF-8 accepts; the message says where it is instead of a tokenizer's type error.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} holds a lone surrogate U+{ord(text[err.start]):04X} at character {err.start}, "
            "which UTF-8 cannot encode"
        ) from None
    return text


_NAMED_ERRORS = (TypeError, ValueError, FileNotFoundError)


@contextmanager
def named_errors(field: str) -> Iterator[None]:
    """Re-raise a `TypeError`, `ValueError` or `FileNotFoundError` of the block with `field: ` before its message, so
    that an error in one element of a batch says which (`images[2]: Image file not found: ...`)."""
    try:
        yield
    except _NAMED_ERRORS as err:
        if type(err) not in _NAMED_ERRORS:  # a subclass may take other arguments: left as it is
            raise
        raise type(err)(f"{field}: {err}") from err


class PromptMNERBatch(BatchFeature):
    """The processor's output: a `BatchFeature` whose dict holds only model tensors.

    `model(**batch)` therefore sees only tensors. The text side needed to map predictions back to the text lives
    in plain attributes, kept by `.to(...)` (which returns the same object) and by pickling:

    - `texts`: one string per example (the input string, or the pre-split words joined with single spaces);
    - `words`: the words that made it into the tensors (after truncation);
    - `word_offsets`: `(start, end)` character offsets of those words in `texts`;
    - `num_truncated_words`: how many trailing words truncation dropped, per example.
    """

    _text_attributes = ("texts", "words", "word_offsets", "num_truncated_words")

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        tensor_type: str | None = None,
        texts: list[str] | None = None,
        words: list[list[str]] | None = None,
        word_offsets: list[list[tuple[int, int]]] | None = None,
        num_truncated_words: list[int] | None = None,
    ):
        super().__init__(data, tensor_type=tensor_type)
        self.texts = texts if texts is not None else []
        self.words = words if words is not None else []
        self.word_offsets = word_offsets if word_offsets is not None else []
        self.num_truncated_words = num_truncated_words if num_truncated_words is not None else []

    def __getstate__(self):
        state = super().__getstate__()
        state.update({name: self.__dict__.get(name) for name in self._text_attributes})
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        for name in self._text_attributes:
            setattr(self, name, state.get(name))


# ----------------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------------


def check_saved_vocabulary(config_file: str | os.PathLike) -> None:
    """A saved `processor_config.json` must hold its prompt vocabulary as the list of words (or leave it out): a
    string there would be read as a vocabulary name or a file path, and loading must read nothing outside the folder.
    An unreadable file is an `OSError`, another vocabulary a `ValueError`, both naming the file."""
    try:
        settings = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OSError(f"{config_file}: not a readable processor_config.json ({type(err).__name__}: {err})") from err
    vocabulary = settings.get("prompt_vocabulary") if isinstance(settings, dict) else None
    if vocabulary is None:
        return
    if not isinstance(vocabulary, list) or not all(isinstance(word, str) for word in vocabulary):
        shown = repr(vocabulary) if len(repr(vocabulary)) <= 100 else repr(vocabulary)[:97] + "..."
        raise ValueError(
            f"{config_file}: prompt_vocabulary must be the list of words the processor carries, got "
            f"{type(vocabulary).__name__} {shown}; a saved processor never names a vocabulary or a file to read"
        )


# What a saved processor needs each file for; all are checked before loading, so no default stands in for one.
SAVED_PROCESSOR_FILES = {
    "processor_config.json": "its labels, span length, CLIP preprocessing and prompts",
    "tokenizer.json": "its fast tokenizer",
    "tokenizer_config.json": "its tokenizer settings",
}


class PromptMNERProcessor(ProcessorMixin):
    r"""
    Processor for PromptMNER: a fast text tokenizer, the frozen CLIP (`image_scorer`, a [`CLIPImageScorer`]), the
    prompt vocabulary and template, and the span label set.

    Build it from open_clip with [`~PromptMNERProcessor.from_clip`]; save / load it with `save_pretrained` /
    `from_pretrained` (the image tower's weights go to `clip_vision.safetensors`).

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]):
            The text backbone's fast tokenizer. Byte-level BPE tokenizers (RoBERTa) need `add_prefix_space=True`.
        clip_config, image_size, image_mean, image_std, image_interpolation, image_resize_mode, image_fill_color,
        clip_logit_scale, clip_model_name, clip_pretrained, clip_model:
            The frozen CLIP: the arguments of [`CLIPImageScorer`], which the processor builds and holds as
            `image_scorer` (`clip_config=None`: a text-only processor). They are named here, not passed through, because
            transformers' loader passes a saved processor only the arguments its `__init__` names; they are saved as
            flat keys of `processor_config.json`.
        prompt_template (`str`, defaults to `"an image of {}"`): prompt with one `{}` for the vocabulary word.
        prompt_vocabulary (`list[str]`, *optional*): prompt words; defaults to the task labels
            `["person", "location", "organization", "miscellaneous"]`.
        labels (`list[str]`, defaults to `["O", "PER", "LOC", "ORG", "MISC"]`): span labels, `labels[0] == "O"`.
        max_span_length (`int`, defaults to 8): longest span in words that the model scores.
    """

    def __init__(
        self,
        tokenizer,
        clip_config: dict | None = None,
        image_size: int | list[int] = 224,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        image_interpolation: str = "bicubic",
        image_resize_mode: str = "shortest",
        image_fill_color: int = 0,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        prompt_vocabulary: Sequence[str] | None = None,
        labels: Sequence[str] = DEFAULT_LABELS,
        max_span_length: int = 8,
        clip_logit_scale: float = 100.0,
        clip_model_name: str | None = None,
        clip_pretrained: str | None = None,
        clip_model: torch.nn.Module | None = None,
        **kwargs,
    ):
        check_tokenizer(tokenizer)
        if isinstance(prompt_vocabulary, (str, os.PathLike)):  # "kb", "kb+expert", a file...
            prompt_vocabulary = load_vocabulary(prompt_vocabulary)
        for name, value in (("labels", labels), ("prompt_vocabulary", prompt_vocabulary)):
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of strings, got the string {value!r}")
        super().__init__(tokenizer, **kwargs)
        self.prompt_template = prompt_template
        self.prompt_vocabulary = list(DEFAULT_PROMPT_VOCABULARY if prompt_vocabulary is None else prompt_vocabulary)
        self.labels = list(labels)
        self.max_span_length = max_span_length
        self._validate()
        self.image_scorer = CLIPImageScorer(
            clip_config, image_size=image_size, image_mean=image_mean, image_std=image_std,
            image_interpolation=image_interpolation, image_resize_mode=image_resize_mode,
            image_fill_color=image_fill_color, clip_logit_scale=clip_logit_scale, clip_model_name=clip_model_name,
            clip_pretrained=clip_pretrained, clip_model=clip_model,
        )  # fmt: skip
        self._vocabulary_embeds = None  # (vocabulary, template, embeddings) of the last save, reused while unchanged

    # -- construction ------------------------------------------------------------------------------------------

    def _validate(self) -> None:
        """Raise `ValueError` naming the first invalid argument."""
        if not self.labels or self.labels[0] != "O":
            raise ValueError(f"labels[0] must be 'O' (the not-an-entity label), got labels={self.labels}")
        if len(set(self.labels)) != len(self.labels) or not all(isinstance(x, str) and x for x in self.labels):
            raise ValueError(f"labels must be distinct non-empty strings, got {self.labels}")
        if not isinstance(self.max_span_length, int) or isinstance(self.max_span_length, bool) or (
            self.max_span_length < 1
        ):
            raise ValueError(f"max_span_length must be an integer >= 1, got {self.max_span_length!r}")
        if not isinstance(self.prompt_template, str) or "{}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' for the word, got {self.prompt_template!r}")
        try:
            self.prompt_template.format("word")
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(f"prompt_template {self.prompt_template!r} cannot be formatted with one word") from err
        if not self.prompt_vocabulary or not all(isinstance(w, str) and w.strip() for w in self.prompt_vocabulary):
            raise ValueError(f"prompt_vocabulary must be a non-empty list of words, got {self.prompt_vocabulary!r}")

    @classmethod
    def from_clip(
        cls,
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike,
        clip_model_name: str | None = "RN50",
        clip_pretrained: str | None = "openai",
        clip_config: dict | None = None,
        *,
        cache_dir: str | None = None,
        tokenizer_kwargs: dict | None = None,
        **kwargs,
    ) -> PromptMNERProcessor:
        """Build a processor around an open_clip model.

        Args:
            tokenizer: a fast tokenizer, or a name / path for `AutoTokenizer.from_pretrained` (byte-level BPE
                tokenizers are loaded with `add_prefix_space=True`).
            clip_model_name: a registered open_clip model name (`"RN50"`, the paper's CNN CLIP).
            clip_pretrained: an open_clip pretrained tag (`"openai"`), downloaded by open_clip; `None` leaves the
                model randomly initialised (tests).
            clip_config: an explicit open_clip model config dict instead of a registered name; the model is then
                randomly initialised (`clip_pretrained` must be `None`).
            cache_dir: open_clip's download cache.
            tokenizer_kwargs: extra kwargs for `AutoTokenizer.from_pretrained` when `tokenizer` is a name.
            **kwargs: other `__init__` arguments (`prompt_vocabulary`, `labels`, `max_span_length`, ...).
        """
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer, **(tokenizer_kwargs or {}))
        scorer = CLIPImageScorer.from_open_clip(clip_model_name, clip_pretrained, clip_config, cache_dir=cache_dir)
        settings = {**scorer.settings(), **kwargs}  # explicit arguments win over the model's own preprocessing
        return cls(tokenizer, clip_model=scorer.clip_model, **settings)

    # -- serialisation -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """`ProcessorMixin.to_dict` without the runtime objects (the CLIP towers, cached embeddings), with the
        scorer's settings as flat keys in their place."""
        runtime = {name: self.__dict__.pop(name) for name in _RUNTIME_ATTRIBUTES if name in self.__dict__}
        try:
            output = super().to_dict()
        finally:
            self.__dict__.update(runtime)
        output.update(self.image_scorer.settings())
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Save `processor_config.json`, the tokenizer files and `clip_vision.safetensors`.

        With `push_to_hub=True`, the folder is then uploaded through `push_to_hub` (kwargs: `repo_id`,
        `commit_message`, `private`, `token`, `revision`, `create_pr`).
        """
        push_kwargs = {
            key: kwargs.pop(key)
            for key in ("repo_id", "commit_message", "private", "token", "revision", "create_pr")
            if key in kwargs
        }
        scorer = self.image_scorer
        if scorer.vision is not None:
            scorer.require_weights()  # before writing anything
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        if scorer.vision is not None:
            files.append(scorer.save_weights(save_directory))
        if scorer.has_text_tower:  # CLIP text embeddings of the vocabulary, for explanations
            files.append(
                save_vocabulary_embeds(
                    save_directory, self.vocabulary_embeds(), self.prompt_vocabulary, self.prompt_template
                )
            )
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, **push_kwargs)
        return files

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        **kwargs,
    ) -> PromptMNERProcessor:
        """Load a saved processor from a local folder or a Hub repo id, with its CLIP image tower weights.

        Hub files go through the Hugging Face cache, so `HF_HUB_OFFLINE=1` works with a populated cache. A folder
        without `processor_config.json` or without its fast tokenizer's files is an error naming the file (a default
        processor rebuilt in their place would silently read text and images differently from training), and so is
        a damaged `tokenizer.json`. A saved processor carries its prompt vocabulary as a list of words: a name or a
        file path in `processor_config.json` is refused, so loading never reads a file outside the folder or repo.
        """
        hub_kwargs = dict(cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only,
                          token=token, revision=revision)  # fmt: skip
        files = {
            filename: resolve_saved_file(
                pretrained_model_name_or_path, filename, needed_for, subfolder=kwargs.get("subfolder", ""), **hub_kwargs
            )
            for filename, needed_for in SAVED_PROCESSOR_FILES.items()
        }
        if "prompt_vocabulary" not in kwargs:
            check_saved_vocabulary(files["processor_config.json"])
        check_tokenizer_file(files["tokenizer.json"])
        processor = super().from_pretrained(
            pretrained_model_name_or_path,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            revision=revision,
            **kwargs,
        )
        if processor.image_scorer.clip_config is not None:
            weights_file = resolve_clip_vision_file(
                pretrained_model_name_or_path, subfolder=kwargs.get("subfolder", ""), **hub_kwargs
            )
            processor.image_scorer.load_weights(weights_file)
        return processor

    # -- properties --------------------------------------------------------------------------------------------

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def clip_embed_dim(self) -> int | None:
        """Width of CLIP's joint embedding space (`image_embeds` and prompt embeddings); None for a text-only
        processor."""
        return self.image_scorer.embed_dim

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids", "attention_mask", "word_start_index", "word_end_index", "word_mask", "image_embeds", "has_image"
        ]

    def to(self, device: str | torch.device) -> PromptMNERProcessor:
        """Move the CLIP towers to `device` (image and prompt encoding then run there); returns `self`."""
        self.image_scorer.to(device)
        return self

    # -- prompts -----------------------------------------------------------------------------------------------

    def build_prompts(self, vocabulary: Sequence[str] | None = None) -> list[str]:
        """`prompt_template.format(word)` for each word (default: `prompt_vocabulary`)."""
        vocabulary = self.prompt_vocabulary if vocabulary is None else list(vocabulary)
        if not vocabulary:
            raise ValueError("vocabulary is empty")
        return [self.prompt_template.format(word) for word in vocabulary]

    def encode_prompts(self, vocabulary: Sequence[str] | None = None, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised CLIP text embeddings `(K, D)` of the prompts (float32 CPU), for discrete prompts.

        Needs CLIP's text tower, which only a processor built by `from_clip` (or given `clip_model`) has: a saved
        processor keeps the image tower only. Compute the prompt embeddings once when building the model; they are
        stored in the model's weights.
        """
        return self.image_scorer.encode_texts(self.build_prompts(vocabulary), batch_size=batch_size)

    def vocabulary_embeds(self) -> torch.Tensor:
        """`encode_prompts()` of the processor's own vocabulary, computed once while vocabulary and template stay
        the same (a training run saves the processor with every new best model)."""
        key = (tuple(self.prompt_vocabulary), self.prompt_template)
        if self._vocabulary_embeds is None or self._vocabulary_embeds[0] != key:
            self._vocabulary_embeds = (key, self.encode_prompts())
        return self._vocabulary_embeds[1]

    # -- text --------------------------------------------------------------------------------------------------

    @staticmethod
    def _normalize_text(
        text: Any, is_split_into_words: bool
    ) -> tuple[list[list[str]], list[list[tuple[int, int]]], list[str], bool]:
        """Turn `text` into `(words, offsets, texts, is_batched)` per example."""
        if text is None:
            raise ValueError("text is required")
        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and len(text) > 0 and isinstance(text[0], (list, tuple))
            examples = list(text) if is_batched else [text]
            words, offsets, texts = [], [], []
            for index, example in enumerate(examples):
                if not isinstance(example, (list, tuple)) or not all(isinstance(word, str) for word in example):
                    raise TypeError(
                        f"text[{index}]: with is_split_into_words=True each example must be a list of str words"
                    )
                for position, word in enumerate(example):
                    if not word:
                        raise ValueError(f"text[{index}]: word {position} is an empty string")
                    check_utf8_text(word, f"text[{index}]: word {position}")
                joined, example_offsets = join_words(example)
                words.append(list(example))
                offsets.append(example_offsets)
                texts.append(joined)
            return words, offsets, texts, is_batched
        if isinstance(text, str):
            examples, is_batched = [text], False
        elif isinstance(text, (list, tuple)) and all(isinstance(example, str) for example in text):
            if not text:
                raise ValueError("text is an empty batch")
            examples, is_batched = list(text), True
        elif isinstance(text, (list, tuple)) and any(isinstance(example, str) for example in text):
            index, example = next((i, e) for i, e in enumerate(text) if not isinstance(e, str))
            raise TypeError(f"text[{index}] must be a str like the batch's other texts, got {type(example).__name__}")
        else:
            raise TypeError(
                "text must be a str or a list of str (pass is_split_into_words=True for lists of words), "
                f"got {type(text).__name__}"
            )
        words, offsets = [], []
        for index, example in enumerate(examples):
            check_utf8_text(example, f"text[{index}]" if is_batched else "text")
            split = split_words(example)
            words.append([word for word, _, _ in split])
            offsets.append([(start, end) for _, start, end in split])
        return words, offsets, examples, is_batched

    # -- __call__ ----------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str] | list[list[str]] | None = None,
        images: Any = None,
        *,
        image_embeds: Any = None,
        tags: list[str] | list[list[str]] | None = None,
        is_split_into_words: bool = False,
        return_tensors: str = "pt",
        truncation: bool = True,
        max_length: int | None = None,
        image_batch_size: int = 32,
        drop_long_spans: bool = True,
    ) -> PromptMNERBatch:
        """Prepare one example or a batch for the model.

        Args:
            text: a raw string (split by [`split_words`]), or with `is_split_into_words=True` a list of words; or a
                list of either for a batch.
            images: one image per example (PIL / path / numpy, `None` for no image). For a single example, the image
                itself or a one-element list.
            image_embeds: precomputed CLIP image embeddings instead of `images`: a `(B, D)` tensor / array, or a list
                of `B` rows or `None`s.
            tags: word-level BIO tags, one list per example, as long as its words; gives `labels`.
            is_split_into_words: whether `text` is pre-split into words (like HF tokenizers).
            return_tensors: `"pt"` (default) or `"np"`.
            truncation, max_length: drop trailing words that do not fit in `max_length` tokens (default: the
                tokenizer's `model_max_length`); whole words only, logged with the count; entities touching dropped
                words are dropped from `labels`.
            image_batch_size: images encoded per CLIP forward pass.
            drop_long_spans: gold entities longer than `max_span_length` words cannot be in the span grid; drop them
                (logged) rather than raise.

        Returns:
            [`PromptMNERBatch`] with `input_ids`, `attention_mask` `(B, T)`; `word_start_index`, `word_end_index`
            `(B, W)` (token index of each word's first / last token, -1 for padding words); `word_mask` `(B, W)` (1 for
            real words, 0 for padding words); `image_embeds` `(B, D)` and `has_image` `(B,)` if images or image
            embeddings were given; `labels` `(B, W, max_span_length)` if tags were given. Attributes `texts`,
            `words`, `word_offsets`, `num_truncated_words`.
        """
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        words, offsets, texts, is_batched = self._normalize_text(text, is_split_into_words)
        batch_size = len(words)
        tag_lists = self._normalize_tags(tags, words, is_batched) if tags is not None else None

        data, num_kept = encode_words(self.tokenizer, words, truncation, max_length)
        num_truncated = [len(example) - kept for example, kept in zip(words, num_kept)]
        if any(num_truncated):
            logger.warning(
                f"Truncation to {max_length or self.tokenizer.model_max_length} tokens dropped {sum(num_truncated)} "
                f"trailing word(s) in {sum(1 for n in num_truncated if n)} example(s)"
            )
        if images is not None and image_embeds is not None:
            raise ValueError("pass either images or image_embeds, not both")
        if images is not None:
            data.update(self._embed_images(images, batch_size, is_batched, image_batch_size))
        elif image_embeds is not None:
            data.update(self._stack_image_embeds(image_embeds, batch_size, is_batched))
        if tag_lists is not None:
            data["labels"] = self._label_grids(tag_lists, num_kept, data["word_start_index"].shape[1], drop_long_spans)
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        return PromptMNERBatch(
            data,
            texts=texts,
            words=[example[:kept] for example, kept in zip(words, num_kept)],
            word_offsets=[example[:kept] for example, kept in zip(offsets, num_kept)],
            num_truncated_words=num_truncated,
        )

    @staticmethod
    def _normalize_tags(tags: Any, words: list[list[str]], is_batched: bool) -> list[list[str]]:
        """One tag list per example, each as long as the example's words."""
        tag_lists = list(tags) if is_batched else [tags]
        if len(tag_lists) != len(words):
            raise ValueError(f"tags has {len(tag_lists)} examples but text has {len(words)}")
        for index, (example_tags, example_words) in enumerate(zip(tag_lists, words)):
            if isinstance(example_tags, str) or not all(isinstance(tag, str) for tag in example_tags):
                raise TypeError(f"tags of example {index} must be a list of str tags")
            if len(example_tags) != len(example_words):
                raise ValueError(
                    f"tags of example {index} has {len(example_tags)} tags but the example has "
                    f"{len(example_words)} words"
                )
        return [list(example_tags) for example_tags in tag_lists]

    def _label_grids(
        self, tag_lists: list[list[str]], num_kept: list[int], max_words: int, drop_long_spans: bool
    ) -> torch.Tensor:
        """`(B, W, max_span_length)` span labels from BIO tags, -100 outside each example's valid spans."""
        labels = torch.full((len(tag_lists), max_words, self.max_span_length), -100, dtype=torch.long)
        num_cut, num_long = 0, 0
        for index, (example_tags, kept) in enumerate(zip(tag_lists, num_kept)):
            try:
                spans = bio_to_spans(example_tags)
            except ValueError as err:
                raise ValueError(f"tags of example {index}: {err}") from err
            in_range = [span for span in spans if span[1] < kept]
            num_cut += len(spans) - len(in_range)
            num_long += sum(1 for start, end, _ in in_range if end - start >= self.max_span_length)
            try:
                grid = span_label_grid(
                    in_range, kept, self.max_span_length, self.label2id, drop_long_spans=drop_long_spans
                )
            except ValueError as err:
                raise ValueError(f"tags of example {index}: {err} (labels are {self.labels})") from err
            if kept:
                labels[index, :kept] = torch.tensor(grid, dtype=torch.long)
        if num_cut:
            logger.warning(f"{num_cut} gold entities touch truncated words and are left out of labels")
        if num_long and drop_long_spans:
            logger.warning(
                f"{num_long} gold entities are longer than max_span_length={self.max_span_length} words and are "
                "left out of labels"
            )
        return labels

    def _embed_images(
        self, images: Any, batch_size: int, is_batched: bool, image_batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Encode the given images; rows without an image are zeros with `has_image=False`."""
        if is_batched:
            if not isinstance(images, (list, tuple)):
                raise TypeError(
                    f"images must be a list with one image (or None) per example, got {type(images).__name__}"
                )
            image_list = list(images)
        else:
            image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(image_list) != batch_size:
            raise ValueError(f"got {len(image_list)} images for {batch_size} text examples")
        if self.image_scorer.vision is None:
            raise ValueError("images were given but this processor has no CLIP image tower (clip_config is None)")
        if not isinstance(image_batch_size, int) or image_batch_size < 1:
            raise ValueError(f"image_batch_size must be an integer >= 1, got {image_batch_size!r}")
        first_index: dict[int, int] = {}  # id(image) -> its first index in the batch, to name a bad one
        for index, image in enumerate(image_list):
            first_index.setdefault(id(image), index)

        def encode(present: list) -> torch.Tensor:
            """Decode and encode `image_batch_size` images at a time; in a batch, a bad one is named `images[i]`."""
            chunks = []
            for start in range(0, len(present), image_batch_size):
                chunk = present[start : start + image_batch_size]
                if is_batched:
                    chunk = [self._load_named(image, f"images[{first_index[id(image)]}]") for image in chunk]
                chunks.append(self.image_scorer.encode_images(chunk, batch_size=image_batch_size))
            return torch.cat(chunks)

        embeds, has_image = embed_present(image_list, encode, self.clip_embed_dim)  # (B, D), (B,)
        return {"image_embeds": embeds, "has_image": has_image}

    def _load_named(self, image: Any, field: str) -> Any:
        """`image` decoded; an error names `field`."""
        with named_errors(field):
            return self.image_scorer.load_image(image)

    def _stack_image_embeds(self, image_embeds: Any, batch_size: int, is_batched: bool) -> dict[str, torch.Tensor]:
        """Stack precomputed embeddings (tensor / array / list with `None`s) into `(B, D)` plus `has_image`."""
        if isinstance(image_embeds, (torch.Tensor, np.ndarray)):
            array = torch.as_tensor(image_embeds, dtype=torch.float32)
            if array.ndim == 1 and not is_batched:
                array = array.unsqueeze(0)
            rows = list(array) if array.ndim == 2 else None
            if rows is None:
                raise ValueError(f"image_embeds must have shape (batch, dim), got {tuple(array.shape)}")
        elif isinstance(image_embeds, (list, tuple)):
            rows = list(image_embeds)
        else:
            raise TypeError(f"image_embeds must be a tensor, an array or a list, got {type(image_embeds).__name__}")
        if len(rows) != batch_size:
            raise ValueError(f"got {len(rows)} image_embeds rows for {batch_size} text examples")
        dims = {torch.as_tensor(row).numel() for row in rows if row is not None}
        expected = self.clip_embed_dim
        if len(dims) > 1 or (expected is not None and dims and dims != {expected}):
            raise ValueError(f"image_embeds rows have sizes {sorted(dims)}, expected {expected or 'one size'}")
        dim = dims.pop() if dims else (expected or 0)
        embeds = torch.zeros(batch_size, dim, dtype=torch.float32)
        has_image = torch.zeros(batch_size, dtype=torch.bool)
        for index, row in enumerate(rows):
            if row is not None:
                embeds[index] = torch.as_tensor(row, dtype=torch.float32).reshape(dim)
                has_image[index] = True
        if not torch.isfinite(embeds).all():
            raise ValueError("image_embeds contains NaN or infinite values")
        return {"image_embeds": embeds, "has_image": has_image}

    # -- post-processing ---------------------------------------------------------------------------------------

    def span_candidates(
        self, logits: torch.Tensor, num_words: Sequence[int] | torch.Tensor, threshold: float = 0.0
    ) -> list[list[tuple[int, int, str, float]]]:
        """Per example, every entity candidate `(start, end, label, score)` before overlap resolution.

        Args:
            logits: `(B, W, L, C)`; cell `[b, i, d, c]` scores words `i..i+d` of example `b` as label `c`
                (`labels[0] == "O"`).
            num_words: the number of words of each example (cells past the last word are ignored).
            threshold: minimum probability of a span's predicted label for it to be a candidate.

        A candidate is a valid span whose argmax label is not `"O"`, scored by that label's probability.
        """
        if logits.ndim != 4 or logits.shape[-1] != len(self.labels):
            raise ValueError(
                f"logits must have shape (batch, words, span lengths, labels={len(self.labels)}), "
                f"got {tuple(logits.shape)}"
            )
        batch, max_words, max_widths, _ = logits.shape
        num_words = torch.as_tensor(num_words, dtype=torch.long).cpu()
        if num_words.shape != (batch,):
            raise ValueError(f"num_words must have one entry per example ({batch}), got shape {tuple(num_words.shape)}")
        if batch and int(num_words.max()) > max_words:
            raise ValueError(f"logits cover {max_words} words but an example has {int(num_words.max())}")
        scores, label_ids = logits.detach().float().softmax(dim=-1).max(dim=-1)  # (B, W, L) each
        scores, label_ids = scores.cpu(), label_ids.cpu()
        keep = valid_span_mask(num_words, max_words, max_widths) & (label_ids != 0) & (scores >= threshold)  # (B, W, L)
        candidates: list[list[tuple[int, int, str, float]]] = [[] for _ in range(batch)]
        for b, i, d in keep.nonzero().tolist():
            candidates[b].append((i, i + d, self.labels[int(label_ids[b, i, d])], float(scores[b, i, d])))
        return candidates

    def decode_word_spans(
        self, logits: torch.Tensor, num_words: Sequence[int] | torch.Tensor, threshold: float = 0.0
    ) -> list[list[tuple[int, int, str, float]]]:
        """Word-level entities from span logits: per example, the non-overlapping `(start, end, label, score)` that
        [`decode_spans`] keeps (best score first) among [`~PromptMNERProcessor.span_candidates`]."""
        return [decode_spans(example) for example in self.span_candidates(logits, num_words, threshold)]

    def post_process(self, outputs: Any, inputs: PromptMNERBatch, threshold: float = 0.0) -> list[list[dict]]:
        """Turn span logits into entities, in the token-classification pipeline's aggregated format.

        Args:
            outputs: the model output (anything with `.logits`) or the logits tensor `(B, W, L, C)`.
            inputs: the [`PromptMNERBatch`] the model was run on (its `word_offsets` and `texts` map words back to
                characters).
            threshold: minimum probability of a span's predicted label for it to be a candidate.

        Returns:
            Per example, a list of `{"entity_group", "score", "word", "start", "end"}` dicts sorted by `start`:
            non-overlapping spans whose argmax label is not `"O"`, picked greedily by probability.
        """
        logits = outputs if isinstance(outputs, torch.Tensor) else getattr(outputs, "logits", None)
        if logits is None and isinstance(outputs, Mapping):
            logits = outputs.get("logits")
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"outputs must be a logits tensor or have .logits, got {type(outputs).__name__}")
        word_offsets = getattr(inputs, "word_offsets", None)
        texts = getattr(inputs, "texts", None)
        if word_offsets is None or texts is None:
            raise TypeError("inputs must be the PromptMNERBatch returned by the processor (it needs word_offsets)")
        if logits.shape[0] != len(word_offsets):
            raise ValueError(f"logits have {logits.shape[0]} examples but inputs have {len(word_offsets)}")
        spans = self.decode_word_spans(logits, [len(offsets) for offsets in word_offsets], threshold)
        return [entity_dicts(example, text, offsets) for example, text, offsets in zip(spans, texts, word_offsets)]


PromptMNERProcessor.register_for_auto_class()
