"""The documentation names only what exists: every Python name in a code block (imports and attribute chains), every
`Name.attribute` of the package in the prose, every option of the package's commands, every relative link."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from processes import PROJECT_MODULES, REPO_ROOT

DOCUMENTS = sorted(
    [REPO_ROOT / "README.md", REPO_ROOT / "CONTRIBUTING.md", REPO_ROOT / "BENCHMARKS.md", *REPO_ROOT.glob("docs/*.md")]
)
FILE_EXTENSIONS = {"py", "json", "jsonl", "md", "txt", "conll", "safetensors", "png", "jpg", "cfg", "partial", "old"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def code_blocks(document: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(document.read_text(encoding="utf-8")) if lang == language]


def prose(document: Path) -> str:
    return FENCE.sub("", document.read_text(encoding="utf-8"))


def resolve(root: object, attributes: list[str], where: str) -> None:
    value = root
    for depth, name in enumerate(attributes):
        assert hasattr(value, name), f"{where}: {'.'.join(attributes[: depth + 1])} does not exist"
        value = getattr(value, name)


def attribute_chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    """`a.b.c` -> `("a", ["b", "c"])`; None when the chain starts at anything but a name (a call's result...)."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return (node.id, names[::-1]) if isinstance(node, ast.Name) else None


def check_python(code: str, where: str) -> None:
    """Imported modules and names exist; attribute chains on them resolve."""
    bound = {}
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = importlib.import_module(alias.name)
                bound[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
                assert module is not None
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                resolve(module, [alias.name], f"{where}: from {node.module} import")
                bound[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain = attribute_chain(node)
            if chain is not None and chain[0] in bound:
                resolve(bound[chain[0]], chain[1], f"{where}: {chain[0]}")


def package_names() -> dict[str, object]:
    """The package's modules and the public classes and functions they define, by name (not a function named like
    another installed package: `evaluate.load` names the `evaluate` package, not `mner_evaluation.evaluate`)."""
    names = {}
    for module_name in PROJECT_MODULES:
        module = importlib.import_module(module_name)
        names[module_name] = module
        for name, value in vars(module).items():
            if not name.startswith("_") and getattr(value, "__module__", None) == module_name:
                if name in PROJECT_MODULES or importlib.util.find_spec(name) is None:
                    names[name] = value
    return names


def command_options(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def commands(document: Path) -> list[list[str]]:
    """The shell commands of a document's bash blocks, continuation lines joined, comments dropped."""
    found = []
    for block in code_blocks(document, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(shlex.split(line.replace("...", "")))
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_python_code_blocks_name_what_exists(document):
    for index, code in enumerate(code_blocks(document, "python")):
        check_python(code, f"{document.name} python block {index}")


@pytest.mark.parametrize("document", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_package_names_in_the_prose_exist(document):
    names = package_names()
    for span in re.findall(r"`([^`\n]+)`", prose(document)):
        for match in re.finditer(r"\b([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)", span):
            root, attributes = match.group(1), match.group(2).strip(".").split(".")
            if root in names and attributes[-1] not in FILE_EXTENSIONS:
                resolve(names[root], attributes, f"{document.name}: `{span}`")


def example_module(name: str):
    """A script of `examples/` as a module (they are not importable by name)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("document", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_commands_use_options_that_exist(document):
    import explain_prompts
    import mner_hub_dataset
    import mner_metric
    import predict_mner
    from mner_arguments import argument_parser

    parsers = {"run_mner.py": argument_parser(), "promptmner-predict": predict_mner.build_parser(),
               "predict_mner": predict_mner.build_parser(), "promptmner-explain": explain_prompts.build_parser(),
               "mner_metric": mner_metric.build_parser(), "mner_hub_dataset": mner_hub_dataset.build_parser(),
               "train_with_trainer.py": example_module("train_with_trainer").build_parser()}
    for words in commands(document):
        program = next((word for word in words if Path(word).name in parsers), None)
        if program is None:
            continue
        known = command_options(parsers[Path(program).name])
        options = [word.split("=")[0] for word in words[words.index(program) + 1 :] if word.startswith("--")]
        unknown = [option for option in options if option not in known]
        assert not unknown, f"{document.name}: {' '.join(words)}: {unknown} are not options of {program}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_relative_links_lead_to_files(document):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text(encoding="utf-8")):
        if not re.match(r"\w+://", target):
            assert (document.parent / target).exists(), f"{document.name} links to {target}, which does not exist"


def test_the_checks_catch_a_removed_api(tmp_path):
    """The checks can fail: a block calling an API that was removed, an unknown option, a dead link."""
    with pytest.raises(AssertionError, match="from_backbone does not exist"):
        check_python("from modeling_promptmner import PromptMNERForSpanNER\nPromptMNERForSpanNER.from_backbone(x)", "x")
    with pytest.raises(ModuleNotFoundError):
        check_python("import promptmner_training_v0", "x")
    with pytest.raises(AssertionError, match="does not exist"):
        resolve(package_names()["PromptMNERProcessor"], ["encode_images"], "x")
    page = tmp_path / "page.md"
    page.write_text("```bash\naccelerate launch run_mner.py --learning_rates 1\n```\n[a](missing.md)\n")
    assert commands(page) == [["accelerate", "launch", "run_mner.py", "--learning_rates", "1"]]
    with pytest.raises(AssertionError, match="learning_rates"):
        test_commands_use_options_that_exist(page)
    with pytest.raises(AssertionError, match="missing.md"):
        test_relative_links_lead_to_files(page)
