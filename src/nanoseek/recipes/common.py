"""What every recipe does the same way: seeding, the task, the run directory, loading a policy or
building a fresh model, the held-out evaluation, and the wall-time bookkeeping of resumable runs.

Held-out evaluation is DeepSeek-R1's (sec. 3): pass@1 averaged over ``[eval] samples`` completions per
problem of the task's ``test`` split, at the ``[eval]`` temperature and top-p
(``nanoseek.evaluation.evaluate``).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from nanoseek.atomic import atomic_write_json
from nanoseek.evaluation.evaluate import EvalConfig, eval_metrics_record, evaluate_policy, results_as_dicts
from nanoseek.model.config import ModelConfig
from nanoseek.model.load import load_model, resolve_model_dir
from nanoseek.model.transformer import DeepseekV3ForCausalLM
from nanoseek.policy.policy import Policy
from nanoseek.progress import Progress
from nanoseek.recipes.config import TaskConfig, recipe_dict
from nanoseek.runs.rundir import RunDir, default_path
from nanoseek.tasks import get_task
from nanoseek.tokenizer import load_tokenizer


# ------------------------------------------------------------------------------------ basics
def log(msg: str) -> None:
    """Print a ``[nanoseek]`` progress line (flushed, so it interleaves with the progress bars)."""
    print(f"[nanoseek] {msg}", flush=True)


def read_json(path: Path):
    """The JSON document at ``path``, or None when there is no such file (a stage not yet run)."""
    return json.loads(path.read_text()) if path.exists() else None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def use_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; 0 keeps torch's default."""
    if threads:
        torch.set_num_threads(threads)


def load_task(cfg: TaskConfig):
    """The task ``[task]`` names, with its data directory and options. Raises ``NanoseekError`` for an
    unknown task or missing data."""
    return get_task(cfg.name, data_dir=cfg.data_dir, **cfg.options)


def create_run(cfg, out: str | None, resume: bool) -> RunDir:
    """The run directory of recipe config ``cfg``: ``out`` (else ``runs/<run.name>-<time>``), created
    with ``cfg`` as its config.toml, or continued with ``resume``; its path is logged."""
    run = RunDir.create(Path(out) if out else default_path(cfg.run.name), recipe_dict(cfg), resume=resume)
    log(f"run directory: {run.path}")
    return run


# ------------------------------------------------------------------------------------ models
def load_model_and_tokenizer(path: str | Path) -> tuple:
    """``(model, tokenizer)`` of the model at ``path`` (run directory, checkpoint, Hugging Face folder
    or short name; ``model.load.load_model``). Raises ``NanoseekError`` when ``path`` is not a model."""
    folder = resolve_model_dir(path)
    return load_model(folder), load_tokenizer(folder)


def load_policy(path: str | Path, system_prompt: str | None = None) -> Policy:
    """A ``Policy`` for the model at ``path`` (see ``load_model_and_tokenizer``) asked with ``system_prompt``."""
    return Policy(*load_model_and_tokenizer(path), system_prompt)


def fresh_model(fields: dict, tokenizer) -> DeepseekV3ForCausalLM:
    """A freshly initialised DeepSeek-V3-style model with ``ModelConfig`` ``fields`` (a ``[model]``
    table), its vocabulary size (unless given) and special token ids taken from ``tokenizer``.
    Initialisation draws from torch's global generator: seed first."""
    config = ModelConfig.from_dict({**fields, "vocab_size": fields.get("vocab_size", len(tokenizer)),
                                    "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                    "pad_token_id": tokenizer.pad_token_id})
    return DeepseekV3ForCausalLM(config)


def n_params(model) -> int:
    """The number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------ held-out evaluation
def held_out_examples(task, limit: int):
    """The held-out split used for evaluation (``test``), first ``limit`` problems (0: all)."""
    examples = task.examples("test")
    return examples[:limit] if limit else examples


def run_eval(policy: Policy, task, eval_cfg: EvalConfig, desc: str) -> tuple[dict, list]:
    """Evaluate ``policy`` on ``task``'s held-out split with the ``[eval]`` settings, behind a progress
    bar named ``desc``. Returns ``(metrics, results)`` of ``evaluate_policy``."""
    examples = held_out_examples(task, eval_cfg.limit)
    e = eval_cfg
    bar = Progress(len(examples) * e.samples, desc, unit="sample")
    metrics, results = evaluate_policy(policy, task, examples, samples=e.samples, temperature=e.temperature,
                                       top_p=e.top_p, max_new_tokens=e.max_new_tokens, seed=e.seed,
                                       batch_size=e.batch_size, progress=bar)
    bar.close()
    return metrics, results


def first_samples(results: list, samples: int, problems: int = 4) -> list[dict]:
    """The first completion of each of the first ``problems`` problems (results hold ``samples`` per
    problem, in order), as plain dicts: what a report shows."""
    return results_as_dicts(results[: problems * samples: samples])


def stored_eval(path: Path, run: RunDir, policy: Policy, task, eval_cfg: EvalConfig, desc: str) -> dict:
    """``{"metrics", "samples"}`` of the evaluation stored at ``path``; when there is none yet, evaluate
    now, store it (so a resumed run does not evaluate twice) and log it at step 0."""
    if path.exists():
        return json.loads(path.read_text())
    m, res = run_eval(policy, task, eval_cfg, desc)
    stored = {"metrics": m, "samples": first_samples(res, eval_cfg.samples)}
    atomic_write_json(path, stored)
    run.log_metrics({"step": 0, **eval_metrics_record(m)})
    return stored


def report_sample(s: dict) -> dict:
    """A stored evaluation sample as ``runs.report.write_report`` shows it (reward: correct or not)."""
    return {"prompt": s["prompt"], "completion": s["completion"], "reward": float(s["correct"]), "answer": s["answer"]}


# ------------------------------------------------------------------------------- wall time
class WallClock:
    """The wall time of a resumable run: this call's seconds plus those earlier calls stored in
    ``path`` (``wall.json``), so that a run killed and resumed still reports its whole wall time."""

    def __init__(self, path: Path, start: float | None = None):
        self.path = path
        self.start = time.time() if start is None else start  # this call's start (time.time())
        self.prior = read_json(path)["seconds"] if path.exists() else 0.0

    @property
    def origin(self) -> float:
        """The ``time.time()`` at which the run would have started had it never stopped."""
        return self.start - self.prior

    def seconds(self) -> float:
        """Wall seconds of the whole run so far."""
        return time.time() - self.start + self.prior

    def save(self) -> float:
        """Store the seconds so far in ``path`` and return them."""
        seconds = self.seconds()
        atomic_write_json(self.path, {"seconds": seconds})
        return seconds


class StageTimes:
    """Wall seconds spent in each stage of a multi-stage run, summed over resumed calls and stored in
    ``path`` (``stage_seconds.json``) after every stage."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = read_json(path) or {}

    def timed(self, stage: str, fn):
        """Call ``fn()``, add its wall time (rounded to 0.1 s) to ``stage``, store; return its result."""
        t0 = time.time()
        result = fn()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.time() - t0, 1)
        atomic_write_json(self.path, self.seconds)
        return result
