"""Processes as users start them, for the tests: one home for the child environment, the commands and the servers.

- [`child_env`]: the environment of every child process: offline, unbuffered, `threads` torch threads, no `HF_*`,
  `ACCELERATE_*` or `TRANSFORMERS_*` settings of the developer's shell, and modules hidden as if not installed:
  by default the optional extras (`OPTIONAL_MODULES`: what the README's commands do not install for training,
  prediction, serving or loading), so that an entry point importing one outside its place fails a test, not a
  user; with `hide_project=True` also this project's own modules (`PROJECT_MODULES`, read from setup.cfg), as on
  a Hub user's machine. The hiding is `hidden_modules/sitecustomize.py`, which every child runs first.
- [`run`], [`run_python`], [`launch_run_mner`]: a command, a Python snippet, `accelerate launch run_mner.py`.
- [`start`], [`wait_for_server`], [`stop`]: servers on 127.0.0.1.
- [`offline_hub_cache`]: a saved folder laid out as a Hub download, so that a repo id loads offline.

No wall-clock limit on anything that can merely be slow: a test fails on a wrong result, not on a busy machine.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HIDING_FOLDER = Path(__file__).resolve().parent / "hidden_modules"


def project_modules() -> tuple[str, ...]:
    """The package's top-level modules, as setup.cfg declares them (`py_modules`)."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    return tuple(config["options"]["py_modules"].split())


PROJECT_MODULES = project_modules()
# Module -> distribution of the optional extras: the Space (gradio), the browser test (selenium), the benchmarks'
# probe and figures (scikit-learn, matplotlib), tracking (tensorboard) and the test-only packages.
OPTIONAL_MODULES = {
    "gradio": "gradio", "selenium": "selenium", "sklearn": "scikit-learn", "matplotlib": "matplotlib",
    "tensorboard": "tensorboard", "seqeval": "seqeval", "hypothesis": "hypothesis",
}  # fmt: skip


def child_env(threads: int = 1, hide_extras: bool = True, hide_project: bool = False, **extra: str) -> dict:
    """The environment of a child process (see the module docstring); `extra` variables override the defaults."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "ACCELERATE_", "TRANSFORMERS_"))}
    path = [str(HIDING_FOLDER)] + ([] if hide_project else [str(REPO_ROOT)]) + [env.get("PYTHONPATH", "")]
    modules = (list(OPTIONAL_MODULES) if hide_extras else []) + (list(PROJECT_MODULES) if hide_project else [])
    distributions = (list(OPTIONAL_MODULES.values()) if hide_extras else []) + (["promptmner"] if hide_project else [])
    env.update(
        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(entry for entry in path if entry),
        PROMPTMNER_HIDDEN_MODULES=",".join(modules), PROMPTMNER_HIDDEN_DISTRIBUTIONS=",".join(distributions),
        GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost",
    )  # fmt: skip
    env.update(extra)
    return env


def run(command: list[str], cwd: Path, expect: int | None = 0, env: dict | None = None,
        **kwargs) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `command` to its end (text output captured); unless `expect` is None, its exit status must be `expect`."""
    done = subprocess.run(command, cwd=cwd, env=child_env() if env is None else env, capture_output=True, text=True,
                          **kwargs)  # fmt: skip
    if expect is not None:
        assert done.returncode == expect, (
            f"{' '.join(map(str, command))}\nexit status {done.returncode}, expected {expect}\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        )
    return done


def run_python(code: str, cwd: Path, hide_project: bool = True, **env: str) -> str:
    """Run a Python snippet in a fresh interpreter in `cwd` (by default without this project, as on a Hub user's
    machine, so whatever it loads of ours comes through `trust_remote_code`); return its stdout."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "fresh_process_script.py"
        script.write_text(textwrap.dedent(code))
        return run([sys.executable, str(script)], cwd, env=child_env(hide_project=hide_project, **env)).stdout


def launch_run_mner(args: list[str], cwd: Path, num_processes: int = 1, threads: int = 1, expect: int | None = 0,
                    **env: str) -> subprocess.CompletedProcess:  # fmt: skip
    """`accelerate launch run_mner.py ...` on the CPU, as a user runs it, with `threads` torch threads per process
    (1 by default, so that two-process runs and parallel test jobs do not oversubscribe the cores)."""
    # On a CPU-only machine `--multi_gpu` starts torchrun processes that run_mner joins as gloo DDP.
    mode = "--multi_gpu" if num_processes > 1 else "--cpu"
    command = [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_processes", str(num_processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--num_cpu_threads_per_process", str(threads), str(REPO_ROOT / "run_mner.py"), *args]
    return run(command, cwd, expect=expect, env=child_env(threads=threads, **env))


def start(command: list[str], cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a server process in the background, its output in `log`."""
    with log.open("w") as handle:
        return subprocess.Popen(command, cwd=cwd, env=child_env() if env is None else env, stdout=handle,
                                stderr=subprocess.STDOUT)  # fmt: skip


def wait_for_server(process: subprocess.Popen, address: str, log: Path) -> None:
    """Wait until the server's log names `address`; fail as soon as the process exits. A server that never starts
    is the failure waited for here, so there is a limit, but a generous one (30 minutes)."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        if address in log.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"the server did not start in 30 minutes:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait()


def offline_hub_cache(folder: Path, cache: Path, repo_id: str, revision: str = "0123456789abcdef" * 2 + "01234567"):
    """Lay out a saved folder as a Hub download of `repo_id` in the cache layout huggingface_hub reads offline."""
    repo_cache = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo_cache / "snapshots" / revision)
    (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
    (repo_cache / "refs" / "main").write_text(revision)
    return repo_cache
