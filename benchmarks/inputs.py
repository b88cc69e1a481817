"""The inputs the benchmark scripts share: tweets (Twitter-2015's test split where `../shared/data` has it) and
generated JPEG photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TWITTER_TEST = ROOT.parent / "shared" / "data" / "twitter2015" / "test.txt"
FALLBACK_TEXTS = [
    "RT @NBA : LeBron James scores 40 points as the Cavaliers beat the Warriors in Oakland #NBAFinals",
    "Barack Obama meets Angela Merkel in Berlin to talk about the European Union",
    "Manchester United sign a new striker from Real Madrid , says Sky Sports",
    "Taylor Swift performs in New York City tonight ! http://t.co/abc123",
]


def tweets(count: int) -> tuple[list[str], str]:
    """`(texts, where they come from)`: the first `count` Twitter-2015 test tweets (words joined by spaces), or
    built-in tweet-like sentences repeated where the data is absent."""
    if TWITTER_TEST.is_file():
        import mner_data

        examples = mner_data.read_conll(TWITTER_TEST)[:count]
        return [" ".join(example["tokens"]) for example in examples], "Twitter-2015 test tweets"
    return [FALLBACK_TEXTS[index % len(FALLBACK_TEXTS)] for index in range(count)], "built-in tweet-like sentences"


def tweet_words() -> list[str]:
    """Every word of the Twitter-2015 test tweets in order (or of the built-in sentences): the stuff of long texts."""
    texts, _ = tweets(10**6) if TWITTER_TEST.is_file() else (FALLBACK_TEXTS, "")
    return [word for text in texts for word in text.split()]


def write_images(folder: Path, count: int, size: tuple[int, int] = (320, 240)) -> list[str]:
    """`count` random photos as JPEG files `<folder>/<i>.jpg` (the same pixels on every run); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        paths.append(str(folder / f"{index}.jpg"))
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths
