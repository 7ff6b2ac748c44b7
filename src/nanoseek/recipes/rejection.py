"""Rejection sampling (``nanoseek sample``): k samples per prompt, graded, filtered, written as SFT data.

DeepSeek-R1 sec. 2.3.3: "we ... perform rejection sampling ... generate reasoning trajectories ...
sample multiple responses and retain only the correct ones ... we have filtered out chain-of-thought
with mixed languages, long paragraphs, and code blocks." Here, for any model (a local checkpoint or
an OpenAI-compatible endpoint, through the evaluator's samplers in ``nanoseek.evaluation.run``), each of
``prompts`` problems of a task's ``split`` gets ``samples`` completions, graded by the task's own
accuracy reward. A candidate is dropped by the first filter it fails, in this order (every count
is reported):

==================  ====================================================================================
contaminated        the prompt is a near-copy of an evaluation problem (``nanoseek.tasks.decontaminate``)
incorrect           the task's accuracy reward is not 1
too_long            cut at the token budget, or longer than ``max_length`` tokens
malformed           not well formed for the template (closed think block, a parsable answer)
code_block          a code fence in the chain of thought (R1 sec. 2.3.3)
long_paragraph      a paragraph of the CoT over ``max_paragraph_chars`` (0: off; R1 sec. 2.3.3)
repetition          a repetition loop: a chunk of at least ``repeat_min_chars`` (8) characters repeated
                    ``repeat_min_times`` (4) times in a row (R1 README: R1-Zero's "endless repetition");
                    a short-period loop counts once it runs that long, since a multiple of its
                    period is a period too, while ``+0=1+0=1+0=1`` in a worked sum does not
mixed_language      the CoT has words and under ``min_language_share`` of them are in ``language``
                    (the language-consistency measure of R1 sec. 2.3.2)
duplicate           the same prompt and completion (whitespace-normalised) was already kept
per_prompt_cap      more than ``max_per_prompt`` kept for this prompt (0: no cap)
==================  ====================================================================================

Prompts that are near-copies of an evaluation problem are screened before sampling (no compute is
spent on them; counted as ``contaminated_prompts``). The kept samples are written as chat JSONL
(``messages`` with ``reasoning_content`` on the assistant turn), ready for ``nanoseek sft``.
Sampling defaults are DeepSeek-R1's evaluation settings (temperature 0.6, top-p 0.95, R1 README);
the paper does not give its rejection-sampling temperature.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nanoseek.atomic import atomic_write_json, atomic_write_text
from nanoseek.config import check_ranges
from nanoseek.evaluation.endpoint import EndpointConfig
from nanoseek.evaluation.evaluate import split_think_block
from nanoseek.evaluation.run import EndpointSampler, EvalSettings, LocalSampler, model_run_config, user_message
from nanoseek.progress import Progress
from nanoseek.recipes.common import load_policy
from nanoseek.rewards.rules import language_share
from nanoseek.runs.report import markdown_table
from nanoseek.tasks.decontaminate import build_index

FILTERS = ("contaminated", "incorrect", "too_long", "malformed", "code_block", "long_paragraph", "repetition",
           "mixed_language", "duplicate", "per_prompt_cap")


@dataclass
class RejectionSamplingConfig:
    """Rejection sampling and its filters (see the module docstring); the ``[sample]`` table."""

    split: str = "train"
    prompts: int = 256
    samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 4096
    batch_size: int = 256
    seed: int = 0
    instruction: str = "auto"
    max_length: int = 0
    max_per_prompt: int = 0
    require_format: bool = True
    allow_code_blocks: bool = False  # R1 sec. 2.3.3 drops CoTs with code blocks
    max_paragraph_chars: int = 0
    repeat_min_chars: int = 8
    repeat_min_times: int = 4
    repeat_max_period: int = 200
    language: str = "en"
    min_language_share: float = 0.95
    decontaminate: bool = True
    decontam_ngram: int = 8
    decontam_threshold: float = 0.5
    decontam_common_df: float = 0.05
    eval_tasks: list = field(default_factory=list)  # empty: every task nanoseek knows

    def __post_init__(self):
        check_ranges(self, "sample", {
            "prompts": ">= 0", "samples": ">= 1", "temperature": ">= 0", "top_p": "(0, 1]", "max_new_tokens": ">= 1",
            "batch_size": ">= 1", "seed": ">= 0", "max_length": ">= 0", "max_per_prompt": ">= 0",
            "max_paragraph_chars": ">= 0", "repeat_min_chars": ">= 1", "repeat_min_times": ">= 2",
            "repeat_max_period": f">= {self.repeat_min_chars}", "min_language_share": "[0, 1]", "decontam_ngram": ">= 1",
            "decontam_threshold": "(0, 1]", "decontam_common_df": "(0, 1]"})


@dataclass
class Candidate:
    """One sampled completion with its grades. ``length`` is in tokens (-1: unknown, an endpoint that
    reports no usage); ``reasoning`` is the think-block text (None: no think block)."""

    prompt: str
    completion: str
    reasoning: str | None
    content: str
    correct: bool
    well_formed: bool
    length: int = -1
    finish_reason: str = "stop"
    id: str = ""
    answer: str = ""
    sample: int = 0


# ------------------------------------------------------------------------------------- filters
def repetition_loop(text: str, min_chars: int = 8, min_times: int = 4, max_period: int = 200) -> bool:
    """True when some chunk of ``min_chars`` to ``max_period`` characters repeats ``min_times`` times
    in a row (a run of ``(min_times - 1) * period`` characters equal to those one period earlier)."""
    if len(text) < min_chars * min_times:
        return False
    a = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    for p in range(min_chars, min(max_period, len(a) // min_times) + 1):
        need = (min_times - 1) * p
        eq = np.concatenate(([0], (a[p:] == a[:-p]).astype(np.int8), [0]))
        edges = np.flatnonzero(np.diff(eq))  # starts and ends of runs of equal characters
        if edges.size and int((edges[1::2] - edges[::2]).max()) >= need:
            return True
    return False


def mixed_language(text: str, language: str = "en", min_share: float = 0.95) -> bool:
    """True when ``text`` has words and fewer than ``min_share`` of them are in ``language``'s script
    (``rewards.rules.language_share``). Text without words (``7+3=0 0-9=1``) is not mixed."""
    words = re.findall(r"[^\W\d_]+", text)
    if not any(len(w) > 1 or not w.isascii() for w in words):
        return False
    return language_share(text, language) < min_share


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def first_failed_filter(c: Candidate, cfg: RejectionSamplingConfig, index=None) -> str | None:
    """The first filter (``FILTERS`` order, up to ``mixed_language``) that drops ``c``, or None."""
    if index is not None and index.is_contaminated(c.prompt, cfg.decontam_threshold):
        return "contaminated"
    if not c.correct:
        return "incorrect"
    if c.finish_reason == "length" or (cfg.max_length and c.length > cfg.max_length):
        return "too_long"
    if cfg.require_format and not c.well_formed:
        return "malformed"
    cot = c.reasoning if c.reasoning is not None else c.content
    if not cfg.allow_code_blocks and "```" in cot:
        return "code_block"
    if cfg.max_paragraph_chars and any(len(p) > cfg.max_paragraph_chars for p in _paragraphs(cot)):
        return "long_paragraph"
    if repetition_loop(c.completion, cfg.repeat_min_chars, cfg.repeat_min_times, cfg.repeat_max_period):
        return "repetition"
    if mixed_language(cot, cfg.language, cfg.min_language_share):
        return "mixed_language"
    return None


def filter_candidates(cands: list[Candidate], cfg: RejectionSamplingConfig, index=None) -> tuple[list[Candidate], dict, list]:
    """Apply every filter in order. Returns ``(kept, counts, reasons)``: ``counts[name]`` is how many
    candidates that filter dropped (every name in ``FILTERS`` present), ``reasons[i]`` why
    candidate i was dropped (None: kept)."""
    counts = {name: 0 for name in FILTERS}
    seen: set[tuple[str, str]] = set()
    per_prompt: dict[str, int] = {}
    kept, reasons = [], []
    for c in cands:
        why = first_failed_filter(c, cfg, index)
        key = (" ".join(c.prompt.split()), " ".join(c.completion.split()))
        if why is None and key in seen:
            why = "duplicate"
        if why is None and cfg.max_per_prompt and per_prompt.get(key[0], 0) >= cfg.max_per_prompt:
            why = "per_prompt_cap"
        reasons.append(why)
        if why is None:
            seen.add(key)
            per_prompt[key[0]] = per_prompt.get(key[0], 0) + 1
            kept.append(c)
        else:
            counts[why] += 1
    return kept, counts, reasons


def chat_record(c: Candidate, system_prompt: str | None = None, source: str | None = None) -> dict:
    """A chat-format SFT record (``nanoseek.train.sft_data``) for a kept candidate."""
    assistant = {"role": "assistant", "content": c.content}
    if c.reasoning is not None:
        assistant["reasoning_content"] = c.reasoning
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": c.prompt}, assistant]
    rec = {"messages": messages, "id": c.id, "answer": c.answer, "sample": c.sample}
    if source:
        rec["source"] = source
    return rec


# ------------------------------------------------------------------------------------- sampling
def choose_examples(task, cfg: RejectionSamplingConfig) -> list:
    """The first ``cfg.prompts`` examples of ``cfg.split`` in a ``cfg.seed`` shuffle (0: all)."""
    examples = list(task.examples(cfg.split))
    random.Random(cfg.seed).shuffle(examples)
    return examples[:cfg.prompts] if cfg.prompts else examples


def rejection_sample(sampler, task, cfg: RejectionSamplingConfig, index=None, progress=None) -> tuple[list[dict], dict]:
    """Sample, grade and filter with ``sampler`` (a ``nanoseek.evaluation.run`` sampler); return ``(records, counts)``.

    ``counts`` has ``prompts``, ``contaminated_prompts``, ``candidates``, one entry per filter,
    ``kept`` and ``kept_prompts`` (prompts with at least one kept sample).
    """
    examples = choose_examples(task, cfg)
    clean = [e for e in examples if index is None or not index.is_contaminated(e.prompt, cfg.decontam_threshold)]
    questions = [user_message(e.prompt, task, sampler.style, cfg.instruction) for e in clean]
    settings = EvalSettings(model="sampler", temperature=cfg.temperature, top_p=cfg.top_p,
                            max_tokens=cfg.max_new_tokens, seed=cfg.seed)
    rows = [(i, j) for i in range(len(clean)) for j in range(cfg.samples)]
    results = []

    def on_batch(batch):
        results.extend(batch)
        if progress is not None:
            progress.update(len(batch), acc=sum(r.correct for r in results) / max(1, len(results)))

    if rows:
        sampler.sample(task, clean, questions, rows, settings, on_batch)
    prefilled = bool(getattr(getattr(sampler, "policy", None), "think_prefilled", False))
    cands = []
    for r in sorted(results, key=lambda r: (r.problem, r.sample)):
        if r.error is not None:
            continue
        reasoning, content = split_think_block(r.completion, prefilled)
        cands.append(Candidate(r.prompt, r.completion, reasoning, content, r.correct, r.well_formed, r.length,
                               r.finish_reason, r.id, r.answer, r.sample))
    kept, counts, _ = filter_candidates(cands, cfg, index)
    system = getattr(sampler, "system_prompt", None)
    records = [chat_record(c, system) for c in kept]
    counts = {"prompts": len(examples), "contaminated_prompts": len(examples) - len(clean),
              "candidates": len(cands), "failed_requests": len(results) - len(cands), **counts,
              "kept": len(kept), "kept_prompts": len({c.id for c in kept})}
    return records, counts


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write ``records`` as JSON lines, atomically."""
    return atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def counts_table(counts: dict) -> str:
    """The filter counts as a Markdown table (what each filter dropped, and what was kept)."""
    rows = [["prompts", counts["prompts"]], ["prompts screened out (contaminated)", counts["contaminated_prompts"]],
            ["candidates sampled", counts["candidates"]]]
    rows += [[f"dropped: {name}", counts[name]] for name in FILTERS]
    rows += [["kept", counts["kept"]], ["prompts with a kept sample", counts["kept_prompts"]]]
    return markdown_table(["", "count"], rows, align="lr")


def decontamination_index(cfg: RejectionSamplingConfig, task, data_dir=None):
    """The n-gram index of the evaluation problems that ``task``'s prompts are screened against
    (``nanoseek.tasks.decontaminate``; ``cfg.eval_tasks``, else every task nanoseek knows), or None
    when ``cfg.decontaminate`` is off."""
    if not cfg.decontaminate:
        return None
    return build_index(data_dir, [task], cfg.decontam_ngram, cfg.decontam_common_df, cfg.eval_tasks or None)


def sample_with_progress(sampler, task, cfg: RejectionSamplingConfig, index, desc: str) -> tuple[list[dict], dict]:
    """``rejection_sample`` behind a progress bar named ``desc``."""
    bar = Progress((cfg.prompts or len(task.examples(cfg.split))) * cfg.samples, desc, unit="sample")
    records, counts = rejection_sample(sampler, task, cfg, index, bar)
    bar.close()
    return records, counts


def model_sampler(model: str, endpoint: str | None = None, api_key: str | None = None, batch_size: int = 256,
                  system_prompt: str | None = None) -> LocalSampler | EndpointSampler:
    """The sampler of ``model``: at an OpenAI-compatible ``endpoint`` (``model`` is then the remote
    name), else a local model (run directory, checkpoint, Hugging Face folder) asked with
    ``system_prompt``, by default the one its run recorded."""
    if endpoint:
        return EndpointSampler(EndpointConfig(endpoint, model, api_key))
    if system_prompt is None:
        system_prompt = (model_run_config(EvalSettings(model=model)).get("task") or {}).get("system_prompt")
    return LocalSampler(load_policy(model, system_prompt), batch_size, {"checkpoint": str(model)})


def run_sample(model: str, task, cfg: RejectionSamplingConfig, out: str | Path, *, endpoint: str | None = None,
               api_key: str | None = None, data_dir=None, sampler=None, log=print) -> dict:
    """``nanoseek sample``: write the kept samples to ``out`` (chat JSONL) and the counts next to it
    (``out`` with ``.report.json``); return the counts."""
    sampler = sampler or model_sampler(model, endpoint, api_key, cfg.batch_size)
    index = decontamination_index(cfg, task, data_dir)
    if index is not None:
        log(f"[nanoseek] decontaminating against {', '.join(f'{k} ({v})' for k, v in index.sources.items())}"
            + (f"; skipped {', '.join(index.skipped)}" if index.skipped else ""))
    records, counts = sample_with_progress(sampler, task, cfg, index, f"sample {task.name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, records)
    atomic_write_json(out.with_suffix(".report.json"), {"counts": counts, "model": model, "endpoint": endpoint,
                                                        "task": task.name, "decontaminated_against": index.sources if index else {},
                                                        "decontamination_skipped": index.skipped if index else {}})
    log(counts_table(counts))
    log(f"[nanoseek] wrote {len(records)} samples to {out}")
    return counts
