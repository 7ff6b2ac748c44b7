"""Base models: the base stage of every recipe, and ``nanoseek pretrain``.

A recipe's base model is ``[model] path`` when given, else a fresh DeepSeek-V3-style model
(``[model]`` fields) pretrained with ``[pretrain]`` on the task's generated corpus
(``pretrain_base``, resumable through ``RUN_DIR/pretrain_checkpoint/``) and saved as
``RUN_DIR/base/`` (a Hugging Face folder).

``nanoseek pretrain`` (``run_pretrain``) runs that base stage on its own, or, with a corpus, pretrains on
the user's text (``pretrain_corpus``):

* a text file (``.txt`` or anything not ``.jsonl``): one token stream;
* a JSONL file: one document per line, its ``text`` field, or its ``messages`` rendered with the
  chat template; documents are joined with EOS into one stream (DeepSeek-V3 sec. 3.1: document
  packing, no cross-sample attention mask).

Each step draws ``batch_size`` windows of ``seq_len`` tokens at offsets seeded by
``(corpus_seed, step)``, so a resumed run sees the same data. The loss is ``train.pretrain.lm_loss``:
next-token cross-entropy plus λ·MTP when the model has MTP modules (V3 sec. 2.2) and the MoE
balance loss, with the auxiliary-loss-free bias update after each step (V3 sec. 2.1.2). With
``[model] path`` it continues pretraining that model instead of a fresh one.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from nanoseek.atomic import atomic_dir, atomic_write_text
from nanoseek.errors import NanoseekError
from nanoseek.model.hf import save_model
from nanoseek.model.load import load_model
from nanoseek.policy.policy import Policy
from nanoseek.progress import Progress
from nanoseek.recipes.common import (WallClock, finished_run, fresh_model, load_model_and_tokenizer, load_policy,
                                     load_task, log, n_params, seed_everything, use_threads)
from nanoseek.recipes.config import ZeroConfig, recipe_dict
from nanoseek.runs.checkpoint import (UnsafeCheckpointError, load_trainer_state, resume_from_latest, save_checkpoint,
                                      set_rng_state, write_trainer_state)
from nanoseek.runs.plots import PlotSpec, plot_run
from nanoseek.runs.report import write_report
from nanoseek.runs.rundir import RunDir, default_path
from nanoseek.tasks.jsonl import read_jsonl
from nanoseek.tokenizer import build_tokenizer
from nanoseek.train.optim import make_adamw
from nanoseek.train.pretrain import chain_documents, pretrain


# ------------------------------------------------------------------------ the base stage
def build_base(cfg: ZeroConfig, task, run: RunDir) -> Policy:
    """Load the base model given by ``model.path``, else pretrain one (resumable) into RUN_DIR/base."""
    if cfg.model.path:
        return load_policy(cfg.model.path, cfg.task.system_prompt)
    base_dir = run.path / "base"
    if base_dir.exists():
        log(f"base model found in {base_dir}")
        return load_policy(base_dir, cfg.task.system_prompt)
    return pretrain_base(cfg, task, run)


def pretrain_base(cfg: ZeroConfig, task, run: RunDir) -> Policy:
    """Pretrain a fresh DeepSeek-V3-style model on the task's generated corpus into ``RUN_DIR/base``,
    resuming from ``RUN_DIR/pretrain_checkpoint`` (written every quarter of the steps). Raises
    ``NanoseekError`` for a task without a generated corpus."""
    if not hasattr(task, "corpus_problems"):
        raise NanoseekError(f"task {task.name!r} has no generated corpus; give a pretrained --model to run it")
    tok = build_tokenizer()
    seed_everything(cfg.run.seed)
    model = fresh_model(cfg.model.config, tok)
    pc = cfg.pretrain
    start, optimizer = 0, None
    ckpt = run.path / "pretrain_checkpoint"
    if ckpt.exists():
        try:
            state, rng, meta = load_trainer_state(ckpt)
            loaded = load_model(ckpt)
        except UnsafeCheckpointError:
            raise
        except NanoseekError as e:  # nothing older to fall back on: pretraining is redone (it is seeded)
            log(f"{ckpt.name} is damaged ({e}); pretraining starts again from step 0")
        else:
            model, start = loaded, meta["step"]
            optimizer = make_adamw(model, pc.lr, pc.weight_decay)
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(rng)
            log(f"resuming pretraining at step {start}")
    # lines of the steps about to be redone (pretraining logs at run step 0, so truncate_logs_after keeps them)
    run.drop_records(lambda r: r.get("phase") == "pretrain" and r.get("pretrain/step", 0) > start, samples=False)
    policy = Policy(model, tok, cfg.task.system_prompt)
    log(f"pretraining a {n_params(model) / 1e6:.2f}M-parameter DeepSeek-V3-style model for {pc.steps} steps")
    docs = chain_documents(task, lambda s: tok(s, add_special_tokens=False).input_ids, policy.prompt_text,
                           tok.eos_token_id, pc.think_fraction, pc.corpus_seed)
    bar = Progress(pc.steps, "pretrain", initial=start)
    if optimizer is None:  # made here (not inside pretrain()) so mid-run checkpoints can save it
        optimizer = make_adamw(model, pc.lr, pc.weight_decay)

    def on_step(step: int, m: dict) -> None:
        run.log_metrics({"step": 0, "phase": "pretrain", **m})
        if step % max(1, pc.steps // 4) == 0 and step < pc.steps:
            with atomic_dir(ckpt) as tmp:
                save_model(model, tmp, tok)
                write_trainer_state(tmp, {"optimizer": optimizer.state_dict()}, {"step": step, "phase": "pretrain"})

    pretrain(model, docs, pc, tok.pad_token_id, start_step=start, optimizer=optimizer, on_step=on_step, progress=bar)
    bar.close()
    with atomic_dir(run.path / "base") as tmp:
        save_model(model, tmp, tok)
    return policy


# ------------------------------------------------------------------------- a user corpus
def corpus_tokens(path: str | Path, tokenizer) -> list[int]:
    """The token stream of a text or JSONL corpus (see the module docstring). Raises
    ``NanoseekError`` for a missing or empty corpus, or a JSONL row with neither ``text`` nor ``messages``."""
    path = Path(path)
    if not path.is_file():
        raise NanoseekError(f"corpus {str(path)!r} does not exist")
    if path.suffix != ".jsonl":
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    else:
        ids = []
        for lineno, row in read_jsonl(path):
            if isinstance(row.get("text"), str):
                text = row["text"]
            elif isinstance(row.get("messages"), list):
                text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
            else:
                raise NanoseekError(f"{path}:{lineno}: needs a 'text' string or a 'messages' list")
            ids += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    if len(ids) < 2:
        raise NanoseekError(f"corpus {path} is empty")
    return ids


def window_documents(ids: list[int], seq_len: int, seed: int):
    """``documents(step, n)``: ``n`` windows of ``seq_len`` tokens at offsets seeded by ``(seed, step)``."""
    span = max(1, len(ids) - seq_len)

    def documents(step: int, n: int) -> list[list[int]]:
        rng = random.Random(seed * 1_000_003 + step)
        return [ids[o:o + seq_len] for o in (rng.randrange(span) for _ in range(n))]

    return documents


def pretrain_corpus(cfg: ZeroConfig, run: RunDir, data: str, seq_len: int) -> None:
    """Pretrain on a user corpus into ``run`` (resumable from its checkpoints); the result is ``RUN_DIR/base/``."""
    seed_everything(cfg.run.seed)
    if cfg.model.path:
        model, tok = load_model_and_tokenizer(cfg.model.path)
    else:
        tok = build_tokenizer()
        model = fresh_model(cfg.model.config, tok)
    pc = cfg.pretrain
    docs = window_documents(corpus_tokens(data, tok), seq_len, pc.corpus_seed)
    optimizer = make_adamw(model, pc.lr, pc.weight_decay)
    start = resume_from_latest(run, model, optimizer)
    log(f"pretraining {n_params(model) / 1e6:.2f}M parameters on {data} for {pc.steps} steps")
    bar = Progress(pc.steps, "pretrain", initial=start)

    def on_step(step: int, m: dict) -> None:
        run.log_metrics({"step": step, "phase": "pretrain", **m})
        if step % max(1, cfg.run.checkpoint_every) == 0 and step < pc.steps:
            save_checkpoint(run, step, model, tok, {"step": step, "optimizer": optimizer.state_dict()},
                            meta={"phase": "pretrain", "data_position": step * pc.batch_size},
                            keep_last=cfg.run.keep_checkpoints)

    pretrain(model, docs, pc, tok.pad_token_id, start_step=start, optimizer=optimizer, on_step=on_step, progress=bar)
    bar.close()
    with atomic_dir(run.path / "base") as tmp:
        save_model(model, tmp, tok)


# --------------------------------------------------------------------- nanoseek pretrain
def run_pretrain(cfg: ZeroConfig, corpus: dict, out: str | None = None, resume: bool = False,
                 command: str = "nanoseek pretrain") -> Path:
    """``nanoseek pretrain``: the base stage of ``cfg`` on its own, or on ``corpus`` (``{"path",
    "seq_len"}``, empty for the task's corpus), into ``out``; return the run directory. Raises
    ``NanoseekError`` for a missing corpus, or ``model.path`` without a corpus."""
    if corpus.get("path") and not Path(corpus["path"]).is_file():
        raise NanoseekError(f"corpus {corpus['path']!r} does not exist")
    config = {**recipe_dict(cfg), "corpus": corpus}
    if resume and out and RunDir(out).summary_path.exists() and (Path(out) / "base").exists():
        return finished_run(RunDir(out), config, f"{cfg.pretrain.steps} pretraining steps")
    use_threads(cfg.run.threads)
    t0 = time.time()
    run = RunDir.create(out or str(default_path("pretrain")), config, resume=resume)
    command = run.record_command(command)[0]  # the report shows the command that started the run
    log(f"run directory: {run.path}")
    clock = WallClock(run.path / "wall.json", start=t0)
    clock.start()
    try:
        if (run.path / "base").exists():
            log("pretraining finished before: base/ exists")
        elif corpus.get("path"):
            pretrain_corpus(cfg, run, corpus["path"], int(corpus.get("seq_len", 256)))
        else:
            if cfg.model.path:
                raise NanoseekError("--model without --data: give the corpus to continue pretraining on (--data FILE)")
            build_base(cfg, load_task(cfg.task), run)
    finally:
        clock.stop()
    mark_final(run)
    write_pretrain_report(run, clock.save(), command)
    log(f"model: {run.path / 'base'}  report: {run.report_path}")
    return run.path


def mark_final(run: RunDir) -> None:
    """Point ``checkpoints/latest`` at ``base/`` so that ``--model RUN_DIR`` loads the result."""
    run.checkpoints_path.mkdir(exist_ok=True)
    atomic_write_text(run.checkpoints_path / "latest", "../base\n")


def write_pretrain_report(run: RunDir, wall: float, command: str) -> None:
    """``plots/pretrain_loss.png``, ``report.md`` and, last (it marks the run complete), ``summary.json``
    (steps, final loss, wall seconds)."""
    metrics = [m for m in run.read_metrics() if m.get("phase") == "pretrain"]
    records = [{**m, "step": int(m.get("pretrain/step", i + 1))} for i, m in enumerate(metrics)]
    series = {"pretrain_loss": PlotSpec("Pretraining loss", "loss", ("pretrain/loss", "pretrain/mtp_loss"))}
    plots = plot_run(records, run.plots_dir, series=series) if records else []
    last = records[-1] if records else {}
    summary = {"command": command, "steps": last.get("step"), "final_loss": last.get("pretrain/loss"),
               "wall_seconds": round(wall, 1)}
    write_report(run, title="nanoseek pretrain", summary=summary, plots=plots, samples_before=[], samples_after=[])
    run.write_summary(summary)
