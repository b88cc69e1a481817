"""The files and folders a training run reads and writes (package only), checked before any data work.

[`check_run_inputs`]: the data files, the image folder, the CLIP config, the backbone (and whether its positions fit
`--max_length` plus the visual clue tokens), the checkpoint to resume from (tied to the run's arguments) and the
output folder (not written by another live run either); each problem is a `ValueError` naming the option or the
file. [`locked_output_dir`]: the run's hold on its output folder (`<output_dir>.lock`, see `output_lock`).
[`clear_previous_run`] removes the training state of the run an `--overwrite_output_dir` replaces, only when this
script made it (its marker file) and it holds nothing else ([`check_own_training_state`]).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from transformers import AutoConfig
from transformers.utils import logging

from mner_arguments import RunArguments
from mner_backbone import backbone_position_offset
from mner_checkpoints import (
    TRAINING_STATE_DIR,
    TRAINING_STATE_MARKER,
    check_checkpoint,
    foreign_training_entries,
    latest_checkpoint,
    mark_training_state,
    read_json_record,
    run_signature,
)
from mner_runtime import is_local_path, main_process_value
from output_lock import OutputLock, RefusedError, check_not_locked

logger = logging.get_logger(__name__)

# A backbone folder needs one of these to build its tokenizer (fast tokenizer, WordPiece, byte-level BPE,
# SentencePiece or BERTweet's BPE codes); without any, transformers would fall back to a misleading message.
BACKBONE_TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
    "bpe.codes",
)  # fmt: skip


def check_data_files(args: RunArguments) -> None:
    """The CoNLL files exist and are not empty; `--train_file` comes with `--validation_file`; the image folder
    exists; the CLIP config file is a JSON object."""
    if args.train_file and not args.validation_file:
        raise ValueError("--train_file needs --validation_file: the model is evaluated on dev after every epoch")
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(args, name)
        if path is None:
            continue
        if not Path(path).is_file():
            raise ValueError(f"--{name} {path}: no such file")
        if Path(path).stat().st_size == 0:
            raise ValueError(f"--{name} {path}: the file is empty")
    if args.image_dir is not None and not Path(args.image_dir).is_dir():
        raise ValueError(f"--image_dir {args.image_dir}: no such folder")
    if args.hf_dataset and is_local_path(args.hf_dataset) and not Path(args.hf_dataset).is_dir():
        raise ValueError(f"--hf_dataset {args.hf_dataset}: no such folder")
    if args.clip_config is not None:
        config = read_json_record(Path(args.clip_config), "an open_clip model config (--clip_config)")
        if "vision_cfg" not in config or "embed_dim" not in config:
            raise ValueError(f"--clip_config {args.clip_config}: not an open_clip model config (no vision_cfg)")


def check_backbone(args: RunArguments) -> None:
    """`--model_name_or_path`: a folder with `config.json` and tokenizer files (or a Hub id), a supported model
    type, and enough positions for `--max_length` text tokens plus the visual clue tokens."""
    name = args.model_name_or_path
    if is_local_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--model_name_or_path {name}: no such folder")
        if not (folder / "config.json").is_file():
            raise ValueError(f"--model_name_or_path {name}: the folder has no config.json")
        if not any((folder / file).is_file() for file in BACKBONE_TOKENIZER_FILES):
            raise ValueError(
                f"--model_name_or_path {name}: the folder has no tokenizer files (one of "
                f"{', '.join(BACKBONE_TOKENIZER_FILES)})"
            )
    try:
        config = AutoConfig.from_pretrained(name)
        offset = backbone_position_offset(config)
    except (OSError, ValueError) as err:
        raise ValueError(f"--model_name_or_path {name}: {err}") from err
    capacity = config.max_position_embeddings + offset - config.pad_token_id - 1  # positions after the padding id
    needed = args.max_length + args.num_visual_tokens()
    if needed > capacity:
        raise ValueError(
            f"--max_length {args.max_length} plus {args.num_visual_tokens()} visual clue tokens need {needed} "
            f"positions, but the backbone {name} has {capacity}: use --max_length "
            f"{capacity - args.num_visual_tokens()} or less"
        )


def resolve_checkpoint(args: RunArguments) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names (`latest`: the newest of the output folder), or None."""
    if args.resume_from_checkpoint == "latest":
        return latest_checkpoint(Path(args.output_dir) / TRAINING_STATE_DIR)
    return args.resume_from_checkpoint


def check_own_training_state(args: RunArguments) -> None:
    """`--overwrite_output_dir` deletes `<output_dir>/training` whole: only when run_mner.py made it (its marker
    file) and it holds nothing else; a `ValueError` names the folder and what else is there otherwise."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    if not state_dir.is_dir():
        return
    foreign = foreign_training_entries(state_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        unmarked = "" if (state_dir / TRAINING_STATE_MARKER).is_file() else f" (no {TRAINING_STATE_MARKER}: not a run's)"
        raise ValueError(
            f"--overwrite_output_dir would delete {state_dir}, which holds what run_mner.py did not write{unmarked}: "
            f"{shown}. Move them out of it, or use another --output_dir"
        )


def check_output_dir(args: RunArguments, checkpoint: str | None) -> None:
    """An output folder that holds anything is only written into with `--overwrite_output_dir` or to resume one
    of its checkpoints (transformers' convention); overwriting deletes only a training state this script wrote. A
    folder another live run writes is refused in any case ([`RefusedError`] naming that run's pid)."""
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output_dir {output}: exists and is not a folder")
    check_not_locked(output, "--output_dir")
    if args.overwrite_output_dir and checkpoint is None:
        check_own_training_state(args)
    if args.overwrite_output_dir or checkpoint is not None or not output.is_dir() or not any(output.iterdir()):
        return
    resume = " and no checkpoint to resume from" if args.resume_from_checkpoint else ""
    raise ValueError(
        f"--output_dir {output}: the folder is not empty{resume}; use --overwrite_output_dir to replace its "
        "run, --resume_from_checkpoint latest to continue it, or another --output_dir"
    )


def check_run_inputs(args: RunArguments) -> None:
    """Everything a run reads or writes, checked before any data work: data files, image folder, CLIP config,
    backbone, the checkpoint to resume from (tied to these arguments) and the output folder."""
    check_data_files(args)
    check_backbone(args)
    checkpoint = resolve_checkpoint(args)
    if checkpoint is not None:
        check_checkpoint(checkpoint, run_signature(args))
    check_output_dir(args, checkpoint)


def locked_output_dir(args: RunArguments, accelerator) -> contextlib.AbstractContextManager:
    """The run's hold on `--output_dir`: the main process takes `<output_dir>.lock` (released when the `with` block
    ends, or by the operating system if the process is killed). When another live run holds it (one that started
    after [`check_run_inputs`]), every process raises the [`RefusedError`] naming it, so all stop before anything is
    written."""
    lock, refusal = contextlib.nullcontext(), None
    if accelerator.is_main_process:
        try:
            lock = OutputLock(Path(args.output_dir), "--output_dir").acquire()
        except RefusedError as err:
            refusal = str(err)
    refusal = main_process_value(refusal, accelerator)
    if refusal is not None:
        raise RefusedError(refusal)
    return lock


def clear_previous_run(args: RunArguments) -> None:
    """With `--overwrite_output_dir` (and nothing to resume), delete the training state of the run the folder
    held (checkpoints, best-dev model, logs), so that no later `--resume_from_checkpoint latest` picks it up; only
    a state this script wrote and nothing else ([`check_own_training_state`], checked again here). Its model files
    stay until the new run's replace them. Then (every run) mark the training state folder as this script's."""
    state_dir = Path(args.output_dir) / TRAINING_STATE_DIR
    if args.overwrite_output_dir and resolve_checkpoint(args) is None and state_dir.exists():
        check_own_training_state(args)
        logger.warning("--overwrite_output_dir: deleting the previous run's training state %s", state_dir)
        shutil.rmtree(state_dir)
    mark_training_state(state_dir)
