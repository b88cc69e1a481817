#!/usr/bin/env python
"""Train and evaluate PromptMNER with `transformers.Trainer` on a `datasets` dataset with images, then save a folder
that loads with `AutoModel`, `AutoProcessor` and `pipeline("multimodal-ner", trust_remote_code=True)`.

    python examples/train_with_trainer.py --dataset hub/twitter2015 --model_name_or_path roberta-base \
        --clip_model RN50 --clip_pretrained openai --num_train_epochs 10 --output_dir out/t15-trainer

`--dataset` is a Hub dataset id or a folder that `datasets.load_dataset` reads (`python -m mner_hub_dataset` writes
Twitter-2015/2017 so) with `tokens`, `ner_tags` and `image` columns. Without it the script runs offline: the
generated demo corpus of `run_mner.py`, written as such a dataset folder, the packaged all-MiniLM-L6-v2 and a small
random CLIP, with the demo's settings (a few minutes on 2 CPU cores).

What it writes in `--output_dir`: `model/` (the model, its processor, remote code and pipeline: a Hub repository),
`all_results.json` (dev and test scores of the best-dev model), `checkpoints/` (the Trainer's) and, for the demo,
`dataset/`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from transformers import Trainer, TrainingArguments

import mner_data
import mner_demo
import mner_hub_dataset
from atomic_files import write_json
from mner_backbone import model_from_backbone
from mner_console import quiet_library_progress_bars
from mner_embedding_cache import add_image_embeddings
from mner_trainer import SpanMetrics
from mner_training import MNERCollator, create_optimizer
from pipeline_promptmner import save_pipeline
from processing_promptmner import PromptMNERProcessor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="Hub id or dataset folder (default: the demo corpus, built offline)")
    parser.add_argument("--model_name_or_path", help="BERT-family text backbone (default: the packaged MiniLM)")
    parser.add_argument("--clip_model", default="RN50", help="open_clip model name (with --clip_pretrained)")
    parser.add_argument("--clip_pretrained", help="open_clip pretrained tag, e.g. openai")
    parser.add_argument("--clip_config", help="open_clip config JSON of a random CLIP (default without "
                        "--clip_pretrained: the demo's)")  # fmt: skip
    parser.add_argument("--num_prompts", type=int, default=16, help="continuous prompts")
    parser.add_argument("--max_span_length", type=int, default=8, help="longest entity, in words")
    parser.add_argument("--max_length", type=int, default=256, help="max text tokens")
    parser.add_argument("--num_train_epochs", type=float, default=8)
    parser.add_argument("--max_steps", type=int, default=-1, help="stop after this many steps (overrides epochs)")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--head_learning_rate", type=float, help="rate of the parts trained from scratch")
    parser.add_argument("--span_dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default="outputs/trainer_demo")
    parser.add_argument("--cache_dir", help="image-embedding cache (default: <output_dir>/image_embeddings)")
    return parser


def load_data(args) -> tuple[str, object]:
    """The dataset in `mner_data`'s schema; the demo corpus is first written as a dataset folder with its images."""
    dataset = args.dataset
    if dataset is None:
        corpus = Path(args.output_dir) / "demo_corpus"
        files = mner_demo.make_demo_corpus(corpus, seed=0)
        with tempfile.TemporaryDirectory() as tables:  # the tables the Parquet shards are written from
            built, report = mner_hub_dataset.build_dataset(files, corpus / "images", mner_demo.DEMO_IMAGE_EXTENSION,
                                                           cache_dir=tables)  # fmt: skip
            names = built["train"].features["ner_tags"].feature.names
            card = mner_hub_dataset.dataset_card(None, files, report, names)
            dataset = str(mner_hub_dataset.write_dataset_folder(built, card, Path(args.output_dir) / "dataset"))
    return dataset, mner_data.load_hf_dataset(dataset)


def build_processor(args, labels: list[str]) -> PromptMNERProcessor:
    """The backbone's tokenizer, CLIP (pretrained, or random from a config) and the dataset's labels."""
    common = dict(labels=labels, max_span_length=args.max_span_length)
    if args.clip_pretrained:
        return PromptMNERProcessor.from_clip(args.model_name_or_path, args.clip_model, args.clip_pretrained, **common)
    config = json.loads(Path(args.clip_config).read_text()) if args.clip_config else mner_demo.DEMO_CLIP_CONFIG
    return PromptMNERProcessor.from_clip(args.model_name_or_path, clip_model_name=None, clip_pretrained=None,
                                         clip_config=config, **common)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    quiet_library_progress_bars()
    args.model_name_or_path = args.model_name_or_path or mner_demo.demo_backbone()
    output = Path(args.output_dir)
    dataset, raw = load_data(args)
    processor = build_processor(args, mner_data.label_list(raw))
    # CLIP runs once per image, here; the Trainer's epochs read the cached embeddings (the collator could encode the
    # `image` column itself, batch by batch, every epoch).
    data, _ = add_image_embeddings(raw, processor, args.cache_dir or output / "image_embeddings")
    model = model_from_backbone(args.model_name_or_path, processor=processor, prompts="continuous",
                                num_prompts=args.num_prompts, span_dropout=args.span_dropout)  # fmt: skip
    training_args = TrainingArguments(
        output_dir=str(output / "checkpoints"),
        remove_unused_columns=False,  # the collator reads tokens, tags and image_embeds, which forward() does not name
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="f1",
        num_train_epochs=args.num_train_epochs, max_steps=args.max_steps, warmup_steps=0.1, max_grad_norm=1.0,  # warmup: 10% of the steps
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        learning_rate=args.learning_rate, seed=args.seed, logging_steps=10, report_to="none",
    )  # fmt: skip
    optimizer = create_optimizer(model, args.learning_rate, training_args.weight_decay, args.head_learning_rate,
                                 training_args.device.type)  # fmt: skip
    trainer = Trainer(
        model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=MNERCollator(processor, args.max_length), processing_class=processor,
        compute_metrics=SpanMetrics(processor, data["validation"]["tags"]), optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
    results = {"dataset": dataset, "validation": trainer.evaluate()}
    if "test" in data:
        trainer.compute_metrics = SpanMetrics(processor, data["test"]["tags"])  # gold tags of the evaluated split
        results["test"] = trainer.evaluate(data["test"], metric_key_prefix="test")
    save_pipeline(trainer.model, processor, output / "model")
    write_json(output / "all_results.json", results)
    for split in ("validation", "test"):
        if split in results:
            prefix = "eval" if split == "validation" else "test"
            row = results[split]
            print(f"{split}: P/R/F1 {100 * row[f'{prefix}_precision']:.2f}/{100 * row[f'{prefix}_recall']:.2f}/"
                  f"{100 * row[f'{prefix}_f1']:.2f}")  # fmt: skip
    print(f"model: {output / 'model'} (AutoModel, AutoProcessor, pipeline('multimodal-ner'), trust_remote_code=True)")
    return results


if __name__ == "__main__":
    main()
