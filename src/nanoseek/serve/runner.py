"""Per-step model execution for the serving engine: prefill, one decode step, and the batch surgery
that continuous batching needs (drop finished rows, merge newly prefilled rows into the running batch).

Continuous ("iteration-level") batching: the batch is re-formed at every decoding step, so a request
that arrives while others are generating joins them at the next step instead of waiting for the
whole batch to finish (Yu et al., "Orca", OSDI 2022; vLLM does the same).  Here the running batch is
one left-padded KV cache: merging a prefilled group left-pads the shorter cache with masked slots
(positions come from each row's own count of real tokens, so padding changes nothing but cost), and
after rows leave, columns that no remaining row uses are trimmed from the left.

Two caches are handled:

* nanoseek's ``MLACache`` (latent ``c^KV`` and ``k^R`` per layer, ``[B, S, .]``; V3 §2.1.1);
* transformers' ``DynamicCache`` with plain ``DynamicLayer``s (``keys``/``values`` ``[B, H, S, D]``).

The calling convention is the one of ``nanoseek.policy.generate.stream_generate`` (``attention_mask`` over
all cached + new positions, explicit ``position_ids``), which both model kinds accept.

``ScriptedRunner`` has the same interface but emits chosen tokens (one-hot logits); protocol tests
and demos drive the whole server with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from nanoseek.model.decode import decode_step
from nanoseek.policy.generate import SamplingParams, filter_logits

HEADROOM = 64  # spare cache slots allocated on a merge (MLACache grows by doubling past that)


@dataclass
class BatchState:
    """The running batch: the model's cache, ``mask [B, S]`` (True = real token) over the cached
    positions and ``pos [B]``, the RoPE position of each row's next token."""

    cache: object
    mask: torch.Tensor
    pos: torch.Tensor

    @property
    def size(self) -> int:
        return self.mask.shape[0]


class ModelRunner:
    """Runs a causal LM one step at a time over a ``BatchState``.

    Args:
        model: nanoseek ``DeepseekV3ForCausalLM`` or a transformers causal LM.
        pad_id: the id placed in left-padding slots (masked, so any valid id works).
    """

    def __init__(self, model, pad_id: int) -> None:
        self.model = model.eval()
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.native = hasattr(model, "new_cache")
        cfg = getattr(model, "config", None)
        self.vocab_size = getattr(cfg, "vocab_size", None)
        self.can_join = True  # False for caches we cannot merge (then new requests wait for an idle batch)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> tuple[BatchState, torch.Tensor]:
        """Prefill left-padded prompts; returns the state and next-token logits ``[B, V]`` float32."""
        B, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(B, P, dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, P - len(p):] = True
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        cache = self.model.new_cache(B, P + HEADROOM) if self.native else None
        out = self.model(ids, attention_mask=mask.long(), position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        self.can_join = hasattr(cache, "select") or _is_plain_dynamic(cache)
        return BatchState(cache, mask, mask.sum(1)), out.logits[:, -1].float()

    @torch.inference_mode()
    def decode(self, state: BatchState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``tokens [B]``); returns next-token logits ``[B, V]`` float32."""
        mask = torch.cat([state.mask, state.mask.new_ones(state.size, 1)], dim=1)
        # the fast one-token step (nanoseek.model.decode) where it applies, else the model's forward
        out = decode_step(self.model, tokens.to(self.device)[:, None], attention_mask=mask.long(),
                          position_ids=state.pos[:, None], past_key_values=state.cache)
        state.cache, state.mask, state.pos = out.past_key_values, mask, state.pos + 1
        return out.logits[:, -1].float()

    def select(self, state: BatchState, rows: list[int]) -> BatchState:
        """Keep batch rows ``rows`` (repeats allowed: ``n`` choices share one prefill), then trim
        left columns no remaining row uses."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        c = state.cache
        if hasattr(c, "select"):  # MLACache
            c.select(idx)
        elif _is_plain_dynamic(c):
            for layer in c.layers:
                layer.keys, layer.values = layer.keys[idx], layer.values[idx]
        else:  # another transformers cache: it can drop rows, but is not trimmed or merged
            c.batch_select_indices(idx)
            return BatchState(c, state.mask[idx], state.pos[idx])
        state = BatchState(c, state.mask[idx], state.pos[idx])
        used = state.mask.any(0)
        k = int(used.long().argmax()) if bool(used.any()) else state.mask.shape[1]
        if k > 0:
            _trim_left(state, k)
        return state

    def merge(self, a: BatchState, b: BatchState) -> BatchState:
        """Append the rows of ``b`` to ``a``, left-padding the shorter cache with masked slots."""
        S = max(a.mask.shape[1], b.mask.shape[1])
        mask = torch.cat([_pad_left(a.mask, S, 1), _pad_left(b.mask, S, 1)])
        pos = torch.cat([a.pos, b.pos])
        ca, cb = a.cache, b.cache
        if hasattr(ca, "select"):  # MLACache: rebuild with room to grow
            return BatchState(type(ca).merge(ca, cb, HEADROOM), mask, pos)
        for la, lb in zip(_dynamic_layers(ca), _dynamic_layers(cb)):
            la.keys = torch.cat([_pad_left(la.keys, S, 2), _pad_left(lb.keys, S, 2)])
            la.values = torch.cat([_pad_left(la.values, S, 2), _pad_left(lb.values, S, 2)])
        return BatchState(ca, mask, pos)


def _is_plain_dynamic(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _dynamic_layers(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        raise TypeError(f"continuous batching supports MLACache and DynamicCache(DynamicLayer), not {type(cache).__name__}")
    return layers


def _pad_left(t: torch.Tensor, S: int, dim: int) -> torch.Tensor:
    """``t`` with zeros (False) prepended along ``dim`` up to length ``S``."""
    n = S - t.shape[dim]
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _trim_left(state: BatchState, k: int) -> None:
    """Drop the first ``k`` cached columns (unused by every row) in place."""
    c = state.cache
    state.mask = state.mask[:, k:]
    if hasattr(c, "select"):
        c.trim_left(k)
    else:
        for layer in _dynamic_layers(c):
            layer.keys, layer.values = layer.keys[:, :, k:], layer.values[:, :, k:]


def sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from ``logits [V]``: greedy at temperature 0, else temperature + top-p sampling with
    the same filter as training and evaluation (``nanoseek.policy.generate``), drawing only from this row's
    ``generator`` (so a seeded choice does not depend on the rest of the batch)."""
    if temperature == 0:
        return int(logits.argmax())
    params = SamplingParams(temperature=temperature, top_p=top_p)
    probs = filter_logits(logits[None], params).softmax(-1)[0]
    return int(torch.multinomial(probs, 1, generator=generator))


class ScriptedRunner:
    """A stand-in model that emits chosen tokens: ``script(prompt_ids) -> token ids`` (then ``eos_id``
    forever). Logits are one-hot (100 on the scripted token), so any sampling settings pick it.
    ``step_delay`` seconds of sleep per step imitate a slow model (cancellation, batching tests).
    """

    native = False

    def __init__(self, script: Callable[[list[int]], list[int]], vocab_size: int, eos_id: int,
                 step_delay: float = 0.0) -> None:
        self.script, self.vocab_size, self.eos_id, self.step_delay = script, vocab_size, eos_id, step_delay
        self.steps = 0  # decode steps run (tests read it)
        self.max_batch_seen = 0

    def _logits(self, rows: list[tuple[list[int], int]]) -> torch.Tensor:
        out = torch.zeros(len(rows), self.vocab_size)
        for i, (toks, p) in enumerate(rows):
            out[i, toks[p] if p < len(toks) else self.eos_id] = 100.0
        return out

    def prefill(self, prompts: list[list[int]]) -> tuple[BatchState, torch.Tensor]:
        rows = [(list(self.script(p)), 0) for p in prompts]
        mask = torch.ones(len(prompts), 1, dtype=torch.bool)
        return BatchState(rows, mask, torch.zeros(len(prompts), dtype=torch.long)), self._logits(rows)

    def decode(self, state: BatchState, tokens: torch.Tensor) -> torch.Tensor:
        if self.step_delay:
            time.sleep(self.step_delay)
        self.steps += 1
        self.max_batch_seen = max(self.max_batch_seen, state.size)
        state.cache = [(toks, p + 1) for toks, p in state.cache]
        return self._logits(state.cache)

    def select(self, state: BatchState, rows: list[int]) -> BatchState:
        return BatchState([state.cache[r] for r in rows], state.mask[rows], state.pos[rows])

    def merge(self, a: BatchState, b: BatchState) -> BatchState:
        return BatchState(a.cache + b.cache, torch.cat([a.mask, b.mask]), torch.cat([a.pos, b.pos]))
