"""Prompt templates: R1-Zero (plain text, tags) and R1 (chat, ``\\boxed{}``), for every task.

* ``r1_zero``: DeepSeek-R1 paper v1 Table 1, verbatim, with the question in place of ``prompt``;
  the assistant turn is opened with ``<think>`` (``prefill_think=True``, the default) so that the
  completion continues the reasoning and ``think_prefilled`` is true for the rewards. The answer is
  expected in ``<answer>…</answer>``.
* ``r1``: the DeepSeek-R1 chat format. The user turn is the question plus the R1 README's math
  instruction ("Please reason step by step, and put your final answer within \\boxed{}."), and the
  assistant turn is opened with ``<think>\\n`` (R1 README, "Usage Recommendations": enforce the
  model to start its response with "<think>\\n"). With a tokenizer that has a chat template the
  tokenizer's template renders the turns; without one the DeepSeek-R1 special tokens are used.

``apply_template(name, prompt, tokenizer=None) -> Prompted(text, think_prefilled)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanoseek.errors import NanoseekError
from nanoseek.tasks.base import R1_MATH_INSTRUCTION, R1_ZERO_SYSTEM

TEMPLATES = ("r1_zero", "r1")

# DeepSeek-R1 tokenizer_config.json chat template tokens (fullwidth bars, "▁" U+2581).
R1_BOS = "<｜begin▁of▁sentence｜>"
R1_USER = "<｜User｜>"
R1_ASSISTANT = "<｜Assistant｜>"


@dataclass(frozen=True)
class Prompted:
    """A rendered prompt and whether it already opened the think block (pass to the rewards)."""

    text: str
    think_prefilled: bool


def r1_zero(prompt: str, prefill_think: bool = True) -> Prompted:
    """The R1-Zero template (R1 paper v1 Table 1): system line, ``User: prompt``, ``Assistant:``."""
    text = f"{R1_ZERO_SYSTEM} User: {prompt.strip()} Assistant:"
    return Prompted(text + " <think>" if prefill_think else text, prefill_think)


def r1_chat(prompt: str, tokenizer=None, prefill_think: bool = True, instruction: str | None = R1_MATH_INSTRUCTION) -> Prompted:
    """The R1 chat template: user turn = question + instruction, assistant turn opened with ``<think>\\n``.

    ``instruction=None`` leaves the question as is (e.g. when the task's prompt already says where
    the answer goes).
    """
    user = prompt.strip() + (f"\n{instruction}" if instruction else "")
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        if text.rstrip().endswith("<think>"):  # some templates (R1 distills) open it themselves
            return Prompted(text.rstrip() + "\n", True)
    else:
        text = f"{R1_BOS}{R1_USER}{user}{R1_ASSISTANT}"
    return Prompted(text + "<think>\n" if prefill_think else text, prefill_think)


def apply_template(name: str, prompt: str, tokenizer=None, **options) -> Prompted:
    """Render ``prompt`` with the template ``name`` ("r1_zero" or "r1"); options go to the template."""
    if name in ("r1_zero", "r1-zero", "zero"):
        return r1_zero(prompt, **options)
    if name in ("r1", "r1_chat", "chat"):
        return r1_chat(prompt, tokenizer=tokenizer, **options)
    raise NanoseekError(f"unknown template {name!r}; known templates: {', '.join(TEMPLATES)}")
