"""``nanoseek sft`` runs: a transformers causal LM student, run-directory outputs, resume, the CLI."""

import json

import pytest
import torch

from nanoseek.tokenizer import build_tokenizer

CHATML = ("{% for m in messages %}<|begin|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|begin|>assistant\n{% endif %}")


@pytest.fixture
def llama_folder(tmp_path):
    """A tiny random Llama (any transformers causal LM) with a ChatML template and pad == EOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = build_tokenizer()
    tok.chat_template = CHATML
    tok.pad_token = tok.eos_token
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    folder = tmp_path / "llama"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture
def data_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"What is {a}+{b} mod 10?"},
                          {"role": "assistant", "reasoning_content": f"{a} {(a + b) % 10}",
                           "content": f"<answer>{(a + b) % 10}</answer>"}]} for a in range(4) for b in range(3)]
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_sft_run_on_a_transformers_model_writes_the_run_directory_and_resumes(tmp_path, llama_folder, data_file, monkeypatch):
    from nanoseek.model.load import resolve_model_dir
    from nanoseek.recipes.sft import build_sft_recipe, run_sft

    torch.set_num_threads(1)
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    data = {"model": {"path": str(llama_folder)}, "data": [str(data_file)],
            "sft": {"steps": 6, "batch_size": 4, "lr": 1e-2}, "run": {"checkpoint_every": 3, "keep_checkpoints": 1},
            "task": {"name": "chain", "options": {"n_test": 4, "min_terms": 2, "max_terms": 2}},
            "eval": {"limit": 4, "samples": 1, "max_new_tokens": 8}}
    recipe = build_sft_recipe(data)
    out = tmp_path / "run"
    # stop after 3 steps: the wall-time limit writes a checkpoint, then resume finishes the run
    recipe.run.max_wall_seconds = 1e-9
    run_sft(recipe, out=str(out))
    assert (out / "checkpoints" / "step-1").is_dir() and not (out / "summary.json").exists()  # stopped, not finished
    recipe.run.max_wall_seconds = 0.0
    run_sft(recipe, out=str(out), resume=True)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "sft/loss" in m]
    assert steps == list(range(1, 7))  # resumed at step 2, no step logged twice
    assert resolve_model_dir(out).name == "step-6"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and "pass@1" in summary["final"] and "pass@1" in summary["base"]
    assert (out / "report.md").exists() and (out / "plots" / "loss.png").exists()
    from nanoseek.model.hf import TransformersLM
    from nanoseek.model.load import load_model

    assert isinstance(load_model(out), TransformersLM)


def test_cli_sft_refuses_bad_data_with_one_line(tmp_path, llama_folder, capsys):
    from nanoseek.cli.main import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    assert main(["sft", "--model", str(llama_folder), "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
