#!/usr/bin/env python
"""Train and evaluate PromptMNER with Accelerate.

    accelerate launch run_mner.py --dataset twitter2015 --image_dir data/twitter2015_images \
        --model_name_or_path roberta-base --clip_model RN50 --clip_pretrained openai \
        --prompts continuous --num_prompts 100 --output_dir out/t15

With no arguments it runs an offline demo: a generated multimodal corpus (images drawn by code decide the
type of ambiguous names), the real pretrained all-MiniLM-L6-v2 text encoder and a small random open_clip.

The flow follows transformers' `run_ner_no_trainer.py`: arguments -> data -> image embeddings (computed once,
cached) -> processor and model -> Accelerate training with dev evaluation every epoch -> the best-dev model
evaluated on test -> a Hub-ready output folder. The pieces are in the training library `mner_training.py`.
"""

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

import mner_data
import mner_demo
from mner_console import progress_bar, quiet_library_progress_bars
from mner_serving import SPACE_FOLDER, push_space, space_examples, write_space
from configuration_promptmner import PROMPT_KINDS
from mner_training import (
    TRAINING_STATE_DIR,
    MNERCollator,
    RunArguments,
    add_image_embeddings,
    check_run_inputs,
    clear_previous_run,
    copy_file,
    create_optimizer,
    evaluate,
    fit_clue_path_to_images,
    fmt_prf,
    format_image_report,
    image_report,
    kill_point,
    load_checkpoint,
    model_card,
    model_from_backbone,
    new_progress,
    predict_spans,
    push_folder,
    resolve_checkpoint,
    results_table,
    run_signature,
    save_checkpoint,
    save_model_folder,
    span_scores,
    write_json,
    write_results,
)
from mner_prediction import write_prediction_files
from modeling_promptmner import PromptMNERForSpanNER
from processing_promptmner import PromptMNERProcessor, load_tokenizer
from prompt_vocabularies import initial_prompt_embeds, prompt_kind

logger = get_logger(__name__)


# --- arguments -----------------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawTextHelpFormatter):
    """`--help` keeps the usage example's line breaks and shows each option's default."""


def parse_args(argv: list[str] | None = None) -> RunArguments:
    """Command-line arguments; with none at all, the offline demo's (`mner_demo.DEMO_ARGUMENTS`).

    The defaults are `RunArguments`' (shown by `--help`), which also validates the values.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(mner_data.TWITTER_TEXT_SOURCES), help="Twitter-2015 or -2017")
    data.add_argument("--data_dir", help="folder with train/valid/test.txt (downloaded there when --dataset is set)")
    data.add_argument("--image_dir", help="folder with <IMGID>.jpg images")
    data.add_argument("--image_extension")
    data.add_argument("--train_file", help="CoNLL+IMGID training file")
    data.add_argument("--validation_file", help="CoNLL+IMGID development file")
    data.add_argument("--test_file", help="CoNLL+IMGID test file")
    data.add_argument(
        "--hf_dataset",
        help="a `datasets` dataset (Hub id, or a folder saved with save_to_disk) with tokens, ner_tags and image columns",
    )
    data.add_argument("--tokens_column")
    data.add_argument("--tags_column")
    data.add_argument("--image_column")
    data.add_argument("--max_train_samples", type=int, help="use only the first N training examples")
    data.add_argument("--max_eval_samples", type=int, help="use only the first N dev and test examples")
    data.add_argument("--max_length", type=int, help="max text tokens (whole words are kept)")
    data.add_argument("--cache_dir", help="image-embedding cache (default: <output_dir>/../.cache/promptmner)")
    data.add_argument("--image_batch_size", type=int, help="images per CLIP forward pass")
    data.add_argument("--demo", action="store_true", help="generate and use the offline demo corpus")
    data.add_argument(
        "--allow_unverified_data", action="store_true", help="accept dataset files whose checksum is not pinned"
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", help="BERT-family text backbone")
    model.add_argument("--clip_model", help="open_clip model name")
    model.add_argument("--clip_pretrained", help="open_clip pretrained tag ('none': random)")
    model.add_argument("--clip_config", help="JSON file with an open_clip model config (random weights)")
    prompt_choices = " | ".join(kind for kind in PROMPT_KINDS if kind != "custom")
    model.add_argument("--prompts", help=f"{prompt_choices}, a '+'-combination (kb+expert) or a file")
    model.add_argument(
        "--prompt_vocabulary",
        help="vocabulary the processor carries: for continuous prompts, the one they start from (--prompt_init "
        "vocabulary) and the words explanations name (default: task_labels+kb+expert); discrete: --prompts",
    )
    model.add_argument(
        "--prompt_init",
        choices=("random", "vocabulary", "kmeans"),
        help="continuous prompts: random, the vocabulary's words, or k-means centroids of the training images",
    )
    model.add_argument(
        "--standardize_image_embeds",
        action="store_true",
        help="standardise image embeddings with the training images' mean and std before scoring the prompts "
        "(not in the paper; recommended with continuous prompts, see BENCHMARKS.md 'Visual clues')",
    )
    model.add_argument(
        "--whiten_image_embeds",
        action="store_true",
        help="whiten image embeddings (ZCA with the training images' mean and covariance) before scoring the "
        "prompts; instead of --standardize_image_embeds (not in the paper; see BENCHMARKS.md 'Visual clues')",
    )
    model.add_argument(
        "--clue_scale",
        type=float,
        help="multiply the projected clues p(P_i|I) W s_i (default 1, the paper's; see BENCHMARKS.md 'Visual clues')",
    )
    model.add_argument("--prompt_temperature", type=float, help="1/tau of p(P_i|I) (default: the CLIP's own, 100)")
    model.add_argument("--learnable_temperature", action="store_true", help="learn 1/tau, from its initial value")
    model.add_argument("--num_prompts", type=int, help="number of continuous prompts (paper: 100)")
    model.add_argument("--prompt_template")
    model.add_argument("--max_span_length", type=int, help="longest span in words")
    model.add_argument("--span_dropout", type=float, help="dropout of the span classifier (paper: 0.5)")
    model.add_argument("--no_mas", action="store_true", help="ablation: one query projection for all modalities")
    model.add_argument("--text_only", action="store_true", help="ablation: no visual clues at all")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int)
    train.add_argument("--per_device_eval_batch_size", type=int)
    train.add_argument("--learning_rate", type=float)
    train.add_argument(
        "--head_learning_rate",
        type=float,
        help="learning rate of the parameters trained from scratch (span classifier, clue projection, prompts); "
        "default: --learning_rate",
    )
    train.add_argument(
        "--prompt_learning_rate", type=float, help="learning rate of the continuous prompts (and a learnable temperature)"
    )
    train.add_argument("--weight_decay", type=float)
    train.add_argument("--num_train_epochs", type=int)
    train.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    train.add_argument("--gradient_accumulation_steps", type=int)
    train.add_argument("--lr_scheduler_type")
    train.add_argument("--warmup_ratio", type=float, help="fraction of steps for linear warmup")
    train.add_argument("--max_grad_norm", type=float)
    train.add_argument("--seed", type=int)

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", help="becomes a complete Hub repository")
    output.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace the run a non-empty --output_dir holds (its checkpoints and training state are deleted)",
    )
    output.add_argument("--checkpointing_steps", help="save state every N steps, or 'epoch'")
    output.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest'")
    output.add_argument("--with_tracking", action="store_true", help="log to tensorboard")
    output.add_argument("--push_to_hub", action="store_true")
    output.add_argument("--hub_model_id", help="org/name of the Hub repository")
    output.add_argument("--hub_space_id", help="org/name of a Gradio Space to push the model's Space folder to")
    output.add_argument("--hub_token")

    parser.set_defaults(**{field.name: field.default for field in dataclasses.fields(RunArguments)})
    values = vars(parser.parse_args(argv)) if argv else mner_demo.DEMO_ARGUMENTS
    return RunArguments(**values)


# --- data and image embeddings -------------------------------------------------------------------------------


def load_raw_datasets(args: RunArguments) -> datasets.DatasetDict:
    """The train/validation(/test) splits as a `DatasetDict` of tokens, tags and image paths."""
    if args.hf_dataset:
        raw = mner_data.load_hf_dataset(args.hf_dataset, args.tokens_column, args.tags_column, args.image_column)
    else:
        if args.demo:
            data_dir = Path(args.data_dir or Path(args.output_dir) / "data")
            files = mner_demo.make_demo_corpus(data_dir, seed=args.seed)
            image_dir, extension = data_dir / "images", mner_demo.DEMO_IMAGE_EXTENSION
        elif args.dataset:
            data_dir = args.data_dir or f"data/{args.dataset}"
            files = mner_data.fetch_twitter(args.dataset, data_dir, allow_unverified=args.allow_unverified_data)
            image_dir, extension = args.image_dir, args.image_extension
        else:
            files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
            image_dir, extension = args.image_dir, args.image_extension
        raw = mner_data.load_mner_dataset(
            train_file=files.get("train"),
            validation_file=files.get("validation"),
            test_file=files.get("test"),
            image_dir=image_dir,
            image_extension=extension,
        )
    raw = mner_data.limit_samples(raw, args.max_train_samples, args.max_eval_samples)
    if "train" not in raw or "validation" not in raw:
        raise ValueError(f"training needs a train and a validation split, got {sorted(raw)}")
    return raw


def embed_images(
    args: RunArguments, raw: datasets.DatasetDict, processor: PromptMNERProcessor, accelerator: Accelerator
) -> datasets.DatasetDict:
    """The splits with cached CLIP image embeddings (or, for a text-only run, none)."""
    if args.text_only:
        return raw.map(lambda _: {"image_embeds": None, "has_image": False, "image_error": "text-only run"})
    cache_dir = args.cache_dir or Path(args.output_dir).parent / ".cache" / "promptmner"
    with accelerator.main_process_first():  # the main process fills the cache, the others read it
        data, counter = add_image_embeddings(raw, processor, cache_dir, args.image_batch_size)
    accelerator.print(f"Image embeddings: {counter['encoder_calls']} CLIP batches run (0: all from the cache).")
    accelerator.print(format_image_report(image_report(data)))
    return data


# --- processor and model -------------------------------------------------------------------------------------


def build_processor(args: RunArguments, labels: list[str]) -> PromptMNERProcessor:
    """Tokenizer of the backbone, CLIP (pretrained, or a random one from a config), prompts and labels."""
    common = dict(
        labels=labels,
        max_span_length=args.max_span_length,
        prompt_template=args.prompt_template,
        prompt_vocabulary=args.prompt_vocabulary,
    )
    if args.text_only:  # no CLIP at all: the model only ever takes its text-only path
        return PromptMNERProcessor(load_tokenizer(args.model_name_or_path), clip_config=None, **common)
    clip_config = mner_demo.DEMO_CLIP_CONFIG if args.demo else None
    if args.clip_config:
        clip_config = json.loads(Path(args.clip_config).read_text())
    if clip_config is not None:
        return PromptMNERProcessor.from_clip(
            args.model_name_or_path, clip_model_name=None, clip_pretrained=None, clip_config=clip_config, **common
        )
    pretrained = None if args.clip_pretrained in (None, "none") else args.clip_pretrained
    return PromptMNERProcessor.from_clip(args.model_name_or_path, args.clip_model, pretrained, **common)


def build_model(
    args: RunArguments, processor: PromptMNERProcessor, train_data: datasets.Dataset
) -> PromptMNERForSpanNER:
    """A new PromptMNER on the text backbone, with the ablation switches and the clue-path options applied (the
    training images' embeddings give the standardisation or whitening statistics and the k-means centroids)."""
    generator = torch.Generator().manual_seed(args.seed)
    prompt_embeds = None
    if args.prompts == "continuous" and args.prompt_init == "vocabulary":
        prompt_embeds = initial_prompt_embeds(args.num_prompts, processor.vocabulary_embeds(), generator)
    options = {"learnable_logit_scale": args.learnable_temperature}
    if args.prompt_temperature is not None:
        options["clip_logit_scale"] = args.prompt_temperature
    if args.standardize_image_embeds and not args.text_only:
        options["standardize_image_embeds"] = True
    if args.whiten_image_embeds and not args.text_only:
        options["whiten_image_embeds"] = True
    if args.clue_scale is not None:
        options["clue_scale"] = args.clue_scale
    model = model_from_backbone(
        args.model_name_or_path,
        processor=processor,
        prompts=prompt_kind(args.prompts),
        prompt_embeds=prompt_embeds,
        num_prompts=args.num_prompts if args.prompts == "continuous" else None,
        span_dropout=args.span_dropout,
        use_mas=not args.no_mas,
        **options,
    )
    kmeans = args.prompts == "continuous" and args.prompt_init == "kmeans"
    if args.text_only or not (args.standardize_image_embeds or args.whiten_image_embeds or kmeans):
        return model
    images = torch.tensor([row for row in train_data["image_embeds"] if row is not None])  # (N, D)
    fit_clue_path_to_images(model, images, generator if kmeans else None)
    return model


# --- training ------------------------------------------------------------------------------------------------


def resume_progress(args: RunArguments, accelerator: Accelerator) -> dict:
    """A fresh progress record, or the one of the checkpoint to resume from (after loading its state)."""
    checkpoint = resolve_checkpoint(args)
    if checkpoint is None:
        if args.resume_from_checkpoint:
            accelerator.print(f"No checkpoint in {Path(args.output_dir) / TRAINING_STATE_DIR}: starting from scratch")
        return new_progress()
    accelerator.print(f"Resuming from {checkpoint}")
    return load_checkpoint(accelerator, checkpoint, run_signature(args))


def end_of_epoch(args, accelerator, model, processor, dev_loader, dev_tags, epoch, epoch_losses, progress) -> None:
    """Dev evaluation, logging, and the best-dev model kept on disk."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    dev = evaluate(model, dev_loader, accelerator, processor, dev_tags)
    kill_point(f"evaluation:{epoch}")
    mean_loss = sum(epoch_losses) / max(1, len(epoch_losses))
    progress["history"].append({"epoch": epoch, "train_loss": mean_loss, "dev_f1": dev["f1"]})
    accelerator.print(f"epoch {epoch}: train loss {mean_loss:.4f}, dev P/R/F1 {fmt_prf(dev)}")
    if args.with_tracking:
        dev_log = {f"dev_{name}": dev[name] for name in ("precision", "recall", "f1")}
        accelerator.log(dev_log, step=progress["step"])
    if dev["f1"] > progress["best_f1"]:
        progress.update(best_f1=dev["f1"], best_epoch=epoch)
        save_model_folder(accelerator, model, processor, state_dir / "best_model", f"best_model_save:{epoch}")
    if accelerator.is_main_process:
        write_json(state_dir / "best_model" / "progress.json", progress)


def train_epoch(args, accelerator, model, optimizer, scheduler, train_loader, progress, skip, max_steps, bar) -> None:
    """Optimizer steps over one epoch's batches after the first `skip` (taken before a resume), up to `max_steps`;
    each step's loss goes to `progress` and the progress `bar`; checkpoints every `--checkpointing_steps`."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
    window = []  # the micro-batch losses of the current optimizer step
    for batch in loader:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        window.append(loss.detach())
        if not accelerator.sync_gradients:
            continue
        step_loss = accelerator.gather(torch.stack(window).mean()).mean().item()
        window = []
        progress["step"] += 1
        progress["step_losses"].append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        bar.update(1)
        if args.with_tracking:
            accelerator.log({"train_loss": step_loss, "lr": scheduler.get_last_lr()[0]}, step=progress["step"])
        if args.checkpointing_steps and args.checkpointing_steps.isdigit():
            if progress["step"] % int(args.checkpointing_steps) == 0:
                save_checkpoint(accelerator, state_dir, progress["step"], progress, run_signature(args))
        kill_point(f"after_step:{progress['step']}")
        if progress["step"] >= max_steps:
            break


def train(args: RunArguments, accelerator, model, processor, data, collator) -> dict:
    """The training loop: dev evaluation every epoch, the best-dev model kept; returns the progress record.

    A resumed run starts at the first epoch without a dev evaluation in its progress record: it first finishes
    that epoch's steps (none, when the checkpoint was taken at its last step), then evaluates it.
    """
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        data["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=collator, generator=generator
    )
    dev_loader = DataLoader(data["validation"], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    optimizer = create_optimizer(
        model, args.learning_rate, args.weight_decay, args.head_learning_rate, accelerator.device.type,
        prompt_learning_rate=args.prompt_learning_rate,
    )
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=int(args.warmup_ratio * max_steps) * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, dev_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, dev_loader, scheduler
    )
    progress = resume_progress(args, accelerator)
    accelerator.print(
        f"Training: {len(data['train'])} examples, {num_epochs} epochs, {max_steps} optimizer steps, global batch "
        f"{args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps}"
    )
    dev_tags = data["validation"]["tags"]
    bar = progress_bar(max_steps, desc="train", unit="steps", initial=progress["step"],
                       disable=not accelerator.is_local_main_process)  # fmt: skip
    for epoch in range(len(progress["history"]), num_epochs):
        done = progress["step"] - epoch * steps_per_epoch  # this epoch's optimizer steps taken before a resume
        if done < steps_per_epoch and progress["step"] < max_steps:
            model.train()
            train_loader.set_epoch(epoch)
            skip = done * args.gradient_accumulation_steps
            train_epoch(args, accelerator, model, optimizer, scheduler, train_loader, progress, skip, max_steps, bar)
        epoch_losses = progress["step_losses"][epoch * steps_per_epoch : progress["step"]]
        end_of_epoch(args, accelerator, model, processor, dev_loader, dev_tags, epoch, epoch_losses, progress)
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, state_dir, progress["step"], progress, run_signature(args))
        if progress["step"] >= max_steps:
            break
    bar.close()
    return progress


# --- the best-dev model: evaluation and the output folder -----------------------------------------------------


def final_evaluation(args: RunArguments, accelerator, processor, data, collator) -> dict:
    """Reload the best-dev model, evaluate dev and test and write their predictions files (`predictions_<split>.jsonl`
    and `.conll` in `--output_dir`); returns the run's summary."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    model = accelerator.prepare(PromptMNERForSpanNER.from_pretrained(state_dir / "best_model"))
    results = {}
    for split in ("validation", "test"):
        if split in data:
            loader = accelerator.prepare(
                DataLoader(data[split], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
            )
            predictions = predict_spans(model, loader, accelerator, processor)
            results[split] = span_scores(predictions, data[split]["tags"])
            if accelerator.is_main_process:
                write_prediction_files(args.output_dir, split, data[split]["tokens"], data[split]["tags"], predictions,
                                       ids=data[split]["id"])  # fmt: skip
    accelerator.print(results_table(results))
    progress = json.loads((state_dir / "best_model" / "progress.json").read_text())
    return {
        "results": results,
        "best_epoch": progress["best_epoch"],
        "history": progress["history"],
        "step_losses": progress["step_losses"],
        "image_report": image_report(data),
        "text_only": args.text_only,
    }


def write_output_folder(args: RunArguments, accelerator: Accelerator, summary: dict, labels: list[str]) -> None:
    """The best-dev model folder copied to `--output_dir`, with its model card."""
    if accelerator.is_main_process:
        best_model = Path(args.output_dir) / TRAINING_STATE_DIR / "best_model"
        for name in os.listdir(best_model):
            if name != "progress.json":
                copy_file(best_model / name, Path(args.output_dir) / name)
        card = Path(args.output_dir) / "README.md.partial"
        model_card(args, summary, labels).save(card)
        os.replace(card, card.with_suffix(""))
    accelerator.wait_for_everyone()


def run(args: RunArguments, accelerator: Accelerator) -> dict:
    """One training run: data, image embeddings, model, training, best-dev evaluation, Hub folder."""
    set_seed(args.seed)
    raw = load_raw_datasets(args)
    labels = mner_data.label_list(raw)
    processor = build_processor(args, labels)
    data = embed_images(args, raw, processor, accelerator)
    model = build_model(args, processor, data["train"])
    collator = MNERCollator(processor, args.max_length, args.text_only)
    started = time.time()
    train(args, accelerator, model, processor, data, collator)
    summary = final_evaluation(args, accelerator, processor, data, collator)
    write_output_folder(args, accelerator, summary, processor.labels)
    if accelerator.is_main_process:  # the Space folder: served model, and examples (images of the demo corpus only)
        examples = space_examples(raw["validation"], with_images=args.demo)
        write_space(Path(args.output_dir) / SPACE_FOLDER, args.hub_model_id, examples=examples)
    summary["train_runtime_s"] = round(time.time() - started, 1)
    return summary


# --- the demo's second run -----------------------------------------------------------------------------------


def demo_comparison(args: RunArguments, accelerator: Accelerator, multimodal: dict) -> dict:
    """The demo's second run: the same model without visual clues, and the difference it makes."""
    text_output = str(Path(args.output_dir) / TRAINING_STATE_DIR / "text_only")
    text_args = dataclasses.replace(args, text_only=True, push_to_hub=False, output_dir=text_output)
    text_only = run(text_args, accelerator)
    if accelerator.is_main_process:
        write_results(text_output, text_only)
    comparison = {
        split: {
            "multimodal_f1": multimodal["results"][split]["f1"],
            "text_only_f1": text_only["results"][split]["f1"],
            "difference": multimodal["results"][split]["f1"] - text_only["results"][split]["f1"],
        }
        for split in multimodal["results"]
    }
    accelerator.print("\nDemo corpus, entity F1 (%):  text-only  multimodal  difference")
    for split, row in comparison.items():
        accelerator.print(
            f"  {split:<26}{100 * row['text_only_f1']:>9.2f}{100 * row['multimodal_f1']:>12.2f}"
            f"{100 * row['difference']:>+12.2f}"
        )
    accelerator.print(f"({mner_demo.DEMO_CORPUS_NOTE})")
    return comparison


# --- main ----------------------------------------------------------------------------------------------------


def has_accelerator_device() -> bool:
    """Whether any device besides the CPU is there for Accelerate to use."""
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available()


def checked_args(argv: list[str] | None = None) -> RunArguments:
    """The run's arguments, with every file and folder it will read or write checked before any data work. A
    bad value ends the script with its message (exit status 2, as argparse does), no traceback."""
    try:
        args = parse_args(argv)
        if args.demo:
            args.model_name_or_path = mner_demo.demo_backbone()
        check_run_inputs(args)
    except ValueError as err:
        print(f"run_mner.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = checked_args(argv)
    accelerator = Accelerator(
        cpu=not has_accelerator_device(),  # lets `accelerate launch --multi_gpu` run gloo DDP on CPU-only machines
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with="tensorboard" if args.with_tracking else None,
        project_dir=str(Path(args.output_dir) / TRAINING_STATE_DIR / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    quiet_library_progress_bars()
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    if accelerator.is_main_process:
        clear_previous_run(args)
    accelerator.wait_for_everyone()
    if args.with_tracking:
        tracked = {k: v for k, v in dataclasses.asdict(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("promptmner", tracked)
    if args.demo:
        accelerator.print(mner_demo.DEMO_CORPUS_NOTE)
    summary = run(args, accelerator)
    if args.demo and not args.text_only:
        summary["demo_comparison"] = demo_comparison(args, accelerator, summary)
    if accelerator.is_main_process:
        write_results(args.output_dir, summary)
        if args.push_to_hub:
            push_folder(args.output_dir, args.hub_model_id, args.hub_token)
        if args.hub_space_id:
            url = push_space(Path(args.output_dir) / SPACE_FOLDER, args.hub_space_id, args.hub_token)
            accelerator.print(f"Space pushed: {url}")
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.end_training()
    return summary


if __name__ == "__main__":
    main()
