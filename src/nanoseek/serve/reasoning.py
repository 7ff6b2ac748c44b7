"""Streaming split of generated text into ``reasoning_content`` and ``content`` (DeepSeek reasoner).

The DeepSeek API returns a reasoning model's chain of thought in ``message.reasoning_content`` and the
answer in ``message.content``; when streaming, ``delta.reasoning_content`` chunks come first, then
``delta.content`` chunks (DeepSeek API docs, "Reasoning Model (deepseek-reasoner)"; DEEPSEEK.md §3).
The tag text itself appears in neither field.

``ReasoningSplitter`` is fed the generated text in arbitrary pieces (``feed``) and returns
``Delta(kind, text)`` pieces; ``finish()`` flushes what it held back. It follows the rules of
``nanoseek.tokenizer.split_reasoning`` (the one-shot split of a finished text, which states them)
and its result depends only on the concatenated text, never on where it was cut (a ``</think>``
cut in the middle is held back until it is complete or disproved), so streamed and non-streamed
responses carry identical fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanoseek.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

REASONING, CONTENT = "reasoning", "content"


@dataclass(frozen=True)
class Delta:
    """One piece of output: ``kind`` is ``"reasoning"`` or ``"content"``; ``text`` is never empty."""

    kind: str
    text: str


def held_prefix_len(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag`` (a tag that may be
    completed by the next piece, so it must not be emitted yet)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class _Stripper:
    """Emits one field with surrounding whitespace removed, streaming: leading whitespace is dropped
    and trailing whitespace is held until non-whitespace follows (so the total is ``s.strip()``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.started = False
        self.ws = ""

    def push(self, s: str, out: list[Delta]) -> None:
        if not self.started:
            s = s.lstrip()
            if not s:
                return
            self.started = True
        s = self.ws + s
        body = s.rstrip()
        self.ws = s[len(body):]
        if body:
            out.append(Delta(self.kind, body))


class ReasoningSplitter:
    """Incremental think-block parser; one instance per generated sequence (choice).

    Args:
        think_prefilled: the prompt already ends with ``<think>`` (``tokenizer.template_prefills_think``).
        answer_tags: content is the body of ``<answer>…</answer>`` (R1-Zero template).
    """

    # phases
    START, THINK, AFTER, PRE_ANSWER, ANSWER, DONE = range(6)

    def __init__(self, think_prefilled: bool = False, answer_tags: bool = False) -> None:
        self.answer_tags = answer_tags
        self.phase = self.THINK if think_prefilled else self.START
        self.had_block = think_prefilled
        self.buf = ""  # text held back (a possible tag prefix, or the pre-answer text)
        self.reasoning = _Stripper(REASONING)
        self.content = _Stripper(CONTENT)

    @property
    def thinking(self) -> bool:
        """True while the generated text may still be (or is) inside the think block."""
        return self.phase in (self.START, self.THINK)

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        if text:
            self._feed(text, out)
        return merge_deltas(out)

    def finish(self) -> list[Delta]:
        """Flush held text at the end of generation (no more input)."""
        out: list[Delta] = []
        buf, self.buf = self.buf, ""
        if self.phase == self.START:
            self.content.push(buf, out)  # never became a think block: plain content
        elif self.phase == self.THINK:
            self.reasoning.push(buf, out)  # cut off while thinking: "</thi" is just text
        elif self.phase in (self.AFTER, self.PRE_ANSWER, self.ANSWER):
            self.content.push(buf, out)
        self.phase = self.DONE
        return merge_deltas(out)

    # ------------------------------------------------------------------------------ internals
    def _feed(self, text: str, out: list[Delta]) -> None:
        while text:
            buf = self.buf + text
            self.buf, text = "", ""
            if self.phase == self.START:
                s = buf.lstrip()
                if s.startswith(THINK_OPEN):
                    self.phase, self.had_block = self.THINK, True
                    text = s[len(THINK_OPEN):]
                elif THINK_OPEN.startswith(s):  # "", "<", "<th", ...: undecided
                    self.buf = buf
                else:
                    self.phase = self.PRE_ANSWER if self.answer_tags else self.AFTER
                    text = buf
            elif self.phase == self.THINK:
                i = buf.find(THINK_CLOSE)
                if i >= 0:
                    self.reasoning.push(buf[:i], out)
                    self.phase = self.PRE_ANSWER if self.answer_tags else self.AFTER
                    text = buf[i + len(THINK_CLOSE):]
                else:
                    k = held_prefix_len(buf, THINK_CLOSE)
                    self.reasoning.push(buf[:len(buf) - k], out)
                    self.buf = buf[len(buf) - k:]
            elif self.phase == self.AFTER:
                self.content.push(buf, out)
            elif self.phase == self.PRE_ANSWER:
                i = buf.find(ANSWER_OPEN)
                if i >= 0:  # drop what came between </think> and <answer>
                    self.phase = self.ANSWER
                    text = buf[i + len(ANSWER_OPEN):]
                else:
                    self.buf = buf  # held whole: it becomes the content if no <answer> comes
            elif self.phase == self.ANSWER:
                i = buf.find(ANSWER_CLOSE)
                if i >= 0:
                    self.content.push(buf[:i], out)
                    self.phase = self.DONE
                else:
                    k = held_prefix_len(buf, ANSWER_CLOSE)
                    self.content.push(buf[:len(buf) - k], out)
                    self.buf = buf[len(buf) - k:]
            # DONE: drop everything


def merge_deltas(deltas: list[Delta]) -> list[Delta]:
    """Join consecutive deltas of the same kind (a boundary-crossing feed stays two deltas)."""
    out: list[Delta] = []
    for d in deltas:
        if out and out[-1].kind == d.kind:
            out[-1] = Delta(d.kind, out[-1].text + d.text)
        else:
            out.append(d)
    return out


def collect(deltas: list[Delta]) -> tuple[str | None, str | None]:
    """``(reasoning_content, content)`` from a list of deltas; a field with no text is None."""
    r = "".join(d.text for d in deltas if d.kind == REASONING)
    c = "".join(d.text for d in deltas if d.kind == CONTENT)
    return (r or None), (c or None)
