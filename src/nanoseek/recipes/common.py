"""What every recipe does the same way: seeding, the task, the run directory, loading a policy or
building a fresh model, the held-out evaluation, and the wall-time bookkeeping of resumable runs.

Held-out evaluation is DeepSeek-R1's (sec. 3): pass@1 averaged over ``[eval] samples`` completions per
problem of the task's ``test`` split, at the ``[eval]`` temperature and top-p
(``nanoseek.evaluation.evaluate``).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import torch

from nanoseek.atomic import atomic_write_json
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig, eval_metrics_record, evaluate_policy, results_as_dicts
from nanoseek.model.config import ModelConfig
from nanoseek.model.transformer import DeepseekV3ForCausalLM
from nanoseek.policy.policy import Policy, load_model_and_tokenizer, load_policy  # noqa: F401 (the recipes' loader)
from nanoseek.progress import Progress
from nanoseek.recipes.config import TaskConfig, recipe_dict
from nanoseek.runs.plain import drop_none, to_jsonable
from nanoseek.runs.rundir import RunDir, default_path
from nanoseek.tasks import get_task


# ------------------------------------------------------------------------------------ basics
def log(msg: str) -> None:
    """Print a ``[nanoseek]`` progress line (flushed, so it interleaves with the progress bars)."""
    print(f"[nanoseek] {msg}", flush=True)


def read_json(path: Path):
    """The JSON document at ``path``, or None when there is no such file (a stage not yet run).
    Raises a one-line ``NanoseekError`` naming the file when it is not JSON."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NanoseekError(f"cannot read {path}: {type(e).__name__}: {e}") from None


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


def is_eval_record(record: dict) -> bool:
    """Whether a ``metrics.jsonl`` record is a held-out evaluation alone (``step`` and ``eval/*`` keys
    only): the base and final evaluations, not a training step that also evaluated."""
    keys = set(record) - {"step"}
    return bool(keys) and all(k.startswith("eval/") for k in keys)


def stored_eval(path: Path, run: RunDir, policy: Policy, task, eval_cfg: EvalConfig, desc: str) -> dict:
    """``{"metrics", "samples"}`` of the evaluation stored at ``path``; when there is none yet (or it
    is unreadable, which is said), evaluate now, log it at step 0 and store it, in that order, so
    that a run killed in between logs it once: a resumed run evaluates again and its line takes the
    place of the earlier one (``RunDir.put_metrics``)."""
    try:
        stored = read_json(path)
    except NanoseekError as e:
        log(f"{e}; evaluating again")
        stored = None
    if isinstance(stored, dict) and isinstance(stored.get("metrics"), dict):
        return stored
    m, res = run_eval(policy, task, eval_cfg, desc)
    stored = {"metrics": m, "samples": first_samples(res, eval_cfg.samples)}
    run.put_metrics({"step": 0, **eval_metrics_record(m)}, lambda r: r.get("step") == 0 and is_eval_record(r))
    atomic_write_json(path, stored)
    return stored


def _differences(a, b, prefix: str = "") -> list[str]:
    """The dotted keys at which the nested dicts ``a`` and ``b`` differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "(all)"]
    out = []
    for k in sorted(set(a) | set(b), key=str):
        out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
    return out


def finished_run(run: RunDir, config: dict, what: str) -> Path:
    """Answer a ``--resume`` of a complete run (``what`` says what it did) without changing anything:
    log that it is complete and return its path. Raises ``NanoseekError`` when ``config`` (the
    resumed config with this call's overrides) differs from the stored one, naming the keys: a
    complete run is never redone or changed in place."""
    diff = _differences(drop_none(to_jsonable(config)), drop_none(run.read_config()))
    if diff:
        raise NanoseekError(f"{run.path} is a complete run ({what}); this call changes {', '.join(diff[:6])}: "
                            "start a new run with --out instead (a complete run is never changed)")
    log(f"{run.path} is already complete ({what}); nothing to do. Report: {run.report_path}")
    return run.path


def report_sample(s: dict) -> dict:
    """A stored evaluation sample as ``runs.report.write_report`` shows it (reward: correct or not)."""
    return {"prompt": s["prompt"], "completion": s["completion"], "reward": float(s["correct"]), "answer": s["answer"]}


# ------------------------------------------------------------------------------- wall time
class Heartbeat:
    """Calls ``beat()`` every ``every`` seconds on a daemon thread between ``start()`` and ``stop()``:
    what a process killed at any moment has written of its wall time is at most that old."""

    def __init__(self, beat, every: float = 1.0):
        self.beat, self.every = beat, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating (a no-op when already started)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="nanoseek-wall-clock", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.beat()

    def stop(self) -> None:
        """Stop beating and wait for the thread (a no-op when not started)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class WallClock:
    """The wall time of a resumable run: this call's seconds plus those earlier calls stored in
    ``path`` (``wall.json``), so that a run killed and resumed still reports its whole wall time.
    Between ``start()`` and ``stop()`` the seconds are stored every second (``Heartbeat``), so a
    SIGKILL loses at most one second of them."""

    def __init__(self, path: Path, start: float | None = None):
        self.path = path
        self.start_time = time.time() if start is None else start  # this call's start (time.time())
        try:
            stored = read_json(path) or {"seconds": 0.0}
        except NanoseekError as e:
            log(f"{e}; the time of earlier calls is not counted")
            stored = {"seconds": 0.0}
        self.prior = float(stored.get("seconds", 0.0)) if isinstance(stored, dict) else 0.0
        self._lock = threading.Lock()  # the heartbeat and the caller write wall.json in turn
        self._heartbeat = Heartbeat(self.save)

    def start(self) -> None:
        """Store the seconds every second from now on (on a daemon thread)."""
        self._heartbeat.start()

    def stop(self) -> None:
        """Stop storing them every second (``save`` still stores them)."""
        self._heartbeat.stop()

    @property
    def origin(self) -> float:
        """The ``time.time()`` at which the run would have started had it never stopped."""
        return self.start_time - self.prior

    def seconds(self) -> float:
        """Wall seconds of the whole run so far."""
        return time.time() - self.start_time + self.prior

    def save(self) -> float:
        """Store the seconds so far in ``path`` and return them."""
        with self._lock:
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
        """Call ``fn()``, add its wall time (rounded to 0.1 s) to ``stage``, store; return its result.
        While ``fn`` runs the stage's seconds so far are stored every second, so a run killed
        mid-stage keeps them."""
        t0, before = time.time(), self.seconds.get(stage, 0.0)
        lock = threading.Lock()

        def store() -> None:
            with lock:
                self.seconds[stage] = round(before + time.time() - t0, 1)
                atomic_write_json(self.path, self.seconds)

        beat = Heartbeat(store)
        beat.start()
        try:
            result = fn()
        finally:
            beat.stop()
        store()
        return result
