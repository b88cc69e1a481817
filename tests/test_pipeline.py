"""The `multimodal-ner` pipeline, long-text chunking and the model card (batch prediction: test_prediction.py)."""

from __future__ import annotations

import ast
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TWEET_SENTENCES
from processes import offline_hub_cache, run_python
from tiny_models import assert_same_entities, tiny_span_model
from tweet_words import split_words
from modeling_promptmner import PromptMNERForSpanNER
from mner_model_card import WIDGET_EXAMPLES, usage_snippets
from pipeline_promptmner import MultimodalNERPipeline, chunk_word_ranges, merge_chunk_candidates, save_pipeline

REPO_ID = "org/promptmner-pipeline-tiny"
ODD_TEXTS = [
    "  RT @NBA:  LeBron   James\tscores 40!!! http://t.co/x.  ",
    "Jean-Luc meets the U.S. team in Zürich 😂😂 #WorldCup",
    "",
]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "tweet.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def reference_entities(model, processor, texts, images=None):
    """Entities from the processor and the model directly, one batch."""
    inputs = processor(text=texts, images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return processor.post_process(outputs, inputs)


# --- equality with processor + model -----------------------------------------------------------------------------


def test_string_input_equals_processor_and_model(pipe, model, tiny_roberta_processor):
    text = TWEET_SENTENCES[0]
    expected = reference_entities(model, tiny_roberta_processor, text)[0]
    assert expected, "the biased tiny model should predict entities"
    assert pipe(text) == expected  # same single-example computation: exactly equal


def test_image_inputs_equal_processor_and_model(pipe, model, tiny_roberta_processor, image_file):
    text = TWEET_SENTENCES[1]
    expected = reference_entities(model, tiny_roberta_processor, text, images=str(image_file))
    assert pipe({"text": text, "image": str(image_file)}) == expected[0]
    assert pipe({"text": text, "image": Image.open(image_file)}) == expected[0]
    assert pipe({"text": text, "image": image_file}) == expected[0]


def test_list_input_and_batch_size_equal_processor_and_model(pipe, model, tiny_roberta_processor, image_file):
    texts = TWEET_SENTENCES[:5]
    images = [None, str(image_file), None, Image.open(image_file), str(image_file)]
    inputs = [texts[0], {"text": texts[1], "image": images[1]}, {"text": texts[2]}]
    inputs += [{"text": texts[3], "image": images[3]}, {"text": texts[4], "image": images[4]}]
    expected = reference_entities(model, tiny_roberta_processor, texts, images=images)
    one_by_one = pipe(inputs, batch_size=1)
    assert_same_entities(one_by_one, expected)
    assert_same_entities(pipe(inputs, batch_size=3), one_by_one)
    assert_same_entities(pipe(inputs, batch_size=8), one_by_one)
    assert pipe([]) == []


def test_batching_examples_of_different_word_counts_equals_one_by_one(pipe, image_file):
    """The library's default collate pads word indices with 0; the `word_mask` input keeps the results unchanged."""
    texts = ["Obama", TWEET_SENTENCES[9], TWEET_SENTENCES[0]]
    assert len({len(split_words(text)) for text in texts}) == len(texts)
    for images in ([None, None, None], [str(image_file), None, str(image_file)]):
        inputs = [{"text": text, "image": image} for text, image in zip(texts, images)]
        one_by_one = [pipe(example) for example in inputs]
        assert any(one_by_one)
        assert_same_entities(pipe(inputs, batch_size=3), one_by_one)
        assert_same_entities(pipe(inputs[::-1], batch_size=2), one_by_one[::-1])


def test_batching_needs_a_right_padding_tokenizer(pipe, monkeypatch):
    monkeypatch.setattr(pipe.tokenizer, "padding_side", "left")
    assert pipe("Obama") == pipe(["Obama"], batch_size=1)[0]  # no batch, no padding
    with pytest.raises(ValueError, match="padding_side"):
        pipe(["Obama", TWEET_SENTENCES[0]], batch_size=2)


def test_text_without_image_takes_the_text_only_path(pipe, model, tiny_roberta_processor, image_file):
    text = TWEET_SENTENCES[2]
    inputs = tiny_roberta_processor(text=text, return_tensors="pt")
    assert "image_embeds" not in inputs
    with torch.no_grad():
        text_only = tiny_roberta_processor.post_process(model(**inputs), inputs)[0]
    assert pipe(text) == text_only
    assert pipe({"text": text, "image": None}) == text_only
    # In a batch next to an example with an image, its visual block is masked out: the same result.
    mixed = pipe([{"text": TWEET_SENTENCES[0], "image": str(image_file)}, text], batch_size=2)
    assert_same_entities([mixed[1]], [text_only])
    with_image = pipe({"text": text, "image": str(image_file)})
    assert with_image != text_only  # the image does change the prediction of this random model


def test_start_end_slice_the_original_string(pipe, image_file):
    for text in ODD_TEXTS + TWEET_SENTENCES:
        for inputs in (text, {"text": text, "image": str(image_file)}):
            entities = pipe(inputs)
            for entity in entities:
                assert text[entity["start"] : entity["end"]] == entity["word"]
                assert set(entity) == {"entity_group", "score", "word", "start", "end"}
                assert isinstance(entity["score"], float)
            assert [e["start"] for e in entities] == sorted(e["start"] for e in entities)
    assert pipe("") == [] and pipe("   ") == []


def test_threshold_and_ignore_labels(pipe):
    text = TWEET_SENTENCES[0]
    entities = pipe(text)
    assert all(e["score"] >= 0.25 for e in pipe(text, threshold=0.25))
    assert len(pipe(text, threshold=0.25)) < len(entities)
    assert all(e["entity_group"] != "PER" for e in pipe(text, ignore_labels=["PER"]))
    assert pipe(text, aggregation_strategy="simple") == entities


def test_clear_errors_for_bad_inputs(pipe, model, roberta_tokenizer):
    with pytest.raises(ValueError, match="unknown input keys"):
        pipe({"text": "hello", "images": "a.png"})
    with pytest.raises(ValueError, match="'text' must be a string"):
        pipe({"image": None})
    with pytest.raises(TypeError, match="string or a dict"):
        pipe(42)
    with pytest.raises(FileNotFoundError, match="no_such.png"):
        pipe({"text": "hello", "image": "no_such.png"})
    with pytest.raises(ValueError, match="stride"):
        pipe("hello", stride=-1)
    with pytest.raises(TypeError, match="PromptMNERProcessor"):
        MultimodalNERPipeline(model=model, processor=roberta_tokenizer, device="cpu")


# --- long texts --------------------------------------------------------------------------------------------------


def test_chunk_word_ranges_cover_the_words_within_budget():
    counts = [1, 2, 1, 3, 1, 1, 2, 1, 1, 1, 4, 1]
    for budget in (4, 5, 7, 30):
        for stride in (0, 1, 2, 5):
            ranges = chunk_word_ranges(counts, budget, stride)
            assert ranges[0][0] == 0 and ranges[-1][1] == len(counts)
            for (start, end), (next_start, next_end) in zip(ranges, ranges[1:]):
                assert start < next_start <= end < next_end  # advancing, overlapping or adjacent, no gap
            for start, end in ranges:
                assert sum(counts[start:end]) <= budget or end - start == 1
    assert chunk_word_ranges([1] * 10, budget=4, stride=2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert chunk_word_ranges([], budget=4, stride=2) == [(0, 0)]
    assert chunk_word_ranges([9, 1], budget=4, stride=1) == [(0, 1), (1, 2)]


def test_merge_prefers_spans_away_from_cut_edges():
    candidates = [
        (10, 10, "LOC", 0.99, True),  # "Oklahoma" alone, at the cut edge of the first chunk
        (10, 11, "LOC", 0.80, False),  # "Oklahoma City", inside the second chunk
        (3, 4, "PER", 0.70, False),  # seen by two chunks: inside one, at the edge of the other
        (3, 4, "PER", 0.90, True),
        (20, 20, "ORG", 0.60, True),  # at an edge, but nothing else covers it: kept
    ]
    assert merge_chunk_candidates(candidates) == [(3, 4, "PER", 0.70), (10, 11, "LOC", 0.80), (20, 20, "ORG", 0.60)]
    single_chunk = [(0, 1, "PER", 0.6, False), (1, 2, "LOC", 0.7, False)]
    assert merge_chunk_candidates(single_chunk) == [(1, 2, "LOC", 0.7)]


ANCHOR, TAIL = "Oklahoma", "City"
FILLER = ["we", "watch", "the", "game", "tonight"]


def place_name_detector(processor) -> PromptMNERForSpanNER:
    """A model that labels exactly the two-word span "Oklahoma City" LOC, in any context and at any position.

    The layers' output projections are zeroed, and so are position and token type embeddings, so a token's final
    hidden state is LayerNorm of its word embedding, whatever surrounds it. The "oklahoma" and "city" embeddings are
    one-hot on dimensions 0 and 1 (which no other token uses); one span-MLP unit fires on a span starting with
    "oklahoma", one on a span ending with "city", and LOC beats "O" only when both fire.
    """
    model = tiny_span_model(processor, max_positions=64, num_layers=1)
    tokenizer, hidden = processor.tokenizer, model.config.hidden_size
    anchor, tail = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)) for word in (ANCHOR, TAIL))
    assert len(anchor) == len(tail) == 1, "the detector needs single-token words"
    loc = processor.labels.index("LOC")
    with torch.no_grad():
        embeddings = model.promptmner.embeddings
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        embeddings.word_embeddings.weight[:, :2] = 0.0
        for token, dim in ((anchor[0], 0), (tail[0], 1)):
            embeddings.word_embeddings.weight[token] = 0.0
            embeddings.word_embeddings.weight[token, dim] = 10.0
        for layer in model.promptmner.encoder.layer:
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
        dense, classifier = model.span_head.dense, model.span_head.classifier
        dense.weight.zero_()
        dense.bias.zero_()
        dense.weight[0, 0] = 1.0  # h_start[0]: the span starts with "oklahoma"
        dense.weight[1, hidden + 1] = 1.0  # h_end[1]: the span ends with "city"
        dense.bias[:2] = -4.0
        classifier.weight.zero_()
        classifier.bias.copy_(torch.full((len(processor.labels),), -10.0))
        classifier.bias[0] = 0.0
        classifier.bias[loc] = -20.0
        classifier.weight[loc, :2] = 10.0
    return model.eval()


@pytest.fixture(scope="module")
def detector_pipe(tiny_processor):
    return MultimodalNERPipeline(model=place_name_detector(tiny_processor), processor=tiny_processor, device="cpu")


def long_text(num_words: int, entity_positions: list[int]) -> str:
    words = [FILLER[i % len(FILLER)] for i in range(num_words)]
    for position in entity_positions:
        words[position : position + 2] = [ANCHOR, TAIL]
    return " ".join(words)


@pytest.mark.parametrize("with_image", [False, True])
def test_long_text_entity_straddling_a_chunk_boundary_is_found_once(detector_pipe, image_file, with_image):
    pipe = detector_pipe
    window = pipe.window(has_image=with_image)  # 64 positions - pad id 0 - 1 (- 5 prompts - 1 with an image)
    assert window == (57 if with_image else 63)
    budget = window - pipe.processor.tokenizer.num_special_tokens_to_add()
    cut = budget  # every filler word is one token, so the first chunk holds words 0 .. budget - 1
    # One entity straddles the first cut; another lies inside the overlap of the first two chunks.
    text = long_text(3 * budget, [cut - 1, cut - 6])
    make = (lambda t: {"text": t, "image": str(image_file)}) if with_image else (lambda t: t)
    ranges = chunk_word_ranges([1] * (3 * budget), budget, stride=2 * pipe.processor.max_span_length)
    assert ranges[0] == (0, cut) and ranges[1][0] <= cut - 6 and len(ranges) >= 3

    expected_starts = [m.start() for m in re.finditer(f"{ANCHOR} {TAIL}", text)]
    for batch_size in (1, 4):
        entities = pipe(make(text), batch_size=batch_size)
        assert [(e["entity_group"], e["word"], e["start"]) for e in entities] == [
            ("LOC", f"{ANCHOR} {TAIL}", start) for start in expected_starts
        ]
        assert all(e["score"] > 0.99 for e in entities)
    # Control: without overlap, the straddling entity is cut in two and lost; the other one is still found.
    no_overlap = pipe(make(text), stride=0)
    assert [e["start"] for e in no_overlap] == expected_starts[:1]
    # A short text is one chunk: the detector finds the entity there too.
    assert [e["word"] for e in pipe(make(f"we watch {ANCHOR} {TAIL} tonight"))] == [f"{ANCHOR} {TAIL}"]


def test_long_text_with_a_random_model_keeps_offsets(pipe, image_file):
    text = " ".join(TWEET_SENTENCES * 2)
    for inputs in (text, {"text": text, "image": str(image_file)}):
        entities = pipe(inputs, batch_size=4)
        assert entities and all(text[e["start"] : e["end"]] == e["word"] for e in entities)
        words = [(e["start"], e["end"]) for e in entities]
        assert all(end <= next_start for (_, end), (next_start, _) in zip(words, words[1:]))  # no overlap


def walked_objects(value) -> int:
    """How many objects transformers' pipeline machinery walks in `value` on every move between devices and every
    collate: dicts, lists and tuples item by item, anything else (a tensor, an array, a string) as one."""
    if isinstance(value, dict):
        return 1 + sum(walked_objects(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return 1 + sum(walked_objects(item) for item in value)
    return 1


def test_what_travels_with_a_chunk_does_not_grow_with_the_text(pipe, image_file):
    """A chunk carries its own tensors and a few numbers; the text and its offsets travel once, as a string and an
    array; the forward pass hands on span candidates, not logits. Ten times the words: the same per-chunk payload."""
    sizes = {}
    for repeats in (4, 40):
        text = " ".join(TWEET_SENTENCES * repeats)
        chunks = list(pipe.preprocess({"text": text, "image": str(image_file)}))
        assert len(chunks) > 3 * repeats // 4  # many chunks: the fixture model's window is 64 positions
        assert "text" in chunks[0]["chunk"] and all("text" not in chunk["chunk"] for chunk in chunks[1:])
        outputs = [pipe.forward(chunk) for chunk in chunks]
        assert all(set(output) == {"candidates", "chunk", "is_last"} for output in outputs)
        sizes[repeats] = [max(map(walked_objects, items)) for items in (chunks, outputs)]
    assert sizes[40][0] == sizes[4][0]  # the largest chunk input: the same whatever the text's length
    assert sizes[40][1] <= sizes[4][1] + 4 * 50  # outputs: the candidates of one chunk (a handful of spans)


def test_an_example_image_is_encoded_once_for_all_its_chunks(pipe, image_file):
    """CLIP runs once per example, not once per chunk, one by one or batched (the result is unchanged: the long-text
    tests above hold it)."""
    scorer = pipe.processor.image_scorer
    calls = []
    encode = scorer.encode_images
    scorer.encode_images = lambda images, **kwargs: calls.append(len(images)) or encode(images, **kwargs)
    try:
        text = " ".join(TWEET_SENTENCES * 3)
        for batch_size in (1, 4):
            calls.clear()
            pipe([{"text": text, "image": str(image_file)}] * 2, batch_size=batch_size)
            assert sum(calls) == 2, (batch_size, calls)  # two examples (the same file, decoded twice): two images
    finally:
        del scorer.encode_images


def test_cpu_threads_follow_an_explicit_choice(model, tiny_roberta_processor):
    """`num_threads` sets torch's threads; a choice made with `torch.set_num_threads` stays; the default is the
    process's share of the cores, at least one."""
    import pipeline_promptmner
    from pipeline_promptmner import default_num_threads, set_cpu_threads

    before = torch.get_num_threads()
    try:
        MultimodalNERPipeline(model=model, processor=tiny_roberta_processor, device="cpu", num_threads=1)
        assert torch.get_num_threads() == 1
        chosen = pipeline_promptmner._TORCH_THREADS_AT_IMPORT + 1  # unlike torch's own count, so it reads as chosen
        torch.set_num_threads(chosen)
        MultimodalNERPipeline(model=model, processor=tiny_roberta_processor, device="cpu")
        assert torch.get_num_threads() == chosen  # the user's choice, not the default
        assert 1 <= default_num_threads() <= len(os.sched_getaffinity(0))
        assert default_num_threads(processes=64) == 1
        with pytest.raises(ValueError, match="num_threads must be an integer >= 1"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("idle", "cores", "processes", "threads"),
    [
        (2.0, 2, 1, 2),  # a quiet machine: every core
        (1.5, 2, 1, 2),  # a blip of half a core in the sample: still every core
        (1.0, 2, 1, 1),  # another job keeps a core busy: the other one only
        (0.1, 2, 1, 1),  # everything busy: at least one
        (7.9, 8, 2, 4),  # two processes share the cores
        (5.2, 8, 2, 3),  # ... and what other work leaves idle
        (None, 8, 1, 8),  # /proc/stat unreadable: the share
    ],
)
def test_threads_take_the_cores_other_work_leaves_idle(idle, cores, processes, threads):
    from pipeline_promptmner import threads_for_idle_cores

    assert threads_for_idle_cores(idle, cores, processes) == threads


@pytest.mark.parametrize(
    ("idle", "cores", "processes", "workers"),
    [
        (2.0, 2, 1, 1),  # quiet: a worker decodes images while the model runs
        (1.0, 2, 1, 0),  # another job has a core: the worker would take time slices from the model's thread
        (1.0, 2, 2, 1),  # two processes of a core each: half of each is idle, so neither counts as taken
        (None, 2, 1, 1),  # not known: one
    ],
)
def test_prediction_workers_only_beside_a_free_core(idle, cores, processes, workers):
    from mner_prediction import workers_for_idle_cores

    assert workers_for_idle_cores(idle, cores, processes) == workers


# --- saved with the model, loaded by repo id in a fresh process ---------------------------------------------------


@pytest.mark.slow
def test_pipeline_loads_by_repo_id_in_a_fresh_process(pipe, model, tiny_roberta_processor, image_file, tmp_path):
    folder = tmp_path / "saved"
    save_pipeline(model, tiny_roberta_processor, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["multimodal-ner"]["impl"] == "pipeline_promptmner.MultimodalNERPipeline"
    assert (folder / "pipeline_promptmner.py").is_file() and (folder / "processor_config.json").is_file()

    (tmp_path / "tweet.png").write_bytes(image_file.read_bytes())
    inputs = [TWEET_SENTENCES[0], {"text": TWEET_SENTENCES[1], "image": "tweet.png"}]
    expected = pipe([inputs[0], {"text": TWEET_SENTENCES[1], "image": str(image_file)}])
    cache = tmp_path / "hub"
    offline_hub_cache(folder, cache, REPO_ID)
    output = run_python(
        f"""
        import json
        from transformers import pipeline

        ner = pipeline("multimodal-ner", model={REPO_ID!r}, trust_remote_code=True, device="cpu")
        print(json.dumps({{
            "pipeline_class": type(ner).__module__ + "." + type(ner).__name__,
            "processor_class": type(ner.processor).__module__ + "." + type(ner.processor).__name__,
            "entities": ner({inputs!r}, batch_size=2),
        }}))
        """,
        cwd=tmp_path,
        HF_HUB_CACHE=str(cache), HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    result = json.loads(output.strip().splitlines()[-1])
    assert result["pipeline_class"].startswith("transformers_modules.")
    assert result["pipeline_class"].endswith("pipeline_promptmner.MultimodalNERPipeline")
    assert result["processor_class"].startswith("transformers_modules.")
    assert_same_entities(result["entities"], expected)


def test_processor_found_next_to_the_model_and_factory_with_objects(saved_folder, pipe, model, tiny_roberta_processor):
    from transformers import pipeline

    text = TWEET_SENTENCES[0]
    loaded = PromptMNERForSpanNER.from_pretrained(saved_folder).eval()
    assert MultimodalNERPipeline(model=loaded, device="cpu")(text) == pipe(text)  # processor loaded from the folder
    ner = pipeline("multimodal-ner", model=model, processor=tiny_roberta_processor, device="cpu")
    assert isinstance(ner, MultimodalNERPipeline) and ner(text) == pipe(text)


# --- model card ---------------------------------------------------------------------------------------------------


def test_model_card_with_usage_and_widget_parses():
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="token-classification",
        tags=["multimodal-ner"],
        widget=WIDGET_EXAMPLES,
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n# Model\n\n{usage_snippets('org/promptmner-tiny')}")
    parsed = ModelCard(str(card))
    assert parsed.data.pipeline_tag == "token-classification"
    assert [example["text"] for example in parsed.data.widget] == [example["text"] for example in WIDGET_EXAMPLES]
    blocks = re.findall(r"```python\n(.*?)```", parsed.text, flags=re.DOTALL)
    assert len(blocks) == 2 and all("org/promptmner-tiny" in block for block in blocks)
    for block in blocks:
        ast.parse(block)  # the snippets are valid Python
    assert 'pipeline("multimodal-ner"' in blocks[0] and "AutoProcessor" in blocks[1]
