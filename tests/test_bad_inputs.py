"""Bad inputs and faults, as a new user meets them: each case names its input, the error type and a fragment of
the message that must name the culprit (the argument, field, file or line), or the correct result it must give.

One table per entry point: images, the processor call, the processor's construction, the configuration, saved
folders, the model call, the pipeline, a line of batch prediction, span utilities and the CoNLL reader. The command
lines (`run_mner.py`, `predict_mner`) have their own bad-input tests beside their other tests, since each case there
is a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mner_data
import mner_prediction
import span_utils
from clip_promptmner import load_image
from configuration_promptmner import PromptMNERConfig
from mner_backbone import model_from_backbone
from modeling_promptmner import PromptMNERForSpanNER, PromptMNERModel
from pipeline_promptmner import MultimodalNERPipeline, save_pipeline
from processing_promptmner import PromptMNERProcessor
from processes import run
from tiny_models import tiny_roberta


@dataclass
class Case:
    """`run(ctx)` must raise `error` with `fragment` in its message, or (error None) return what `check` accepts."""

    name: str
    run: Callable[[Any], Any]
    error: type[BaseException] | None = None
    fragment: str = ""
    check: Callable[[Any], bool] | None = None


def params(cases: list[Case]) -> list:
    return [pytest.param(case, id=case.name) for case in cases]


def assert_case(case: Case, ctx) -> None:
    if case.error is None:
        result = case.run(ctx)
        assert case.check(result), f"{case.name}: unexpected result {result!r}"
        return
    with pytest.raises(case.error) as info:
        case.run(ctx)
    fragment = case.fragment.format(tmp=ctx.tmp)
    assert fragment in str(info.value), f"{case.name}: {fragment!r} not in {str(info.value)!r}"


class Context:
    """Files and objects the cases use, built once per module."""

    def __init__(self, tmp: Path, processor: PromptMNERProcessor):
        self.tmp = tmp
        self.processor = processor
        rng = np.random.default_rng(0)
        self.png = tmp / "good.png"
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(self.png)
        self.truncated = tmp / "truncated.png"
        self.truncated.write_bytes(self.png.read_bytes()[:200])
        self.text_file = tmp / "notes.txt"
        self.text_file.write_text("not an image\n")
        self.empty_file = tmp / "empty.jpg"
        self.empty_file.write_bytes(b"")
        self.folder = tmp / "model"
        backbone = tiny_roberta(len(processor.tokenizer), processor.tokenizer.pad_token_id, max_positions=64)
        self.model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=4).eval()
        save_pipeline(self.model, processor, self.folder)
        self.pipe = MultimodalNERPipeline(model=self.model, processor=processor, device="cpu")

    def damaged_copy(self, name: str, damage: Callable[[Path], None]) -> Path:
        """A copy of the saved model folder with one thing broken by `damage(folder)`."""
        folder = self.tmp / name
        if not folder.exists():
            shutil.copytree(self.folder, folder)
            damage(folder)
        return folder

    def edited_json(self, name: str, file: str, **changes) -> Path:
        def edit(folder: Path) -> None:
            data = json.loads((folder / file).read_text())
            (folder / file).write_text(json.dumps({**data, **changes}))

        return self.damaged_copy(name, edit)


@pytest.fixture(scope="module")
def ctx(tiny_roberta_processor, tmp_path_factory) -> Context:
    return Context(tmp_path_factory.mktemp("bad_inputs"), tiny_roberta_processor)


def closed_image(ctx) -> Image.Image:
    image = Image.open(ctx.png)
    image.close()
    return image


# --- images -----------------------------------------------------------------------------------------------------

IMAGE_CASES = [
    Case("missing file", lambda c: load_image(str(c.tmp / "missing.png")), FileNotFoundError, "missing.png"),
    Case("directory", lambda c: load_image(str(c.tmp)), ValueError, "not a regular file"),
    Case("text file", lambda c: load_image(c.text_file), ValueError, "notes.txt"),
    Case("empty file", lambda c: load_image(c.empty_file), ValueError, "empty.jpg"),
    Case("truncated file", lambda c: load_image(c.truncated), ValueError, "truncated.png"),
    Case("float out of range", lambda c: load_image(np.full((4, 4, 3), 2.0)), ValueError, "[0, 1]"),
    Case("float NaN", lambda c: load_image(np.full((4, 4, 3), np.nan)), ValueError, "NaN"),
    Case("int32 out of range", lambda c: load_image(np.full((4, 4), 300, np.int32)), ValueError, "[0, 255]"),
    Case("4-D array", lambda c: load_image(np.zeros((1, 4, 4, 3), np.uint8)), ValueError, "HxW"),
    Case("empty array", lambda c: load_image(np.zeros((0, 5, 3), np.uint8)), ValueError, "empty"),
    Case("complex dtype", lambda c: load_image(np.zeros((4, 4), np.complex64)), ValueError, "dtype"),
    Case("not an image type", lambda c: load_image(5), TypeError, "PIL.Image"),
    Case("empty path", lambda c: load_image(""), ValueError, "empty image path"),
    Case("http URL", lambda c: load_image("http://example.com/tweet.jpg"), ValueError,
         "image 'http://example.com/tweet.jpg' is a URL: URLs are not fetched"),  # fmt: skip
    Case("lazily opened truncated image", lambda c: load_image(Image.open(c.truncated)), ValueError,
         "truncated.png"),  # fmt: skip
    Case("closed image", lambda c: load_image(closed_image(c)), ValueError, "closed"),
    Case("channels-first 3x40x4", lambda c: load_image(np.zeros((3, 40, 4), np.uint8)), ValueError,
         "ambiguous"),  # fmt: skip
    Case(
        "uint16 grayscale becomes 8-bit RGB",
        lambda c: load_image(np.full((4, 5), 65535, np.uint16)),
        check=lambda image: image.mode == "RGB" and image.size == (5, 4) and image.getpixel((0, 0)) == (255, 255, 255),
    ),
    Case(
        "transparent RGBA is composited on white",
        lambda c: load_image(Image.new("RGBA", (3, 3), (10, 20, 30, 0))),
        check=lambda image: image.mode == "RGB" and image.getpixel((1, 1)) == (255, 255, 255),
    ),
    Case(
        "HxWx1 array",
        lambda c: load_image(np.full((4, 4, 1), 7, np.uint8)),
        check=lambda image: image.mode == "RGB" and image.getpixel((0, 0)) == (7, 7, 7),
    ),
    Case(
        "bool mask",
        lambda c: load_image(np.ones((2, 2), bool)),
        check=lambda image: image.getpixel((1, 1)) == (255, 255, 255),
    ),
]


@pytest.mark.parametrize("case", params(IMAGE_CASES))
def test_images(case, ctx):
    assert_case(case, ctx)


# --- the processor call -----------------------------------------------------------------------------------------

TEXT = "Kevin Durant visits Oklahoma"
TAGS = ["B-PER", "I-PER", "O", "B-LOC"]

CALL_CASES = [
    Case("return_tensors tf", lambda c: c.processor(text=TEXT, return_tensors="tf"), ValueError, "return_tensors"),
    Case(
        "images and image_embeds",
        lambda c: c.processor(text=TEXT, images=c.png, image_embeds=torch.zeros(1, 32)),
        ValueError,
        "either images or image_embeds",
    ),
    Case("tags for two examples", lambda c: c.processor(text=[TEXT], tags=[TAGS, TAGS]), ValueError, "tags has 2"),
    Case("tags too short", lambda c: c.processor(text=TEXT, tags=TAGS[:2]), ValueError, "has 2 tags"),
    Case("tags as a string", lambda c: c.processor(text=[TEXT], tags=["B-PER"]), TypeError, "list of str"),
    Case("invalid tag", lambda c: c.processor(text=TEXT, tags=["X-PER", "O", "O", "O"]), ValueError, "'X-PER'"),
    Case("unknown label", lambda c: c.processor(text=TEXT, tags=["B-FOO", "O", "O", "O"]), ValueError, "FOO"),
    Case(
        "image_embeds of another width",
        lambda c: c.processor(text=TEXT, image_embeds=torch.zeros(1, 7)),
        ValueError,
        "image_embeds rows have sizes [7]",
    ),
    Case(
        "image_embeds NaN",
        lambda c: c.processor(text=TEXT, image_embeds=torch.full((1, 32), float("nan"))),
        ValueError,
        "NaN",
    ),
    Case(
        "image_embeds rows",
        lambda c: c.processor(text=[TEXT], image_embeds=torch.zeros(2, 32)),
        ValueError,
        "2 image_embeds rows for 1",
    ),
    Case("images count", lambda c: c.processor(text=[TEXT], images=[None, None]), ValueError, "2 images for 1"),
    Case("images not a list", lambda c: c.processor(text=[TEXT], images=c.png), TypeError, "one image (or None)"),
    Case("missing image file in a batch", lambda c: c.processor(text=TEXT, images="nowhere.jpg"), FileNotFoundError,
         "nowhere.jpg"),  # fmt: skip
    Case("text with a lone surrogate", lambda c: c.processor(text="a \ud800 b"), ValueError,
         "text holds a lone surrogate U+D800 at character 2, which UTF-8 cannot encode"),  # fmt: skip
    Case("batch text with a lone surrogate", lambda c: c.processor(text=[TEXT, "x\udc00"]), ValueError,
         "text[1] holds a lone surrogate U+DC00 at character 1"),  # fmt: skip
    Case("batch text with an int", lambda c: c.processor(text=[TEXT, TEXT, 5]), TypeError,
         "text[2] must be a str like the batch's other texts, got int"),  # fmt: skip
    Case("batch with a missing image", lambda c: c.processor(text=[TEXT, TEXT], images=[c.png, "nowhere.jpg"]),
         FileNotFoundError, "images[1]: Image file not found: 'nowhere.jpg'"),  # fmt: skip
    Case("batch with an unreadable image", lambda c: c.processor(text=[TEXT, TEXT], images=[None, c.truncated]),
         ValueError, "images[1]: Cannot read image file"),  # fmt: skip
    Case(
        "split word with a lone surrogate",
        lambda c: c.processor(text=[["Kevin", "Du\udfffrant"]], is_split_into_words=True),
        ValueError,
        "text[0]: word 1 holds a lone surrogate U+DFFF at character 2",
    ),
    Case(
        "an example without an image takes the text-only path",
        lambda c: c.processor(text=[TEXT, TEXT], images=[c.png, None]),
        check=lambda batch: batch["has_image"].tolist() == [True, False] and bool((batch["image_embeds"][1] == 0).all()),
    ),
]


@pytest.mark.parametrize("case", params(CALL_CASES))
def test_processor_call(case, ctx):
    assert_case(case, ctx)


# --- building a processor, the configuration --------------------------------------------------------------------


def processor_with(ctx, **kwargs) -> PromptMNERProcessor:
    return PromptMNERProcessor(ctx.processor.tokenizer, **kwargs)


CONSTRUCTION_CASES = [
    Case("labels[0] not O", lambda c: processor_with(c, labels=["PER", "O"]), ValueError, "labels[0]"),
    Case("labels as a string", lambda c: processor_with(c, labels="O PER"), ValueError, "labels must be a list"),
    Case("template without {}", lambda c: processor_with(c, prompt_template="an image"), ValueError, "prompt_template"),
    Case("max_span_length 0", lambda c: processor_with(c, max_span_length=0), ValueError, "max_span_length"),
    Case("interpolation", lambda c: processor_with(c, image_interpolation="lanczos"), ValueError, "image_interpolation"),
    Case("clip_logit_scale 0", lambda c: processor_with(c, clip_logit_scale=0), ValueError, "clip_logit_scale"),
    Case("image_std 0", lambda c: processor_with(c, image_std=[0, 1, 1]), ValueError, "image_std"),
    Case(
        "a vocabulary spec still works when building one",
        lambda c: processor_with(c, prompt_vocabulary="task_labels"),
        check=lambda processor: processor.prompt_vocabulary == ["person", "location", "organization", "miscellaneous"],
    ),
]

TINY_CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
CONFIG_CASES = [
    Case("num_hidden_layers -1", lambda c: PromptMNERConfig(**{**TINY_CONFIG, "num_hidden_layers": -1}), ValueError,
         "num_hidden_layers"),  # fmt: skip
    Case("dropout 1", lambda c: PromptMNERConfig(**TINY_CONFIG, hidden_dropout_prob=1.0), ValueError,
         "hidden_dropout_prob"),  # fmt: skip
    Case("prompt_kind", lambda c: PromptMNERConfig(**TINY_CONFIG, prompt_kind="soft"), ValueError, "prompt_kind"),
    Case("heads", lambda c: PromptMNERConfig(**{**TINY_CONFIG, "num_attention_heads": 5}), ValueError,
         "multiple of num_attention_heads"),  # fmt: skip
    Case("label 0", lambda c: PromptMNERConfig(**TINY_CONFIG, labels=["PER", "O"]), ValueError, "label 0"),
    Case("pad id", lambda c: PromptMNERConfig(**TINY_CONFIG, pad_token_id=100), ValueError, "pad_token_id"),
    Case("span_dropout", lambda c: PromptMNERConfig(**TINY_CONFIG, span_dropout=-0.1), ValueError, "span_dropout"),
    Case("num_prompts", lambda c: PromptMNERConfig(**TINY_CONFIG, num_prompts=0), ValueError, "num_prompts"),
]


@pytest.mark.parametrize("case", params(CONSTRUCTION_CASES + CONFIG_CASES))
def test_construction(case, ctx):
    assert_case(case, ctx)


# --- saved folders ----------------------------------------------------------------------------------------------


def corrupt(file: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_bytes(b"\x00garbage, not the file it claims to be")


def drop_tensors(prefix: str) -> Callable[[Path], None]:
    """Remove the tensors whose names start with `prefix` from the folder's `model.safetensors`."""

    def damage(folder: Path) -> None:
        weights = load_file(folder / "model.safetensors")
        save_file({name: tensor for name, tensor in weights.items() if not name.startswith(prefix)},
                  folder / "model.safetensors", metadata={"format": "pt"})  # fmt: skip

    return damage


def drop_json_key(file: str, key: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = json.loads((folder / file).read_text())
        del data[key]
        (folder / file).write_text(json.dumps(data))

    return damage


def remove_tokenizer_files(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


FOLDER_CASES = [
    Case(
        "config.json num_hidden_layers -1",
        lambda c: PromptMNERForSpanNER.from_pretrained(c.edited_json("layers", "config.json", num_hidden_layers=-1)),
        ValueError,
        "config.json: num_hidden_layers",
    ),
    Case(
        "corrupt clip weights",
        lambda c: PromptMNERProcessor.from_pretrained(c.damaged_copy("clip", corrupt("clip_vision.safetensors"))),
        ValueError,
        "clip_vision.safetensors",
    ),
    Case(
        "no such folder",
        lambda c: PromptMNERForSpanNER.from_pretrained(str(c.tmp / "no_such_model")),
        OSError,
        "no_such_model",
    ),
    Case(
        "no config.json",
        lambda c: PromptMNERForSpanNER.from_pretrained(c.damaged_copy("no_config", lambda f: (f / "config.json").unlink())),
        OSError,
        "config.json",
    ),
    Case(
        "corrupt model weights",
        lambda c: PromptMNERForSpanNER.from_pretrained(c.damaged_copy("weights", corrupt("model.safetensors"))),
        OSError,
        "model.safetensors",
    ),
    Case(
        "corrupt processor_config.json",
        lambda c: PromptMNERProcessor.from_pretrained(c.damaged_copy("processor_json", corrupt("processor_config.json"))),
        OSError,
        "processor_config.json",
    ),
    Case(
        "no processor_config.json",
        lambda c: PromptMNERProcessor.from_pretrained(
            c.damaged_copy("no_processor", lambda f: (f / "processor_config.json").unlink())
        ),
        OSError,
        "processor_config.json",
    ),
    Case(
        "no tokenizer files",
        lambda c: PromptMNERProcessor.from_pretrained(c.damaged_copy("no_tokenizer", remove_tokenizer_files)),
        OSError,
        "tokenizer",
    ),
    Case(
        "max_span_length differs between the two configs",
        lambda c: MultimodalNERPipeline(
            model=PromptMNERForSpanNER.from_pretrained(c.folder),
            processor=PromptMNERProcessor.from_pretrained(c.edited_json("span", "processor_config.json", max_span_length=3)),
        ),
        ValueError,
        "max_span_length",
    ),
    Case(
        "config.json with a layer more than the weights",
        lambda c: PromptMNERForSpanNER.from_pretrained(c.edited_json("more_layers", "config.json",
                                                                     num_hidden_layers=3)),  # fmt: skip
        ValueError,
        "more_layers/model.safetensors: the weights do not match the model that config.json describes; 22 tensors "
        "of the model are not in the file: promptmner.encoder.layer.2.",
    ),
    Case(
        "config.json with a layer less than the weights",
        lambda c: PromptMNERForSpanNER.from_pretrained(c.edited_json("fewer_layers", "config.json",
                                                                     num_hidden_layers=1)),  # fmt: skip
        ValueError,
        "tensors of the file have no place in the model: promptmner.encoder.layer.1.",
    ),
    Case(
        "weights without the span classifier",
        lambda c: PromptMNERForSpanNER.from_pretrained(
            c.damaged_copy("no_classifier", drop_tensors("span_head.classifier."))
        ),
        ValueError,
        "no_classifier/model.safetensors: the weights do not match the model that config.json describes; 2 tensors "
        "of the model are not in the file: span_head.classifier.bias, span_head.classifier.weight",
    ),
    Case(
        "config.json with another intermediate size",
        lambda c: PromptMNERForSpanNER.from_pretrained(c.edited_json("wider", "config.json", intermediate_size=38)),
        ValueError,
        "6 tensors have another shape: promptmner.encoder.layer.0.intermediate.dense.bias is (37,) in the file but "
        "(38,) in the model",
    ),
    Case(
        "the encoder alone loads from a span model's folder",
        lambda c: PromptMNERModel.from_pretrained(c.folder),
        check=lambda model: type(model).__name__ == "PromptMNERModel",
    ),
    Case(
        "prompt_vocabulary as a file path outside the folder",
        lambda c: PromptMNERProcessor.from_pretrained(c.edited_json("vocab_file", "processor_config.json",
                                                                    prompt_vocabulary=str(c.text_file))),
        ValueError,
        "vocab_file/processor_config.json: prompt_vocabulary must be the list of words the processor carries, got str",
    ),  # fmt: skip
    Case(
        "prompt_vocabulary as a vocabulary name",
        lambda c: PromptMNERProcessor.from_pretrained(c.edited_json("vocab_name", "processor_config.json",
                                                                    prompt_vocabulary="kb")),
        ValueError,
        "processor_config.json: prompt_vocabulary must be the list of words",
    ),  # fmt: skip
    Case(
        "tokenizer.json without added_tokens",
        lambda c: PromptMNERProcessor.from_pretrained(c.damaged_copy("no_added_tokens", drop_json_key("tokenizer.json",
                                                                                                     "added_tokens"))),
        OSError,
        "no_added_tokens/tokenizer.json: not a tokenizer file: it has no 'added_tokens' list",
    ),  # fmt: skip
    Case(
        "tokenizer.json with an unknown model",
        lambda c: PromptMNERProcessor.from_pretrained(c.edited_json("bogus_tokenizer", "tokenizer.json",
                                                                    model={"type": "Bogus"})),
        OSError,
        "bogus_tokenizer/tokenizer.json: not a valid tokenizer file",
    ),  # fmt: skip
    Case(
        "the folder loads back",
        lambda c: PromptMNERProcessor.from_pretrained(c.folder),
        check=lambda processor: processor.max_span_length == 4 and processor.image_scorer.vision is not None,
    ),
]


@pytest.mark.parametrize("case", params(FOLDER_CASES))
def test_saved_folders(case, ctx):
    assert_case(case, ctx)


# --- the model call ---------------------------------------------------------------------------------------------


def model_call(ctx, **changes) -> Any:
    """The model on a batch of two examples (with images), `changes` replacing some of its tensors."""
    batch = dict(ctx.processor(text=[TEXT, TEXT + " today"], images=[ctx.png, None], tags=[TAGS, TAGS + ["O"]]))
    return ctx.model(**{**batch, **{name: change(batch) for name, change in changes.items()}})


MODEL_CASES = [
    Case("attention_mask of batch 1 for input_ids of batch 2",
         lambda c: model_call(c, attention_mask=lambda b: b["attention_mask"][:1]), ValueError,
         "attention_mask has shape (1, 23) but input_ids has shape (2, 23)"),  # fmt: skip
    Case("attention_mask shorter than input_ids",
         lambda c: model_call(c, attention_mask=lambda b: b["attention_mask"][:, :-1]), ValueError,
         "attention_mask has shape (2, 22) but input_ids has shape (2, 23)"),  # fmt: skip
    Case("image_embeds of batch 1", lambda c: model_call(c, image_embeds=lambda b: b["image_embeds"][:1]),
         ValueError, "image_embeds has shape (1, 32) but input_ids has shape (2, 23): expected (2, 32)"),  # fmt: skip
    Case("has_image of batch 3", lambda c: model_call(c, has_image=lambda b: torch.ones(3, dtype=torch.bool)),
         ValueError, "has_image has shape (3,) but input_ids has shape (2, 23)"),  # fmt: skip
    Case("word_end_index of another length",
         lambda c: model_call(c, word_end_index=lambda b: b["word_end_index"][:, :-1]), ValueError,
         "word_end_index has shape (2, 4) but word_start_index has shape (2, 5)"),  # fmt: skip
    Case("word_start_index of batch 1",
         lambda c: model_call(c, word_start_index=lambda b: b["word_start_index"][:1]), ValueError,
         "word_start_index has shape (1, 5) but input_ids has shape (2, 23)"),  # fmt: skip
    Case("labels of another span length", lambda c: model_call(c, labels=lambda b: b["labels"][:, :, :2]),
         ValueError,
         "labels has shape (2, 5, 2) but word_start_index has shape (2, 5): expected (2, 5, 4)"),  # fmt: skip
    Case("a consistent batch gives a loss", lambda c: model_call(c), check=lambda out: bool(torch.isfinite(out.loss))),
]


@pytest.mark.parametrize("case", params(MODEL_CASES))
def test_model_call(case, ctx):
    assert_case(case, ctx)


# --- the pipeline -----------------------------------------------------------------------------------------------

PIPELINE_CASES = [
    Case("input of another type", lambda c: c.pipe(5), TypeError, "a string or a dict"),
    Case("unknown key", lambda c: c.pipe({"text": TEXT, "img": "a.png"}), ValueError, "unknown input keys ['img']"),
    Case("text not a string", lambda c: c.pipe({"text": ["Kevin"]}), ValueError, "'text' must be a string"),
    Case("stride -1", lambda c: c.pipe(TEXT, stride=-1), ValueError, "stride"),
    Case("threshold 2", lambda c: c.pipe(TEXT, threshold=2), ValueError, "threshold"),
    Case("max_length 1", lambda c: c.pipe(TEXT, max_length=1), ValueError, "max_length"),
    Case("ignore_labels string", lambda c: c.pipe(TEXT, ignore_labels="PER"), ValueError, "ignore_labels"),
    Case("image of another type", lambda c: c.pipe({"text": TEXT, "image": 3.5}), TypeError, "image must be"),
    Case("missing image", lambda c: c.pipe({"text": TEXT, "image": str(c.tmp / "gone.jpg")}), FileNotFoundError,
         "gone.jpg"),  # fmt: skip
    Case("text with a lone surrogate", lambda c: c.pipe({"text": "a \ud800 b", "image": None}), ValueError,
         "input 'text' holds a lone surrogate U+D800 at character 2, which UTF-8 cannot encode"),  # fmt: skip
    Case("string input with a lone surrogate", lambda c: c.pipe("x\udfff y"), ValueError,
         "input text holds a lone surrogate U+DFFF at character 1"),  # fmt: skip
    Case("threshold True", lambda c: c.pipe(TEXT, threshold=True), ValueError,
         "threshold must be a number in [0, 1] (a label probability), got True"),  # fmt: skip
    Case("threshold 'high'", lambda c: c.pipe(TEXT, threshold="high"), ValueError,
         "threshold must be a number in [0, 1] (a label probability), got 'high'"),  # fmt: skip
    Case("threshold None", lambda c: c.pipe(TEXT, threshold=None), ValueError,
         "threshold must be a number in [0, 1] (a label probability), got None"),  # fmt: skip
    Case("threshold NaN", lambda c: c.pipe(TEXT, threshold=float("nan")), ValueError, "threshold must be a number"),
    Case("batch with an int", lambda c: c.pipe([TEXT, TEXT, 5]), TypeError,
         "inputs[2]: an input must be a string or a dict with 'text' and optionally 'image', got int"),  # fmt: skip
    Case("batch with an input without text", lambda c: c.pipe([TEXT, {"image": None}]), ValueError,
         "inputs[1]: input 'text' must be a string, got NoneType"),  # fmt: skip
    Case("batch with a lone surrogate", lambda c: c.pipe([TEXT, TEXT, "x \ud800"]), ValueError,
         "inputs[2]: input text holds a lone surrogate U+D800 at character 2"),  # fmt: skip
    Case("batch with a missing image", lambda c: c.pipe([TEXT, {"text": TEXT, "image": str(c.tmp / "gone.jpg")}]),
         FileNotFoundError, "inputs[1]: Image file not found: '{tmp}/gone.jpg'"),  # fmt: skip
    Case("batch with an unknown key", lambda c: c.pipe([TEXT, {"text": TEXT, "img": "a.png"}]), ValueError,
         "inputs[1]: unknown input keys ['img']"),  # fmt: skip
    Case("image URL", lambda c: c.pipe({"text": TEXT, "image": "https://example.com/a.png"}), ValueError,
         "image 'https://example.com/a.png' is a URL: URLs are not fetched"),  # fmt: skip
    Case("ignore_labels of numbers", lambda c: c.pipe(TEXT, ignore_labels=[1]), ValueError, "ignore_labels"),
    Case("empty list", lambda c: c.pipe([]), check=lambda result: result == []),
    Case("blank text", lambda c: c.pipe("   "), check=lambda result: result == []),
]


@pytest.mark.parametrize("case", params(PIPELINE_CASES))
def test_pipeline(case, ctx):
    assert_case(case, ctx)


# --- one JSONL line of batch prediction (mner_prediction.parse_line) -------------------------------------------


def parsed(ctx, record: Any) -> dict:
    """`parse_line` of one JSONL line (`record` as JSON, or the raw line if a string); an error record is raised
    as `ValueError(error)`, so the table checks its message; a good line returns `(id or None, input)`."""
    line = record if isinstance(record, str) else json.dumps(record)
    result = mner_prediction.parse_line(5, line, ctx.tmp, load_image)
    assert result["line"] == 5
    if "error" in result:
        json.dumps(result, ensure_ascii=False).encode("utf-8")  # the error record itself can be written
        raise ValueError(f"id={result.get('id')!r} {result['error']}")
    return result


LINE_CASES = [
    Case("id with a lone surrogate", lambda c: parsed(c, {"id": "p\ud800", "text": TEXT}), ValueError,
         "id=None ValueError: 'id' holds a lone surrogate U+D800 at character 1"),  # fmt: skip
    Case("nested id with a lone surrogate", lambda c: parsed(c, {"id": {"a": [1, "\udc00"]}, "text": TEXT}),
         ValueError, "id=None ValueError: 'id'['a'][1] holds a lone surrogate U+DC00"),  # fmt: skip
    Case("text with a lone surrogate", lambda c: parsed(c, {"id": "p1", "text": "a \ud800 b"}), ValueError,
         "id='p1' ValueError: 'text' holds a lone surrogate U+D800 at character 2"),  # fmt: skip
    Case("bad id and bad text: the id is named", lambda c: parsed(c, {"id": "\ud800", "text": 3}), ValueError,
         "id=None ValueError: 'id' holds a lone surrogate"),  # fmt: skip
    Case("image path with a lone surrogate", lambda c: parsed(c, {"id": 2, "text": TEXT, "image": "\ud800.png"}),
         ValueError, "id=2 ValueError: 'image' holds a lone surrogate U+D800 at character 0"),  # fmt: skip
    Case("missing image file", lambda c: parsed(c, {"id": 3, "text": TEXT, "image": "gone.png"}), ValueError,
         "gone.png"),  # fmt: skip
    Case("invalid JSON", lambda c: parsed(c, '{"id": "a", "text": "broken'), ValueError,
         "id=None ValueError: invalid JSON"),  # fmt: skip
    Case("unknown key, as the pipeline and the handler refuse it", lambda c: parsed(c, {"id": 4, "text": TEXT,
         "img": "a.png"}), ValueError, "id=4 ValueError: unknown keys ['img']; a line has 'text'"),  # fmt: skip
    Case("id NaN", lambda c: parsed(c, '{"id": NaN, "text": "x"}'), ValueError,
         "id=None ValueError: 'id' is NaN, which standard JSON cannot hold"),  # fmt: skip
    Case("id 1e400", lambda c: parsed(c, '{"id": 1e400, "text": "x"}'), ValueError,
         "id=None ValueError: 'id' is Infinity, which standard JSON cannot hold"),  # fmt: skip
    Case("nested id -Infinity", lambda c: parsed(c, '{"id": {"n": [1, -Infinity]}, "text": "x"}'), ValueError,
         "id=None ValueError: 'id'['n'][1] is -Infinity"),  # fmt: skip
    Case("NaN id of a line bad otherwise", lambda c: parsed(c, '{"id": NaN, "text": 3}'), ValueError,
         "id=None ValueError: 'id' is NaN"),  # fmt: skip
    Case("image URL", lambda c: parsed(c, {"id": 6, "text": TEXT, "image": "https://example.com/a.png"}),
         ValueError, "id=6 ValueError: image 'https://example.com/a.png' is a URL"),  # fmt: skip
    Case(
        "an escaped surrogate pair is one character, not an error",
        lambda c: parsed(c, '{"id": "\\ud83d\\ude00", "text": "hi \\ud83d\\ude00"}'),
        check=lambda result: result["id"] == "\U0001F600" and result["input"]["text"] == "hi \U0001F600",
    ),
]


@pytest.mark.parametrize("case", params(LINE_CASES))
def test_prediction_lines(case, ctx):
    assert_case(case, ctx)


# --- span utilities and the CoNLL reader ------------------------------------------------------------------------


def conll_file(ctx, name: str, text: str) -> Path:
    path = ctx.tmp / name
    path.write_text(text)
    return path


DATA_CASES = [
    Case("bad tag", lambda c: span_utils.bio_to_spans(["B-PER", "PER"]), ValueError, "'PER' at index 1"),
    Case("span past the words", lambda c: span_utils.spans_to_bio([(0, 3, "PER")], 2), ValueError, "3"),
    Case(
        "conll line without a tag",
        lambda c: mner_data.read_conll(conll_file(c, "no_tag.txt", "IMGID:1\nKevin\tB-PER\nDurant\n")),
        ValueError,
        "no_tag.txt:3",
    ),
    Case(
        "conll invalid tag",
        lambda c: mner_data.read_conll(conll_file(c, "bad_tag.txt", "IMGID:1\nKevin\tPERSON\n")),
        ValueError,
        "bad_tag.txt:2",
    ),
    Case("conll missing file", lambda c: mner_data.read_conll(c.tmp / "absent.txt"), FileNotFoundError, "absent.txt"),
    Case(
        "an I- after O opens an entity (conlleval)",
        lambda c: span_utils.bio_to_spans(["O", "I-LOC", "I-LOC"]),
        check=lambda spans: spans == [(1, 2, "LOC")],
    ),
]


@pytest.mark.parametrize("case", params(DATA_CASES))
def test_data(case, ctx):
    assert_case(case, ctx)


def test_case_count():
    """At least 60 cases across the tables: every part that takes outside input has its bad cases here."""
    tables = [IMAGE_CASES, CALL_CASES, CONSTRUCTION_CASES, CONFIG_CASES, FOLDER_CASES, MODEL_CASES, PIPELINE_CASES,
              LINE_CASES, DATA_CASES]
    assert sum(map(len, tables)) >= 60


@pytest.mark.slow
def test_loading_through_the_class_runs_no_folder_code(ctx, tmp_path):
    """`PromptMNERProcessor.from_pretrained(folder)` in a plain script needs no `trust_remote_code` answer: the class
    is already imported, so nothing from the folder runs and nothing asks on stdin (closed here)."""
    script = tmp_path / "load.py"
    script.write_text(
        "import sys\nfrom processing_promptmner import PromptMNERProcessor\n"
        "processor = PromptMNERProcessor.from_pretrained(sys.argv[1])\n"
        "print('loaded', type(processor).__module__, processor.max_span_length)\n"
    )
    result = run([sys.executable, str(script), str(ctx.folder)], tmp_path, stdin=subprocess.DEVNULL)
    assert result.stdout.strip() == "loaded processing_promptmner 4"
    assert "trust_remote_code" not in result.stderr and "Do you wish" not in result.stdout + result.stderr
