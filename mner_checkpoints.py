"""Checkpoints of a training run (package only), tied to the run's arguments so that a resumed run is the same run.

A checkpoint is a folder `<output_dir>/training/checkpoints/step_<n>`: Accelerate's state (model, optimizer,
scheduler, RNGs, sampler), the best-dev bookkeeping (`progress.json`) and the training arguments it belongs to
(`run_arguments.json`). It is written whole (`atomic_files`), so a run killed while saving never leaves half of one.
[`kill_point`] is the test hook that makes a run SIGKILL itself at a named point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
from pathlib import Path

from accelerate import Accelerator
from safetensors import SafetensorError, safe_open

from atomic_files import (
    OLD_SUFFIX,
    PARTIAL_SUFFIX,
    fresh_partial_folder,
    partial_path,
    recover_folder,
    replace_folder,
    write_json,
)
from mner_arguments import RunArguments

TRAINING_STATE_DIR = "training"  # checkpoints, best-dev model and logs; never pushed to the Hub
# The mark of a training state folder that run_mner.py made: `--overwrite_output_dir` deletes only such a folder, and
# only when it holds nothing but the state's own entries (each possibly as `.partial` / `.old` of a killed save).
TRAINING_STATE_MARKER = "promptmner_training_state.json"
TRAINING_STATE_ENTRIES = ("checkpoints", "best_model", "logs", "text_only", TRAINING_STATE_MARKER)

# Test hook: a process whose environment sets this variable to a kill point's name SIGKILLs itself when it gets
# there, so that tests can interrupt a real run at a precise point. Points: `after_step:<n>` (after optimizer step
# n and its checkpoint), `evaluation:<epoch>` (the epoch's dev evaluation has run, its result is not recorded),
# `best_model_save:<epoch>` (the new best-dev folder is written, not yet in place). Unset, it costs one lookup.
KILL_POINT_ENV = "PROMPTMNER_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process when `$PROMPTMNER_TEST_KILL_AT` equals `name` (see `KILL_POINT_ENV`)."""
    if name and os.environ.get(KILL_POINT_ENV) == name:
        print(f"{KILL_POINT_ENV}={name}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def new_progress() -> dict:
    """The progress record of a run that starts from scratch."""
    return {"step": 0, "step_losses": [], "best_f1": -1.0, "best_epoch": None, "history": []}


# Settings that may change between a run and its resumption: where things go, how often state is saved, how
# results are reported. Every other `RunArguments` field must be what the checkpoint was taken with.
RESUME_INDEPENDENT_ARGUMENTS = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "checkpointing_steps", "cache_dir",
    "image_batch_size", "per_device_eval_batch_size", "with_tracking", "push_to_hub", "hub_model_id", "hub_token",
    "hub_space_id",
)  # fmt: skip
CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def run_signature(args: RunArguments) -> dict:
    """The training arguments a checkpoint is tied to (JSON values): all but `RESUME_INDEPENDENT_ARGUMENTS`, with
    the prompt vocabulary's words (an edited vocabulary file is another run)."""
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k not in RESUME_INDEPENDENT_ARGUMENTS}
    return json.loads(json.dumps(settings))


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """`.../step_120` -> 120 (the optimizer step the checkpoint was taken after)."""
    return int(CHECKPOINT_NAME.fullmatch(Path(checkpoint).name).group(1))


def latest_checkpoint(state_dir: Path) -> str | None:
    """The complete checkpoint of `state_dir` with the highest step, or None (`.partial` / `.old` folders of an
    interrupted save are not checkpoints)."""
    candidates = [p for p in state_dir.glob("checkpoints/step_*") if CHECKPOINT_NAME.fullmatch(p.name)]
    candidates.sort(key=checkpoint_step)
    return str(candidates[-1]) if candidates else None


def mark_training_state(state_dir: Path) -> None:
    """Write [`TRAINING_STATE_MARKER`] into `state_dir` (main process, before the run writes anything there)."""
    marker = Path(state_dir) / TRAINING_STATE_MARKER
    if not marker.is_file():
        write_json(marker, {"written_by": "run_mner.py", "what": "training state: checkpoints, best-dev model, logs; "
                            "--overwrite_output_dir deletes this folder whole"})  # fmt: skip


def _is_state_entry(name: str, entries: tuple[str, ...]) -> bool:
    return any(name in (entry, entry + PARTIAL_SUFFIX, entry + OLD_SUFFIX) for entry in entries)


def foreign_training_entries(state_dir: Path) -> list[str]:
    """What in `state_dir` run_mner.py did not write: all of it when the folder has no [`TRAINING_STATE_MARKER`],
    else its entries (and those of its `checkpoints`) that are not the training state's own."""
    state_dir = Path(state_dir)
    names = sorted(path.name for path in state_dir.iterdir())
    if TRAINING_STATE_MARKER not in names:
        return names
    foreign = [name for name in names if not _is_state_entry(name, TRAINING_STATE_ENTRIES)]
    checkpoints = state_dir / "checkpoints"
    if checkpoints.is_dir():
        foreign += [f"checkpoints/{path.name}" for path in sorted(checkpoints.iterdir())
                    if not (path.is_dir() and CHECKPOINT_NAME.fullmatch(path.name.split(".")[0]))]  # fmt: skip
    return foreign


def recover_training_state(state_dir: Path) -> None:
    """Undo what a run killed between the two renames of a folder replacement left in its training state (the
    best-dev model, a checkpoint): see `atomic_files.recover_folder`. On the main process, before resuming."""
    for old in sorted(Path(state_dir).rglob("*" + OLD_SUFFIX)):
        recover_folder(old.with_name(old.name[: -len(OLD_SUFFIX)]))


def save_checkpoint(accelerator: Accelerator, state_dir: Path, step: int, progress: dict, signature: dict) -> None:
    """Accelerate state (model, optimizer, scheduler, RNGs, sampler), the best-dev bookkeeping (`progress.json`)
    and the run's training arguments (`run_arguments.json`, see [`run_signature`]).

    Written to a temporary folder that then replaces `step_<step>` (an existing one too: a resumed run saves its
    steps again), so a run killed while saving never leaves a partial checkpoint.
    """
    folder = state_dir / "checkpoints" / f"step_{step}"
    partial = partial_path(folder)
    if accelerator.is_main_process:
        fresh_partial_folder(folder)  # empties what a run killed while saving left there
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        write_json(partial / "progress.json", progress)
        write_json(partial / "run_arguments.json", signature)
        replace_folder(partial, folder)
    accelerator.wait_for_everyone()


def read_json_record(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a `ValueError` naming the file and `what` it should be."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path}: missing ({what})") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable, expected {what} ({type(err).__name__}: {err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def check_checkpoint(checkpoint: str | os.PathLike, signature: dict) -> dict:
    """The progress record of a [`save_checkpoint`] folder, after checking that it is one and that it was taken
    with the training arguments `signature`; a `ValueError` names the file or the arguments that differ."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: no such folder")
    progress = read_json_record(checkpoint / "progress.json", "the checkpoint's progress record")
    missing = {"step", "step_losses", "best_f1", "best_epoch", "history"} - set(progress)
    if missing:
        raise ValueError(f"{checkpoint / 'progress.json'}: not a run_mner progress record (no {sorted(missing)})")
    for weights in sorted(checkpoint.glob("*.safetensors")):
        try:
            safe_open(str(weights), framework="pt").keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights}: unreadable checkpoint weights ({type(err).__name__}: {err})") from err
    saved = read_json_record(checkpoint / "run_arguments.json", "the training arguments of the checkpoint's run")
    differ = sorted(name for name in saved.keys() | signature.keys() if saved.get(name) != signature.get(name))
    if differ:
        listed = "; ".join(f"--{name} {signature.get(name)!r} (checkpoint: {saved.get(name)!r})" for name in differ)
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint}: it belongs to a run with other training arguments: {listed}. "
            "Resume with the checkpoint's arguments, or start afresh with --overwrite_output_dir"
        )
    return progress


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike, signature: dict) -> dict:
    """Restore the Accelerate state of a [`save_checkpoint`] folder (checked by [`check_checkpoint`]); returns
    its progress record. A damaged state file raises a `ValueError` naming the checkpoint."""
    progress = check_checkpoint(checkpoint, signature)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as err:  # safetensors, torch.load and accelerate each raise their own types: name the folder
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: the saved training state cannot be restored "
                         f"({type(err).__name__}: {err})") from err  # fmt: skip
    return progress
