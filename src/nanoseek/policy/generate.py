"""Batched sampling with a KV cache: prefill the left-padded prompts once, then one token per step.

``generate(model, prompts, params, pad_token_id)`` returns one ``Completion`` per prompt;
``stream_generate`` yields the same tokens step by step (the server streams from it).

Reproducibility: every row has its own ``torch.Generator`` (seeded from ``seeds[i]``, else
``params.seed + i``, else drawn from torch's global RNG), and a row's random numbers are drawn only
for that row, so a row's completion does not depend on the other rows of the batch (up to float
rounding of batched matmuls). Finished rows are dropped from the batch (and the cache) as they end.

``model`` is a nanoseek ``DeepseekV3ForCausalLM`` (latent ``MLACache``) or any model with the
transformers calling convention ``model(input_ids, attention_mask=..., position_ids=...,
past_key_values=..., use_cache=True) -> .logits, .past_key_values`` (e.g. the wrapper from
``nanoseek.model.hf``). The prompt is prefilled with the model's forward; each later token goes
through ``nanoseek.model.decode.decode_step``, which takes nanoseek's fast decode path where it
applies and is the plain forward otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from nanoseek.model.decode import decode_step


@dataclass
class SamplingParams:
    """How to sample. ``temperature=0`` is greedy; ``top_p=1`` / ``top_k=0`` turn those filters off.

    ``stop_token_ids``: a row ends when it samples one of these (the token is kept in the
    completion). ``seed``: base seed, row i uses ``seed + i`` unless ``generate`` gets ``seeds``.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")


@dataclass
class Completion:
    """One sampled continuation.

    token_ids: exactly the sampled tokens, the stop token included if one was sampled.
    finish_reason: "stop" (sampled a stop token) or "length" (hit max_new_tokens).
    logprobs: per sampled token, log softmax of the model's raw logits at temperature 1, before any
        top-k / top-p filtering, i.e. log π(token | prefix) of the model itself (what GRPO's π_old is).
    """

    token_ids: list[int]
    finish_reason: str
    logprobs: list[float]


@dataclass
class TokenEvent:
    """A token sampled for prompt ``row`` (index into the ``prompts`` list) at one step;
    ``finish_reason`` is set on the row's last token."""

    row: int
    token_id: int
    logprob: float
    finish_reason: str | None = None


def _make_generators(n: int, params: SamplingParams, seeds: list[int] | None, device) -> list[torch.Generator]:
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"generate: got {len(seeds)} seeds for {n} prompts")
    if seeds is None:
        if params.seed is not None:
            seeds = [params.seed + i for i in range(n)]
        else:
            seeds = torch.randint(0, 2**62, (n,)).tolist()
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on ``logits [N, V]`` float32.

    Returns new ``[N, V]`` logits with the filtered-out tokens at ``-inf`` (softmax gives the
    sampling distribution). Top-p keeps the smallest set of most likely tokens whose mass reaches
    ``params.top_p`` (Holtzman et al. 2020). ``params.temperature`` must be > 0 (greedy decoding
    takes the argmax instead). The one filter used by every sampler: ``generate``,
    ``generate_static`` and the server (``nanoseek.serve.runner.sample_row``).
    """
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        # the nucleus from the k most likely tokens once every row's top-k mass reaches top_p: the
        # same set as a full sort (a token past the k-th has a larger prefix mass than top_p; up to
        # float rounding of the mass at the boundary), without sorting the whole vocabulary (a
        # [16, 32000] sort takes ~25 ms on a CPU, topk(64) ~0.3 ms); a flat distribution (e.g. an
        # untrained model) falls back to the full sort
        probs = logits.softmax(-1)
        V = logits.shape[-1]
        k = min(64, V)
        while True:
            top, idx = probs.topk(k, dim=-1) if k < V else probs.sort(dim=-1, descending=True)
            cum = top.cumsum(-1)
            mass = float(cum[:, -1].min())
            if k == V or mass >= params.top_p:
                break
            # 16x more tokens, unless the mass so far says even that will not reach top_p
            k = min(16 * k, V) if 16 * mass >= params.top_p else V
        drop = cum - top >= params.top_p  # keep the smallest prefix reaching top_p
        kept = logits.gather(1, idx).masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, idx, kept)
    return logits


def _sample(logits: torch.Tensor, params: SamplingParams, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``logits [N, V]``; row j draws only from ``gens[j]``."""
    if params.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, params).softmax(-1)
    return torch.cat([torch.multinomial(probs[j], 1, generator=gens[j]) for j in range(len(gens))])


def _select_cache(cache, rows: torch.Tensor):
    if hasattr(cache, "select"):
        cache.select(rows)
        return cache
    if hasattr(cache, "batch_select_indices"):  # transformers DynamicCache
        cache.batch_select_indices(rows)
        return cache
    raise TypeError(f"cannot drop rows from a {type(cache).__name__}")


@contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch threads inside the block (None: leave as is); restores the previous value."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def stream_generate(model, prompts: list[list[int]], params: SamplingParams, pad_token_id: int,
                    seeds: list[int] | None = None, num_threads: int | None = None) -> Iterator[list[TokenEvent]]:
    """Yield, per decoding step, the ``TokenEvent``s of the rows still running.

    Prompts are left-padded with ``pad_token_id`` (masked out); the prompt is prefilled once and
    then each step feeds one token per running row through the KV cache. ``num_threads``: torch
    threads while computing (restored before each yield); 1 is several times faster for batched
    decoding on a CPU shared with other busy processes, where multi-threaded tiny matmuls stall.
    """
    steps = _stream(model, prompts, params, pad_token_id, seeds)
    while True:
        with torch_threads(num_threads), torch.inference_mode():
            events = next(steps, None)
        if events is None:
            return
        yield events


def _stream(model, prompts, params, pad_token_id, seeds) -> Iterator[list[TokenEvent]]:
    n = len(prompts)
    if n == 0 or params.max_new_tokens == 0:
        return
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    device = next(model.parameters()).device
    gens = _make_generators(n, params, seeds, device)
    stop = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=device)

    P = max(len(p) for p in prompts)
    ids = torch.full((n, P), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(n, P, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
        mask[i, P - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    native = hasattr(model, "new_cache")
    cache = model.new_cache(n, P + params.max_new_tokens) if native else None

    rows = torch.arange(n, device=device)  # prompt index of each running batch row
    next_pos = positions[:, -1] + 1
    out = model(ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    for step in range(params.max_new_tokens):
        logits = out.logits[:, -1].float()
        lse = logits.logsumexp(-1)
        if params.temperature == 0:
            best, tok = logits.max(-1)  # greedy; the first maximum, as argmax
            logp = best - lse
        else:
            tok = _sample(logits, params, [gens[r] for r in rows.tolist()])
            logp = logits.gather(1, tok[:, None])[:, 0] - lse
        is_stop = torch.isin(tok, stop)
        last = step == params.max_new_tokens - 1
        events = []
        for j, (r, t, lp, s) in enumerate(zip(rows.tolist(), tok.tolist(), logp.tolist(), is_stop.tolist())):
            events.append(TokenEvent(r, t, lp, "stop" if s else ("length" if last else None)))
        yield events
        if last:
            return
        keep = ~is_stop
        if not bool(keep.any()):
            return
        if not bool(keep.all()):
            idx = keep.nonzero()[:, 0]
            rows, tok, next_pos, mask = rows[idx], tok[idx], next_pos[idx], mask[idx]
            cache = _select_cache(cache, idx)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        # the fast one-token step (nanoseek.model.decode) where it applies, else the model's forward
        out = decode_step(model, tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                          past_key_values=cache)
        cache = out.past_key_values
        next_pos = next_pos + 1


def generate(model, prompts: list[list[int]], params: SamplingParams, pad_token_id: int,
             seeds: list[int] | None = None, on_token: Callable[[TokenEvent], None] | None = None,
             num_threads: int | None = None) -> list[Completion]:
    """Sample one completion per prompt (batched, left-padded, KV cache); see ``stream_generate``.

    ``prompts``: token id lists; ``seeds``: one per prompt (overrides ``params.seed``);
    ``on_token``: called with every ``TokenEvent`` as it is sampled; ``num_threads``: see
    ``stream_generate``.
    """
    done = [Completion([], "length", []) for _ in prompts]
    for events in stream_generate(model, prompts, params, pad_token_id, seeds, num_threads):
        for ev in events:
            c = done[ev.row]
            c.token_ids.append(ev.token_id)
            c.logprobs.append(ev.logprob)
            if ev.finish_reason:
                c.finish_reason = ev.finish_reason
            if on_token is not None:
                on_token(ev)
    return done
