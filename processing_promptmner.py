"""PromptMNER processor: tweet text + image in, model tensors out; span logits in, entities out.

[`PromptMNERProcessor`] bundles everything that turns a raw example into the inputs of the PromptMNER model:

- the text backbone's **fast tokenizer** (word-aligned through `word_ids()`),
- **CLIP image preprocessing** and a **frozen open_clip image tower**, so an image becomes one L2-normalised
  CLIP image embedding (`image_embeds`); the model scores its prompts against it,
- the **prompt vocabulary and template** (`"an image of {}"`), whose CLIP text embeddings the model keeps as its
  discrete prompt embeddings ([`PromptMNERProcessor.encode_prompts`]),
- the **span label set** (`labels[0] == "O"`) and the longest span in words (`max_span_length`).

A saved processor is self-contained: `processor_config.json`, the tokenizer files and `clip_vision.safetensors`
(the image tower's weights; safetensors only, nothing is unpickled when loading).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

try:
    from .clip_promptmner import (
        IMAGE_INTERPOLATIONS,
        IMAGE_RESIZE_MODES,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        build_clip,
        check_clip_config,
        clip_text_tokenizer,
        clip_vision_tower,
        create_open_clip,
        embed_in_batches,
        embed_present,
        first_parameter,
        has_weights,
        load_clip_vision,
        load_image,
        resolve_clip_vision_file,
        resolve_saved_file,
        save_clip_vision,
    )
    from .configuration_promptmner import DEFAULT_LABELS
    from .prompt_vocabularies import TASK_LABELS, load_vocabulary, save_vocabulary_embeds
    from .span_utils import bio_to_spans, decode_spans, entity_dicts, span_label_grid, valid_span_mask
    from .tweet_words import join_words, split_words
    from .word_alignment import check_tokenizer, encode_words, load_tokenizer
except ImportError:
    from clip_promptmner import (
        IMAGE_INTERPOLATIONS,
        IMAGE_RESIZE_MODES,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        build_clip,
        check_clip_config,
        clip_text_tokenizer,
        clip_vision_tower,
        create_open_clip,
        embed_in_batches,
        embed_present,
        first_parameter,
        has_weights,
        load_clip_vision,
        load_image,
        resolve_clip_vision_file,
        resolve_saved_file,
        save_clip_vision,
    )
    from configuration_promptmner import DEFAULT_LABELS
    from prompt_vocabularies import TASK_LABELS, load_vocabulary, save_vocabulary_embeds
    from span_utils import bio_to_spans, decode_spans, entity_dicts, span_label_grid, valid_span_mask
    from tweet_words import join_words, split_words
    from word_alignment import check_tokenizer, encode_words, load_tokenizer


logger = logging.get_logger(__name__)

# The paper's "task labels" vocabulary.
DEFAULT_PROMPT_VOCABULARY = TASK_LABELS
DEFAULT_PROMPT_TEMPLATE = "an image of {}"
# Runtime objects kept out of `to_dict` (they are not JSON and may be large).
_RUNTIME_ATTRIBUTES = ("_clip_vision", "_clip_model", "_image_transform", "_clip_text_tokenizer", "_vocabulary_embeds")


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


# What a saved processor needs each file for; all are checked before loading, so no default stands in for one.
SAVED_PROCESSOR_FILES = {
    "processor_config.json": "its labels, span length, CLIP preprocessing and prompts",
    "tokenizer.json": "its fast tokenizer",
    "tokenizer_config.json": "its tokenizer settings",
}


class PromptMNERProcessor(ProcessorMixin):
    r"""
    Processor for PromptMNER: a fast text tokenizer, CLIP image preprocessing with a frozen open_clip image tower,
    the prompt vocabulary and template, and the span label set.

    Build it from open_clip with [`~PromptMNERProcessor.from_clip`]; save / load it with `save_pretrained` /
    `from_pretrained` (the image tower's weights go to `clip_vision.safetensors`).

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]):
            The text backbone's fast tokenizer. Byte-level BPE tokenizers (RoBERTa) need `add_prefix_space=True`.
        clip_config (`dict`, *optional*):
            The open_clip model config (`open_clip.get_model_config(name)`: `embed_dim`, `vision_cfg`,
            `text_cfg`, ...). `None` makes a text-only processor (no image encoding).
        image_size (`int` or `list[int]`, defaults to 224): CLIP input resolution.
        image_mean (`list[float]`), image_std (`list[float]`): CLIP normalisation (OpenAI CLIP's by default).
        image_interpolation (`str`, defaults to `"bicubic"`): `"bicubic"` or `"bilinear"`.
        image_resize_mode (`str`, defaults to `"shortest"`): open_clip's inference resize mode: `"shortest"`
            (resize shortest side + center crop), `"longest"` (resize longest side + pad) or `"squash"`.
        image_fill_color (`int`, defaults to 0): padding value of the `"longest"` resize mode.
        prompt_template (`str`, defaults to `"an image of {}"`): prompt with one `{}` for the vocabulary word.
        prompt_vocabulary (`list[str]`, *optional*): prompt words; defaults to the task labels
            `["person", "location", "organization", "miscellaneous"]`.
        labels (`list[str]`, defaults to `["O", "PER", "LOC", "ORG", "MISC"]`): span labels, `labels[0] == "O"`.
        max_span_length (`int`, defaults to 8): longest span in words that the model scores.
        clip_logit_scale (`float`, defaults to 100.0): CLIP's temperature `1/tau` (`logit_scale.exp()`).
        clip_model_name (`str`, *optional*), clip_pretrained (`str`, *optional*): where the CLIP weights came from
            (open_clip model name and pretrained tag); informative, and picks the CLIP text tokenizer.
        clip_model (`torch.nn.Module`, *optional*): a live open_clip model (not saved). Gives the image tower's
            weights and the text tower that [`~PromptMNERProcessor.encode_prompts`] needs. Without it, the image
            tower is built on the meta device from `clip_config` and gets its weights in `from_pretrained`.
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
        self.clip_config = copy.deepcopy(dict(clip_config)) if clip_config is not None else None
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.image_mean = [float(value) for value in image_mean]
        self.image_std = [float(value) for value in image_std]
        self.image_interpolation = image_interpolation
        self.image_resize_mode = image_resize_mode
        self.image_fill_color = image_fill_color
        self.prompt_template = prompt_template
        self.prompt_vocabulary = list(DEFAULT_PROMPT_VOCABULARY if prompt_vocabulary is None else prompt_vocabulary)
        self.labels = list(labels)
        self.max_span_length = max_span_length
        self.clip_logit_scale = float(clip_logit_scale)
        self.clip_model_name = clip_model_name
        self.clip_pretrained = clip_pretrained
        self._validate()
        self._clip_model = clip_model
        self._clip_vision = clip_vision_tower(self.clip_config, clip_model)
        self._image_transform = None
        self._clip_text_tokenizer = None
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
        if not self.clip_logit_scale > 0:
            raise ValueError(f"clip_logit_scale must be positive, got {self.clip_logit_scale!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"image_mean and image_std must have 3 values (std > 0), got {self.image_mean} and {self.image_std}"
            )
        if self.image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image_interpolation must be one of {IMAGE_INTERPOLATIONS}, got {self.image_interpolation!r}"
            )
        if self.image_resize_mode not in IMAGE_RESIZE_MODES:
            raise ValueError(f"image_resize_mode must be one of {IMAGE_RESIZE_MODES}, got {self.image_resize_mode!r}")
        if self.clip_config is not None:
            check_clip_config(self.clip_config)

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
        if clip_config is not None:
            if clip_pretrained is not None:
                raise ValueError(
                    f"clip_pretrained={clip_pretrained!r} needs a registered clip_model_name; an explicit clip_config "
                    "builds a randomly initialised CLIP, pass clip_pretrained=None"
                )
            check_clip_config(clip_config)
            config = copy.deepcopy(dict(clip_config))
            model = build_clip(config)
        else:
            config, model = create_open_clip(clip_model_name, clip_pretrained, cache_dir)
        model.eval().requires_grad_(False)
        preprocess = open_clip.get_model_preprocess_cfg(model)
        init_kwargs = {
            "image_size": preprocess.get("size", getattr(model.visual, "image_size", 224)),
            "image_mean": preprocess.get("mean", OPENAI_CLIP_MEAN),
            "image_std": preprocess.get("std", OPENAI_CLIP_STD),
            "image_interpolation": preprocess.get("interpolation", "bicubic"),
            "image_resize_mode": preprocess.get("resize_mode", "shortest"),
            "image_fill_color": preprocess.get("fill_color", 0),
            "clip_logit_scale": float(model.logit_scale.detach().exp()),
            "clip_model_name": clip_model_name if clip_config is None else None,
            "clip_pretrained": clip_pretrained,
        }
        init_kwargs.update(kwargs)
        return cls(tokenizer, clip_config=config, clip_model=model, **init_kwargs)

    # -- serialisation -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """`ProcessorMixin.to_dict` without the runtime objects (CLIP modules, transforms), which are not JSON."""
        runtime = {name: self.__dict__.pop(name) for name in _RUNTIME_ATTRIBUTES if name in self.__dict__}
        try:
            return super().to_dict()
        finally:
            self.__dict__.update(runtime)

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
        if self._clip_vision is not None:
            self._require_clip_weights()  # before writing anything
        files = super().save_pretrained(save_directory, push_to_hub=False, **kwargs)
        if self._clip_vision is not None:
            files.append(save_clip_vision(self._clip_vision, save_directory))
        if self._clip_model is not None:  # CLIP text embeddings of the vocabulary, for explanations
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
        processor rebuilt in their place would silently read text and images differently from training).
        """
        hub_kwargs = dict(cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only,
                          token=token, revision=revision)  # fmt: skip
        for filename, needed_for in SAVED_PROCESSOR_FILES.items():
            resolve_saved_file(
                pretrained_model_name_or_path, filename, needed_for, subfolder=kwargs.get("subfolder", ""), **hub_kwargs
            )
        processor = super().from_pretrained(
            pretrained_model_name_or_path,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            revision=revision,
            **kwargs,
        )
        if processor.clip_config is not None:
            weights_file = resolve_clip_vision_file(
                pretrained_model_name_or_path, subfolder=kwargs.get("subfolder", ""), **hub_kwargs
            )
            processor.load_clip_vision_weights(weights_file)
        return processor

    def load_clip_vision_weights(self, weights_file: str | os.PathLike) -> None:
        """Load the CLIP image tower from a safetensors file (strict: every tensor must match `clip_config`).

        The weights go into a fresh tower (a live `clip_model` is never modified); the processor then forgets its
        `clip_model`, whose text tower would no longer belong to the same CLIP.
        """
        if self.clip_config is None:
            raise ValueError("this processor has no clip_config, so it has no CLIP image tower to load weights into")
        self._clip_vision = load_clip_vision(self.clip_config, weights_file, self._clip_vision)
        self._clip_model = None

    # -- properties --------------------------------------------------------------------------------------------

    @property
    def label2id(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def clip_embed_dim(self) -> int | None:
        """Width of CLIP's joint embedding space (`image_embeds` and prompt embeddings)."""
        return None if self.clip_config is None else int(self.clip_config["embed_dim"])

    @property
    def clip_vision(self) -> torch.nn.Module | None:
        """The frozen CLIP image tower (`None` for a text-only processor)."""
        return self._clip_vision

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids", "attention_mask", "word_start_index", "word_end_index", "word_mask", "image_embeds", "has_image"
        ]

    def to(self, device: str | torch.device) -> PromptMNERProcessor:
        """Move the CLIP modules to `device` (image / prompt encoding then runs there); returns `self`."""
        for module in (self._clip_model, self._clip_vision):
            if module is not None:
                module.to(device)
        return self

    # -- images ------------------------------------------------------------------------------------------------

    load_image = staticmethod(load_image)

    @property
    def image_transform(self):
        """open_clip's inference transform (resize, crop / pad, to tensor, normalise) for these settings."""
        if self._image_transform is None:
            size = tuple(self.image_size) if isinstance(self.image_size, list) else self.image_size
            self._image_transform = open_clip.image_transform(
                size,
                is_train=False,
                mean=tuple(self.image_mean),
                std=tuple(self.image_std),
                resize_mode=self.image_resize_mode,
                interpolation=self.image_interpolation,
                fill_color=self.image_fill_color,
            )
        return self._image_transform

    def _require_clip_weights(self) -> torch.nn.Module:
        if self._clip_vision is None:
            raise ValueError("this processor has no CLIP image tower (clip_config is None): it cannot encode images")
        if not has_weights(self._clip_vision):
            raise ValueError(
                "the CLIP image tower has no weights: build the processor with PromptMNERProcessor.from_clip(...) "
                "or load it with from_pretrained(...) (or call load_clip_vision_weights(file))"
            )
        return self._clip_vision

    def pixel_values(self, images: Iterable[Any]) -> torch.Tensor:
        """Load and preprocess images into a `(N, 3, H, W)` float tensor."""
        return torch.stack([self.image_transform(self.load_image(image)) for image in images])

    def encode_images(self, images: Any, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised CLIP image embeddings `(N, D)`, float32 on CPU.

        `images` is a list of images (PIL / path / numpy; see `load_image`) or a single one. Images are loaded and
        encoded `batch_size` at a time on the image tower's device, in eval mode, under `torch.inference_mode()`.
        The result is an ordinary tensor (usable in autograd graphs).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        for index, image in enumerate(images):
            if image is None:
                raise ValueError(f"images[{index}] is None; pass examples without an image through __call__")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        vision = self._require_clip_weights()
        parameter = first_parameter(vision)

        def embed(batch: list) -> torch.Tensor:
            return vision(self.pixel_values(batch).to(device=parameter.device, dtype=parameter.dtype))

        embeds = embed_in_batches(vision, images, batch_size, embed)
        return embeds if embeds is not None else torch.zeros(0, self.clip_embed_dim, dtype=torch.float32)

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
        if self._clip_model is None:
            raise ValueError(
                "encode_prompts needs the CLIP text tower, but this processor has only the image tower (a saved "
                "processor keeps only that). Build it with PromptMNERProcessor.from_clip(...) to encode prompts; "
                "a trained model already stores its prompt embeddings."
            )
        prompts = self.build_prompts(vocabulary)
        model = self._clip_model
        device = first_parameter(model).device
        if self._clip_text_tokenizer is None:
            self._clip_text_tokenizer = clip_text_tokenizer(self.clip_model_name, self.clip_config)
        tokenizer = self._clip_text_tokenizer
        return embed_in_batches(model, prompts, batch_size, lambda batch: model.encode_text(tokenizer(batch).to(device)))

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
            embeddings were given; `labels` `(B, W, max_span_length)` if tags were given. Attributes `texts`, `words`, `word_offsets`, `num_truncated_words`.
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
        if self._clip_vision is None:
            raise ValueError("images were given but this processor has no CLIP image tower (clip_config is None)")
        embeds, has_image = embed_present(
            image_list, lambda present: self.encode_images(present, batch_size=image_batch_size), self.clip_embed_dim
        )
        return {"image_embeds": embeds, "has_image": has_image}

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
