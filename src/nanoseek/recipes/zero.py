"""The R1-Zero recipe (``nanoseek zero``): a base model, then GRPO with rule-based rewards only.

Stages, each resumable (DeepSeek-R1 sec. 2.2):
1. base model: load ``--model``, or pretrain a fresh DeepSeek-V3-style model on the task's corpus
   (``[model]`` + ``[pretrain]``), saved as ``RUN_DIR/base/`` (a Hugging Face folder);
2. base evaluation on the held-out split (``RUN_DIR/eval_base.json``);
3. GRPO (``[grpo]``), checkpointing to ``RUN_DIR/checkpoints/step-N/``, with held-out evaluation
   every ``eval_every`` steps;
4. final evaluation, ``summary.json``, ``plots/`` and ``report.md``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from nanoseek.errors import NanoseekError
from nanoseek.atomic import atomic_dir, atomic_write_json
from nanoseek.runs.checkpoint import load_trainer_state, load_weights_into, save_checkpoint, save_model_folder, set_rng_state, write_trainer_state
from nanoseek.recipes.config import ZeroConfig
from nanoseek.evaluation.evaluate import evaluate_policy, results_as_dicts
from nanoseek.policy.policy import Policy
from nanoseek.progress import Progress
from nanoseek.runs.rundir import RunDir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def held_out_examples(task, limit: int):
    """The held-out split used for evaluation (``test``), first ``limit`` problems."""
    examples = task.examples("test")
    return examples[:limit] if limit else examples


def _log(msg: str) -> None:
    print(f"[nanoseek] {msg}", flush=True)


def build_base(cfg: ZeroConfig, task, run: RunDir) -> Policy:
    """Load the base model given by ``model.path``, else pretrain one (resumable) into RUN_DIR/base."""
    from nanoseek.model.hf import load_model
    from nanoseek.tokenizer import load_tokenizer

    model_path = cfg.model.get("path")
    if model_path:
        model = load_model(model_path)
        tok = load_tokenizer(_tokenizer_dir(model_path))
        return Policy(model, tok, cfg.task.system_prompt)
    base_dir = run.path / "base"
    if base_dir.exists():
        _log(f"base model found in {base_dir}")
        return Policy(load_model(base_dir), load_tokenizer(base_dir), cfg.task.system_prompt)
    return pretrain_base(cfg, task, run)


def _tokenizer_dir(model_path: str) -> Path:
    from nanoseek.model.hf import resolve_model_dir

    return resolve_model_dir(model_path)


def pretrain_base(cfg: ZeroConfig, task, run: RunDir) -> Policy:
    """Pretrain a fresh DeepSeek-V3-style model on the task's generated corpus."""
    from nanoseek.model.config import ModelConfig
    from nanoseek.model.transformer import DeepseekV3ForCausalLM
    from nanoseek.train.pretrain import chain_documents, make_adamw, pretrain
    from nanoseek.tokenizer import build_tokenizer

    if not hasattr(task, "corpus_problems"):
        raise NanoseekError(f"task {task.name!r} has no generated corpus; give a pretrained --model to run it")
    tok = build_tokenizer()
    mcfg = ModelConfig.from_dict({**cfg.model, "vocab_size": cfg.model.get("vocab_size", len(tok)),
                                  "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                                  "pad_token_id": tok.pad_token_id})
    seed_everything(cfg.run.seed)
    model = DeepseekV3ForCausalLM(mcfg)
    policy = Policy(model, tok, cfg.task.system_prompt)
    pc = cfg.pretrain
    start, optimizer = 0, None
    ckpt = run.path / "pretrain_checkpoint"
    if ckpt.exists():
        from nanoseek.model.hf import load_model

        model = load_model(ckpt)
        policy = Policy(model, tok, cfg.task.system_prompt)
        state, rng, meta = load_trainer_state(ckpt)
        start = meta["step"]
        optimizer = make_adamw(model, pc.lr, pc.weight_decay)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(rng)
        _log(f"resuming pretraining at step {start}")
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"pretraining a {n_params / 1e6:.2f}M-parameter DeepSeek-V3-style model for {pc.steps} steps")
    docs = chain_documents(task, lambda s: tok(s, add_special_tokens=False).input_ids, policy.prompt_text,
                           tok.eos_token_id, pc.think_fraction, pc.corpus_seed)
    bar = Progress(pc.steps, "pretrain", initial=start)
    if optimizer is None:  # made here (not inside pretrain()) so mid-run checkpoints can save it
        optimizer = make_adamw(model, pc.lr, pc.weight_decay)

    def on_step(step: int, m: dict) -> None:
        run.log_metrics({"step": 0, "phase": "pretrain", **m})
        if step % max(1, pc.steps // 4) == 0 and step < pc.steps:
            with atomic_dir(ckpt) as tmp:
                save_model_folder(tmp, model, tok)
                write_trainer_state(tmp, {"optimizer": optimizer.state_dict()}, {"step": step, "phase": "pretrain"})

    pretrain(model, docs, pc, tok.pad_token_id, start_step=start, optimizer=optimizer, on_step=on_step, progress=bar)
    bar.close()
    with atomic_dir(run.path / "base") as tmp:
        save_model_folder(tmp, model, tok)
    return policy


def run_eval(policy: Policy, task, cfg: ZeroConfig, desc: str):
    examples = held_out_examples(task, cfg.eval.limit)
    e = cfg.eval
    bar = Progress(len(examples) * e.samples, desc, unit="sample")
    metrics, results = evaluate_policy(policy, task, examples, samples=e.samples, temperature=e.temperature,
                                       top_p=e.top_p, max_new_tokens=e.max_new_tokens, seed=e.seed,
                                       batch_size=e.batch_size, progress=bar)
    bar.close()
    return metrics, results


def run_zero(cfg: ZeroConfig, out: str | None = None, resume: bool = False, command: str = "nanoseek zero",
             fault_hook=None) -> Path:
    """Run (or resume) the R1-Zero recipe; return the run directory."""
    from nanoseek.rl.distributed import init_from_env
    from nanoseek.rl.trainer import GRPOTrainer
    from nanoseek.tasks import get_task

    t_start = time.time()
    dist = init_from_env()  # torchrun: every rank trains, rank 0 alone evaluates and writes files
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    task = get_task(cfg.task.name, data_dir=cfg.task.data_dir, **cfg.task.options)
    out_path = Path(dist.broadcast_object(str(Path(out) if out else RunDir.default_path(cfg.run.name))))
    run = RunDir.create(out_path, cfg.to_dict(), resume=resume) if dist.is_main else RunDir(out_path)
    prior = json.loads((run.path / "wall.json").read_text())["seconds"] if (run.path / "wall.json").exists() else 0.0
    _log(f"run directory: {run.path}")

    if not dist.is_main:
        dist.barrier()  # rank 0 pretrains (or finds) the base model first
    policy = build_base(cfg, task, run)
    if dist.is_main:
        dist.barrier()
    base_eval_path = run.path / "eval_base.json"
    if not dist.is_main:
        base = None
    elif base_eval_path.exists():
        base = json.loads(base_eval_path.read_text())
    else:
        m, res = run_eval(policy, task, cfg, "eval base")
        base = {"metrics": m, "samples": results_as_dicts(res[: 4 * cfg.eval.samples: cfg.eval.samples])}
        atomic_write_json(base_eval_path, base)
        run.log_metrics({"step": 0, "eval/pass@1": m["pass@1"], "eval/well_formed": m["well_formed"],
                         "eval/thinking": m["thinking"], "eval/mean_length": m["mean_length"]})
    if base is not None:
        _log(f"base: pass@1 {base['metrics']['pass@1']:.3f}  well-formed {base['metrics']['well_formed']:.3f}  "
             f"thinking {base['metrics']['thinking']:.3f}")

    seed_everything(cfg.run.seed + 1)
    trainer = GRPOTrainer(policy, task, cfg.grpo, seed=cfg.run.seed, dist=dist)
    start = 0
    latest = run.latest_checkpoint()
    if latest is not None:
        load_weights_into(policy.model, latest)  # the full model, or a LoRA adapter
        state, rng, meta = load_trainer_state(latest)
        trainer.load_state_dict(state)
        set_rng_state(rng)
        start = meta["step"]
        if dist.is_main:
            run.truncate_logs_after(start)
        _log(f"resumed from {latest} (step {start})")
    elif resume and dist.is_main:
        run.truncate_logs_after(0)  # GRPO lines of a run stopped before its first checkpoint

    g = cfg.grpo
    bar = Progress(g.steps, "grpo", initial=start)
    wall_limit = cfg.run.max_wall_seconds
    for step in range(start, g.steps):
        metrics, samples = trainer.step(step)
        done = step + 1
        out_of_time = dist.broadcast_object(bool(wall_limit and time.time() - t_start + prior > wall_limit))
        if not dist.is_main:
            if out_of_time:
                break
            continue
        if g.eval_every and done % g.eval_every == 0 and done < g.steps:
            m, _ = run_eval(policy, task, cfg, f"eval step {done}")
            metrics.update({"eval/pass@1": m["pass@1"], "eval/well_formed": m["well_formed"],
                            "eval/thinking": m["thinking"], "eval/mean_length": m["mean_length"]})
        run.log_metrics(metrics)
        # the time so far, so that a run killed and resumed still reports its whole wall time
        atomic_write_json(run.path / "wall.json", {"seconds": time.time() - t_start + prior})
        trainer.log_external(metrics, run.path)
        run.log_samples(samples)
        bar.update(1, **trainer.progress_fields(metrics))
        if done % cfg.run.checkpoint_every == 0 or done == g.steps or out_of_time:
            save_checkpoint(run, done, policy.model, policy.tokenizer, trainer.state_dict(),
                            meta={"phase": "grpo", "data_position": trainer.state.data_pos},
                            keep_last=cfg.run.keep_checkpoints, before_rename=fault_hook)
        if out_of_time:
            _log(f"wall-time limit reached after step {done}; checkpoint written, resume with --resume")
            break
    bar.close()
    steps_done = trainer.state.step
    if not dist.is_main:
        return run.path

    final_m, final_res = run_eval(policy, task, cfg, "eval final")
    run.log_metrics({"step": steps_done, "eval/pass@1": final_m["pass@1"], "eval/well_formed": final_m["well_formed"],
                     "eval/thinking": final_m["thinking"], "eval/mean_length": final_m["mean_length"]})
    wall = time.time() - t_start + prior
    atomic_write_json(run.path / "wall.json", {"seconds": wall})
    summary = {"task": task.name, "base": base["metrics"], "final": final_m, "steps": steps_done,
               "wall_seconds": round(wall, 1), "seed": cfg.run.seed, "command": command}
    run.write_summary(summary)
    finish_report(run, summary, base["samples"], results_as_dicts(final_res[: 4 * cfg.eval.samples: cfg.eval.samples]))
    gain = final_m["pass@1"] - base["metrics"]["pass@1"]
    _log(f"final: pass@1 {final_m['pass@1']:.3f} ({gain:+.3f})  thinking {final_m['thinking']:.3f}  "
         f"mean length {final_m['mean_length']:.1f}")
    _log(f"report: {run.report_path}")
    return run.path


def finish_report(run: RunDir, summary: dict, before: list[dict], after: list[dict]) -> None:
    from nanoseek.runs.plots import plot_run
    from nanoseek.runs.report import write_report

    metrics = [m for m in run.read_metrics() if m.get("phase") != "pretrain"]
    plots = plot_run(metrics, run.plots_dir)
    b, f = summary["base"], summary["final"]
    notes = [f"Held-out pass@1 {b['pass@1']:.3f} → {f['pass@1']:.3f} over {f['n']} problems × {f['samples']} samples "
             f"(temperature/top-p as configured in [eval]).",
             f"Share of completions that think (non-empty think block): {b['thinking']:.2f} → {f['thinking']:.2f}; "
             f"mean completion length {b['mean_length']:.1f} → {f['mean_length']:.1f} tokens."]
    write_report(run, title=f"nanoseek zero: {summary['task']}", summary={**summary, "wall_time_s": summary["wall_seconds"]},
                 plots=plots, samples_before=[_sample_view(s) for s in before],
                 samples_after=[_sample_view(s) for s in after], notes=notes)


def _sample_view(s: dict) -> dict:
    return {"prompt": s["prompt"], "completion": s["completion"], "reward": float(s["correct"]), "answer": s["answer"]}
