"""The Hub round trip: a saved model + processor folder loads by repo id, offline, in a fresh process."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from processes import offline_hub_cache, run_python
from tiny_models import tiny_span_model

REPO_ID = "org/promptmner-tiny"
TEXT = "Kevin Durant arrives in Oklahoma City"


@pytest.mark.slow
def test_saved_folder_loads_by_repo_id_in_a_fresh_process(tiny_roberta_processor, tmp_path):
    processor = tiny_roberta_processor
    model = tiny_span_model(processor)
    image_file = tmp_path / "tweet.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(image_file)
    inputs = processor(text=TEXT, images=str(image_file), return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs)
    entities = processor.post_process(expected, inputs)

    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "clip_vision.safetensors"} <= files
    assert {"configuration_promptmner.py", "modeling_promptmner.py", "processing_promptmner.py", "span_utils.py"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_promptmner.PromptMNERConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_promptmner.PromptMNERForSpanNER"

    cache = tmp_path / "hub"
    offline_hub_cache(folder, cache, REPO_ID)
    np.save(tmp_path / "expected_logits.npy", expected.logits.numpy())
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, tmp_path / "expected_state.safetensors")
    output = run_python(
        f"""
        import json, sys
        import numpy as np, torch
        from PIL import Image
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoProcessor

        config = AutoConfig.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({REPO_ID!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
        inputs = processor(text={TEXT!r}, images=Image.open("tweet.png"), return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        expected = np.load("expected_logits.npy")
        expected_state, state = load_file("expected_state.safetensors"), model.state_dict()
        print(json.dumps({{
            "config_class": type(config).__module__ + "." + type(config).__name__,
            "model_class": type(model).__module__ + "." + type(model).__name__,
            "processor_class": type(processor).__module__ + "." + type(processor).__name__,
            "max_diff": float(np.abs(outputs.logits.numpy() - expected).max()),
            "same_state": state.keys() == expected_state.keys()
            and all(torch.equal(state[name], expected_state[name]) for name in state),
            "entities": processor.post_process(outputs, inputs),
            "project_imported": sorted(m for m in sys.modules if "." not in m and m.endswith(("_promptmner", "span_utils"))),
        }}))
        """,
        cwd=tmp_path,
        HF_HUB_CACHE=str(cache), HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    result = json.loads(output.strip().splitlines()[-1])
    for key in ("config_class", "model_class", "processor_class"):
        assert result[key].startswith("transformers_modules."), result[key]
    assert result["model_class"].endswith("PromptMNERForSpanNER")
    assert result["project_imported"] == []
    assert result["same_state"]  # every weight and buffer bitwise
    # The logits agree to float rounding: the CPU matmul kernels may pick another blocking for other alignments.
    assert result["max_diff"] <= 1e-6
    without_score = lambda batch: [[{k: v for k, v in e.items() if k != "score"} for e in ex] for ex in batch]  # noqa: E731
    assert without_score(result["entities"]) == without_score(entities)
    scores = lambda batch: [e["score"] for ex in batch for e in ex]  # noqa: E731
    assert scores(result["entities"]) == pytest.approx(scores(entities), abs=1e-6)
    assert entities and all(TEXT[e["start"] : e["end"]] == e["word"] for e in entities[0])
