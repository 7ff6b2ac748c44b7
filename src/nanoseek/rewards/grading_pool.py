"""The slow path of the grader: math-verify in a pool of killable subprocesses.

math-verify's own timeout uses ``signal.alarm``, which only works in the main thread and cannot
interrupt a long C-level computation (``9**9**9**9`` is one big-int power). So every slow-path check
runs in a separate Python process (``python -c "...grading_pool.child_main()"``, a plain ``subprocess``:
it works from the main thread, from worker threads, from ``ProcessPoolExecutor`` and even from
daemonic ``multiprocessing`` workers, which may not start ``multiprocessing`` children). The caller waits on
the pipe with a hard deadline; past it the subprocess is killed (SIGKILL), the check counts as a
timeout and grades 0.0, and the next check starts a fresh subprocess. Workers are started on first
use (about 1 s to import sympy) and live until the parent exits or closes their stdin.

Protocol: one JSON line per request ``{"p": pred, "g": gold, "raw": bool, "t": seconds}`` and one per
answer ``{"s": status}``, status one of ``"equal"``, ``"different"``, ``"bad_reference"``,
``"parse_failure"``, ``"error"``.

This module imports only the standard library in the parent; the child imports math-verify.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict

DEFAULT_TIMEOUT = 3.0  # seconds per slow-path check (math-verify's own default is 5 s per step)
DEFAULT_WORKERS = 2  # concurrent slow-path subprocesses per parent process
STARTUP_TIMEOUT = 60.0  # seconds a fresh subprocess may take to import sympy + math-verify
CACHE_SIZE = 1 << 16  # (pred, ref) results remembered per process


class _Worker:
    """One math-verify subprocess and its pipes."""

    def __init__(self) -> None:
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../src
        code = f"import sys; sys.path[0:1] = [{src!r}]; from nanoseek.rewards.grading_pool import child_main; child_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.buf = b""
        self.warm = False  # said it is ready (start-up done)
        self.dead = False

    def _readline(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.dead = True  # the worker exited (crashed, or could not import math-verify)
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, msg: dict, timeout: float) -> dict | None:
        """Send one request and wait ``timeout`` seconds for its answer; ``None`` on timeout/death.

        A fresh worker first gets up to ``STARTUP_TIMEOUT`` to import math-verify and say it is ready,
        so start-up never counts against the per-check timeout."""
        try:
            if not self.warm:
                if self._readline(time.monotonic() + STARTUP_TIMEOUT) is None:
                    return None
                self.warm = True
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            return self._readline(time.monotonic() + timeout)
        except (OSError, ValueError):
            self.dead = True
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


class SlowPathPool:
    """A small pool of math-verify subprocesses with a hard per-check timeout and a result cache.

    Args:
        max_workers: concurrent subprocesses (threads beyond this wait for a free one).
    """

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self.max_workers = max_workers
        self.pid = os.getpid()
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= self.max_workers:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker()
        except Exception:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, alive: bool) -> None:
        if not alive:
            worker.kill()
        with self._cond:
            if alive:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def check(self, pred: str, gold: str, raw: bool, timeout: float, counts=None) -> str:
        """Status of one comparison (see the module docstring), or ``"timeout"``.

        ``counts`` (a ``nanoseek.rewards.grading.GradeCounts``, optional) gets ``cache_hits`` and
        ``worker_restarts``."""
        key = (pred, gold, raw)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                if counts is not None:
                    counts.add("cache_hits")
                return self._cache[key]
        worker = self._acquire()
        reply = worker.request({"p": pred, "g": gold, "raw": raw, "t": timeout}, timeout)
        self._release(worker, alive=reply is not None)
        if reply is None and counts is not None:
            counts.add("worker_restarts")  # killed; the next check starts a fresh one
        status = reply.get("s", "error") if reply else ("error" if worker.dead else "timeout")
        if status != "error":  # a crash may be transient; everything else is a property of the input
            with self._cache_lock:
                self._cache[key] = status
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return status

    def close(self) -> None:
        with self._cond:
            workers, self._idle = self._idle, []
            self._count -= len(workers)
        for w in workers:
            w.kill()


_POOL: SlowPathPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> SlowPathPool:
    """This process's pool (a child process after ``fork`` gets its own, never its parent's pipes)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = SlowPathPool()
        return _POOL


def warmup() -> None:
    """Start one worker now (imports sympy/math-verify) so the first real check is not slow."""
    get_pool().check("1", "1", False, DEFAULT_TIMEOUT)


def _shutdown() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


atexit.register(_shutdown)


def slow_verify(pred: str, gold: str, raw: bool = False, timeout: float | None = None, counts=None) -> float | None:
    """math-verify ``verify(parse("$gold$"), parse(pred))`` with a hard timeout: 1.0, 0.0 or ``None``
    (unparsable gold). ``raw`` means ``pred`` is free text (parsed as is, not wrapped in ``$``).
    What happened is added to ``counts`` (a ``GradeCounts``) when one is given."""
    if counts is not None:
        counts.add("slow_path")
    status = get_pool().check(pred, gold, raw, DEFAULT_TIMEOUT if timeout is None else float(timeout), counts)
    if status == "equal":
        return 1.0
    if status == "bad_reference":
        if counts is not None:
            counts.add("bad_references")
        return None
    if counts is not None and status in ("timeout", "parse_failure", "error"):
        counts.add({"timeout": "timeouts", "parse_failure": "parse_failures", "error": "errors"}[status])
    return 0.0


# ----------------------------------------------------------------------------------------------
# the child process


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) > 1 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def child_main() -> None:  # pragma: no cover - runs in the subprocess
    """The worker subprocess: answer one JSON request line at a time (module docstring) until stdin
    closes. Started by ``SlowPathPool`` as ``python -c "...; child_main()"``."""
    import logging
    import math

    logging.disable(logging.CRITICAL)  # math-verify logs every timeout/parse error
    from math_verify import parse, verify

    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            # math-verify's own (signal) timeout, 1 s under the hard one so that it usually fires first
            # and the worker survives; signal.alarm counts whole seconds.
            soft = max(1, math.ceil(float(req.get("t", DEFAULT_TIMEOUT))) - 1)
            gold = parse("$" + _strip_dollars(req["g"]) + "$", parsing_timeout=soft)
            if not gold:
                status = "bad_reference"
            else:
                p = req["p"]
                pred = parse(p, parsing_timeout=soft) if req.get("raw") else []
                if not pred:
                    pred = parse("$" + _strip_dollars(p) + "$", parsing_timeout=soft)
                if not pred:
                    status = "parse_failure"
                else:
                    status = "equal" if verify(gold, pred, timeout_seconds=soft) else "different"
        except BaseException:
            status = "error"
        sys.stdout.write(json.dumps({"s": status}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    child_main()
