"""One run per output: the main process of a run holds an exclusive `flock` on `<output>.lock` (beside the output
file or folder), naming its process. A second run writing the same output is refused at its start, naming the
first one's pid, not crashed at its end; the processes of one run may all check. The lock belongs to the open
file, so the operating system releases it when its process ends, killed or not: a lock file left by a killed run
(its pid gone) blocks nothing, and the next run takes it over. Used by `promptmner-predict` (`--output`) and
`run_mner.py` (`--output_dir`)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: outputs are not locked
    fcntl = None

LOCK_SUFFIX = ".lock"


class RefusedError(ValueError):
    """The run cannot start, and nothing was done: its output is locked by another run, or (prediction) `--resume`
    finds a partial output that does not belong to this input and these settings. Commands exit with status 2,
    naming why."""


def lock_path(output: Path) -> Path:
    """`<output>.lock`, beside the output (a file or a folder; `.` and `out/` name their folder)."""
    output = Path(os.path.abspath(output))
    return output.with_name(output.name + LOCK_SUFFIX)


class OutputLock:
    """`<output>.lock`, held by the main process of the run that writes `<output>` (given as `option`, the argument
    that error messages name)."""

    def __init__(self, output: Path, option: str):
        self.output, self.option, self.path, self.handle = output, option, lock_path(output), None

    def acquire(self) -> OutputLock:
        if fcntl is None:  # not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        attempts = 0
        while self.handle is None:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                attempts += 1
                if holder or attempts >= 20:  # an empty file: a run starting, or another's check_not_locked
                    raise self.busy(holder) from None
                time.sleep(0.05)
                continue
            if self._same_file(handle):
                self.handle = handle
            else:  # a run that just ended removed the file we locked: lock the new one
                handle.close()
        self.handle.seek(0)
        self.handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        self.handle.flush()
        return self

    def busy(self, holder: str) -> RefusedError:
        return RefusedError(
            f"{self.option} {self.output} is being written by another run ({holder or 'a process that is starting'}; "
            f"lock file {self.path}): wait for it to end, or write another {self.option}"
        )

    def _same_file(self, handle) -> bool:
        try:
            return os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
        except FileNotFoundError:
            return False

    def __enter__(self) -> OutputLock:
        return self if self.handle is not None else self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go."""
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()
            self.handle = None


def check_not_locked(output: Path, option: str) -> None:
    """A [`RefusedError`] naming the other run when a live run holds `<output>.lock` (a shared lock, taken and given
    back at once, tells: it conflicts with that run's exclusive one only, so the processes of one run may all ask)."""
    path = lock_path(output)
    if fcntl is None or not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLock(output, option).busy(handle.read().strip()) from None
