"""Chat-format SFT data: JSONL records → token sequences with a completion mask → padded or packed batches.

A record is one JSON object per line with ``messages``: a list of ``{"role": "system"|"user"|
"assistant", "content": str}`` turns; an assistant turn may carry ``reasoning_content`` (the chain
of thought, the field name of the DeepSeek API). This is the format ``nanoseek sample`` writes.

Rendering (``encode_chat``). The prompt of assistant turn ``i`` is exactly what the model sees at
inference: the tokenizer's chat template applied to ``messages[:i]`` with the generation prompt
on. The completion is what the model must write after it: ``<think>`` (unless the template already
opened it), the reasoning, ``</think>``, the content, and the template's end-of-turn token
(``end_of_turn_id``). Templates drop earlier turns' reasoning from the history (the DeepSeek API
does; so does nanoseek's template), so the tokens of a later turn's prompt are not always the
tokens that came before it: a chat is kept as one sequence while each prompt extends the text so
far, and split into one sequence per assistant turn where it does not. Either way every training
sequence is token for token what inference sees, and every assistant turn is trained.

Labels. Each sequence is a list of segments (prompt text or completion text); the loss mask comes
from the segment lengths, never from token values, so a pad id equal to the EOS id (most HF
models) cannot hide or add a label: each completion's real final end-of-turn token is predicted,
padding never is.

Batching. ``pad_batch`` right-pads whole sequences. ``pack_batches`` concatenates sequences into
rows of ``max_length`` tokens with positions restarting at 0 for each sequence. Deviation: the
model takes a 2-D key-padding mask only, so packed sequences can attend to earlier ones in the
same row (DeepSeek-V3 sec. 5.1 packs SFT samples with a mask that keeps them apart; V3
pre-training packs without one, sec. 3.1). Packing is off by default.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from jinja2 import TemplateError

from nanoseek.errors import NanoseekError
from nanoseek.tasks.jsonl import read_jsonl
from nanoseek.tokenizer import THINK_CLOSE, THINK_OPEN, stop_token_ids

ROLES = ("system", "user", "assistant")
_SENTINEL = "\x00nanoseek-sentinel\x00"


# ------------------------------------------------------------------------------------- reading
def validate_messages(messages, where: str) -> list[dict]:
    """Check one record's ``messages`` (roles, string contents, at least one assistant turn)."""
    if not isinstance(messages, list) or not messages:
        raise NanoseekError(f"{where}: 'messages' must be a non-empty list of turns")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise NanoseekError(f"{where}: turn {k} needs a role in {ROLES}, got {m!r:.80}")
        if not isinstance(m.get("content", ""), str):
            raise NanoseekError(f"{where}: turn {k} content must be a string")
        rc = m.get("reasoning_content")
        if rc is not None and (m["role"] != "assistant" or not isinstance(rc, str)):
            raise NanoseekError(f"{where}: turn {k}: reasoning_content must be a string on an assistant turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise NanoseekError(f"{where}: no assistant turn to train on")
    return messages


def load_chat_jsonl(paths) -> list[list[dict]]:
    """Read every record of the chat JSONL files ``paths`` (a path or a list); errors name file:line."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise NanoseekError("no SFT data given (--data FILE.jsonl)")
    chats = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise NanoseekError(f"SFT data file {str(p)!r} does not exist")
        for lineno, row in read_jsonl(p):
            chats.append(validate_messages(row.get("messages"), f"{p}:{lineno}"))
    if not chats:
        raise NanoseekError(f"SFT data {', '.join(map(str, paths))} holds no records")
    return chats


# ------------------------------------------------------------------------------------ rendering
def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn in the chat template (``<|end|>``, ``<|im_end|>``, the
    EOS of DeepSeek-R1, ...): the stop token the template writes right after the content, else EOS."""
    stops = stop_token_ids(tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        if tokenizer.eos_token_id is None:
            raise NanoseekError("the tokenizer has no EOS token: cannot end a training completion")
        return tokenizer.eos_token_id
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}],
                                             tokenize=False)
        after = text.split(_SENTINEL, 1)[1].lstrip() if _SENTINEL in text else ""
    except TemplateError as e:  # a template that refuses the probe (raise_exception): fall back to EOS, said once
        warnings.warn(f"the chat template refused a one-turn probe ({e}); training completions end with the "
                      "tokenizer's stop token instead of the template's end of turn", stacklevel=2)
        after = ""
    for t in stops:
        if after and after.startswith(tokenizer.convert_ids_to_tokens(t)):
            return t
    if tokenizer.eos_token_id is None:
        raise NanoseekError("the tokenizer has no EOS token: cannot end a training completion")
    return stops[0] if stops else tokenizer.eos_token_id


def assistant_text(message: dict, think_prefilled: bool) -> str:
    """The text the model writes for an assistant turn (without the end-of-turn token).

    With ``reasoning_content``: ``[<think>]reasoning</think>content`` (``<think>`` only when the
    template has not opened it). Without: the content as is, closing a prefilled think block first
    when the content has none (an empty think block, which is what the templates render).
    """
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        return f"{'' if think_prefilled else THINK_OPEN}{reasoning}{THINK_CLOSE}{content}"
    if think_prefilled:
        if content.lstrip().startswith(THINK_OPEN):
            return content.lstrip()[len(THINK_OPEN):]
        if THINK_CLOSE not in content:
            return THINK_CLOSE + content
    return content


def render_history(tokenizer, messages: list[dict]) -> str:
    """The prompt text before an assistant turn: the chat template with the generation prompt on; a
    tokenizer without a template gets ``nanoseek.tokenizer.render_prompt``'s plain form (each turn's
    text and a newline)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m.get('content') or ''}\n" for m in messages)


@dataclass
class SFTExample:
    """One training sequence: ``ids`` and ``completion`` (1 on tokens the model must write, from
    segment lengths) of equal length."""

    ids: list[int]
    completion: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def chat_segments(messages: list[dict], tokenizer) -> list[list[tuple[str, bool]]]:
    """The chat as text segments ``(text, is_completion)``: one list per training sequence (see the
    module docstring); a completion segment's end-of-turn token is added by ``encode_chat``."""
    eot_text = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    sequences: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] = []
    so_far = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render_history(tokenizer, messages[:i])
        completion = assistant_text(m, prompt.rstrip().endswith(THINK_OPEN))
        if current and prompt.startswith(so_far):
            if prompt[len(so_far):]:
                current.append((prompt[len(so_far):], False))
        else:
            if current:
                sequences.append(current)
            current = [(prompt, False)]
        current.append((completion, True))
        so_far = prompt + completion + eot_text
    sequences.append(current)
    return sequences


def encode_chat(messages: list[dict], tokenizer, eot_id: int | None = None) -> list[SFTExample]:
    """Tokenize one chat into ``SFTExample`` sequences (segment by segment; labels from lengths)."""
    eot = end_of_turn_id(tokenizer) if eot_id is None else eot_id
    out = []
    for segments in chat_segments(messages, tokenizer):
        ids: list[int] = []
        comp: list[int] = []
        for text, is_completion in segments:
            seg = tokenizer(text, add_special_tokens=False).input_ids if text else []
            if is_completion:
                seg = seg + [eot]
            ids += seg
            comp += [int(is_completion)] * len(seg)
        out.append(SFTExample(ids, comp))
    return out


def encode_chats(chats: list[list[dict]], tokenizer, max_length: int = 0) -> tuple[list[SFTExample], int]:
    """Encode every chat; sequences longer than ``max_length`` (> 0) are dropped. Returns
    ``(examples, n_dropped)``."""
    eot = end_of_turn_id(tokenizer)
    out, dropped = [], 0
    for chat in chats:
        for ex in encode_chat(chat, tokenizer, eot):
            if max_length and len(ex) > max_length:
                dropped += 1
            else:
                out.append(ex)
    if not out:
        raise NanoseekError(f"no SFT sequence fits max_length={max_length} ({dropped} dropped)")
    return out, dropped


# ------------------------------------------------------------------------------------- batches
@dataclass
class SFTBatch:
    """``input_ids``, ``attention_mask`` (1 = real token) and ``loss_mask`` (1 = a completion token,
    predicted from the position before it), all ``[B, T]``; ``position_ids [B, T]`` when packed."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor | None = None


def pad_batch(examples: list[SFTExample], pad_id: int) -> SFTBatch:
    """Right-pad ``examples`` to the longest; masks come from each example's length."""
    T = max(len(e) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), T), dtype=torch.long)
    loss = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.ids, dtype=torch.long)
        attn[i, :n] = 1
        loss[i, :n] = torch.tensor(e.completion, dtype=torch.long)
    return SFTBatch(ids, attn, loss)


def pack_rows(examples: list[SFTExample], max_length: int) -> list[list[SFTExample]]:
    """Greedy first-fit, in order: consecutive examples share a row while they fit in ``max_length``."""
    rows: list[list[SFTExample]] = []
    used = 0
    for e in examples:
        if rows and used + len(e) <= max_length:
            rows[-1].append(e)
            used += len(e)
        else:
            rows.append([e])
            used = len(e)
    return rows


def packed_batch(rows: list[list[SFTExample]], pad_id: int) -> SFTBatch:
    """One batch of packed rows: positions restart at 0 for each example (see module docstring)."""
    joined = [SFTExample([t for e in r for t in e.ids], [c for e in r for c in e.completion]) for r in rows]
    batch = pad_batch(joined, pad_id)
    pos = torch.zeros_like(batch.input_ids)
    for i, r in enumerate(rows):
        at = 0
        for e in r:
            pos[i, at:at + len(e)] = torch.arange(len(e))
            at += len(e)
    batch.position_ids = pos
    return batch


class SFTSchedule:
    """Which examples form step ``s``: epoch-wise seeded shuffles, so a resumed run sees the same data.

    Without packing a step is ``batch_size`` examples; with packing it is ``batch_size`` packed rows
    of ``max_length`` tokens (rows built once per epoch from that epoch's order).
    """

    def __init__(self, examples: list[SFTExample], batch_size: int, seed: int, packing: bool = False,
                 max_length: int = 0):
        if packing and max_length <= 0:
            raise NanoseekError("sft.packing needs sft.max_length > 0 (the row length)")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.packing, self.max_length = packing, max_length
        self._epoch_cache: dict[int, list] = {}
        self.steps_per_epoch = math.ceil(len(self._units(0)) / batch_size)

    def _units(self, epoch: int) -> list:
        if epoch not in self._epoch_cache:
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            ordered = [self.examples[i] for i in order]
            self._epoch_cache = {epoch: pack_rows(ordered, self.max_length) if self.packing else ordered}
        return self._epoch_cache[epoch]

    def batch(self, step: int, pad_id: int) -> SFTBatch:
        """The batch of optimizer step ``step`` (0-based, across epochs), padded with ``pad_id``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        units = self._units(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        return packed_batch(units, pad_id) if self.packing else pad_batch(units, pad_id)
