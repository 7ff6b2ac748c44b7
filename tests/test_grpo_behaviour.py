"""Behaviour: a few GRPO steps on a toy reward raise that reward (pure functions + a tiny policy)."""

import pytest
import torch

from nanoseek.rl import completion_mask, group_advantages, grpo_loss, token_logprobs


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_steps_raise_toy_reward(loss_type):
    torch.manual_seed(0)
    V, T, N, G = 5, 4, 4, 8
    logits = torch.zeros(T, V, requires_grad=True)  # a position-wise policy, no prompt
    opt = torch.optim.Adam([logits], lr=0.1)
    scale = "none" if loss_type == "dr_grpo" else "std"

    def rollout():
        with torch.no_grad():
            probs = torch.softmax(logits, -1).expand(N * G, T, V)
            tokens = torch.distributions.Categorical(probs=probs).sample()  # (N*G, T)
        lengths = torch.randint(1, T + 1, (N * G,))
        mask = completion_mask(lengths, T)
        reward = ((tokens == 3) & mask).sum(1).float() / lengths  # share of token 3
        return tokens, mask, reward

    start = torch.softmax(logits, -1)[:, 3].mean().item()
    for _ in range(15):
        tokens, mask, reward = rollout()
        adv = group_advantages(reward, G, scale=scale)
        old = None
        for _ in range(2):  # mu = 2 inner updates: the second one is off-policy and clipped
            logp = token_logprobs(logits.expand(N * G, T, V), tokens)
            old = logp.detach() if old is None else old
            loss, metrics = grpo_loss(logp, old, adv, mask, loss_type=loss_type)
            opt.zero_grad()
            loss.backward()
            opt.step()
    end = torch.softmax(logits, -1)[:, 3].mean().item()
    assert end > start + 0.3, (start, end)
