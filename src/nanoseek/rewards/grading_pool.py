"""The slow path of the grader: math-verify in a pool of killable subprocesses, every check capped.

math-verify's own timeout uses ``signal.alarm``, which only works in the main thread and cannot
interrupt a long C-level computation (``9**9**9**9`` is one big-int power). So every slow-path check
runs in a separate Python process (``nanoseek/rewards/grading_child.py`` run as a script: a plain
``subprocess``, so it works from the main thread, from worker threads, from ``ProcessPoolExecutor``
and even from daemonic ``multiprocessing`` workers, which may not start ``multiprocessing`` children).

Every check has one deadline, ``timeout`` seconds after it starts (default ``DEFAULT_TIMEOUT``): the
wait for a free worker and the worker's answer both count against it. The worker stops its own
work ``grading_child.SOFT_MARGIN`` before the deadline and answers "timeout" (a timer interrupts
Python code anywhere); a worker still silent at the deadline (a long C-level computation) is killed
(SIGKILL) and a replacement started at once. Either way the check is a timeout (graded 0.0 and
counted).
Threads waiting for a worker are served first come, first served. The one exception to the
deadline is a process's very first check, which also waits (up to ``STARTUP_TIMEOUT``) for the
pool's one-time start-up; ``warmup()`` pays it up front.

Protocol: one JSON line per request ``{"p": pred, "g": gold, "raw": bool, "t": seconds}`` and one per
answer ``{"s": status}``, status one of ``"equal"``, ``"different"``, ``"bad_reference"``,
``"parse_failure"``, ``"error"``. The child (``grading_child``) also compares numbers relatively.

This module imports only the standard library; the child imports sympy and math-verify.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict

DEFAULT_TIMEOUT = 2.0  # seconds per slow-path check, waiting for a worker included
DEFAULT_WORKERS = 2  # concurrent slow-path subprocesses per parent process
STARTUP_TIMEOUT = 60.0  # seconds a fresh subprocess may take to import sympy + math-verify
CACHE_SIZE = 1 << 16  # (pred, ref) results remembered per process
MAX_START_FAILURES = 3  # workers in a row that die before they are ready: the pool answers "error"
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grading_child.py")


class _Worker:
    """One math-verify subprocess and its pipes."""

    def __init__(self) -> None:
        # run the child's file, not the package: importing nanoseek would import torch (~3 s per start)
        code = f"import runpy, sys; sys.path.pop(0); runpy.run_path({CHILD!r}, run_name='__main__')"
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.buf = b""
        self.dead = False

    def readline(self, deadline: float) -> dict | None:
        """The next JSON line from the worker, or ``None`` past ``deadline`` or when it died."""
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

    def request(self, msg: dict, deadline: float) -> dict | None:
        """Send one request and wait for its answer until ``deadline``; ``None`` on timeout/death."""
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            return self.readline(deadline)
        except (OSError, ValueError):
            self.dead = True
            return None

    def kill(self) -> None:
        """SIGKILL the worker and reap it (it may already be gone)."""
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass  # already reaped, or a zombie the OS will reap: nothing is left to free


class _Waiter:
    """A thread waiting for a worker: ``worker`` is handed over (or ``failed`` set) before ``event``."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.worker: _Worker | None = None
        self.failed = False


class SlowPathPool:
    """A small pool of math-verify subprocesses with a hard per-check deadline and a result cache.

    Args:
        max_workers: concurrent subprocesses (threads beyond this wait, first come first served,
            until their deadline).
    """

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self.max_workers = max_workers
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._alive = 0  # workers starting, idle or busy
        self._ever_ready = False
        self._start_failures = 0
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- workers ---------------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start one worker (``_alive`` already counts it); a thread hands it over once it is ready."""
        try:
            worker = _Worker()
        except OSError:
            self._lost(started=False)
            return
        threading.Thread(target=self._await_ready, args=(worker,), daemon=True).start()

    def _await_ready(self, worker: _Worker) -> None:
        if worker.readline(time.monotonic() + STARTUP_TIMEOUT) is None:
            worker.kill()
            self._lost(started=False)
            return
        with self._lock:
            self._ever_ready = True
            self._start_failures = 0
        self._release(worker)

    def _lost(self, started: bool) -> None:
        """A worker is gone: replace it (unless workers keep dying at start-up: then fail the waiters)."""
        with self._lock:
            self._alive -= 1
            self._start_failures = 0 if started else self._start_failures + 1
            if self._start_failures < MAX_START_FAILURES:
                self._alive += 1
                respawn = True
            else:
                respawn = False
                while self._waiters:
                    w = self._waiters.popleft()
                    w.failed = True
                    w.event.set()
        if respawn:
            self._spawn()

    def _release(self, worker: _Worker) -> None:
        """Hand a ready worker to the oldest waiting thread, or make it idle."""
        with self._lock:
            if self._waiters:
                w = self._waiters.popleft()
                w.worker = worker
                w.event.set()
            else:
                self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker that timed out or died, and start a replacement, in the background (reaping a
        process that held a huge computation can take a while: the check returns at its deadline)."""

        def reap() -> None:
            worker.kill()
            self._lost(started=True)

        threading.Thread(target=reap, daemon=True).start()

    def _acquire(self, deadline: float) -> tuple[_Worker | str | None, float]:
        """(a ready worker, ``None`` past ``deadline`` or ``"error"`` when workers cannot start; the
        deadline, later than the one given only while the pool is starting for the first time)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), deadline
            if self._start_failures >= MAX_START_FAILURES:
                return "error", deadline
            spawn = self.max_workers - self._alive  # all at once on first use: a spare is ready for a kill
            self._alive += spawn
            if not self._ever_ready:  # the one-time start-up is not part of a check's deadline
                deadline = max(deadline, time.monotonic() + STARTUP_TIMEOUT)
            waiter = _Waiter()
            self._waiters.append(waiter)
        for _ in range(spawn):
            self._spawn()
        waiter.event.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if waiter.failed:
                return "error", deadline
            if waiter.worker is None:
                self._waiters.remove(waiter)
                return None, deadline
        if time.monotonic() >= deadline:  # handed over just too late: pass it on
            self._release(waiter.worker)
            return None, deadline
        return waiter.worker, deadline

    # -- checks ----------------------------------------------------------------------------------

    def check(self, pred: str, gold: str, raw: bool, timeout: float, counts=None) -> str:
        """Status of one comparison (see the module docstring), or ``"timeout"``, within ``timeout``
        seconds from the call (waiting for a worker included).

        ``counts`` (a ``nanoseek.rewards.grading.GradeCounts``, optional) gets ``cache_hits``,
        ``queue_timeouts`` and ``worker_restarts``."""
        deadline = time.monotonic() + timeout
        key = (pred, gold, raw)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                if counts is not None:
                    counts.add("cache_hits")
                return self._cache[key]
        worker, deadline = self._acquire(deadline)
        if not isinstance(worker, _Worker):  # no worker in time: not a property of the input (not cached)
            if worker is None and counts is not None:
                counts.add("queue_timeouts")
            return "timeout" if worker is None else "error"
        full_time = deadline - time.monotonic() >= 0.9 * timeout  # a timeout then says the input is slow
        reply = worker.request({"p": pred, "g": gold, "raw": raw, "t": deadline - time.monotonic()}, deadline)
        if reply is None:
            self._discard(worker)
            if counts is not None:
                counts.add("worker_restarts")
        else:
            self._release(worker)
        status = reply.get("s", "error") if reply else ("error" if worker.dead else "timeout")
        # a crash may be transient, and a timeout after a long wait for a worker says nothing about the
        # input; every other status is a property of the input
        if status != "error" and (status != "timeout" or full_time):
            with self._cache_lock:
                self._cache[key] = status
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return status

    def close(self) -> None:
        """Kill the idle workers (busy ones are killed when their check ends or at exit)."""
        with self._lock:
            workers, self._idle = self._idle, []
            self._alive -= len(workers)
            self._start_failures = MAX_START_FAILURES  # a closed pool starts no more workers
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
    """Start the pool now and wait until a worker is ready, so that no later check waits for start-up."""
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
