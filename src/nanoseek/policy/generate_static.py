"""Fast batched sampling for Llama-family ``transformers`` models: a static KV cache, shared
prompts, and a decode loop written over the model's own modules (``nanoseek.model.hf_fast``).

``transformers``' ``generate`` (and ``nanoseek.policy.generate`` over ``TransformersLM``) re-runs every
prompt once per completion and pays Python per decoding step in mask building, cache bookkeeping
and output objects. Here:

* each distinct prompt is prefilled once and its keys/values are copied into the rows of its
  completions (a GRPO group of G shares one prompt: G times less prefill);
* the cache is preallocated ``(B, Hkv, P + max_new_tokens, d)`` per layer and written in place;
* each step runs ``FastLM.layers`` on one token per row (the same modules and weights as the HF
  forward) and samples all rows in one batched call.

Supported: ``model_type`` in ``nanoseek.model.hf_fast.SUPPORTED`` (Llama, Mistral, Qwen2, Qwen3
without sliding windows); anything else goes through ``nanoseek.policy.generate`` (the plain version,
which this one is tested against in ``tests/test_trainer_fast.py``: same greedy tokens, log-probs
to 1e-5). Positions follow nanoseek's convention for left padding (``cumsum(mask) - 1``), the one
``TransformersLM.forward`` uses for scoring.

Sampling is batched and still row-independent: each row draws its ``max_new_tokens`` uniforms up
front from its own ``torch.Generator`` (seeded per row), and token ``t`` of a row is the inverse
CDF of its filtered distribution at its ``t``-th uniform. A row's completion therefore depends only
on its prompt and seed, never on the other rows or the number of processes (up to float rounding
of batched matmuls). The draws differ from ``nanoseek.policy.generate``'s ``torch.multinomial`` ones
(same distribution, other random numbers). Finished rows are dropped from the batch once a quarter
of it has finished.
"""

from __future__ import annotations

from typing import Callable

import torch

from nanoseek.policy.generate import Completion, SamplingParams, filter_logits
from nanoseek.model.hf_fast import FastLM, base_lm, supports

__all__ = ["generate_static", "supports"]


def _uniforms(n: int, steps: int, params: SamplingParams, seeds: list[int] | None, device) -> torch.Tensor:
    """``[n, steps]`` uniforms; row ``i`` comes from its own generator seeded ``seeds[i]``."""
    if seeds is None:
        seeds = [params.seed + i for i in range(n)] if params.seed is not None else torch.randint(0, 2**62, (n,)).tolist()
    if len(seeds) != n:
        raise ValueError(f"generate: got {len(seeds)} seeds for {n} prompts")
    rows = []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(s))
        rows.append(torch.rand(steps, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(device)


def _sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row of ``logits [N, V]`` at uniforms ``u [N]`` (float64)."""
    if params.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits, params).softmax(-1).double()
    cdf = probs.cumsum(-1)                                                 # (N, V)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    # never pick a zero-probability token (rounding at the top end of the CDF)
    tok = tok.clamp_max(logits.shape[-1] - 1)
    bad = probs.gather(1, tok[:, None])[:, 0] == 0
    if bool(bad.any()):
        tok = torch.where(bad, probs.argmax(-1), tok)
    return tok


@torch.inference_mode()
def generate_static(model, prompts: list[list[int]], params: SamplingParams, pad_token_id: int,
                    seeds: list[int] | None = None, suppress_token_ids: list[int] | None = None,
                    stop_check: Callable[[int, list[int]], bool] | None = None) -> list[Completion]:
    """Sample one completion per prompt with the static-cache loop (see the module docstring).

    Args:
        model: a ``TransformersLM`` (or bare ``transformers`` LM) for which :func:`supports` is True.
        prompts: token id lists (left-padded here). ``params``: as in ``nanoseek.policy.generate``.
        seeds: one per prompt (else ``params.seed + i``, else random).
        suppress_token_ids: ids whose logits are set to -inf before sampling (e.g. EOS, to force
            exactly ``max_new_tokens`` tokens in a benchmark).
        stop_check: ``stop_check(row, token_ids) -> bool`` called after each sampled token that is
            not a stop token (e.g. to end a row on a stop string); True ends the row as "stop".

    Returns one ``Completion`` per prompt (token ids, "stop"/"length", log π(token) at temperature 1).
    """
    n = len(prompts)
    if n == 0 or params.max_new_tokens == 0:
        return [Completion([], "length", []) for _ in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    hf = base_lm(model)
    was_training = hf.training
    hf.eval()
    try:
        return _run(hf, prompts, params, pad_token_id, seeds, suppress_token_ids, stop_check)
    finally:
        hf.train(was_training)


def _run(hf, prompts, params, pad_token_id, seeds, suppress, stop_check) -> list[Completion]:
    device = hf.lm_head.weight.device
    fast = FastLM(hf)
    n, N = len(prompts), params.max_new_tokens
    # each distinct prompt is prefilled once; its rows copy its keys/values (GRPO groups share one)
    uniq: dict[tuple, int] = {}
    group = torch.tensor([uniq.setdefault(tuple(p), len(uniq)) for p in prompts], device=device)
    distinct = list(uniq)
    P = max(len(p) for p in distinct)
    S = P + N
    u = _uniforms(n, N, params, seeds, device)                             # (n, N)
    stop = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=device)
    ids = torch.full((len(distinct), P), pad_token_id, dtype=torch.long, device=device)
    pmask = torch.zeros(len(distinct), P, dtype=torch.long, device=device)
    for i, p in enumerate(distinct):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
        pmask[i, P - len(p):] = 1
    kv, last = fast.prompt_states(ids, pmask)
    w = hf.lm_head.weight
    cache_k = [torch.zeros(n, fast.Hkv, S, fast.d, dtype=w.dtype, device=device) for _ in kv]
    cache_v = [torch.zeros(n, fast.Hkv, S, fast.d, dtype=w.dtype, device=device) for _ in kv]
    for i, (k, v) in enumerate(kv):
        cache_k[i][:, :, :P] = k.index_select(0, group)
        cache_v[i][:, :, :P] = v.index_select(0, group)
    del kv
    real = torch.zeros(n, S, dtype=torch.bool, device=device)              # key columns holding real tokens
    real[:, :P] = pmask.bool().index_select(0, group)
    logits = fast.logits(last.index_select(0, group))                      # (n, V)
    next_pos = real.sum(1)                                                 # position of the first new token
    rows = torch.arange(n, device=device)                                  # prompt index of each batch row
    alive = torch.ones(n, dtype=torch.bool, device=device)                 # batch rows still sampling
    out_ids: list[list[int]] = [[] for _ in range(n)]
    out_lp: list[list[float]] = [[] for _ in range(n)]
    finish = ["length"] * n
    sup = torch.tensor(suppress, dtype=torch.long, device=device) if suppress else None
    for t in range(N):
        if sup is not None:
            logits = logits.index_fill(1, sup, float("-inf"))
        tok = _sample(logits, params, u[rows, t])
        lp = logits.log_softmax(-1).gather(1, tok[:, None])[:, 0]
        ended = torch.isin(tok, stop)
        for j, (r, a, tk, l, e) in enumerate(zip(rows.tolist(), alive.tolist(), tok.tolist(), lp.tolist(),
                                                 ended.tolist())):
            if not a:
                continue
            out_ids[r].append(tk)
            out_lp[r].append(l)
            if e or (stop_check is not None and stop_check(r, out_ids[r])):
                finish[r] = "stop"
                alive[j] = False
        if t == N - 1 or not bool(alive.any()):
            break
        col = P + t
        real[rows, col] = True
        if int(alive.sum()) * 4 <= 3 * len(rows):  # compact once a quarter of the batch is done
            keep = alive.nonzero()[:, 0]
            rows, tok, next_pos, alive = rows[keep], tok[keep], next_pos[keep], alive[keep]
            cache_k = [c.index_select(0, keep) for c in cache_k]
            cache_v = [c.index_select(0, keep) for c in cache_v]
        mask = real.index_select(0, rows)[:, None, None, :col + 1]         # (B, 1, 1, col+1)

        def write(i, k, v, col=col):
            cache_k[i][:, :, col:col + 1] = k
            cache_v[i][:, :, col:col + 1] = v
            return cache_k[i][:, :, :col + 1], cache_v[i][:, :, :col + 1]

        logits = fast.logits(fast.layers(tok[:, None], next_pos[:, None], mask, write)[:, -1])
        next_pos = next_pos + 1
    return [Completion(out_ids[i], finish[i], out_lp[i]) for i in range(n)]
