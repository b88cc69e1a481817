"""The model folder of a training run (package only): the best-dev model saved whole, the output folder, the upload.

`run_mner.py`'s output folder is a complete Hub repository: weights (safetensors), processor (tokenizer, CLIP image
tower, prompt vocabulary), remote code, the `multimodal-ner` pipeline, the endpoint's `handler.py` and the model
card. The training state (`training/`: checkpoints, the best-dev model, logs), the data, the Space folder and the
predictions files are left out of the upload.
"""

from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator

from atomic_files import copy_file, fresh_partial_folder, replace_folder, replacing
from mner_checkpoints import TRAINING_STATE_DIR, kill_point
from mner_serving import SPACE_FOLDER
from pipeline_promptmner import MultimodalNERPipeline

BEST_MODEL_PROGRESS = "progress.json"  # the best-dev bookkeeping beside the best model; not part of the output


def save_model_folder(accelerator: Accelerator, model, processor, folder: Path, kill_point_name: str = "") -> None:
    """Model, processor, `custom_pipelines` and their remote code in one folder, written by the main process.

    transformers' `Pipeline.save_pretrained` is what writes `custom_pipelines` into `config.json` and copies the
    pipeline's code; the pipeline is built on the model's own device. The folder is written as `<folder>.partial`
    and then replaces `folder`, so a run killed while saving leaves the previous folder whole.
    `kill_point_name` names the `mner_checkpoints.kill_point` between the two.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial = fresh_partial_folder(folder)
        model = accelerator.unwrap_model(model)
        MultimodalNERPipeline(model=model, processor=processor, device=model.device).save_pretrained(partial)
        kill_point(kill_point_name)
        replace_folder(partial, folder)
    accelerator.wait_for_everyone()


def write_output_folder(accelerator: Accelerator, output_dir: str | os.PathLike, card) -> None:
    """The best-dev model's files copied into `output_dir` (each written whole), then its model card as README.md."""
    if accelerator.is_main_process:
        best_model = Path(output_dir) / TRAINING_STATE_DIR / "best_model"
        for name in sorted(os.listdir(best_model)):
            if name != BEST_MODEL_PROGRESS:
                copy_file(best_model / name, Path(output_dir) / name)
        with replacing(Path(output_dir) / "README.md") as partial:
            card.save(partial)
    accelerator.wait_for_everyone()


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None) -> None:
    """Upload a run's output folder, without its training state, data, Space folder and predictions files, to the
    Hub repository `repo_id`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        ignore_patterns=[f"{TRAINING_STATE_DIR}/**", "data/**", f"{SPACE_FOLDER}/**", "predictions_*"],
        commit_message="Upload PromptMNER model",
    )
