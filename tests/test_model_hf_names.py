"""nanoseek's state_dict names/shapes are exactly those transformers writes for DeepSeek-V3."""

import pytest
import torch

from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.mark.parametrize("q_lora_rank,first_dense", [(48, 1), (None, 0)])
def test_parameter_names_match_transformers(tmp_path, q_lora_rank, first_dense):
    cfg = ModelConfig.tiny(vocab_size=50, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                           num_hidden_layers=3, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
                           kv_lora_rank=16, q_lora_rank=q_lora_rank, qk_rope_head_dim=8, qk_nope_head_dim=8,
                           v_head_dim=8, first_k_dense_replace=first_dense, n_shared_experts=2,
                           num_nextn_predict_layers=1)
    hf_cfg = transformers.DeepseekV3Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                              if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    transformers.DeepseekV3ForCausalLM(hf_cfg).save_pretrained(tmp_path)
    hf = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    ours = {k: tuple(v.shape) for k, v in DeepseekV3ForCausalLM(cfg).state_dict().items()}
    L = cfg.num_hidden_layers
    main = {k: s for k, s in ours.items() if not k.startswith(f"model.layers.{L}.")}
    assert main == {k: tuple(v.shape) for k, v in hf.items()}
    mtp = sorted(k[len(f"model.layers.{L}."):] for k in ours if k.startswith(f"model.layers.{L}."))
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "self_attn.kv_b_proj.weight", "mlp.gate.e_score_correction_bias"):
        assert name in mtp
