"""The GRPO step loop: rollout, rewards, group-relative advantages, clipped policy update.

One step (DeepSeek-R1 sec. 2.2.1; DeepSeekMath sec. 4.1):

1. rollout (``nanoseek.rl.rollout``): take ``prompts_per_step`` prompts from the task's train
   split, sample ``group_size`` completions each with the current policy, score them with the
   task's rule-based reward functions weighted by ``reward_weights`` (DAPO dynamic sampling: drop
   groups whose accuracy, or ``dynamic_sampling_metric``, has zero spread and draw more);
2. group-relative advantages (``nanoseek.rl.advantages``);
3. update (``nanoseek.rl.update``): log-probs of the reference (``beta > 0``) and, for ``mu > 1``
   or several minibatches, of the rollout policy (the "old" policy); then ``mu`` passes of
   ``minibatches_per_step`` optimizer steps on the GRPO loss (``nanoseek.rl.grpo``), gradients
   summed over ranks (``nanoseek.rl.distributed``) and clipped;
4. health metrics and alarms (``nanoseek.rl.health``).

The loss value itself says little about progress (its advantages are zero-mean per group): read
the reward, held-out accuracy and completion length instead.

Everything a resumed run needs to continue bit for bit is in ``state_dict()`` (optimizer, step,
prompt-stream position, alarms, the reference once it has been reset); the learning-rate schedule
is a function of the step, and rollout randomness comes from per-completion seeds.
"""

from __future__ import annotations

import copy
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from nanoseek.errors import NanoseekError
from nanoseek.model.hf_fast import supports
from nanoseek.model.lora import adapter_disabled, apply_lora
from nanoseek.policy.generate_static import generate_static
from nanoseek.policy.policy import Policy
from nanoseek.rl import distributed
from nanoseek.rl.advantages import group_advantages
from nanoseek.rl.config import GRPOConfig
from nanoseek.rl.grpo import grpo_loss
from nanoseek.rl.health import Alarms, progress_fields, rollout_metrics
from nanoseek.rl.loggers import ExternalLoggers
from nanoseek.rl.rollout import RolloutCollector
from nanoseek.rl.update import Scorer, UpdateSums, local_normaliser, make_micro_batch, normaliser
from nanoseek.train.optim import GRPO_BETAS, lr_at, make_adamw, set_lr


@dataclass
class TrainerState:
    """Counters a checkpoint restores: steps done, and the prompt-stream position (prompts drawn)."""

    step: int = 0
    data_pos: int = 0
    ref_resets: int = 0


class GRPOTrainer:
    """Runs GRPO steps on a ``Policy`` for a ``Task``.

    Args:
        policy: the policy to train (its model's parameters are optimised in place; with
            ``cfg.lora_r > 0`` its ``transformers`` model is wrapped with LoRA adapters first).
        task: the task whose ``train`` split gives prompts and whose reward functions score them.
        cfg: ``GRPOConfig``.
        seed: run seed; prompt order and every rollout's sampling seed derive from it, so a step's
            rollouts depend only on (seed, step), not on batch layout, ranks or resumption.
        ref_model: frozen reference for the KL term; None with ``beta > 0`` copies the policy (or,
            with LoRA, uses the base with the adapter disabled). ``beta == 0`` loads none.
        dist: this process's ``Dist`` (default: from ``torch.distributed`` if initialised).
    """

    def __init__(self, policy: Policy, task, cfg: GRPOConfig, seed: int = 0, ref_model=None,
                 dist: distributed.Dist | None = None):
        self.policy, self.task, self.cfg, self.seed = policy, task, cfg, seed
        self.dist = dist if dist is not None else distributed.current()
        model = policy.model
        self.lora = cfg.lora_r > 0
        if self.lora:
            if cfg.ref_reset_every and cfg.beta > 0:
                raise NanoseekError("grpo.ref_reset_every needs a full reference model; it cannot be combined with LoRA")
            apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        generate_fn = generate_static if cfg.fast_rollout and supports(model) else None
        self.collector = RolloutCollector(policy, task, cfg, seed, self.dist, generate_fn)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = next(model.parameters()).device
        self.optimizer = make_adamw(self.params, cfg.lr, cfg.weight_decay, betas=GRPO_BETAS, decay="all")
        self.ref_model = None
        if cfg.beta > 0 and not self.lora:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.eval().requires_grad_(False)
        self.scorer = Scorer(cfg.share_prompt, cfg.temperature, policy.pad_id)
        self.alarms = Alarms(enabled=self.dist.is_main)
        self.state = TrainerState()
        self._loggers = None

    @property
    def dropped_long_prompts(self) -> int:
        """Train prompts left out for being longer than ``max_prompt_length`` tokens."""
        return self.collector.dropped_long_prompts

    # -- one step -----------------------------------------------------------------------------
    def step(self, step: int) -> tuple[dict, list[dict]]:
        """Run GRPO step ``step`` (0-based). Returns ``(metrics, sample_records)`` (the same on every rank)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        ro = self.collector.collect(step, self.state.data_pos)
        t_roll = time.perf_counter()
        minibatches = self._minibatches(ro)
        stats, gnorm, lr = self._update(step, minibatches)
        t_update = time.perf_counter()
        if cfg.ref_reset_every and self.ref_model is not None and (step + 1) % cfg.ref_reset_every == 0:
            self.ref_model.load_state_dict(self.policy.model.state_dict())  # R1-Nature Methods: every 400 steps
            self.state.ref_resets += 1

        metrics = {"step": step + 1, **rollout_metrics(ro.sampled, ro.kept, ro.rounds, ro.grader)}
        metrics.update(stats)
        n_tok = sum(x for s in ro.sampled for x in s["lengths"])
        metrics.update({
            "grad_norm": gnorm, "lr": lr, "tokens_per_s": n_tok / max(1e-9, t_update - t0),
            "time/rollout": ro.time_rollout, "time/reward": ro.time_reward, "time/update": t_update - t_roll,
            "data/position": ro.data_pos, "data/dropped_long_prompts": self.dropped_long_prompts,
        })
        fired = self.alarms.check(metrics)
        if fired:
            metrics["alarms"] = fired
        self.state.step = step + 1
        self.state.data_pos = ro.data_pos
        return metrics, self.collector.sample_records(step, ro.kept)

    def _minibatches(self, ro) -> list[tuple[float, list]]:
        """``[(global normaliser, [MicroBatch, ...]), ...]``: one entry per optimizer step."""
        cfg, G = self.cfg, self.cfg.group_size
        kept = ro.kept
        rewards = torch.tensor([0.0 if r is None else r for s in kept for r in s["rewards"]], dtype=torch.float32)
        valid = torch.tensor([r is not None for s in kept for r in s["rewards"]], dtype=torch.bool)
        adv = group_advantages(rewards, G, scale=cfg.scale_rewards, valid=valid) if len(kept) else rewards
        where = {s["pos"]: k for k, s in enumerate(kept)}
        M = max(1, min(cfg.minibatches_per_step, len(kept)))
        out = []
        for m in range(M):
            span = range(m * len(kept) // M, (m + 1) * len(kept) // M)
            norm = normaliser([kept[k] for k in span], cfg.loss_type, cfg.max_new_tokens,
                              cfg.mask_truncated_completions)
            mine = [g for g in ro.local if where[g.pos] in span]
            A = max(1, min(cfg.grad_accumulation_steps, len(mine)))
            mbs = []
            for a in range(A):
                chunk = mine[a * len(mine) // A:(a + 1) * len(mine) // A]
                if not chunk:
                    continue
                ks = [where[g.pos] for g in chunk]
                a_t = torch.cat([adv[k * G:(k + 1) * G] for k in ks])
                drop = torch.tensor([r is None or (cfg.mask_truncated_completions and t)
                                     for g in chunk for r, t in zip(g.rewards, g.truncated)])
                mbs.append(make_micro_batch([g.prompt_ids for g in chunk],
                                            [[c.token_ids for c in g.completions] for g in chunk],
                                            a_t, drop, self.policy.pad_id).to(self.device))
            out.append((float(norm), mbs))
        return out

    def _ref_context(self):
        if self.lora:
            return adapter_disabled(self.policy.model)
        return contextlib.nullcontext()

    def _update(self, step: int, minibatches) -> tuple[dict, float, float]:
        cfg, model = self.cfg, self.policy.model
        model.train()
        old, ref = self._old_and_ref_logprobs(model, [mb for _, group in minibatches for mb in group],
                                              need_old=cfg.mu > 1 or len(minibatches) > 1)
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio, cfg.lr_schedule)
        set_lr(self.optimizer, lr)
        sums = UpdateSums()
        gnorm = 0.0
        native = hasattr(model, "update_expert_bias")
        for epoch in range(cfg.mu):
            i = 0
            for norm, group in minibatches:
                self.optimizer.zero_grad(set_to_none=True)
                load_sum = None
                for mb in group:
                    logp, ent, load = self.scorer(model, mb, entropy=epoch == 0)
                    loss, lm = grpo_loss(logp, old.get(i), mb.advantages, mb.mask, ref.get(i), loss_type=cfg.loss_type,
                                         epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                                         max_completion_length=cfg.max_new_tokens,
                                         kl_importance_weight=cfg.kl_importance_weight)
                    scale = local_normaliser(mb, cfg.loss_type, cfg.max_new_tokens) / norm if norm else 0.0
                    if scale:
                        (loss * scale if scale != 1.0 else loss).backward()
                    sums.add(float(loss.detach()) * scale, lm, mb, ent)
                    if load is not None and cfg.expert_bias_update:
                        load_sum = load.detach() if load_sum is None else load_sum + load.detach()
                    i += 1
                self.dist.sum_grads(self.params)
                clip = cfg.grad_clip if cfg.grad_clip else math.inf
                gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
                self.optimizer.step()
                if native and cfg.expert_bias_update:
                    self._update_expert_bias(model, load_sum)
        stats = sums.all_reduce(self.dist).metrics(cfg.mu * len(minibatches), with_kl=cfg.beta > 0)
        return stats, gnorm, lr

    def _old_and_ref_logprobs(self, model, mbs: list, need_old: bool) -> tuple[dict, dict]:
        """``({i: logp [B, C]}, {i: ref logp [B, C]})`` of micro-batch ``i`` before any update: the
        rollout ("old") policy's when ``need_old``, the reference's when ``beta > 0``."""
        old, ref = {}, {}
        with torch.no_grad():
            for i, mb in enumerate(mbs):
                if need_old:
                    old[i] = self.scorer(model, mb)[0]
                if self.cfg.beta > 0:
                    with self._ref_context():
                        ref[i] = self.scorer(self.ref_model if self.ref_model is not None else model, mb)[0]
        return old, ref

    def _update_expert_bias(self, model, load) -> None:
        """DeepSeekMoE balancing-bias step with the expert loads summed over ranks (V3 sec. 2.1.2)."""
        n_layers = len(model.moe_layers())
        if not n_layers:
            return
        if load is None:
            load = torch.zeros(n_layers, model.config.n_routed_experts, device=self.device)
        self.dist.all_reduce_sum(load)
        model.update_expert_bias(load)

    # -- logging ------------------------------------------------------------------------------
    @staticmethod
    def progress_fields(metrics: dict) -> dict:
        """Numbers for the progress line (``nanoseek.rl.health.progress_fields``)."""
        return progress_fields(metrics)

    def log_external(self, metrics: dict, run_dir) -> None:
        """Send ``metrics`` to TensorBoard / W&B (``cfg.report_to``; rank 0 only, skipped cleanly
        when the package is missing)."""
        if not self.cfg.report_to or not self.dist.is_main:
            return
        if self._loggers is None:
            self._loggers = ExternalLoggers(self.cfg.report_to, run_dir, dataclasses.asdict(self.cfg))
        self._loggers.log(metrics)

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Optimizer, counters, alarms, the GRPO config, and the reference once it was reset
        (before that it is the base model, which the recipe reloads)."""
        sd = {"step": self.state.step, "data_pos": self.state.data_pos, "ref_resets": self.state.ref_resets,
              "optimizer": self.optimizer.state_dict(), "alarms": self.alarms.state_dict(),
              "config": dataclasses.asdict(self.cfg)}
        if self.ref_model is not None and self.state.ref_resets:
            sd["ref_model"] = self.ref_model.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict` (checkpoints without ``data_pos`` / ``ref_resets`` predate them)."""
        self.state.step = int(sd["step"])
        self.state.data_pos = int(sd.get("data_pos", self.state.step * self.cfg.prompts_per_step))
        self.state.ref_resets = int(sd.get("ref_resets", 0))
        self.optimizer.load_state_dict(sd["optimizer"])
        self.alarms.load_state_dict(sd.get("alarms", {}))
        if "ref_model" in sd and self.ref_model is not None:
            self.ref_model.load_state_dict(sd["ref_model"])
