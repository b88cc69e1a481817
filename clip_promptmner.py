"""The CLIP side of PromptMNER: images in, L2-normalised CLIP embeddings out, with a frozen open_clip model.

- [`load_image`]: any PIL mode, file or numpy array as an RGB `PIL.Image`, never substituting another image;
- [`CLIPImageScorer`]: the frozen CLIP a `PromptMNERProcessor` holds: its open_clip config, its image
  preprocessing, its image tower (weights in `clip_vision.safetensors`) and, when built from a live open_clip model,
  its text tower; it encodes images ([`CLIPImageScorer.encode_images`]) and prompt texts
  ([`CLIPImageScorer.encode_texts`]). The model scores the prompts against the image embeddings;
- the towers underneath: config checks ([`check_clip_config`]), building ([`build_clip`], [`create_open_clip`],
  [`clip_vision_tower`]), the weight file ([`save_clip_vision`], [`resolve_clip_vision_file`],
  [`load_clip_vision`]), batched inference ([`embed_in_batches`]) and [`embed_present`], which encodes the images
  of a batch that are present and gives zeros plus `has_image=False` for the rest.

Ships with every model as remote code, next to `processing_promptmner.py`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CLIP_VISION_WEIGHTS_NAME = "clip_vision.safetensors"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_INTERPOLATIONS = ("bicubic", "bilinear")
IMAGE_RESIZE_MODES = ("shortest", "longest", "squash")

# ----------------------------------------------------------------------------------------------------------------
# Image decoding
# ----------------------------------------------------------------------------------------------------------------

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten an image with transparency onto a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_uint8(array: np.ndarray, *, source: str) -> np.ndarray:
    """Scale an image array to uint8 by its dtype's range (uint16: /257; float: [0, 1] -> [0, 255])."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: float image contains NaN or infinite values")
        low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{source}: float image values must lie in [0, 1], got range [{low}, {high}]")
        return np.round(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        if low < 0 or high > 255:
            raise ValueError(
                f"{source}: {array.dtype} image values must lie in [0, 255] (use uint16 for 16-bit images), "
                f"got range [{low}, {high}]"
            )
        return array.astype(np.uint8)
    raise ValueError(f"{source}: unsupported image dtype {array.dtype}")


def _check_channels_last(array: np.ndarray, *, source: str) -> None:
    """Refuse arrays that look channels-first (C, H, W): `(3, 224, 224)` plainly, and `(3, 40, 4)` as ambiguous,
    since read as HxWxC it would be a 3-pixel-high image with more channels than rows."""
    if array.ndim != 3 or array.shape[0] not in (3, 4):
        return
    height, width, channels = array.shape
    hint = "pass an HxWxC array (for a channels-first array: array.transpose(1, 2, 0))"
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"{source}: shape {array.shape} looks channels-first (C, H, W); {hint}")
    if channels > height:
        raise ValueError(
            f"{source}: shape {array.shape} is ambiguous: channels-first ({height} channels of {width}x{channels}) or "
            f"a {height}x{width} image with {channels} channels; {hint}, or a PIL image"
        )


def _array_to_image(array: np.ndarray, *, source: str = "numpy image") -> Image.Image:
    """Turn an HxW or HxWxC (C in 1..4) array into a PIL image (L, LA, RGB or RGBA)."""
    _check_channels_last(array, source=source)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)):
        raise ValueError(f"{source}: expected an HxW or HxWxC array with C in 1..4, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{source}: image is empty, shape {array.shape}")
    # uint8 HxW / HxWx2 / HxWx3 / HxWx4 arrays become L / LA / RGB / RGBA images.
    return Image.fromarray(np.ascontiguousarray(_to_uint8(np.asarray(array), source=source)))


def _high_bit_depth_to_uint8(image: Image.Image, *, source: str) -> np.ndarray:
    """Scale an `I;16*`, `I` or `F` image to uint8 without PIL's clipping.

    `I;16*` is 16-bit by definition (divide by 257). `I` (32-bit int) and `F` (float) have no intrinsic range:
    `I` is read as 8-bit if all values fit in [0, 255] and as 16-bit if they fit in [0, 65535]; `F` as [0, 1]
    if it fits, else [0, 255]; anything else is stretched linearly from its [min, max].
    """
    array = np.asarray(image).astype(np.float64)
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if image.mode.startswith("I;16"):
        scale, offset = 65535.0, 0.0
    elif image.mode == "I" and low >= 0 and high <= 255:
        scale, offset = 255.0, 0.0
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scale, offset = 65535.0, 0.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scale, offset = 1.0, 0.0
    elif image.mode == "F" and low >= 0 and high <= 255:
        scale, offset = 255.0, 0.0
    else:
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: {image.mode} image contains NaN or infinite values")
        scale, offset = max(high - low, 1e-12), low
    return np.round(np.clip((array - offset) / scale, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pil_to_rgb(image: Image.Image, *, source: str) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white, high bit depths are rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_bit_depth_to_uint8(image, source=source)).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"{source}: cannot convert PIL mode {mode!r} to RGB: {err}") from err


def _decoded(image: Image.Image, *, source: str) -> Image.Image:
    """Decode a lazily opened PIL image now, so that a truncated or closed one fails here, naming its file."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, AttributeError) as err:
        reason = "the image was closed" if "closed" in str(err) else f"{type(err).__name__}: {err}"
        raise ValueError(f"Cannot decode {source}: {reason}") from err
    return image


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def image_file_path(image: str | os.PathLike) -> Path:
    """The `Path` of an image given as a path, refusing an empty one and a URL (URLs are never fetched; `Path` would
    fold `http://host/a.png` into the path `http:/host/a.png`)."""
    text = os.fspath(image)
    if not str(text).strip():
        raise ValueError(f"empty image path {text!r}: give a file path, or None for no image")
    if isinstance(text, str) and _URL.match(text):
        raise ValueError(
            f"image {text!r} is a URL: URLs are not fetched; download the image and pass its file path (or a PIL image)"
        )
    return Path(text)


def check_image_file(path: Path) -> None:
    """Raise `FileNotFoundError` (or `ValueError` for a folder) naming `path` unless it is a regular file."""
    if not path.exists():
        raise FileNotFoundError(f"Image file not found: {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"Cannot read image {str(path)!r}: not a regular file")


def _open_image_file(path: Path) -> Image.Image:
    """Open and fully decode an image file, applying its EXIF orientation; errors name the file."""
    check_image_file(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image is opened:
                image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read image file {str(path)!r}: {type(err).__name__}: {err}") from err
    return image


def load_image(image: Image.Image | str | os.PathLike | np.ndarray) -> Image.Image:
    """Load one image as an RGB `PIL.Image`, never substituting another image.

    Accepts a `PIL.Image` (any mode), a file path (`str` / `Path`), or a numpy array of shape HxW, HxWx1,
    HxWx2 (gray + alpha), HxWx3 or HxWx4 (RGBA) with dtype uint8, uint16 (16-bit, scaled by 1/257), bool, other
    integers within [0, 255], or float within [0, 1].

    Conversions: images with transparency (RGBA, LA, PA, and P with a transparency entry) are composited on a
    **white** background (what a viewer shows; dropping alpha would expose arbitrary colours, often black, under
    transparent pixels). 16-bit images (`I;16`, `I;16B`, ...) are scaled to 8 bits instead of clipped; `I` and `F`
    images are scaled by their value range (see `_high_bit_depth_to_uint8`). CMYK, L, 1, P, YCbCr, ... use PIL's
    conversion. File images are rotated by their EXIF orientation; animated images give their first frame.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file cannot be decoded (message names the file and the reason), the array is invalid, or the
            path is a URL (never fetched).
        TypeError: unsupported input type.
    """
    if isinstance(image, Image.Image):
        source = f"PIL image {image.filename!r}" if getattr(image, "filename", "") else f"PIL image (mode {image.mode})"
        return _pil_to_rgb(_decoded(image, source=source), source=source)
    if isinstance(image, (str, os.PathLike)):
        path = image_file_path(image)
        return _pil_to_rgb(_open_image_file(path), source=f"image file {str(path)!r}")
    if isinstance(image, np.ndarray):
        return _pil_to_rgb(_array_to_image(image), source="numpy image")
    raise TypeError(f"image must be a PIL.Image, a file path or a numpy array, got {type(image).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# The frozen open_clip towers
# ----------------------------------------------------------------------------------------------------------------


def check_clip_config(clip_config: Any) -> None:
    """Raise `ValueError` unless `clip_config` is a two-tower open_clip model config dict."""
    if not isinstance(clip_config, Mapping):
        raise ValueError(f"clip_config must be an open_clip model config dict, got {type(clip_config).__name__}")
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in clip_config]
    if missing:
        raise ValueError(f"clip_config is missing {missing}; expected the dict of open_clip.get_model_config(name)")
    if "multimodal_cfg" in clip_config:
        raise ValueError("clip_config describes a CoCa model; only CLIP-style (two tower) models are supported")


def build_clip(clip_config: Mapping[str, Any]) -> torch.nn.Module:
    """Instantiate an open_clip `CLIP` (or `CustomTextCLIP` for `custom_text` / HF text configs) from its config."""
    config = copy.deepcopy(dict(clip_config))
    custom_text = bool(config.pop("custom_text", False)) or "hf_model_name" in config.get("text_cfg", {})
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return model_class(**config)


def embed_in_batches(module: torch.nn.Module, items: Sequence[Any], batch_size: int, embed) -> torch.Tensor | None:
    """`embed` over `items` `batch_size` at a time with `module` in eval mode under inference mode: the
    L2-normalised rows as an ordinary float32 CPU tensor `(N, D)` (None for no items). Restores the module's mode."""
    chunks = []
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, len(items), batch_size):
                chunks.append(F.normalize(embed(items[begin : begin + batch_size]).float(), dim=-1).cpu())
    finally:
        module.train(was_training)
    return torch.cat(chunks).clone() if chunks else None  # clone: a normal tensor, usable in autograd graphs


def first_parameter(module: torch.nn.Module) -> torch.Tensor:
    """The first parameter of `module` (its device and dtype are where inputs must go)."""
    for tensor in module.parameters():
        return tensor
    raise ValueError("the CLIP image tower has no parameters")


def create_open_clip(
    clip_model_name: str | None, clip_pretrained: str | None, cache_dir: str | None
) -> tuple[dict, torch.nn.Module]:
    """Create a registered open_clip model and return `(config it was built from, model)`."""
    if not clip_model_name:
        raise ValueError("from_clip needs clip_model_name (a registered open_clip model) or clip_config")
    config = open_clip.get_model_config(clip_model_name)
    if config is None:
        raise ValueError(
            f"clip_model_name {clip_model_name!r} is not a registered open_clip model; see open_clip.list_models()"
        )
    force_quick_gelu = False
    if clip_pretrained is not None:
        tag_config = open_clip.get_pretrained_cfg(clip_model_name, clip_pretrained) or {}
        # OpenAI's weights were trained with QuickGELU; the plain "RN50" config says GELU.
        force_quick_gelu = bool(tag_config.get("quick_gelu", False)) and not config.get("quick_gelu", False)
    if force_quick_gelu:
        config["quick_gelu"] = True
    model, _, _ = open_clip.create_model_and_transforms(
        clip_model_name, pretrained=clip_pretrained, force_quick_gelu=force_quick_gelu, cache_dir=cache_dir
    )
    return config, model


def clip_vision_tower(clip_config: Mapping[str, Any] | None, clip_model: torch.nn.Module | None):
    """The image tower: the live model's, or one built on the meta device (weights come from a file later).

    Returns `None` for a text-only processor (`clip_config is None`).
    """
    if clip_model is not None:
        if clip_config is None:
            raise ValueError("clip_model needs its clip_config (the open_clip model config) to be saved")
        if not isinstance(getattr(clip_model, "visual", None), torch.nn.Module):
            raise ValueError(
                f"clip_model must be an open_clip model with a .visual tower, got {type(clip_model).__name__}"
            )
        return clip_model.visual
    if clip_config is None:
        return None
    with torch.device("meta"):
        return build_clip(clip_config).visual


def clip_text_tokenizer(clip_model_name: str | None, clip_config: Mapping[str, Any]):
    """open_clip's tokenizer for the model: its registered one, else the bundled BPE `SimpleTokenizer`."""
    if clip_model_name and clip_model_name in open_clip.list_models():
        return open_clip.get_tokenizer(clip_model_name)
    return open_clip.SimpleTokenizer(context_length=clip_config["text_cfg"].get("context_length", 77))


def has_weights(vision: torch.nn.Module) -> bool:
    """Whether the image tower's parameters hold values (not built on the meta device and never loaded)."""
    return not any(tensor.is_meta for tensor in vision.parameters())


def save_clip_vision(vision: torch.nn.Module, save_directory: str | os.PathLike) -> str:
    """Write the image tower's state dict to `save_directory/clip_vision.safetensors`; return the file path."""
    weights_file = os.path.join(save_directory, CLIP_VISION_WEIGHTS_NAME)
    state_dict = {name: tensor.detach().cpu().clone().contiguous() for name, tensor in vision.state_dict().items()}
    save_file(state_dict, weights_file, metadata={"format": "pt"})
    return weights_file


def resolve_saved_file(
    pretrained_model_name_or_path: str | os.PathLike, filename: str, needed_for: str, *, subfolder: str = "",
    **hub_kwargs,
) -> str:
    """Path of `filename` in a saved local folder, or downloaded / cached from a Hub repo; a missing file is a
    `FileNotFoundError` naming it and what it is `needed_for`."""
    path = str(pretrained_model_name_or_path)
    if os.path.isfile(path):  # a path to processor_config.json
        path = os.path.dirname(path)
    if os.path.isdir(path):
        file = os.path.join(path, subfolder or "", filename)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file!r} not found: a saved PromptMNER processor needs it for {needed_for}")
        return file
    return hf_hub_download(path, filename, subfolder=subfolder or None, **hub_kwargs)


def resolve_clip_vision_file(
    pretrained_model_name_or_path: str | os.PathLike, *, subfolder: str = "", **hub_kwargs
) -> str:
    """Path of `clip_vision.safetensors` in a local folder, or downloaded / cached from a Hub repo."""
    return resolve_saved_file(
        pretrained_model_name_or_path, CLIP_VISION_WEIGHTS_NAME, "the CLIP image tower weights", subfolder=subfolder,
        **hub_kwargs,
    )  # fmt: skip


def load_clip_vision(
    clip_config: Mapping[str, Any], weights_file: str | os.PathLike, vision: torch.nn.Module | None = None
) -> torch.nn.Module:
    """The image tower of `clip_config` with the weights of a safetensors file (strict), frozen in eval mode.

    Args:
        clip_config (`Mapping`): the open_clip model config the weights belong to.
        weights_file (`str` or `os.PathLike`): the `clip_vision.safetensors` file.
        vision (`torch.nn.Module`, *optional*): a weightless (meta) tower to load into; a tower that holds weights
            (possibly user-owned) is never written into: the weights then go into a fresh one.
    """
    try:
        state_dict = load_file(str(weights_file), device="cpu")
    except (OSError, SafetensorError) as err:
        raise ValueError(f"Cannot read CLIP image tower weights {str(weights_file)!r}: {err}") from err
    if vision is None or not all(tensor.is_meta for tensor in vision.state_dict().values()):
        with torch.device("meta"):
            vision = build_clip(clip_config).visual
    try:
        vision.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{str(weights_file)!r} does not match clip_config: {err}") from err
    if any(tensor.is_meta for tensor in [*vision.parameters(), *vision.buffers()]):
        # Non-persistent buffers are not in the file: build a real tower so they get their proper values.
        vision = build_clip(clip_config).visual
        vision.load_state_dict(state_dict, strict=True)
    return vision.eval().requires_grad_(False)


def embed_present(
    images: Sequence[Any | None], encode: Callable[[list[Any]], torch.Tensor], dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings of the images that are present; zeros and `has_image=False` for the rest.

    Args:
        images (`Sequence`): one loaded image (or anything `encode` takes) or `None` per example.
        encode (`Callable`): `encode(list_of_images) -> (N, D)` tensor of their embeddings.
        dim (`int`): `D`, the embedding width (used when no image is present).

    Returns:
        `(image_embeds, has_image)`: float32 `(B, D)` and bool `(B,)`, on CPU. Each distinct image object (by
        identity) is encoded once.
    """
    slots: dict[int, int] = {}  # id(image) -> row of `distinct`
    distinct = []
    for image in images:
        if image is not None and id(image) not in slots:
            slots[id(image)] = len(distinct)
            distinct.append(image)
    image_embeds = torch.zeros(len(images), dim, dtype=torch.float32)
    has_image = torch.tensor([image is not None for image in images], dtype=torch.bool)
    if distinct:
        encoded = encode(distinct).detach().to("cpu", torch.float32)  # (N, D)
        rows = [slots[id(image)] for image in images if image is not None]
        image_embeds[has_image] = encoded[rows]
    return image_embeds, has_image


# ----------------------------------------------------------------------------------------------------------------
# The frozen CLIP of a processor
# ----------------------------------------------------------------------------------------------------------------


class CLIPImageScorer:
    r"""
    The frozen CLIP of PromptMNER: image preprocessing, the image tower and, when built from a live open_clip model,
    the text tower. A `PromptMNERProcessor` holds one; `clip_config=None` makes a scorer without towers (a text-only
    processor), which keeps its settings but encodes nothing.

    Args:
        clip_config (`dict`, *optional*): the open_clip model config (`open_clip.get_model_config(name)`:
            `embed_dim`, `vision_cfg`, `text_cfg`, ...).
        image_size (`int` or `list[int]`, defaults to 224): CLIP input resolution.
        image_mean (`list[float]`), image_std (`list[float]`): CLIP normalisation (OpenAI CLIP's by default).
        image_interpolation (`str`, defaults to `"bicubic"`): `"bicubic"` or `"bilinear"`.
        image_resize_mode (`str`, defaults to `"shortest"`): open_clip's inference resize mode: `"shortest"`
            (resize shortest side + center crop), `"longest"` (resize longest side + pad) or `"squash"`.
        image_fill_color (`int`, defaults to 0): padding value of the `"longest"` resize mode.
        clip_logit_scale (`float`, defaults to 100.0): CLIP's temperature `1/tau` (`logit_scale.exp()`).
        clip_model_name (`str`, *optional*), clip_pretrained (`str`, *optional*): where the weights came from
            (open_clip model name and pretrained tag); informative, and picks the CLIP text tokenizer.
        clip_model (`torch.nn.Module`, *optional*): a live open_clip model (not saved): gives the image tower's
            weights and the text tower that [`~CLIPImageScorer.encode_texts`] needs. Without it, the image tower is
            built on the meta device from `clip_config` and gets its weights from [`~CLIPImageScorer.load_weights`].
    """

    # What `settings()` saves (a processor's `processor_config.json` holds these keys).
    SETTINGS = ("clip_config", "image_size", "image_mean", "image_std", "image_interpolation", "image_resize_mode",
                "image_fill_color", "clip_logit_scale", "clip_model_name", "clip_pretrained")  # fmt: skip

    def __init__(
        self,
        clip_config: Mapping[str, Any] | None = None,
        image_size: int | Sequence[int] = 224,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        image_interpolation: str = "bicubic",
        image_resize_mode: str = "shortest",
        image_fill_color: int = 0,
        clip_logit_scale: float = 100.0,
        clip_model_name: str | None = None,
        clip_pretrained: str | None = None,
        clip_model: torch.nn.Module | None = None,
    ):
        self.clip_config = copy.deepcopy(dict(clip_config)) if clip_config is not None else None
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.image_mean = [float(value) for value in image_mean]
        self.image_std = [float(value) for value in image_std]
        self.image_interpolation = image_interpolation
        self.image_resize_mode = image_resize_mode
        self.image_fill_color = image_fill_color
        self.clip_logit_scale = float(clip_logit_scale)
        self.clip_model_name = clip_model_name
        self.clip_pretrained = clip_pretrained
        self._validate()
        self.clip_model = clip_model
        self.vision = clip_vision_tower(self.clip_config, clip_model)  # None without clip_config
        self._image_transform = None
        self._text_tokenizer = None

    def _validate(self) -> None:
        """Raise `ValueError` naming the first invalid setting."""
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
    def from_open_clip(
        cls,
        clip_model_name: str | None = "RN50",
        clip_pretrained: str | None = "openai",
        clip_config: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> CLIPImageScorer:
        """A scorer around a live open_clip model: a registered `clip_model_name` with its `clip_pretrained` weights
        (downloaded by open_clip; `None`: random), or an explicit `clip_config` (random weights). The preprocessing
        and the temperature are the model's own."""
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
        return cls(
            config,
            image_size=preprocess.get("size", getattr(model.visual, "image_size", 224)),
            image_mean=preprocess.get("mean", OPENAI_CLIP_MEAN),
            image_std=preprocess.get("std", OPENAI_CLIP_STD),
            image_interpolation=preprocess.get("interpolation", "bicubic"),
            image_resize_mode=preprocess.get("resize_mode", "shortest"),
            image_fill_color=preprocess.get("fill_color", 0),
            clip_logit_scale=float(model.logit_scale.detach().exp()),
            clip_model_name=clip_model_name if clip_config is None else None,
            clip_pretrained=clip_pretrained,
            clip_model=model,
        )

    # -- what is saved -----------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The JSON settings that rebuild this scorer (without its weights): `CLIPImageScorer(**settings)`."""
        return copy.deepcopy({name: getattr(self, name) for name in self.SETTINGS})

    def save_weights(self, save_directory: str | os.PathLike) -> str:
        """Write the image tower's weights to `save_directory/clip_vision.safetensors`; return the file path."""
        return save_clip_vision(self.require_weights(), save_directory)

    def load_weights(self, weights_file: str | os.PathLike) -> None:
        """Load the image tower from a safetensors file (strict: every tensor must match `clip_config`).

        The weights go into a fresh tower (a live `clip_model` is never modified); the scorer then forgets its
        `clip_model`, whose text tower would no longer belong to the same CLIP.
        """
        if self.clip_config is None:
            raise ValueError("this processor has no clip_config, so it has no CLIP image tower to load weights into")
        self.vision = load_clip_vision(self.clip_config, weights_file, self.vision)
        self.clip_model = None

    def fingerprint(self) -> str:
        """A hash of what turns an image into an embedding: the image tower's weights and the preprocessing."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.require_weights().state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(json.dumps([self.image_size, self.image_mean, self.image_std, self.image_interpolation,
                                  self.image_resize_mode]).encode())  # fmt: skip
        return digest.hexdigest()

    # -- properties --------------------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int | None:
        """Width of CLIP's joint embedding space (image and prompt embeddings); None without towers."""
        return None if self.clip_config is None else int(self.clip_config["embed_dim"])

    @property
    def has_text_tower(self) -> bool:
        """Whether prompt texts can be encoded (a scorer built from a live open_clip model; a saved one keeps only
        the image tower)."""
        return self.clip_model is not None

    def to(self, device: str | torch.device) -> CLIPImageScorer:
        """Move the towers to `device` (encoding then runs there); returns `self`."""
        for module in (self.clip_model, self.vision):
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

    def require_weights(self) -> torch.nn.Module:
        """The image tower, or a `ValueError` saying why there is none to use."""
        if self.vision is None:
            raise ValueError("this processor has no CLIP image tower (clip_config is None): it cannot encode images")
        if not has_weights(self.vision):
            raise ValueError(
                "the CLIP image tower has no weights: build the processor with PromptMNERProcessor.from_clip(...) "
                "or load it with from_pretrained(...) (or call image_scorer.load_weights(file))"
            )
        return self.vision

    def pixel_values(self, images: Iterable[Any]) -> torch.Tensor:
        """Load and preprocess images into a `(N, 3, H, W)` float tensor."""
        return torch.stack([self.image_transform(self.load_image(image)) for image in images])

    def encode_images(self, images: Any, batch_size: int = 32) -> torch.Tensor:
        """L2-normalised CLIP image embeddings `(N, D)`, float32 on CPU.

        `images` is a list of images (PIL / path / numpy; see [`load_image`]) or a single one. Images are loaded and
        encoded `batch_size` at a time on the image tower's device, in eval mode, under `torch.inference_mode()`.
        The result is an ordinary tensor (usable in autograd graphs).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        for index, image in enumerate(images):
            if image is None:
                raise ValueError(f"images[{index}] is None; pass examples without an image through the processor")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        vision = self.require_weights()
        parameter = first_parameter(vision)

        def embed(batch: list) -> torch.Tensor:
            return vision(self.pixel_values(batch).to(device=parameter.device, dtype=parameter.dtype))

        embeds = embed_in_batches(vision, images, batch_size, embed)
        return embeds if embeds is not None else torch.zeros(0, self.embed_dim, dtype=torch.float32)

    # -- texts -------------------------------------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised CLIP text embeddings `(K, D)` of `texts` (float32 CPU), with the text tower of a live
        open_clip model (see `has_text_tower`)."""
        if self.clip_model is None:
            raise ValueError(
                "encoding prompts needs the CLIP text tower, but this processor has only the image tower (a saved "
                "processor keeps only that). Build it with PromptMNERProcessor.from_clip(...) to encode prompts; "
                "a trained model already stores its prompt embeddings."
            )
        model = self.clip_model
        device = first_parameter(model).device
        if self._text_tokenizer is None:
            self._text_tokenizer = clip_text_tokenizer(self.clip_model_name, self.clip_config)
        tokenizer = self._text_tokenizer
        encode = lambda batch: model.encode_text(tokenizer(batch).to(device))  # noqa: E731
        return embed_in_batches(model, list(texts), batch_size, encode)
