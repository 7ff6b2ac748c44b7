"""``nanoseek eval`` end to end: sample every (problem, sample) pair, grade, resume, write results.

One evaluation is: a sampler (a local model, ``LocalSampler``, or an OpenAI-compatible endpoint,
``EndpointSampler``), one or more tasks (their ``test`` split, first ``limit`` problems), ``samples``
completions per problem at ``temperature``/``top_p`` within ``max_tokens``, each seeded by
``evaluate.completion_seed(seed, problem, sample)``. Defaults follow DeepSeek-R1's evaluation (R1 paper
v1 sec. 3; R1 README "Usage Recommendations"): temperature 0.6, top-p 0.95, no system prompt, and
for math tasks the user turn ends with "Please reason step by step, and put your final answer
within \\boxed{}.". A checkpoint trained with the R1-Zero template (its chat template asks for
``<answer>`` tags, as nanoseek's own tokenizer does) is evaluated with that template, the system
prompt recorded in its run's config and no extra instruction, exactly as ``nanoseek zero``
evaluates it, so the two agree sample for sample. Deviation: ``max_tokens`` defaults to 4,096
(DeepSeek-R1 used 32,768) so that small models on a CPU finish.

The output directory (``nanoseek.evaluation.store.EvalDir``) keeps ``settings.json``, ``samples.jsonl`` (appended
as samples finish), ``results.json`` and ``results.md``. A rerun with the same settings reuses every
finished sample; failed requests are retried on a rerun.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nanoseek.config import range_problem
from nanoseek.errors import NanoseekError
from nanoseek.evaluation import behaviour
from nanoseek.evaluation.endpoint import ChatRequest, EndpointConfig, run_requests
from nanoseek.evaluation.evaluate import (GradedSample, completion_seed, generate_results, grade_completions,
                                          split_think_block, summarize)
from nanoseek.evaluation.metrics import breakdown, cross_table
from nanoseek.evaluation.store import EvalDir, record_of, result_of
from nanoseek.model.load import resolve_model_dir
from nanoseek.policy.generate import torch_threads
from nanoseek.policy.policy import load_policy
from nanoseek.progress import Progress
from nanoseek.rewards import grading
from nanoseek.runs.rundir import RunDir, default_path
from nanoseek.tasks import get_task
from nanoseek.tasks.base import R1_MATH_INSTRUCTION
from nanoseek.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, R1_ZERO_CHAT_TEMPLATE, THINK_CLOSE, THINK_OPEN

MATH_ANSWER_TYPES = ("math", "number")


@dataclass
class EvalSettings:
    """Everything ``nanoseek eval`` was asked to do (the CLI flags, DeepSeek-R1 defaults)."""

    model: str | None = None
    endpoint: str | None = None
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    samples: int = 4
    temperature: float = 0.6  # R1 paper v1 sec. 3
    top_p: float = 0.95  # R1 paper v1 sec. 3
    max_tokens: int = 4096  # R1 used 32,768; see the module docstring
    concurrency: int | None = None  # endpoint: requests in flight (16); local: batch size (256)
    seed: int = 1234  # = EvalConfig.seed, so a zero run's evaluation is reproduced by default
    out: str | None = None
    instruction: str = "auto"  # "auto", "none" or the text to append to every question
    api_key: str | None = None
    data_dir: str | None = None
    timeout: float = 600.0
    retries: int = 6
    threads: int | None = None  # torch threads of a local model; None: the run's run.threads, 0: torch's default
    task_options: dict = field(default_factory=dict)  # --task-option KEY=VALUE: over the run's recorded options

    def __post_init__(self):
        if not self.model:
            raise NanoseekError("give --model (a local model), or --endpoint URL with --model NAME (the remote model)")
        for key, rule in _SETTING_RANGES.items():  # named by their flags: settings come from nanoseek eval's
            value = getattr(self, key)
            if value is not None and (problem := range_problem(value, rule)) is not None:
                raise NanoseekError(f"--{key.replace('_', '-')} must be {problem}, got {value!r}")


_SETTING_RANGES = {"samples": ">= 1", "limit": ">= 1", "max_tokens": ">= 1", "temperature": ">= 0", "top_p": "(0, 1]",
                   "concurrency": ">= 1", "seed": ">= 0", "timeout": "> 0", "retries": ">= 0", "threads": ">= 0"}


def user_message(question: str, task, style: str, instruction: str = "auto") -> str:
    """The user turn for one problem: the question, plus the R1 math instruction when ``auto`` and
    the task is a math task asked in the R1 chat style (R1 README: "Please reason step by step, and
    put your final answer within \\boxed{}."); ``none`` adds nothing; any other text is appended."""
    if instruction == "none":
        return question
    if instruction == "auto":
        if style == "r1" and task.answer_type in MATH_ANSWER_TYPES:
            return f"{question.strip()}\n{R1_MATH_INSTRUCTION}"
        return question
    return f"{question.strip()}\n{instruction}"


# ------------------------------------------------------------------------------------ samplers


def template_style(tokenizer, system_prompt: str | None = None) -> str:
    """"r1_zero" when the tokenizer's chat template (or the recorded system prompt) is the R1-Zero
    one (answers in ``<answer>`` tags, nanoseek's own tokenizer), else "r1" (``\\boxed{}``)."""
    tpl = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(tpl, str):
        tpl = str(tpl)
    if tpl == R1_ZERO_CHAT_TEMPLATE or "<answer>" in tpl or "<answer>" in (system_prompt or ""):
        return "r1_zero"
    return "r1"


class LocalSampler:
    """Samples a local ``Policy`` in batches of ``batch_size`` (``evaluate.generate_results``) with
    ``threads`` torch threads (0: whatever torch uses; the count is restored afterwards)."""

    kind = "local"

    def __init__(self, policy, batch_size: int = 256, identity: dict | None = None, threads: int = 0):
        self.policy = policy
        self.batch_size = batch_size
        self.threads = threads
        self.identity = {"kind": "local", **(identity or {})}
        self.style = template_style(policy.tokenizer, policy.system_prompt)
        self.system_prompt = policy.system_prompt

    def sample(self, task, examples, questions, rows, settings: EvalSettings, on_batch) -> None:
        """Sample and grade ``rows`` ((problem, sample) pairs), calling ``on_batch`` per batch."""
        with torch_threads(self.threads or None):
            for batch in generate_results(self.policy, task, examples, rows, questions=questions,
                                          temperature=settings.temperature, top_p=settings.top_p,
                                          max_new_tokens=settings.max_tokens, seed=settings.seed,
                                          batch_size=self.batch_size, style=self.style):
                on_batch(batch)


class EndpointSampler:
    """Samples an OpenAI-compatible endpoint (``nanoseek.evaluation.endpoint``): one request per sample,
    no system prompt, the answer read from ``content`` (``endpoint_completion``), ``reasoning_content`` kept."""

    kind = "endpoint"
    style = "r1"
    system_prompt = None

    def __init__(self, config):
        self.config = config
        self.identity = {"kind": "endpoint", "endpoint": config.base_url, "model": config.model}

    def sample(self, task, examples, questions, rows, settings: EvalSettings, on_batch) -> None:
        """One request per row ((problem, sample) pair), graded as it returns and passed to
        ``on_batch`` as a batch of one."""
        reqs = [ChatRequest([{"role": "user", "content": questions[i]}], settings.temperature, settings.top_p,
                            settings.max_tokens, completion_seed(settings.seed, i, j)) for i, j in rows]

        def on_reply(k: int, reply) -> None:
            i, j = rows[k]
            on_batch([self.grade(task, examples[i], questions[i], i, j, reply)])

        run_requests(self.config, reqs, on_reply, seed=settings.seed)

    def grade(self, task, example, question: str, i: int, j: int, reply) -> GradedSample:
        """A ``GradedSample`` from one reply; a failed request is a wrong sample with ``error`` set."""
        length = reply.completion_tokens if reply.completion_tokens is not None else -1
        if reply.error is not None:
            return GradedSample(i, j, example.id, question, example.answer, "", None, False, False, False, 0,
                                "error", None, reply.error)
        text = endpoint_completion(reply.content, reply.reasoning)
        g = grade_completions(task, [example], [text], False, self.style)[0]
        reasoning = reply.reasoning if reply.reasoning is not None else split_think_block(text, False)[0]
        return GradedSample(i, j, example.id, question, example.answer, text, g["extracted"], g["correct"],
                            g["well_formed"], g["thinking"], length, reply.finish_reason, reasoning)


def endpoint_completion(content: str, reasoning: str | None) -> str:
    """The completion text an endpoint's reply is graded as.

    An endpoint that separates the reasoning (``reasoning_content`` present, as DeepSeek's API and
    ``nanoseek serve`` do) returns the answer *as* ``content``: the think block is gone and, for an
    R1-Zero model, so are the ``<answer>`` tags (``"72"``). Such a content is the answer: it is put
    back in answer tags, unless it marks its answer itself (``\\boxed{}``, ``####``, "final answer:",
    answer tags), in which case that mark decides, as it would locally. No content means the think
    block never closed (cut off while thinking): no answer, as for the same local completion. An
    endpoint that does not separate the reasoning returns the whole completion in ``content``.
    """
    if reasoning is None:
        return content
    if not content.strip():
        return f"{THINK_OPEN}{reasoning}"
    if grading.extract_answer(content) is None:
        content = f"{ANSWER_OPEN}{content}{ANSWER_CLOSE}"
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content}"


def recorded_run_config(model_arg: str, folder: Path) -> dict:
    """The config of the nanoseek run a model comes from (``{}`` when it is not from a run): the
    run directory itself, or the run above ``RUN/checkpoints/step-N/`` or ``RUN/base/``."""
    folder = Path(folder)
    candidates = [Path(model_arg), folder.parent.parent, folder.parent]
    for p in candidates:
        if (p / "config.toml").is_file() or ((p / "checkpoints").is_dir() and (p / "config.json").is_file()):
            try:
                return RunDir(p).read_config()
            except NanoseekError:
                return {}
    return {}


def model_run_config(settings: EvalSettings) -> dict:
    """The recorded run config of a local ``--model`` (``{}`` for an endpoint or a plain folder)."""
    if settings.endpoint:
        return {}
    return recorded_run_config(settings.model, Path(resolve_model_dir(settings.model)))


def local_sampler(model_arg: str, batch_size: int, run_cfg: dict, threads: int | None = None) -> LocalSampler:
    """Load ``--model`` (run directory, checkpoint, Hugging Face folder or short name) as a
    ``LocalSampler`` with the system prompt its run recorded (none by default) and ``threads``
    torch threads (None: the run's ``run.threads``, as training used; 0 or no run: torch's default)."""
    folder = Path(resolve_model_dir(model_arg))
    system = (run_cfg.get("task") or {}).get("system_prompt")
    policy = load_policy(folder, system)
    identity = {"checkpoint": str(folder.resolve())}  # not the --model text: runs/x and runs/x/ are one model
    if threads is None:
        threads = int((run_cfg.get("run") or {}).get("threads") or 0)
    return LocalSampler(policy, batch_size, identity, threads)


def sampler_from_settings(settings: EvalSettings, run_cfg: dict) -> LocalSampler | EndpointSampler:
    """The sampler ``nanoseek eval``'s settings ask for: an ``EndpointSampler`` for ``--endpoint``,
    else a ``LocalSampler`` of ``--model`` (``run_cfg``: its run's recorded config)."""
    if settings.endpoint:
        cfg = EndpointConfig(settings.endpoint, settings.model or "", settings.api_key,
                             concurrency=settings.concurrency or 16, timeout=settings.timeout,
                             max_retries=settings.retries)
        return EndpointSampler(cfg)
    return local_sampler(settings.model, settings.concurrency or 256, run_cfg, settings.threads)


def fingerprint(settings: EvalSettings, sampler) -> dict:
    """The settings that decide what each sample is; a rerun in the same --out must match them.

    Tasks, ``limit``, ``samples`` and ``concurrency`` are not part of it: samples are keyed by
    (task, problem, sample index) and seeded independently, so those may change between runs.
    """
    return {**sampler.identity, "system_prompt": sampler.system_prompt, "instruction": settings.instruction,
            "temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens,
            "seed": settings.seed}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.rstrip("/").split("/")[-1] or "model").strip("-") or "model"


# ------------------------------------------------------------------------------------ the run


def _load_tasks(settings: EvalSettings, run_cfg: dict) -> list:
    recorded = run_cfg.get("task") or {}
    names = settings.tasks or ([recorded["name"]] if recorded.get("name") else [])
    if not names:
        raise NanoseekError("give --task (a task name such as gsm8k or math500, or a .jsonl file)")
    tasks = []
    for name in names:
        if recorded.get("name") == name:  # the run's own task: same options and data as in training
            task = get_task(name, data_dir=settings.data_dir or recorded.get("data_dir"),
                            **{**(recorded.get("options") or {}), **settings.task_options})
        else:
            task = get_task(name, data_dir=settings.data_dir, **settings.task_options)
        tasks.append(task)
    keys = [t.name for t in tasks]
    if len(set(keys)) != len(keys):
        raise NanoseekError(f"two --task values have the same name: {', '.join(keys)}")
    return tasks


def run_evaluation(settings: EvalSettings, sampler=None, run_cfg: dict | None = None, command: str = "nanoseek eval",
                   log=print) -> dict:
    """Evaluate ``settings.tasks`` with ``sampler`` (built from the settings when ``None``) into
    ``settings.out``; return ``{task: metrics}`` (also written to results.json / results.md)."""
    if run_cfg is None:
        run_cfg = model_run_config(settings) if sampler is None else {}
    tasks = _load_tasks(settings, run_cfg)  # before loading a model: a bad --task fails at once
    if sampler is None:
        sampler = sampler_from_settings(settings, run_cfg)
    out = Path(settings.out) if settings.out else default_out(settings)
    store = EvalDir.open(out, fingerprint(settings, sampler), command)
    log(f"[nanoseek] evaluating into {out}")
    done = store.load_samples()
    all_metrics: dict[str, dict] = {}
    for task in tasks:
        examples = task.examples("test")
        examples = examples[: settings.limit] if settings.limit else examples
        questions = [user_message(e.prompt, task, sampler.style, settings.instruction) for e in examples]
        have: dict[tuple[int, int], GradedSample] = {}
        for i, e in enumerate(examples):
            for j in range(settings.samples):
                rec = done.get((task.name, i, j))
                if rec and rec.get("error") is None and rec.get("id") == e.id and rec.get("prompt") == questions[i]:
                    have[(i, j)] = result_of(rec)
        rows = [(i, j) for i in range(len(examples)) for j in range(settings.samples) if (i, j) not in have]
        if have:
            log(f"[nanoseek] {task.name}: reusing {len(have)} finished samples, {len(rows)} to go")
        t0 = time.time()
        bar = Progress(len(rows), f"eval {task.name}", unit="sample")
        counts = {"correct": sum(r.correct for r in have.values()), "failed": 0}

        def on_batch(batch: list[GradedSample]) -> None:
            store.append([record_of(task.name, r) for r in batch])
            for r in batch:
                have[(r.problem, r.sample)] = r
            counts["correct"] += sum(r.correct for r in batch)
            counts["failed"] += sum(r.error is not None for r in batch)
            bar.update(len(batch), acc=counts["correct"] / max(1, len(have)), failed=counts["failed"] or None)

        try:
            if rows:
                sampler.sample(task, examples, questions, rows, settings, on_batch)
        finally:
            bar.close()
        results = [have[(i, j)] for i in range(len(examples)) for j in range(settings.samples) if (i, j) in have]
        all_metrics[task.name] = task_metrics(results, examples, task)
        all_metrics[task.name]["wall_seconds"] = round(time.time() - t0, 1)
        store.write_results(all_metrics, settings_view(settings, sampler))
    for name, m in all_metrics.items():
        if m["failed"]:
            errors = ", ".join(f"{k}: {v}" for k, v in m["errors"].items())
            print(f"[nanoseek] {name}: {m['failed']} of {m['n'] * m['samples']} requests failed ({errors}); "
                  "they count as wrong answers; rerun the same command to retry them", file=sys.stderr)
    return all_metrics


def task_metrics(results: list[GradedSample], examples, task=None) -> dict:
    """``summarize`` plus failures by kind and, when the examples carry them (MATH), pass@1 by
    subject, by level, and by subject x level; for a task with reflection or notation detectors
    (search), what ``behaviour`` measures, also per level, as ``nanoseek zero`` reports it."""
    m = summarize(results, len(examples), equivalent=behaviour.answer_equivalence(task))
    m["errors"] = dict(Counter(r.error.split(":", 1)[0] for r in results if r.error is not None))
    per_problem: dict[int, list[bool]] = {}
    for r in results:
        per_problem.setdefault(r.problem, []).append(r.correct)
    scores = [sum(per_problem.get(i, [])) / max(1, len(per_problem.get(i, []))) for i in range(len(examples))]
    meta = [e.metadata for e in examples]
    parts = breakdown(scores, meta, ("subject", "level"))
    if parts:
        m["by_subject"] = parts.get("subject", {})
        m["by_level"] = parts.get("level", {})
        rows, cols, cells = cross_table(scores, meta)
        if cells:
            m["by_subject_level"] = {r: {c: {"pass@1": cells[(r, c)][0], "n": cells[(r, c)][1]}
                                         for c in cols if (r, c) in cells} for r in rows}
    if behaviour.has_detectors(task):
        m.update(behaviour.behaviour_metrics(task, examples, results))
    return m


def settings_view(settings: EvalSettings, sampler) -> dict:
    """What results.md shows about how the numbers were made."""
    view = {k: v for k, v in asdict(settings).items() if k not in ("api_key", "out", "data_dir", "threads")}
    view["style"] = sampler.style
    if sampler.kind == "local":
        view["threads"] = sampler.threads or "torch default"
    view["model"] = settings.model
    return view


def default_out(settings: EvalSettings) -> Path:
    """``evals/eval-<model>-<time>``: where an evaluation goes without ``--out``."""
    return default_path(f"eval-{_slug(settings.model or 'model')}", root="evals")
