"""The serving engine: one background thread that owns the model and runs a step-level batch.

Requests are queued from the web server's event loop (``Engine.submit``); the engine thread, at every
step, (1) drops rows whose request was cancelled (a client that went away stops costing compute
within one step), (2) prefills the requests that arrived since the last step, one forward for all
of them, and merges their rows into the running batch (continuous batching, see ``runner``),
(3) runs one decode step for every row and samples each row's token with its own generator, and
(4) pushes each choice's text deltas back to the event loop. ``n`` choices of a request share one
prefill and then live as ``n`` rows, each with its own ``ChoiceStream`` (detokenizer, stop strings,
reasoning splitter).

Events reach the asyncio side through ``loop.call_soon_threadsafe`` into the request's
``asyncio.Queue``; the thread never blocks on a client.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
from dataclasses import dataclass, field

import torch

from nanoseek.serve.reasoning import Delta
from nanoseek.serve.runner import sample_row
from nanoseek.serve.textstream import ChoiceStream

log = logging.getLogger("nanoseek.serve")


@dataclass
class GenerationRequest:
    """What to generate: the prompt ids and the OpenAI sampling parameters (already validated)."""

    prompt_ids: list[int]
    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class ChoiceEvent:
    """Output of one choice at one step: ``deltas`` (possibly empty) and, on its last event,
    ``finish_reason`` with its token counts. ``error`` is set when the engine failed."""

    index: int
    deltas: list[Delta]
    finish_reason: str | None = None
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    error: str | None = None


class RequestHandle:
    """The web side of a submitted request: an ``asyncio.Queue`` of ``ChoiceEvent`` and ``cancel()``.
    The server puts a ``None`` event in the queue when the client has gone (nothing more will come)."""

    def __init__(self, req: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.req = req
        self.loop = loop
        self.events: asyncio.Queue[ChoiceEvent | None] = asyncio.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, ev: ChoiceEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, ev)
        except RuntimeError:  # loop closed: the client is long gone
            self.cancelled.set()


@dataclass
class _Row:
    handle: RequestHandle
    index: int
    stream: ChoiceStream
    generator: torch.Generator
    token: int = -1  # sampled, not yet fed to the model


class Engine:
    """Continuous-batching generation over a runner (``ModelRunner`` or ``ScriptedRunner``).

    Args:
        runner: prefill / decode / select / merge (see ``nanoseek.serve.runner``).
        decode: ``list[int] -> str`` for the tokenizer (special tokens skipped).
        stop_ids: token ids that end a choice (EOS of the chat template).
        think_prefilled / answer_tags: how to split reasoning (see ``ReasoningSplitter``).
        max_batch: most rows decoded together; later requests wait for a free slot.
    """

    def __init__(self, runner, decode, stop_ids: list[int], think_prefilled: bool = False,
                 answer_tags: bool = False, max_batch: int = 64) -> None:
        self.runner, self.decode, self.stop_ids = runner, decode, list(stop_ids)
        self.think_prefilled, self.answer_tags = think_prefilled, answer_tags
        self.max_batch = max_batch
        self._inbox: queue.Queue[RequestHandle] = queue.Queue()
        self._waiting: list[RequestHandle] = []
        self._rows: list[_Row] = []
        self._state = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"steps": 0, "max_rows": 0, "requests": 0}

    # ----------------------------------------------------------------------------- public API
    def start(self) -> "Engine":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="nanoseek-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)  # wake the thread
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, req: GenerationRequest, loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Queue a request (call from the event loop); read its events from ``handle.events``."""
        handle = RequestHandle(req, loop or asyncio.get_running_loop())
        self._inbox.put(handle)
        return handle

    @property
    def active_rows(self) -> int:
        return len(self._rows)

    # ----------------------------------------------------------------------------- the thread
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                self._pull(block=not self._rows and not self._waiting)
                self._drop_cancelled()
                self._admit()
                if self._rows:
                    self._step()
            except Exception as e:  # never let one bad step kill the server
                log.exception("engine step failed")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")

    def _pull(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _drop_cancelled(self) -> None:
        self._waiting = [h for h in self._waiting if not h.cancelled.is_set()]
        keep = [i for i, r in enumerate(self._rows) if not r.handle.cancelled.is_set()]
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _admit(self) -> None:
        """Prefill waiting requests that fit and merge them into the running batch."""
        if self._rows and not getattr(self.runner, "can_join", True):
            return  # this model's cache cannot be merged: wait for the running batch to finish
        group, rows = [], len(self._rows)
        while self._waiting and rows + self._waiting[0].req.n <= self.max_batch:
            h = self._waiting.pop(0)
            group.append(h)
            rows += h.req.n
        if not group:
            if self._waiting and not self._rows:  # n larger than max_batch: run it alone
                group = [self._waiting.pop(0)]
            else:
                return
        try:
            self._prefill(group)
        except Exception as e:
            log.exception("prefill failed")
            for h in group:
                for i in range(h.req.n):
                    h._put(ChoiceEvent(i, [], "error", error=f"generation failed: {type(e).__name__}: {e}"))

    def _prefill(self, group: list[RequestHandle]) -> None:
        state, logits = self.runner.prefill([h.req.prompt_ids for h in group])
        self.stats["requests"] += len(group)
        expand, new_rows = [], []
        for g, h in enumerate(group):
            r = h.req
            # choice i uses seed + i (as nanoseek.policy.generate); any JSON integer is folded into torch's range
            seeds = ([(r.seed + i) % 2**63 for i in range(r.n)] if r.seed is not None
                     else [random.getrandbits(62) for _ in range(r.n)])
            for i in range(r.n):
                gen = torch.Generator(device=logits.device)
                gen.manual_seed(seeds[i])
                stream = ChoiceStream(self.decode, self.stop_ids, r.max_tokens, r.stop, self.think_prefilled, self.answer_tags)
                new_rows.append(_Row(h, i, stream, gen))
                expand.append(g)
        if expand != list(range(len(group))):
            state = self.runner.select(state, expand)
        logits = logits[expand]
        done = self._sample_and_emit(new_rows, logits)
        keep = [j for j in range(len(new_rows)) if j not in done]
        if len(keep) < len(new_rows):
            state = self.runner.select(state, keep) if keep else None
            new_rows = [new_rows[j] for j in keep]
        if not new_rows:
            return
        self._state = state if self._state is None else self.runner.merge(self._state, state)
        self._rows.extend(new_rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self._rows))

    def _step(self) -> None:
        tokens = torch.tensor([r.token for r in self._rows], dtype=torch.long)
        logits = self.runner.decode(self._state, tokens)
        self.stats["steps"] += 1
        done = self._sample_and_emit(self._rows, logits)
        if done:
            self._keep([j for j in range(len(self._rows)) if j not in done])

    def _sample_and_emit(self, rows: list[_Row], logits: torch.Tensor) -> set[int]:
        """Sample one token per row, run it through the row's ChoiceStream, send the event;
        returns the indices of rows that finished."""
        done = set()
        for j, row in enumerate(rows):
            r = row.handle.req
            row.token = sample_row(logits[j], r.temperature, r.top_p, row.generator)
            deltas = row.stream.push(row.token)
            fin = row.stream.finish_reason
            if fin is not None:
                done.add(j)
                row.handle._put(ChoiceEvent(row.index, deltas, fin, row.stream.tokens, row.stream.reasoning_tokens))
            elif deltas:
                row.handle._put(ChoiceEvent(row.index, deltas))
        return done

    def _keep(self, keep: list[int]) -> None:
        self._rows = [self._rows[j] for j in keep]
        self._state = self.runner.select(self._state, keep) if keep else None

    def _fail_all(self, message: str) -> None:
        for row in self._rows:
            row.handle._put(ChoiceEvent(row.index, [], "error", row.stream.tokens, row.stream.reasoning_tokens, error=message))
        for h in self._waiting:
            for i in range(h.req.n):
                h._put(ChoiceEvent(i, [], "error", error=message))
        self._rows, self._waiting, self._state = [], [], None
