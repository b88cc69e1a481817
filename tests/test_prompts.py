"""Prompt vocabularies (task labels, KB-retrieved, expert, user files, combinations, continuous) and explanations."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertModel

import explain_prompts
from mner_runtime import load_model_and_processor
import prompt_vocabularies as pv
import prompt_vocabulary_kb
import tiny_models
from processes import run
from mner_backbone import model_from_backbone
from modeling_promptmner import PromptMNERForSpanNER
from processing_promptmner import PromptMNERProcessor

ROOT = Path(__file__).resolve().parent.parent
KB_SCRIPT = ROOT / "scripts" / "build_kb_vocabulary.py"
WORDNET_DIR = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(), reason="WordNet database not installed (apt-get install wordnet-base)"
)
TEMPLATE = "a photo of {}"


def load_kb_script():
    """Import scripts/build_kb_vocabulary.py (not an installed module) once."""
    name = "build_kb_vocabulary"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, KB_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "my_words.txt"
    path.write_text("# my prompt words\nreferee\n\n  red   card  # a phrase\nreferee\ncorner flag\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_bert(bert_tokenizer) -> BertModel:
    """A random 2-layer BERT on the real MiniLM vocabulary, long enough for hundreds of visual tokens."""
    return tiny_models.tiny_bert(len(bert_tokenizer), bert_tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "tweet.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def processor_with(bert_tokenizer, tiny_clip_config, vocabulary) -> PromptMNERProcessor:
    torch.manual_seed(1234)
    return PromptMNERProcessor.from_clip(
        bert_tokenizer,
        clip_config=dict(tiny_clip_config),
        clip_pretrained=None,
        prompt_vocabulary=vocabulary,
        prompt_template=TEMPLATE,
        max_span_length=4,
    )


# --- vocabularies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["task_labels", "kb", "expert"])
def test_each_kind_is_a_nonempty_deduplicated_vocabulary(kind):
    words = pv.load_vocabulary(kind)
    assert words and len(words) == len(set(words))
    assert all(isinstance(word, str) and word == " ".join(word.split()) and "{" not in word for word in words)
    assert pv.prompt_kind(kind) == kind


def test_vocabulary_contents():
    assert pv.load_vocabulary("task_labels") == ["person", "location", "organization", "miscellaneous"]
    assert pv.load_vocabulary("kb") == list(prompt_vocabulary_kb.KB_VOCABULARY)
    assert 40 <= len(pv.EXPERT_VOCABULARY) <= 80
    assert {"player", "pants", "hat", "suit", "group of people", "team", "stadium", "flag", "logo"} <= set(
        pv.EXPERT_VOCABULARY
    )
    assert 100 <= len(pv.KB_VOCABULARY) <= 300


def test_combinations_keep_order_and_drop_repeats():
    kb, expert = pv.load_vocabulary("kb"), pv.load_vocabulary("expert")
    combined = pv.load_vocabulary("kb+expert")
    assert combined[: len(kb)] == kb
    assert combined == kb + [word for word in expert if word not in kb]
    assert len(combined) == len(set(kb) | set(expert))
    assert pv.load_vocabulary(" expert + task_labels ")[: len(expert)] == expert
    assert pv.load_vocabulary("task_labels+task_labels") == pv.load_vocabulary("task_labels")
    assert pv.prompt_kind("kb+expert") == "custom"


def test_user_file_and_its_combinations(user_file):
    assert pv.load_vocabulary(str(user_file)) == ["referee", "red card", "corner flag"]
    assert pv.load_vocabulary(user_file) == ["referee", "red card", "corner flag"]
    assert pv.load_vocabulary(f"task_labels+{user_file}")[4:] == ["referee", "red card", "corner flag"]
    assert pv.prompt_kind(str(user_file)) == "custom"
    assert pv.prompt_kind("continuous") == pv.prompt_kind(None) == "continuous"


@pytest.mark.parametrize(
    "content, message",
    [
        ("person\n# fine\nan {odd} word\n", ":3: braces"),
        ("person\n\n!!!\n", ":3: a prompt word needs a letter"),
        ("# only comments\n\n", "no prompt words"),
    ],
)
def test_user_file_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        pv.load_vocabulary(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("wordnet", "unknown prompt vocabulary 'wordnet'"),
        ("kb+", "empty part"),
        ("continuous", "learned vectors"),
        ("kb+/no/such/file.txt", "unknown prompt vocabulary '/no/such/file.txt'"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        pv.load_vocabulary(spec)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        pv.read_vocabulary_file(tmp_path / "missing.txt")


# --- the KB list and its generator ---------------------------------------------------------------------------


def test_shipped_kb_list_names_source_license_and_command():
    header = (ROOT / "prompt_vocabulary_kb.py").read_text(encoding="utf-8")
    assert "GENERATED FILE" in header and "python scripts/build_kb_vocabulary.py" in header
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in header
    assert prompt_vocabulary_kb.KB_SOURCE["knowledge_base"] == "Princeton WordNet 3.0"
    by_label = prompt_vocabulary_kb.KB_VOCABULARY_BY_LABEL
    assert list(by_label) == ["person", "location", "organization", "miscellaneous"]
    assert all(by_label.values())


def test_kb_lemma_filter():
    script = load_kb_script()
    assert script.clean_lemma("old_man") == "old man"
    assert script.clean_lemma("Paris") is None  # proper noun
    assert script.clean_lemma("ox") is None  # too short
    assert script.clean_lemma("a_b_c_d") is None  # too many words
    assert script.clean_lemma("self-employed_person") == "self-employed person"


@pytest.mark.slow
@needs_wordnet
def test_kb_generation_is_deterministic_and_matches_the_shipped_list(tmp_path):
    outputs = []
    for name in ("first.py", "second.py"):
        output = tmp_path / name
        run([sys.executable, str(KB_SCRIPT), "--wordnet-dir", str(WORDNET_DIR), "--output", str(output)], tmp_path)
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] == (ROOT / "prompt_vocabulary_kb.py").read_bytes(), (
        "prompt_vocabulary_kb.py is out of date: python scripts/build_kb_vocabulary.py"
    )


@needs_wordnet
def test_kb_words_are_hyponyms_and_offensive_words_are_dropped():
    script = load_kb_script()
    wordnet = script.WordNetNouns(WORDNET_DIR)
    person = [word for word, _, _ in script.related_words(wordnet, script.SEEDS["person"])]
    assert {"man", "woman", "player", "child"} <= set(person)
    assert not {"nigger", "bastard"} & set(person)  # ethnic slur / insult in WordNet's own usage labels


def test_kb_script_explains_a_missing_database(tmp_path):
    script = load_kb_script()
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        script.WordNetNouns(tmp_path)


def test_modules_ship_as_remote_code():
    """Top-level imports are stdlib or siblings, and the KB module travels with the vocabulary module."""
    from transformers.dynamic_module_utils import get_relative_import_files

    files = {Path(name).name for name in get_relative_import_files(str(ROOT / "prompt_vocabularies.py"))}
    assert "prompt_vocabulary_kb.py" in files
    siblings = {"prompt_vocabulary_kb", "prompt_vocabularies"}
    for name in ("prompt_vocabularies.py", "prompt_vocabulary_kb.py"):
        statements = []
        for statement in ast.parse((ROOT / name).read_text(encoding="utf-8")).body:
            statements.append(statement)
            if isinstance(statement, ast.Try):
                statements += statement.body + [node for handler in statement.handlers for node in handler.body]
        for statement in statements:
            if isinstance(statement, ast.Import):
                modules = [alias.name.split(".")[0] for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
                modules = [statement.module.split(".")[0]]
            else:
                continue
            assert all(m in sys.stdlib_module_names or m in siblings for m in modules), (name, modules)


# --- every discrete kind builds, saves, loads and feeds the model -------------------------------------------


@pytest.mark.parametrize("spec", ["task_labels", "kb", "expert", "kb+expert", "user_file"])
def test_discrete_kind_round_trip(
    spec, user_file, bert_tokenizer, tiny_clip_config, tiny_bert, image_file, tmp_path
):
    spec = str(user_file) if spec == "user_file" else spec
    vocabulary = pv.load_vocabulary(spec)
    processor = processor_with(bert_tokenizer, tiny_clip_config, vocabulary)
    prompt_embeds = processor.encode_prompts()
    assert prompt_embeds.shape == (len(vocabulary), tiny_clip_config["embed_dim"])
    model = model_from_backbone(tiny_bert, processor=processor, prompts=pv.prompt_kind(spec)).eval()
    assert model.config.prompt_kind == pv.prompt_kind(spec) and model.config.num_prompts == len(vocabulary)

    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["prompt_vocabulary"] == vocabulary and saved["prompt_template"] == TEMPLATE
    loaded, loaded_processor = load_model_and_processor(str(tmp_path))
    assert isinstance(loaded_processor, PromptMNERProcessor) and isinstance(loaded, PromptMNERForSpanNER)
    assert loaded_processor.prompt_vocabulary == vocabulary and loaded_processor.prompt_template == TEMPLATE
    torch.testing.assert_close(loaded.promptmner.visual_clues.prompt_embeds, prompt_embeds, atol=0, rtol=0)

    inputs = loaded_processor("Messi scores for Barcelona at Camp Nou", images=[str(image_file)])
    with torch.no_grad():
        output = loaded(**inputs)
    assert torch.isfinite(output.logits).all()
    assert output.prompt_probs.shape == (1, len(vocabulary))
    # the explanation is what the model computed
    explanation = pv.explain_model_images(loaded, loaded_processor, [str(image_file)], k=len(vocabulary))
    probs = {entry["prompt"]: entry["probability"] for entry in explanation[0]}
    expected = dict(zip(vocabulary, output.prompt_probs[0].tolist()))
    assert probs.keys() == expected.keys()
    assert all(abs(probs[word] - expected[word]) < 1e-6 for word in vocabulary)


# --- explanations --------------------------------------------------------------------------------------------


def test_top_prompts_rank_by_cosine_similarity(tiny_processor, image_file):
    vocabulary = tiny_processor.prompt_vocabulary
    prompt_embeds = tiny_processor.encode_prompts()
    image_embeds = tiny_processor.image_scorer.encode_images([str(image_file), Image.new("RGB", (64, 64), "red")])
    scale = tiny_processor.image_scorer.clip_logit_scale
    ranked = pv.top_prompts(image_embeds, prompt_embeds, vocabulary, scale, k=len(vocabulary))
    cosine = F.normalize(image_embeds, dim=-1) @ F.normalize(prompt_embeds, dim=-1).T
    for row, cos in zip(ranked, cosine):
        assert [word for word, _ in row] == [vocabulary[int(i)] for i in cos.argsort(descending=True)]
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1.0) < 1e-5
        expected = (scale * cos).softmax(-1)
        assert all(abs(p - float(expected[vocabulary.index(w)])) < 1e-6 for w, p in row)
    assert [len(row) for row in pv.top_prompts(image_embeds, prompt_embeds, vocabulary, scale, k=2)] == [2, 2]


def test_top_prompts_on_a_hand_built_example():
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    image = torch.tensor([3.0, 1.0])  # closest to [1, 0], then [1, 1], then [0, 1]
    ranked = pv.top_prompts(image, prompts, ["a", "b", "c"], logit_scale=10.0, k=3)
    assert [word for word, _ in ranked[0]] == ["a", "c", "b"]
    with pytest.raises(ValueError, match="2 words but there are 3"):
        pv.top_prompts(image, prompts, ["a", "b"], logit_scale=10.0)


def test_nearest_words_on_a_hand_built_example():
    vocab = torch.eye(3) * 2.0  # norms do not matter
    learned = torch.tensor([[1.0, 0.1, 0.0], [-1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    result = pv.nearest_words(learned, vocab, ["red", "green", "blue"], k=2)
    assert [[w for w, _ in row] for row in result] == [["red", "green"], ["blue", "green"], ["green", "blue"]]
    assert result[0][0][1] == pytest.approx(1.0 / np.sqrt(1.01), abs=1e-6)
    assert result[1][0][1] == pytest.approx(2.0 / np.sqrt(5.0), abs=1e-6)
    assert result[2][0][1] == pytest.approx(result[2][1][1])  # a tie keeps vocabulary order


# --- continuous prompts --------------------------------------------------------------------------------------


def test_continuous_init_from_a_vocabulary():
    vocab = F.normalize(torch.randn(5, 16), dim=-1)
    embeds = pv.initial_prompt_embeds(12, vocab, torch.Generator().manual_seed(0))
    assert embeds.shape == (12, 16)
    torch.testing.assert_close(embeds[:5], vocab, atol=0, rtol=0)
    repeats = torch.arange(5, 12) % 5
    cosine = (F.normalize(embeds[5:], dim=-1) * vocab[repeats]).sum(-1)
    assert (cosine > 0.98).all() and (cosine < 1 - 1e-6).all()  # near their word, but not tied to it
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(12))
    again = pv.initial_prompt_embeds(12, vocab, torch.Generator().manual_seed(0))
    torch.testing.assert_close(embeds, again, atol=0, rtol=0)
    torch.testing.assert_close(pv.initial_prompt_embeds(3, vocab), vocab[:3], atol=0, rtol=0)


def test_continuous_init_at_kmeans_centroids_finds_the_image_clusters():
    """Three tight clusters of image directions in a narrow cone: the centroids are unit vectors, one per cluster,
    at the cluster's mean direction, so each image is most similar to its own cluster's prompt."""
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 32, generator=generator), dim=-1)
    labels = torch.arange(60) % 3
    images = centres[labels] + 0.05 * torch.randn(60, 32, generator=generator)  # (60, 32)
    images = 5.0 * F.normalize(images, dim=-1)  # only directions count
    centroids = pv.kmeans_prompt_embeds(images, 3, torch.Generator().manual_seed(1))
    assert centroids.shape == (3, 32)
    torch.testing.assert_close(centroids.norm(dim=-1), torch.ones(3))
    nearest = (F.normalize(images, dim=-1) @ centroids.T).argmax(dim=1)  # (60,)
    for cluster in range(3):  # one centroid per cluster, near its true direction
        assert nearest[labels == cluster].unique().numel() == 1
        assert (centres[cluster] @ centroids[nearest[labels == cluster][0]]) > 0.99
    again = pv.kmeans_prompt_embeds(images, 3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(centroids, again, atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_prompts=61"):
        pv.kmeans_prompt_embeds(images, 61)
    with pytest.raises(ValueError, match="image_embeds"):
        pv.kmeans_prompt_embeds(torch.zeros(2, 3, 4), 1)


def test_continuous_init_at_random():
    first = pv.initial_prompt_embeds(30, generator=torch.Generator().manual_seed(3), embed_dim=32)
    second = pv.initial_prompt_embeds(30, generator=torch.Generator().manual_seed(3), embed_dim=32)
    other = pv.initial_prompt_embeds(30, generator=torch.Generator().manual_seed(4), embed_dim=32)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(30))
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert not torch.equal(first, other)
    with pytest.raises(ValueError, match="embed_dim"):
        pv.initial_prompt_embeds(30)
    with pytest.raises(ValueError, match="num_prompts"):
        pv.initial_prompt_embeds(0, embed_dim=4)


def test_vocabulary_embeds_file_round_trip_and_checks(tmp_path):
    embeds = torch.randn(3, 8)
    pv.save_vocabulary_embeds(tmp_path, embeds, ["a", "b", "c"], TEMPLATE)
    loaded, vocabulary = pv.load_vocabulary_embeds(tmp_path, ["a", "b", "c"], TEMPLATE)
    torch.testing.assert_close(loaded, embeds, atol=0, rtol=0)
    assert vocabulary == ["a", "b", "c"]
    with pytest.raises(ValueError, match="vocabulary differs"):
        pv.load_vocabulary_embeds(tmp_path, ["a", "b"])
    with pytest.raises(ValueError, match="template"):
        pv.load_vocabulary_embeds(tmp_path, prompt_template="an image of {}")
    with pytest.raises(FileNotFoundError, match="from_clip"):
        pv.load_vocabulary_embeds(tmp_path / "nothing")


# --- the command line ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def continuous_model_dir(tmp_path_factory, bert_tokenizer, tiny_clip_config, tiny_bert) -> Path:
    """A continuous-prompt model (7 prompts from the expert words), its processor and vocabulary embeddings."""
    folder = tmp_path_factory.mktemp("continuous")
    processor = processor_with(bert_tokenizer, tiny_clip_config, list(pv.EXPERT_VOCABULARY[:5]))
    vocab_embeds = processor.encode_prompts()
    init = pv.initial_prompt_embeds(7, vocab_embeds, torch.Generator().manual_seed(0))
    model = model_from_backbone(tiny_bert, processor=processor, prompts="continuous", prompt_embeds=init)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    pv.save_vocabulary_embeds(folder, vocab_embeds, processor.prompt_vocabulary, processor.prompt_template)
    return folder


def test_cli_explains_continuous_prompts_with_nearest_words(continuous_model_dir, image_file, capsys):
    assert explain_prompts.main(["--model", str(continuous_model_dir), "--image", str(image_file), "--top", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("prompt kind: continuous, 7 prompts")
    assert lines[1] == f"{image_file}:" and len(lines) == 2 + 7
    # before training, prompt i < 5 is exactly word i: its nearest word, at cosine 1
    for line in lines[2:]:
        index = int(line.split("prompt ")[1].split()[0])
        nearest = line.split("~ ")[1].split(",")[0]
        assert nearest.split(" (")[0] == pv.EXPERT_VOCABULARY[index % 5]
        if index < 5:
            assert nearest.endswith("(1.000)")


@pytest.mark.parametrize("learnable", [False, True])
def test_cli_explains_with_the_models_standardised_images_and_temperature(
    learnable, bert_tokenizer, tiny_clip_config, tiny_bert, image_file, tmp_path, capsys
):
    """A model saved with `standardize_image_embeds` and a temperature of its own (fixed 3, or learned and moved to
    e^1.5): the CLI's probabilities are the loaded model's `prompt_probabilities`, not CLIP's raw softmax."""
    processor = processor_with(bert_tokenizer, tiny_clip_config, list(pv.EXPERT_VOCABULARY[:6]))
    init = pv.initial_prompt_embeds(6, processor.encode_prompts(), torch.Generator().manual_seed(0))
    model = model_from_backbone(
        tiny_bert, processor=processor, prompts="continuous", prompt_embeds=init, standardize_image_embeds=True,
        clip_logit_scale=3.0, learnable_logit_scale=learnable,
    )  # fmt: skip
    clues = model.promptmner.visual_clues
    rng = np.random.default_rng(1)
    training = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    clues.set_image_statistics(processor.image_scorer.encode_images(training))
    if learnable:
        with torch.no_grad():
            clues.prompt_log_logit_scale.fill_(1.5)
    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)

    assert explain_prompts.main(["--model", str(tmp_path), "--image", str(image_file), "--top", "6", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)[str(image_file)]
    loaded, loaded_processor = load_model_and_processor(str(tmp_path))
    image_embeds = loaded_processor.image_scorer.encode_images([str(image_file)])
    with torch.no_grad():
        expected = loaded.promptmner.visual_clues.prompt_probabilities(image_embeds)[0]
    assert [entry["index"] for entry in entries] == expected.argsort(descending=True).tolist()
    np.testing.assert_allclose([entry["probability"] for entry in entries], expected.sort(descending=True).values,
                               atol=1e-6)  # fmt: skip
    # and these are not the paper's probabilities (raw embeddings at CLIP's temperature), which the CLI used to show
    raw = pv.prompt_probabilities(image_embeds, loaded.promptmner.visual_clues.prompt_embeds.detach(), 100.0)[0]
    assert (raw - expected).abs().max() > 1e-2


def test_cli_explains_discrete_prompts_as_json(bert_tokenizer, tiny_clip_config, tiny_bert, image_file, tmp_path, capsys):
    processor = processor_with(bert_tokenizer, tiny_clip_config, pv.load_vocabulary("task_labels"))
    model = model_from_backbone(tiny_bert, processor=processor, prompts="task_labels")
    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    argv = ["--model", str(tmp_path), "--image", str(image_file), "--top", "3", "--json"]
    assert explain_prompts.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    entries = result[str(image_file)]
    assert len(entries) == 3 and {entry["prompt"] for entry in entries} <= set(pv.TASK_LABELS)
    assert "nearest_words" not in entries[0]
