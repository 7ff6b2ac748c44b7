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

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig
from nanoseek.rl.config import GRPOConfig
from nanoseek.train.pretrain import PretrainConfig
from nanoseek.recipes.config import RunConfig, TaskConfig, ZeroConfig
from nanoseek.recipes.rejection import SampleConfig
from nanoseek.train.sft import SFTConfig


@dataclass
class DistillConfig:
    """``nanoseek distill``; ``task``/``pretrain``/``eval``/``grpo`` default to the R1-Zero recipe's."""

    zero_recipe: str = "zero-cpu"
    teacher: str = ""
    teacher_endpoint: str | None = None
    api_key: str | None = None
    student: dict = field(default_factory=dict)  # {"path": ...} or ModelConfig fields (DeepSeek-V3 names)
    compare_grpo: bool = True
    run: RunConfig = field(default_factory=lambda: RunConfig(name="distill"))
    task: TaskConfig = field(default_factory=TaskConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def zero_config(self, model: dict, name: str, grpo: GRPOConfig | None = None, wall: float = 0.0) -> ZeroConfig:
        run = RunConfig(**{**self.run.__dict__, "name": name, "max_wall_seconds": wall})
        return ZeroConfig(run=run, task=self.task, model=model, pretrain=self.pretrain, grpo=grpo or self.grpo, eval=self.eval)


def build_distill_config(data: dict) -> DistillConfig:
    """A ``DistillConfig`` with the R1-Zero recipe's sections filled in (keys in ``data`` win)."""
    from nanoseek.config import load_config_dict
    from nanoseek.config import build

    zero = load_config_dict(data.get("zero_recipe", "zero-cpu"))
    out = dict(data)
    for sec in ("task", "pretrain", "eval", "grpo"):
        out[sec] = {**zero.get(sec, {}), **data.get(sec, {})}
    if "threads" in zero.get("run", {}):
        out["run"] = {"threads": zero["run"]["threads"], **data.get("run", {})}
    cfg = build(DistillConfig, out)
    if not cfg.teacher:
        raise NanoseekError("nanoseek distill needs --teacher (a run directory, checkpoint, Hugging Face folder, "
                            "or with --teacher-endpoint the remote model name)")
    if not cfg.student:
        raise NanoseekError("nanoseek distill needs --student (a model folder, or a config.json of a fresh model)")
    return cfg


def _log(msg: str) -> None:
    print(f"[nanoseek] {msg}", flush=True)


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate_sampler(sampler, task, e: EvalConfig) -> dict:
    """Held-out metrics of any ``eval_run`` sampler (local or endpoint) with the ``[eval]`` settings."""
    from nanoseek.evaluation.run import EvalSettings, user_message
    from nanoseek.evaluation.evaluate import summarize
    from nanoseek.progress import Progress
    from nanoseek.recipes.zero import held_out_examples

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
    """Run (or resume) the distillation recipe; return the run directory."""
    from nanoseek.atomic import atomic_write_json
    from nanoseek.config import to_dict
    from nanoseek.runs.rundir import RunDir, default_path
    from nanoseek.recipes.rejection import build_sampler, counts_table, rejection_sample, write_jsonl
    from nanoseek.train.sft import load_policy, sft_stage
    from nanoseek.tasks import get_task
    from nanoseek.recipes.zero import build_base, run_eval, run_zero

    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    task = get_task(cfg.task.name, data_dir=cfg.task.data_dir, **cfg.task.options)
    run = RunDir.create(Path(out) if out else default_path(cfg.run.name), to_dict(cfg), resume=resume)
    p = run.path
    _log(f"run directory: {run.path}")
    walls = _read(p / "stage_seconds.json") or {}

    def timed(name, fn):
        t0 = time.time()
        result = fn()
        walls[name] = round(walls.get(name, 0.0) + time.time() - t0, 1)
        atomic_write_json(p / "stage_seconds.json", walls)
        return result

    # 1. the student base, and its evaluation
    student_path = cfg.student.get("path") or str(p / "base")
    if not cfg.student.get("path") and not (p / "base").exists():
        timed("student_pretrain", lambda: build_base(cfg.zero_config(cfg.student, "student"), task, run))
    student = load_policy(student_path, cfg.task.system_prompt)
    if not (p / "eval_base.json").exists():
        m, _ = run_eval(student, task, cfg, "eval student base")
        atomic_write_json(p / "eval_base.json", {"metrics": m, "samples": []})
    base_eval = _read(p / "eval_base.json")["metrics"]

    # 2. the teacher: evaluation and rejection sampling
    teacher = None
    if not (p / "teacher.json").exists() or not (p / "teacher_counts.json").exists():
        teacher = build_sampler(cfg.teacher, cfg.teacher_endpoint, cfg.api_key, cfg.sample.batch_size, cfg.task.system_prompt)
    if not (p / "teacher.json").exists():
        params = n_params(teacher.policy.model) if hasattr(teacher, "policy") else None
        atomic_write_json(p / "teacher.json", {"metrics": evaluate_sampler(teacher, task, cfg.eval), "params": params,
                                               "model": cfg.teacher, "endpoint": cfg.teacher_endpoint})
    if not (p / "teacher_counts.json").exists():
        from nanoseek.tasks.decontaminate import build_index
        from nanoseek.progress import Progress

        sc = cfg.sample
        index = build_index(cfg.task.data_dir, [task], sc.decontam_ngram, sc.decontam_common_df, sc.eval_tasks or None) \
            if sc.decontaminate else None
        bar = Progress((sc.prompts or len(task.examples(sc.split))) * sc.samples, "sample teacher", unit="sample")
        t0 = time.time()
        records, counts = timed("teacher_sampling", lambda: rejection_sample(teacher, task, sc, index, bar))
        bar.close()
        counts["sampling_seconds"] = round(time.time() - t0, 1)
        write_jsonl(p / "teacher_data.jsonl", records)
        atomic_write_json(p / "teacher_counts.json", counts)
        _log("teacher samples:\n" + counts_table(counts))
    del teacher
    counts = _read(p / "teacher_counts.json")
    chats = [json.loads(line)["messages"] for line in (p / "teacher_data.jsonl").read_text().splitlines() if line.strip()]
    if not chats:
        raise NanoseekError(f"the teacher kept no samples (see {p / 'teacher_counts.json'})")

    # 3. SFT of the student on the teacher's samples
    sft_dir = p / "distilled"
    if not (sft_dir / "summary.json").exists():
        sft_run = RunDir.create(sft_dir, {"stage": "distilled", "sft": to_dict(cfg.sft)}, resume=sft_dir.exists())
        torch.manual_seed(cfg.run.seed)
        timed("student_sft", lambda: sft_stage(student, chats, cfg.sft, sft_run, cfg.zero_config(cfg.student, "distilled").run,
                                               task=task, eval_cfg=cfg.eval, before=base_eval,
                                               title="nanoseek distill: student SFT on teacher samples", command=command))
    distilled = _read(sft_dir / "summary.json")
    budget = counts["sampling_seconds"] + distilled["train_seconds"]

    # 4. the same student base, GRPO only, for the same wall time
    if cfg.compare_grpo and not (p / "grpo_only" / "summary.json").exists():
        grpo = GRPOConfig(**{**cfg.grpo.__dict__, "steps": 1_000_000, "eval_every": 0})
        zcfg = cfg.zero_config({"path": student_path}, "grpo_only", grpo, wall=budget)
        folder = p / "grpo_only"
        if not folder.exists():
            RunDir.create(folder, zcfg.to_dict())
            atomic_write_json(folder / "eval_base.json", {"metrics": base_eval, "samples": []})
        _log(f"GRPO-only student for {budget:.0f} s (the distillation's sampling + SFT time)")
        timed("grpo_only", lambda: run_zero(zcfg, out=str(folder), resume=True, command=command))
    summary = write_distill_report(run, cfg, task, student_params=n_params(student.model), budget=budget)
    g = summary["grpo_only"]
    _log(f"teacher pass@1 {summary['teacher']['metrics']['pass@1']:.3f}, distilled student "
         f"{summary['distilled']['pass@1']:.3f}" + (f", GRPO-only student {g['pass@1']:.3f}" if g else ""))
    _log(f"report: {run.report_path}")
    return run.path


def write_distill_report(run, cfg: DistillConfig, task, student_params: int, budget: float) -> dict:
    """``summary.json`` and ``report.md``: teacher, student base, distilled and GRPO-only side by side."""
    from nanoseek.atomic import atomic_write_text
    from nanoseek.runs.report import format_duration, markdown_table
    from nanoseek.recipes.rejection import counts_table

    p = run.path
    teacher = _read(p / "teacher.json")
    distilled = _read(p / "distilled" / "summary.json")
    grpo = _read(p / "grpo_only" / "summary.json")
    walls = _read(p / "stage_seconds.json") or {}
    rows = [("teacher", teacher["metrics"], teacher.get("params"), None),
            ("student base", _read(p / "eval_base.json")["metrics"], student_params, walls.get("student_pretrain")),
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
               "teacher_samples": _read(p / "teacher_counts.json")}
    run.write_summary(summary)
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
    return summary
