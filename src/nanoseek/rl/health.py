"""Health metrics of a GRPO step, and alarms that say once, clearly, when a run is going wrong.

The GRPO loss value says little about progress: advantages are zero-mean within each group, so
the surrogate hovers around zero whether the policy improves or not. Read instead the reward (mean
and per reward function), held-out accuracy, completion length, the share of groups with zero
reward spread (they carry no gradient), the truncation rate, entropy and KL.

Metric names (one record per step in ``metrics.jsonl``):

* ``reward/mean``, ``reward/std``: combined reward over every sampled completion;
  ``reward/<name>``, ``reward/<name>/std``: each reward function (valid values only);
* ``groups/zero_spread``: share of sampled groups whose rewards are all equal;
  ``completion/unjudged``: share of completions whose reward is None (not judged);
* ``completion/{mean,min,max}_length``: generated tokens; ``completion/truncated``: share that hit
  ``max_new_tokens`` without a stop; ``completion/thinking``: share with a non-empty think block;
* ``entropy``: mean per-token entropy of the policy on its completions; ``kl``: mean per-token k3 KL
  to the reference (when there is one); ``clip_ratio/{low,high,region}``: share of clipped tokens
  (DAPO sec. 3.1); ``ratio``: mean importance ratio;
* ``grad_norm`` (before clipping), ``lr``, ``loss`` (uninformative, see above);
* ``grader/{calls,timeouts,parse_failures}``: grader events this step (the step's ``nanoseek.rewards.grading.GradeCounts``);
  ``reward/errors/<name>``: completions each reward function failed to score (an exception it
  caught, scored 0); ``completion/unscored``: the largest share of completions one reward failed on;
* ``sampling/{rounds,groups,kept_groups}``: dynamic sampling (DAPO sec. 3.2); ``data/position``;
* ``tokens_per_s``, ``time/{rollout,reward,update}``: throughput and where the time went;
* ``alarms``: names of the alarms that fired at this step (see :data:`ALARMS`).
"""

from __future__ import annotations

import math
import sys

# alarm name -> message with the likely fix ({v}: the value that fired it). Each fires at most once per run.
ALARMS: dict[str, str] = {
    "truncated": "most completions ({v:.0%}) hit max_new_tokens without finishing: raise grpo.max_new_tokens, "
                 "or drop/penalise them (grpo.mask_truncated_completions, grpo.overlong_buffer)",
    "zero_spread": "most groups ({v:.0%}) have equal rewards, so they carry no gradient: the problems are too "
                   "hard or too easy for this model; raise grpo.group_size, turn on grpo.dynamic_sampling, or "
                   "choose problems of fitting difficulty",
    "entropy_collapse": "policy entropy collapsed to {v:.3g} nats/token: sampling is nearly deterministic and "
                        "exploration has stopped; lower grpo.lr, use clip-higher (grpo.epsilon_high = 0.28), "
                        "or raise grpo.temperature / grpo.beta",
    "grader_timeouts": "the grader timed out on {v:.0%} of its checks (graded 0): completions may be huge or "
                       "adversarial; shorten grpo.max_new_tokens or look at samples.jsonl",
    "reward_errors": "a reward function failed to score {v:.1%} of the completions (scored 0 instead): see "
                     "reward/errors/<name> in metrics.jsonl; a reward that raises on unusual completions "
                     "needs fixing",
}
MOST = 0.5              # "most": more than half
ENTROPY_FLOOR = 0.05    # nats per token, absolute
ENTROPY_DROP = 0.1      # or below 10% of the first step's entropy
TIMEOUT_SHARE = 0.05    # grader timeouts per grading call
UNSCORED_SHARE = 0.01   # completions one reward function failed to score


def rollout_metrics(sampled: list[dict], kept: list[dict], rounds: int, grader: dict) -> dict:
    """Reward, length and sampling metrics from the group summaries of ``nanoseek.rl.rollout``
    (every sampled group, kept or not)."""
    rewards = [r for s in sampled for r in s["rewards"]]
    vals = [0.0 if r is None else r for r in rewards]
    n = len(vals)
    mean = sum(vals) / max(1, n)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    lengths = [x for s in sampled for x in s["lengths"]]
    truncated = [x for s in sampled for x in s["truncated"]]
    thinking = [x for s in sampled for x in s["thinking"]]
    out = {
        "reward/mean": mean,
        "reward/std": std,
        "groups/zero_spread": sum(s["zero_spread"] for s in sampled) / max(1, len(sampled)),
        "completion/unjudged": sum(r is None for r in rewards) / max(1, n),
        "completion/mean_length": sum(lengths) / max(1, len(lengths)),
        "completion/min_length": min(lengths, default=0),
        "completion/max_length": max(lengths, default=0),
        "completion/truncated": sum(truncated) / max(1, len(truncated)),
        "completion/thinking": sum(thinking) / max(1, len(thinking)),
    }
    names = list(sampled[0]["parts"]) if sampled else []
    for name in names:
        vv = [v for s in sampled for v in s["parts"][name] if v is not None]
        out[f"reward/{name}"] = sum(vv) / max(1, len(vv))
        if len(vv) > 1:
            m = sum(vv) / len(vv)
            out[f"reward/{name}/std"] = math.sqrt(sum((v - m) ** 2 for v in vv) / (len(vv) - 1))
    out["grader/timeouts"] = int(grader.get("timeouts", 0))
    out["grader/parse_failures"] = int(grader.get("parse_failures", 0))
    out["grader/calls"] = int(grader.get("calls", 0))
    errors = dict.fromkeys(names, 0)
    errors.update({k.split("/", 1)[1]: int(v) for k, v in grader.items() if k.startswith("reward_errors/")})
    for name, v in errors.items():
        out[f"reward/errors/{name}"] = v
    out["completion/unscored"] = max(errors.values(), default=0) / max(1, n)
    out["sampling/rounds"] = rounds
    out["sampling/groups"] = len(sampled)
    out["sampling/kept_groups"] = len(kept)
    return out


class Alarms:
    """Checks each step's metrics and prints each alarm once (``fired`` is saved in checkpoints)."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.fired: list[str] = []
        self.first_entropy: float | None = None

    def check(self, m: dict) -> list[str]:
        """Names of the alarms that fire for the first time on metrics ``m`` (printed if enabled)."""
        values = {}
        if m.get("completion/truncated", 0) > MOST:
            values["truncated"] = m["completion/truncated"]
        if m.get("groups/zero_spread", 0) > MOST:
            values["zero_spread"] = m["groups/zero_spread"]
        ent = m.get("entropy")
        if ent is not None and math.isfinite(ent):
            if self.first_entropy is None:
                self.first_entropy = ent
            elif ent < ENTROPY_FLOOR or ent < ENTROPY_DROP * self.first_entropy:
                values["entropy_collapse"] = ent
        calls = m.get("grader/calls", 0)
        if calls and m.get("grader/timeouts", 0) / calls > TIMEOUT_SHARE:
            values["grader_timeouts"] = m["grader/timeouts"] / calls
        if m.get("completion/unscored", 0) > UNSCORED_SHARE:
            values["reward_errors"] = m["completion/unscored"]
        new = [k for k in values if k not in self.fired]
        for k in new:
            self.fired.append(k)
            if self.enabled:
                print(f"[nanoseek] warning (step {m.get('step')}): " + ALARMS[k].format(v=values[k]),
                      file=self.stream, flush=True)
        return new

    def state_dict(self) -> dict:
        """Alarms already fired and the first step's entropy, for checkpoints."""
        return {"fired": list(self.fired), "first_entropy": self.first_entropy}

    def load_state_dict(self, sd: dict) -> None:
        """Restore :meth:`state_dict` (missing keys: nothing fired yet)."""
        self.fired = list(sd.get("fired", []))
        self.first_entropy = sd.get("first_entropy")


def progress_fields(m: dict) -> dict:
    """The few numbers worth a glance on the progress line."""
    return {"reward": m.get("reward/mean"), "acc": m.get("reward/accuracy"), "len": m.get("completion/mean_length"),
            "think": m.get("completion/thinking"), "trunc": m.get("completion/truncated"),
            "flat": m.get("groups/zero_spread"), "ent": m.get("entropy"), "kl": m.get("kl")}
