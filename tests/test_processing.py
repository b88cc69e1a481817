"""Tests for processing_promptmner: word splitting, image loading, CLIP encoding, word-aligned tokenization,
span labels, post-processing and save / load (including remote code). Real components only, offline."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from processes import offline_hub_cache, run_python

from clip_promptmner import CLIP_VISION_WEIGHTS_NAME, load_image
from processing_promptmner import PromptMNERBatch, PromptMNERProcessor
from tweet_words import join_words, split_words
from span_utils import bio_to_spans, span_label_grid

TENSOR_KEYS = {"input_ids", "attention_mask", "word_start_index", "word_end_index", "word_mask"}


# ------------------------------------------------------------------------------------------------------------------
# Word splitting
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "RT @user: Obama visits the U.S. today!!! http://t.co/x.",
            ["RT", "@user", ":", "Obama", "visits", "the", "U.S.", "today", "!!!", "http://t.co/x", "."],
        ),
        ("(@john_) #NBA, $AAPL", ["(", "@john_", ")", "#NBA", ",", "$AAPL"]),
        ("don't stop, Jean-Luc! 3.5%", ["don't", "stop", ",", "Jean-Luc", "!", "3.5", "%"]),
        ("players' fans...really?!", ["players", "'", "fans...really", "?", "!"]),
        ("...hi (https://w.org/A_(b))", ["...", "hi", "(", "https://w.org/A_(b)", ")"]),
        ("e.g., Mr. Smith", ["e.g.", ",", "Mr", ".", "Smith"]),
        ("great👍🏽👍🏽 🇺🇸!", ["great", "👍🏽👍🏽", "🇺🇸", "!"]),
        ("  \t\n ", []),
        ("@ # !", ["@", "#", "!"]),
    ],
)
def test_split_words_examples(text, expected):
    assert [word for word, _, _ in split_words(text)] == expected


_TEXT_ALPHABET = st.sampled_from(
    list("abcXYZ019 \t\n.,!?'\"-_/:@#$%()[]…")
    + ["é", "e\u0301", "\u200b", "\u200d", "👍", "🏽", "🇺", "😂", "中"]
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_TEXT_ALPHABET, max_size=40).map("".join))
def test_split_words_offsets_roundtrip(text):
    words = split_words(text)
    previous_end = 0
    for word, start, end in words:
        assert word and text[start:end] == word
        assert not any(char.isspace() for char in word)
        assert start >= previous_end
        previous_end = end
    assert "".join(word for word, _, _ in words) == "".join(text.split())


def test_join_words_offsets():
    text, offsets = join_words(["New", "York", "!"])
    assert text == "New York !"
    assert [text[start:end] for start, end in offsets] == ["New", "York", "!"]


# ------------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------------


def _pixel(image: Image.Image, xy=(0, 0)):
    return image.getpixel(xy)


def test_load_image_file_modes(tmp_path):
    """Real files in many modes and shapes load to RGB with the right colours."""
    rgb = Image.new("RGB", (17, 300), (200, 30, 60))
    rgb.save(tmp_path / "rgb.png")
    rgba = Image.new("RGBA", (640, 480), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (320, 0, 640, 480))  # transparent black right half
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (1, 1), 128).save(tmp_path / "gray.png")
    Image.new("LA", (5, 3), (100, 0)).save(tmp_path / "la.png")
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((5, 5), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    gradient = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    Image.fromarray(gradient).save(tmp_path / "gray16.png")

    assert _pixel(load_image(tmp_path / "rgb.png"), (5, 250)) == (200, 30, 60)
    loaded = load_image(str(tmp_path / "rgba.png"))
    assert loaded.mode == "RGB" and loaded.size == (640, 480)
    assert _pixel(loaded, (10, 10)) == (255, 0, 0)
    assert _pixel(loaded, (600, 10)) == (255, 255, 255)  # transparent -> white, not black
    assert _pixel(load_image(tmp_path / "gray.png")) == (128, 128, 128)
    assert _pixel(load_image(tmp_path / "la.png")) == (255, 255, 255)
    palette_rgb = load_image(tmp_path / "palette.png")
    assert _pixel(palette_rgb, (0, 0)) == (255, 255, 255) and _pixel(palette_rgb, (5, 5)) == (10, 200, 30)
    red, green, blue = _pixel(load_image(tmp_path / "cmyk.jpg"), (20, 15))
    assert red > 230 and green < 25 and blue < 25
    gray16 = np.asarray(load_image(tmp_path / "gray16.png"))[0, :, 0]
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    np.testing.assert_allclose(gray16, np.linspace(0, 255, 256), atol=1)  # scaled, not clipped to white
    for name in ("rgb.png", "rgba.png", "gray.png", "la.png", "palette.png", "cmyk.jpg", "gray16.png"):
        assert load_image(tmp_path / name).mode == "RGB"


def test_load_image_in_memory_modes():
    big_endian = Image.frombytes("I;16B", (2, 1), np.array([0, 65535], dtype=">u2").tobytes())
    assert [_pixel(load_image(big_endian), (x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]
    as_int = Image.fromarray(np.array([[0, 32896]], dtype=np.int32), mode="I")
    assert _pixel(load_image(as_int), (1, 0)) == (128, 128, 128)
    as_float = Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32), mode="F")
    assert _pixel(load_image(as_float), (1, 0)) == (128, 128, 128)
    assert _pixel(load_image(Image.new("1", (2, 2), 1))) == (255, 255, 255)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((4, 5), 7, dtype=np.uint8), (7, 7, 7)),
        (np.full((4, 5, 1), 7, dtype=np.uint8), (7, 7, 7)),
        (np.tile(np.array([1, 2, 3], dtype=np.uint8), (4, 5, 1)), (1, 2, 3)),
        (np.tile(np.array([1, 2, 3, 0], dtype=np.uint8), (4, 5, 1)), (255, 255, 255)),
        (np.tile(np.array([9, 255], dtype=np.uint8), (4, 5, 1)), (9, 9, 9)),
        (np.full((4, 5, 3), 65535, dtype=np.uint16), (255, 255, 255)),
        (np.full((4, 5, 3), 257 * 100, dtype=np.uint16), (100, 100, 100)),
        (np.full((4, 5, 3), 0.5, dtype=np.float32), (128, 128, 128)),
        (np.full((4, 5, 3), 200, dtype=np.int64), (200, 200, 200)),
    ],
)
def test_load_image_numpy(array, expected):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert _pixel(image) == expected


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 5, 3), 1.5, dtype=np.float32), r"\[0, 1\]"),
        (np.full((4, 5, 3), 300, dtype=np.int32), r"\[0, 255\]"),
        (np.zeros((3, 4, 5, 6), dtype=np.uint8), "shape"),
        (np.zeros((4, 5, 7), dtype=np.uint8), "shape"),
        (np.full((2, 2), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_load_image_numpy_errors(array, message):
    with pytest.raises(ValueError, match=message):
        load_image(array)


def test_load_image_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(missing)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        load_image(str(corrupt))
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(ValueError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(TypeError, match="int"):
        load_image(3)


def _image_set(tmp_path) -> list:
    """Images of varied kinds, sizes and aspect ratios (a path, PIL objects, arrays)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return [
        path,
        Image.fromarray(rng.integers(0, 256, (300, 17, 3), dtype=np.uint8)),
        Image.new("RGBA", (640, 480), (0, 128, 255, 128)),
        rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        rng.random((33, 65)).astype(np.float32),
    ]


def test_encode_images_normalised_and_batch_independent(tiny_processor, tmp_path):
    images = _image_set(tmp_path)
    all_at_once = tiny_processor.image_scorer.encode_images(images)
    assert all_at_once.shape == (len(images), tiny_processor.clip_embed_dim)
    assert all_at_once.dtype == torch.float32 and all_at_once.device.type == "cpu"
    assert torch.isfinite(all_at_once).all()
    torch.testing.assert_close(all_at_once.norm(dim=-1), torch.ones(len(images)), atol=1e-5, rtol=0)
    one_by_one = torch.cat([tiny_processor.image_scorer.encode_images(image) for image in images])
    torch.testing.assert_close(all_at_once, one_by_one, atol=1e-5, rtol=0)
    in_pairs = tiny_processor.image_scorer.encode_images(images, batch_size=2)
    torch.testing.assert_close(in_pairs, all_at_once, atol=1e-5, rtol=0)
    # An ordinary tensor: usable as the input of a trainable layer.
    assert not all_at_once.is_inference()
    torch.nn.Linear(all_at_once.shape[1], 2)(all_at_once).sum().backward()


def test_encode_images_uses_eval_mode_and_restores_it(tiny_processor, tmp_path):
    images = _image_set(tmp_path)[:3]
    expected = tiny_processor.image_scorer.encode_images(images)
    tower = tiny_processor.image_scorer.vision
    tower.train()
    try:
        torch.testing.assert_close(tiny_processor.image_scorer.encode_images(images), expected, atol=1e-6, rtol=0)
        assert tower.training
    finally:
        tower.eval()


def test_processor_without_weights_refuses_to_encode(bert_tokenizer, tiny_clip_config, tmp_path):
    processor = PromptMNERProcessor(bert_tokenizer, clip_config=tiny_clip_config)
    with pytest.raises(ValueError, match="no weights"):
        processor.image_scorer.encode_images(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no weights"):
        processor.save_pretrained(tmp_path / "weightless")
    assert not (tmp_path / "weightless").exists()
    with pytest.raises(ValueError, match="text tower"):
        processor.encode_prompts()
    text_only = PromptMNERProcessor(bert_tokenizer)
    with pytest.raises(ValueError, match="no CLIP image tower"):
        text_only("hello", images=np.zeros((4, 4, 3), dtype=np.uint8))


def test_call_with_images_and_missing_images(tiny_processor, tmp_path):
    images = _image_set(tmp_path)
    batch = tiny_processor(["a tweet", "no image here", "another one"], images=[images[0], None, images[2]])
    expected = tiny_processor.image_scorer.encode_images([images[0], images[2]])
    assert batch["has_image"].tolist() == [True, False, True]
    torch.testing.assert_close(batch["image_embeds"][[0, 2]], expected, atol=1e-6, rtol=0)
    assert torch.equal(batch["image_embeds"][1], torch.zeros(tiny_processor.clip_embed_dim))
    single = tiny_processor("one tweet", images=images[1])
    expected_single = tiny_processor.image_scorer.encode_images(images[1])
    torch.testing.assert_close(single["image_embeds"], expected_single, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="2 images for 3 text examples"):
        tiny_processor(["a", "b", "c"], images=[images[0], None])
    text_only = tiny_processor(["a", "b"])
    assert set(text_only.keys()) == TENSOR_KEYS


def test_call_with_image_embeds(tiny_processor):
    dim = tiny_processor.clip_embed_dim
    row = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    batch = tiny_processor(["a", "b"], image_embeds=[None, row.numpy()])
    assert batch["has_image"].tolist() == [False, True]
    assert torch.equal(batch["image_embeds"][1], row) and batch["image_embeds"].dtype == torch.float32
    stacked = tiny_processor(["a", "b"], image_embeds=torch.stack([row, row]))
    assert stacked["has_image"].all()
    with pytest.raises(ValueError, match="3 image_embeds rows for 2 text examples"):
        tiny_processor(["a", "b"], image_embeds=torch.zeros(3, dim))
    with pytest.raises(ValueError, match=f"expected {dim}"):
        tiny_processor(["a", "b"], image_embeds=torch.zeros(2, dim + 1))
    with pytest.raises(ValueError, match="either images or image_embeds"):
        tiny_processor("a", images=np.zeros((2, 2), dtype=np.uint8), image_embeds=row)


# ------------------------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------------------------


def _check_word_alignment(processor, batch):
    """Every word's token range holds exactly the tokens the tokenizer gives that word alone, in order."""
    tokenizer = processor.tokenizer
    for index, words in enumerate(batch.words):
        ids = batch["input_ids"][index].tolist()
        starts, ends = batch["word_start_index"][index].tolist(), batch["word_end_index"][index].tolist()
        assert starts[len(words) :] == [-1] * (len(starts) - len(words))
        previous_end = int(batch["attention_mask"][index].argmax())  # the first special token (after left padding)
        for position, word in enumerate(words):
            alone = tokenizer([word], is_split_into_words=True, add_special_tokens=False)["input_ids"]
            if not alone:  # a word with no token of its own is encoded as the unknown token
                alone = [tokenizer.unk_token_id]
            assert ids[starts[position] : ends[position] + 1] == alone, (word, position)
            assert starts[position] == previous_end + 1
            previous_end = ends[position]
        assert batch["attention_mask"][index, previous_end + 1]  # the closing special token


@pytest.mark.parametrize("fixture", ["tiny_processor", "tiny_roberta_processor"])
def test_raw_strings_offsets_and_alignment(fixture, request):
    processor = request.getfixturevalue(fixture)
    texts = [
        "RT @NBA: LeBron James scores 40 points in Oakland!!! #NBAFinals http://t.co/abc123",
        "Obama meets Merkel in Berlin",
        "weird \u200b word and e\u0301 accents 😂",
    ]
    batch = processor(texts)
    assert isinstance(batch, PromptMNERBatch)
    assert batch.texts == texts
    for text, words, offsets in zip(texts, batch.words, batch.word_offsets):
        assert [text[start:end] for start, end in offsets] == words
        assert words == [word for word, _, _ in split_words(text)]
    assert batch["word_start_index"].shape == (3, max(len(words) for words in batch.words))
    _check_word_alignment(processor, batch)


@pytest.mark.parametrize("fixture", ["tiny_processor", "tiny_roberta_processor"])
def test_pre_split_words_single_and_batch(fixture, request):
    processor = request.getfixturevalue(fixture)
    words = ["Barack", "Obama", "visited", "New", "York", "."]
    single = processor(words, is_split_into_words=True)
    assert single["input_ids"].shape[0] == 1
    assert single.texts == ["Barack Obama visited New York ."]
    assert single.words == [words]
    assert [single.texts[0][s:e] for s, e in single.word_offsets[0]] == words
    batch = processor([words, ["Hi", "there"]], is_split_into_words=True)
    assert batch["word_start_index"].shape == (2, 6)
    assert batch["word_start_index"][1].tolist()[2:] == [-1] * 4
    assert batch["word_mask"].dtype == batch["attention_mask"].dtype
    assert batch["word_mask"].tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    _check_word_alignment(processor, batch)
    torch.testing.assert_close(batch["input_ids"][0], single["input_ids"][0])
    # Without the flag, a list of strings is a batch of raw texts.
    as_texts = processor(["Hi there", "New York"])
    assert as_texts.words == [["Hi", "there"], ["New", "York"]]


_WORD = st.lists(
    st.sampled_from(list("abzXYZ09.,'@#-") + ["é", "\u0301", "\u200b", "\x00", "😂", "中", "ß", "Ω"]),
    min_size=1,
    max_size=6,
).map("".join)


@pytest.mark.parametrize("fixture", ["tiny_processor", "tiny_roberta_processor"])
@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch_words=st.lists(st.lists(_WORD, max_size=12), min_size=1, max_size=3), max_length=st.integers(3, 40))
def test_alignment_property(fixture, request, batch_words, max_length):
    """Any words (odd unicode included), any truncation: whole words, in order, each with its own tokens."""
    processor = request.getfixturevalue(fixture)
    batch = processor(batch_words, is_split_into_words=True, max_length=max_length)
    assert batch["input_ids"].shape[1] <= max_length
    for words, kept_words, dropped in zip(batch_words, batch.words, batch.num_truncated_words):
        assert kept_words == words[: len(words) - dropped]
    _check_word_alignment(processor, batch)


def test_left_padding_alignment(minilm_path, tiny_clip_config):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path, padding_side="left")
    processor = PromptMNERProcessor.from_clip(tokenizer, clip_config=tiny_clip_config, clip_pretrained=None)
    batch = processor(["Obama visits Berlin", "hi"])
    assert batch["attention_mask"][1, 0] == 0 and batch["word_start_index"][1].tolist() == [3, -1, -1]
    _check_word_alignment(processor, batch)


def test_text_errors(tiny_processor):
    with pytest.raises(ValueError, match="text is required"):
        tiny_processor()
    with pytest.raises(TypeError, match="is_split_into_words"):
        tiny_processor([["a", "b"]])
    with pytest.raises(ValueError, match="word 1 is an empty string"):
        tiny_processor(["a", ""], is_split_into_words=True)
    with pytest.raises(ValueError, match="return_tensors"):
        tiny_processor("a", return_tensors="tf")


def test_tags_to_span_labels(tiny_processor):
    words = [["Barack", "Obama", "visited", "New", "York", "City"], ["I", "love", "Apple"]]
    tags = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC"], ["O", "O", "B-ORG"]]
    batch = tiny_processor(words, is_split_into_words=True, tags=tags)
    labels = batch["labels"]
    assert labels.shape == (2, 6, tiny_processor.max_span_length) and labels.dtype == torch.long
    for index, example_tags in enumerate(tags):
        grid = span_label_grid(
            bio_to_spans(example_tags), len(example_tags), tiny_processor.max_span_length, tiny_processor.label2id
        )
        assert labels[index, : len(example_tags)].tolist() == grid
        assert (labels[index, len(example_tags) :] == -100).all()
    assert labels[0, 0, 1] == tiny_processor.label2id["PER"] and labels[0, 3, 2] == tiny_processor.label2id["LOC"]


def test_tag_errors_name_the_example(tiny_processor):
    with pytest.raises(ValueError, match="tags of example 1 has 2 tags but the example has 3 words"):
        tiny_processor([["a", "b"], ["c", "d", "e"]], is_split_into_words=True, tags=[["O", "O"], ["O", "O"]])
    with pytest.raises(ValueError, match="tags of example 0"):
        tiny_processor(["a", "b"], is_split_into_words=True, tags=["B-OTHER", "O"])
    with pytest.raises(ValueError, match="tags of example 0"):
        tiny_processor(["a", "b"], is_split_into_words=True, tags=["X-PER", "O"])


def test_long_gold_spans(tiny_processor):
    words = ["The", "Museum", "of", "Modern", "Art", "of", "New", "York"]
    tags = ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG"]  # 7 words > max_span_length=4
    batch = tiny_processor(words, is_split_into_words=True, tags=tags)
    assert set(batch["labels"][0].flatten().tolist()) <= {0, -100}
    with pytest.raises(ValueError, match="max_span_length"):
        tiny_processor(words, is_split_into_words=True, tags=tags, drop_long_spans=False)


@pytest.mark.parametrize("fixture", ["tiny_processor", "tiny_roberta_processor"])
def test_truncation_drops_whole_trailing_words(fixture, request):
    processor = request.getfixturevalue(fixture)
    words = ["Barack", "Obama", "visited", "Ouagadougou", "and", "Llanfairpwllgwyngyll", "yesterday"] * 3
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "O"] * 3
    full = processor(words, is_split_into_words=True)
    full_length = full["input_ids"].shape[1]
    for max_length in range(3, full_length):
        batch = processor(words, is_split_into_words=True, tags=tags, max_length=max_length)
        kept = len(batch.words[0])
        assert batch["input_ids"].shape[1] <= max_length
        assert batch.num_truncated_words == [len(words) - kept]
        assert batch.words[0] == words[:kept]
        # Whole words only: the kept words' tokens are exactly the untruncated encoding's.
        assert torch.equal(batch["word_end_index"][0, :kept], full["word_end_index"][0, :kept])
        if kept < len(words):
            assert full["word_end_index"][0, kept] + 2 > max_length  # the next word would not have fitted
        _check_word_alignment(processor, batch)
        expected = span_label_grid(
            [span for span in bio_to_spans(tags) if span[1] < kept],
            kept,
            processor.max_span_length,
            processor.label2id,
        )
        assert batch["labels"][0, :kept].tolist() == expected
    untruncated = processor(words, is_split_into_words=True, max_length=3, truncation=False)
    assert untruncated["input_ids"].shape[1] == full_length


def test_batch_holds_only_tensors_and_keeps_attributes(tiny_processor):
    batch = tiny_processor(
        ["Obama in Paris", "Merkel"], image_embeds=[None, torch.ones(tiny_processor.clip_embed_dim)],
        tags=[["B-PER", "O", "B-LOC"], ["B-PER"]],
    )
    as_kwargs = dict(**batch)
    assert set(as_kwargs) == TENSOR_KEYS | {"image_embeds", "has_image", "labels"}
    assert all(isinstance(value, torch.Tensor) for value in as_kwargs.values())
    moved = batch.to("cpu")
    assert moved is batch
    assert moved.texts == ["Obama in Paris", "Merkel"] and moved.word_offsets[1] == [(0, 6)]
    restored = pickle.loads(pickle.dumps(batch))
    assert restored.words == batch.words and restored.word_offsets == batch.word_offsets
    assert torch.equal(restored["input_ids"], batch["input_ids"])
    as_numpy = tiny_processor(["Obama in Paris"], return_tensors="np")
    assert all(isinstance(value, np.ndarray) for value in as_numpy.values())


def test_tokenizer_checks(roberta_tokenizer, tiny_clip_config, tmp_path):
    no_prefix_dir = tmp_path / "no_prefix"
    roberta_tokenizer.save_pretrained(no_prefix_dir)
    config_file = no_prefix_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["add_prefix_space"] = False
    config_file.write_text(json.dumps(tokenizer_config))
    tokenizer_file = no_prefix_dir / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_file.read_text())
    tokenizer_json["pre_tokenizer"]["add_prefix_space"] = False
    tokenizer_file.write_text(json.dumps(tokenizer_json))

    from transformers import AutoTokenizer

    with pytest.raises(ValueError, match="add_prefix_space=True"):
        PromptMNERProcessor(AutoTokenizer.from_pretrained(no_prefix_dir))
    processor = PromptMNERProcessor.from_clip(no_prefix_dir, clip_config=tiny_clip_config, clip_pretrained=None)
    reference = PromptMNERProcessor.from_clip(roberta_tokenizer, clip_config=tiny_clip_config, clip_pretrained=None)
    words = ["Obama", "visited", "Berlin"]
    assert torch.equal(
        processor(words, is_split_into_words=True)["input_ids"],
        reference(words, is_split_into_words=True)["input_ids"],
    )
    with pytest.raises(ValueError, match="fast"):
        PromptMNERProcessor(object())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": ["PER", "O"]}, r"labels\[0\] must be 'O'"),
        ({"max_span_length": 0}, "max_span_length"),
        ({"prompt_template": "an image of"}, "prompt_template"),
        ({"prompt_vocabulary": []}, "prompt_vocabulary"),
        ({"image_resize_mode": "crop"}, "image_resize_mode"),
        ({"clip_config": {"embed_dim": 8}}, "clip_config"),
    ],
)
def test_init_validation(bert_tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptMNERProcessor(bert_tokenizer, **kwargs)


def test_from_clip_registered_model_with_checkpoint(bert_tokenizer, registered_tiny_clip, tiny_clip, tmp_path):
    """The open_clip path: registered model name + pretrained weights, preprocessing and temperature from open_clip."""
    import open_clip

    name, checkpoint = registered_tiny_clip
    processor = PromptMNERProcessor.from_clip(bert_tokenizer, clip_model_name=name, clip_pretrained=str(checkpoint))
    scorer = processor.image_scorer
    assert scorer.clip_model_name == name and scorer.clip_config == open_clip.get_model_config(name)
    assert scorer.image_size == 64 and scorer.image_interpolation == "bicubic"
    assert scorer.clip_logit_scale == pytest.approx(float(tiny_clip.logit_scale.detach().exp()))
    images = _image_set(tmp_path)
    preprocess = open_clip.image_transform(64, is_train=False)
    pixels = torch.stack([preprocess(load_image(image)) for image in images])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(tiny_clip.encode_image(pixels), dim=-1)
    torch.testing.assert_close(processor.image_scorer.encode_images(images), expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        tokens = open_clip.get_tokenizer(name)(processor.build_prompts())
        expected_prompts = torch.nn.functional.normalize(tiny_clip.encode_text(tokens), dim=-1)
    torch.testing.assert_close(processor.encode_prompts(), expected_prompts, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoding_and_batch_to_device(bert_tokenizer, tiny_clip_config, tmp_path):
    processor = PromptMNERProcessor.from_clip(bert_tokenizer, clip_config=tiny_clip_config, clip_pretrained=None)
    images = _image_set(tmp_path)
    on_cpu, prompts_on_cpu = processor.image_scorer.encode_images(images), processor.encode_prompts()
    assert processor.to("cuda") is processor
    assert processor.image_scorer.vision.conv1.weight.device.type == "cuda"
    on_gpu = processor.image_scorer.encode_images(images)
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4, rtol=0)
    torch.testing.assert_close(processor.encode_prompts(), prompts_on_cpu, atol=1e-4, rtol=0)
    batch = processor(["Obama in Paris"], images=[images[0]]).to("cuda")
    assert batch["input_ids"].device.type == "cuda" and batch["image_embeds"].device.type == "cuda"
    assert batch.words == [["Obama", "in", "Paris"]] and batch.word_offsets == [[(0, 5), (6, 8), (9, 14)]]


def test_from_clip_argument_checks(bert_tokenizer, tiny_clip_config):
    with pytest.raises(ValueError, match="clip_pretrained"):
        PromptMNERProcessor.from_clip(bert_tokenizer, clip_config=tiny_clip_config)
    with pytest.raises(ValueError, match="not a registered open_clip model"):
        PromptMNERProcessor.from_clip(bert_tokenizer, clip_model_name="no-such-clip", clip_pretrained=None)


# ------------------------------------------------------------------------------------------------------------------
# Post-processing
# ------------------------------------------------------------------------------------------------------------------


def _logits_for(batch, processor, cells: dict, background: float = 4.0) -> torch.Tensor:
    """Logits that say "O" everywhere (logit `background`) except `cells[(b, i, d)] = (label, logit)`."""
    batch_size, max_words = batch["word_start_index"].shape
    logits = torch.zeros(batch_size, max_words, processor.max_span_length, len(processor.labels))
    logits[..., 0] = background
    for (b, i, d), (label, value) in cells.items():
        logits[b, i, d, processor.label2id[label]] = value
    return logits


def test_post_process_entities_and_offsets(tiny_processor):
    texts = ["Barack Obama visited New York City, today!", "Merkel in Berlin"]
    batch = tiny_processor(texts)
    cells = {
        (0, 0, 1): ("PER", 9.0),  # "Barack Obama"
        (0, 3, 2): ("LOC", 8.0),  # "New York City"
        (0, 4, 1): ("ORG", 7.0),  # "York City" overlaps and scores lower: dropped
        (0, 6, 0): ("MISC", 3.0),  # below the "O" logit: not a candidate
        (1, 0, 0): ("PER", 6.0),
        (1, 2, 0): ("LOC", 6.5),  # "Berlin"
        (1, 2, 1): ("ORG", 50.0),  # runs past the last word: padding span, ignored
        (1, 5, 0): ("ORG", 50.0),  # padding word, ignored
    }
    logits = _logits_for(batch, tiny_processor, cells)
    entities = tiny_processor.post_process(SimpleNamespace(logits=logits), batch)
    assert [[(e["entity_group"], e["word"]) for e in example] for example in entities] == [
        [("PER", "Barack Obama"), ("LOC", "New York City")],
        [("PER", "Merkel"), ("LOC", "Berlin")],
    ]
    for text, example in zip(texts, entities):
        for entity in example:
            assert text[entity["start"] : entity["end"]] == entity["word"]
            assert set(entity) == {"entity_group", "score", "word", "start", "end"}
    first = entities[0][0]
    assert (first["start"], first["end"]) == (0, 12)
    expected_score = torch.softmax(logits[0, 0, 1], dim=-1)[tiny_processor.label2id["PER"]].item()
    assert first["score"] == pytest.approx(expected_score)
    # A threshold above a candidate's probability removes it; the logits tensor itself is accepted too.
    strict = tiny_processor.post_process(logits, batch, threshold=0.95)
    assert [e["word"] for e in strict[0]] == ["Barack Obama", "New York City"] and strict[1] == []


def test_post_process_resolves_overlaps_by_score(tiny_processor):
    batch = tiny_processor(["New", "York", "Knicks"], is_split_into_words=True)
    cells = {(0, 0, 1): ("LOC", 7.0), (0, 0, 2): ("ORG", 9.0), (0, 2, 0): ("ORG", 8.0)}
    entities = tiny_processor.post_process(SimpleNamespace(logits=_logits_for(batch, tiny_processor, cells)), batch)
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities[0]] == [
        ("ORG", "New York Knicks", 0, 15)
    ]


def test_post_process_errors(tiny_processor):
    batch = tiny_processor("Obama")
    with pytest.raises(ValueError, match="labels=5"):
        tiny_processor.post_process(torch.zeros(1, 1, 4, 3), batch)
    with pytest.raises(TypeError, match="PromptMNERBatch"):
        tiny_processor.post_process(torch.zeros(1, 1, 4, 5), dict(batch))


# ------------------------------------------------------------------------------------------------------------------
# Prompts, save / load, remote code
# ------------------------------------------------------------------------------------------------------------------


def test_encode_prompts(tiny_processor, tiny_clip):
    assert tiny_processor.build_prompts() == [f"an image of {word}" for word in tiny_processor.prompt_vocabulary]
    prompts = tiny_processor.encode_prompts()
    assert prompts.shape == (len(tiny_processor.prompt_vocabulary), tiny_processor.clip_embed_dim)
    assert not prompts.is_inference()
    torch.testing.assert_close(prompts.norm(dim=-1), torch.ones(len(prompts)), atol=1e-5, rtol=0)
    custom = tiny_processor.encode_prompts(["player", "person"])
    torch.testing.assert_close(custom, prompts[[3, 0]], atol=1e-6, rtol=0)
    # Same as running the CLIP text tower by hand on the templated prompts.
    import open_clip

    model = tiny_processor.image_scorer.clip_model
    with torch.no_grad():
        tokens = open_clip.SimpleTokenizer(context_length=77)(["an image of player"])
        by_hand = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(custom[:1], by_hand, atol=1e-6, rtol=0)


def _save(processor, folder: Path) -> Path:
    processor.save_pretrained(folder)
    return folder


def test_save_and_load_roundtrip(tiny_processor, tmp_path):
    folder = _save(tiny_processor, tmp_path / "saved")
    files = {path.name for path in folder.iterdir()}
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", CLIP_VISION_WEIGHTS_NAME} <= files
    assert {"processing_promptmner.py", "span_utils.py"} <= files  # remote code with its relative import
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_promptmner.PromptMNERProcessor"}
    assert config["processor_class"] == "PromptMNERProcessor"

    loaded = PromptMNERProcessor.from_pretrained(folder)
    for name in ("prompt_vocabulary", "prompt_template", "labels", "max_span_length"):
        assert getattr(loaded, name) == getattr(tiny_processor, name), name
    assert loaded.image_scorer.settings() == tiny_processor.image_scorer.settings()
    texts = ["RT @NBA: LeBron James in Oakland!!!", "weird \u200b word 😂"]
    original, reloaded = tiny_processor(texts), loaded(texts)
    assert set(original) == set(reloaded)
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    images = _image_set(tmp_path)
    expected = tiny_processor.image_scorer.encode_images(images)
    torch.testing.assert_close(loaded.image_scorer.encode_images(images), expected, atol=1e-6, rtol=0)
    vision = loaded.image_scorer.vision
    assert not any(t.requires_grad for t in vision.parameters()) and not vision.training
    with pytest.raises(ValueError, match="text tower"):
        loaded.encode_prompts()


def test_from_pretrained_checks_the_weights_file(tiny_processor, tmp_path):
    folder = _save(tiny_processor, tmp_path / "saved")
    weights = folder / CLIP_VISION_WEIGHTS_NAME
    weights.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=CLIP_VISION_WEIGHTS_NAME):
        PromptMNERProcessor.from_pretrained(folder)
    save_file({"conv1.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match="does not match clip_config"):
        PromptMNERProcessor.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=CLIP_VISION_WEIGHTS_NAME):
        PromptMNERProcessor.from_pretrained(folder)


@pytest.mark.slow
def test_remote_code_and_offline_hub_cache(tiny_processor, tmp_path):
    """AutoProcessor + trust_remote_code in a fresh process, from a copied folder and from an offline Hub cache."""
    saved = _save(tiny_processor, tmp_path / "saved")
    folder = tmp_path / "elsewhere" / "copy"
    shutil.copytree(saved, folder)
    repo_id = "someone/promptmner-tiny"
    cache = tmp_path / "hub"
    repo_cache = offline_hub_cache(saved, cache, repo_id)
    # This repo holds a processor only: huggingface_hub records the Hub's 404 for config.json (which AutoTokenizer
    # asks for) under .no_exist/, exactly as a real earlier online download would have left it.
    revision = (repo_cache / "refs" / "main").read_text()
    (repo_cache / ".no_exist" / revision).mkdir(parents=True)
    (repo_cache / ".no_exist" / revision / "config.json").touch()

    image_file = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(image_file)
    expected_file = tmp_path / "expected.npy"
    np.save(expected_file, tiny_processor.image_scorer.encode_images([image_file]).numpy())
    output = run_python(
        f"""
        import json
        import numpy as np, torch
        from transformers import AutoProcessor

        results = {{}}
        for source in ({str(folder)!r}, {repo_id!r}):
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
            embeds = processor.image_scorer.encode_images([{str(image_file)!r}])
            expected = torch.from_numpy(np.load({str(expected_file)!r}))
            batch = processor("Obama visits Berlin")
            results[source] = {{
                "module": type(processor).__module__,
                "max_diff": float((embeds - expected).abs().max()),
                "words": batch.words,
            }}
        print(json.dumps(results))
        """,
        cwd=tmp_path / "elsewhere",
        HF_HUB_CACHE=str(cache), HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    results = json.loads(output.strip().splitlines()[-1])
    for source in (str(folder), repo_id):
        assert results[source]["module"].startswith("transformers_modules"), results[source]
        assert results[source]["max_diff"] <= 1e-6
        assert results[source]["words"] == [["Obama", "visits", "Berlin"]]


def test_embed_present_encodes_each_distinct_image_once():
    from clip_promptmner import embed_present

    calls = []

    def encode(images):
        calls.append(list(images))
        return torch.tensor([[float(value), 1.0] for value in images], dtype=torch.float64)

    shared = 3
    embeds, has_image = embed_present([shared, None, 5, shared], encode, dim=2)
    assert calls == [[3, 5]]
    assert embeds.dtype == torch.float32 and has_image.dtype == torch.bool
    assert embeds.tolist() == [[3.0, 1.0], [0.0, 0.0], [5.0, 1.0], [3.0, 1.0]]
    assert has_image.tolist() == [True, False, True, True]
    embeds, has_image = embed_present([None, None], encode, dim=4)
    assert embeds.shape == (2, 4) and not embeds.any() and not has_image.any() and len(calls) == 1
