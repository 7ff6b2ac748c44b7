"""The policy: a causal LM plus its tokenizer, seen as "prompts in, completions out".

``Policy`` is the one interface that training, evaluation and rejection sampling use:
``generate(prompt_ids, params, seeds)`` returns ``Completion`` objects (exact sampled token ids,
finish reason, log-probs), and ``completion_logits(batch)`` returns the logits that predict each
completion token given its prompt (the GRPO loss takes its log-probabilities from them). It wraps
nanoseek's own DeepSeek-V3 model (batched generation with the latent KV cache) or any
``transformers`` causal LM (the same loop over its ``DynamicCache``), both through
``nanoseek.policy.generate``. The server has its own face, ``nanoseek.serve.chat_model.ChatModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nanoseek.errors import NanoseekError
from nanoseek.model.load import load_model, resolve_model_dir
from nanoseek.policy.generate import Completion, SamplingParams, generate
from nanoseek.tokenizer import load_tokenizer, render_prompt, stop_token_ids, template_prefills_think


@dataclass
class RolloutBatch:
    """Prompts (left-padded) joined to completions (right-padded), ready for a forward pass.

    Shapes: ``input_ids``/``attention_mask`` ``[B, P + C]``; ``completion_ids`` and
    ``completion_mask`` ``[B, C]`` (mask from each completion's length, never from token values);
    ``prompt_len`` = P.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int


def build_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> RolloutBatch:
    """Join prompts and completions into one left/right padded batch (see ``RolloutBatch``)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    C = max(1, max(len(c) for c in completion_ids))
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P + C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):P] = 1
        if c:
            ids[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, P:P + len(c)] = 1
    lengths = torch.tensor([len(c) for c in completion_ids])
    cmask = torch.arange(C)[None, :] < lengths[:, None]
    return RolloutBatch(ids, mask, ids[:, P:], cmask, P)


class Policy:
    """A causal LM and its tokenizer.

    Args:
        model: a ``torch.nn.Module`` called as ``model(input_ids, attention_mask=...)`` returning an
            object with ``.logits`` ``[B, T, V]`` (nanoseek's model or a ``transformers`` LM).
        tokenizer: a ``transformers`` tokenizer. With a chat template (nanoseek's R1-Zero template,
            ChatML for SmolLM2, ...) each question is rendered as a user turn with the generation
            prompt on; without one the prompt is plain ``question + "\\n"`` (``render_prompt``).
            Generation stops at the tokenizer's EOS and end-of-turn ids (``stop_token_ids``, e.g.
            ``<|im_end|>``); padding uses its pad id, else the first stop id.
        system_prompt: optional system message put before every question.
    """

    def __init__(self, model, tokenizer, system_prompt: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.stop_ids = stop_token_ids(tokenizer)
        if not self.stop_ids:
            raise NanoseekError("the tokenizer has no EOS token, so completions could never stop")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.think_prefilled = template_prefills_think(tokenizer)

    # -- text ---------------------------------------------------------------------------------
    def prompt_text(self, question: str) -> str:
        return render_prompt(self.tokenizer, question, self.system_prompt)

    def encode_prompts(self, questions: list[str]) -> list[list[int]]:
        texts = [self.prompt_text(q) for q in questions]
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def decode(self, token_ids: list[int]) -> str:
        """Completion text: tags kept, stop/pad tokens removed."""
        ids = [t for t in token_ids if t not in self.stop_ids and t != self.pad_id]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int] | None = None,
                 batch_size: int = 0) -> list[Completion]:
        """Sample one completion per prompt (row ``i`` seeded by ``seeds[i]``), in chunks of
        ``batch_size`` rows (0: all at once). Stops at any of the tokenizer's stop ids."""
        if not params.stop_token_ids:
            params = SamplingParams(**{**params.__dict__, "stop_token_ids": list(self.stop_ids)})
        was_training = self.model.training
        self.model.eval()
        try:
            n = len(prompt_ids)
            step = batch_size or n
            out: list[Completion] = []
            for s in range(0, n, step):
                chunk_seeds = seeds[s:s + step] if seeds is not None else None
                out.extend(generate(self.model, prompt_ids[s:s + step], params, self.pad_id, seeds=chunk_seeds))
            return out
        finally:
            self.model.train(was_training)

    # -- scoring ------------------------------------------------------------------------------
    def completion_logits(self, batch: RolloutBatch) -> torch.Tensor:
        """Logits that predict each completion token: ``[B, C, V]`` float32."""
        out = self.model(batch.input_ids, attention_mask=batch.attention_mask)
        P = batch.prompt_len
        return out.logits[:, P - 1:-1].float()


def load_model_and_tokenizer(path, device: str | torch.device = "cpu") -> tuple:
    """``(model, tokenizer)`` of the model at ``path`` (a run directory, checkpoint folder, Hugging
    Face folder or short name; ``nanoseek.model.load``), the model on ``device`` in float32.
    The one loader every command uses (recipes, ``nanoseek eval``, the server). Raises
    ``NanoseekError`` when ``path`` is not a model."""
    folder = resolve_model_dir(path)
    return load_model(folder, device=device), load_tokenizer(folder)


def load_policy(path, system_prompt: str | None = None, device: str | torch.device = "cpu") -> Policy:
    """A ``Policy`` for the model at ``path`` (see ``load_model_and_tokenizer``) asked with ``system_prompt``."""
    return Policy(*load_model_and_tokenizer(path, device), system_prompt)
