"""Token ids to streamed text: incremental detokenization, stop strings, and the per-choice pipeline.

``IncrementalDetokenizer`` turns one token at a time into text without ever emitting half a
character: a byte-level BPE token can end in the middle of a multi-byte UTF-8 character (Chinese
text, emoji), which ``decode`` shows as U+FFFD until the next token completes it. The method is the
one of Hugging Face text-generation-inference and vLLM (``decode_token``/``detokenize_incrementally``):
decode a short window ``ids[prefix:]`` and ``ids[prefix:read]`` and emit the difference once it does
not end in U+FFFD.

``StopStrings`` cuts the text at the first stop string to *complete* (OpenAI ``stop``; the stop text
itself is not returned), holding back any tail that could still become one.

``ChoiceStream`` chains them with the ``ReasoningSplitter`` for one choice and counts tokens; the
engine runs one per generated sequence, so every choice of every request has its own parser state.
"""

from __future__ import annotations

from typing import Callable

from nanoseek.serve.reasoning import Delta, ReasoningSplitter, held_prefix_len, merge_deltas

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Streams ``decode(ids)`` one token at a time (TGI / vLLM prefix-window method).

    Args:
        decode: ``list[int] -> str`` (e.g. ``lambda ids: tok.decode(ids, skip_special_tokens=True)``).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # window start: a few tokens of context so leading-space rules decode right
        self.read = 0  # tokens already turned into emitted text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self.decode(self.ids[self.prefix:self.read])
        new_text = self.decode(self.ids[self.prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """The text still held at the end, without the U+FFFD of a character cut off by
        ``max_tokens`` (half a character is not text)."""
        prefix_text = self.decode(self.ids[self.prefix:self.read])
        new_text = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text):].rstrip(REPLACEMENT) if len(new_text) > len(prefix_text) else ""


class StopStrings:
    """Cut a text stream at the first stop string to complete (earliest end; on a tie the longest).

    ``feed(text) -> (safe_text, stopped)``; after a stop, everything else is dropped.
    ``flush()`` returns the held tail when generation ends for another reason.
    """

    def __init__(self, stops: list[str] | None) -> None:
        self.stops = [s for s in (stops or []) if s]
        self.buf = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self.buf + text
        best = None  # (end, start)
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or (i + len(s), i) < best):
                best = (i + len(s), i)
        if best is not None:
            self.buf, self.stopped = "", True
            return buf[:best[1]], True
        k = max(held_prefix_len(buf, s) for s in self.stops)
        self.buf = buf[len(buf) - k:]
        return buf[:len(buf) - k], False

    def flush(self) -> str:
        buf, self.buf = self.buf, ""
        return "" if self.stopped else buf


class ChoiceStream:
    """One choice's pipeline: token id -> detokenizer -> stop strings -> reasoning splitter.

    ``push(token_id) -> list[Delta]``; after it, ``finish_reason`` is set when this token ended the
    choice ("stop": a stop token or stop string; "length": ``max_tokens`` reached). ``tokens`` counts
    every generated token (the stop token included, as vLLM does); ``reasoning_tokens`` those
    generated while the think block was open (the one that closes it included), 0 when the text had
    no think block.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop_ids: list[int], max_tokens: int,
                 stop: list[str] | None = None, think_prefilled: bool = False, answer_tags: bool = False) -> None:
        self.detok = IncrementalDetokenizer(decode)
        self.stop_strings = StopStrings(stop)
        self.splitter = ReasoningSplitter(think_prefilled, answer_tags)
        self.stop_ids = set(stop_ids)
        self.max_tokens = max_tokens
        self.tokens = 0
        self._thinking_tokens = 0
        self.finish_reason: str | None = None

    @property
    def reasoning_tokens(self) -> int:
        return self._thinking_tokens if self.splitter.had_block else 0

    def push(self, token_id: int) -> list[Delta]:
        if self.finish_reason is not None:
            return []
        self.tokens += 1
        if self.splitter.thinking:
            self._thinking_tokens += 1
        if token_id in self.stop_ids:
            return self.finish("stop")
        text, stopped = self.stop_strings.feed(self.detok.push(token_id))
        out = self.splitter.feed(text)
        if stopped:
            return out + self.finish("stop")
        if self.tokens >= self.max_tokens:
            return out + self.finish("length")
        return out

    def finish(self, reason: str) -> list[Delta]:
        """End the choice (also used for "abort"): flush every stage."""
        if self.finish_reason is not None:
            return []
        self.finish_reason = reason
        text, _ = self.stop_strings.feed(self.detok.flush())
        out = self.splitter.feed(text + self.stop_strings.flush())
        return merge_deltas(out + self.splitter.finish())

