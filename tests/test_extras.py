"""Every optional extra is optional: the entry points run where gradio, selenium, scikit-learn, matplotlib,
tensorboard (and the test-only packages) are not installed, as on the machine of a user who ran only the README's
first command.

Each check runs in a fresh process whose environment (`processes.child_env`) hides those modules, their import and
their distribution metadata alike. Every other test that starts one of the package's commands does so in the same
environment: `run_mner.py` on tiny settings in test_run_mner.py (end to end, resume, DDP, datasets), the batch
command in test_prediction.py, the endpoint handler in test_serving.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processes import OPTIONAL_MODULES, PROJECT_MODULES, child_env, run, run_python

pytestmark = pytest.mark.slow  # each check starts a process

TEXT = "Kevin Durant arrives in Oklahoma City"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "tweet.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_the_hidden_extras_cannot_be_found(tmp_path):
    """The check can fail: in the children, each extra is neither importable nor installed as a distribution."""
    output = run_python(
        f"""
        import importlib, importlib.metadata, importlib.util, json
        found = {{}}
        for module, distribution in {OPTIONAL_MODULES!r}.items():
            try:
                importlib.import_module(module)
                imported = True
            except ModuleNotFoundError:
                imported = False
            try:
                importlib.metadata.version(distribution)
                installed = True
            except importlib.metadata.PackageNotFoundError:
                installed = False
            found[module] = [imported, installed, importlib.util.find_spec(module) is not None]
        print(json.dumps(found))
        """,
        tmp_path,
        hide_project=False,
    )
    assert json.loads(output) == {module: [False, False, False] for module in OPTIONAL_MODULES}


def test_every_module_of_the_package_imports_without_the_extras(tmp_path):
    code = "import " + ", ".join(PROJECT_MODULES) + "\nprint('imported')"
    assert run_python(code, tmp_path, hide_project=False).strip() == "imported"


def test_auto_classes_and_pipeline_load_without_the_extras(saved_folder, image_file, tmp_path):
    """A Hub user's machine: no promptmner package and no extras; the model, processor and pipeline come through
    `trust_remote_code`."""
    output = run_python(
        f"""
        import json
        from transformers import AutoModel, AutoProcessor, pipeline
        processor = AutoProcessor.from_pretrained({str(saved_folder)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(saved_folder)!r}, trust_remote_code=True).eval()
        inputs = processor(text={TEXT!r}, images={str(image_file)!r})
        entities = processor.post_process(model(**inputs), inputs)
        ner = pipeline("multimodal-ner", model={str(saved_folder)!r}, trust_remote_code=True)
        print(json.dumps([entities[0], ner({{"text": {TEXT!r}, "image": {str(image_file)!r}}})]))
        """,
        tmp_path,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    from_classes, from_pipeline = json.loads(output.strip().splitlines()[-1])
    assert from_classes and [e["word"] for e in from_classes] == [e["word"] for e in from_pipeline]


def test_endpoint_handler_without_the_extras(saved_folder, tmp_path):
    output = run_python(
        f"""
        import json, runpy
        handler = runpy.run_path({str(saved_folder / "handler.py")!r})
        endpoint = handler["EndpointHandler"]({str(saved_folder)!r})
        print(json.dumps(endpoint({{"inputs": [{TEXT!r}]}})))
        """,
        tmp_path,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    assert json.loads(output.strip().splitlines()[-1])[0]


def test_console_scripts_without_the_extras(saved_folder, image_file, tmp_path):
    """`promptmner-predict` and `promptmner-explain`, the installed console scripts."""
    scripts = Path(sys.executable).parent
    source = tmp_path / "posts.jsonl"
    source.write_text(json.dumps({"id": 1, "text": TEXT, "image": str(image_file)}) + "\n")
    target = tmp_path / "entities.jsonl"
    predict = [str(scripts / "promptmner-predict"), "--model", str(saved_folder), "--input", str(source), "--output",
               str(target)]  # fmt: skip
    run(predict, tmp_path, env=child_env())
    record = json.loads(target.read_text())
    assert record["line"] == 1 and record["id"] == 1 and "entities" in record
    explain = [str(scripts / "promptmner-explain"), "--model", str(saved_folder), "--image", str(image_file), "--json"]
    explained = json.loads(run(explain, tmp_path, env=child_env()).stdout)
    assert len(explained[str(image_file)]) == 5  # the tiny model's 5 prompts, ranked
