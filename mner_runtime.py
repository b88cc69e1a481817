"""Where the package's commands run (package only): the device, the processes, and the saved model they load.

- [`has_accelerator_device`], [`process_state`]: Accelerate's device for this process; on a machine without an
  accelerator every process runs on the CPU, so that `accelerate launch --multi_gpu` starts gloo processes there.
- [`load_model_and_processor`], [`load_pipeline`]: a saved model folder or Hub repo, through this package's own
  classes (nothing from the folder runs) or, with `trust_remote_code=True`, through the repository's code.
"""

from __future__ import annotations

import os


def has_accelerator_device() -> bool:
    """Whether any device besides the CPU is there for Accelerate to use."""
    import torch
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available()


def process_state(device: str | None = None):
    """Accelerate's `PartialState` of this process; `device="cpu"` forces the CPU."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not has_accelerator_device())


def load_model_and_processor(model: str | os.PathLike, processor: str | os.PathLike | None = None):
    """`(model in eval mode, processor)` saved in a folder or a Hub repo (the processor from `processor` if given),
    with this package's classes: no code from the folder runs, and nothing asks whether to trust it."""
    from modeling_promptmner import PromptMNERForSpanNER
    from processing_promptmner import PromptMNERProcessor

    loaded = PromptMNERForSpanNER.from_pretrained(model).eval()
    # trust_remote_code=False stops the tokenizer lookup from asking about the folder's auto_map.
    return loaded, PromptMNERProcessor.from_pretrained(processor or model, trust_remote_code=False)


def load_pipeline(model: str | os.PathLike, device, trust_remote_code: bool = False, num_threads: int | None = None):
    """The `multimodal-ner` pipeline for `model` (folder or repo id) on `device`, in eval mode: with this package's
    classes ([`load_model_and_processor`]) or, with `trust_remote_code=True`, the repository's code. On the CPU it
    uses `num_threads` torch threads, by default the cores other work leaves idle (`set_cpu_threads`)."""
    if trust_remote_code:
        from transformers import pipeline

        return pipeline("multimodal-ner", model=str(model), device=device, trust_remote_code=True,
                        num_threads=num_threads)  # fmt: skip
    from pipeline_promptmner import MultimodalNERPipeline

    loaded, processor = load_model_and_processor(model)
    return MultimodalNERPipeline(model=loaded, processor=processor, device=device, num_threads=num_threads)
