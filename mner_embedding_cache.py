"""Image embeddings of a training run's data (package only): computed once with the frozen CLIP, cached on disk.

[`add_image_embeddings`] adds `image_embeds`, `has_image` and `image_error` columns to every split. The cache holds
the embeddings only, keyed by a fingerprint of the CLIP image tower's weights, the preprocessing and the bytes of
every image ([`embedding_fingerprint`]); it is joined row by row to the text just read, so an edited data file is
never answered with the tokens or tags of an earlier run, and later epochs and runs never run CLIP again.
An example whose image is missing or unreadable takes the text-only path; [`image_report`] counts them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets
import torch

from clip_promptmner import embed_present, load_image

def image_source_digest(path: str | None, stored: dict | None) -> bytes:
    """What one example's image is: the sha256 of its bytes (stored in the dataset, or its file's) and its path.

    A missing or unreadable file gets its own marker, so the example's text-only path is cached too.
    """
    if stored is not None:
        content = stored.get("bytes") or str(stored).encode()
        return b"stored|" + hashlib.sha256(content).digest()
    if path is None:
        return b"none"
    try:
        with open(path, "rb") as handle:
            return f"file|{path}|".encode() + hashlib.file_digest(handle, "sha256").digest()
    except OSError as err:  # the example takes the text-only path; its error is what gets cached
        return f"unreadable|{path}|{type(err).__name__}".encode()


def embedding_fingerprint(images: datasets.Dataset, processor) -> str:
    """A hash of everything a table of image embeddings depends on: the CLIP weights, the preprocessing and the
    content of each row's image, in order (`images`: the `image_path` and optional `image` columns)."""
    digest = hashlib.sha256(processor.image_scorer.fingerprint().encode())
    stored = images["image"] if "image" in images.column_names else [None] * len(images)
    for path, image in zip(images["image_path"], stored):
        digest.update(image_source_digest(path, image))
    return digest.hexdigest()[:32]


def load_row_image(path: str | None, stored=None):
    """One example's image as an RGB `PIL.Image` and None, or None and why (no image, a missing or unreadable file or
    stored image): such an example takes the text-only path, never another image.

    `stored` is a `datasets.Image` value (decoded, or the `{"bytes", "path"}` of an undecoded one); else `path`."""
    try:
        if stored is None and path is None:
            return None, "no image"
        source = datasets.Image().decode_example(stored) if isinstance(stored, dict) else stored
        return load_image(path if source is None else source), None
    except (OSError, ValueError) as err:  # missing or unreadable: this example takes the text-only path
        return None, f"{type(err).__name__}: {err}"


def image_embedding_function(processor, counter: dict):
    """A batched `datasets.map` function adding `image_embeds` (None without an image), `has_image` and
    `image_error` columns; `counter["encoder_calls"]` counts the CLIP batches it runs."""

    def encode(images: list) -> torch.Tensor:
        counter["encoder_calls"] += 1
        return processor.image_scorer.encode_images(images, batch_size=len(images))

    def embed(batch: dict) -> dict:
        stored = batch.get("image") or [None] * len(batch["image_path"])
        images, errors = zip(*(load_row_image(path, image) for path, image in zip(batch["image_path"], stored)))
        embeds, has_image = embed_present(images, encode, processor.clip_embed_dim)  # (B, D), (B,)
        has_image = has_image.tolist()
        rows = [row.tolist() if present else None for row, present in zip(embeds, has_image)]
        return {"image_embeds": rows, "has_image": has_image, "image_error": list(errors)}

    return embed


def add_image_embeddings(
    raw: datasets.DatasetDict, processor, cache_dir: str | os.PathLike, batch_size: int = 64
) -> tuple[datasets.DatasetDict, dict]:
    """
    Encode every split's images once with CLIP and cache the embeddings on disk, keyed by
    [`embedding_fingerprint`] (CLIP weights, preprocessing, image contents).

    Only the embeddings are cached: the cached table holds `image_embeds`, `has_image` and `image_error` and
    nothing else, and is joined row by row to the text just read, so an edited text file is never answered with
    the tokens or tags of an earlier run.

    Args:
        raw (`datasets.DatasetDict`): splits in `mner_data`'s schema (`image_path`, optionally `image`).
        processor ([`PromptMNERProcessor`]): loads, preprocesses and encodes the images.
        cache_dir (`str` or `os.PathLike`): folder of the cached embeddings (created if needed).
        batch_size (`int`): images per CLIP forward pass.

    Returns:
        The splits with `image_embeds`, `has_image` and `image_error` columns, and `{"encoder_calls": n}`: how
        many CLIP batches ran (0 when everything came from the cache). Under several processes, call it in
        `accelerator.main_process_first()` so that the main process fills the cache.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    counter = {"encoder_calls": 0}
    out = datasets.DatasetDict()
    for split, dataset in raw.items():
        if "image" in dataset.column_names:  # images stored in the dataset: read their bytes, decode on demand
            dataset = dataset.cast_column("image", datasets.Image(decode=False))
        images = dataset.select_columns([name for name in ("image_path", "image") if name in dataset.column_names])
        fingerprint = embedding_fingerprint(images, processor)
        embeddings = images.map(
            image_embedding_function(processor, counter),
            batched=True,
            batch_size=batch_size,
            remove_columns=images.column_names,
            cache_file_name=str(cache_dir / f"image-embeds-{fingerprint}.arrow"),
            new_fingerprint=fingerprint,
            load_from_cache_file=True,
            desc=f"CLIP image embeddings ({split})",
        )
        out[split] = datasets.concatenate_datasets([dataset, embeddings], axis=1)
    return out, counter


def image_report(data: datasets.DatasetDict) -> dict:
    """Per split: examples, how many took the text-only path and the first few reasons."""
    report = {}
    for split, dataset in data.items():
        errors = [e for e in dataset["image_error"] if e is not None]
        report[split] = {"examples": len(dataset), "text_only": len(errors), "first_errors": errors[:3]}
    return report


def format_image_report(report: dict) -> str:
    """[`image_report`] as sentences: one per split, then the first reasons of each split that has text-only
    examples."""
    lines = []
    for split, row in report.items():
        with_image = row["examples"] - row["text_only"]
        lines.append(f"  {split}: {row['examples']} examples, {with_image} with an image, "
                     f"{row['text_only']} on the text-only path")  # fmt: skip
        lines += [f"    e.g. {error}" for error in row["first_errors"]]
    return "\n".join(lines)
