"""The second process that makes a run's MLflow writes (ops.py) while training goes on.

A fresh training process that talks to MLflow itself pays `import mlflow` (~2 s), the first
open of a SQL store (~1.5 s of SQLAlchemy and alembic) and every write's round trip, all on
the training core. `python -m ppo1.tracking.writer URI` pays them on the core
training leaves idle: it creates the run (or attaches to one this process created) and applies the
operations the trainer sends while training goes on. A thread could not hide that work
(SQLAlchemy holds the GIL against the training thread's many short torch calls), and a forked
process would cost the trainer copy-on-write faults; this one shares no memory with it.

Protocol, JSON lines: the trainer's first line names the run, `["create", experiment, run_name,
tags, start_ms]` or `["attach", run_id]`; then one line an operation, `[number, *op]`; and `end`
last. The writer replies `["ready", run_id, run_name, experiment_id]` once it has the run, then
`[number]` once an operation is done. What it has not done when the trainer closes it, the
trainer does itself: every operation may be repeated (a SQL store drops metric rows it already
holds; params, tags, artifacts and the status are the same when written twice), so nothing
depends on this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ppo1.tracking.ops import ORPHANED, Op, apply, create_run, create_whole, quiet_mlflow

if TYPE_CHECKING:
    pass


# A backlog of a few batches drains in well under a second and a cold `import mlflow` takes
# seconds; past this the writer is stuck (a locked store) and the trainer does the rest.
_CLOSE_TIMEOUT_S = 60.0
# The rows sent while the writer imports mlflow (5 s and more of CartPole metrics) are ~100 kB
# of JSON: a larger pipe holds them instead of the trainer (Linux's default is 64 kB).
_PIPE_BYTES = 1 << 20
# The trainer's last line: everything was sent.
_END = b"end\n"


def _line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


class RunWriter:
    """The trainer's end of a writer process for one run; `close` returns what it left undone.

    Nothing here blocks training: operations go into the pipe as far as it takes them, the
    rest waits in this object, and replies are read without waiting.
    """

    def __init__(self, uri: str, run: list[Any]) -> None:
        """`run`: ["create", experiment, run_name, tags, start_ms] or ["attach", run_id]."""
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ppo1.tracking.writer", uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
            # Out of the terminal's process group: Ctrl-C stops the trainer, which then lets
            # the writer finish what it was sent instead of losing it mid-operation.
            start_new_session=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin: IO[bytes] | None = self._proc.stdin
        self._stdout: IO[bytes] = self._proc.stdout
        for stream in (self._stdin, self._stdout):
            os.set_blocking(stream.fileno(), False)
        with contextlib.suppress(AttributeError, OSError):
            import fcntl

            fcntl.fcntl(self._stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.creates_run = run[0] == "create"
        self.run: tuple[str, str] | None = None  # (id, name), once the writer has the run
        self.experiment_id: str | None = None  # the run's, as the UI's links need it
        self.alive = True  # until its replies end: it has exited
        self._out = bytearray(_line(run))
        self._partial = b""
        self._ending = False
        self._undone: dict[int, Op] = {}
        self._number = 0
        self._pump()

    @property
    def ready(self) -> bool:
        return self.run is not None

    def submit(self, op: Op) -> None:
        """Queue one operation for the writer; kept until it says the operation is done."""
        self._undone[self._number] = op
        self._out += _line([self._number, *op])
        self._number += 1
        self._pump()

    def wait_ready(self) -> bool:
        """Wait until the writer has the run (True) or has exited or hung (False)."""
        self._wait(lambda: self.ready or not self.alive)
        return self.ready

    def close(self, only_if_ready: bool = False) -> list[Op]:
        """Let the writer finish what it was sent and stop it; the operations it did not do.

        `only_if_ready`: a writer still importing mlflow is stopped at once (the caller, with a
        client of its own, writes faster itself).
        """
        self._pump()
        if self.alive and (self.ready or not only_if_ready):
            # Said, not only signalled by closing the pipe: a process forked from the trainer
            # since (a user's multiprocessing) holds its write end and would keep it open.
            self._out += _END
            self._ending = True
            self._wait(lambda: not self.alive)
        if self.alive:
            self._proc.kill()
        self._proc.wait()
        os.set_blocking(self._stdout.fileno(), True)
        self._read_replies()
        self._stdout.close()
        self._close_stdin()
        return list(self._undone.values())

    def _wait(self, done: Callable[[], bool]) -> None:
        """Pump until `done()`, for at most _CLOSE_TIMEOUT_S."""
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        while not done() and (left := deadline - time.monotonic()) > 0:
            writable = [self._stdin] if self._stdin is not None and self._out else []
            select.select([self._stdout], writable, [], left)
            self._pump()

    def _pump(self) -> None:
        self._read_replies()
        self._write()

    def _write(self) -> None:
        """Into the pipe as much of the queue as it takes now."""
        while self._out and self._stdin is not None:
            try:
                written = os.write(self._stdin.fileno(), self._out[: 1 << 16])
            except BlockingIOError:
                return  # the pipe is full: the rest goes at a later pump
            except BrokenPipeError:
                self._out.clear()  # the writer has exited: what is queued stays undone
                break
            del self._out[:written]
        if self._ending and not self._out:
            self._close_stdin()  # all sent, the end line last

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()
            self._stdin = None

    def _read_replies(self) -> None:
        """Take in `ready` and what is done, without waiting."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break  # nothing more for now
            if not chunk:
                self.alive = False  # end of file: the writer has exited
                break
            chunks.append(chunk)
        *lines, self._partial = (self._partial + b"".join(chunks)).split(b"\n")
        for line in lines:
            match json.loads(line):
                case ["ready", str(run_id), str(run_name), str(experiment_id)]:
                    self.run, self.experiment_id = (run_id, run_name), experiment_id
                case [int(number)]:
                    self._undone.pop(number, None)


def main(argv: list[str]) -> int:
    """The writer: the run, then the operations from stdin, each acknowledged once done."""
    (uri,) = argv
    # Replies go to the original stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(value: object) -> None:
        # A trainer that died reads no more; its end of input says so, and the run still ends.
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps(value), file=replies, flush=True)

    run = json.loads(sys.stdin.buffer.readline())
    try:
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        # A few seconds on a server that stopped answering, not MLflow's ~4 minutes of retries:
        # the trainer then checks the server itself, and takes the writes over or reports it.
        os.environ.setdefault(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, "2")
        create_whole(uri)
        client = MlflowClient(uri)
        if run[0] == "create":
            run_id, run_name, experiment_id = create_run(client, *run[1:])
        else:
            run_id = run[1]
            info = client.get_run(run_id).info  # opens the store
            run_name, experiment_id = info.run_name, info.experiment_id
        reply(["ready", run_id, run_name, experiment_id])
        for line in sys.stdin.buffer:
            if line == _END:
                return 0
            number, *op = json.loads(line)
            apply(client, run_id, tuple(op))
            reply([number])
        # End of input without the end line: the trainer died without a word.
        apply(client, run_id, ("tags", {"ppo1.error": ORPHANED}))
        apply(client, run_id, ("terminate", "FAILED"))
        return 1
    except Exception:
        # Silently: the trainer redoes what is left with its own client, and reports the
        # store's error in its one line if that fails too.
        return 1


if __name__ == "__main__":
    # Everything is stored and said: skip the interpreter's teardown of mlflow and SQLAlchemy,
    # ~0.8 s the trainer would otherwise wait for at the end of every run.
    os._exit(main(sys.argv[1:]))
