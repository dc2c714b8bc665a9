"""A second process that parses write bodies (`flame.clmc.ingest`): the parser's numpy and
Arrow calls hold the interpreter lock much of the time, so two bodies parsed in one process
take turns on one core; one parsed here runs on the other core meanwhile.

The CLMC starts them (`python -m flame.clmc._parseproc`, stdin/stdout pipes; `ParsePool`: one
per CPU) at the first body worth sending (`MIN_BYTES`), and a write uses one only when it is
free: the request thread parses locally otherwise, so a process never makes a write wait. It parses without the
stored field types (`parse(known=None)`); ingest parses again locally when the result could
differ (a type conflict, see `Ingest._parse`). Anything going wrong (the process dead, slow,
or answering nonsense) is logged, the process stopped (started again after `RESTART_S`) and
the body parsed locally: a write never fails because of it.

Frames both ways: `[u64 length][pickle]`; the request is a header frame then the body frame,
the answer the result's batches as Arrow IPC streams with their line numbers, the errors and
the drops. The pipes are private to this parent and child (pickle is trusted here).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from flame.clmc.errors import LineProtocolError
from flame.clmc.lineproto import Dropped, MeasurementBatch, ParseResult, parse

__all__ = ["MIN_BYTES", "ParsePool", "ParseProcess", "process_count"]

log = logging.getLogger("flame.clmc.ingest")

MIN_BYTES = 128 << 10  # smaller bodies cost less to parse than to send
RESTART_S = 30.0  # after a failure, the process is started again this much later at the soonest
REPLY_TIMEOUT_S = 120.0  # a 25 MB body of escaped lines takes seconds through the scanner
NICE = 10  # the child's niceness over the server's (see `main`)
PIPE_BYTES = 1 << 20
_LEN = struct.Struct("<Q")
_READY = b"ready"


def _widen_pipe(fd: int) -> None:
    """Make a pipe hold a whole typical body (or answer): 64 KiB, Linux's default, takes ~15
    round trips between the processes per megabyte (1.7 ms a body here; 0.5 ms at 1 MiB)."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(PIPE_BYTES, limit))
    except (OSError, ValueError, AttributeError):
        pass  # not Linux, or not allowed: the default pipe works, a little slower


def _write_frame(fd: int, data: bytes | bytearray) -> None:
    for part in (_LEN.pack(len(data)), data):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError("the parse process closed its pipe")
        got += k
    return buf


def _read_frame(fd: int) -> bytearray:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size))
    return _read_exact(fd, n)


# -- the child ------------------------------------------------------------------------------------


def _encode(result: ParseResult) -> bytes:
    batches = []
    for b in result.batches:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, b.table.schema) as writer:
            writer.write_table(b.table)
        batches.append((b.measurement, sink.getvalue().to_pybytes(), b.lines))
    return pickle.dumps(
        (
            batches,
            [(e.line_no, e.line, e.reason) for e in result.errors],
            [(d.line, d.message) for d in result.dropped],
            result.beyond_retention,
        ),
        protocol=5,
    )


def _decode(payload: bytearray) -> ParseResult:
    batches, errors, dropped, beyond = pickle.loads(payload)  # our own child's
    result = ParseResult()
    for m, ipc, lines in batches:
        table = pa.ipc.open_stream(pa.py_buffer(ipc)).read_all()
        result.batches.append(MeasurementBatch(m, table, np.asarray(lines)))
    result.errors = [LineProtocolError(n, line, reason) for n, line, reason in errors]
    result.dropped = [Dropped(n, message) for n, message in dropped]
    result.beyond_retention = list(beyond)
    return result


def _serve(fd_in: int, fd_out: int) -> None:
    _write_frame(fd_out, _READY)
    while True:
        try:
            head = _read_frame(fd_in)
        except EOFError:
            return
        body = bytes(_read_frame(fd_in))
        precision, now_ns, max_fields, max_tags, cutoff = pickle.loads(head)
        result = parse(
            body, precision, now_ns, None, max_fields=max_fields, max_tags=max_tags, cutoff=cutoff
        )
        _write_frame(fd_out, _encode(result))


# -- the parent -----------------------------------------------------------------------------------


class ParseProcess:
    """The parent's handle; `parse()` returns None when the process is busy, starting or
    failed (the caller parses locally then). Thread-safe; `close()` stops the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._failed_at = -RESTART_S
        self._closed = False
        self.used = 0  # bodies parsed there (for tests and /health)
        self.failures = 0

    def parse(
        self,
        body: bytes,
        precision: str | None,
        now_ns: int,
        max_fields: int,
        max_tags: int,
        cutoff: int | None,
    ) -> ParseResult | None:
        if not self._lock.acquire(blocking=False):
            return None  # busy with another body: parse this one locally meanwhile
        try:
            proc = self._available()
            if proc is None:
                return None
            assert proc.stdin is not None
            assert proc.stdout is not None
            try:
                head = pickle.dumps((precision, now_ns, max_fields, max_tags, cutoff))
                _write_frame(proc.stdin.fileno(), head)
                _write_frame(proc.stdin.fileno(), body)
                ready, _, _ = select.select([proc.stdout.fileno()], [], [], REPLY_TIMEOUT_S)
                if not ready:
                    raise TimeoutError(f"no answer in {REPLY_TIMEOUT_S:.0f} s")
                result = _decode(_read_frame(proc.stdout.fileno()))
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
                return None
            self.used += 1
            return result
        finally:
            self._lock.release()

    def _available(self) -> subprocess.Popen[bytes] | None:
        """The process if it is ready; starts it if it is not running (not waiting for it)."""
        if self._closed:
            return None
        if self._proc is None:
            if time.monotonic() - self._failed_at < RESTART_S:
                return None
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "flame.clmc._parseproc"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            self._ready = False
            for pipe in (self._proc.stdin, self._proc.stdout):
                assert pipe is not None
                _widen_pipe(pipe.fileno())
        if not self._ready:
            assert self._proc.stdout is not None
            fd = self._proc.stdout.fileno()
            if not select.select([fd], [], [], 0)[0]:
                return None  # still importing
            try:
                self._ready = _read_frame(fd) == _READY
            except (OSError, EOFError) as exc:
                self._fail(f"did not start: {exc}")
                return None
            if not self._ready:
                self._fail("did not start: unexpected greeting")
                return None
        return self._proc

    def _fail(self, why: str) -> None:
        self.failures += 1
        log.error("the parse process failed (%s); parsing in the server process meanwhile", why)
        self._failed_at = time.monotonic()
        self._stop()

    def _stop(self) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()  # the child's loop ends at the end of its input
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stats(self) -> dict[str, object]:
        return {"pid": self.pid, "bodies": self.used, "failures": self.failures}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop()


class ParsePool:
    """Several parse processes (`process_count`): a body goes to the first one free."""

    def __init__(self, count: int) -> None:
        self.processes = [ParseProcess() for _ in range(count)]

    def parse(
        self,
        body: bytes,
        precision: str | None,
        now_ns: int,
        max_fields: int,
        max_tags: int,
        cutoff: int | None,
    ) -> ParseResult | None:
        """The result of the first process free, or None (every one busy, starting or failed:
        the caller parses locally). A body one process failed on (a hang, say) is not tried
        on the next one: the caller parses it, so it never costs a timeout per process."""
        for proc in self.processes:
            failures = proc.failures
            result = proc.parse(body, precision, now_ns, max_fields, max_tags, cutoff)
            if result is not None or proc.failures != failures:
                return result
        return None

    def stats(self) -> dict[str, object] | None:
        """/health's view: the first one's pid, bodies and failures of all, and each one's."""
        if not self.processes:
            return None
        each = [p.stats() for p in self.processes]
        return {
            "pid": each[0]["pid"],
            "bodies": sum(p.used for p in self.processes),
            "failures": sum(p.failures for p in self.processes),
            "processes": each,
        }

    def close(self) -> None:
        for proc in self.processes:
            proc.close()


def process_count(count: int | None = None) -> int:
    """How many parse processes: `count`, else FLAME_CLMC_PARSE_PROCESSES, else one per CPU,
    at most 4 (each costs ~150 MB; two writers on two CPUs keep two busy)."""
    if count is None:
        raw = os.environ.get("FLAME_CLMC_PARSE_PROCESSES", "").strip()
        count = int(raw) if raw.isdigit() else min(4, os.cpu_count() or 1)
    return max(0, count)


def main(argv: Any = None) -> None:
    """The child: serve parse requests on stdin/stdout until stdin closes."""
    del argv
    # Below the server's priority: when both cores are busy (a write storm), the server's
    # queries and its apply go first; the bodies parsed here wait, not the dashboards.
    os.nice(NICE)
    fd_in, fd_out = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    # nothing else may write to the answers' pipe (a stray print would corrupt a frame)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(BrokenPipeError):  # the server is gone (killed mid-parse)
        _serve(fd_in, fd_out)


if __name__ == "__main__":
    main()
