#!/usr/bin/env python
"""Train and evaluate PromptMNER with Accelerate.

    accelerate launch run_mner.py --dataset twitter2015 --image_dir data/twitter2015_images \
        --model_name_or_path roberta-base --clip_model RN50 --clip_pretrained openai \
        --prompts continuous --num_prompts 100 --output_dir out/t15

With no arguments it runs an offline demo: a generated multimodal corpus (images drawn by code decide the
type of ambiguous names), the real pretrained all-MiniLM-L6-v2 text encoder and a small random open_clip.

The flow follows transformers' `run_ner_no_trainer.py`: arguments -> data -> image embeddings (computed once,
cached) -> processor and model -> Accelerate training with dev evaluation every epoch -> the best-dev model
evaluated on test -> a Hub-ready output folder. The settings are `mner_arguments.RunArguments`; the pieces are
library modules: `mner_run_inputs` (checks before any data work), `mner_embedding_cache`, `mner_backbone`,
`mner_training` (collator, optimizer), `mner_checkpoints`, `mner_evaluation`, `mner_model_folder`, `mner_model_card`.
"""

import dataclasses
import json
import logging
import math
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
from atomic_files import write_json
from mner_arguments import RunArguments, parse_args
from mner_backbone import fit_clue_path_to_images, model_from_backbone
from mner_checkpoints import (
    TRAINING_STATE_DIR,
    kill_point,
    load_checkpoint,
    new_progress,
    recover_training_state,
    run_signature,
    save_checkpoint,
)
from mner_console import progress_bar, quiet_library_progress_bars
from mner_embedding_cache import add_image_embeddings, format_image_report, image_report
from mner_evaluation import evaluate, fmt_prf, predict_spans, results_table, span_scores, write_prediction_files
from mner_model_card import model_card
from mner_model_folder import BEST_MODEL_PROGRESS, push_folder, save_model_folder, write_output_folder
from mner_run_inputs import check_run_inputs, clear_previous_run, locked_output_dir, resolve_checkpoint
from mner_runtime import has_accelerator_device
from mner_serving import SPACE_FOLDER, push_space, space_examples, write_space
from mner_training import MNERCollator, NonFiniteLossError, check_loss, create_optimizer
from modeling_promptmner import PromptMNERForSpanNER
from output_lock import RefusedError
from processing_promptmner import PromptMNERProcessor, load_tokenizer
from prompt_vocabularies import initial_prompt_embeds, prompt_kind

logger = get_logger(__name__)


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
        prompt_vocabulary=args.prompt_words,
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
        write_json(state_dir / "best_model" / BEST_MODEL_PROGRESS, progress)


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
        if not accelerator.sync_gradients:  # a micro-batch inside an accumulation window: no optimizer step yet
            continue
        # The step's loss: the mean over its micro-batches, then over the processes (each had its own batch).
        step_loss = check_loss(progress["step"] + 1, accelerator.gather(torch.stack(window).mean()).mean().item())
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
    # A seeded generator: the shuffling order is part of the run, so that a resumed run sees the same batches
    # (`use_seedable_sampler` in `main` makes Accelerate's sampler follow it, epoch by epoch via `set_epoch`).
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        data["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=collator, generator=generator
    )
    dev_loader = DataLoader(data["validation"], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    optimizer = create_optimizer(
        model, args.learning_rate, args.weight_decay, args.head_learning_rate, accelerator.device.type,
        prompt_learning_rate=args.prompt_learning_rate,
    )
    # Optimizer steps, counted after `prepare` shards the batches over the processes and `accumulate` groups
    # `gradient_accumulation_steps` micro-batches into one step.
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    # The prepared scheduler steps `num_processes` times per optimizer step (Accelerate keeps schedules written for one
    # process right under any topology that way), so its warmup and total lengths are scaled by the same factor.
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
    # An epoch is done when the progress record has its dev evaluation: a resumed run starts at the first one without.
    for epoch in range(len(progress["history"]), num_epochs):
        done = progress["step"] - epoch * steps_per_epoch  # this epoch's optimizer steps taken before a resume
        if done < steps_per_epoch and progress["step"] < max_steps:
            model.train()
            train_loader.set_epoch(epoch)  # the epoch's shuffling order, the same as an uninterrupted run's
            skip = done * args.gradient_accumulation_steps  # micro-batches already consumed this epoch
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
    progress = json.loads((state_dir / "best_model" / BEST_MODEL_PROGRESS).read_text())
    return {
        "results": results,
        "best_epoch": progress["best_epoch"],
        "history": progress["history"],
        "step_losses": progress["step_losses"],
        "image_report": image_report(data),
        "text_only": args.text_only,
    }


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
    dataset_note = mner_demo.DEMO_CORPUS_NOTE if args.demo else None
    write_output_folder(accelerator, args.output_dir, model_card(args, summary, processor.labels, dataset_note))
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
        write_json(Path(text_output) / "all_results.json", text_only)
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


def checked_args(argv: list[str] | None = None) -> RunArguments:
    """The run's arguments (with none at all, the offline demo's: `mner_demo.DEMO_ARGUMENTS`), with every file and
    folder the run will read or write checked before any data work. A bad value ends the script with its message
    (exit status 2, as argparse does), no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv, description=__doc__) if argv else RunArguments(**mner_demo.DEMO_ARGUMENTS)
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
    try:
        output_lock = locked_output_dir(args, accelerator)
    except RefusedError as err:  # another run started writing --output_dir after this one's checks
        print(f"run_mner.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    with output_lock:
        return train_and_publish(args, accelerator)


def train_and_publish(args: RunArguments, accelerator: Accelerator) -> dict:
    """The run proper, under the output folder's lock: clear a replaced run's state, train and evaluate, write the
    results and push what was asked."""
    if accelerator.is_main_process:
        clear_previous_run(args)
        recover_training_state(Path(args.output_dir) / TRAINING_STATE_DIR)
    accelerator.wait_for_everyone()
    if args.with_tracking:
        tracked = {k: v for k, v in args.settings().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("promptmner", tracked)
    if args.demo:
        accelerator.print(mner_demo.DEMO_CORPUS_NOTE)
    try:
        summary = run(args, accelerator)
    except NonFiniteLossError as err:  # every process sees the same gathered loss, so every process stops here
        print(f"run_mner.py: error: {err}", file=sys.stderr)
        sys.exit(1)
    if args.demo and not args.text_only:
        summary["demo_comparison"] = demo_comparison(args, accelerator, summary)
    if accelerator.is_main_process:
        write_json(Path(args.output_dir) / "all_results.json", summary)
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
