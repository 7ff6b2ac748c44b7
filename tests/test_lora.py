"""LoRA GRPO on a transformers policy: only adapters train, the reference is the base with the
adapter disabled (no second model), checkpoints hold the adapter only and restore exactly."""

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.runs.checkpoint import load_weights_into, save_checkpoint
from nanoseek.model.lora import adapter_disabled, is_lora
from nanoseek.model.hf_fast import FastLM
from nanoseek.policy.policy import build_batch
from nanoseek.rl import token_logprobs
from nanoseek.rl.trainer import GRPOTrainer
from nanoseek.runs.rundir import RunDir
from test_trainer_helpers import ToyTask, native_policy, qwen_model, qwen_policy, tokenizer, toy_config

pytest.importorskip("peft")
torch.set_num_threads(1)


def _logp(model, batch):
    out = model(batch.input_ids, attention_mask=batch.attention_mask)
    return token_logprobs(out.logits[:, batch.prompt_len - 1:-1], batch.completion_ids)


def test_lora_trains_adapters_only_against_the_disabled_adapter(tmp_path):
    policy = qwen_policy()
    base = qwen_model()  # a pristine copy of the same weights
    tr = GRPOTrainer(policy, ToyTask(), toy_config(lora_r=4, beta=0.04, lr=5e-2), seed=0)
    assert is_lora(policy.model) and tr.ref_model is None
    assert tr.params and all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    frozen = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    m0, _ = tr.step(0)
    assert m0["kl"] == pytest.approx(0.0, abs=1e-7)  # lora_B starts at 0: policy == reference
    m1, _ = tr.step(1)
    assert m1["kl"] > 0
    assert all(torch.equal(p, frozen[n]) for n, p in policy.model.named_parameters() if not p.requires_grad)
    batch = build_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], 0)
    with torch.no_grad():
        with adapter_disabled(policy.model):
            torch.testing.assert_close(_logp(policy.model, batch), _logp(base, batch), atol=1e-6, rtol=0)
        assert not torch.allclose(_logp(policy.model, batch), _logp(base, batch), atol=1e-4)
        # the shared-prompt path sees the adapter too
        pids = torch.tensor([[0, 5, 6, 7], [0, 0, 8, 9]])
        fast = token_logprobs(FastLM(policy.model).completion_logits(pids, (pids != 0).long(), torch.tensor([0, 1]),
                                                                      batch.completion_ids), batch.completion_ids)
        torch.testing.assert_close(fast[batch.completion_mask], _logp(policy.model, batch)[batch.completion_mask],
                                   atol=1e-5, rtol=0)

    run = RunDir.create(tmp_path / "run", {"grpo": {"lora_r": 4}})
    ckpt = save_checkpoint(run, 2, policy.model, tokenizer(), tr.state_dict())
    names = {p.name for p in ckpt.iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    assert (ckpt / "trainer_state" / "config.toml").is_file()
    fresh = qwen_policy()
    tr2 = GRPOTrainer(fresh, ToyTask(), toy_config(lora_r=4, beta=0.04, lr=5e-2), seed=0)
    load_weights_into(fresh.model, ckpt)
    with torch.no_grad():
        torch.testing.assert_close(_logp(fresh.model, batch), _logp(policy.model, batch), atol=0, rtol=0)
    tr2.load_state_dict(tr.state_dict())
    a, _ = tr.step(2)
    b, _ = tr2.step(2)
    assert a["reward/mean"] == b["reward/mean"] and a["loss"] == b["loss"]


def test_lora_needs_a_transformers_policy():
    with pytest.raises(NanoseekError, match="transformers"):
        GRPOTrainer(native_policy(), ToyTask(), toy_config(lora_r=4), seed=0)
    with pytest.raises(NanoseekError, match="LoRA"):
        GRPOTrainer(qwen_policy(), ToyTask(), toy_config(lora_r=4, beta=0.01, ref_reset_every=5), seed=0)
