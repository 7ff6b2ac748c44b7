"""Distillation (``nanoseek distill``): rejection-sample a teacher, SFT a smaller student, and compare
with the same student trained by GRPO alone (DeepSeek-R1 paper v1 sec. 2.4 and Table 6).

R1 distils by SFT only, no RL: the small dense models are fine-tuned on the 800k R1 samples
(sec. 2.4; 2-3 epochs in R1-Nature). Table 6 then shows that distillation beats large-scale RL on
the small model itself (R1-Zero-Qwen-32B vs R1-Distill-Qwen-32B). This command reproduces both:

1. student base: ``student.path`` (any model ``load_model`` reads: a nanoseek checkpoint or any
   ``transformers`` causal LM), or a fresh nanoseek ``ModelConfig`` (dense when
   ``first_k_dense_replace = num_hidden_layers``, else MoE) pretrained with the R1-Zero recipe's
   ``[pretrain]`` on the task corpus, like every base in nanoseek (``base/``);
2. the teacher (a run directory, e.g. a ``nanoseek r1`` run, a checkpoint, a Hugging Face folder, or
   an OpenAI-compatible endpoint) is evaluated and rejection-sampled (``[sample]``,
   ``nanoseek.recipes.rejection``: correct, readable, deduplicated, decontaminated) into ``teacher_data.jsonl``;
3. the student base is fine-tuned on that data (``[sft]``) in ``distilled/``;
4. with ``compare_grpo``, the same student base is trained by GRPO alone (``[grpo]``) in
   ``grpo_only/`` for the same wall time as steps 2 (sampling) and 3 (SFT) took: the Table 6
   comparison. The teacher's own training is not counted, as in the paper;
5. ``report.md`` puts teacher, student base, distilled student and GRPO-only student side by side
   (pass@1, well-formed rate, thinking share, mean length, parameters, wall time).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanoseek.atomic import atomic_write_json, atomic_write_text
from nanoseek.config import load_config_dict, to_dict
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig, summarize
from nanoseek.evaluation.run import EvalSettings, user_message
from nanoseek.policy.policy import Policy
from nanoseek.progress import Progress
from nanoseek.recipes.common import (StageTimes, create_run, finished_run, held_out_examples, load_policy, load_task,
                                     log, n_params, read_json, run_eval, use_threads)
from nanoseek.recipes.config import ModelSource, RunConfig, TaskConfig, ZeroConfig, build_recipe, recipe_dict
from nanoseek.recipes.pretrain import build_base
from nanoseek.recipes.rejection import (RejectionSamplingConfig, counts_table, decontamination_index, model_sampler,
                                        sample_with_progress, write_jsonl)
from nanoseek.recipes.sft import sft_stage
from nanoseek.recipes.zero import run_zero
from nanoseek.rl.config import GRPOConfig
from nanoseek.runs.report import format_duration, markdown_table
from nanoseek.runs.rundir import RunDir
from nanoseek.train.pretrain import PretrainConfig
from nanoseek.train.sft import SFTConfig


@dataclass
class DistillConfig:
    """``nanoseek distill``; ``task``/``pretrain``/``eval``/``grpo`` default to the R1-Zero recipe's."""

    zero_recipe: str = "zero-cpu"
    teacher: str = ""
    teacher_endpoint: str | None = None
    api_key: str | None = None
    student: ModelSource = field(default_factory=ModelSource)  # the [student] table: a path or ModelConfig fields
    compare_grpo: bool = True
    run: RunConfig = field(default_factory=lambda: RunConfig(name="distill"))
    task: TaskConfig = field(default_factory=TaskConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: RejectionSamplingConfig = field(default_factory=RejectionSamplingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def zero_config(self, model: ModelSource, name: str, grpo: GRPOConfig | None = None, wall: float = 0.0) -> ZeroConfig:
        """The R1-Zero recipe of the student ``model`` (named ``name``; ``wall``: its wall-time limit)."""
        run = RunConfig(**{**self.run.__dict__, "name": name, "max_wall_seconds": wall})
        return ZeroConfig(run=run, task=self.task, model=model, pretrain=self.pretrain, grpo=grpo or self.grpo, eval=self.eval)


def build_distill_config(data: dict) -> DistillConfig:
    """A ``DistillConfig`` with the R1-Zero recipe's sections filled in (keys in ``data`` win). Raises
    ``NanoseekError`` without a teacher or a student, or for unknown keys."""
    zero = load_config_dict(data.get("zero_recipe", "zero-cpu"))
    out = dict(data)
    for sec in ("task", "pretrain", "eval", "grpo"):
        out[sec] = {**zero.get(sec, {}), **data.get(sec, {})}
    if "threads" in zero.get("run", {}):
        out["run"] = {"threads": zero["run"]["threads"], **data.get("run", {})}
    cfg = build_recipe(DistillConfig, out)
    if not cfg.teacher:
        raise NanoseekError("nanoseek distill needs --teacher (a run directory, checkpoint, Hugging Face folder, "
                            "or with --teacher-endpoint the remote model name)")
    if not (cfg.student.path or cfg.student.config):
        raise NanoseekError("nanoseek distill needs --student (a model folder, or a config.json of a fresh model)")
    return cfg


def evaluate_sampler(sampler, task, e: EvalConfig) -> dict:
    """Held-out metrics of any ``nanoseek.evaluation.run`` sampler (local or endpoint) with the ``[eval]`` settings."""
    examples = held_out_examples(task, e.limit)
    questions = [user_message(x.prompt, task, sampler.style) for x in examples]
    rows = [(i, j) for i in range(len(examples)) for j in range(e.samples)]
    settings = EvalSettings(model="teacher", temperature=e.temperature, top_p=e.top_p, max_tokens=e.max_new_tokens, seed=e.seed)
    results = []
    bar = Progress(len(rows), "eval teacher", unit="sample")

    def on_batch(batch):
        results.extend(batch)
        bar.update(len(batch))

    sampler.sample(task, examples, questions, rows, settings, on_batch)
    bar.close()
    return summarize(results, len(examples))


def run_distill(cfg: DistillConfig, out: str | None = None, resume: bool = False, command: str = "nanoseek distill") -> Path:
    """Run (or resume) the distillation recipe; return the run directory. Resuming a complete run
    (its ``summary.json``, written last) changes nothing."""
    if resume and out and RunDir(out).summary_path.exists():
        return finished_run(RunDir(out), recipe_dict(cfg), "distillation and comparison done")
    use_threads(cfg.run.threads)
    task = load_task(cfg.task)
    run = create_run(cfg, out, resume)
    d = Distillation(cfg, task, run, run.record_command(command)[0])
    student, base_eval = d.student_base()
    d.teacher()
    budget = d.distilled(student, base_eval)
    if cfg.compare_grpo:
        d.grpo_only(budget, base_eval)
    summary = write_distill_report(run, cfg, task, student_params=n_params(student.model), budget=budget)
    g = summary["grpo_only"]
    log(f"teacher pass@1 {summary['teacher']['metrics']['pass@1']:.3f}, distilled student "
        f"{summary['distilled']['pass@1']:.3f}" + (f", GRPO-only student {g['pass@1']:.3f}" if g else ""))
    log(f"report: {run.report_path}")
    return run.path


class Distillation:
    """The stages of one distillation run in ``run`` (see the module docstring), each skipped when
    its output exists; the wall time of each is kept in ``stage_seconds.json``."""

    def __init__(self, cfg: DistillConfig, task, run: RunDir, command: str = "nanoseek distill"):
        self.cfg, self.task, self.run, self.command = cfg, task, run, command
        self.path = run.path
        self.times = StageTimes(self.path / "stage_seconds.json")
        self.student_path = cfg.student.path or str(self.path / "base")

    def student_base(self) -> tuple[Policy, dict]:
        """1. The student base (pretrained unless ``student.path``) and its held-out metrics."""
        cfg, p = self.cfg, self.path
        if not cfg.student.path and not (p / "base").exists():
            self.times.timed("student_pretrain", lambda: build_base(cfg.zero_config(cfg.student, "student"), self.task,
                                                                    self.run))
        student = load_policy(self.student_path, cfg.task.system_prompt)
        if not (p / "eval_base.json").exists():
            m, _ = run_eval(student, self.task, cfg.eval, "eval student base")
            atomic_write_json(p / "eval_base.json", {"metrics": m, "samples": []})
        return student, read_json(p / "eval_base.json")["metrics"]

    def teacher(self) -> None:
        """2. The teacher's held-out metrics (``teacher.json``) and rejection-sampled data
        (``teacher_data.jsonl``, ``teacher_counts.json``)."""
        cfg, p = self.cfg, self.path
        if (p / "teacher.json").exists() and (p / "teacher_counts.json").exists():
            return
        teacher = model_sampler(cfg.teacher, cfg.teacher_endpoint, cfg.api_key, cfg.sample.batch_size, cfg.task.system_prompt)
        if not (p / "teacher.json").exists():
            params = n_params(teacher.policy.model) if hasattr(teacher, "policy") else None
            atomic_write_json(p / "teacher.json", {"metrics": evaluate_sampler(teacher, self.task, cfg.eval),
                                                   "params": params, "model": cfg.teacher, "endpoint": cfg.teacher_endpoint})
        if not (p / "teacher_counts.json").exists():
            index = decontamination_index(cfg.sample, self.task, cfg.task.data_dir)
            t0 = time.time()
            records, counts = self.times.timed("teacher_sampling", lambda: sample_with_progress(
                teacher, self.task, cfg.sample, index, "sample teacher"))
            counts["sampling_seconds"] = round(time.time() - t0, 1)
            write_jsonl(p / "teacher_data.jsonl", records)
            atomic_write_json(p / "teacher_counts.json", counts)
            log("teacher samples:\n" + counts_table(counts))

    def distilled(self, student: Policy, base_eval: dict) -> float:
        """3. SFT of the student on the teacher's samples (``distilled/``); return the shared wall-time
        budget: teacher sampling + student SFT seconds."""
        cfg, p = self.cfg, self.path
        chats = [json.loads(line)["messages"] for line in (p / "teacher_data.jsonl").read_text().splitlines() if line.strip()]
        if not chats:
            raise NanoseekError(f"the teacher kept no samples (see {p / 'teacher_counts.json'})")
        sft_dir = p / "distilled"
        if not (sft_dir / "summary.json").exists():
            sft_run = RunDir.create(sft_dir, {"stage": "distilled", "sft": to_dict(cfg.sft)}, resume=sft_dir.exists())
            torch.manual_seed(cfg.run.seed)
            run_cfg = cfg.zero_config(cfg.student, "distilled").run
            self.times.timed("student_sft", lambda: sft_stage(
                student, chats, cfg.sft, sft_run, run_cfg, task=self.task, eval_cfg=cfg.eval, before=base_eval,
                title="nanoseek distill: student SFT on teacher samples", command=self.command))
        return read_json(p / "teacher_counts.json")["sampling_seconds"] + read_json(sft_dir / "summary.json")["train_seconds"]

    def grpo_only(self, budget: float, base_eval: dict) -> None:
        """4. The same student base trained by GRPO alone for ``budget`` seconds (``grpo_only/``)."""
        folder = self.path / "grpo_only"
        if (folder / "summary.json").exists():
            return
        grpo = dataclasses.replace(self.cfg.grpo, steps=1_000_000, eval_every=0)
        zcfg = self.cfg.zero_config(ModelSource(path=self.student_path), "grpo_only", grpo, wall=budget)
        if not folder.exists():
            RunDir.create(folder, recipe_dict(zcfg))
            atomic_write_json(folder / "eval_base.json", {"metrics": base_eval, "samples": []})
        log(f"GRPO-only student for {budget:.0f} s (the distillation's sampling + SFT time)")
        self.times.timed("grpo_only", lambda: run_zero(zcfg, out=str(folder), resume=True, command=self.command))


def write_distill_report(run, cfg: DistillConfig, task, student_params: int, budget: float) -> dict:
    """``summary.json`` and ``report.md``: teacher, student base, distilled and GRPO-only side by side."""
    p = run.path
    teacher = read_json(p / "teacher.json")
    distilled = read_json(p / "distilled" / "summary.json")
    grpo = read_json(p / "grpo_only" / "summary.json")
    walls = read_json(p / "stage_seconds.json") or {}
    rows = [("teacher", teacher["metrics"], teacher.get("params"), None),
            ("student base", read_json(p / "eval_base.json")["metrics"], student_params, walls.get("student_pretrain")),
            ("student, distilled (SFT on teacher samples)", distilled["final"], student_params, budget)]
    if grpo:
        rows.append((f"student, GRPO only (same wall time: {grpo.get('steps')} steps)", grpo["final"], student_params,
                     budget))
    t, d = teacher["metrics"]["pass@1"], distilled["final"]["pass@1"]
    summary = {"task": task.name, "teacher": teacher, "student_params": student_params,
               "params_ratio": student_params / teacher["params"] if teacher.get("params") else None,
               "distilled": distilled["final"], "grpo_only": grpo["final"] if grpo else None,
               "grpo_only_steps": grpo.get("steps") if grpo else None,
               "distilled_over_teacher": d / t if t else None, "budget_seconds": round(budget, 1),
               "teacher_samples": read_json(p / "teacher_counts.json")}
    table = [[name, m["pass@1"], m["well_formed"], m["thinking"], m["mean_length"],
              f"{n / 1e6:.3f}M" if n else "–", format_duration(w) if w else "–"] for name, m, n, w in rows]
    lines = [f"# nanoseek distill: {task.name}", "", f"Teacher: `{cfg.teacher}`" +
             (f" at {cfg.teacher_endpoint}" if cfg.teacher_endpoint else "") + f" · run directory `{p}`", "",
             "## Distillation vs RL on the student (DeepSeek-R1 Table 6)", "",
             markdown_table(["model", "pass@1", "well-formed", "thinking", "mean length", "parameters", "training wall time"],
                            table, align="lrrrrrr"),
             f"Held-out: {teacher['metrics']['n']} problems × {cfg.eval.samples} samples, temperature {cfg.eval.temperature}, "
             f"top-p {cfg.eval.top_p}. Training wall time: the student base's pretraining; for the distilled and "
             "GRPO-only students the shared budget.", ""]
    if summary["params_ratio"]:
        lines.append(f"- Student/teacher parameters: {summary['params_ratio']:.3f}.")
    if t:
        lines.append(f"- Distilled student reaches {d / t:.1%} of the teacher's pass@1.")
    if grpo:
        g = grpo["final"]["pass@1"]
        word = "beats" if d > g else ("only ties with" if d == g else "does NOT beat")
        lines.append(f"- Distillation {word} GRPO alone on the same student with the same wall time "
                     f"({format_duration(budget)}: teacher sampling + student SFT; GRPO ran {grpo.get('steps')} steps "
                     f"in it): pass@1 {d:.3f} vs {g:.3f}. The teacher's own training is not counted (as in R1 Table 6).")
    lines += ["", "## Teacher samples", "", counts_table(summary["teacher_samples"]),
              "Stage reports: [`distilled/report.md`](distilled/report.md)" +
              (", [`grpo_only/report.md`](grpo_only/report.md)" if grpo else "") + "."]
    atomic_write_text(run.report_path, "\n".join(lines) + "\n")
    run.write_summary(summary)  # last: a resumed run that finds it is complete
    return summary
