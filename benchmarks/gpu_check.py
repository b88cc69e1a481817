"""CUDA / bf16 / SDPA checks and timings of the PromptMNER encoder on a GPU (prints figures; not a test).

    python benchmarks/gpu_check.py [--batch 32 --text 40 --prompts 100 --steps 20]

Builds a RoBERTa-base-sized PromptMNER with random weights (no download) and reports:
  * SDPA (stacked MAS) vs eager reference on CUDA in fp32: max |logit difference| and gradient agreement;
  * bf16 autocast training step: finite loss, logits against fp32;
  * time of one forward+backward step: MAS encoder vs transformers' RobertaModel at the same total length,
    and text-only vs text + visual clue tokens.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import RobertaConfig, RobertaModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configuration_promptmner import PromptMNERConfig  # noqa: E402
from modeling_promptmner import PromptMNERForSpanNER  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import make_batch  # noqa: E402  (the same random batch as the CPU benchmark)

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=50265)


def step_time(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    config = PromptMNERConfig(**BASE, num_prompts=args.prompts, clip_embed_dim=1024, max_position_embeddings=514)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = config.span_dropout = 0.0
    torch.manual_seed(0)
    sdpa = PromptMNERForSpanNER(config).to(device)
    with torch.no_grad():  # make the four MAS queries differ, as after training
        for layer in sdpa.promptmner.encoder.layer:
            for name in ("t2v_query", "v2t_query", "v2v_query"):
                getattr(layer.attention.self, name).weight.add_(0.02 * torch.randn_like(layer.attention.self.query.weight))
    eager = PromptMNERForSpanNER(config).to(device)
    eager.load_state_dict(sdpa.state_dict())
    eager.set_attn_implementation("eager")
    batch = make_batch(args, device, missing_images=0.1)  # mixed batch: some examples take the text-only path

    outputs = {}
    for name, model in (("sdpa", sdpa), ("eager", eager)):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        outputs[name] = (out.logits.detach(), grads)
    logit_diff = (outputs["sdpa"][0] - outputs["eager"][0]).abs().max().item()
    grad_rel = ((outputs["sdpa"][1] - outputs["eager"][1]).norm() / outputs["eager"][1].norm()).item()
    print(f"fp32 CUDA, SDPA vs eager: max |logit diff| {logit_diff:.2e}, relative gradient diff {grad_rel:.2e}")

    sdpa.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = sdpa(**batch)
    out.loss.backward()
    finite = all(torch.isfinite(p.grad).all() for p in sdpa.parameters() if p.grad is not None)
    bf16_diff = (out.logits.float() - outputs["sdpa"][0]).abs().max().item()
    scale = outputs["sdpa"][0].abs().max().item()
    print(f"bf16 autocast: loss {out.loss.item():.4f} finite grads {finite}, max |logit diff| vs fp32 "
          f"{bf16_diff:.2e} (logit scale {scale:.2e})")  # fmt: skip

    visual = args.prompts + 1
    roberta = RobertaModel(RobertaConfig(**BASE, max_position_embeddings=514), add_pooling_layer=False).to(device)
    total = args.text + visual
    ids = torch.randint(3, 50000, (args.batch, total), device=device)
    mask = torch.ones_like(ids)
    hidden = torch.randn(args.batch, total, 768, device=device)

    def roberta_step():
        roberta(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()

    def mas_step():
        sdpa.promptmner(batch["input_ids"], batch["attention_mask"], batch["image_embeds"]).last_hidden_state.sum().backward()

    def text_only_step():
        sdpa(**{k: v for k, v in batch.items() if k not in ("image_embeds", "has_image")}).loss.backward()

    def multimodal_step():
        sdpa(**batch).loss.backward()

    del hidden
    for precision, context in (("fp32", torch.autocast("cuda", enabled=False)), ("bf16", torch.autocast("cuda", dtype=torch.bfloat16))):
        with context:
            t_roberta, t_mas = step_time(roberta_step, args.steps), step_time(mas_step, args.steps)
            t_text, t_multi = step_time(text_only_step, args.steps), step_time(multimodal_step, args.steps)
        print(
            f"{precision}: encoder fwd+bwd at total length {total}: RobertaModel {1000 * t_roberta:.1f} ms, "
            f"MAS {1000 * t_mas:.1f} ms, ratio {t_mas / t_roberta:.3f}; full training step text-only "
            f"{1000 * t_text:.1f} ms vs {args.prompts} prompts {1000 * t_multi:.1f} ms ({t_multi / t_text:.2f}x)"
        )
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
