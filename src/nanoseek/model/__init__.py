"""The DeepSeek-V3 model: MLA, DeepSeekMoE with aux-loss-free balancing, MTP (V3 §2).

Core modules import torch only; ``load.py`` and ``hf.py`` (model folders) import safetensors, and
transformers lazily, for non-V3 architectures.
"""

from nanoseek.model.attention import MLACache, MultiHeadLatentAttention, RMSNorm
from nanoseek.model.block import DecoderLayer
from nanoseek.model.config import ModelConfig
from nanoseek.model.moe import MoE, TopkRouter, sequence_balance_loss
from nanoseek.model.mtp import MTPLayer, mtp_loss
from nanoseek.model.transformer import CausalLMOutput, DeepseekV3ForCausalLM

__all__ = [
    "CausalLMOutput", "DecoderLayer", "DeepseekV3ForCausalLM", "MLACache", "MTPLayer", "MoE", "ModelConfig",
    "MultiHeadLatentAttention", "RMSNorm", "TopkRouter", "mtp_loss", "sequence_balance_loss",
]
