"""The benchmark scripts run from a checkout and write what they measure: real subprocesses on tiny settings."""

import json
import re
import statistics
import sys
from pathlib import Path

import pytest
from PIL import Image

from processes import REPO_ROOT, child_env, run

pytestmark = pytest.mark.slow  # every benchmark script runs in a subprocess
TWITTER2015 = REPO_ROOT.parent / "shared" / "data" / "twitter2015"


def run_script(script: str, *args: str) -> str:
    """A benchmark script run to its end (with the `benchmarks` extra's packages, which it may need)."""
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args]
    return run(command, REPO_ROOT, env=child_env(hide_extras=False)).stdout


def section(markdown: str, name: str) -> str:
    match = re.search(f"<!-- {name}:start -->(.*)<!-- {name}:end -->", markdown, re.S)
    assert match, f"no {name} section"
    return match.group(1)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 150


def test_speed_script_writes_its_section_and_figure(tmp_path):
    """Tiny settings; the section keeps the rest of the file and quotes the ratio its table holds."""
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nkept text\n")
    args = ["--batch", "2", "--text", "8", "--prompts", "3", "--clues", "2", "--steps", "1", "--encoder_steps", "3",
            "--warmup", "0",
            "--clip", "tiny", "--images", "2", "--no_memory", "--write", "--output", str(output),
            "--figure", str(tmp_path / "figures" / "speed.png")]  # fmt: skip
    run_script("speed.py", *args)
    text = output.read_text()
    assert "kept text" in text
    body = section(text, "speed")
    headline = re.search(r"at equal length: \*\*([0-9.]+)x\*\*.*quartiles ([0-9.]+)/([0-9.]+)/([0-9.]+), ratio of "
                         r"the medians ([0-9.]+)x", body)  # fmt: skip
    median_ratio, low, middle, high, ratio_of_medians = map(float, headline.groups())
    assert low <= median_ratio == middle <= high
    table_ratio = float(re.search(r"\| MAS encoder \(PromptMNERModel\) \| [0-9.]+ \| ([0-9.]+)x \|", body).group(1))
    assert ratio_of_medians == table_ratio > 0
    assert "K=2 clues" in body and "![speed ratios](figures/speed.png)" in body
    assert_png(tmp_path / "figures" / "speed.png")


@pytest.mark.skipif(not TWITTER2015.is_dir(), reason="needs ../shared/data/twitter2015")
def test_quality_script_reports_the_mean_of_its_runs_and_resumes(tmp_path):
    """Both models on a tiny slice, two epochs, two seeds: the table's mean test F1 is the mean of the stored runs, the
    difference is paired by seed, and a second call reuses the stored runs instead of training again."""
    runs, output, figure = tmp_path / "runs", tmp_path / "BENCHMARKS.md", tmp_path / "quality.png"
    args = ["--max_train_samples", "24", "--max_eval_samples", "12", "--epochs", "2", "--seeds", "0,1",
            "--learning_rates", "1e-4", "--output_dir", str(runs), "--output", str(output), "--figure", str(figure),
            "--write"]  # fmt: skip
    first = run_script("quality.py", *args)
    records = {path.name: json.loads(path.read_text()) for path in runs.glob("*.json")}
    assert len(records) == 4, sorted(records)
    assert not list(runs.glob("run_*")), "the span runs' model folders are removed"
    body = section(output.read_text(), "quality")
    for model, label in (("token-classification", "token classification"), ("span", "span model (text only)")):
        f1 = [100 * r["test"]["f1"] for r in records.values() if r["model"] == model]
        row = next(line for line in body.splitlines() if line.startswith(f"| {label} |"))
        reported = float(re.search(r"\*\*([0-9.]+) ± ([0-9.]+)\*\*", row).group(1))
        assert reported == pytest.approx(statistics.mean(f1), abs=0.006)
    assert_png(figure)

    second = run_script("quality.py", *args)
    assert "seed 0 ..." in first and "seed 0 ..." not in second  # nothing trained the second time
    assert section(output.read_text(), "quality") == body


def test_visual_clues_script_reports_probe_model_text_only_and_shuffled(tmp_path):
    """Every family on a tiny corpus, one epoch, two seeds, two candidates: the tables quote the stored
    runs' means, the shuffled images and text-only runs are there, and a second call trains nothing."""
    runs, output = tmp_path / "runs", tmp_path / "BENCHMARKS.md"
    args = ["--num_train", "70", "--num_test", "12", "--epochs", "1", "--seeds", "0,1",
            "--candidates", "paper,recommended", "--output_dir", str(runs), "--output", str(output),
            "--write"]  # fmt: skip
    first = run_script("visual_clues.py", *args)
    records = [json.loads(path.read_text()) for path in runs.glob("*/*.json")]
    assert len(records) == 3 * 2 * 3, sorted(path.name for path in runs.glob("*/*.json"))  # families x seeds x runs
    body = section(output.read_text(), "visual-clues")
    for family in ("shapes", "textures", "layouts"):
        mine = [r for r in records if r["family"] == family]
        assert len({r["probe"] for r in mine}) == 1 and 0.0 <= mine[0]["probe"] <= 1.0
        assert all("shuffled" in r for r in mine if r["candidate"] != "text-only")
        row = next(line for line in body.splitlines() if line.startswith(f"| {family} |")).split("|")[2:-1]
        probe, _, text_only, paper = (float(cell.split("±")[0]) for cell in row[:4])
        assert probe == pytest.approx(100 * mine[0]["probe"], abs=0.06)
        for value, candidate in ((text_only, "text-only"), (paper, "paper")):
            accuracies = [r["test"]["accuracy"] for r in mine if r["candidate"] == candidate]
            assert value == pytest.approx(100 * statistics.mean(accuracies), abs=0.06)
        assert row[-1].strip() in ("met", "not met")
    assert "| whitened, 64 k-means prompts" in body  # the recommended row (64 prompts: 70 training images)
    paper_row = next(line for line in body.splitlines() if line.startswith("| paper: ")).split("|")[2:-2]
    for family, cell in zip(("shapes", "textures", "layouts"), paper_row):  # "(b) ((d)) / fit of the training names"
        fits = [r["train"]["accuracy"] for r in records if r["family"] == family and r["candidate"] == "paper"]
        assert int(cell.split("/")[-1]) == round(100 * statistics.mean(fits))

    second = run_script("visual_clues.py", *args)
    assert "seed 0 ..." in first and "seed 0 ..." not in second
    assert section(output.read_text(), "visual-clues") == body


def test_long_texts_script_reports_time_per_word_and_memory(tmp_path):
    """Two lengths on the small model, text only and with an image: a row each, in fresh processes, and the summary
    quotes the table's own time per word."""
    output = tmp_path / "BENCHMARKS.md"
    run_script("long_texts.py", "--words", "150,600", "--models", "window 64", "--repeats", "1", "--output",
               str(output))  # fmt: skip
    body = section(output.read_text(), "long-texts")
    rows = re.findall(r"^\| window 64 \| (text only|with image) \| ([0-9,]+) \| ([0-9.]+) \| ([0-9.]+) \| (\d+) MB \|",
                      body, re.M)  # fmt: skip
    assert [(kind, words) for kind, words, *_ in rows] == [("text only", "150"), ("text only", "600"),
                                                           ("with image", "150"), ("with image", "600")]  # fmt: skip
    for kind, words, seconds, per_thousand, peak in rows:
        rounding = 1000 * 0.005 / int(words) + 0.001  # the table rounds seconds to 0.01 and the rate to 0.001
        assert float(per_thousand) == pytest.approx(1000 * float(seconds) / int(words), abs=rounding)
        assert int(peak) > 100  # a real process with torch and a model
    per_word = {kind: [float(per) for k, _, _, per, _ in rows if k == kind] for kind in ("text only", "with image")}
    summary = re.search(r"window 64, text only: time per word from the shortest to the longest text x([0-9.]+)", body)
    assert float(summary.group(1)) == pytest.approx(per_word["text only"][1] / per_word["text only"][0], abs=0.02)


def test_peer_script_compares_with_token_classification_and_the_floor(tmp_path):
    """A few tweets: rates for ours and the peer (text only), ours and the floor (images), one by one and batched;
    the summary's ratios are the table's; each part of the work timed."""
    output = tmp_path / "BENCHMARKS.md"
    run_script("peer_token_classification.py", "--num_examples", "8", "--image_examples", "4", "--batch_size", "4",
               "--num_prompts", "2,4", "--clip", "demo", "--repeats", "1", "--output", str(output))  # fmt: skip
    body = section(output.read_text(), "peer")
    rate = lambda label: [float(value) for value in  # noqa: E731
                          re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \| ([0-9.]+) \|$", body, re.M).groups()]
    ours, peer = rate("`multimodal-ner`, text only"), rate("`token-classification` (simple)")
    floor = rate("floor: CLIP tower + text-only model")
    summary = re.search(r"ours / peer: ([0-9.]+)x one by one, ([0-9.]+)x batched", body)
    assert float(summary.group(1)) == pytest.approx(ours[0] / peer[0], abs=0.02)
    assert float(summary.group(2)) == pytest.approx(ours[1] / peer[1], abs=0.02)
    for count in (2, 4):  # one multimodal model per prompt count, each against the same floor
        with_images = rate(f"`multimodal-ner`, with images, {count} prompts")
        shares = re.search(rf"{count} prompts: (\d+)% one by one, (\d+)% batched", body)
        assert int(shares.group(1)) == pytest.approx(100 * with_images[0] / floor[0], abs=1.5)
        assert int(shares.group(2)) == pytest.approx(100 * with_images[1] / floor[1], abs=1.5)
        method = rate(f"floor of the method, {count} prompts: CLIP tower + multimodal model")
        shares = re.search(rf"Against the floor of the method.*?{count} prompts: (\d+)% one by one, (\d+)% batched",
                           body, re.S)  # fmt: skip
        assert int(shares.group(1)) == pytest.approx(100 * with_images[0] / method[0], abs=1.5)
    for part in ("image decoding and preprocessing", "CLIP image tower", "encoder and span head", "post-processing"):
        assert re.search(rf"^\| {part} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", body, re.M), part
    assert re.search(r"besides the tweet's \d+ text tokens", body)
    encoder = re.search(r"^\| encoder and span head \| ([0-9.]+) \| [0-9.]+ \| ([0-9.]+) \| [0-9.]+ \|$", body, re.M)
    encoder_one_by_one = [float(value) for value in encoder.groups()]  # 2 and 4 prompts
    limits = re.search(r"took ([0-9.]+) s with 2, ([0-9.]+) s with 4 clue tokens, one by one, against ([0-9.]+) s "
                       r"on the texts alone", body)  # fmt: skip
    assert [float(value) for value in limits.groups()[:2]] == encoder_one_by_one
    assert 0 < float(limits.group(3))
