"""Data-parallel GRPO: the same global batch split over 2 processes (gloo, torch.multiprocessing
spawn) gives the same completions, rewards and update as 1 process."""

import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from nanoseek.rl.distributed import Dist
from nanoseek.rl.trainer import GRPOTrainer
from test_trainer_helpers import ToyTask, even_reward, flat_params, native_policy, qwen_policy, toy_config

STEPS = 2
EXACT = ("reward/mean", "reward/std", "groups/zero_spread", "completion/mean_length", "sampling/rounds",
         "sampling/kept_groups", "data/position")


def _mixed_reward(completions, prompt, completion_ids=None, **_):
    """Even-id share, but a constant for every third prompt (zero spread: dynamic sampling drops it)."""
    even = even_reward(completions, completion_ids=completion_ids)
    return [1.0 if int(p.split()[1]) % 3 == 0 else e for p, e in zip(prompt, even)]


class _MixedTask(ToyTask):
    def reward_funcs(self):
        return {"even": _mixed_reward}


CASES = {
    # transformers policy: fast rollout + shared-prompt scoring; KL, mu = 2, minibatches, accumulation, DAPO
    "qwen": (qwen_policy, _MixedTask, dict(beta=0.04, mu=2, minibatches_per_step=2, grad_accumulation_steps=2,
                                           loss_type="dapo", epsilon_high=0.28, dynamic_sampling=True,
                                           dynamic_sampling_metric="reward")),
    # nanoseek DeepSeek-V3 policy: plain paths; expert loads summed over ranks for the balancing bias
    "native": (native_policy, ToyTask, dict(beta=0.04, expert_bias_update=True, loss_type="grpo")),
}


def _run(name: str, dist: Dist):
    make, task, kw = CASES[name]
    policy = make()
    tr = GRPOTrainer(policy, task(), toy_config(lr=1e-4, grad_clip=0.0, **kw), seed=3, dist=dist)
    metrics = [tr.step(s)[0] for s in range(STEPS)]
    later = tr.collector.collect(STEPS, 0).local  # this rank's groups, by stream position
    return flat_params(policy.model), metrics, {g.pos: [c.token_ids for c in g.completions] for g in later}


def _worker(rank: int, port: int, out: dict):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        dist = Dist(rank, 2)
        res = {name: _run(name, dist) for name in CASES}
        out[rank] = {k: (v[0], v[1], v[2]) for k, v in res.items()}
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one():
    torch.set_num_threads(1)
    single = {name: _run(name, Dist()) for name in CASES}
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
        ranks = {r: out[r] for r in (0, 1)}
    for name in CASES:
        w1, m1, c1 = single[name]
        w0, m0, c0 = ranks[0][name]
        torch.testing.assert_close(w0, ranks[1][name][0], atol=0, rtol=0)  # ranks stay in sync
        torch.testing.assert_close(w0, w1, atol=1e-6, rtol=0)             # same update as one process
        assert {**c0, **ranks[1][name][2]} == c1 and c0 and ranks[1][name][2]  # completions independent of ranks
        for a, b in zip(m0, m1):
            for key in EXACT:
                assert a[key] == b[key], (name, key)
            for key in ("loss", "grad_norm", "kl", "entropy", "clip_ratio/high"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (name, key)
    assert single["qwen"][1][0]["sampling/rounds"] >= 1
