"""Load a model from any ``--model`` path: ``load_model(path)``, ``resolve_model_dir(path)``.

Accepted paths (DESIGN "Run directory"):

* a Hugging Face folder: ``config.json`` + ``model.safetensors`` or shards listed in
  ``model.safetensors.index.json``;
* a checkpoint folder ``RUN_DIR/checkpoints/step-N/`` (an HF folder plus ``trainer_state/``);
* a run directory ``RUN_DIR`` whose ``checkpoints/latest`` names the newest ``step-N``, or, before
  the first GRPO checkpoint, its ``base/`` folder (the model ``nanoseek zero`` pretrained);
* a short name such as ``smollm2-135m`` (``nanoseek.model.hub``; converted once into the local cache)
  when no file or folder of that name exists.

``model_type: deepseek_v3`` loads into nanoseek's ``DeepseekV3ForCausalLM``; any other architecture
is loaded with ``transformers.AutoModelForCausalLM`` and wrapped (``nanoseek.model.hf.TransformersLM``)
so that ``model(input_ids, attention_mask).logits`` and ``nanoseek.policy.generate`` work the same way.

DeepSeek-V3 tensor names on disk are the released per-expert names (``mlp.experts.{j}.gate_proj``);
fused ``mlp.experts.gate_up_proj [E, 2I, D]`` / ``mlp.experts.down_proj [E, D, I]`` (transformers-5
in-memory layout) are split on load. FP8 checkpoints (``float8_e4m3fn`` weights with a float32
``weight_scale_inv`` per 128×128 block, V3 README_WEIGHTS) load dequantised. MTP tensors
``model.layers.{L..L+D-1}.*`` are optional on load; their ``embed_tokens`` / ``shared_head.head``
copies (the release stores them, ``mtp.SHARED_COPIES``) are ignored (they are the shared embedding
and head, V3 §2.2). Writing is ``DeepseekV3ForCausalLM.save_pretrained`` / ``nanoseek.model.hf.save_model``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from nanoseek.errors import NanoseekError
from nanoseek.model import hub
from nanoseek.model.config import ModelConfig
from nanoseek.model.hf import TransformersLM
from nanoseek.model.mtp import SHARED_COPIES
from nanoseek.model.transformer import DeepseekV3ForCausalLM

_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
             "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
             "moe_intermediate_size", "intermediate_size")


# ----------------------------------------------------------------------------------- paths
def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The HF folder behind ``path`` (a run dir, a ``checkpoints/step-N`` folder, an HF folder or a
    short name). Raises ``NanoseekError`` naming what is missing."""
    p = Path(path).expanduser()
    if not p.exists():
        if hub.is_short_name(str(path)):
            return hub.ensure_model(str(path))
        raise NanoseekError(f"model path {str(p)!r} does not exist, and it is not a known short name "
                            f"({', '.join(hub.known_models())})")
    if p.is_file():
        raise NanoseekError(f"model path {str(p)!r} is a file, not a model folder")
    if (p / "config.json").is_file():
        return p
    ckpts = p / "checkpoints" if (p / "checkpoints").is_dir() else (p if p.name == "checkpoints" else None)
    if ckpts is not None:
        if (ckpts / "latest").is_dir():  # a symlink to the folder
            return resolve_model_dir(ckpts / "latest")
        newest = newest_checkpoint(ckpts)
        if newest is not None:
            return newest
    if (p / "base" / "config.json").is_file() and ckpts != p:  # a run dir before its first GRPO checkpoint
        return p / "base"
    if ckpts is not None:
        raise NanoseekError(f"{ckpts} holds no checkpoint (no 'latest' file, no step-N folder with config.json)")
    raise NanoseekError(f"{str(p)!r} is not a model: no config.json (and not a run directory with "
                        "checkpoints/ or base/)")


def newest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest model folder in a run's ``checkpoints/`` folder, or None.

    The layout is the one ``nanoseek.runs`` writes (read here because ``model/`` sits below
    ``runs/``): ``checkpoints/latest`` is a text file naming the newest complete checkpoint
    (``step-N``, relative to ``checkpoints/``, or an absolute path); without it, the ``step-N``
    folder with the largest N that holds a ``config.json``. ``NanoseekError`` when ``latest``
    names something that is not a model folder.
    """
    latest = checkpoints / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        target = Path(name) if Path(name).is_absolute() else checkpoints / name
        if not (target / "config.json").is_file():
            raise NanoseekError(f"{latest} names {name!r}, which is not a model folder")
        return target
    steps = sorted((d for d in checkpoints.glob("step-*") if (d / "config.json").is_file()),
                   key=lambda d: int(re.sub(r"\D", "", d.name) or 0))
    return steps[-1] if steps else None


def _tensor_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_config_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise NanoseekError(f"{index} has no 'weight_map' table")
        files = [d / f for f in sorted(set(weight_map.values()))]
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise NanoseekError(f"{index} lists missing shard files: {missing}")
        return files
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise NanoseekError(f"{str(d)!r} has a config.json but no *.safetensors weights")
    return files


# ------------------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike, dtype: torch.dtype | None = torch.float32,
               device: str | torch.device = "cpu") -> nn.Module:
    """Load a model for inference or training (see module docstring for accepted paths).

    Returns a ``DeepseekV3ForCausalLM`` (``model_type: deepseek_v3``) or a ``TransformersLM``,
    in ``eval()`` mode, cast to ``dtype`` (float32 by default; None keeps the stored dtype for
    transformers models). Raises ``NanoseekError`` naming the problem.
    """
    d = resolve_model_dir(path)
    raw = read_config_json(d / "config.json")
    model_type = raw.get("model_type")
    if model_type != "deepseek_v3":
        return _load_transformers(d, model_type, dtype, device)
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise NanoseekError(f"{d / 'config.json'} is missing required fields {missing}")
    try:
        config = ModelConfig.from_dict(raw, strict=False)
    except ValueError as e:
        raise NanoseekError(f"{d / 'config.json'}: {e}") from None
    block = tuple((raw.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
    with torch.device("cpu"):
        model = DeepseekV3ForCausalLM(config)
    load_state(model, _read_tensors(d), block)
    model = model.to(device=device, dtype=dtype or torch.float32)
    for moe in model.moe_layers():  # the router and its bias stay float32 (V3 §3.3: gating in high precision)
        moe.gate.float()
    return model.eval()


def load_state_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy the weights stored at ``path`` (any path ``load_model`` accepts) into an existing
    ``model`` in place (resuming: the optimizer keeps pointing at the same parameters).

    The stored config must describe the same architecture; errors name the mismatch.
    """
    d = resolve_model_dir(path)
    if isinstance(model, TransformersLM):
        other = _load_transformers(d, None, None, "cpu")
        try:
            model.hf.load_state_dict(other.hf.state_dict())
        except RuntimeError as e:
            raise NanoseekError(f"{d} does not fit the model: {e}") from None
        return
    if not isinstance(model, DeepseekV3ForCausalLM):
        raise NanoseekError(f"load_state_into: cannot load into a {type(model).__name__}")
    raw = read_config_json(d / "config.json")
    block = tuple((raw.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
    load_state(model, _read_tensors(d), block)


def read_config_json(path: Path) -> dict:
    """The JSON object in ``path`` (a model's ``config.json`` or weight index). Raises a one-line
    ``NanoseekError`` naming the file when it cannot be read, is not JSON or not an object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NanoseekError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise NanoseekError(f"{path} holds a {type(raw).__name__}, not a JSON object")
    return raw


def _read_tensors(d: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the weight files in ``d``; a truncated or garbled file is a one-line
    ``NanoseekError`` naming it (safetensors checks the header against the file's size)."""
    tensors: dict[str, torch.Tensor] = {}
    for f in _tensor_files(d):
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    tensors[k] = sf.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise NanoseekError(f"cannot read {f}: {e} (a truncated or damaged weight file?)") from None
    return tensors


def _dequant_fp8(w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """W = W_fp8 · s for each ``block`` (128×128) tile (V3 README_WEIGHTS, ``weight_dequant``)."""
    rows, cols = w.shape
    s = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return w.float() * s


def _normalise_names(tensors: dict[str, torch.Tensor], block: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Dequantise FP8 weights and split fused expert tensors into per-expert names."""
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if k.endswith("_scale_inv"):
            if k[: -len("_scale_inv")] not in tensors:
                raise NanoseekError(f"checkpoint has {k} without its weight {k[: -len('_scale_inv')]}")
            continue
        scale = tensors.get(k + "_scale_inv")
        if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            if scale is None:
                raise NanoseekError(f"FP8 tensor {k} has no {k}_scale_inv")
            v = _dequant_fp8(v, scale, block)
        elif scale is not None:
            raise NanoseekError(f"tensor {k} has a _scale_inv but is {v.dtype}, not float8_e4m3fn")
        m = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)", k)
        if m and v.dim() == 3:  # fused [E, 2I, D] / [E, D, I]
            for j in range(v.shape[0]):
                if m.group(2) == "gate_up_proj":
                    gate, up = v[j].chunk(2, dim=0)
                    out[f"{m.group(1)}.{j}.gate_proj.weight"] = gate
                    out[f"{m.group(1)}.{j}.up_proj.weight"] = up
                else:
                    out[f"{m.group(1)}.{j}.down_proj.weight"] = v[j]
            continue
        out[k] = v
    return out


def load_state(model: DeepseekV3ForCausalLM, tensors: dict[str, torch.Tensor],
               block: tuple[int, int] = (128, 128)) -> None:
    """Copy checkpoint ``tensors`` (HF names) into ``model``; raise ``NanoseekError`` on missing or
    unexpected names and shape mismatches. MTP tensors are optional (a warning when absent)."""
    c = model.config
    L, D = c.num_hidden_layers, c.num_nextn_predict_layers
    tensors = _normalise_names(tensors, block)
    own = model.state_dict()
    mtp_prefixes = tuple(f"model.layers.{L + k}." for k in range(D))
    unexpected, mismatched = [], []
    for k in list(tensors):
        m = re.match(r"model\.layers\.(\d+)\.(.*)", k)
        if m and int(m.group(1)) >= L:
            if int(m.group(1)) >= L + D or m.group(2) in SHARED_COPIES:
                del tensors[k]  # MTP beyond the configured depth, or copies of the shared embedding/head
                continue
        if k not in own:
            unexpected.append(k)
        elif tuple(tensors[k].shape) != tuple(own[k].shape):
            mismatched.append(f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}")
    if c.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
        own.pop("lm_head.weight", None)
    missing = [k for k in own if k not in tensors and not k.startswith(mtp_prefixes)]
    unexpected = [k for k in unexpected if not (k.endswith(".weight") and tensors[k].numel() == 0)]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_short(mismatched)}")
    if problems:
        raise NanoseekError("checkpoint does not fit the DeepSeek-V3 config: " + "; ".join(problems))
    absent_mtp = sorted({k.split(".")[2] for k in own if k.startswith(mtp_prefixes) and k not in tensors})
    if absent_mtp:
        warnings.warn(f"checkpoint has no MTP weights for layer(s) {absent_mtp}; they keep their random init",
                      stacklevel=3)
    dtypes = {k: v.dtype for k, v in own.items()}
    result = model.load_state_dict({k: v.to(dtypes[k]) for k, v in tensors.items() if k in own}, strict=False)
    if result.unexpected_keys:  # pragma: no cover - names were checked above
        raise NanoseekError(f"unexpected tensors: {_short(result.unexpected_keys)}")


def _short(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")



def _load_transformers(d: Path, model_type, dtype, device) -> TransformersLM:
    try:
        import transformers
    except ImportError:  # pragma: no cover
        raise NanoseekError(f"model_type {model_type!r} needs the transformers package") from None
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype or "auto")
    except (ValueError, KeyError, OSError) as e:
        raise NanoseekError(f"unsupported model_type {model_type!r} in {d}: {e}") from None
    return TransformersLM(hf.to(device)).eval()
