"""Hugging Face model folders: ``save_model(model, directory, tokenizer)`` and ``TransformersLM``.

A model folder is what ``transformers.AutoModelForCausalLM.from_pretrained`` and
``nanoseek.load_model`` (``nanoseek.model.load``) read: ``config.json``, ``model.safetensors`` and,
when a tokenizer is given, its files with the chat template. Both model kinds write their weights
with their own ``save_pretrained(directory)``: nanoseek's ``DeepseekV3ForCausalLM`` with the
released DeepSeek-V3 tensor names, a ``TransformersLM`` (any other architecture, loaded through
transformers and wrapped in nanoseek's calling convention) with transformers' own.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
from torch import nn

from nanoseek.atomic import atomic_write_json
from nanoseek.errors import NanoseekError
from nanoseek.model.transformer import CausalLMOutput


def save_model(model: nn.Module, directory: str | os.PathLike, tokenizer=None) -> None:
    """Write a Hugging Face model folder into ``directory`` (created if needed): the weights and
    ``config.json`` (``model.save_pretrained``), and with ``tokenizer`` its files and chat template.

    ``model`` is a nanoseek ``DeepseekV3ForCausalLM`` or a ``TransformersLM``; ``NanoseekError``
    for anything without ``save_pretrained``. transformers >= 5 writes the chat template to
    ``chat_template.jinja``; a copy also goes into ``tokenizer_config.json`` so that every
    tokenizer loader finds it.
    """
    if not callable(getattr(model, "save_pretrained", None)):
        raise NanoseekError(f"save_model: cannot save a {type(model).__name__}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is None:
        return
    tokenizer.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    if getattr(tokenizer, "chat_template", None) and cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if "chat_template" not in cfg:
            cfg["chat_template"] = tokenizer.chat_template
            atomic_write_json(cfg_path, cfg)


class TransformersLM(nn.Module):
    """A ``transformers`` causal LM with nanoseek's calling convention.

    ``forward(input_ids [B,T], attention_mask [B,T] or [B,past+T], position_ids, past_key_values,
    use_cache, logits_to_keep) -> CausalLMOutput`` (float32 logits). Without ``position_ids`` they are
    derived from the mask (cumsum − 1) like nanoseek does, so left padding works.
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        self.config = hf_model.config
        self._cache_kw = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutput:
        if position_ids is None and attention_mask is not None:
            T = input_ids.shape[1]
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0)[:, -T:]
        if past_key_values is not None:
            kwargs[self._cache_kw] = past_key_values
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        cache = None
        if use_cache:  # transformers 5 names it ``cache`` and warns on reading ``past_key_values``
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return CausalLMOutput(out.logits.float(), past_key_values=cache)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the wrapped model with transformers' own ``save_pretrained`` (a peft model writes
        its adapter only)."""
        self.hf.save_pretrained(directory)
