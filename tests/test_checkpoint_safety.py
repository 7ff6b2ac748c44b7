"""A checkpoint cannot run code (issue 19, item 1): ``trainer_state/state.pt`` and ``rng.pt`` hold
tensors and plain data only and are read with ``torch.load(weights_only=True)``. A pickle with a
payload planted as either file is refused, before it runs, on every resume path (``nanoseek zero``
in GRPO and in pretraining, ``nanoseek pretrain``, ``nanoseek sft``) with a one-line error naming
the file; the RNG states still round-trip bit for bit, and old checkpoints (a NumPy array in
``rng.pt``) still load."""

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.runs.checkpoint import (check_plain, load_trainer_state, rng_state, set_rng_state,
                                      write_trainer_state)

TINY = [
    "run.threads=1", "run.checkpoint_every=1",
    "task.options={ min_terms = 2, max_terms = 2, operators = \"+\", n_test = 4 }",
    "model.hidden_size=32", "model.intermediate_size=64", "model.moe_intermediate_size=16",
    "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8", "model.qk_rope_head_dim=8",
    "model.v_head_dim=8", "model.n_routed_experts=4", "model.num_experts_per_tok=2",
    "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.warmup_steps=1",
    "grpo.steps=1", "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=4", "grpo.eval_every=0",
    "eval.limit=2", "eval.samples=1", "eval.max_new_tokens=4",
]


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def plant(file: Path, marker: Path, raw: bool = False) -> None:
    """Replace ``file`` with a payload pickle: torch's zip format, or a bare pickle (``raw``)."""
    file.unlink()
    if raw:
        file.write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=2))
    else:
        torch.save({"optimizer": {}, "step": Payload(marker)}, file)


def nanoseek(*argv: str) -> int:
    from nanoseek.cli.main import main

    return main([str(a) for a in argv])


def sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


# ------------------------------------------------------------------------------ the loader itself
@pytest.mark.parametrize("name", ["state.pt", "rng.pt"])
@pytest.mark.parametrize("raw", [False, True])
def test_payload_pickle_is_refused_naming_the_file(tmp_path, name, raw):
    write_trainer_state(tmp_path, {"optimizer": {}, "step": 1}, {"step": 1})
    marker = tmp_path / "ran"
    plant(tmp_path / "trainer_state" / name, marker, raw)
    with pytest.raises(NanoseekError) as e:
        load_trainer_state(tmp_path)
    assert not marker.exists()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "trainer_state" / name) in msg and "refused" in msg


def test_corrupt_file_is_one_line_naming_it(tmp_path):
    write_trainer_state(tmp_path, {"step": 1}, {"step": 1})
    path = tmp_path / "trainer_state" / "rng.pt"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(NanoseekError, match="cannot read .*rng.pt") as e:
        load_trainer_state(tmp_path)
    assert "\n" not in str(e.value)


def test_rng_states_round_trip_bit_for_bit(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached Gaussian in NumPy's state
    state = {"optimizer": torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))]).state_dict(), "step": 7,
             "config": {"betas": (0.9, 0.99), "name": "x", "none": None}}
    write_trainer_state(tmp_path, state, {"step": 7})
    expect = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded, rng, meta = load_trainer_state(tmp_path)
    set_rng_state(rng)
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == expect
    assert loaded["config"] == state["config"] and meta == {"step": 7}
    assert isinstance(rng["numpy"]["key"], list)  # plain ints, no NumPy object in the file


def test_old_checkpoint_with_a_numpy_array_still_loads(tmp_path):
    """Before the format change, rng.pt held ``np.random.get_state()`` (an array) as is."""
    np.random.seed(5)
    np.random.randn()
    ts = tmp_path / "trainer_state"
    ts.mkdir()
    torch.save({"optimizer": {}, "step": 1}, ts / "state.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               ts / "rng.pt")
    (ts / "meta.json").write_text(json.dumps({"step": 1}))
    expect = np.random.randn(4).tolist()
    np.random.seed(0)
    set_rng_state(load_trainer_state(tmp_path)[1])
    assert np.random.randn(4).tolist() == expect


def test_a_state_that_could_not_be_read_back_safely_is_refused_when_written(tmp_path):
    check_plain({"a": [1, 2.0, (None, "x")], "t": torch.ones(2)}, "state")
    for bad in ({"x": np.float64(1.0)}, {"x": Path("p")}, {"x": {1, 2}}):
        with pytest.raises(NanoseekError, match="plain data"):
            write_trainer_state(tmp_path, bad, {"step": 0})
    assert not (tmp_path / "trainer_state").exists()


# ------------------------------------------------------------------------------ every resume path
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs of ``nanoseek zero``, ``pretrain`` and ``sft`` (each with step-1)."""
    tmp = tmp_path_factory.mktemp("runs")
    threads, quiet = torch.get_num_threads(), os.environ.get("NANOSEEK_QUIET")
    os.environ["NANOSEEK_QUIET"] = "1"
    try:
        assert nanoseek("zero", "--out", tmp / "zero", *sets(TINY)) == 0
        corpus = tmp / "corpus.txt"
        corpus.write_text("".join(f"{a} + {b} = {a + b}\n" for a in range(20) for b in range(20)))
        assert nanoseek("pretrain", "--data", corpus, "--seq-len", 16, "--out", tmp / "pretrain",
                        *sets(TINY)) == 0
        chats = tmp / "chats.jsonl"
        chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+1?"},
                                                          {"role": "assistant", "content": str(a + 1)}]}) + "\n"
                                 for a in range(8)))
        assert nanoseek("sft", "--model", tmp / "zero" / "base", "--data", chats, "--steps", 2, "--batch-size", 2,
                        "--max-length", 64, "--out", tmp / "sft", "--set", "run.threads=1",
                        "--set", "run.checkpoint_every=1") == 0
    finally:
        torch.set_num_threads(threads)
        if quiet is None:
            os.environ.pop("NANOSEEK_QUIET", None)
        else:
            os.environ["NANOSEEK_QUIET"] = quiet
    return tmp


def zero_grpo(run: Path) -> Path:
    """Make ``run`` a zero run stopped during GRPO, after its step-1 checkpoint."""
    (run / "summary.json").unlink(missing_ok=True)
    return run / "checkpoints" / "step-1"


def zero_pretrain(run: Path) -> Path:
    """Make ``run`` a zero run stopped during pretraining: no base/, a pretrain_checkpoint/."""
    (run / "summary.json").unlink(missing_ok=True)
    shutil.rmtree(run / "base")
    shutil.rmtree(run / "checkpoints")
    ckpt = run / "pretrain_checkpoint"
    if not ckpt.exists():
        shutil.copytree(run.parent / "pretrain" / "checkpoints" / "step-1", ckpt)
    return ckpt


def unfinished(run: Path) -> Path:
    """A pretrain or SFT run with its step-1 checkpoint as the newest one."""
    shutil.rmtree(run / "base", ignore_errors=True)
    for p in (run / "checkpoints").glob("step-*"):
        if p.name != "step-1":
            shutil.rmtree(p)
    (run / "checkpoints" / "latest").write_text("step-1\n")
    (run / "summary.json").unlink(missing_ok=True)
    return run / "checkpoints" / "step-1"


PATHS = {"zero-grpo": ("zero", zero_grpo), "zero-pretrain": ("zero", zero_pretrain),
         "pretrain": ("pretrain", unfinished), "sft": ("sft", unfinished)}


@pytest.mark.parametrize("name", ["state.pt", "rng.pt"])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_resume_path_refuses_a_planted_pickle(runs, tmp_path, capsys, monkeypatch, path, name):
    command, prepare = PATHS[path]
    run = tmp_path / command
    shutil.copytree(runs / command, run)
    if path == "zero-pretrain":
        shutil.copytree(runs / "pretrain", tmp_path / "pretrain")
    ckpt = prepare(run)
    marker = tmp_path / "ran"
    plant(ckpt / "trainer_state" / name, marker)
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    threads = torch.get_num_threads()
    try:
        code = nanoseek(command, "--resume", run)
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not marker.exists()
    assert f"refused to load {ckpt / 'trainer_state' / name}" in err[-1], err[-3:]
