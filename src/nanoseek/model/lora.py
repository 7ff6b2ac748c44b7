"""LoRA for ``transformers`` policies, through peft (Hu et al. 2021, "LoRA").

``apply_lora(model, r, alpha, dropout, targets)`` wraps the ``transformers`` model inside a
``TransformersLM`` in a peft ``PeftModel`` in place: only the adapters train, and the frozen base
with the adapter disabled *is* the GRPO reference, so no second copy of the model is held
(``adapter_disabled``). Checkpoints hold the adapter only (``adapter_config.json`` +
``adapter_model.safetensors``, peft's format, plus the tokenizer): ``save_adapter`` /
``load_adapter_into``. To use a trained adapter elsewhere, load the base model and the adapter
with peft, or merge it (``model.hf.merge_and_unload()``).

peft is imported only here, when LoRA is asked for.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from nanoseek.errors import NanoseekError
from nanoseek.model.hf import TransformersLM

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_lora(model) -> bool:
    """True when ``model`` (a ``TransformersLM``) carries a peft adapter."""
    hf = getattr(model, "hf", None)
    return hf is not None and hasattr(hf, "peft_config")


def apply_lora(model, r: int, alpha: float, dropout: float = 0.0, targets: list[str] | None = None):
    """Add LoRA adapters of rank ``r`` (scale ``alpha / r``) to the ``targets`` linear layers of a
    ``TransformersLM`` in place and freeze everything else. Returns ``model``.

    Raises ``NanoseekError`` for a nanoseek-native model (LoRA is for ``transformers`` policies)
    or when peft is not installed.
    """
    if not isinstance(model, TransformersLM):
        raise NanoseekError("grpo.lora_r > 0 needs a transformers policy (--model a Hugging Face folder); "
                            f"got a {type(model).__name__}")
    if is_lora(model):
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover
        raise NanoseekError("grpo.lora_r > 0 needs the peft package: pip install peft") from None
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets or []) or "all-linear",
                     bias="none", task_type="CAUSAL_LM")
    model.hf = get_peft_model(model.hf, cfg)
    return model


@contextlib.contextmanager
def adapter_disabled(model):
    """Run ``model`` as its base (the GRPO reference) inside the block."""
    with model.hf.disable_adapter():
        yield model


def load_adapter_into(model, folder: Path) -> None:
    """Copy the adapter weights saved in ``folder`` into ``model``'s adapter (same LoRA config)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise NanoseekError(f"{folder} holds no LoRA adapter ({ADAPTER_WEIGHTS})")
    result = set_peft_model_state_dict(model.hf, load_file(str(path)))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise NanoseekError(f"adapter in {folder} does not fit the model: missing {missing[:4]}")
