"""Task and example types shared by training, evaluation, sampling and serving.

A ``Task`` is a named source of ``Example`` rows (per split) plus the reward functions that grade
completions for it. Reward functions follow the TRL protocol (see ``nanoseek.rewards.base``):
``fn(completions: list[str], **columns) -> list[float | None]`` where ``columns`` are the
``Example.columns()`` of each completion's example, as lists aligned with ``completions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from nanoseek.errors import NanoseekError
from nanoseek.rewards.base import RewardFn
from nanoseek.rewards.rules import accuracy_reward, format_reward

# The R1-Zero template (DeepSeek-R1 paper v1, Table 1). `{prompt}` is replaced by the question; the
# assistant turn is opened with "<think>" so that the completion continues the reasoning.
R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)

# DeepSeek-R1 usage recommendation for math prompts (R1 README, "Usage Recommendations").
R1_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Example:
    """One problem of a task.

    Attributes:
        id: stable identifier, unique within the task (used for dedup and resume).
        prompt: the question text (what the user asks), without any template.
        answer: the reference final answer as text (e.g. "72", "\\frac{1}{2}").
        metadata: anything else (solution text, subject, level, numbers of a puzzle, ...).
    """

    id: str
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """The columns passed to reward functions: ``prompt``, ``answer`` and every metadata key."""
        return {"prompt": self.prompt, "answer": self.answer, **self.metadata}


class Task:
    """A verifiable task: splits of examples and the reward functions that grade them.

    Subclasses set ``name`` and ``splits`` and implement ``examples(split)``. ``reward_funcs()``
    returns the named reward functions (default: accuracy and format; see ``nanoseek.rewards.rules``).
    ``answer_type`` names how answers are compared: "number", "math" or "text".
    """

    name: str = "task"
    splits: Sequence[str] = ("train", "test")
    answer_type: str = "math"

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` (one of ``splits``), in a fixed order."""
        raise NotImplementedError

    def reward_funcs(self) -> dict[str, RewardFn]:
        """Reward name -> reward function for this task's completions (R1's accuracy and format)."""
        return {"accuracy": accuracy_reward, "format": format_reward}

    def check_split(self, split: str) -> None:
        """Raise ``NanoseekError`` unless ``split`` is one of this task's ``splits``."""
        if split not in self.splits:
            raise NanoseekError(f"task {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
