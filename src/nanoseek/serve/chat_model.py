"""The served model: a causal LM, its tokenizer and chat template, and what the server needs to know
about them (context length, stop ids, whether the template pre-fills ``<think>``, whether answers
come in ``<answer>`` tags).

The prompt is always rendered with the checkpoint's own chat template
(``tokenizer.apply_chat_template``). Before rendering, earlier assistant turns lose their reasoning:
a ``reasoning_content`` field is ignored and a think block written into ``content`` is cut off (the
DeepSeek API does not put earlier reasoning back into the context, DEEPSEEK.md §3). For R1-Zero
checkpoints (``answer_tags``) the earlier answer is put back inside ``<answer>…</answer>``, the form
the model produced it in.
"""

from __future__ import annotations

import functools

from pathlib import Path

import torch

from nanoseek.errors import NanoseekError
from nanoseek.model.load import resolve_model_dir
from nanoseek.policy.policy import load_model_and_tokenizer
from nanoseek.serve.engine import Engine
from nanoseek.serve.runner import ModelRunner
from nanoseek.tokenizer import (ANSWER_CLOSE, ANSWER_OPEN, stop_token_ids, strip_reasoning,
                                template_prefills_think)


class PromptError(ValueError):
    """The messages cannot be rendered with this model's chat template."""


class ChatModel:
    """A model ready to serve.

    Args:
        model: nanoseek ``DeepseekV3ForCausalLM`` or ``nanoseek.model.hf.TransformersLM`` (or any
            module with that calling convention), or None together with ``runner``.
        tokenizer: a transformers tokenizer with a chat template.
        name: the served model name (``/v1/models``, the ``model`` field of responses).
        runner: a ready runner (e.g. ``ScriptedRunner``) instead of ``model``.
        answer_tags: None = auto (the tokenizer has an ``<answer>`` token or its template mentions it).
        context_length: None = the model config's ``max_position_embeddings``.
    """

    def __init__(self, model, tokenizer, name: str = "nanoseek", runner=None, answer_tags: bool | None = None,
                 context_length: int | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise NanoseekError(f"the tokenizer of {name!r} has no chat template, so chat prompts cannot be built")
        self.tokenizer, self.name = tokenizer, name
        self.stop_ids = stop_token_ids(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        if runner is None:
            runner = ModelRunner(model, pad)
        self.runner = runner
        self.think_prefilled = template_prefills_think(tokenizer)
        if answer_tags is None:
            answer_tags = ANSWER_OPEN in tokenizer.get_vocab() or ANSWER_OPEN in (tokenizer.chat_template or "")
        self.answer_tags = answer_tags
        if context_length is None:
            cfg = getattr(model, "config", None)
            context_length = getattr(cfg, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        self.context_length = int(min(context_length, 10**9))

    @classmethod
    def load(cls, path: str | Path, name: str | None = None, device: str = "cpu", **kwargs) -> "ChatModel":
        """Load a run directory, checkpoint folder or Hugging Face folder (``nanoseek.model.load``) onto
        ``device`` ("auto": CUDA when available)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer = load_model_and_tokenizer(path, device)
        return cls(model, tokenizer, name or default_name(path, resolve_model_dir(path)), **kwargs)

    def decode(self, ids: list[int]) -> str:
        """Completion text for token ids (special tokens skipped; nanoseek's tags are not special)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_messages(self, messages: list[dict]) -> list[dict]:
        """Messages as they go into the chat template: roles normalised, earlier reasoning removed."""
        out = []
        for m in messages:
            role, text = m["role"], m.get("content") or ""
            if role == "developer":
                role = "system"
            if role == "assistant":
                text = strip_reasoning(text)
                if self.answer_tags and ANSWER_OPEN not in text:
                    text = f"{ANSWER_OPEN}{text}{ANSWER_CLOSE}"
            out.append({"role": role, "content": text})
        return out

    def prompt_text(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(self.prompt_messages(messages), tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as e:  # jinja TemplateError: e.g. roles out of order for this template
            raise PromptError(f"the chat template rejected these messages: {e}") from None

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """An upper bound on the UTF-8 bytes of text one token stands for: the longest vocabulary
        entry (added tokens included) in UTF-8. Byte-level BPE, SentencePiece and byte-fallback
        spellings only make entries longer than the text they decode to, so the bound holds."""
        return max((len(t.encode("utf-8", "replace")) for t in self.tokenizer.get_vocab()), default=1) or 1

    def min_prompt_tokens(self, messages: list[dict]) -> int:
        """A lower bound on the prompt's length in tokens, from the messages' UTF-8 size alone (no
        tokenization): a prompt far over the context is refused without paying for encoding it."""
        # over the messages as they enter the template (earlier reasoning removed), not as sent
        text_bytes = sum(len(m["content"].encode("utf-8", "replace")) for m in self.prompt_messages(messages))
        return text_bytes // self.max_token_bytes

    def encode(self, messages: list[dict]) -> list[int]:
        """Prompt token ids for a conversation (generation prompt added)."""
        return self.tokenizer(self.prompt_text(messages), add_special_tokens=False).input_ids

    def engine(self, max_batch: int = 64) -> Engine:
        """A (not yet started) ``Engine`` generating with this model: its stop ids, think pre-fill
        and answer tags; at most ``max_batch`` rows decoded together."""
        return Engine(self.runner, self.decode, self.stop_ids, self.think_prefilled, self.answer_tags, max_batch)


def default_name(path: str | Path, folder: Path) -> str:
    """``<run>-step-N`` for a nanoseek checkpoint (``RUN/checkpoints/step-N``), else the folder name."""
    if folder.parent.name == "checkpoints":
        return f"{folder.parent.parent.name}-{folder.name}"
    return folder.name
