"""Where a decode step's time goes: FastDecoder's step on the bench_generate model, timed part by part.

Prefills ``--batch`` rows of ``--prompt`` random tokens, then runs ``--steps`` decode steps (after 10
untimed ones) through ``FastDecoder``'s own pieces with a timer around each: attention, the dense
FFN, router + shared experts, top-k routing, routed experts, the output head, and the greedy
log-prob math of ``nanoseek.policy.generate``. The sum is the step; "other" is what the timers miss
(embedding, masks, RoPE matrix, residual adds, norms outside attention).

    python bench/bench_decode_step.py [--threads 2] [--batch 16] [--prompt 96] [--steps 40] [--no-kernels]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from bench_generate import CONFIG, bench_model

from nanoseek.model import cpu_kernels
from nanoseek.model.decode import fast_decoder, fast_rms_norm, rope_matrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=96, help="cached tokens before the first timed step")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--no-kernels", action="store_true", help="NANOSEEK_CPU_KERNELS=0: the torch-only path")
    args = ap.parse_args()
    model = bench_model(args.threads, args.no_kernels)
    B, P = args.batch, args.prompt
    spent: dict[str, float] = defaultdict(float)

    def timed(name, f, *a):
        t = time.perf_counter()
        out = f(*a)
        spent[name] += time.perf_counter() - t
        return out

    with torch.inference_mode():
        ids = torch.randint(1, CONFIG["vocab_size"], (B, P))
        cache = model(ids, attention_mask=torch.ones(B, P, dtype=torch.long), past_key_values=model.new_cache(B, P + 64),
                      use_cache=True, logits_to_keep=1).past_key_values
        dec = fast_decoder(model)
        tok = torch.randint(1, CONFIG["vocab_size"], (B,))
        pos = torch.full((B, 1), P)
        real = torch.ones(B, 1, dtype=torch.bool)
        for step in range(10 + args.steps):
            if step == 10:
                spent.clear()
                t0 = time.perf_counter()
            timed("snapshot check", dec.is_current, model)
            past = cache.length
            cache.reserve(1)
            h = dec.embed(tok)
            bias = torch.zeros(B, 1, past + 1)
            bias[:, 0, :past].masked_fill_(~cache.mask[:, :past], float("-inf"))
            cos, sin = dec.rotary(pos)
            rot = rope_matrix(cos[:, 0], sin[:, 0], dec.config.rope_interleave)
            for L in dec.layers:
                h = h + timed("attention", dec._attention, L, fast_rms_norm(h, L.input_norm, dec.kernels), rot, bias, cache)
                x = fast_rms_norm(h, L.post_norm, dec.kernels)
                if L.dense is not None:
                    h = h + timed("dense FFN", L.dense, x)
                    continue
                g = timed("router + shared experts", L.gate_shared, x)
                y = timed("router + shared experts", L.shared.down, g[:, L.moe.n_experts:])
                idx, w = timed("top-k routing", L.moe.gate.select, g[:, : L.moe.n_experts].sigmoid())
                h = h + timed("routed experts", L.moe.routed, x, idx, w) + y
            cache.advance(real)
            logits = timed("output head", dec.logits, fast_rms_norm(h, dec.final_norm, dec.kernels)[:, None])[:, -1]
            best, tok = timed("greedy + log-probs", lambda: logits.max(-1))
            timed("greedy + log-probs", lambda: best - logits.logsumexp(-1))
            pos = pos + 1
        total = time.perf_counter() - t0
    n = args.steps
    kernels = "on" if cpu_kernels.library() is not None else "off"
    print(f"decode step, batch {B}, {P}-{P + n} cached tokens, {args.threads} threads, C kernels {kernels}")
    for name, s in spent.items():
        print(f"  {name:24s} {s / n * 1e3:6.2f} ms")
    print(f"  {'other':24s} {(total - sum(spent.values())) / n * 1e3:6.2f} ms")
    print(f"  {'step':24s} {total / n * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
