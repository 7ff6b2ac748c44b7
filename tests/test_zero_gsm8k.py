"""`nanoseek zero --task gsm8k --model PATH` on real GSM8K (../shared/data): planted correct and wrong
completions get the right rewards, and a few GRPO steps with a nanoseek checkpoint run end to end
(rollouts, rewards, update, metrics) even though a tiny model scores near zero."""

import json
import os
import subprocess
import sys

import torch

from nanoseek.rewards.registry import combine_rewards
from nanoseek.tasks import get_task


def test_planted_gsm8k_completions_get_the_right_rewards(data_dir):
    task = get_task("gsm8k", data_dir=data_dir)
    examples = task.examples("test")[:5]
    fn = combine_rewards({"accuracy": 1.0, "format": 0.5}, task=task)
    completions, expected, cols = [], [], {"answer": []}
    for e in examples:
        n = int(e.answer)
        planted = [
            (f" {n} in all.</think><answer>{n}</answer>", 1.5),              # right, well formed
            (f" so {n:,} total</think><answer>{n:,}</answer>", 1.5),        # thousands separator
            (f" hmm</think><answer>{n + 1}</answer>", 0.5),                  # wrong, well formed
            (f" hmm</think><answer>{-n if n else 7}</answer>", 0.5),        # wrong sign
            (f"</think>The answer is \\boxed{{{n}}}.", 1.0),                 # right, no answer block
            (f" still thinking about {n}", 0.0),                            # never closes the think block
        ]
        for text, reward in planted:
            completions.append(text)
            expected.append(reward)
            cols["answer"].append(e.answer)
    parts = fn.parts(completions, think_prefilled=True, **cols)
    assert len(parts["accuracy"]) == len(completions)
    assert fn.combine(parts) == expected


def test_grpo_steps_on_real_gsm8k_with_a_nanoseek_checkpoint(tmp_path, data_dir):
    from nanoseek.model.hf import save_model
    from nanoseek.model.config import ModelConfig
    from nanoseek.model.transformer import DeepseekV3ForCausalLM
    from nanoseek.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = ModelConfig.tiny(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_nextn_predict_layers=0,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           max_position_embeddings=2048)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_model(DeepseekV3ForCausalLM(cfg), model_dir, tok)
    out = tmp_path / "run"
    sets = ["run.threads=1", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=16",
            "grpo.max_prompt_length=2048", "grpo.eval_every=0", "eval.limit=3", "eval.samples=2", "eval.max_new_tokens=16"]
    args = ["zero", "--task", "gsm8k", "--model", str(model_dir), "--data-dir", str(data_dir), "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "nanoseek.cli.main", *args, *[a for s in sets for a in ("--set", s)]],
                          env={**os.environ, "NANOSEEK_QUIET": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m["completion/mean_length"] > 0 and 0 <= m["reward/accuracy"] <= 1 and m["time/update"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "gsm8k" and summary["steps"] == 2
    assert summary["final"]["n"] == 3 and summary["final"]["samples"] == 2
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert any("Natalia" in s["prompt"] or len(s["prompt"]) > 50 for s in samples)
    assert (out / "checkpoints" / "step-2" / "model.safetensors").is_file()
