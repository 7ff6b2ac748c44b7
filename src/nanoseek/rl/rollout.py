"""Rollouts for GRPO: which prompts a step uses, sampling their groups, scoring them, and DAPO's
dynamic sampling.

* Prompt order: a seeded permutation of the train split, re-shuffled each epoch; position ``k`` of
  the stream is :meth:`RolloutCollector.example_at`. The stream position is part of the trainer state (with
  dynamic sampling a step may draw more than ``prompts_per_step`` prompts).
* Seeds: completion ``j`` of the prompt with example index ``i`` in draw round ``r`` of step ``s``
  uses ``completion_seed(seed * 1_000_003 + s, i, j + G r)``, so a completion depends on neither the
  batch layout, the number of ranks, nor resumption.
* Dynamic sampling (DAPO, Yu et al. 2025, sec. 3.2, eq. 11): a group whose valid values of
  ``grpo.dynamic_sampling_metric`` are all equal is dropped (:meth:`Group.uninformative`) and
  further rounds of ``prompts_per_step`` prompts are drawn until ``prompts_per_step`` groups are kept
  (at most ``dynamic_sampling_max_rounds`` rounds; then the step trains on what it has). The
  default metric is the ``accuracy`` reward, as in the paper (all correct or all wrong); ``reward``
  uses the combined reward, so a group of equal accuracy but different format rewards is kept.
  Health metrics describe every sampled group, kept or not.
* Stop strings end a completion right after the string (kept in the completion, like a stop
  token): online in the static-cache sampler, by truncating afterwards otherwise (the tokens before
  the cut are the same either way: each row's randomness is its own).
* Prompts longer than ``max_prompt_length`` tokens are dropped when the split is loaded and
  counted (``RolloutCollector.dropped_long_prompts``), never truncated.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from nanoseek.errors import NanoseekError
from nanoseek.rl.config import GRPOConfig
from nanoseek.evaluation.evaluate import completion_seed, think_text
from nanoseek.policy.generate import Completion, SamplingParams
from nanoseek.rewards.grading import GradeCounts
from nanoseek.rewards.registry import combine_rewards
from nanoseek.rl.distributed import Dist


class TokenStopStrings:
    """Detect stop strings in sampled token ids (``tokenizer.decode`` of a short window).

    Not ``nanoseek.serve.textstream.StopStrings``, which cuts streamed *text* for the server.
    """

    def __init__(self, tokenizer, strings: list[str]):
        self.tok, self.strings = tokenizer, list(strings)
        self.lasts = {s[-1] for s in self.strings}
        # a stop string of m characters spans at most 4m byte-level tokens (+1 for a split byte)
        self.window = 4 * max((len(s) for s in self.strings), default=0) + 1
        self._may_end: dict[int, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.strings)

    def _maybe(self, token: int) -> bool:
        """Can ``token`` complete a stop string? (its text holds a last character, or is partial)"""
        v = self._may_end.get(token)
        if v is None:
            text = self.tok.decode([token], skip_special_tokens=False)
            v = "\ufffd" in text or any(c in text for c in self.lasts)
            self._may_end[token] = v
        return v

    def ends(self, ids: list[int]) -> bool:
        """True when the last token of ``ids`` completes a stop string."""
        if not self.strings or not ids or not self._maybe(ids[-1]):
            return False
        text = self.tok.decode(ids[-self.window:], skip_special_tokens=False)
        return any(s in text for s in self.strings)

    def truncate(self, c: Completion) -> Completion:
        """``c`` cut right after the first stop string (finish_reason "stop"), or ``c`` unchanged."""
        if not self.strings:
            return c
        for n in range(1, len(c.token_ids) + 1):
            if self.ends(c.token_ids[:n]):
                if n == len(c.token_ids) and c.finish_reason == "stop":
                    return c
                return Completion(c.token_ids[:n], "stop", c.logprobs[:n])
        return c


def flat(values: list) -> bool:
    """True when the valid values (not None, not NaN) are all equal or fewer than two."""
    vals = [float(v) for v in values if v is not None and v == v]
    return len(vals) < 2 or max(vals) == min(vals)


@dataclass
class Group:
    """The ``G`` completions of one prompt, scored.

    ``pos``: position in the prompt stream; ``idx``: train example index; ``rewards``: combined
    reward per completion (None where it cannot be judged); ``parts``: each reward function's
    values; ``truncated``: hit ``max_new_tokens`` without a stop.
    """

    pos: int
    idx: int
    prompt_ids: list[int]
    completions: list[Completion]
    texts: list[str]
    rewards: list
    parts: dict[str, list]
    truncated: list[bool] = field(default_factory=list)

    def zero_spread(self) -> bool:
        """All valid combined rewards equal (or fewer than two valid): the group carries no gradient."""
        return flat(self.rewards)

    def uninformative(self, metric: str) -> bool:
        """Whether DAPO's dynamic sampling drops the group: its valid ``metric`` values (``"accuracy"``:
        the accuracy reward; ``"reward"``: the combined reward) are all equal, or fewer than two."""
        return flat(self.rewards if metric == "reward" else self.parts["accuracy"])

    def summary(self, think_prefilled: bool, metric: str | None = None) -> dict:
        """What every rank needs for health metrics and logging (plain Python, picklable);
        ``uninformative`` is :meth:`uninformative` for ``metric`` (False without dynamic sampling: None)."""
        return {"pos": self.pos, "idx": self.idx, "rewards": self.rewards, "parts": self.parts,
                "lengths": [len(c.token_ids) for c in self.completions], "truncated": self.truncated,
                "thinking": [bool((t := think_text(x, think_prefilled)) and t.strip()) for x in self.texts],
                "text": self.texts[0], "zero_spread": self.zero_spread(),
                "uninformative": self.uninformative(metric) if metric else False}


@dataclass
class Rollout:
    """One step's rollouts: this rank's kept groups, and summaries of every sampled group (all ranks)."""

    local: list[Group]
    kept: list[dict]
    sampled: list[dict]
    data_pos: int
    rounds: int
    grader: dict
    time_rollout: float
    time_reward: float


class RolloutCollector:
    """Draws, samples and scores GRPO groups for a policy on a task (see the module docstring)."""

    def __init__(self, policy, task, cfg: GRPOConfig, seed: int, dist: Dist, generate_fn=None):
        self.policy, self.task, self.cfg, self.seed, self.dist = policy, task, cfg, seed, dist
        weights = dict(cfg.reward_weights)
        options = {}
        if cfg.overlong_buffer:
            weights.setdefault("overlong", 1.0)  # DAPO adds the penalty to the reward (eq. 13)
            options["overlong"] = {"max_length": cfg.max_new_tokens, "cache_length": cfg.overlong_buffer}
        self.reward_fn = combine_rewards(weights, task=task, **options)
        examples = task.examples("train")
        if not examples:
            raise NanoseekError(f"task {task.name!r} has no train examples")
        self.prompt_ids: list[list[int]] = []
        self.examples = []
        texts = [policy.prompt_text(e.prompt) for e in examples]  # = policy.encode_prompts, batched
        for e, ids in zip(examples, policy.tokenizer(texts, add_special_tokens=False).input_ids):
            if len(ids) <= cfg.max_prompt_length:
                self.examples.append(e)
                self.prompt_ids.append(ids)
        self.dropped_long_prompts = len(examples) - len(self.examples)
        if not self.examples:
            raise NanoseekError(f"every train prompt of {task.name!r} is longer than grpo.max_prompt_length="
                                f"{cfg.max_prompt_length} tokens")
        self.order = list(range(len(self.examples)))
        random.Random(seed).shuffle(self.order)
        self._perms: dict[int, list[int]] = {0: self.order}
        self.stops = TokenStopStrings(policy.tokenizer, cfg.stop_strings)
        self.generate_fn = generate_fn
        self.suppress_token_ids: list[int] | None = None  # benchmarks: force full-length completions

    # -- data -----------------------------------------------------------------------------------
    def example_at(self, k: int) -> int:
        """Train example index at stream position ``k`` (epoch ``k // n`` uses its own permutation)."""
        epoch, pos = divmod(k, len(self.order))
        if epoch not in self._perms:
            perm = list(range(len(self.order)))
            random.Random(self.seed * 7919 + epoch).shuffle(perm)
            self._perms = {0: self.order, epoch: perm}
        return self._perms[epoch][pos]

    # -- sampling -------------------------------------------------------------------------------
    def _generate(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[Completion]:
        cfg, policy = self.cfg, self.policy
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                stop_token_ids=list(policy.stop_ids))
        if self.generate_fn is not None:  # the static-cache sampler (nanoseek.policy.generate_static)
            check = (lambda row, ids: self.stops.ends(ids)) if self.stops else None
            return self.generate_fn(policy.model, prompt_ids, params, policy.pad_id, seeds=seeds,
                                    suppress_token_ids=self.suppress_token_ids, stop_check=check)
        comps = policy.generate(prompt_ids, params, seeds=seeds)
        return [self.stops.truncate(c) for c in comps] if self.stops else comps

    def _score(self, groups: list[Group], counts: GradeCounts) -> None:
        comps = [c for g in groups for c in g.completions]
        texts = [t for g in groups for t in g.texts]
        if not comps:
            return
        columns: dict[str, list] = {}
        for g in groups:
            cols = self.examples[g.idx].columns()
            for k, v in cols.items():
                columns.setdefault(k, []).extend([v] * len(g.completions))
        columns["completion_ids"] = [c.token_ids for c in comps]
        parts = self.reward_fn.parts(texts, think_prefilled=self.policy.think_prefilled, counts=counts, **columns)
        for name, vals in parts.items():
            if len(vals) != len(texts):
                raise RuntimeError(f"reward {name} returned {len(vals)} values for {len(texts)} completions")
        combined = self.reward_fn.combine(parts)
        G = self.cfg.group_size
        for q, g in enumerate(groups):
            sl = slice(q * G, (q + 1) * G)
            g.rewards = [None if v is None or v != v else float(v) for v in combined[sl]]
            g.parts = {n: list(v[sl]) for n, v in parts.items()}

    def collect(self, step: int, data_pos: int) -> Rollout:
        """Sample, score and (with dynamic sampling) filter the groups of ``step``, starting at
        stream position ``data_pos``. Collective: every rank calls it."""
        cfg, G, n = self.cfg, self.cfg.group_size, self.cfg.prompts_per_step
        counts = GradeCounts()  # this step's grading events on this rank, summed over ranks below
        local: list[Group] = []
        kept: list[dict] = []
        sampled: list[dict] = []
        t_gen = t_rew = 0.0
        rounds = 0
        while True:
            t0 = time.perf_counter()
            positions = [data_pos + q for q in self.dist.shard(n)]
            idxs = [self.example_at(k) for k in positions]
            prompt_ids = [self.prompt_ids[i] for i in idxs for _ in range(G)]
            seeds = [completion_seed(self.seed * 1_000_003 + step, i, j + G * rounds) for i in idxs for j in range(G)]
            comps = self._generate(prompt_ids, seeds) if prompt_ids else []
            groups = []
            for q, (k, i) in enumerate(zip(positions, idxs)):
                cs = comps[q * G:(q + 1) * G]
                groups.append(Group(k, i, self.prompt_ids[i], cs, [self.policy.decode(c.token_ids) for c in cs], [], {},
                                    [c.finish_reason == "length" for c in cs]))
            t1 = time.perf_counter()
            self._score(groups, counts)
            t_gen += t1 - t0
            t_rew += time.perf_counter() - t1
            metric = cfg.dynamic_sampling_metric if cfg.dynamic_sampling else None
            summaries = [g.summary(self.policy.think_prefilled, metric) for g in groups]
            round_all = [s for part in self.dist.all_gather_object(summaries) for s in part]  # stream order
            sampled.extend(round_all)
            mine = {g.pos: g for g in groups}
            for s in round_all:
                if len(kept) < n and not (cfg.dynamic_sampling and s["uninformative"]):
                    kept.append(s)
                    if s["pos"] in mine:
                        local.append(mine[s["pos"]])
            data_pos += n
            rounds += 1
            if not cfg.dynamic_sampling or len(kept) >= n or rounds >= cfg.dynamic_sampling_max_rounds:
                break
        grader: dict = {}
        for st in self.dist.all_gather_object(counts.snapshot()):
            for k, v in st.items():
                grader[k] = grader.get(k, 0) + v
        return Rollout(local, kept, sampled, data_pos, rounds, grader, t_gen, t_rew)

    def sample_records(self, step: int, kept: list[dict]) -> list[dict]:
        """The first completion of the first ``log_samples`` kept groups, for samples.jsonl."""
        out = []
        for s in kept[: self.cfg.log_samples]:
            e = self.examples[s["idx"]]
            out.append({"step": step + 1, "prompt": e.prompt, "answer": e.answer, "completion": s["text"],
                        "reward": 0.0 if s["rewards"][0] is None else s["rewards"][0],
                        **{f"reward/{n}": v[0] for n, v in s["parts"].items()}})
        return out
