"""Training with `transformers.Trainer` (`mner_trainer.SpanMetrics`, `mner_training.MNERCollator`): the metrics are the
project's own evaluation of the same weights, whatever the Trainer's batching; the collator encodes images as the
embedding cache does; a few Trainer steps on tiny models lower the loss and save a folder that loads elsewhere; the
documented example runs."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import EvalPrediction
from transformers.trainer_pt_utils import nested_concat

import mner_data
import mner_evaluation
from conftest import TINY_PROMPT_VOCABULARY
from mner_embedding_cache import add_image_embeddings
from mner_metric import entity_metric
from mner_trainer import SpanMetrics, flat_scores
from mner_training import MNERCollator
from processes import REPO_ROOT, run, run_python
from span_utils import bio_to_spans

TAGS = [
    ["B-PER", "I-PER", "O", "B-LOC"],
    ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O"],  # 5 words: longer than max_span_length=4
    ["B-MISC"],
    ["O", "O", "I-PER", "O", "B-LOC", "I-LOC"],  # an I- after O opens an entity
    ["B-LOC", "O"],
]


def words(tags):
    return [f"w{index}" for index in range(len(tags))]


def trainer_outputs(processor, batches, concat: bool, seed: int = 0):
    """Random span logits for batches of examples of different word counts, gathered as the Trainer gathers them:
    concatenated (the word axis padded with -100) or one entry per batch."""
    generator = torch.Generator().manual_seed(seed)
    logits, labels = [], []
    for tags in batches:
        batch = processor([words(t) for t in tags], is_split_into_words=True, tags=tags)
        shape = (*batch["labels"].shape, len(processor.labels))
        logits.append((torch.randn(shape, generator=generator) * 3).numpy())
        labels.append(batch["labels"].numpy())
    if not concat:
        return EvalPrediction(predictions=logits, label_ids=labels), logits, labels
    joined_logits, joined_labels = logits[0], labels[0]
    for more_logits, more_labels in zip(logits[1:], labels[1:]):
        joined_logits = nested_concat(joined_logits, more_logits, padding_index=-100)
        joined_labels = nested_concat(joined_labels, more_labels, padding_index=-100)
    return EvalPrediction(predictions=(joined_logits,), label_ids=joined_labels), logits, labels


def test_span_metrics_decode_and_score_as_the_project_evaluation(tiny_processor):
    """Concatenated and per-batch predictions give the scores of decode_word_spans per batch against the gold tags,
    and the long entity that the label grid cannot hold is missed, as run_mner counts it."""
    batches = [TAGS[:2], TAGS[2:]]
    expected_spans = []
    for concat in (True, False):
        prediction, logits, labels = trainer_outputs(tiny_processor, batches, concat)
        expected_spans = [
            span
            for batch_logits, tags in zip(logits, batches)
            for span in tiny_processor.decode_word_spans(torch.from_numpy(batch_logits), [len(t) for t in tags])
        ]
        expected = entity_metric().compute(predictions=expected_spans, references=TAGS)
        assert SpanMetrics(tiny_processor, TAGS)(prediction) == flat_scores(expected)
    assert sum(map(len, expected_spans)) > 0
    from_labels = SpanMetrics(tiny_processor)(prediction)
    assert from_labels["number"] == flat_scores(expected)["number"] - 1 == 6  # the 5-word ORG is not in the grid
    assert from_labels["ORG_number"] == 0 and flat_scores(expected)["ORG_number"] == 1


def test_span_metrics_refuse_the_tags_of_another_dataset(tiny_processor):
    prediction, _, _ = trainer_outputs(tiny_processor, [TAGS], concat=True)
    with pytest.raises(ValueError, match="gold tags for 4 examples but the Trainer evaluated 5"):
        SpanMetrics(tiny_processor, TAGS[:4])(prediction)
    other = [list(tags) for tags in TAGS]
    other[3] = ["O"] * 6
    with pytest.raises(ValueError, match=r"example 3's labels mark \[\(2, 2, 'PER'\), \(4, 5, 'LOC'\)\]"):
        SpanMetrics(tiny_processor, other)(prediction)
    with pytest.raises(ValueError, match="needs the labels"):
        SpanMetrics(tiny_processor)(EvalPrediction(predictions=prediction.predictions, label_ids=None))


def test_collator_encodes_images_as_the_embedding_cache(tiny_processor, tmp_path):
    """Rows with an image (a decoded image, stored bytes or a path) give the batch of the same rows with cached
    embeddings; a missing or undecodable image takes the text-only path in both."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"{index}.jpg")
        Image.fromarray(rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    rows = [
        {"tokens": ["Kevin", "Durant"], "tags": ["B-PER", "I-PER"], "image_path": None, "image": Image.open(paths[0])},
        {"tokens": ["in", "Oklahoma"], "tags": ["O", "B-LOC"], "image_path": None,
         "image": {"bytes": paths[1].read_bytes(), "path": None}},
        {"tokens": ["today"], "tags": ["O"], "image_path": str(paths[2]), "image": None},
        {"tokens": ["no", "image"], "tags": ["O", "O"], "image_path": str(tmp_path / "gone.jpg"), "image": None},
        {"tokens": ["bad", "image"], "tags": ["O", "O"], "image_path": str(tmp_path / "bad.jpg"), "image": None},
    ]  # fmt: skip
    import datasets

    table = datasets.Dataset.from_dict({"image_path": [row["image_path"] for row in rows],
                                        "image": [row["image"] for row in rows]},
                                       features=datasets.Features({"image_path": datasets.Value("string"),
                                                                   "image": datasets.Image()}))  # fmt: skip
    cached, _ = add_image_embeddings(datasets.DatasetDict({"x": table}), tiny_processor, tmp_path / "cache")
    collator = MNERCollator(tiny_processor, max_length=32)
    direct = collator(rows)
    from_cache = collator([{**row, "image_embeds": embeds} for row, embeds in zip(rows, cached["x"]["image_embeds"])])
    assert direct["has_image"].tolist() == [True, True, True, False, False] == from_cache["has_image"].tolist()
    torch.testing.assert_close(direct["image_embeds"], from_cache["image_embeds"], atol=1e-5, rtol=0)
    for key in ("input_ids", "word_start_index", "labels"):
        assert torch.equal(direct[key], from_cache[key])
    assert "image_embeds" not in MNERCollator(tiny_processor, text_only=True)(rows)


def test_collator_names_what_the_trainer_dropped(tiny_processor):
    with pytest.raises(ValueError, match=r"need a 'tokens' column .* got \['input_ids'\].*remove_unused_columns=False"):
        MNERCollator(tiny_processor)([{"input_ids": [1, 2]}])


@pytest.fixture
def fresh_accelerate_state():
    """The Trainer initialises Accelerate's process-wide state; later tests start without it."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_trainer_trains_evaluates_like_the_project_and_saves(twitter_slice, slice_dataset, roberta_tokenizer,
                                                            tiny_clip_config, tmp_path, fresh_accelerate_state):
    """A few Trainer steps on tiny models and the Twitter-2015 slice as a datasets dataset with images: the training
    and dev losses fall; trainer.evaluate() reports the scores of mner_evaluation.evaluate on the same weights
    (concatenated or per-batch predictions); trainer.save_model with the processor loads in a fresh process without
    this package (AutoModel, AutoProcessor, trust_remote_code) and gives the same logits."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainingArguments

    from mner_backbone import model_from_backbone
    from processing_promptmner import PromptMNERProcessor
    from tiny_models import tiny_roberta

    raw = mner_data.load_hf_dataset(str(slice_dataset["folder"]))
    torch.manual_seed(0)
    processor = PromptMNERProcessor.from_clip(
        roberta_tokenizer, clip_config=copy.deepcopy(tiny_clip_config), clip_pretrained=None,
        prompt_vocabulary=TINY_PROMPT_VOCABULARY, max_span_length=4, labels=mner_data.label_list(raw),
    )  # fmt: skip
    data, _ = add_image_embeddings(raw, processor, tmp_path / "cache", batch_size=16)
    backbone = tiny_roberta(len(roberta_tokenizer), roberta_tokenizer.pad_token_id, max_positions=128)
    model = model_from_backbone(backbone, processor=processor, prompts="continuous", num_prompts=4)
    with torch.no_grad():  # a head that starts out predicting entities, so that the F1s compared are not all 0
        model.span_head.classifier.bias.copy_(torch.tensor([0.0, 1.0, 0.9, 0.8, 0.7]))
    collator = MNERCollator(processor, max_length=64)  # cuts off some words: gold entities the grid cannot hold
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), remove_unused_columns=False, per_device_train_batch_size=8,
        per_device_eval_batch_size=4, max_steps=10, learning_rate=3e-4, warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=collator, processing_class=processor,
                      compute_metrics=SpanMetrics(processor, data["validation"]["tags"]))  # fmt: skip
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert after["eval_loss"] < before["eval_loss"]
    loader = DataLoader(data["validation"], batch_size=4, collate_fn=collator)
    ours = mner_evaluation.evaluate(trainer.model, loader, Accelerator(cpu=True), processor, data["validation"]["tags"])
    print(f"dev F1: trainer.evaluate() {after['eval_f1']!r}, mner_evaluation.evaluate {ours['f1']!r}")
    assert 0 < after["eval_f1"] == ours["f1"]
    assert {k: after[f"eval_{k}"] for k in flat_scores(ours)} == flat_scores(ours)
    assert ours["number"] == sum(len(bio_to_spans(tags)) for tags in data["validation"]["tags"])
    per_batch = Trainer(model=trainer.model, args=dataclasses.replace(args, eval_do_concat_batches=False),
                        eval_dataset=data["validation"], data_collator=collator,
                        compute_metrics=SpanMetrics(processor, data["validation"]["tags"]))  # fmt: skip
    scores = lambda metrics: {k: v for k, v in metrics.items() if k[len("eval_"):] in flat_scores(ours)}  # noqa: E731
    assert scores(per_batch.evaluate()) == scores(after) and len(scores(after)) == len(flat_scores(ours))
    trainer.compute_metrics = SpanMetrics(processor, data["test"]["tags"])  # 20 tweets too, other entities
    with pytest.raises(ValueError, match="give it the tags of the dataset being evaluated"):
        trainer.evaluate()

    saved = tmp_path / "saved"
    trainer.save_model(str(saved))
    image = str(next(p for p in twitter_slice["image_dir"].iterdir() if p.stem not in twitter_slice["missing"]))
    texts = [" ".join(tokens) for tokens in data["test"]["tokens"][:3]]
    inputs = processor(text=texts, images=[image, None, image], max_length=64)
    with torch.no_grad():
        expected = trainer.model.eval()(**inputs).logits
    code = f"""
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(saved)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(saved)!r}, trust_remote_code=True).eval()
        inputs = processor(text={texts!r}, images=[{image!r}, None, {image!r}], max_length=64)
        with torch.no_grad():
            np.save({str(tmp_path / "logits.npy")!r}, model(**inputs).logits.numpy())
    """
    run_python(code, tmp_path, HF_MODULES_CACHE=str(tmp_path / "modules"))
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "logits.npy")), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_trainer_example_trains_and_saves_a_pipeline_folder(slice_dataset, tiny_backbone, clip_config_file,
                                                                 tmp_path):
    """`examples/train_with_trainer.py` on the slice dataset folder: its dev and test scores are those of the saved
    folder's model under the project's evaluation, and the folder runs as pipeline("multimodal-ner") in a fresh process
    without this package."""
    output = tmp_path / "out"
    command = [sys.executable, str(REPO_ROOT / "examples" / "train_with_trainer.py"),
               "--dataset", str(slice_dataset["folder"]), "--model_name_or_path", str(tiny_backbone),
               "--clip_config", str(clip_config_file), "--num_prompts", "4", "--max_span_length", "4",
               "--max_length", "64", "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
               "--per_device_eval_batch_size", "8", "--output_dir", str(output)]  # fmt: skip
    run(command, tmp_path)
    results = json.loads((output / "all_results.json").read_text())
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from mner_runtime import load_model_and_processor

    model, processor = load_model_and_processor(output / "model")
    raw = mner_data.load_hf_dataset(str(slice_dataset["folder"]))
    data, _ = add_image_embeddings(raw, processor, output / "image_embeddings")
    for split, prefix in (("validation", "eval"), ("test", "test")):
        loader = DataLoader(data[split], batch_size=8, collate_fn=MNERCollator(processor, 64))
        ours = mner_evaluation.evaluate(model, loader, Accelerator(cpu=True), processor, data[split]["tags"])
        assert results[split][f"{prefix}_f1"] == ours["f1"] and results[split][f"{prefix}_number"] == ours["number"]
    code = f"""
        from transformers import pipeline
        ner = pipeline("multimodal-ner", model={str(output / "model")!r}, trust_remote_code=True)
        print(type(ner).__name__, ner("Kevin Durant arrives in Oklahoma City"))
    """
    printed = run_python(code, tmp_path, HF_MODULES_CACHE=str(tmp_path / "modules"))
    assert printed.startswith("MultimodalNERPipeline [")
