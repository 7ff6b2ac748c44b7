"""``ModelConfig``: the DeepSeek-V3 model configuration, keyed by the Hugging Face ``config.json`` names.

The field names and defaults are those of ``transformers.DeepseekV3Config`` / the released
``deepseek-ai/DeepSeek-V3`` ``config.json`` (defaults = the 671B model, so a config.json that omits a
key means what it means to transformers). A released config.json loads unchanged with
``ModelConfig.from_json_file``; ``ModelConfig.save`` writes one that ``transformers.AutoConfig`` reads.

Three nanoseek training fields are added (written to config.json too; transformers ignores them):

* ``bias_update_speed`` γ of auxiliary-loss-free balancing (V3 §2.1.2); γ = 0.001 in V3 pre-training
  (V3 §4.2). 0 turns the bias update off.
* ``aux_loss_alpha`` α of the complementary sequence-wise balance loss (V3 §2.1.2 eq. 17-20);
  α = 0.0001 in V3 (§4.2). 0 turns it off. Note: the released V3 ``config.json`` also carries
  ``aux_loss_alpha: 0.001`` (a leftover of the remote code, not the paper's value); it is read as is.
* ``mtp_loss_weight`` λ of the multi-token-prediction loss (V3 §2.2 eq. 25); λ = 0.3 for the first
  10T tokens, 0.1 after (V3 §4.2).

And one implementation choice (lesson 5: implementation choices live in the config):

* ``attn_impl``: ``"naive"`` expands the cached latent into per-head K/V (V3 §2.1.1 eq. 1-11, as
  written); ``"absorb"`` folds ``W^{UK}`` into the query and ``W^{UV}`` into the output so attention
  runs in the latent space (V3 inference code, ``attn_impl="absorb"``); ``"auto"`` (default) uses
  naive for multi-token chunks (training, prefill) and absorb for decode steps. Both read the same
  latent cache; tests check they agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

# Keys transformers (or the released remote code) writes that carry no model information for us.
_BOOKKEEPING_KEYS = {
    "architectures", "transformers_version", "torch_dtype", "dtype", "model_type", "auto_map",
    "_name_or_path", "use_cache", "pretraining_tp", "output_router_logits", "head_dim", "qk_head_dim",
    "quantization_config", "ep_size", "seq_aux", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "tokenizer_class", "num_mtp_layers", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "tie_encoder_decoder",
}
# Keys whose value changes the model; they are accepted only with the value nanoseek implements.
_FIXED_KEYS = {
    "scoring_func": ("sigmoid",),  # V3 gate: sigmoid affinities (V3 §2.1.2 eq. 15)
    "topk_method": ("noaux_tc",),  # V3: bias-corrected group-limited top-k
    "moe_layer_freq": (1,),  # every layer after first_k_dense_replace is MoE
    "attention_dropout": (0, 0.0),
}
_ACTS = ("silu", "gelu", "relu", "gelu_pytorch_tanh")
_ATTN_IMPLS = ("auto", "naive", "absorb")


@dataclass
class ModelConfig:
    """DeepSeek-V3 hyper-parameters under their Hugging Face ``config.json`` names (V3 §2, §4.2).

    Defaults are ``transformers.DeepseekV3Config``'s (the 671B model); see ``ModelConfig.tiny`` for a
    CPU-sized model. ``q_lora_rank=None`` (or 0, as in DeepSeek's 16B config) means a plain
    ``q_proj`` without query compression.
    """

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense FFN width (layers < first_k_dense_replace)
    moe_intermediate_size: int = 2048  # width of one routed / shared expert
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = 128  # MLA: must equal num_attention_heads
    n_shared_experts: int = 1
    n_routed_experts: int = 256
    routed_scaling_factor: float = 2.5  # "route_scale" in V3 inference code
    kv_lora_rank: int = 512  # d_c, the cached latent (V3 §2.1.1)
    q_lora_rank: int | None = 1536  # d'_c; None = no query compression
    qk_rope_head_dim: int = 64  # d^R_h, decoupled RoPE dims
    v_head_dim: int = 128
    qk_nope_head_dim: int = 128
    n_group: int = 8  # expert groups for group-limited routing (V3 §2.1.2 "node-limited")
    topk_group: int = 4  # groups kept per token (M = 4 in V3)
    num_experts_per_tok: int = 8  # K_r
    first_k_dense_replace: int = 3
    norm_topk_prob: bool = True
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # YaRN: {"type": "yarn", "factor", "original_max_position_embeddings",
    #                                      "beta_fast", "beta_slow", "mscale", "mscale_all_dim"}
    rope_interleave: bool = True
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    num_nextn_predict_layers: int = 1  # D, MTP depth (V3 §2.2)
    initializer_range: float = 0.02  # V3 pre-training used 0.006 (V3 §4.2)
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    # --- nanoseek training fields (see module docstring) ---
    bias_update_speed: float = 0.001  # γ, V3 §4.2
    aux_loss_alpha: float = 0.0001  # α, V3 §4.2
    mtp_loss_weight: float = 0.3  # λ, V3 §4.2 (first 10T tokens)
    attn_impl: str = "auto"

    def __post_init__(self) -> None:
        if self.q_lora_rank == 0:
            self.q_lora_rank = None
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        positive = [
            "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "n_routed_experts", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim",
            "qk_nope_head_dim", "n_group", "topk_group", "num_experts_per_tok", "max_position_embeddings",
        ]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ModelConfig.{name} must be a non-negative integer, got {value!r}")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank < 0):
            raise ValueError(f"ModelConfig.q_lora_rank must be None or a positive integer, got {self.q_lora_rank!r}")
        if self.num_key_value_heads != self.num_attention_heads:
            raise ValueError(
                "ModelConfig.num_key_value_heads must equal num_attention_heads for MLA "
                f"(got {self.num_key_value_heads} vs {self.num_attention_heads})"
            )
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"ModelConfig.qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        if self.n_routed_experts % self.n_group:
            raise ValueError(
                f"ModelConfig.n_group ({self.n_group}) must divide n_routed_experts ({self.n_routed_experts})"
            )
        if self.n_group > 1 and self.n_routed_experts // self.n_group < 2:
            raise ValueError("ModelConfig.n_group: each expert group needs at least 2 experts (group score = top-2 sum)")
        if self.topk_group > self.n_group:
            raise ValueError(f"ModelConfig.topk_group ({self.topk_group}) must be <= n_group ({self.n_group})")
        if self.num_experts_per_tok > self.topk_group * (self.n_routed_experts // self.n_group):
            raise ValueError(
                f"ModelConfig.num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts in the "
                f"topk_group={self.topk_group} selected groups"
            )
        if self.hidden_act not in _ACTS:
            raise ValueError(f"ModelConfig.hidden_act must be one of {_ACTS}, got {self.hidden_act!r}")
        if self.attn_impl not in _ATTN_IMPLS:
            raise ValueError(f"ModelConfig.attn_impl must be one of {_ATTN_IMPLS}, got {self.attn_impl!r}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range", "routed_scaling_factor"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("bias_update_speed", "aux_loss_alpha", "mtp_loss_weight"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict):
                raise ValueError(f"ModelConfig.rope_scaling must be a dict or None, got {self.rope_scaling!r}")
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ("yarn", "default"):
                raise ValueError(f"ModelConfig.rope_scaling: only 'yarn' is supported, got type {kind!r}")
            if kind == "yarn" and not self.rope_scaling.get("factor"):
                raise ValueError("ModelConfig.rope_scaling: YaRN needs a 'factor'")
        eos = self.eos_token_id
        if not (eos is None or isinstance(eos, int) or (isinstance(eos, list) and all(isinstance(e, int) for e in eos))):
            raise ValueError(f"ModelConfig.eos_token_id must be an int, a list of ints or None, got {eos!r}")

    # ----------------------------------------------------------------- derived values
    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key size d_h + d^R_h (192 in V3)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers ``>= first_k_dense_replace`` use DeepSeekMoE; the first ones a dense FFN (V3 §4.2)."""
        return layer_idx >= self.first_k_dense_replace

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True) -> "ModelConfig":
        """Build from a ``config.json`` dict. Bookkeeping keys (architectures, transformers_version,
        torch_dtype, ...) are ignored; transformers-5 ``rope_parameters`` is mapped back to
        ``rope_theta`` + ``rope_scaling``. Unknown keys raise a ValueError naming them unless
        ``strict=False``."""
        d = dict(d)
        model_type = d.get("model_type")
        if model_type not in (None, "deepseek_v3"):
            raise ValueError(f"ModelConfig: model_type {model_type!r} is not 'deepseek_v3'")
        for key, allowed in _FIXED_KEYS.items():
            if key in d:
                value = d.pop(key)
                if value not in allowed:
                    raise ValueError(f"ModelConfig: {key}={value!r} is not supported (only {allowed[0]!r})")
        rope_parameters = d.pop("rope_parameters", None)
        if rope_parameters:
            rp = dict(rope_parameters)
            d.setdefault("rope_theta", rp.pop("rope_theta", 10000.0))
            rp.pop("partial_rotary_factor", None)
            kind = rp.get("rope_type", rp.get("type", "default"))
            if kind != "default":
                d.setdefault("rope_scaling", rp)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and k not in _BOOKKEEPING_KEYS)
        if unknown and strict:
            raise ValueError(f"ModelConfig: unknown config keys {unknown} (pass strict=False to ignore them)")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict (HF names, plus the nanoseek training fields)."""
        d = dataclasses.asdict(self)
        if d["rope_scaling"] is not None:
            d["rope_scaling"] = dict(d["rope_scaling"])
        return d

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, strict: bool = True) -> "ModelConfig":
        """Read a ``config.json`` (or a folder holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), strict=strict)

    def to_hf_dict(self) -> dict[str, Any]:
        """The dict ``save`` writes: ``to_dict`` + ``model_type``/``architectures`` (+ ``rope_type``)."""
        d = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", **self.to_dict()}
        if d["rope_scaling"] is not None:
            rs = d["rope_scaling"]
            kind = rs.get("rope_type", rs.get("type", "default"))
            rs.setdefault("type", kind)
            rs.setdefault("rope_type", kind)
        return d

    def save(self, path: str | os.PathLike) -> str:
        """Write ``config.json`` (``path`` is the file or its folder); returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path) or not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A CPU-sized V3 (hidden 128, 4 layers, 8 routed experts top-2 in 4 groups, MTP depth 1):
        every V3 feature is on (q/kv compression, YaRN-ready RoPE, dense first layer, shared expert,
        group-limited routing). Override any field by keyword."""
        base: dict[str, Any] = dict(
            vocab_size=320, hidden_size=128, intermediate_size=384, moe_intermediate_size=96,
            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
            n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5,
            kv_lora_rank=64, q_lora_rank=96, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32,
            first_k_dense_replace=1, max_position_embeddings=1024, initializer_range=0.02,
            num_nextn_predict_layers=1, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )
        base.update(overrides)
        return cls(**base)


__all__ = ["ModelConfig"]
