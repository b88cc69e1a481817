"""Run Python code in a fresh process that cannot import this project, as a Hub user's machine would be.

The project is pip-installed in development and CI, so leaving it off `PYTHONPATH` is not enough: the child
process installs an import hook that refuses the project's top-level modules. Whatever it loads of ours must
then come through transformers' remote-code mechanism (`trust_remote_code=True`).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT_MODULES = (
    "configuration_promptmner",
    "modeling_promptmner",
    "processing_promptmner",
    "span_utils",
    "clip_promptmner",
    "tweet_words",
    "word_alignment",
    "mner_data",
    "mner_demo",
    "mner_training",
    "run_mner",
    "pipeline_promptmner",
    "predict_mner",
    "mner_prediction",
    "prompt_vocabularies",
    "prompt_vocabulary_kb",
    "explain_prompts",
    "mner_serving",
    "promptmner_handler",
    "promptmner_space",
)

_BLOCKER = f"""
import importlib.abc, sys
class _BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in {PROJECT_MODULES!r}:
            raise ImportError(f"{{name}} is blocked: a Hub user does not have the promptmner package")
        return None
sys.meta_path.insert(0, _BlockProject())
"""


def run_without_project(code: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run `code` in a fresh interpreter in `cwd` with the project blocked; return stdout, fail loudly otherwise."""
    script = Path(cwd) / "fresh_process_script.py"
    script.write_text(_BLOCKER + textwrap.dedent(code))
    child_env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"fresh process failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def offline_hub_cache(folder: Path, cache: Path, repo_id: str, revision: str = "0123456789abcdef" * 2 + "01234567"):
    """Lay out a saved folder as a Hub download of `repo_id` in the cache layout huggingface_hub reads offline."""
    import shutil

    repo_cache = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo_cache / "snapshots" / revision)
    (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
    (repo_cache / "refs" / "main").write_text(revision)
    return repo_cache
