"""The GRPO policy update: micro-batches of whole groups, log-probs, globally normalised loss.

A step's kept groups (global order) are split into ``minibatches_per_step`` optimizer steps, each
into ``grad_accumulation_steps`` micro-batches per rank. Each micro-batch's ``grpo_loss`` is
rescaled to the normaliser of its whole optimizer step across ranks (completions for ``grpo``,
tokens for ``bnpo`` / ``dapo``, completions x ``max_new_tokens`` for ``dr_grpo``), so the summed
gradient equals the one-batch, one-process gradient whatever the split (tested in
``tests/test_ddp.py``); with one micro-batch on one rank the scale is exactly 1.

Log-probs (``Scorer``): ``share_prompt`` with a Llama-family ``transformers`` model runs each
distinct prompt once per micro-batch (``nanoseek.model.hf_fast``); otherwise the plain forward
over left-padded ``[prompt; completion]`` rows (``nanoseek.policy.policy.build_batch``), which also
returns DeepSeekMoE expert loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nanoseek.model.hf_fast import FastLM, supports
from nanoseek.policy.policy import build_batch
from nanoseek.rl.grpo import LOSS_AGGREGATIONS, token_entropy, token_logprobs
from nanoseek.rl.masks import completion_mask


@dataclass
class MicroBatch:
    """Whole groups of one rank. Shapes: ``U`` prompts, ``B`` completions, ``P``/``C`` padded lengths.

    prompt_ids/prompt_mask ``[U, P]`` (left-padded); group ``[B]`` (prompt of each completion);
    completion_ids ``[B, C]`` (right-padded); lengths ``[B]``; mask ``[B, C]`` bool loss mask (rows
    of dropped completions all False); advantages ``[B]``; rows: ``(prompt ids, completion ids)``
    per completion for the plain forward.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    group: Tensor
    completion_ids: Tensor
    lengths: Tensor
    mask: Tensor
    advantages: Tensor
    rows: list[tuple[list[int], list[int]]]

    @property
    def size(self) -> int:
        """Completions ``B``."""
        return int(self.group.numel())

    def to(self, device) -> "MicroBatch":
        """The tensors moved to ``device`` (the model's)."""
        move = ("prompt_ids", "prompt_mask", "group", "completion_ids", "lengths", "mask", "advantages")
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in move})


def make_micro_batch(prompts: list[list[int]], completions: list[list[list[int]]], advantages: Tensor,
                     drop: Tensor, pad_id: int) -> MicroBatch:
    """Tensors for groups ``prompts[u]`` with completions ``completions[u]`` (flat ``advantages``
    and ``drop`` ``[B]`` in the same order). The loss mask comes from lengths, never token values."""
    U = len(prompts)
    P = max(len(p) for p in prompts)
    flat = [c for cs in completions for c in cs]
    C = max(1, max(len(c) for c in flat))
    pids = torch.full((U, P), pad_id, dtype=torch.long)
    pmask = torch.zeros((U, P), dtype=torch.long)
    for u, p in enumerate(prompts):
        pids[u, P - len(p):] = torch.tensor(p, dtype=torch.long)
        pmask[u, P - len(p):] = 1
    cids = torch.full((len(flat), C), pad_id, dtype=torch.long)
    for b, c in enumerate(flat):
        if c:
            cids[b, :len(c)] = torch.tensor(c, dtype=torch.long)
    group = torch.tensor([u for u, cs in enumerate(completions) for _ in cs], dtype=torch.long)
    lengths = torch.tensor([len(c) for c in flat], dtype=torch.long)
    rows = [(prompts[u], c) for u, cs in enumerate(completions) for c in cs]
    return MicroBatch(pids, pmask, group, cids, lengths, completion_mask(lengths, C, drop=drop), advantages, rows)


class Scorer:
    """Per-token log-probs (and entropies) of a micro-batch's completions under a model.

    Args:
        share_prompt: use the shared-prompt forward when the model supports it.
        temperature: logits are divided by it, as when sampling (TRL does the same).
        pad_id: pad token for the plain forward.
    """

    def __init__(self, share_prompt: bool, temperature: float, pad_id: int):
        self.share_prompt, self.temperature, self.pad_id = share_prompt, temperature, pad_id

    def logits(self, model, mb: MicroBatch) -> tuple[Tensor, Tensor | None]:
        """``([B, C, V] float32 logits predicting each completion token, expert_load or None)``."""
        if self.share_prompt and supports(model):
            return FastLM(model).completion_logits(mb.prompt_ids, mb.prompt_mask, mb.group, mb.completion_ids), None
        batch = build_batch([p for p, _ in mb.rows], [c for _, c in mb.rows], self.pad_id)
        dev = mb.completion_ids.device
        out = model(batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev))
        return out.logits[:, batch.prompt_len - 1:-1].float(), getattr(out, "expert_load", None)

    def __call__(self, model, mb: MicroBatch, entropy: bool = False):
        """``(logp [B, C], entropy [B, C] or None, expert_load or None)``; entropy is computed
        without gradient."""
        logits, load = self.logits(model, mb)
        logp = token_logprobs(logits, mb.completion_ids, self.temperature)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = token_entropy(logits.detach(), self.temperature)
        return logp, ent, load


@dataclass
class UpdateSums:
    """Sums over a step's micro-batches (and, after :meth:`all_reduce`, ranks) that its update
    metrics are read from.

    ``loss``: the scaled micro-batch losses; ``clip_low`` ... ``kl``: ``grpo_loss``'s metric of the
    same name (``TOKEN_MEANS``) x tokens in the micro-batch's loss; ``tokens``: tokens in the loss;
    ``entropy`` / ``entropy_tokens``: entropy summed over completion tokens, and their count.
    """

    # grpo_loss metric -> the field holding its token-weighted sum
    TOKEN_MEANS: ClassVar[dict[str, str]] = {"clip_ratio/low": "clip_low", "clip_ratio/high": "clip_high",
                                             "clip_ratio/region": "clip_region", "ratio": "ratio", "kl": "kl"}
    loss: float = 0.0
    clip_low: float = 0.0
    clip_high: float = 0.0
    clip_region: float = 0.0
    ratio: float = 0.0
    kl: float = 0.0
    tokens: float = 0.0
    entropy: float = 0.0
    entropy_tokens: float = 0.0

    def add(self, loss: float, metrics: dict[str, Tensor], mb: MicroBatch, entropy: Tensor | None) -> None:
        """Add one micro-batch: its scaled ``loss``, ``grpo_loss``'s ``metrics``, and the ``[B, C]``
        ``entropy`` of its completion tokens (None after the first epoch)."""
        tok = float(mb.mask.sum())
        self.loss += loss
        for key, name in self.TOKEN_MEANS.items():
            if key in metrics:
                setattr(self, name, getattr(self, name) + float(metrics[key]) * tok)
        self.tokens += tok
        if entropy is not None:
            lmask = torch.arange(entropy.shape[1], device=entropy.device)[None, :] < mb.lengths[:, None]
            self.entropy += float((entropy.double() * lmask).sum())
            self.entropy_tokens += float(lmask.sum())

    def all_reduce(self, dist) -> "UpdateSums":
        """Every field summed over ``dist``'s ranks (one float64 all-reduce)."""
        t = torch.tensor(dataclasses.astuple(self), dtype=torch.float64)
        dist.all_reduce_sum(t)
        return UpdateSums(*t.tolist())

    def metrics(self, n_updates: int, with_kl: bool) -> dict[str, float]:
        """Mean loss per optimizer step (``n_updates`` of them), token means of the clip fractions,
        ratio, entropy and (``with_kl``) KL; NaN (stored as null) when no token was in the loss."""
        nan, tok = float("nan"), self.tokens
        stats = {"loss": self.loss / n_updates,
                 "clip_ratio/low": self.clip_low / tok if tok else nan,
                 "clip_ratio/high": self.clip_high / tok if tok else nan,
                 "clip_ratio/region": self.clip_region / tok if tok else nan,
                 "ratio": self.ratio / tok if tok else nan,
                 "entropy": self.entropy / self.entropy_tokens if self.entropy_tokens else nan}
        if with_kl:
            stats["kl"] = self.kl / tok if tok else nan
        return stats


def normaliser(kept: list[dict], loss_type: str, max_new_tokens: int, mask_truncated: bool) -> float:
    """What the loss of an optimizer step over groups ``kept`` (summaries, every rank) is divided by,
    by the ``unit`` of its registered ``loss_type`` (``nanoseek.rl.grpo.LOSS_AGGREGATIONS``):
    completions with tokens in the loss, tokens in the loss, or completions x ``max_new_tokens``."""
    rows = toks = n = 0
    for s in kept:
        for r, length, trunc in zip(s["rewards"], s["lengths"], s["truncated"]):
            n += 1
            if r is None or (mask_truncated and trunc) or length == 0:
                continue
            rows += 1
            toks += length
    return float({"completions": rows, "tokens": toks, "slots": n * max_new_tokens}[LOSS_AGGREGATIONS[loss_type].unit])


def local_normaliser(mb: MicroBatch, loss_type: str, max_new_tokens: int) -> float:
    """The same quantity for one micro-batch (what ``grpo_loss`` divides by there)."""
    unit = LOSS_AGGREGATIONS[loss_type].unit
    if unit == "completions":
        return float((mb.mask.sum(1) > 0).sum().clamp(min=1))
    if unit == "slots":
        return float(mb.size * max_new_tokens)
    return float(mb.mask.sum().clamp(min=1))
