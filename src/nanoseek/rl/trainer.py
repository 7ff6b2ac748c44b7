"""The GRPO step loop: rollout, rewards, group-relative advantages, clipped policy update.

One step (DeepSeek-R1 sec. 2.2.1; DeepSeekMath sec. 4.1): take ``prompts_per_step`` prompts from
the task's train split; sample ``group_size`` completions for each with the current policy; score
each completion with the task's rule-based reward functions, weighted by ``reward_weights``; turn
rewards into group-relative advantages; take ``mu`` gradient steps on the GRPO loss (``mu > 1``
uses the rollout policy's log-probs as the old policy); log health metrics.

The loss value itself says little about progress (its advantages are zero-mean per group): read
the reward, held-out accuracy and completion length instead.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import torch

from nanoseek import NanoseekError
from nanoseek.config import GRPOConfig
from nanoseek.evaluate import sample_seed, think_text
from nanoseek.generation import SamplingParams
from nanoseek.policy import Policy, build_batch
from nanoseek.pretrain import lr_at
from nanoseek.rl import completion_mask, group_advantages, grpo_loss, token_entropy, token_logprobs


@dataclass
class TrainerState:
    """What a checkpoint needs besides the weights: the step and the optimizer (RNG states are
    saved by the checkpoint code)."""

    step: int = 0
    extra: dict = field(default_factory=dict)


class GRPOTrainer:
    """Runs GRPO steps on a ``Policy`` for a ``Task``.

    Args:
        policy: the policy to train (its model's parameters are optimised in place).
        task: the task whose ``train`` split gives prompts and whose reward functions score them.
        cfg: ``GRPOConfig``.
        seed: run seed; prompt order and every rollout's sampling seed derive from it, so a step's
            rollouts depend only on (seed, step), not on batch layout or resumption.
        ref_model: frozen reference for the KL term; None with ``beta > 0`` copies the policy.
    """

    def __init__(self, policy: Policy, task, cfg: GRPOConfig, seed: int = 0, ref_model=None):
        self.policy, self.task, self.cfg, self.seed = policy, task, cfg, seed
        from nanoseek.rewards import combine_rewards

        self.reward_fn = combine_rewards(cfg.reward_weights, task=task)
        self.train_examples = task.examples("train")
        if not self.train_examples:
            raise NanoseekError(f"task {task.name!r} has no train examples")
        self.prompt_ids_cache: dict[int, list[int]] = {}
        self.order = list(range(len(self.train_examples)))
        random.Random(seed).shuffle(self.order)
        model = policy.model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        self.ref_model = None
        if cfg.beta > 0:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.eval().requires_grad_(False)
        self.state = TrainerState()

    # -- data ---------------------------------------------------------------------------------
    def prompts_for_step(self, step: int) -> list[int]:
        """Indices (into the train examples) of the prompts of ``step``; the data position is
        ``step * prompts_per_step`` in a seeded permutation, re-shuffled each epoch."""
        n = self.cfg.prompts_per_step
        out = []
        for k in range(step * n, (step + 1) * n):
            epoch, pos = divmod(k, len(self.order))
            if epoch == 0:
                out.append(self.order[pos])
            else:
                perm = list(range(len(self.order)))
                random.Random(self.seed * 7919 + epoch).shuffle(perm)
                out.append(perm[pos])
        return out

    def _prompt_ids(self, idx: int) -> list[int]:
        if idx not in self.prompt_ids_cache:
            self.prompt_ids_cache[idx] = self.policy.encode_prompts([self.train_examples[idx].prompt])[0]
        return self.prompt_ids_cache[idx]

    # -- one step -----------------------------------------------------------------------------
    def step(self, step: int) -> tuple[dict, list[dict]]:
        """Run GRPO step ``step`` (0-based). Returns ``(metrics, sample_records)``."""
        cfg, policy, G = self.cfg, self.policy, self.cfg.group_size
        t0 = time.perf_counter()
        idxs = self.prompts_for_step(step)
        examples = [self.train_examples[i] for i in idxs for _ in range(G)]
        prompt_ids = [self._prompt_ids(i) for i in idxs for _ in range(G)]
        seeds = [sample_seed(self.seed * 1_000_003 + step, i, j) for i in idxs for j in range(G)]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                stop_token_ids=list(policy.stop_ids))
        comps = policy.generate(prompt_ids, params, seeds=seeds)
        texts = [policy.decode(c.token_ids) for c in comps]
        t_rollout = time.perf_counter()

        columns: dict[str, list] = {}
        for e in examples:
            for k, v in e.columns().items():
                columns.setdefault(k, []).append(v)
        columns["completion_ids"] = [c.token_ids for c in comps]
        per_func = self.reward_fn.parts(texts, think_prefilled=policy.think_prefilled, **columns)
        for name, vals in per_func.items():
            if len(vals) != len(texts):
                raise RuntimeError(f"reward {name} returned {len(vals)} values for {len(texts)} completions")
        combined = self.reward_fn.combine(per_func)
        valid = [v is not None for v in combined]
        total = [0.0 if v is None else float(v) for v in combined]
        rewards_t = torch.tensor(total, dtype=torch.float32)
        valid_t = torch.tensor(valid)
        adv = group_advantages(rewards_t, G, scale=cfg.scale_rewards, valid=valid_t)
        t_reward = time.perf_counter()

        batch = build_batch(prompt_ids, [c.token_ids for c in comps], policy.pad_id)
        lengths = torch.tensor([len(c.token_ids) for c in comps])
        truncated = torch.tensor([c.finish_reason == "length" for c in comps])
        drop = ~valid_t | truncated if cfg.mask_truncated_completions else ~valid_t
        mask = completion_mask(lengths, batch.completion_ids.size(1), drop=drop)
        model = policy.model
        model.train()
        old_logp = ref_logp = None
        with torch.no_grad():
            if cfg.mu > 1:
                old_logp = token_logprobs(policy.completion_logits(batch), batch.completion_ids)
            if self.ref_model is not None:
                out = self.ref_model(batch.input_ids, attention_mask=batch.attention_mask)
                ref_logp = token_logprobs(out.logits[:, batch.prompt_len - 1:-1].float(), batch.completion_ids)
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss_metrics: dict = {}
        for _ in range(cfg.mu):
            logits = policy.completion_logits(batch)
            logp = token_logprobs(logits, batch.completion_ids)
            loss, lm = grpo_loss(logp, old_logp, adv, mask, ref_logp, loss_type=cfg.loss_type,
                                 epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                                 max_completion_length=cfg.max_new_tokens)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip else torch.tensor(0.0)
            self.optimizer.step()
            loss_metrics = {k: float(v) for k, v in lm.items()}
        with torch.no_grad():
            ent = token_entropy(logits.detach())
            m = mask.float()
            entropy = float((ent * m).sum() / m.sum().clamp(min=1))
        t_update = time.perf_counter()
        if cfg.ref_reset_every and self.ref_model is not None and (step + 1) % cfg.ref_reset_every == 0:
            self.ref_model.load_state_dict(model.state_dict())

        metrics = self._metrics(step, total, valid, per_func, comps, texts, lengths, truncated, loss, loss_metrics,
                                gnorm, lr, entropy, t0, t_rollout, t_reward, t_update)
        samples = [{"step": step + 1, "prompt": examples[k].prompt, "answer": examples[k].answer, "completion": texts[k],
                    "reward": total[k], **{f"reward/{n}": per_func[n][k] for n in per_func}}
                   for k in range(0, min(len(texts), cfg.log_samples * G), G)]
        self.state.step = step + 1
        return metrics, samples

    def _metrics(self, step, total, valid, per_func, comps, texts, lengths, truncated, loss, lm, gnorm, lr, entropy,
                 t0, t_rollout, t_reward, t_update) -> dict:
        G = self.cfg.group_size
        r = torch.tensor(total)
        groups = r.view(-1, G)
        think = [think_text(t, self.policy.think_prefilled) for t in texts]
        n_tok = int(lengths.sum())
        out = {
            "step": step + 1,
            "reward/mean": float(r.mean()),
            "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
            "reward/zero_spread_groups": float((groups.max(1).values == groups.min(1).values).float().mean()),
            "reward/invalid": float(1 - sum(valid) / len(valid)),
            "completion/mean_length": float(lengths.float().mean()),
            "completion/min_length": int(lengths.min()),
            "completion/max_length": int(lengths.max()),
            "completion/truncated": float(truncated.float().mean()),
            "completion/thinking": sum(bool(t and t.strip()) for t in think) / len(think),
            "loss": float(loss.detach()),
            "entropy": entropy,
            "grad_norm": float(gnorm),
            "lr": lr,
            "tokens_per_s": n_tok / max(1e-9, t_update - t0),
            "time/rollout": t_rollout - t0,
            "time/reward": t_reward - t_rollout,
            "time/update": t_update - t_reward,
        }
        for name, vals in per_func.items():
            vv = [v for v in vals if v is not None]
            out[f"reward/{name}"] = sum(vv) / max(1, len(vv))
        out.update(lm)
        return out

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {"step": self.state.step, "optimizer": self.optimizer.state_dict()}
        if self.ref_model is not None and self.cfg.ref_reset_every:
            sd["ref_model"] = self.ref_model.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.state.step = int(sd["step"])
        self.optimizer.load_state_dict(sd["optimizer"])
        if "ref_model" in sd and self.ref_model is not None:
            self.ref_model.load_state_dict(sd["ref_model"])
