"""Forward time of one DeepSeekMoE layer with 64 vs 8 routed experts (same expert width, top-6).

The work is the same N·k expert-rows either way; only the per-expert bookkeeping and the distinct
expert weights read grow. At inference on the CPU in float32 the routed experts run in one C kernel
call (``nanoseek.model.cpu_kernels.routed_experts``; ``NANOSEEK_CPU_KERNELS=0`` for the
``grouped_mm`` path). Target: 64 experts ≤ 1.5× the 8-expert time at 2048 tokens.

    python bench/bench_moe.py [--threads 2] [--reps 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from nanoseek.model import ModelConfig
from nanoseek.model.moe import MoE


def layer(n_experts: int) -> MoE:
    cfg = ModelConfig.tiny(hidden_size=512, moe_intermediate_size=128, n_routed_experts=n_experts,
                           num_experts_per_tok=6, n_group=1, topk_group=1, n_shared_experts=2)
    torch.manual_seed(0)
    moe = MoE(cfg).eval()
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.02)
    return moe


def time_forward(moe: MoE, tokens: int, reps: int) -> float:
    x = torch.randn(1, tokens, 512)
    with torch.inference_mode():
        for _ in range(3):
            moe(x)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            moe(x)
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers = {e: layer(e) for e in (8, 64)}
    print(f"one MoE layer: hidden 512, expert width 128, top-6, 2 shared; best of {args.reps}, {args.threads} threads")
    for tokens in (16, 2048):
        t8, t64 = (time_forward(layers[e], tokens, args.reps) for e in (8, 64))
        print(f"{tokens:5d} tokens:  8 experts {t8 * 1e3:7.2f} ms   64 experts {t64 * 1e3:7.2f} ms   "
              f"ratio {t64 / t8:.2f}x" + ("  (target <= 1.5x)" if tokens == 2048 else ""))


if __name__ == "__main__":
    main()
