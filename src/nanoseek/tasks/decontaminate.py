"""Decontamination: drop training prompts that are near-copies of an evaluation problem (n-gram overlap).

Text is normalised (lower case, Unicode NFKC) and split into word and symbol tokens (``\\w+`` runs
and single punctuation marks, so ``7+3-9`` is ``7 + 3 - 9``: operators count, unlike a words-only
split). A candidate is contaminated when, for some evaluation problem, the shared n-grams cover at
least ``threshold`` of the shorter text's n-grams (texts shorter than ``n`` tokens are one n-gram).
Measuring against the shorter text catches both a paraphrase of a problem and a problem pasted into
a longer prompt.

N-grams that appear in more than ``common_df`` of one benchmark's problems (and in at least 5) are
template text, not problem content ("create an equation that equals", "Using the numbers"), and
are ignored: otherwise every Countdown-style prompt would match every other one.

Which splits: ``eval_sources`` gathers the ``test`` split of every task nanoseek knows
(``nanoseek.tasks.TASKS``) with default options, plus any extra tasks (the task being sampled, with
its own options); a task whose data is not on disk is skipped and listed. The n-gram approach and
n = 8 follow common practice for benchmark decontamination (the GPT-3 paper, sec. 4, used 13-grams
on long documents; short math prompts need a smaller n); the DeepSeek papers do not give theirs.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from nanoseek.errors import NanoseekError
from nanoseek.tasks import get_task, task_names

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """Normalised word/symbol tokens of ``text``."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of token n-grams of ``text`` (one n-gram of all tokens when shorter than ``n``)."""
    t = tokens(text)
    if not t:
        return set()
    if len(t) < n:
        return {tuple(t)}
    return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}


@dataclass
class Match:
    """The closest evaluation problem to a candidate: its ``source`` (task name), index and overlap."""

    source: str
    index: int
    overlap: float


@dataclass
class EvalIndex:
    """An inverted index from n-gram to the evaluation problems that contain it.

    Build with ``EvalIndex.build({source: [problem texts]}, n, common_df)``; ``match(text)`` gives
    the evaluation problem sharing the largest share of n-grams, ``is_contaminated(text, threshold)``
    applies the threshold. ``skipped`` lists sources that could not be loaded (and why).
    """

    n: int = 8
    common_df: float = 0.05
    postings: dict = field(default_factory=dict)  # n-gram -> list of problem keys
    sizes: dict = field(default_factory=dict)  # problem key -> number of n-grams kept
    sources: dict = field(default_factory=dict)  # source -> number of problems
    skipped: dict = field(default_factory=dict)  # source -> reason

    @classmethod
    def build(cls, texts_by_source: dict[str, list[str]], n: int = 8, common_df: float = 0.05) -> "EvalIndex":
        index = cls(n=n, common_df=common_df)
        postings: dict = defaultdict(list)
        for source, texts in texts_by_source.items():
            grams = [ngrams(t, n) for t in texts]
            df = Counter(g for gs in grams for g in gs)
            common = {g for g, c in df.items() if c >= 5 and c > common_df * len(texts)}
            for i, gs in enumerate(grams):
                kept = gs - common
                index.sizes[(source, i)] = len(kept)
                for g in kept:
                    postings[g].append((source, i))
            index.sources[source] = len(texts)
        index.postings = dict(postings)
        return index

    def match(self, text: str) -> Match | None:
        """The evaluation problem with the highest overlap with ``text`` (None when nothing is shared)."""
        grams = ngrams(text, self.n)
        if not grams:
            return None
        shared: Counter = Counter()
        for g in grams:
            for key in self.postings.get(g, ()):
                shared[key] += 1
        best = None
        for key, c in shared.items():
            overlap = c / max(1, min(len(grams), self.sizes[key]))
            if best is None or overlap > best.overlap:
                best = Match(key[0], key[1], overlap)
        return best

    def is_contaminated(self, text: str, threshold: float) -> Match | None:
        """The matching evaluation problem when its overlap is at least ``threshold``, else None."""
        m = self.match(text)
        return m if m is not None and m.overlap >= threshold else None


def eval_sources(data_dir=None, extra: list | None = None, names: list[str] | None = None) -> tuple[dict, dict]:
    """``({source: [test prompts]}, {source: reason skipped})`` for every known task (or ``names``)
    with default options, plus the tasks in ``extra`` (``Task`` objects, e.g. the one sampled with
    its configured options), each under its own name (a second instance of a name gets ``name#2``)."""
    texts: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for name in names if names is not None else task_names():
        try:
            texts[name] = [e.prompt for e in get_task(name, data_dir=data_dir).examples("test")]
        except (NanoseekError, OSError) as e:  # missing or unreadable data files, a task without a test split
            skipped[name] = str(e).splitlines()[0][:200]
    for task in extra or []:
        prompts = [e.prompt for e in task.examples("test")] if "test" in task.splits else []
        key = task.name
        if key in texts:
            if texts[key] == prompts:
                continue
            k = 2
            while f"{task.name}#{k}" in texts:
                k += 1
            key = f"{task.name}#{k}"
        texts[key] = prompts
        skipped.pop(task.name, None)
    return texts, skipped


def build_index(data_dir=None, extra: list | None = None, n: int = 8, common_df: float = 0.05,
                names: list[str] | None = None) -> EvalIndex:
    """``EvalIndex`` over ``eval_sources(...)`` (see there)."""
    texts, skipped = eval_sources(data_dir, extra, names)
    index = EvalIndex.build(texts, n, common_df)
    index.skipped = skipped
    return index
