"""SIGKILL at random moments, then resume: does a killed `nanoseek zero` end as if never stopped?

One uninterrupted run of a tiny ``nanoseek zero`` (``--set`` below) is the reference. Each trial
starts the same run, kills it with SIGKILL, resumes it with ``--resume`` (killing the resumed run
again in some trials), and resumes until it finishes. Kills land either at a random moment (a
uniform delay after the process's first log line, over the duration of a whole run measured last:
the reference's, then each trial's, as the machine's load changes) or just before the
k-th rename of a checkpoint write (``step-N``, ``pretrain_checkpoint``, ``base``, or the
``checkpoints/latest`` marker; k random), i.e. with the checkpoint's files written under their
temporary name. The trial's run is then compared with the reference:

* weights: the final checkpoint's tensors, optimizer state and RNG states bit for bit;
* metrics: ``metrics.jsonl`` equal apart from timing fields (names with time, per_s or wall);
* samples: ``samples.jsonl`` equal apart from timing fields;
* temporaries: no ``.tmp-*`` file or folder anywhere in the run directory;
* wall time: ``summary.json``'s ``wall_seconds`` against the seconds the processes ran after
  their first log line, up to the SIGKILL, and for the last one up to its final ``wall.json``
  write (the report is written after it); each SIGKILL may lose up to one second (the
  heartbeat's period).

    python bench/bench_resume_kill.py [--trials 10] [--seed 0] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

SETS = ["run.threads=1", "pretrain.steps=30", "pretrain.batch_size=16", "grpo.steps=6", "grpo.prompts_per_step=8",
        "grpo.group_size=4", "grpo.eval_every=3", "eval.limit=10", "eval.samples=2", "run.checkpoint_every=2"]
LIVE: list[subprocess.Popen] = []  # killed if the bench itself stops
TIMING = re.compile(r"time|per_s|wall")
TARGET = re.compile(r"^(step-\d+|base|pretrain_checkpoint|latest)$")

# Runs nanoseek; with KILL_AT_RENAME=k, SIGKILLs itself just before the k-th rename onto a checkpoint
# name (TARGET), i.e. while that checkpoint exists only under its temporary name. With COUNT_RENAMES
# set, writes how many such renames the run made to that file.
DRIVER = r'''
import os, re, signal, sys
k, count_to = int(os.environ.get("KILL_AT_RENAME", "0")), os.environ.get("COUNT_RENAMES")
target, seen, replace = re.compile(sys.argv[1]), [0], os.replace
def counting_replace(src, dst, *a, **kw):
    if target.match(os.path.basename(os.fspath(dst))):
        seen[0] += 1
        if seen[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *a, **kw)
os.replace = counting_replace
from nanoseek.cli.main import main
code = main(sys.argv[2:])
if count_to:
    open(count_to, "w").write(str(seen[0]))
sys.exit(code)
'''


class Proc:
    """One nanoseek process: its output read on a thread, the moment of its first log line noted."""

    def __init__(self, driver: Path, cwd: Path, args: list[str], kill_at_rename: int = 0, count_to: Path | None = None):
        env = {**os.environ, "NANOSEEK_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
               "KILL_AT_RENAME": str(kill_at_rename), **({"COUNT_RENAMES": str(count_to)} if count_to else {})}
        self.spawned = time.time()
        self.p = subprocess.Popen([sys.executable, str(driver), TARGET.pattern, *args], cwd=cwd, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        LIVE.append(self.p)
        self.first_line: float | None = None
        self.lines: list[str] = []
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            if self.first_line is None and line.startswith("[nanoseek]"):
                self.first_line = time.time()
                self.started.set()
            self.lines.append(line)
        self.started.set()

    def kill_after(self, delay: float) -> None:
        """SIGKILL ``delay`` seconds after the first log line (unless it has ended by then)."""
        self.started.wait()
        if self.first_line is not None and self.p.poll() is None:
            end = self.first_line + delay
            while self.p.poll() is None and time.time() < end:
                time.sleep(0.02)
            if self.p.poll() is None:
                self.p.send_signal(signal.SIGKILL)

    def wait(self) -> tuple[int, float]:
        """(return code, seconds run after the first log line)."""
        code = self.p.wait()
        ended = time.time()
        self.reader.join()
        LIVE.remove(self.p)
        return code, (ended - self.first_line) if self.first_line else 0.0


def counted_seconds(procs: list[tuple[int, float, float | None]], wall_json: Path) -> float:
    """The seconds a run's wall clock should hold: from each process's first log line to its end
    (its kill, or its exit), but not past the last ``wall.json`` write (the final one, after which
    the report is written; a process that found the run complete writes none).
    ``procs``: (code, seconds, time of the first log line)."""
    last = wall_json.stat().st_mtime if wall_json.exists() else float("inf")
    return sum(max(0.0, min(first + seconds, last) - first) for _, seconds, first in procs if first is not None)


def records(run: Path, name: str) -> list[dict]:
    path = run / name
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not TIMING.search(k)} for line in lines if line.strip()]


def same(a, b) -> bool:
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def final_state(run: Path, steps: int):
    ckpt = run / "checkpoints" / f"step-{steps}"
    if not (ckpt / "model.safetensors").exists():
        return None
    ts = ckpt / "trainer_state"
    return (load_file(str(ckpt / "model.safetensors")), torch.load(ts / "state.pt", weights_only=True),
            torch.load(ts / "rng.pt", weights_only=True))


def run_trial(i: int, rng: random.Random, driver: Path, work: Path, run_seconds: float, n_targets: int) -> dict:
    """Trial ``i``: start, kill (see the module docstring), resume until finished. ``run_seconds``: how long
    a whole run takes now (first log line to its end)."""
    run = work / f"trial-{i}"
    cmds = [["zero", "--out", str(run), *[a for s in SETS for a in ("--set", s)]]]
    resume = ["zero", "--resume", str(run)]
    kills = []
    by_rename = i % 2 == 0  # half the trials kill inside a checkpoint write
    plan = [("rename", rng.randint(1, n_targets)) if by_rename else ("time", rng.uniform(0.05, 0.9) * run_seconds)]
    if i % 3 == 1:  # kill the resumed run too
        plan.append(("time", rng.uniform(0.05, 0.5) * run_seconds))
    walls, procs, started = [], [], time.time()
    for kind, at in plan:
        args = cmds[0] if not kills else resume
        p = Proc(driver, work, args, kill_at_rename=at if kind == "rename" else 0)
        if kind == "time":
            p.kill_after(at)
        code, seconds = p.wait()
        walls.append(seconds)
        procs.append((code, seconds, p.first_line))
        kills.append({"kind": kind, "at": round(at, 2) if kind == "time" else at, "code": code})
        if code == 0:  # it finished before the kill came
            break
    resumes = 0
    while (kills[-1]["code"] != 0) and resumes < 3:
        p = Proc(driver, work, resume)
        code, seconds = p.wait()
        walls.append(seconds)
        procs.append((code, seconds, p.first_line))
        resumes += 1
        if code != 0:
            print("".join(p.lines[-20:]), file=sys.stderr)
        kills.append({"kind": "resume", "code": code})
    return {"trial": i, "run": str(run), "processes": kills, "seconds_run": [round(w, 1) for w in walls],
            "first_lines": [first for _, _, first in procs],
            "wall_counted": round(counted_seconds(procs, run / "wall.json"), 1),
            "trial_seconds": round(time.time() - started, 1)}


def compare(trial: dict, ref: Path, ref_state, steps: int) -> dict:
    run = Path(trial["run"])
    state = final_state(run, steps)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    temps = sorted(str(p.relative_to(run)) for p in run.rglob(".tmp-*"))
    kills = sum(1 for k in trial["processes"] if k["code"] == -signal.SIGKILL)
    expected = trial["wall_counted"]
    recorded = summary.get("wall_seconds")
    return {**trial,
            "weights_identical": state is not None and same(state[0], ref_state[0]),
            "optimizer_identical": state is not None and same(state[1], ref_state[1]),
            "rng_identical": state is not None and same(state[2], ref_state[2]),
            "metrics_identical": records(run, "metrics.jsonl") == records(ref, "metrics.jsonl"),
            "samples_identical": records(run, "samples.jsonl") == records(ref, "samples.jsonl"),
            "final_eval_identical": summary.get("final") == json.loads((ref / "summary.json").read_text())["final"],
            "temporaries_left": temps, "kills": kills, "wall_recorded": recorded, "wall_run": round(expected, 1),
            # each kill may lose up to the heartbeat's second; the log line comes a moment after the clock starts
            "wall_true": recorded is not None and expected - 1.0 * kills - 1.5 <= recorded <= expected + 1.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts and every trial's details here")
    ap.add_argument("--keep", help="keep the run directories in this folder (default: a temporary one, removed)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_resume_kill-"))
    work.mkdir(parents=True, exist_ok=True)
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    t0 = time.time()
    ref = work / "reference"
    p = Proc(driver, work, ["zero", "--out", str(ref), *[a for s in SETS for a in ("--set", s)]],
             count_to=work / "renames.txt")
    code, ref_seconds = p.wait()
    ref_counted = counted_seconds([(code, ref_seconds, p.first_line)], ref / "wall.json")
    if code != 0:
        sys.exit("the reference run failed:\n" + "".join(p.lines[-30:]))
    steps = json.loads((ref / "summary.json").read_text())["steps"]
    ref_state = final_state(ref, steps)
    n_targets = int((work / "renames.txt").read_text())  # pretrain_checkpoint, base, step-N, latest renames
    print(f"reference: {ref_seconds:.1f} s after its first log line ({ref_counted:.1f} s to its last wall.json); "
          f"wall_seconds {json.loads((ref / 'summary.json').read_text())['wall_seconds']}; {n_targets} checkpoint "
          "renames", flush=True)
    results, run_seconds = [], ref_seconds
    for i in range(args.trials):
        r = compare(run_trial(i, rng, driver, work, run_seconds, n_targets), ref, ref_state, steps)
        results.append(r)
        run_seconds = r["wall_counted"]  # about one whole run (plus what a kill made it redo), at today's load
        print(f"trial {i}: {[(k['kind'], k.get('at'), k['code']) for k in r['processes']]}  weights "
              f"{r['weights_identical']}  metrics {r['metrics_identical']}  temporaries {len(r['temporaries_left'])}  "
              f"wall {r['wall_recorded']} s recorded / {r['wall_run']} s run ({r['trial_seconds']} s)", flush=True)
    keys = ["weights_identical", "optimizer_identical", "rng_identical", "metrics_identical", "samples_identical",
            "final_eval_identical", "wall_true"]
    counts = {k: sum(bool(r[k]) for r in results) for k in keys}
    counts["no_temporaries"] = sum(not r["temporaries_left"] for r in results)
    counts["killed_in_checkpoint_write"] = sum(any(k["kind"] == "rename" and k["code"] == -9 for k in r["processes"])
                                               for r in results)
    counts["killed_at_a_random_time"] = sum(any(k["kind"] == "time" and k["code"] == -9 for k in r["processes"])
                                            for r in results)
    counts["killed_twice"] = sum(r["kills"] >= 2 for r in results)
    counts["kill_came_after_the_end"] = sum(k["kind"] != "resume" and k["code"] == 0 for r in results
                                            for k in r["processes"])
    elapsed = time.time() - t0
    print(f"\n{args.trials} trials in {elapsed:.0f} s (reference run {ref_seconds:.1f} s):")
    for k, v in counts.items():
        print(f"  {k:28s} {v}/{args.trials}")
    if args.json:
        Path(args.json).write_text(json.dumps({"trials": args.trials, "seed": args.seed, "sets": SETS,
                                               "seconds": round(elapsed, 1), "reference_seconds": round(ref_seconds, 1),
                                               "counts": counts, "results": results}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the nanoseek processes are killed too
    try:
        main()
    finally:
        for proc in LIVE:
            proc.kill()
