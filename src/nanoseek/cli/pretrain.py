"""``nanoseek pretrain``: the R1-Zero recipe's base-model pretraining as its own command.

Without ``--data`` it is exactly the base stage of ``nanoseek zero`` (``zero.build_base``: the
recipe's ``[model]`` + ``[pretrain]`` on the task's generated corpus), so ``nanoseek zero --model
RUN_DIR`` continues from it. With ``--data`` it pretrains on the user's corpus:

* a text file (``.txt`` or anything not ``.jsonl``): one token stream;
* a JSONL file: one document per line, its ``text`` field, or its ``messages`` rendered with the
  chat template; documents are joined with EOS into one stream (DeepSeek-V3 sec. 3.1: document
  packing, no cross-sample attention mask).

Each step draws ``batch_size`` windows of ``--seq-len`` tokens at offsets seeded by
``(corpus_seed, step)``, so a resumed run sees the same data. The loss is ``pretrain.lm_loss``:
next-token cross-entropy plus λ·MTP when the model has MTP modules (V3 sec. 2.2) and the MoE
balance loss, with the auxiliary-loss-free bias update after each step (V3 sec. 2.1.2).
``--model`` continues pretraining an existing model instead of a fresh ``[model]``.

Output: ``RUN_DIR/base/`` (a Hugging Face folder; ``--model RUN_DIR`` finds it through
``checkpoints/latest``), ``checkpoints/step-N/`` while training, ``metrics.jsonl``,
``plots/pretrain_loss.png``, ``report.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from nanoseek.errors import NanoseekError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="zero-cpu", help="recipe whose [model] and [pretrain] to use (default: zero-cpu)")
    p.add_argument("--data", help="corpus: a text file, or JSONL with a 'text' (or 'messages') field per line "
                                  "(default: the task's generated corpus)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training window with --data (default: 256)")
    p.add_argument("--model", help="continue pretraining this model instead of a fresh [model]  [model.path]")
    p.add_argument("--steps", type=int, help="optimizer steps  [pretrain.steps]")
    p.add_argument("--out", help="run directory (default: runs/pretrain-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field")


# ------------------------------------------------------------------------------------- corpus
def corpus_tokens(path: str | Path, tokenizer) -> list[int]:
    """The token stream of a text or JSONL corpus (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise NanoseekError(f"corpus {str(path)!r} does not exist")
    if path.suffix != ".jsonl":
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    else:
        from nanoseek.tasks.jsonl import read_jsonl

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


# ---------------------------------------------------------------------------------------- run
def _mark_final(run) -> None:
    """Point ``checkpoints/latest`` at ``base/`` so that ``--model RUN_DIR`` loads the result."""
    from nanoseek.atomic import atomic_write_text

    run.checkpoints_path.mkdir(exist_ok=True)
    atomic_write_text(run.checkpoints_path / "latest", "../base\n")


def pretrain_corpus(cfg, run, data: str, seq_len: int) -> None:
    """Pretrain on a user corpus into ``run`` (resumable); the result is ``RUN_DIR/base/``."""
    from nanoseek.atomic import atomic_dir
    from nanoseek.runs.checkpoint import resume_from_latest, save_checkpoint, save_model_folder
    from nanoseek.model.hf import load_model, resolve_model_dir
    from nanoseek.train.pretrain import pretrain
    from nanoseek.progress import Progress
    from nanoseek.train.sft import SFTConfig, make_optimizer
    from nanoseek.tokenizer import build_tokenizer, load_tokenizer
    from nanoseek.recipes.zero import seed_everything

    seed_everything(cfg.run.seed)
    if cfg.model.get("path"):
        tok = load_tokenizer(resolve_model_dir(cfg.model["path"]))
        model = load_model(cfg.model["path"])
    else:
        from nanoseek.model.config import ModelConfig
        from nanoseek.model.transformer import DeepseekV3ForCausalLM

        tok = build_tokenizer()
        model = DeepseekV3ForCausalLM(ModelConfig.from_dict({**cfg.model, "vocab_size": cfg.model.get("vocab_size", len(tok)),
                                                             "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                                             "pad_token_id": tok.pad_token_id}))
    pc = cfg.pretrain
    docs = window_documents(corpus_tokens(data, tok), seq_len, pc.corpus_seed)
    optimizer = make_optimizer(model, SFTConfig(lr=pc.lr, weight_decay=pc.weight_decay))
    start = resume_from_latest(run, model, optimizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[nanoseek] pretraining {n_params / 1e6:.2f}M parameters on {data} for {pc.steps} steps", flush=True)
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
        save_model_folder(tmp, model, tok)


def run(args) -> int:
    from nanoseek.recipes.config import build_zero_config
    from nanoseek.config import load
    from nanoseek.runs.rundir import RunDir, default_path

    if args.resume:
        data = RunDir(args.resume).read_config() if Path(args.resume).is_dir() else None
        if data is None:
            raise NanoseekError(f"cannot resume: {args.resume} is not a run directory")
        from nanoseek.config import apply_overrides

        apply_overrides(data, list(args.set))
    else:
        data = load(args.config, args.set)
    corpus = data.pop("corpus", {}) or {}
    if args.data:
        corpus = {"path": args.data, "seq_len": args.seq_len}
    if args.model:
        data["model"] = {"path": args.model}
    if args.steps is not None:
        data.setdefault("pretrain", {})["steps"] = args.steps
    data.setdefault("run", {})["name"] = "pretrain"
    cfg = build_zero_config(data)
    if corpus.get("path") and not Path(corpus["path"]).is_file():
        raise NanoseekError(f"corpus {corpus['path']!r} does not exist")
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    out = args.resume or args.out or str(default_path("pretrain"))
    run_dir = RunDir.create(out, {**cfg.to_dict(), "corpus": corpus}, resume=bool(args.resume))
    print(f"[nanoseek] run directory: {run_dir.path}", flush=True)
    t0 = time.time()
    if (run_dir.path / "base").exists():
        print("[nanoseek] already finished: base/ exists", flush=True)
    elif corpus.get("path"):
        pretrain_corpus(cfg, run_dir, corpus["path"], int(corpus.get("seq_len", 256)))
    else:
        from nanoseek.tasks import get_task
        from nanoseek.recipes.zero import build_base

        if cfg.model.get("path"):
            raise NanoseekError("--model without --data: give the corpus to continue pretraining on (--data FILE)")
        build_base(cfg, get_task(cfg.task.name, data_dir=cfg.task.data_dir, **cfg.task.options), run_dir)
    _mark_final(run_dir)
    write_pretrain_report(run_dir, time.time() - t0, args._argv if hasattr(args, "_argv") else "nanoseek pretrain")
    print(f"[nanoseek] model: {run_dir.path / 'base'}  report: {run_dir.report_path}", flush=True)
    return 0


def write_pretrain_report(run_dir, wall: float, command: str) -> None:
    from nanoseek.runs.plots import PlotSpec, plot_run
    from nanoseek.runs.report import write_report

    metrics = [m for m in run_dir.read_metrics() if m.get("phase") == "pretrain"]
    records = [{**m, "step": int(m.get("pretrain/step", i + 1))} for i, m in enumerate(metrics)]
    series = {"pretrain_loss": PlotSpec("Pretraining loss", "loss", ("pretrain/loss", "pretrain/mtp_loss"))}
    plots = plot_run(records, run_dir.plots_dir, series=series) if records else []
    last = records[-1] if records else {}
    summary = {"command": command, "steps": last.get("step"), "final_loss": last.get("pretrain/loss"),
               "wall_seconds": round(wall, 1)}
    run_dir.write_summary(summary)
    write_report(run_dir, title="nanoseek pretrain", summary=summary, plots=plots, samples_before=[], samples_after=[])
