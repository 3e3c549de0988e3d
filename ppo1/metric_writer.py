"""Metric rows written to MLflow by a second process, on the core that training leaves idle.

MLflow's SQLite store spends ~0.17 ms a metric row in its ORM: ~1.2 s of a 100k-step CartPole
run when the trainer writes them itself. A thread cannot hide that (SQLAlchemy holds the GIL
against the training thread's many short torch calls) and a forked process costs the trainer
copy-on-write faults; `python -m ppo1.metric_writer URI RUN_ID` shares no memory with it.

Protocol: the trainer sends one JSON line a batch, `[number, [[key, value, timestamp, step],
...]]`, and an `end` line last; the writer prints `ready` once it has the run, then each
batch's number once the batch is in the store. What the writer has not acknowledged when the
trainer closes it, the trainer writes itself (a SQL store drops rows it already holds), so no
row depends on this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# (key, value, timestamp in ms, step): one metric row, as MLflow stores it.
Row = tuple[str, float, int, int]

# MLflow rejects larger batches (its documented log_batch limit).
MAX_METRICS_PER_BATCH = 1000
# A backlog of a few batches drains in well under a second; past this the writer is stuck
# (a locked store) and the trainer writes the rest itself.
_CLOSE_TIMEOUT_S = 60.0
# The rows held until the writer is ready (5 s and more of CartPole metrics) are ~100 kB of
# JSON: a larger pipe keeps `submit` from waiting for the writer to read them (Linux's default
# is 64 kB; elsewhere the default stays).
_PIPE_BYTES = 1 << 20
# The trainer's last line: everything was sent.
_END = b"end\n"


def write_rows(client: MlflowClient, run_id: str, rows: list[Row]) -> None:
    """Rows into the run with as few `log_batch` calls as MLflow allows."""
    from mlflow.entities import Metric

    metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in rows]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])


class MetricWriter:
    """The trainer's end of a writer process for one run; `close` returns what it did not write.

    Batches submitted before the writer is ready (its `import mlflow` takes ~2 s) wait in the
    trainer; nothing here blocks training except a pipe write.
    """

    def __init__(self, uri: str, run_id: str) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ppo1.metric_writer", uri, run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
            # Out of the terminal's process group: Ctrl-C stops the trainer, which then lets
            # the writer finish what it was sent instead of losing it mid-batch.
            start_new_session=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin: IO[bytes] = self._proc.stdin
        self._stdout: IO[bytes] = self._proc.stdout
        os.set_blocking(self._stdout.fileno(), False)
        with contextlib.suppress(AttributeError, OSError):
            import fcntl

            fcntl.fcntl(self._stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.ready = False
        self._alive = True
        self._partial = b""
        self._waiting: list[list[Row]] = []
        self._sent: dict[int, list[Row]] = {}
        self._number = 0

    def submit(self, rows: list[Row]) -> None:
        """Hand rows to the writer, or keep them until it is ready."""
        if rows:
            self._waiting.append(rows)
        self._read_replies()
        if self.ready and self._alive:
            self._send_waiting()

    def close(self) -> list[Row]:
        """Let the writer finish what it was sent and stop it; the rows it did not write."""
        self._read_replies()
        if self.ready and self._alive:
            self._send_waiting()
            # Said, not only signalled by closing the pipe: a process forked from the trainer
            # since (a user's multiprocessing) holds its write end and would keep it open.
            with contextlib.suppress(BrokenPipeError):
                self._stdin.write(_END)
                self._stdin.close()
            try:
                self._proc.wait(_CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        else:
            # Still importing mlflow: nothing was sent, and the trainer writes faster itself.
            self._proc.kill()
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()
        self._proc.wait()
        os.set_blocking(self._stdout.fileno(), True)
        self._read_replies()
        self._stdout.close()
        left = [row for batch in self._sent.values() for row in batch]
        return left + [row for batch in self._waiting for row in batch]

    def _send_waiting(self) -> None:
        while self._waiting and self._alive:
            rows = self._waiting.pop(0)
            self._sent[self._number] = rows  # until acknowledged: close returns it otherwise
            line = json.dumps([self._number, rows]).encode() + b"\n"
            self._number += 1
            try:
                self._stdin.write(line)
                self._stdin.flush()
            except BrokenPipeError:
                self._alive = False

    def _read_replies(self) -> None:
        """Take in `ready` and acknowledgements, without waiting unless the writer has exited."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break  # nothing more for now
            if not chunk:
                self._alive = False  # end of file: the writer has exited
                break
            chunks.append(chunk)
        *lines, self._partial = (self._partial + b"".join(chunks)).split(b"\n")
        for line in lines:
            if line == b"ready":
                self.ready = True
            elif line.isdigit():
                self._sent.pop(int(line), None)


def main(argv: list[str]) -> int:
    """The writer: batches from stdin into the run, each acknowledged on stdout once stored."""
    uri, run_id = argv
    # Replies go to the original stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        client.get_run(run_id)  # opens the store: "ready" means the next write is quick
        print("ready", file=replies, flush=True)
        for line in sys.stdin.buffer:
            if line == _END:
                break
            number, rows = json.loads(line)
            write_rows(client, run_id, [tuple(row) for row in rows])
            print(number, file=replies, flush=True)
    except Exception as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(
            f"ppo1.metric_writer: {message}; the trainer writes the rest",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    # Everything is stored and said: skip the interpreter's teardown of mlflow and SQLAlchemy,
    # ~0.8 s the trainer would otherwise wait for at the end of every run.
    os._exit(main(sys.argv[1:]))
