"""Generation throughput: nanoseek (latent cache, absorbed MLA, C decode kernels) vs transformers.

A fixed random DeepSeek-V3-shaped model (~133M parameters: hidden 512, 8 layers with the first dense,
16 heads, q_lora_rank 256, kv_lora_rank 128, 64 routed experts of width 128, top-6, 2 shared,
vocab 32000), float32 on CPU. Both engines decode the same batch (16 prompts of 32 tokens, exactly
128 new tokens, greedy) after a warm-up run; the two take turns for ``--repeats`` timed runs and
each keeps its best (the median is printed too). Also prints the memory-bandwidth floor: weight
bytes read per decode step divided by the measured copy bandwidth.

    python bench/bench_generate.py [--threads 2] [--gen-threads 1] [--batch 16] [--new 128] [--repeats 3] [--skip-hf]
                                   [--no-kernels]

nanoseek's decode step runs its routed experts and attention in C kernels compiled on first use
(``nanoseek.model.cpu_kernels``); ``--no-kernels`` measures the torch-only path instead.

On a CPU shared with other busy processes, multi-threaded tiny matmuls stall on descheduled
threads; compare at ``--threads 1`` there (or give nanoseek ``--gen-threads 1``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch

from nanoseek.policy.generate import SamplingParams, generate
from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig, cpu_kernels

CONFIG = dict(
    vocab_size=32000, hidden_size=512, intermediate_size=1536, moe_intermediate_size=128, num_hidden_layers=8,
    first_k_dense_replace=1, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=256, kv_lora_rank=128,
    qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=64, num_experts_per_tok=6,
    n_shared_experts=2, n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True,
    num_nextn_predict_layers=0, max_position_embeddings=4096, initializer_range=0.02,
    bos_token_id=None, eos_token_id=None, pad_token_id=0,
)


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Bytes moved per second (read + write) by a large tensor copy."""
    src = torch.empty(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def weight_bytes_per_step(model: DeepseekV3ForCausalLM, batch: int) -> tuple[float, float]:
    """Bytes of weights a decode step must read: everything but the embedding table (one row per
    token) and the routed experts, plus the expected number of distinct routed experts hit per MoE
    layer by ``batch`` tokens choosing top-k of E uniformly: E·(1 − (1 − k/E)^batch)."""
    c = model.config
    item = model.lm_head.weight.element_size()
    expert = 3 * c.hidden_size * c.moe_intermediate_size * item
    routed = sum(p.numel() for moe in model.moe_layers() for p in moe.experts.parameters()) * item
    dense = model.num_parameters() * item - routed - model.model.embed_tokens.weight.numel() * item
    hit = c.n_routed_experts * (1 - (1 - c.num_experts_per_tok / c.n_routed_experts) ** batch)
    return dense + len(model.moe_layers()) * hit * expert, hit


def bench_model(threads: int, no_kernels: bool = False) -> DeepseekV3ForCausalLM:
    """The benchmark model (``CONFIG``, seed 0, a small non-zero balancing bias as in a trained model)
    on ``threads`` torch threads; ``no_kernels`` turns nanoseek's C decode kernels off first."""
    if no_kernels:
        os.environ["NANOSEEK_CPU_KERNELS"] = "0"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(ModelConfig(**CONFIG)).eval()
    with torch.no_grad():
        for moe in model.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.01)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--gen-threads", type=int, default=None,
                    help="torch threads inside nanoseek's generate (default: --threads)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine, taking turns")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--no-kernels", action="store_true",
                    help="nanoseek without its C decode kernels (NANOSEEK_CPU_KERNELS=0): the torch-only path")
    args = ap.parse_args()
    model = bench_model(args.threads, args.no_kernels)
    kernels = "on" if cpu_kernels.library() is not None else "off"
    print(f"model: {model.num_parameters() / 1e6:.1f}M parameters, float32, {args.threads} threads; "
          f"nanoseek's C decode kernels {kernels}")
    prompts = torch.randint(1, CONFIG["vocab_size"], (args.batch, args.prompt)).tolist()
    params = SamplingParams(max_new_tokens=args.new, temperature=0)
    n_new = args.batch * args.new

    def ours() -> tuple[float, list]:
        t = time.perf_counter()
        outs = generate(model, prompts, params, pad_token_id=0, num_threads=args.gen_threads)
        return time.perf_counter() - t, outs

    generate(model, [p[:8] for p in prompts], SamplingParams(max_new_tokens=8, temperature=0), 0)  # warm-up
    theirs = None
    if not args.skip_hf:
        import transformers

        tmp = tempfile.TemporaryDirectory()  # kept until the end: the loaded weights may map its file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(tmp.name)
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp.name, dtype=torch.float32).eval()
        ids = torch.tensor(prompts)
        kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

        def theirs() -> tuple[float, torch.Tensor]:
            with torch.inference_mode():
                t = time.perf_counter()
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                  min_new_tokens=args.new, **kw)
                return time.perf_counter() - t, out

        with torch.inference_mode():  # warm-up
            hf.generate(ids[:, :8], attention_mask=torch.ones_like(ids[:, :8]), max_new_tokens=8, **kw)

    # the engines take turns, so a change in the machine's load hits both; each keeps its best run
    ours_s, hf_s = [], []
    for _ in range(args.repeats):
        dt, outs = ours()
        ours_s.append(dt)
        if theirs is not None:
            dt, out = theirs()
            hf_s.append(dt)
    assert all(len(o.token_ids) == args.new for o in outs)
    rate = lambda times: n_new / min(times)  # noqa: E731
    print(f"nanoseek:     {rate(ours_s):8.1f} new tokens/s  ({args.batch} x {args.new} new, prompt {args.prompt}, "
          f"greedy; best of {args.repeats}, median {n_new / statistics.median(ours_s):.1f})")
    if theirs is not None:
        assert out.shape[1] == args.prompt + args.new
        same = sum(o.token_ids == out[i, args.prompt:].tolist() for i, o in enumerate(outs))
        print(f"transformers: {rate(hf_s):8.1f} new tokens/s  (same greedy tokens on {same}/{args.batch} rows; "
              f"best of {args.repeats}, median {n_new / statistics.median(hf_s):.1f})")
        print(f"ratio nanoseek / transformers: {rate(ours_s) / rate(hf_s):.2f}x best, "
              f"{statistics.median(hf_s) / statistics.median(ours_s):.2f}x median  (target >= 2x)")

    wbytes, hit = weight_bytes_per_step(model, args.batch)
    bw = copy_bandwidth()
    floor = wbytes / bw
    step = min(ours_s) / args.new
    print(f"bandwidth floor: {wbytes / 1e6:.0f} MB of weights per step ({hit:.1f} of "
          f"{CONFIG['n_routed_experts']} experts hit per layer) / {bw / 1e9:.1f} GB/s copy bandwidth = "
          f"{floor * 1e3:.1f} ms/step -> at most {args.batch / floor:.0f} tokens/s; nanoseek takes "
          f"{step * 1e3:.1f} ms/step ({step / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
