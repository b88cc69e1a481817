"""Where the package's commands run (package only): the device, the processes, and the saved model they load.

- [`has_accelerator_device`], [`process_state`]: Accelerate's device for this process; on a machine without an
  accelerator every process runs on the CPU, so that `accelerate launch --multi_gpu` starts gloo processes there.
  [`main_process_value`]: what the main process decided, on every process.
- [`check_device`]: a `--device` this machine has, or an error naming the option.
- [`load_model_and_processor`], [`load_pipeline`]: a saved model folder or Hub repo, through this package's own
  classes (nothing from the folder runs) or, with `trust_remote_code=True`, through the repository's code; a folder
  that does not exist is named as such ([`check_model_location`]), not as a malformed Hub repo id.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def has_accelerator_device() -> bool:
    """Whether any device besides the CPU is there for Accelerate to use."""
    import torch
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available()


def process_state(device: str | None = None):
    """Accelerate's `PartialState` of this process; `device="cpu"` forces the CPU."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not has_accelerator_device())


def main_process_value(value, state):
    """`value` of the main process, on every process of `state` (an Accelerate `PartialState` or `Accelerator`)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def check_device(device: str | None, option: str = "--device") -> None:
    """Raise a `ValueError` naming `option` unless `device` (None: Accelerate's choice) is one this machine has:
    `cuda:0` without a GPU would otherwise fail deep in the first model call."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{option} {device}: not a device name ('cpu', 'cuda', 'cuda:1', 'mps', ...): {err}") from None
    if parsed.type == "cpu":
        return
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "meta" or backend is None or not hasattr(backend, "is_available"):
        raise ValueError(f"{option} {device}: {parsed.type} devices cannot run the model")
    if not backend.is_available():
        raise ValueError(f"{option} {device}: this machine has no {parsed.type} device (use --device cpu)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"{option} {device}: this machine has {count} {parsed.type} device(s), numbered from 0")


def is_local_path(name: str) -> bool:
    """Whether `name` can only be a local path (not a Hub id `name` or `org/name`)."""
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def check_model_location(model: str | os.PathLike, option: str = "model") -> None:
    """Raise a `FileNotFoundError` naming `option` when `model` can only be a local folder and there is none (the
    Hub client would call it a malformed repo id)."""
    name = os.fspath(model)
    if is_local_path(name) and not Path(name).expanduser().is_dir():
        what = "is a file, not a model folder" if Path(name).exists() else "does not exist"
        raise FileNotFoundError(f"{option} {name}: the folder {what} (a saved model folder or a Hub repo id)")


@contextmanager
def hub_or_folder(model: str | os.PathLike):
    """Re-raise a failed load of `model`, when it is no folder here, as an `OSError` that says so first: a name such
    as `outputs/demo` is a folder to its user and a valid Hub repo id to the loader, whose own message is about the
    Hub."""
    try:
        yield
    except OSError as err:
        name = os.fspath(model)
        if Path(name).expanduser().exists():
            raise
        raise OSError(f"{name}: there is no such folder here, and loading it as a Hub repo id failed: {err}") from err


def load_model_and_processor(model: str | os.PathLike, processor: str | os.PathLike | None = None):
    """`(model in eval mode, processor)` saved in a folder or a Hub repo (the processor from `processor` if given),
    with this package's classes: no code from the folder runs, and nothing asks whether to trust it."""
    from modeling_promptmner import PromptMNERForSpanNER
    from processing_promptmner import PromptMNERProcessor

    check_model_location(model)
    if processor is not None:
        check_model_location(processor, "processor")
    with hub_or_folder(model):
        loaded = PromptMNERForSpanNER.from_pretrained(model).eval()
    with hub_or_folder(processor or model):
        # trust_remote_code=False stops the tokenizer lookup from asking about the folder's auto_map.
        return loaded, PromptMNERProcessor.from_pretrained(processor or model, trust_remote_code=False)


def load_pipeline(model: str | os.PathLike, device, trust_remote_code: bool = False, num_threads: int | None = None):
    """The `multimodal-ner` pipeline for `model` (folder or repo id) on `device`, in eval mode: with this package's
    classes ([`load_model_and_processor`]) or, with `trust_remote_code=True`, the repository's code. On the CPU it
    uses `num_threads` torch threads, by default the cores other work leaves idle (`set_cpu_threads`)."""
    if trust_remote_code:
        from transformers import pipeline

        check_model_location(model)
        with hub_or_folder(model):
            return pipeline("multimodal-ner", model=str(model), device=device, trust_remote_code=True,
                            num_threads=num_threads)  # fmt: skip
    from pipeline_promptmner import MultimodalNERPipeline

    loaded, processor = load_model_and_processor(model)
    return MultimodalNERPipeline(model=loaded, processor=processor, device=device, num_threads=num_threads)
