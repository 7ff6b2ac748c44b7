"""The R1-Zero recipe (``nanoseek zero``): a base model, then GRPO with rule-based rewards only.

Stages, each resumable (DeepSeek-R1 sec. 2.2), the methods of ``ZeroRun``:
1. ``base``: load ``--model``, or pretrain a fresh DeepSeek-V3-style model on the task's corpus
   (``[model]`` + ``[pretrain]``, ``recipes.pretrain.build_base``), saved as ``RUN_DIR/base/`` (a
   Hugging Face folder);
2. ``evaluate``: base evaluation on the held-out split (``RUN_DIR/eval_base.json``);
3. ``train``: GRPO (``[grpo]``), checkpointing to ``RUN_DIR/checkpoints/step-N/``, with held-out
   evaluation every ``eval_every`` steps;
4. ``finish``: final evaluation, ``plots/``, ``report.md`` and, last, ``summary.json``.

Under ``torchrun`` every rank trains; rank 0 alone evaluates and writes files.

Killed at any moment (SIGKILL) and resumed, a run ends as if it had never stopped: the same weights,
samples and ``metrics.jsonl`` (apart from timing fields), its whole wall time, and no temporary
files (``bench/bench_resume_kill.py``). A damaged checkpoint is passed over for the newest intact
one (``runs.checkpoint.restore_newest``). Resuming a complete run (``summary.json`` for
``grpo.steps``) changes nothing; the command that started a run stays the one its report shows.
"""

from __future__ import annotations

import time
from pathlib import Path

from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import eval_metrics_record
from nanoseek.progress import Progress
from nanoseek.recipes.common import (WallClock, finished_run, first_samples, is_eval_record, load_task, log,
                                     read_json, report_sample, run_eval, seed_everything, stored_eval, use_threads)
from nanoseek.recipes.config import ZeroConfig, recipe_dict
from nanoseek.recipes.pretrain import build_base
from nanoseek.rl.distributed import init_from_env
from nanoseek.rl.trainer import GRPOTrainer
from nanoseek.runs.checkpoint import load_weights_into, restore_newest, save_checkpoint, set_rng_state
from nanoseek.runs.plots import plot_run
from nanoseek.runs.report import write_report
from nanoseek.runs.rundir import RunDir


def run_zero(cfg: ZeroConfig, out: str | None = None, resume: bool = False, command: str = "nanoseek zero",
             fault_hook=None) -> Path:
    """Run (or resume) the R1-Zero recipe; return the run directory. ``fault_hook(tmp_dir)`` runs
    inside every checkpoint write, before its rename (tests kill the run there). Resuming a complete
    run changes nothing (``recipes.common.finished_run``)."""
    t_start = time.time()
    dist = init_from_env()  # torchrun: every rank trains, rank 0 alone evaluates and writes files
    use_threads(cfg.run.threads)
    out_path = Path(dist.broadcast_object(str(Path(out) if out else RunDir.default_path(cfg.run.name))))
    if resume and is_complete(RunDir(out_path), cfg):
        return finished_run(RunDir(out_path), recipe_dict(cfg), f"{cfg.grpo.steps} GRPO steps")
    task = load_task(cfg.task)
    run = RunDir.create(out_path, recipe_dict(cfg), resume=resume) if dist.is_main else RunDir(out_path)
    command = run.record_command(command)[0] if dist.is_main else command  # the report shows the first
    zero = ZeroRun(cfg, task, run, dist, WallClock(run.path / "wall.json", start=t_start), command, fault_hook)
    log(f"run directory: {run.path}")
    if dist.is_main:
        zero.clock.start()
    try:
        zero.base()
        zero.evaluate()
        zero.train(resume)
        if dist.is_main:
            zero.finish()
    finally:
        zero.clock.stop()
    return run.path


def is_complete(run: RunDir, cfg: ZeroConfig) -> bool:
    """Whether ``run`` finished ``cfg``'s GRPO steps: its ``summary.json`` (written last) says so and
    its newest checkpoint is that step's."""
    try:
        summary = read_json(run.summary_path)
    except NanoseekError:
        return False  # a damaged summary: finishing again writes it anew
    done = isinstance(summary, dict) and summary.get("steps") == cfg.grpo.steps
    return done and run.latest_step() == cfg.grpo.steps


class ZeroRun:
    """One R1-Zero run in ``run`` (a ``RunDir``): its stages, in order (see the module docstring)."""

    def __init__(self, cfg: ZeroConfig, task, run: RunDir, dist, clock: WallClock, command: str = "nanoseek zero",
                 fault_hook=None):
        self.cfg, self.task, self.run, self.dist, self.clock = cfg, task, run, dist, clock
        self.command, self.fault_hook = command, fault_hook
        self.policy = None
        self.base_eval: dict | None = None  # {"metrics", "samples"} on rank 0
        self.steps_done = 0

    def base(self) -> None:
        """The base model (rank 0 pretrains it, or finds it, before the other ranks load it)."""
        if not self.dist.is_main:
            self.dist.barrier()
        self.policy = build_base(self.cfg, self.task, self.run)
        if self.dist.is_main:
            self.dist.barrier()

    def evaluate(self) -> None:
        """The base model's held-out evaluation, stored in ``eval_base.json`` (rank 0)."""
        if not self.dist.is_main:
            return
        self.base_eval = stored_eval(self.run.path / "eval_base.json", self.run, self.policy, self.task,
                                     self.cfg.eval, "eval base")
        m = self.base_eval["metrics"]
        log(f"base: pass@1 {m['pass@1']:.3f}  well-formed {m['well_formed']:.3f}  thinking {m['thinking']:.3f}")

    def train(self, resume: bool) -> None:
        """GRPO from the newest checkpoint (if any) to ``grpo.steps``, or until ``run.max_wall_seconds``."""
        cfg, g, dist = self.cfg, self.cfg.grpo, self.dist
        seed_everything(cfg.run.seed + 1)
        trainer = GRPOTrainer(self.policy, self.task, g, seed=cfg.run.seed, dist=dist)
        start = self._resume(trainer, resume)
        bar = Progress(g.steps, "grpo", initial=start)
        wall_limit = cfg.run.max_wall_seconds
        for step in range(start, g.steps):
            metrics, samples = trainer.step(step)
            done = step + 1
            out_of_time = dist.broadcast_object(bool(wall_limit and self.clock.seconds() > wall_limit))
            if dist.is_main:
                self._record(trainer, done, metrics, samples, bar, out_of_time)
            if out_of_time:
                if dist.is_main:
                    log(f"wall-time limit reached after step {done}; checkpoint written, resume with --resume")
                break
        bar.close()
        self.steps_done = trainer.state.step

    def _resume(self, trainer: GRPOTrainer, resume: bool) -> int:
        """Load the newest intact checkpoint into the policy and ``trainer``; return its step (0: none)."""
        found = restore_newest(self.run, lambda folder: load_weights_into(self.policy.model, folder))
        if found is None:  # the full model, or a LoRA adapter, is loaded by restore_newest
            if resume and self.dist.is_main:
                self.run.truncate_logs_after(0)  # GRPO lines of a run stopped before its first intact checkpoint
            return 0
        latest, state, rng, meta = found
        trainer.load_state_dict(state)
        set_rng_state(rng)
        start = meta["step"]
        if self.dist.is_main:
            self.run.truncate_logs_after(start)
        log(f"resumed from {latest} (step {start})")
        return start

    def _record(self, trainer: GRPOTrainer, done: int, metrics: dict, samples: list, bar: Progress,
                out_of_time: bool) -> None:
        """After GRPO step ``done`` (rank 0): held-out evaluation every ``eval_every`` steps, logs, the
        wall time so far, and a checkpoint every ``checkpoint_every`` steps, at the end and when out of time."""
        cfg, g, run = self.cfg, self.cfg.grpo, self.run
        if g.eval_every and done % g.eval_every == 0 and done < g.steps:
            metrics.update(eval_metrics_record(run_eval(self.policy, self.task, cfg.eval, f"eval step {done}")[0]))
        run.log_metrics(metrics)
        self.clock.save()  # the time so far, so that a run killed and resumed still reports its whole wall time
        trainer.log_external(metrics, run.path)
        run.log_samples(samples)
        bar.update(1, **trainer.progress_fields(metrics))
        if done % cfg.run.checkpoint_every == 0 or done == g.steps or out_of_time:
            save_checkpoint(run, done, self.policy.model, self.policy.tokenizer, trainer.state_dict(),
                            meta={"phase": "grpo", "data_position": trainer.state.data_pos},
                            keep_last=cfg.run.keep_checkpoints, before_rename=self.fault_hook)

    def finish(self) -> None:
        """Final held-out evaluation, plots, ``report.md`` and, last, ``summary.json`` (rank 0): a run
        killed before the summary is finished again on resume, its final line logged once."""
        cfg, run, base = self.cfg, self.run, self.base_eval
        final_m, final_res = run_eval(self.policy, self.task, cfg.eval, "eval final")
        seen = [0]  # the final line of a call killed before its summary goes (at step 0 the base's stays)

        def earlier_final(r: dict) -> bool:
            if r.get("step") != self.steps_done or not is_eval_record(r):
                return False
            seen[0] += 1
            return seen[0] > (1 if self.steps_done == 0 else 0)

        run.drop_records(earlier_final, samples=False)
        run.log_metrics({"step": self.steps_done, **eval_metrics_record(final_m)})
        self.clock.stop()
        wall = self.clock.save()
        summary = {"task": self.task.name, "base": base["metrics"], "final": final_m, "steps": self.steps_done,
                   "wall_seconds": round(wall, 1), "seed": cfg.run.seed, "command": self.command}
        write_zero_report(run, summary, base["samples"], first_samples(final_res, cfg.eval.samples))
        run.write_summary(summary)
        gain = final_m["pass@1"] - base["metrics"]["pass@1"]
        log(f"final: pass@1 {final_m['pass@1']:.3f} ({gain:+.3f})  thinking {final_m['thinking']:.3f}  "
            f"mean length {final_m['mean_length']:.1f}")
        log(f"report: {run.report_path}")


def write_zero_report(run: RunDir, summary: dict, before: list[dict], after: list[dict]) -> None:
    """``report.md`` and ``plots/`` of an R1-Zero run: held-out numbers before and after GRPO, the
    training curves, and sample completions (``before``/``after``: stored evaluation samples)."""
    metrics = [m for m in run.read_metrics() if m.get("phase") != "pretrain"]
    plots = plot_run(metrics, run.plots_dir)
    b, f = summary["base"], summary["final"]
    notes = [f"Held-out pass@1 {b['pass@1']:.3f} → {f['pass@1']:.3f} over {f['n']} problems × {f['samples']} samples "
             f"(temperature/top-p as configured in [eval]).",
             f"Share of completions that think (non-empty think block): {b['thinking']:.2f} → {f['thinking']:.2f}; "
             f"mean completion length {b['mean_length']:.1f} → {f['mean_length']:.1f} tokens."]
    write_report(run, title=f"nanoseek zero: {summary['task']}", summary={**summary, "wall_time_s": summary["wall_seconds"]},
                 plots=plots, samples_before=[report_sample(s) for s in before],
                 samples_after=[report_sample(s) for s in after], notes=notes)
