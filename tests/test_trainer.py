"""GRPO trainer: behaviour on a toy reward, masks, presets, dynamic sampling, overlong handling,
stop strings, prompt-length filtering, gradient accumulation, health alarms, logging backends."""

import io
import sys
import types

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.rl.config import GRPOConfig
from nanoseek.recipes.config import build_zero_config
from nanoseek.policy.policy import build_batch
from nanoseek.rl import grpo_loss, token_logprobs
from nanoseek.rl.health import Alarms
from nanoseek.rl.trainer import GRPOTrainer
from nanoseek.train.optim import lr_at
from test_trainer_helpers import ToyTask, flat_params, native_policy, qwen_policy, tokenizer, toy_config

torch.set_num_threads(1)


@pytest.mark.parametrize("make", [qwen_policy, native_policy])
def test_left_padded_logprobs_equal_each_sequence_alone(make):
    policy = make()
    prompts = [[5, 9, 33, 40, 41], [7, 8], [100, 101, 102]]
    comps = [[50, 51, 52], [60, 61, 62, 63, 64, 65], [0, 70]]  # a pad id (0) inside a completion is a token
    batch = build_batch(prompts, comps, policy.pad_id)
    with torch.no_grad():
        together = token_logprobs(policy.completion_logits(batch), batch.completion_ids)
        for i, (p, c) in enumerate(zip(prompts, comps)):
            one = build_batch([p], [c], policy.pad_id)
            alone = token_logprobs(policy.completion_logits(one), one.completion_ids)[0]
            torch.testing.assert_close(together[i, :len(c)], alone[:len(c)], atol=1e-5, rtol=0)
    assert batch.completion_mask.sum(1).tolist() == [3, 6, 2]  # from lengths, not token values


@pytest.mark.parametrize("make", [qwen_policy, native_policy])
def test_grpo_steps_raise_toy_reward(make):
    policy = make()
    steps = 12 if make is qwen_policy else 8
    tr = GRPOTrainer(policy, ToyTask(), toy_config(steps=steps, lr=2e-2 if make is qwen_policy else 3e-2), seed=0)
    before = flat_params(policy.model)
    rewards = [tr.step(s)[0]["reward/mean"] for s in range(steps)]
    assert not torch.equal(before, flat_params(policy.model))
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    assert tr.state.step == steps and tr.state.data_pos == steps * 4


def test_metrics_and_samples():
    tr = GRPOTrainer(qwen_policy(), ToyTask(), toy_config(beta=0.04), seed=0)
    m, samples = tr.step(0)
    for key in ("reward/mean", "reward/std", "reward/even", "groups/zero_spread", "completion/truncated",
                "completion/mean_length", "completion/min_length", "completion/max_length", "entropy", "kl",
                "clip_ratio/low", "clip_ratio/high", "grad_norm", "lr", "tokens_per_s", "time/rollout",
                "time/reward", "time/update", "grader/timeouts", "grader/parse_failures", "loss"):
        assert key in m, key
    assert m["step"] == 1 and m["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy at step 0
    assert len(samples) == 1 and samples[0]["prompt"].startswith("pick")


def test_beta_zero_loads_no_reference_and_reset_replaces_it():
    plain = GRPOTrainer(qwen_policy(), ToyTask(), toy_config(beta=0.0), seed=0)
    assert plain.ref_model is None
    (group,) = plain.optimizer.param_groups  # TRL's AdamW defaults (train/optim.py GRPO_BETAS)
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 0.0)
    policy = qwen_policy()
    tr = GRPOTrainer(policy, ToyTask(), toy_config(beta=0.04, ref_reset_every=2), seed=0)
    tr.step(0)
    assert not torch.equal(flat_params(tr.ref_model), flat_params(policy.model))
    assert "ref_model" not in tr.state_dict()  # still the base: recomputable
    tr.step(1)
    assert torch.equal(flat_params(tr.ref_model), flat_params(policy.model))
    assert "ref_model" in tr.state_dict()


def test_preset_fills_unset_fields_and_explicit_values_win():
    g = build_zero_config({"grpo": {"preset": "dapo", "max_new_tokens": 64, "overlong_buffer": 16, "lr": 1e-3}}).grpo
    assert (g.loss_type, g.epsilon_low, g.epsilon_high, g.beta, g.group_size) == ("dapo", 0.2, 0.28, 0.0, 16)
    assert g.dynamic_sampling and g.mask_truncated_completions and g.overlong_buffer == 16 and g.lr == 1e-3
    r1 = build_zero_config({"grpo": {"preset": "r1_zero", "max_new_tokens": 64}}).grpo
    assert (r1.beta, r1.ref_reset_every, r1.group_size, r1.lr, r1.epsilon_low) == (0.001, 400, 16, 3e-6, 10.0)
    dm = build_zero_config({"grpo": {"preset": "deepseekmath", "max_new_tokens": 64, "group_size": 8}}).grpo
    assert (dm.beta, dm.group_size, dm.mu) == (0.04, 8, 1)
    scaled = build_zero_config({"grpo": {"preset": "dapo", "max_new_tokens": 64}}).grpo
    assert scaled.overlong_buffer == 13  # DAPO's 4,096 of 20,480 tokens, in proportion
    assert build_zero_config({"grpo": {"preset": "dapo"}}).grpo.overlong_buffer == 4096
    assert GRPOConfig.from_dict({"preset": "dapo"}).epsilon_high == 0.28
    dr = build_zero_config({"grpo": {"preset": "dr_grpo"}}).grpo
    assert (dr.loss_type, dr.scale_rewards) == ("dr_grpo", "none")
    with pytest.raises(NanoseekError, match="preset"):
        build_zero_config({"grpo": {"preset": "ppo"}})
    with pytest.raises(NanoseekError, match="overlong_buffer"):
        GRPOConfig(max_new_tokens=8, overlong_buffer=9)


def _half_flat_reward(completions, prompt, completion_ids=None, **_):
    """Even-id share for prompts with an even number, a constant for the others (zero spread)."""
    return [1.0 if int(p.split()[1]) % 2 else sum(t % 2 == 0 for t in ids) / max(1, len(ids))
            for p, ids in zip(prompt, completion_ids)]


class _HalfFlatTask(ToyTask):
    def reward_funcs(self):
        return {"even": _half_flat_reward}


def test_dynamic_sampling_drops_zero_spread_groups_and_draws_more():
    cfg = toy_config(dynamic_sampling=True, dynamic_sampling_metric="reward", max_new_tokens=6)
    tr = GRPOTrainer(qwen_policy(), _HalfFlatTask(), cfg, seed=0)
    ro = tr.collector.collect(0, 0)
    assert len(ro.kept) == 4 and all(not s["zero_spread"] for s in ro.kept)
    assert ro.rounds >= 2 and ro.data_pos == 4 * ro.rounds and len(ro.sampled) == 4 * ro.rounds
    assert [s["pos"] for s in ro.kept] == sorted(s["pos"] for s in ro.kept)
    m, _ = tr.step(0)
    assert m["sampling/rounds"] >= 2 and m["sampling/kept_groups"] == 4
    assert 0.3 < m["groups/zero_spread"] < 0.7  # health describes every sampled group
    # without dynamic sampling the zero-spread groups stay in the batch
    plain = GRPOTrainer(qwen_policy(), _HalfFlatTask(), toy_config(max_new_tokens=6), seed=0).collector.collect(0, 0)
    assert plain.rounds == 1 and any(s["zero_spread"] for s in plain.kept)


def _two_signal_rewards(prompt, completion_ids):
    """(accuracy, format) per completion. Even prompts: accuracy 1 for all, format = even-id share
    (equal accuracy, different combined reward). Odd prompts: accuracy = first token even, format =
    1 - accuracy (different accuracy, combined reward 1 for all with weights 1 and 1)."""
    out = []
    for p, ids in zip(prompt, completion_ids):
        if int(p.split()[1]) % 2 == 0:
            out.append((1.0, sum(t % 2 == 0 for t in ids) / max(1, len(ids))))
        else:
            acc = float(bool(ids) and ids[0] % 2 == 0)
            out.append((acc, 1.0 - acc))
    return out


class _TwoSignalTask(ToyTask):
    def reward_funcs(self):
        return {"accuracy": lambda completions, prompt, completion_ids=None, **_:
                [a for a, _ in _two_signal_rewards(prompt, completion_ids)],
                "format": lambda completions, prompt, completion_ids=None, **_:
                [f for _, f in _two_signal_rewards(prompt, completion_ids)]}


def _flat(values):
    return max(values) == min(values)


def test_dynamic_sampling_filters_on_accuracy_by_default():
    weights = {"accuracy": 1.0, "format": 1.0}
    assert GRPOConfig().dynamic_sampling_metric == "accuracy"
    ro = GRPOTrainer(qwen_policy(), _TwoSignalTask(), toy_config(dynamic_sampling=True, reward_weights=weights,
                                                                max_new_tokens=6), seed=0).collector.collect(0, 0)
    assert len(ro.kept) == 4
    # kept: odd prompts whose accuracy differs, although their combined reward is 1 everywhere
    assert all(s["idx"] % 2 == 1 and not _flat(s["parts"]["accuracy"]) and s["rewards"] == [1.0] * 4 for s in ro.kept)
    # dropped: every even prompt (accuracy all 1), even when its format rewards differ
    drops = [s for s in ro.sampled if s not in ro.kept and s["pos"] < ro.kept[-1]["pos"]]  # later: batch full
    assert any(s["idx"] % 2 == 0 and not s["zero_spread"] for s in drops)
    assert all(_flat(s["parts"]["accuracy"]) for s in drops)


def test_dynamic_sampling_metric_reward_filters_on_the_combined_reward():
    cfg = toy_config(dynamic_sampling=True, dynamic_sampling_metric="reward", max_new_tokens=6,
                     reward_weights={"accuracy": 1.0, "format": 1.0})
    ro = GRPOTrainer(qwen_policy(), _TwoSignalTask(), cfg, seed=0).collector.collect(0, 0)
    assert len(ro.kept) == 4
    # kept: even prompts (equal accuracy, different format); every odd prompt (combined reward 1) dropped
    assert all(s["idx"] % 2 == 0 and _flat(s["parts"]["accuracy"]) and not s["zero_spread"] for s in ro.kept)
    assert all(s["zero_spread"] for s in ro.sampled if s not in ro.kept and s["pos"] < ro.kept[-1]["pos"])
    assert any(s["idx"] % 2 == 1 and not _flat(s["parts"]["accuracy"]) for s in ro.sampled)


def test_dynamic_sampling_metric_is_checked():
    with pytest.raises(NanoseekError, match="dynamic_sampling_metric must be one of accuracy, reward; got 'acc'"):
        toy_config(dynamic_sampling_metric="acc")
    with pytest.raises(NanoseekError, match="needs an 'accuracy' reward"):
        toy_config(dynamic_sampling=True)  # the toy reward is "even"
    assert toy_config(dynamic_sampling=True, reward_weights={"even": 1.0, "accuracy": 0.0}).dynamic_sampling


def test_overlong_filtering_and_soft_punishment():
    # every completion runs to max_new_tokens (8): the soft punishment is -1 at the limit (DAPO eq. 13)
    cfg = toy_config(max_new_tokens=8, overlong_buffer=4, mask_truncated_completions=True)
    tr = GRPOTrainer(qwen_policy(), ToyTask(), cfg, seed=0)
    tr.collector.suppress_token_ids = list(tr.policy.stop_ids)
    before = flat_params(tr.policy.model)
    m, _ = tr.step(0)
    assert m["completion/truncated"] == 1.0 and m["reward/overlong"] == -1.0
    assert m["grad_norm"] == 0.0 and torch.equal(before, flat_params(tr.policy.model))  # all filtered out


@pytest.mark.parametrize("make", [qwen_policy, native_policy])
def test_stop_strings_end_completions(make):
    policy = make()
    cfg = toy_config(stop_strings=["k"], max_new_tokens=24, temperature=1.0)
    tr = GRPOTrainer(policy, ToyTask(), cfg, seed=0)
    ro = tr.collector.collect(0, 0)
    comps = [c for g in ro.local for c in g.completions]
    assert any("k" in policy.decode(c.token_ids) for c in comps)
    for c in comps:  # cut right after the token that completes the stop string
        if "k" in policy.decode(c.token_ids):
            assert "k" not in policy.decode(c.token_ids[:-1]) and c.finish_reason == "stop"


def test_stop_string_across_tokens_online_and_afterwards_agree():
    from nanoseek.policy.generate import Completion
    from nanoseek.rl.rollout import TokenStopStrings

    tok = tokenizer()
    stops = TokenStopStrings(tok, ["</ans", "\n\n"])
    ids = tok("a b</ans wer>", add_special_tokens=False).input_ids
    cut = stops.truncate(Completion(ids, "length", [0.0] * len(ids)))
    assert tok.decode(cut.token_ids).endswith("</ans") and cut.finish_reason == "stop"
    online = next(n for n in range(1, len(ids) + 1) if stops.ends(ids[:n]))
    assert online == len(cut.token_ids)


def test_long_prompts_dropped_at_load_and_counted():
    tr = GRPOTrainer(qwen_policy(), ToyTask(n=20, long_every=4), toy_config(max_prompt_length=40), seed=0)
    assert tr.dropped_long_prompts == 5 and len(tr.collector.examples) == 15
    assert all(len(ids) <= 40 for ids in tr.collector.prompt_ids)
    m, _ = tr.step(0)
    assert m["data/dropped_long_prompts"] == 5
    with pytest.raises(NanoseekError, match="max_prompt_length"):
        GRPOTrainer(qwen_policy(), ToyTask(n=4, long_every=1), toy_config(max_prompt_length=10), seed=0)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grad_accumulation_gives_the_same_update(loss_type):
    out = []
    for accum in (1, 4):
        policy = qwen_policy()
        # lr 1e-4: Adam's first step is ~lr * sign(g), so a near-zero gradient entry's rounding shows at lr scale
        cfg = toy_config(loss_type=loss_type, grad_accumulation_steps=accum, beta=0.04, grad_clip=0.0, lr=1e-4)
        tr = GRPOTrainer(policy, ToyTask(), cfg, seed=0)
        m, _ = tr.step(0)
        out.append((flat_params(policy.model), m))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=0)
    assert out[0][1]["loss"] == pytest.approx(out[1][1]["loss"], abs=1e-6)
    assert out[0][1]["grad_norm"] == pytest.approx(out[1][1]["grad_norm"], rel=1e-5)


def test_mu_and_minibatches_use_old_logprobs(monkeypatch):
    import nanoseek.rl.trainer as trainer_module

    calls = []  # (logp, old_logp, advantages, mask) of every grpo_loss call of the step

    def recording(logp, old, adv, mask, ref=None, **kw):
        calls.append((logp.detach().clone(), old.clone(), adv.clone(), mask.clone()))
        return grpo_loss(logp, old, adv, mask, ref, **kw)

    monkeypatch.setattr(trainer_module, "grpo_loss", recording)
    tr = GRPOTrainer(qwen_policy(), ToyTask(), toy_config(mu=2, minibatches_per_step=2, lr=5e-2), seed=0)
    m, _ = tr.step(0)
    assert len(calls) == 4  # mu 2 x 2 minibatches, one micro-batch each
    ratios = [torch.exp(lp - old) for lp, old, _, _ in calls]
    # the first minibatch of the first pass runs before any optimizer step: ratio exactly 1; every later
    # one runs after an update, against the rollout policy's log-probs
    assert torch.equal(ratios[0][calls[0][3]], torch.ones(int(calls[0][3].sum())))
    assert all((r[c[3]] - 1).abs().max() > 1e-3 for r, c in zip(ratios[1:], calls[1:]))
    # the logged metrics are the token means over the four calls (eps 0.2, symmetric)
    tok = sum(int(c[3].sum()) for c in calls)
    region = sum(int((c[3] & (((r < 0.8) & (c[2][:, None] < 0)) | ((r > 1.2) & (c[2][:, None] > 0)))).sum())
                 for r, c in zip(ratios, calls))
    assert region > 0
    assert m["clip_ratio/region"] == pytest.approx(region / tok, abs=1e-6)
    assert m["ratio"] == pytest.approx(sum(float(r[c[3]].sum()) for r, c in zip(ratios, calls)) / tok, rel=1e-5)


def test_learning_rate_schedules():
    def learning_rate(step, cfg):  # what GRPOTrainer._update uses
        return lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio, cfg.lr_schedule)

    cfg = toy_config(steps=10, lr=1.0, warmup_steps=2, min_lr_ratio=0.0, lr_schedule="linear")
    assert [learning_rate(s, cfg) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    cos = toy_config(steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, cos) == 1.0 and learning_rate(10, cos) == pytest.approx(0.1)


def test_health_alarms_fire_once_with_the_fix():
    out = io.StringIO()
    alarms = Alarms(stream=out)
    base = {"completion/truncated": 0.1, "groups/zero_spread": 0.1, "entropy": 2.0, "grader/calls": 10,
            "grader/timeouts": 0}
    assert alarms.check({**base, "step": 1}) == []
    assert alarms.check({**base, "step": 2, "completion/truncated": 0.9}) == ["truncated"]
    assert alarms.check({**base, "step": 3, "completion/truncated": 0.9}) == []  # once
    fired = alarms.check({**base, "step": 4, "groups/zero_spread": 0.8, "entropy": 0.01,
                          "grader/timeouts": 3})
    assert fired == ["zero_spread", "entropy_collapse", "grader_timeouts"]
    text = out.getvalue()
    assert "max_new_tokens" in text and "dynamic_sampling" in text and "epsilon_high" in text
    restored = Alarms(enabled=False)
    restored.load_state_dict(alarms.state_dict())
    assert restored.check({**base, "completion/truncated": 0.9}) == []


def test_report_to_skips_cleanly_without_the_package(tmp_path, capsys, monkeypatch):
    from nanoseek.rl.loggers import ExternalLoggers

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    loggers = ExternalLoggers(["tensorboard", "wandb"], tmp_path)
    loggers.log({"step": 1, "reward/mean": 0.5, "alarms": ["x"]})
    assert loggers.backends == []
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": import of")[0] for line in lines] == [
        "[nanoseek] report_to 'tensorboard' skipped: ModuleNotFoundError",
        "[nanoseek] report_to 'wandb' skipped: ModuleNotFoundError"]


def test_report_to_sends_the_finite_numbers(tmp_path, monkeypatch):
    from nanoseek.rl.loggers import ExternalLoggers

    seen = []

    class Writer:  # torch.utils.tensorboard.SummaryWriter's two calls
        def __init__(self, log_dir):
            seen.append(("tensorboard", log_dir))

        def add_scalar(self, key, value, step):
            seen.append(("tb", key, value, step))

        def flush(self):
            seen.append(("tb flush",))

    class Run:
        def log(self, metrics, step):
            seen.append(("wandb", metrics, step))

    def init(**kw):
        seen.append(("wandb.init", kw["project"], kw["name"], kw["config"]))
        return Run()

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    loggers = ExternalLoggers(["tensorboard", "wandb"], tmp_path / "run1", config={"lr": 0.1})
    loggers.log({"step": 3, "reward/mean": 0.5, "kl": 2, "alarms": ["x"], "done": True, "loss": float("nan")})
    assert seen == [("tensorboard", str(tmp_path / "run1" / "tensorboard")),
                    ("wandb.init", "nanoseek", "run1", {"lr": 0.1}),
                    ("tb", "reward/mean", 0.5, 3), ("tb", "kl", 2.0, 3), ("tb flush",),
                    ("wandb", {"reward/mean": 0.5, "kl": 2.0}, 3)]
