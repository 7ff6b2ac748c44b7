"""Checkpoints: a Hugging Face model folder plus ``trainer_state/``, written atomically.

``RUN_DIR/checkpoints/step-N/`` holds ``config.json``, ``model.safetensors``, the tokenizer files
(chat template included in ``tokenizer_config.json``) and ``trainer_state/`` with
``state.pt`` (optimizer, scheduler position, the reference model when it is not recomputable),
``rng.pt`` (Python, NumPy and torch RNG states), ``meta.json`` (step, phase, data position) and
``config.toml`` (the run's config as it was when the checkpoint was written). A LoRA policy
(``nanoseek.model.lora``) is saved as its adapter only (``adapter_config.json`` +
``adapter_model.safetensors``, peft's format) instead of ``config.json`` + ``model.safetensors``;
:func:`load_weights_into` restores either kind into a live model.

The folder is written under a temporary name and renamed when complete, then
``checkpoints/latest`` is updated: a crash at any moment leaves the previous checkpoint intact
(``tests/test_resume.py`` kills a run with SIGKILL just before the rename and between steps, and
checks the resumed run's metrics and weights against an uninterrupted run).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nanoseek.atomic import atomic_dir, atomic_write_json


def rng_state() -> dict:
    """Every RNG state a run depends on (Python, NumPy, torch CPU and CUDA if present)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_model_folder(folder: Path, model, tokenizer) -> None:
    """Write a Hugging Face model folder (weights, config, tokenizer, chat template) into ``folder``."""
    from nanoseek.model.hf import save_pretrained

    save_pretrained(model, folder)
    tokenizer.save_pretrained(str(folder))
    # transformers >= 5 writes the chat template to chat_template.jinja; keep a copy in
    # tokenizer_config.json too so that every tokenizer loader finds it.
    cfg_path = folder / "tokenizer_config.json"
    if getattr(tokenizer, "chat_template", None) and cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if "chat_template" not in cfg:
            cfg["chat_template"] = tokenizer.chat_template
            atomic_write_json(cfg_path, cfg)


def write_trainer_state(folder: Path, state: dict, meta: dict) -> None:
    """Write ``folder/trainer_state/``: ``state.pt`` (``state``), ``rng.pt`` (every RNG state now)
    and ``meta.json`` (``meta``, which holds at least ``step``); read back by ``load_trainer_state``."""
    ts = Path(folder) / "trainer_state"
    ts.mkdir()
    torch.save(state, ts / "state.pt")
    torch.save(rng_state(), ts / "rng.pt")
    (ts / "meta.json").write_text(json.dumps(meta, indent=2))


def save_checkpoint(run, step: int, model, tokenizer, trainer_state: dict, meta: dict | None = None,
                    keep_last: int | None = None, before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{step}/`` atomically and point ``latest`` at it.

    Args:
        run: the ``RunDir``.
        trainer_state: picklable state (optimizer state dicts, ...) saved with ``torch.save``.
        meta: JSON-able facts (phase, data position, ...); ``step`` is added.
        keep_last: prune older checkpoints beyond this many (None keeps all).
        before_rename: fault-injection hook called with the temporary folder just before the
            rename (tests use it to kill a run mid-write).
    Returns the final checkpoint folder.
    """
    final = run.checkpoint_dir(step)
    with atomic_dir(final) as tmp:
        save_model_folder(tmp, model, tokenizer)
        write_trainer_state(tmp, trainer_state, {**(meta or {}), "step": step})
        config_path = getattr(run, "config_path", None)
        if config_path is not None and Path(config_path).is_file():
            shutil.copyfile(config_path, tmp / "trainer_state" / Path(config_path).name)
        if before_rename is not None:
            before_rename(tmp)
    run.mark_latest(step)
    if keep_last:
        run.prune_checkpoints(keep_last)
    return final


def load_trainer_state(checkpoint: Path) -> tuple[dict, dict, dict]:
    """Read ``(state, rng, meta)`` from a checkpoint's ``trainer_state/``."""
    ts = Path(checkpoint) / "trainer_state"
    state = torch.load(ts / "state.pt", weights_only=False)
    rng = torch.load(ts / "rng.pt", weights_only=False)
    meta = json.loads((ts / "meta.json").read_text())
    return state, rng, meta


def load_weights_into(model, checkpoint: Path) -> None:
    """Copy a checkpoint's weights into ``model`` in place (the optimizer keeps pointing at the
    same parameters): the LoRA adapter of an adapter-only checkpoint, else the full model."""
    from nanoseek.model.lora import ADAPTER_WEIGHTS, is_lora, load_adapter_into

    checkpoint = Path(checkpoint)
    if (checkpoint / ADAPTER_WEIGHTS).is_file():
        if not is_lora(model):
            from nanoseek.errors import NanoseekError

            raise NanoseekError(f"{checkpoint} holds a LoRA adapter; the model has none (set grpo.lora_r)")
        load_adapter_into(model, checkpoint)
        return
    from nanoseek.model.hf import load_model

    model.load_state_dict(load_model(checkpoint).state_dict())


def resume_from_latest(run, model, optimizer) -> int:
    """Continue from ``run``'s newest checkpoint, if any: load the weights into ``model``, the
    optimizer and every RNG state, drop log lines written after it; return its step (0 if none)."""
    from nanoseek.model.hf import load_state_into

    latest = run.latest_checkpoint()
    if latest is None:
        return 0
    load_state_into(model, latest)
    state, rng, meta = load_trainer_state(latest)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(rng)
    run.truncate_logs_after(meta["step"])
    return int(meta["step"])
