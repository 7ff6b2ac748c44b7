"""One GRPO step, nanoseek vs TRL 1.16's ``GRPOTrainer``, on the same work in one process.

The work: a random Qwen2 ``transformers`` model (hidden 256, 4 layers, 4 heads / 2 KV heads,
MLP 512, nanoseek's 263-token byte-level vocabulary), float32, 8 chain-task prompts x group 8,
exactly 64 new tokens per completion (EOS suppressed on both sides: nanoseek's sampler suppresses
it, TRL gets ``min_new_tokens = 64``), rewards accuracy + 0.5 format, beta 0.04 (both sides run the
reference model), loss ``grpo``, one update per batch, learning rate 1e-6. Each side runs 2 warm-up
steps, then 10 timed steps; medians are printed with nanoseek's split into rollout / reward /
update.

The float32 floor is the work's matrix-multiply FLOPs over the rate of a large float32 matmul
measured in the same run (before and after, to show how loaded the machine was). "plain" counts
the straightforward work (every completion row runs its prompt: prefill 64 x P, decode 64 x 64,
reference forward and policy forward + backward over 64 x (P + 64)); "shared" counts each distinct
prompt once per group, which is what nanoseek's fast paths do.

    python bench/bench_grpo.py [--threads 1] [--steps 10] [--warmup 2] [--skip-trl]

On a CPU shared with other busy processes use ``--threads 1`` (the default): multi-threaded tiny
matmuls stall on descheduled threads there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch

HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 256, 4, 4, 2, 512
PROMPTS, GROUP, NEW = 8, 8, 64


def build_model(vocab: int, pad: int, eos: int, bos: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=pad, eos_token_id=eos, bos_token_id=bos)
    return Qwen2ForCausalLM(cfg)


def matmul_rate(reps: int = 5) -> float:
    """float32 FLOP/s of a [4096, 256] x [256, 512] matmul (the shapes of this work), best of ``reps``."""
    x, w = torch.randn(4096, HIDDEN), torch.randn(MLP, HIDDEN)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(5):
            x @ w.T
        best = min(best, (time.perf_counter() - t) / 5)
    return 2 * 4096 * HIDDEN * MLP / best


def work_flops(prompt_lens: list[int]) -> dict[str, float]:
    """Matrix-multiply FLOPs of one step, "plain" and "shared" (see the module docstring)."""
    kv = HIDDEN // HEADS * KV_HEADS
    linear = LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * kv + 3 * HIDDEN * MLP) + HIDDEN * 263  # + lm_head
    d = HIDDEN

    def fwd(tokens: int, ctx_sum: float) -> float:  # linear layers + q.k and p.v over the attended keys
        return 2 * linear * tokens + 4 * LAYERS * d * ctx_sum

    def seq(p: int, c: int) -> tuple[int, float]:
        return p + c, (p + c) * (p + c + 1) / 2

    plain = shared = 0.0
    for p in prompt_lens:
        t, ctx = seq(p, NEW)
        tp, ctxp = seq(p, 0)
        dec_ctx = sum(p + i + 1 for i in range(NEW))
        rollout_plain = GROUP * (fwd(tp, ctxp) + fwd(NEW, dec_ctx))
        rollout_shared = fwd(tp, ctxp) + GROUP * fwd(NEW, dec_ctx)
        score_plain = GROUP * fwd(t, ctx)
        score_shared = fwd(tp, ctxp) + GROUP * fwd(NEW, dec_ctx)
        plain += rollout_plain + 4 * score_plain    # reference forward + policy forward + backward (2x)
        shared += rollout_shared + 4 * score_shared
    return {"plain": plain, "shared": shared}


def chain_data(n: int):
    from nanoseek.tasks import get_task
    from nanoseek.tokenizer import build_tokenizer, render_prompt

    tok = build_tokenizer()
    task = get_task("chain")
    examples = task.examples("train")[:n]
    return tok, task, examples, [render_prompt(tok, e.prompt) for e in examples]


class ListTask:
    """The chain task's rewards over a fixed list of examples."""

    name = "bench"

    def __init__(self, task, examples):
        self.task, self._examples = task, examples

    def examples(self, split):
        return self._examples

    def reward_funcs(self):
        return self.task.reward_funcs()


def run_nanoseek(hf, tok, task, examples, steps: int, warmup: int) -> list[dict]:
    from nanoseek.rl.config import GRPOConfig
    from nanoseek.model.hf import TransformersLM
    from nanoseek.policy.policy import Policy
    from nanoseek.rl.trainer import GRPOTrainer

    policy = Policy(TransformersLM(hf), tok)
    cfg = GRPOConfig(steps=steps + warmup, prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=NEW, beta=0.04,
                     loss_type="grpo", mu=1, lr=1e-6, temperature=1.0, reward_weights={"accuracy": 1.0, "format": 0.5})
    tr = GRPOTrainer(policy, ListTask(task, examples), cfg, seed=0)
    tr.alarms.enabled = False
    tr.collector.suppress_token_ids = list(policy.stop_ids)  # exactly NEW tokens, as on the TRL side
    out = []
    for s in range(steps + warmup):
        t = time.perf_counter()
        m, _ = tr.step(s)
        m["step_time"] = time.perf_counter() - t
        assert m["completion/min_length"] == NEW, m["completion/min_length"]
        out.append(m)
    return out[warmup:]


def run_trl(hf, tok, task, examples, texts, steps: int, warmup: int) -> list[float]:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from nanoseek.rewards import rules as rewards

    def accuracy(completions, answer, **_):
        return rewards.accuracy_reward(completions, answer, think_prefilled=True)

    def fmt(completions, **_):
        return rewards.format_reward(completions, think_prefilled=True)

    times: list[float] = []
    threads: set[int] = set()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            threads.add(torch.get_num_threads())
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        hf.save_pretrained(f"{out}/model")  # TRL builds its reference model from the policy's path
        tok.save_pretrained(f"{out}/model")
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                          max_completion_length=NEW, beta=0.04, loss_type="grpo", num_iterations=1, learning_rate=1e-6,
                          temperature=1.0, top_p=1.0, use_cpu=True, bf16=False, fp16=False, report_to=[],
                          logging_strategy="no", save_strategy="no", disable_tqdm=True, max_steps=steps + warmup,
                          reward_weights=[1.0, 0.5], generation_kwargs={"min_new_tokens": NEW}, seed=0,
                          dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32})
        ds = datasets.Dataset.from_dict({"prompt": texts, "answer": [e.answer for e in examples]})
        tr = GRPOTrainer(model=f"{out}/model", reward_funcs=[accuracy, fmt], args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[Timer()])
        tr.train()
    assert threads == {torch.get_num_threads()}, threads  # TRL ran with the same thread count
    return times[warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--skip-trl", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("NANOSEEK_QUIET", "1")
    n = PROMPTS * (args.steps + args.warmup)
    tok, task, examples, texts = chain_data(n)
    lens = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    print(f"work: Qwen2 hidden {HIDDEN}, {LAYERS} layers, MLP {MLP}, vocab {len(tok)}, float32, {args.threads} thread(s); "
          f"{PROMPTS} prompts x {GROUP} completions x {NEW} new tokens; prompts {min(lens)}-{max(lens)} tokens")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rate0 = matmul_rate()

    hf = build_model(len(tok), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    ns = run_nanoseek(hf, tok, task, examples, args.steps, args.warmup)
    t_ns = statistics.median(m["step_time"] for m in ns)
    split = {k: statistics.median(m[f"time/{k}"] for m in ns) for k in ("rollout", "reward", "update")}
    print(f"nanoseek step: median {t_ns:.3f} s  (rollout {split['rollout']:.3f} s, reward {split['reward']:.3f} s, "
          f"update {split['update']:.3f} s)")

    t_trl = None
    if not args.skip_trl:
        hf = build_model(len(tok), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)  # the same initial weights
        trl_times = run_trl(hf, tok, task, examples, texts, args.steps, args.warmup)
        t_trl = statistics.median(trl_times)
        print(f"TRL step:      median {t_trl:.3f} s")
    rate1 = matmul_rate()
    rate = max(rate0, rate1)
    mean_len = sum(lens[: PROMPTS * args.warmup + PROMPTS * args.steps]) / len(lens)
    fl = work_flops([round(mean_len)] * PROMPTS)
    print(f"matmul rate: {rate0 / 1e9:.0f} GFLOP/s before, {rate1 / 1e9:.0f} GFLOP/s after; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"float32 floor: plain {fl['plain'] / rate:.3f} s ({fl['plain'] / 1e9:.0f} GFLOP), "
          f"shared-prompt {fl['shared'] / rate:.3f} s ({fl['shared'] / 1e9:.0f} GFLOP)")
    if t_trl:
        print(f"ratio nanoseek / TRL: {t_ns / t_trl:.2f}  (target <= 0.6)")


if __name__ == "__main__":
    main()
