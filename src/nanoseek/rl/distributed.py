"""Data-parallel GRPO across processes (``torchrun``; gloo on CPU, nccl on GPU).

How a step is split (``nanoseek.rl.trainer``):

* The step's prompts are a global, seeded stream; prompt ``k`` of a step goes to rank
  ``shard(n)``'s contiguous block, and all ``G`` completions of a prompt stay on that rank (a group
  is never split, so its advantages need no communication).
* Every completion is sampled with its own seed derived from (run seed, step, prompt, sample), so
  completions do not depend on the number of ranks.
* Loss normalisers (completions / tokens in the optimizer step) are summed over ranks before the
  backward pass and each rank's gradient is summed (not averaged) over ranks, so the update equals
  the single-process update on the same global batch up to float summation order.
* Expert loads for DeepSeekMoE's balancing bias are summed over ranks before the bias update.
* Only rank 0 writes files (metrics, samples, checkpoints, reports).

Multi-machine: ``torchrun --nnodes N --nproc-per-node GPUS --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m nanoseek zero ...`` on every machine (see the README, "GRPO").
Only torch is imported.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (``world == 1``: no communication)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collectives run: "cuda" for nccl


    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    def shard(self, n: int, rank: int | None = None) -> range:
        """The contiguous block of ``range(n)`` owned by ``rank`` (this rank by default)."""
        r = self.rank if rank is None else rank
        return range(r * n // self.world, (r + 1) * n // self.world)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks, in place; returns ``t``."""
        if self.world > 1:
            if t.device.type != torch.device(self.device).type:  # e.g. a CPU counter under nccl
                tmp = t.to(self.device)
                tdist.all_reduce(tmp, op=tdist.ReduceOp.SUM)
                t.copy_(tmp)
            else:
                tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj: Any) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects)."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op on one process)."""
        if self.world > 1:
            tdist.barrier()

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's ``.grad`` over ranks in one flat all-reduce (a missing grad counts as 0)."""
        if self.world == 1:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.all_reduce_sum(flat)
        i = 0
        for p in params:
            n = p.numel()
            g = flat[i:i + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            i += n


def current() -> Dist:
    """The ``Dist`` of an initialised ``torch.distributed`` process group, else a single process."""
    if tdist.is_available() and tdist.is_initialized():
        device = "cuda" if tdist.get_backend() == "nccl" else "cpu"
        return Dist(tdist.get_rank(), tdist.get_world_size(), device)
    return Dist()


def init_from_env(backend: str | None = None) -> Dist:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...); a single process when ``WORLD_SIZE`` is unset or 1.

    ``backend``: default nccl when CUDA is available, else gloo. With nccl each process uses GPU
    ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not tdist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # rank 0 evaluates alone while the others wait in the next collective: allow long evaluations
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return current()
