"""Checkpoints: a Hugging Face model folder plus ``trainer_state/``, written atomically.

``RUN_DIR/checkpoints/step-N/`` holds ``config.json``, ``model.safetensors``, the tokenizer files
(chat template included in ``tokenizer_config.json``) and ``trainer_state/`` with
``state.pt`` (optimizer, scheduler position, the reference model when it is not recomputable),
``rng.pt`` (Python, NumPy and torch RNG states), ``meta.json`` (step, phase, data position) and
``config.toml`` (the run's config as it was when the checkpoint was written). A LoRA policy
(``nanoseek.model.lora``) is saved as its adapter only (``adapter_config.json`` +
``adapter_model.safetensors``, peft's format) instead of ``config.json`` + ``model.safetensors``;
:func:`load_weights_into` restores either kind into a live model.

A checkpoint cannot run code: ``state.pt`` and ``rng.pt`` hold tensors and plain data only (dicts,
lists, tuples, strings, numbers, None; the NumPy RNG state as a list of integers, not an array
object), checked when written (``check_plain``) and read with ``torch.load(weights_only=True)``
(``load_plain``), which refuses any other Python object: a planted pickle is refused on resume
with a ``NanoseekError`` naming the file, before it runs. Checkpoints written before this format
(a NumPy array in ``rng.pt``) still load through the same restricted loader, which then accepts
NumPy's array and dtype rebuilders and nothing else.

The folder is written under a temporary name and renamed when complete, then
``checkpoints/latest`` is updated: a crash at any moment leaves the previous checkpoint intact
(``tests/test_resume.py`` kills a run with SIGKILL just before the rename and between steps, and
checks the resumed run's metrics and weights against an uninterrupted run). A checkpoint damaged
afterwards (a truncated ``model.safetensors``, a broken ``state.pt``, ``rng.pt`` or ``meta.json``)
is passed over on resume: ``restore_newest`` says which file it could not read and falls back to
the newest intact checkpoint (``tests/test_corruption.py``).
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError

from nanoseek.atomic import atomic_dir
from nanoseek.errors import NanoseekError
from nanoseek.model.hf import save_model
from nanoseek.model.load import load_model, load_state_into
from nanoseek.model.lora import ADAPTER_WEIGHTS, is_lora, load_adapter_into

# What a trainer state may hold besides tensors: the types torch's weights_only loader rebuilds
# without running code (exact types: a NumPy float is a float subclass the loader refuses).
PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple)
PLAIN_SCALARS = (str, bytes, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)
# Old rng.pt files (before the NumPy state became a list of ints) hold one uint32 array: these
# rebuilders of an array and its dtype are the only globals the restricted loader then accepts.
LEGACY_NUMPY_GLOBALS = [np.array(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class UnsafeCheckpointError(NanoseekError):
    """A trainer-state file holds Python objects that could run code: refused, and never passed
    over for an older checkpoint (a planted file is not damage; the user must look)."""


def rng_state() -> dict:
    """Every RNG state a run depends on (Python, NumPy, torch CPU and CUDA if present), as tensors
    and plain data: Python's state is its tuple of ints, NumPy's (legacy ``MT19937`` state) a dict
    whose ``key`` is a list of 624 ints."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    st = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore the states ``rng_state`` took (or an old checkpoint's, whose NumPy state is the tuple
    ``np.random.get_state()`` returns)."""
    random.setstate(st["python"])
    n = st["numpy"]
    if isinstance(n, dict):
        n = (n["bit_generator"], np.asarray(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def check_plain(obj: Any, where: str) -> None:
    """Raise ``NanoseekError`` unless ``obj`` is made of tensors, ``PLAIN_CONTAINERS`` and
    ``PLAIN_SCALARS`` only (what a checkpoint can store and read back without unpickling arbitrary
    objects); ``where`` names it in the message."""
    if isinstance(obj, torch.Tensor) or type(obj) in PLAIN_SCALARS:
        return
    if type(obj) not in PLAIN_CONTAINERS:
        raise NanoseekError(f"{where} is a {type(obj).__name__}: a checkpoint stores tensors and plain data only")
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, f"{where} key")
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")


def load_plain(path: Path, allow: list | tuple = ()) -> Any:
    """Read a ``torch.save`` file with ``torch.load(weights_only=True)`` (plus the globals in
    ``allow``): tensors and plain data only. A file that holds other Python objects, which could
    run code when unpickled, is refused; any file that cannot be read gives a one-line
    ``NanoseekError`` naming it."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, weights_only=True)
    except Exception as e:  # any failure to read the file becomes one line naming it
        first = (str(e).strip().splitlines() or ["empty or truncated file"])[0]
        # a pickle naming a class or function (the only way one runs code) is refused; other
        # failures of the loader (an unknown opcode in garbage bytes) are damage
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise UnsafeCheckpointError(f"refused to load {path}: it holds Python objects other than tensors and plain "
                                        "data, which could run code (nanoseek never writes such a file)") from None
        if isinstance(e, pickle.UnpicklingError) and first.startswith("Weights only load failed"):
            detail = next((line.strip() for line in str(e).splitlines() if line.strip().startswith("Unsupported")), first)
            raise NanoseekError(f"cannot read {path}: not a trainer-state file ({detail})") from None
        raise NanoseekError(f"cannot read {path}: {type(e).__name__}: {first}") from None


def write_trainer_state(folder: Path, state: dict, meta: dict) -> None:
    """Write ``folder/trainer_state/``: ``state.pt`` (``state``), ``rng.pt`` (every RNG state now)
    and ``meta.json`` (``meta``, which holds at least ``step``); read back by ``load_trainer_state``."""
    ts = Path(folder) / "trainer_state"
    check_plain(state, "the trainer state")
    ts.mkdir()
    torch.save(state, ts / "state.pt")
    torch.save(rng_state(), ts / "rng.pt")
    (ts / "meta.json").write_text(json.dumps(meta, indent=2))


def save_checkpoint(run, step: int, model, tokenizer, trainer_state: dict, meta: dict | None = None,
                    keep_last: int | None = None, before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{step}/`` atomically and point ``latest`` at it.

    Args:
        run: the ``RunDir``.
        trainer_state: tensors and plain data (optimizer state dicts, counters, ...), saved with
            ``torch.save`` and read back with ``weights_only=True`` (see ``check_plain``).
        meta: JSON-able facts (phase, data position, ...); ``step`` is added.
        keep_last: prune older checkpoints beyond this many (None keeps all).
        before_rename: fault-injection hook called with the temporary folder just before the
            rename (tests use it to kill a run mid-write).
    Returns the final checkpoint folder.
    """
    final = run.checkpoint_dir(step)
    with atomic_dir(final) as tmp:
        save_model(model, tmp, tokenizer)
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
    """Read ``(state, rng, meta)`` from a checkpoint's ``trainer_state/``, through the restricted
    loader only (``load_plain``): a ``state.pt`` or ``rng.pt`` holding anything but tensors and
    plain data is refused with a ``NanoseekError`` naming the file, before any of it runs."""
    ts = Path(checkpoint) / "trainer_state"
    state = load_plain(ts / "state.pt")
    rng = load_plain(ts / "rng.pt", allow=LEGACY_NUMPY_GLOBALS)
    try:
        meta = json.loads((ts / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NanoseekError(f"cannot read {ts / 'meta.json'}: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise NanoseekError(f"cannot read {ts / 'meta.json'}: it holds no integer 'step'")
    for name, value in (("state.pt", state), ("rng.pt", rng)):
        if not isinstance(value, dict):
            raise NanoseekError(f"cannot read {ts / name}: it holds a {type(value).__name__}, not a dict")
    return state, rng, meta


def load_weights_into(model, checkpoint: Path) -> None:
    """Copy a checkpoint's weights into ``model`` in place (the optimizer keeps pointing at the
    same parameters): the LoRA adapter of an adapter-only checkpoint, else the full model."""
    checkpoint = Path(checkpoint)
    if (checkpoint / ADAPTER_WEIGHTS).is_file():
        if not is_lora(model):
            raise NanoseekError(f"{checkpoint} holds a LoRA adapter; the model has none (set grpo.lora_r)")
        try:
            load_adapter_into(model, checkpoint)
        except SafetensorError as e:
            raise NanoseekError(f"cannot read {checkpoint / ADAPTER_WEIGHTS}: {e}") from None
        return
    model.load_state_dict(load_model(checkpoint).state_dict())


def restore_newest(run, load_weights: Callable[[Path], None]) -> tuple[Path, dict, dict, dict] | None:
    """The newest intact checkpoint of ``run`` as ``(folder, state, rng, meta)``, its weights
    already loaded by ``load_weights(folder)``; None when there is no checkpoint.

    Candidates are the one ``checkpoints/latest`` names, then the older ones, newest first. A
    candidate whose trainer state or weights cannot be read (``NanoseekError``: truncated, garbled)
    is passed over with a printed line naming the file, and the next older one is tried; a refused
    one (``UnsafeCheckpointError``: a pickle that could run code) stops the resume instead.
    When every one is damaged, a line says so and None is returned (the caller starts again from
    the beginning). ``load_weights`` raises before changing the model, so a damaged candidate
    leaves it as it was.
    """
    latest = run.latest_checkpoint()
    if latest is None:
        return None
    newest = run.latest_step()
    older = [p for step, p in reversed(run.checkpoints()) if step < newest]
    for folder in [latest, *older]:
        try:
            state, rng, meta = load_trainer_state(folder)
            load_weights(folder)
        except UnsafeCheckpointError:
            raise
        except NanoseekError as e:
            print(f"[nanoseek] checkpoint {folder.name} is damaged ({e}); trying an older one", flush=True)
            continue
        if folder != latest:
            print(f"[nanoseek] resuming from {folder.name}, the newest intact checkpoint; the damaged ones "
                  "after it are written again as training reaches them", flush=True)
        return folder, state, rng, meta
    print(f"[nanoseek] no intact checkpoint in {run.checkpoints_path}: training starts again from step 0",
          flush=True)
    return None


def resume_from_latest(run, model, optimizer) -> int:
    """Continue from ``run``'s newest intact checkpoint (``restore_newest``), if any: load the
    weights into ``model``, the optimizer and every RNG state, drop log lines written after it;
    return its step (0 if none: log lines of later steps are dropped, as they are redone)."""
    found = restore_newest(run, lambda folder: load_state_into(model, folder))
    if found is None:
        run.truncate_logs_after(0)
        return 0
    _, state, rng, meta = found
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(rng)
    run.truncate_logs_after(meta["step"])
    return int(meta["step"])
