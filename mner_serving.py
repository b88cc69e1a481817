"""Serving files for a trained PromptMNER model (package only): the Inference Endpoints handler and a Gradio Space.

The Hub's hosted widget and serverless inference only run models that an inference provider serves, and they do
not execute `trust_remote_code` code. What runs a custom-code model is:

1. the `multimodal-ner` pipeline with `trust_remote_code=True` (saved with every model);
2. a dedicated Inference Endpoint: [`write_endpoint_files`] puts `handler.py` (a copy of `promptmner_handler.py`)
   and the `requirements.txt` the endpoint image must add into the model folder;
3. a Gradio Space: [`write_space`] writes a ready Space folder (`app.py`, a copy of `promptmner_space.py`,
   `requirements.txt`, a README.md with the Space front matter, and examples); [`push_space`] uploads it.

The model card's sections that say so are in `mner_model_card`. The requirement ranges are those of the installed
versions this package was tested with: from the installed minor version up to the next major one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from atomic_files import copy_file, replacing, write_text

HERE = Path(__file__).resolve().parent
HANDLER_SOURCE = HERE / "promptmner_handler.py"
SPACE_APP_SOURCE = HERE / "promptmner_space.py"
HANDLER_FILE = "handler.py"
SPACE_APP_FILE = "app.py"
REQUIREMENTS_FILE = "requirements.txt"
SPACE_FOLDER = "space"  # run_mner.py writes the Space in <output_dir>/space (left out of the model upload)
# What the model's remote code, the handler and the app import, beyond the Python standard library.
ENDPOINT_DISTRIBUTIONS = (
    "torch", "torchvision", "transformers", "open_clip_torch", "huggingface_hub", "safetensors", "pillow", "numpy",
)  # fmt: skip
SPACE_DISTRIBUTIONS = ENDPOINT_DISTRIBUTIONS + ("pandas",)
# The Space's gradio when gradio is not installed here (it is an optional extra): the range of setup.cfg's `space`.
GRADIO_TESTED = ("6.31.0", "gradio>=6.31,<7")


# ----------------------------------------------------------------------------------------------------------------
# Requirements
# ----------------------------------------------------------------------------------------------------------------


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def compatible_range(distribution: str) -> str:
    """`name>=X.Y,<X+1` around the installed version of `distribution` (e.g. `transformers>=5.24,<6`)."""
    version = installed_version(distribution)
    if version is None:
        raise RuntimeError(
            f"{distribution} is not installed, so no tested version range can be written for it "
            f"(install it, e.g. `pip install -e \".[space]\"` for gradio)"
        )
    parts = version.split("+")[0].split(".")
    major, minor = int(parts[0]), int("".join(c for c in (parts[1] if len(parts) > 1 else "0") if c.isdigit()) or 0)
    return f"{distribution}>={major}.{minor},<{major + 1}"


def requirements(distributions: Sequence[str]) -> str:
    """A `requirements.txt`: one compatible range per distribution."""
    return "".join(compatible_range(name) + "\n" for name in distributions)


def gradio_version_and_range() -> tuple[str, str]:
    """The Space's gradio: `(sdk_version, requirement)`, from the installed gradio, else the tested range (gradio is
    an optional extra: training writes the Space folder without it)."""
    version = installed_version("gradio")
    return (version, compatible_range("gradio")) if version is not None else GRADIO_TESTED


def copy_package_file(source: Path, target: Path) -> None:
    """One of this package's own files (the handler, the Space app) copied whole to `target`."""
    if not Path(source).is_file():
        raise FileNotFoundError(f"{source} is missing: reinstall the promptmner package")
    copy_file(source, target)


# ----------------------------------------------------------------------------------------------------------------
# The Inference Endpoint
# ----------------------------------------------------------------------------------------------------------------


def write_endpoint_files(folder: str | os.PathLike) -> None:
    """Put `handler.py` (class `EndpointHandler`) and its `requirements.txt` into a saved model folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model there first")
    copy_package_file(HANDLER_SOURCE, folder / HANDLER_FILE)
    write_text(folder / REQUIREMENTS_FILE, requirements(ENDPOINT_DISTRIBUTIONS))


# ----------------------------------------------------------------------------------------------------------------
# The Space
# ----------------------------------------------------------------------------------------------------------------


def space_readme(model_id: str | None, title: str) -> str:
    """The Space's README.md: its front matter (`sdk: gradio`, `models: [model_id]`) and one paragraph."""
    from huggingface_hub import SpaceCardData

    data = SpaceCardData(
        title=title[:60],
        sdk="gradio",
        sdk_version=gradio_version_and_range()[0],
        app_file=SPACE_APP_FILE,
        license="apache-2.0",
        models=[model_id] if model_id else None,
        tags=["promptmner", "multimodal-ner", "ner"],
    )
    served = f"[`{model_id}`](https://huggingface.co/{model_id})" if model_id else "the model given with `--model`"
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n"
        f"Multimodal named entity recognition with PromptMNER: {served}. Type a text, add an image if you have one, "
        "and see the entities with their types and scores, and the prompts `p(P_i|I)` the model finds most "
        "relevant to the image. Run it locally with `pip install -r requirements.txt && python app.py --model "
        "<folder or repo id>`.\n"
    )


def _write_example_image(image: Any, target: Path) -> None:
    """An example image: a file path (copied) or a PIL image (saved as PNG)."""
    if isinstance(image, (str, os.PathLike)):
        copy_file(Path(image), target)
    elif hasattr(image, "save"):
        with replacing(target) as partial:
            image.save(partial, format="PNG")
    else:
        raise TypeError(f"an example image must be a file path or a PIL image, got {type(image).__name__}")


def write_examples(folder: Path, examples: Sequence[tuple[str, Any]]) -> None:
    """`examples.json` (`[{"text", "image"}]`) with the example images copied under `examples/`."""
    entries = []
    for index, (text, image) in enumerate(examples):
        if not isinstance(text, str):
            raise TypeError(f"example {index}: the text must be a string, got {type(text).__name__}")
        name = None
        if image is not None:
            suffix = Path(image).suffix if isinstance(image, (str, os.PathLike)) else ".png"
            name = f"examples/{index:02d}{suffix or '.png'}"
            _write_example_image(image, folder / name)
        entries.append({"text": text, "image": name})
    write_text(folder / "examples.json", json.dumps(entries, indent=2, ensure_ascii=False) + "\n")


def write_space(
    folder: str | os.PathLike,
    model_id: str | None = None,
    title: str = "PromptMNER multimodal NER",
    examples: Sequence[tuple[str, Any]] | None = None,
) -> Path:
    """Write a ready Gradio Space folder for a model: `app.py`, `requirements.txt`, `README.md`, examples.

    Args:
        folder: where to write it (created if needed).
        model_id (`str`, *optional*): the Hub model the Space serves (`models:` in its front matter, read by
            `app.py`); without it `app.py` needs `--model`.
        title (`str`): the Space's title.
        examples (*optional*): `(text, image)` pairs; an image is a file path, a PIL image or `None`. Without them the
            app shows its built-in text examples.

    Returns:
        The folder.
    """
    folder = Path(folder)
    copy_package_file(SPACE_APP_SOURCE, folder / SPACE_APP_FILE)
    write_text(folder / REQUIREMENTS_FILE, requirements(SPACE_DISTRIBUTIONS) + gradio_version_and_range()[1] + "\n")
    write_text(folder / "README.md", space_readme(model_id, title))
    if examples:
        write_examples(folder, examples)
    return folder


def _row_image(row: dict[str, Any]) -> Any:
    """A dataset row's usable image: its `image` (PIL, from a Hub dataset) or its existing `image_path`, else None."""
    if row.get("image") is not None:
        return row["image"]
    path = row.get("image_path")
    return path if path and os.path.isfile(path) else None


def space_examples(rows: Iterable[dict[str, Any]], count: int = 3, with_images: bool = True) -> list[tuple]:
    """`(text, image)` examples: the first `count` rows that have an image (else the first rows), `tokens` joined.

    `rows` are dataset rows of `mner_data`'s schema (`tokens`, and `image_path` or a Hub dataset's `image`).
    `with_images=False` keeps only the texts (for data whose images may not be redistributed in a public Space).
    """
    with_image, without = [], []
    for row in rows:
        image = _row_image(row)
        group = with_image if image is not None else without
        if len(group) < count:
            group.append((" ".join(row["tokens"]), image if with_images else None))
        if len(with_image) == count:
            break
    return with_image or without


def push_space(folder: str | os.PathLike, space_id: str, token: str | None = None) -> str:
    """Create (if needed) the Gradio Space `space_id` and upload `folder` to it; returns the Space's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    space_id = api.create_repo(space_id, repo_type="space", space_sdk="gradio", exist_ok=True).repo_id
    api.upload_folder(
        repo_id=space_id, repo_type="space", folder_path=str(folder), commit_message="Upload PromptMNER Space"
    )
    return f"https://huggingface.co/spaces/{space_id}"
