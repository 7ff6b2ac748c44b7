"""Parity with transformers' DeepseekV3 and checkpoint I/O (load_model / save_pretrained)."""

import json
import warnings

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.policy.generate import SamplingParams, generate
from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
from nanoseek.model.hf import TransformersLM
from nanoseek.model.load import load_model, load_state_into

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

V = 67
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 1.0,
        "beta_fast": 32, "beta_slow": 1}
CASES = {
    "v3": dict(q_lora_rank=24, n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True,
               routed_scaling_factor=2.5, n_shared_experts=1, rope_scaling=YARN),
    "no_qlora_dense0": dict(q_lora_rank=None, n_group=1, topk_group=1, first_k_dense_replace=0, norm_topk_prob=False,
                            routed_scaling_factor=1.0, n_shared_experts=2, rope_scaling=None),
    "v2lite_yarn": dict(q_lora_rank=24, n_group=2, topk_group=1, first_k_dense_replace=2, norm_topk_prob=True,
                        routed_scaling_factor=1.7, n_shared_experts=3, rope_interleave=False, attention_bias=True,
                        rope_scaling={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707, "factor": 8.0}),
}


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
                kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, max_position_embeddings=64,
                initializer_range=0.15, num_nextn_predict_layers=0)
    base.update(kw)
    return ModelConfig.tiny(**base)


def hf_config(cfg: ModelConfig):
    return transformers.DeepseekV3Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                            if k not in ("architectures", "model_type")})


def random_hf_model(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = transformers.DeepseekV3ForCausalLM(hf_config(cfg)).eval()
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if "e_score_correction_bias" in name:
                t.normal_(0, 0.05)  # a non-zero balancing bias changes the selection
            elif name.endswith("norm.weight") or "layernorm" in name:
                t.uniform_(0.5, 1.5)
    return m


def padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(0, V, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :7] = 0
    mask[2, :19] = 0
    return ids, mask


def hf_logits(hf, ids, mask):
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    cfg = small_config(**CASES[case])
    hf = random_hf_model(cfg)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert isinstance(ours, DeepseekV3ForCausalLM)
    ids, mask = padded_batch()
    want = hf_logits(hf, ids, mask)
    for impl in ("naive", "absorb"):
        for layer in ours.model.layers:
            layer.self_attn.attn_impl = impl
        with torch.no_grad():
            got = ours(ids, attention_mask=mask).logits
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() <= 1e-4, impl
    # and without a mask
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_roundtrip_nanoseek_to_transformers_and_back(tmp_path):
    cfg = small_config(**CASES["v3"], num_nextn_predict_layers=1)
    torch.manual_seed(0)
    ours = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in ours.moe_layers():
            layer.gate.e_score_correction_bias.normal_(0, 0.05)
    ours.save_pretrained(tmp_path)
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.3.enorm.weight" in on_disk and "model.layers.3.shared_head.head.weight" in on_disk
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in on_disk
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (hf_logits(hf, ids, mask)[real] - got[real]).abs().max() <= 1e-4
    back = load_model(tmp_path)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # MTP tensors and the balancing bias included


def test_sharded_and_run_dir_and_fused_experts(tmp_path):
    cfg = small_config(**CASES["v3"])
    torch.manual_seed(0)
    ours = DeepseekV3ForCausalLM(cfg).eval()
    step = tmp_path / "run" / "checkpoints" / "step-7"
    step.mkdir(parents=True)
    cfg.save(step)
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    # shard 2: transformers-5 fused expert layout for layer 1
    fused = {}
    pre = "model.layers.1.mlp.experts"
    E = cfg.n_routed_experts
    fused[pre + ".gate_up_proj"] = torch.stack(
        [torch.cat([state.pop(f"{pre}.{j}.gate_proj.weight"), state.pop(f"{pre}.{j}.up_proj.weight")]) for j in range(E)])
    fused[pre + ".down_proj"] = torch.stack([state.pop(f"{pre}.{j}.down_proj.weight") for j in range(E)])
    save_file(state, str(step / "model-00001-of-00002.safetensors"))
    save_file(fused, str(step / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in state} | {k: "model-00002-of-00002.safetensors" for k in fused}
    (step / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-7\n")
    ids = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        want = ours(ids).logits
        for p in (tmp_path / "run", step):
            assert torch.equal(load_model(p)(ids).logits, want)


def test_fp8_checkpoint_loads_dequantised(tmp_path):
    cfg = small_config(**CASES["v3"], hidden_size=160, intermediate_size=200)  # > one 128 block, ragged
    torch.manual_seed(0)
    ours = DeepseekV3ForCausalLM(cfg).eval()
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    fp8, expected = {}, {}
    for k, w in state.items():
        if w.dim() == 2 and "embed" not in k and "lm_head" not in k and ".gate.weight" not in k:
            r, c = w.shape
            rb, cb = -(-r // 128), -(-c // 128)
            pad = torch.zeros(rb * 128, cb * 128)
            pad[:r, :c] = w
            blocks = pad.view(rb, 128, cb, 128)
            scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12) / 448.0  # e4m3 max = 448
            q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
            fp8[k] = q.view(rb * 128, cb * 128)[:r, :c].contiguous()
            fp8[k + "_scale_inv"] = scale
            expected[k] = (q.float() * scale[:, None, :, None]).view(rb * 128, cb * 128)[:r, :c]
        else:
            fp8[k] = w
            expected[k] = w
    d = cfg.to_hf_dict() | {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                                     "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}
    (tmp_path / "config.json").write_text(json.dumps(d))
    save_file(fp8, str(tmp_path / "model.safetensors"))
    loaded = load_model(tmp_path).state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(loaded[k], v, atol=0, rtol=0)
    err = (loaded["model.layers.0.mlp.gate_proj.weight"] - state["model.layers.0.mlp.gate_proj.weight"]).abs().max()
    assert 0 < err < 0.1 * state["model.layers.0.mlp.gate_proj.weight"].abs().max()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(NanoseekError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(NanoseekError, match="not a model"):
        load_model(tmp_path)
    cfg = small_config(**CASES["v3"])
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(cfg)
    m.save_pretrained(tmp_path / "ok")
    sd = load_file(str(tmp_path / "ok" / "model.safetensors"))

    def write(name, state, config=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config or cfg.to_hf_dict()))
        if state is not None:
            save_file(state, str(d / "model.safetensors"))
        return d

    missing = {k: v for k, v in sd.items() if k != "model.norm.weight"}
    with pytest.raises(NanoseekError, match=r"missing tensors.*model\.norm\.weight"):
        load_model(write("missing", missing))
    with pytest.raises(NanoseekError, match=r"unexpected tensors.*model\.foo"):
        load_model(write("unexpected", sd | {"model.foo": torch.zeros(2)}))
    with pytest.raises(NanoseekError, match=r"shape mismatches.*model\.norm\.weight"):
        load_model(write("shape", sd | {"model.norm.weight": torch.zeros(7)}))
    with pytest.raises(NanoseekError, match="no \\*.safetensors"):
        load_model(write("noweights", None))
    bad = cfg.to_hf_dict()
    del bad["hidden_size"]
    with pytest.raises(NanoseekError, match="missing required fields.*hidden_size"):
        load_model(write("nofield", sd, bad))
    with pytest.raises(NanoseekError, match="model_type 'frobnicator'"):
        load_model(write("arch", sd, {"model_type": "frobnicator"}))
    ckpts = tmp_path / "emptyrun" / "checkpoints"
    ckpts.mkdir(parents=True)
    with pytest.raises(NanoseekError, match="no checkpoint"):
        load_model(tmp_path / "emptyrun")


def test_missing_mtp_weights_are_optional(tmp_path):
    cfg = small_config(**CASES["v3"])
    hf = random_hf_model(cfg)
    hf.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    d["num_nextn_predict_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="MTP"):
        m = load_model(tmp_path)
    assert len(m.mtp_layers) == 1


def test_other_architectures_are_wrapped(tmp_path):
    torch.manual_seed(0)
    lcfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    llama = transformers.LlamaForCausalLM(lcfg).eval()
    llama.save_pretrained(tmp_path)
    m = load_model(tmp_path)
    assert isinstance(m, TransformersLM)
    ids, mask = padded_batch()
    with torch.no_grad():
        got = m(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - hf_logits(llama, ids, mask)[real]).abs().max() <= 1e-5
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    params = SamplingParams(max_new_tokens=5, temperature=0)
    outs = generate(m, prompts, params, pad_token_id=0)
    for p, c in zip(prompts, outs):
        with torch.no_grad():
            ref = llama.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert c.token_ids == ref[0, len(p):].tolist()


def test_load_state_into_keeps_parameter_objects(tmp_path):
    cfg = small_config(**CASES["v3"], num_nextn_predict_layers=1)
    torch.manual_seed(0)
    src = DeepseekV3ForCausalLM(cfg)
    src.save_pretrained(tmp_path / "step-3")
    torch.manual_seed(1)
    dst = DeepseekV3ForCausalLM(cfg)
    params = [id(p) for p in dst.parameters()]
    load_state_into(dst, tmp_path / "step-3")
    assert [id(p) for p in dst.parameters()] == params
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
