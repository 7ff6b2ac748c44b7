"""The four-stage DeepSeek-R1 recipe (``nanoseek r1``), with the R1-Zero run of the same base beside it.

DeepSeek-R1 paper v1 sec. 2.3 (DEEPSEEK.md sec. 2.5), one stage per directory of ``RUN_DIR``:

=============  ===============  ==============================================================================
stage          directory        what
=============  ===============  ==============================================================================
base           base/            the base model: ``[model]`` + ``[pretrain]`` of the R1-Zero recipe
                                (``pretrain.build_base``), or ``model.path``
zero           zero/            R1-Zero from that base for comparison (``zero.run_zero``, ``[zero_grpo]``)
cold_start     cold_start/      (1) cold-start SFT of the base on long readable CoTs (``[cold_start]``)
reasoning_rl   reasoning_rl/    (2) reasoning-oriented GRPO with the language-consistency reward added
rejection_sft  rejection/       (3) rejection sampling from stage 2 (correct, readable, deduplicated,
               rejection_sft/       decontaminated) plus non-reasoning data; SFT of the *base* model on it
all_rl         all_rl/          (4) RL for all scenarios: GRPO from stage 3
=============  ===============  ==============================================================================

Each stage's output is the next stage's input, each stage resumes from its own checkpoints, a
finished stage is skipped, and ``--from STAGE`` redoes a stage and everything after it. After
every stage the held-out split is evaluated the same way (``[eval]``); ``report.md`` shows pass@1,
well-formed rate, thinking share and mean length after each stage next to R1-Zero.

Cold-start data (``cold_start.source``): ``"worked"``, the task's own worked-solution writer
(readable chains of thought; the chain task's ``a+b=c`` steps); ``"zero"``, R1-Zero completions
cleaned by the rejection-sampling filters ("gathering DeepSeek-R1-Zero outputs in a readable
format", R1 sec. 2.3.1); or a chat JSONL file.

Non-reasoning data (stage 3, ``rejection.non_reasoning``): R1 adds about 200k non-reasoning samples
(writing, factual QA, self-cognition, translation; no CoT for simple queries) to about 600k
reasoning ones. ``"builtin"`` writes self-cognition questions answered without a CoT; a chat
JSONL path adds the user's own. Deviation (CPU recipe): stage 4 has no
helpfulness/harmlessness reward models, so "all scenarios" are the rule-based rewards of the task.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanoseek.atomic import atomic_write_json, atomic_write_text, remove_path
from nanoseek.config import check_ranges, load_config_dict, to_dict
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig, results_as_dicts
from nanoseek.evaluation.run import LocalSampler
from nanoseek.model.load import resolve_model_dir
from nanoseek.recipes.common import (StageTimes, create_run, finished_run, load_policy, load_task, log, read_json,
                                     run_eval, use_threads)
from nanoseek.recipes.config import ModelSource, RunConfig, TaskConfig, ZeroConfig, build_recipe, recipe_dict
from nanoseek.recipes.pretrain import build_base
from nanoseek.recipes.r1_report import write_r1_report
from nanoseek.recipes.rejection import (Candidate, RejectionSamplingConfig, chat_record, counts_table,
                                        decontamination_index, filter_candidates, rejection_sample,
                                        sample_with_progress, write_jsonl)
from nanoseek.recipes.sft import sft_stage
from nanoseek.recipes.zero import run_zero
from nanoseek.rl.config import GRPOConfig
from nanoseek.runs.rundir import RunDir
from nanoseek.train.pretrain import PretrainConfig
from nanoseek.train.sft import SFTConfig
from nanoseek.train.sft_data import load_chat_jsonl

STAGES = ("base", "zero", "cold_start", "reasoning_rl", "rejection_sft", "all_rl")
STAGE_TITLES = {"base": "base model", "zero": "R1-Zero (GRPO from base)", "cold_start": "1. cold-start SFT",
                "reasoning_rl": "2. reasoning RL", "rejection_sft": "3. rejection sampling + SFT from base",
                "all_rl": "4. RL, all scenarios"}
_OUTPUTS = {"base": ("base", "pretrain_checkpoint", "eval_base.json"), "zero": ("zero",), "cold_start": ("cold_start",),
            "reasoning_rl": ("reasoning_rl",), "rejection_sft": ("rejection", "rejection_sft"), "all_rl": ("all_rl",)}
SELF_COGNITION = [("Who are you?", "I am nanoseek, a small reasoning model."),
                  ("What is your name?", "My name is nanoseek."), ("hello", "Hello! Ask me a question."),
                  ("Hi!", "Hi! Ask me a question."), ("Who made you?", "I was trained with nanoseek.")]


@dataclass
class ColdStartConfig:
    """Stage 1: ``examples`` cold-start chats (R1: "thousands") from ``source``, then ``[cold_start.sft]``."""

    source: str = "worked"
    examples: int = 2000
    seed: int = 11
    sample: RejectionSamplingConfig = field(default_factory=RejectionSamplingConfig)  # used by source = "zero"
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self):
        check_ranges(self, "cold_start", {"examples": ">= 1", "seed": ">= 0"})


@dataclass
class RejectionConfig:
    """Stage 3: rejection sampling (``[rejection.sample]``) plus non-reasoning data, then SFT of the base."""

    sample: RejectionSamplingConfig = field(default_factory=RejectionSamplingConfig)
    non_reasoning: str = "builtin"
    non_reasoning_fraction: float = 0.25  # R1 sec. 2.3.3: ~200k of ~800k
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self):
        check_ranges(self, "rejection", {"non_reasoning_fraction": "[0, 1)"})


@dataclass
class R1Config:
    """The R1 recipe. ``task``/``model``/``pretrain``/``eval`` and ``zero_grpo`` default to those of the
    R1-Zero recipe ``zero_recipe`` (so both runs share one base); the GRPO stages start from its
    ``[grpo]`` too and override what they list."""

    zero_recipe: str = "zero-cpu"
    compare_zero: bool = True
    run: RunConfig = field(default_factory=lambda: RunConfig(name="r1"))
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelSource = field(default_factory=ModelSource)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    zero_grpo: GRPOConfig = field(default_factory=GRPOConfig)
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    reasoning_rl: GRPOConfig = field(default_factory=GRPOConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    all_rl: GRPOConfig = field(default_factory=GRPOConfig)

    def zero_config(self, grpo: GRPOConfig, model: ModelSource, seed_offset: int = 0, name: str = "zero") -> ZeroConfig:
        """The R1-Zero recipe of one GRPO stage: ``grpo`` from ``model``, run seed offset by ``seed_offset``."""
        run = RunConfig(**{**self.run.__dict__, "name": name, "seed": self.run.seed + seed_offset, "max_wall_seconds": 0.0})
        return ZeroConfig(run=run, task=self.task, model=model, pretrain=self.pretrain, grpo=grpo, eval=self.eval)


def resolve_r1_dict(data: dict) -> dict:
    """``data`` with the R1-Zero recipe's sections filled in (keys given in ``data`` win)."""
    zero = load_config_dict(data.get("zero_recipe", "zero-cpu"))
    out = dict(data)
    for sec in ("task", "pretrain", "eval"):
        out[sec] = {**zero.get(sec, {}), **data.get(sec, {})}
    given = data.get("model", {})
    out["model"] = dict(given) if given.get("path") else {**zero.get("model", {}), **given}
    if "threads" in zero.get("run", {}):  # the same machine setting as the R1-Zero recipe unless set here
        out["run"] = {"threads": zero["run"]["threads"], **data.get("run", {})}
    out["zero_grpo"] = {**zero.get("grpo", {}), **data.get("zero_grpo", {})}
    for stage in ("reasoning_rl", "all_rl"):
        out[stage] = {**zero.get("grpo", {}), **data.get(stage, {})}
    return out


def build_r1_config(data: dict) -> R1Config:
    """Build and validate an ``R1Config`` from a dict (``resolve_r1_dict``; unknown keys raise ``NanoseekError``)."""
    return build_recipe(R1Config, resolve_r1_dict(data))


# -------------------------------------------------------------------------------------- data
def worked_candidates(task, n: int, seed: int) -> list:
    """Cold-start samples (``rejection.Candidate``) from the task's worked-solution writer: ``n`` train
    examples with ``metadata['worked']`` (the chain task's ``a+b=c`` steps), answered in the template's tags."""
    examples = [e for e in task.examples("train") if e.metadata.get("worked")]
    if not examples:
        raise NanoseekError(f"task {task.name!r} has no worked solutions; set cold_start.source to 'zero' or a chat JSONL file")
    random.Random(seed).shuffle(examples)
    out = []
    for e in examples[:n]:
        content = f"<answer>{e.answer}</answer>"
        completion = f"{e.metadata['worked']}</think>{content}"
        out.append(Candidate(e.prompt, completion, e.metadata["worked"], content, True, True, id=e.id, answer=e.answer))
    return out


def builtin_non_reasoning(n: int, seed: int) -> list[list[dict]]:
    """``n`` non-reasoning chats answered without a CoT: self-cognition questions (R1 sec. 2.3.3 lists
    self-cognition among its non-reasoning data, and "for simpler queries, such as 'hello', we do not
    provide a CoT")."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        q, a = SELF_COGNITION[rng.randrange(len(SELF_COGNITION))]
        chats.append([{"role": "user", "content": q}, {"role": "assistant", "content": f"<answer>{a}</answer>"}])
    return chats


# ------------------------------------------------------------------------------------ the recipe
class R1Pipeline:
    """Runs the stages of ``R1Config`` in ``run`` (a ``RunDir``); see the module docstring. ``stages``
    and ``titles`` are the stage table the report (``r1_report``) reads."""

    stages = STAGES
    titles = STAGE_TITLES

    def __init__(self, cfg: R1Config, run: RunDir, command: str = "nanoseek r1"):
        self.cfg, self.run, self.command = cfg, run, command
        self.task = load_task(cfg.task)
        self.path = run.path
        self.eval_index = None  # the decontamination index, built once

    # -- helpers ------------------------------------------------------------------------------
    def base_path(self) -> str:
        """The base model: ``model.path``, else ``RUN_DIR/base``."""
        return self.cfg.model.path or str(self.path / "base")

    def policy(self, path):
        """A policy of the model at ``path`` asked with the task's system prompt."""
        return load_policy(str(path), self.cfg.task.system_prompt)

    def evaluation(self, stage: str) -> dict | None:
        """The held-out metrics after ``stage`` (None while it has not run)."""
        p = self.path
        if stage == "base":
            stored = read_json(p / "zero" / "eval_base.json") or read_json(p / "eval_base.json")
            return stored["metrics"] if stored else None
        summary = read_json(p / stage / "summary.json")
        return summary["final"] if summary else None

    def _sft(self, name: str, chats, sft_cfg: SFTConfig, stage_cfg, seed_offset: int):
        """SFT of the base model on ``chats`` in ``RUN_DIR/name`` (a stage run directory)."""
        folder = self.path / name
        run = RunDir.create(folder, {"stage": name, "sft": to_dict(stage_cfg)}, resume=folder.exists())
        torch.manual_seed(self.cfg.run.seed + seed_offset)
        policy = self.policy(self.base_path())
        run_cfg = RunConfig(**{**self.cfg.run.__dict__, "name": name, "max_wall_seconds": 0.0})
        sft_stage(policy, chats, sft_cfg, run, run_cfg, task=self.task, eval_cfg=self.cfg.eval,
                  before=self.evaluation("base"), title=f"nanoseek r1: {STAGE_TITLES[name]}", command=self.command)

    def _grpo(self, name: str, grpo: GRPOConfig, start: str, seed_offset: int) -> None:
        """GRPO (the R1-Zero recipe) from stage ``start``'s model in ``RUN_DIR/name``."""
        zcfg = self.cfg.zero_config(grpo, ModelSource(path=str(self.path / start)), seed_offset, name)
        folder = self.path / name
        if not folder.exists():  # the start model was evaluated at the end of its stage: reuse it
            RunDir.create(folder, recipe_dict(zcfg))
            after = read_json(self.path / start / "eval_after.json") or {}
            atomic_write_json(folder / "eval_base.json", {"metrics": self.evaluation(start),
                                                          "samples": after.get("samples", [])})
        run_zero(zcfg, out=str(folder), resume=True, command=self.command)

    # -- stages -------------------------------------------------------------------------------
    def stage_base(self) -> None:
        """The base model (pretrained unless ``model.path``); evaluated here when there is no R1-Zero run."""
        if self.cfg.model.path:
            log(f"base model: {self.cfg.model.path}")
        else:
            build_base(self.cfg.zero_config(self.cfg.zero_grpo, self.cfg.model), self.task, self.run)
        if not self.cfg.compare_zero and self.evaluation("base") is None:
            m, res = run_eval(self.policy(self.base_path()), self.task, self.cfg.eval, "eval base")
            atomic_write_json(self.path / "eval_base.json", {"metrics": m, "samples": results_as_dicts(res[:4])})

    def stage_zero(self) -> None:
        """R1-Zero from the same base, for comparison (``compare_zero``)."""
        if not self.cfg.compare_zero:
            return
        zcfg = self.cfg.zero_config(self.cfg.zero_grpo, ModelSource(path=self.base_path()))
        run_zero(zcfg, out=str(self.path / "zero"), resume=(self.path / "zero").exists(), command=self.command)

    def stage_cold_start(self) -> None:
        """(1) Cold-start data (``cold_start.source``), then SFT of the base on it."""
        data_path = self.path / "cold_start_data.jsonl"
        if not data_path.exists():
            records, counts = self._cold_start_data()
            write_jsonl(data_path, records)
            (self.path / "cold_start_counts.json").write_text(json.dumps(counts, indent=1))
        chats = [json.loads(line)["messages"] for line in data_path.read_text().splitlines() if line.strip()]
        if not chats:
            raise NanoseekError(f"no cold-start data survived the filters ({self.path / 'cold_start_counts.json'})")
        cs = self.cfg.cold_start
        self._sft("cold_start", chats, cs.sft, cs, 3)

    def _cold_start_data(self) -> tuple[list[dict], dict]:
        """The cold-start chat records and their filter counts (see ``ColdStartConfig``)."""
        cs = self.cfg.cold_start
        if cs.source == "worked":
            cands = worked_candidates(self.task, cs.examples, cs.seed)
            kept, counts, _ = filter_candidates(cands, cs.sample, self._index(cs.sample))
            counts = {"candidates": len(cands), **counts, "kept": len(kept)}
            return [chat_record(c, self.cfg.task.system_prompt, "worked") for c in kept], counts
        if cs.source == "zero":
            if not (self.path / "zero" / "summary.json").exists():
                raise NanoseekError("cold_start.source = 'zero' needs the R1-Zero run (compare_zero = true)")
            sampler = self._sampler(self.path / "zero", cs.sample)
            return rejection_sample(sampler, self.task, cs.sample, self._index(cs.sample))
        return [{"messages": m} for m in load_chat_jsonl(cs.source)], {}

    def stage_reasoning_rl(self) -> None:
        """(2) Reasoning-oriented GRPO from the cold-start model."""
        self._grpo("reasoning_rl", self.cfg.reasoning_rl, "cold_start", 2)

    def stage_rejection_sft(self) -> None:
        """(3) Rejection sampling from the stage-2 model plus non-reasoning data, then SFT of the base on it."""
        rj = self.cfg.rejection
        folder = self.path / "rejection"
        if not (folder / "counts.json").exists():
            folder.mkdir(exist_ok=True)
            sampler = self._sampler(self.path / "reasoning_rl", rj.sample)
            t0 = time.time()
            records, counts = sample_with_progress(sampler, self.task, rj.sample, self._index(rj.sample),
                                                   "rejection sampling")
            extra = self._non_reasoning(len(records))
            records += [{"messages": m, "source": "non_reasoning"} for m in extra]
            counts.update({"non_reasoning": len(extra), "sft_examples": len(records),
                           "sampling_seconds": round(time.time() - t0, 1)})
            write_jsonl(folder / "data.jsonl", records)
            atomic_write_json(folder / "counts.json", counts)
            log("rejection sampling:\n" + counts_table(counts))
        chats = [json.loads(line)["messages"] for line in (folder / "data.jsonl").read_text().splitlines() if line.strip()]
        if not chats:
            raise NanoseekError(f"rejection sampling kept no samples (see {folder / 'counts.json'}): the stage-2 model "
                                "solves too few prompts; sample more (rejection.sample.prompts/samples) or train longer")
        self._sft("rejection_sft", chats, rj.sft, rj, 5)

    def _non_reasoning(self, n_reasoning: int) -> list[list[dict]]:
        """Non-reasoning chats to add to ``n_reasoning`` reasoning ones (``rejection.non_reasoning``)."""
        rj = self.cfg.rejection
        n_extra = round(n_reasoning * rj.non_reasoning_fraction / max(1e-9, 1 - rj.non_reasoning_fraction))
        if rj.non_reasoning == "builtin":
            return builtin_non_reasoning(n_extra, self.cfg.run.seed)
        return load_chat_jsonl(rj.non_reasoning) if rj.non_reasoning else []

    def stage_all_rl(self) -> None:
        """(4) GRPO for all scenarios from the rejection-SFT model."""
        self._grpo("all_rl", self.cfg.all_rl, "rejection_sft", 4)

    def _sampler(self, model_path, sc: RejectionSamplingConfig) -> LocalSampler:
        return LocalSampler(self.policy(model_path), sc.batch_size, {"checkpoint": str(model_path)})

    def _index(self, sc: RejectionSamplingConfig):
        """The decontamination index (built once per pipeline), or None when ``sc.decontaminate`` is off."""
        if not sc.decontaminate:
            return None
        if self.eval_index is None:
            self.eval_index = decontamination_index(sc, self.task, self.cfg.task.data_dir)
        return self.eval_index

    def mark_final(self) -> None:
        """Point ``checkpoints/latest`` at the last finished R1 stage's model, so that ``--model RUN_DIR``
        (eval, chat, serve, distill) loads the R1 model."""
        done = [s for s in STAGES[2:] if self.done(s)]
        if done:
            target = resolve_model_dir(self.path / done[-1])
            rel = os.path.relpath(target, self.run.checkpoints_path)
            atomic_write_text(self.run.checkpoints_path / "latest", rel + "\n")

    # -- driver -------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        """Whether ``stage`` has finished (a finished stage is skipped)."""
        if stage == "base":
            return self.evaluation("base") is not None and bool(self.cfg.model.path or (self.path / "base").exists())
        if stage == "zero":
            return not self.cfg.compare_zero or (self.path / "zero" / "summary.json").exists()
        return (self.path / stage / "summary.json").exists()

    def reset_from(self, stage: str) -> None:
        """Delete the outputs of ``stage`` and of every stage after it (``--from``)."""
        for s in STAGES[STAGES.index(stage):]:
            for name in _OUTPUTS[s] + ((("cold_start_data.jsonl", "cold_start_counts.json") if s == "cold_start" else ())):
                if (self.path / name).exists():
                    remove_path(self.path / name)

    def run_stages(self, until: str | None = None) -> None:
        """Run every stage not yet done, in order, up to ``until``; log each one's held-out numbers."""
        times = StageTimes(self.path / "stage_seconds.json")
        for stage in STAGES:
            if not self.done(stage):
                log(f"stage {stage}: {STAGE_TITLES[stage]}")
                times.timed(stage, getattr(self, f"stage_{stage}"))
            e = self.evaluation(stage)
            if e:
                log(f"after {stage}: pass@1 {e['pass@1']:.3f}  well-formed {e['well_formed']:.3f}  "
                    f"thinking {e['thinking']:.3f}  mean length {e['mean_length']:.1f}")
            if until and stage == until:
                break


def run_r1(cfg: R1Config, out: str | None = None, resume: bool = False, from_stage: str | None = None,
           until: str | None = None, command: str = "nanoseek r1") -> Path:
    """Run (or resume, or redo from ``from_stage``) the R1 recipe; return the run directory. Raises
    ``NanoseekError`` for an unknown stage, or ``from_stage`` without ``resume``."""
    for s in (from_stage, until):
        if s is not None and s not in STAGES:
            raise NanoseekError(f"unknown stage {s!r}; stages: {', '.join(STAGES)}")
    if from_stage and not resume:
        raise NanoseekError("--from STAGE redoes a stage of an existing run: give --resume RUN_DIR")
    if resume and out and not from_stage and RunDir(out).summary_path.exists():
        pipe = R1Pipeline(cfg, RunDir(out), command)
        wanted = STAGES[: STAGES.index(until) + 1] if until else STAGES
        if all(pipe.done(s) for s in wanted):
            return finished_run(pipe.run, recipe_dict(cfg), f"stages {wanted[0]} to {wanted[-1]} done")
    use_threads(cfg.run.threads)
    t0 = time.time()
    run = create_run(cfg, out, resume)
    pipe = R1Pipeline(cfg, run, run.record_command(command)[0])  # the report shows the command that started it
    if from_stage:
        pipe.reset_from(from_stage)
    pipe.run_stages(until)
    pipe.mark_final()
    summary = write_r1_report(pipe, wall=time.time() - t0)
    f, z = summary.get("final"), summary.get("zero")
    if f and z:
        log(f"R1 pass@1 {f['pass@1']:.3f} (well-formed {f['well_formed']:.3f}) vs R1-Zero {z['pass@1']:.3f}")
    log(f"report: {run.report_path}")
    return run.path
