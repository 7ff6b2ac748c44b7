"""The public API (issue 13): ``from nanoseek import load_model, save_model``, and nanoseek's
DeepSeek-V3 model has ``save_pretrained(directory)`` as transformers models do, writing a folder
that ``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same logits."""

import json
import warnings

import pytest
import torch

from nanoseek import load_model, save_model
from nanoseek.errors import NanoseekError
from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
from nanoseek.tokenizer import build_tokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

V = 67


def small_v3() -> DeepseekV3ForCausalLM:
    """A DeepSeek-V3 model with every part switched on: q compression, grouped routing with a
    non-zero balancing bias, shared experts, a dense first layer, YaRN and one MTP module."""
    cfg = ModelConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8,
                           num_experts_per_tok=3, n_group=4, topk_group=2, first_k_dense_replace=1,
                           n_shared_experts=1, routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24,
                           qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, max_position_embeddings=64,
                           rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                         "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1},
                           num_nextn_predict_layers=1, initializer_range=0.15)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for moe in m.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.05)
    return m


def test_load_model_save_pretrained_round_trips_through_transformers(tmp_path):
    ours = small_v3()
    ours.save_pretrained(tmp_path / "a")
    load_model(tmp_path / "a").save_pretrained(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers has no MTP module: it skips those tensors
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ours(ids).logits
        got = hf(input_ids=ids).logits.float()
    assert want.abs().max() > 0.1  # not a trivially small signal
    assert (got - want).abs().max() <= 1e-5
    back = load_model(tmp_path / "b")  # and the second folder holds exactly the first model
    for (k, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


def test_save_model_writes_the_tokenizer_with_its_chat_template(tmp_path):
    tok = build_tokenizer()
    ours = small_v3()
    save_model(ours, tmp_path, tok)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template
    assert load_tokenizer(tmp_path).chat_template == tok.chat_template
    ids = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(ids).logits, ours(ids).logits)
    with pytest.raises(NanoseekError, match="cannot save a Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "no")
