"""Data parallel over ``torch.distributed``, as ``torchrun`` sets it up.

    torchrun --nproc-per-node 8 -m pytest claims/ --model ckpt --base gpt2-medium --device cuda
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m mechclaims neurons --model ckpt --base gpt2-medium --device cuda --out neurons.csv

Every rank runs the same program on its own device (``cuda:LOCAL_RANK``; CPU ranks share the
CPU). The work is split by whole *batches* of prompts: the statistics pass and each
intervention set cut the prompts into the batches a single process would use (batch
composition never depends on the number of ranks), batch ``b`` goes to rank ``b % world_size``,
and after each round of ``world_size`` batches every rank receives every batch's float64
partial sums and adds them, in batch order, into the same per-chunk sums. The arithmetic is
the single process's, operation for operation, so the results are bit-identical on CPU (on
CUDA as far as the kernels themselves are deterministic).

Only rank 0 writes: the cache, the report, the JSON, the JUnit file, the CSV. Cache hits are
decided by rank 0 and broadcast, so ranks on machines without a shared cache directory stay in
step. A chunk is written as soon as its last batch is merged, so a run that loses a rank
(torchrun then stops every rank and names the one that failed) resumes from the finished
chunks, with any number of ranks.

Backends: NCCL when the device is CUDA, Gloo otherwise. Nothing here runs, and
``torch.distributed`` is never initialised, unless ``WORLD_SIZE`` > 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError

FAULT_ENV = "MECHCLAIMS_FAULT"  # tests only: "RANK:BATCH" makes that rank exit before that batch


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes every file; the other ranks only compute."""
        return self.rank == 0

    def mine(self, n: int) -> list[int]:
        """The work units (batch indices) this rank computes out of ``n``: round-robin."""
        return list(range(self.rank, n, self.world_size))

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": _backend if self.active else None,
                "split": "whole prompt batches, round-robin; float64 partials merged in batch order"}


_backend: str | None = None


def world() -> World:
    """This process's place in the run, from torchrun's environment (no collective needed)."""
    try:
        ws = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE / RANK / LOCAL_RANK must be integers ({exc}); torchrun sets them.") from exc
    if ws < 1 or not 0 <= rank < ws:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={ws}); launch with torchrun.")
    return World(rank, ws, local)


def rank_device(device: str) -> str:
    """The device this rank computes on: ``cuda`` -> ``cuda:LOCAL_RANK`` when data parallel."""
    w = world()
    if w.active and str(device) == "cuda":
        return f"cuda:{w.local_rank}"
    return str(device)


def setup(device: str) -> World:
    """Join the process group once (Gloo on CPU, NCCL on CUDA); a no-op for one process."""
    global _backend
    w = world()
    if not w.active:
        return w
    import torch.distributed as dist

    if not dist.is_initialized():
        _backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if _backend == "nccl":
            import torch

            torch.cuda.set_device(w.local_rank)
        dist.init_process_group(_backend)
    return w


def _dist():
    import torch.distributed as dist

    if not dist.is_initialized():
        setup("cpu")
    return dist


def gather_in_order(local: list[tuple[int, object]]) -> list[tuple[int, object]]:
    """Every rank's ``(index, item)`` pairs, on every rank, sorted by index."""
    w = world()
    if not w.active:
        return sorted(local, key=lambda p: p[0])
    dist = _dist()
    parts: list = [None] * w.world_size
    dist.all_gather_object(parts, local)
    return sorted((p for part in parts for p in part), key=lambda p: p[0])


def from_writer(obj):
    """Rank 0's ``obj`` on every rank (e.g. what it found in the cache)."""
    w = world()
    if not w.active:
        return obj
    box = [obj if w.is_writer else None]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    """Wait for every rank, then leave the process group. Called last (pytest_unconfigure, the
    CLI's exit), so no rank exits while rank 0 still writes: torchrun stops the whole group as
    soon as one rank exits with a failure status, and a failed claim is exit status 1."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def fault_point(batch: int) -> None:
    """Tests kill one rank mid-run with ``MECHCLAIMS_FAULT=RANK:BATCH``."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{world().rank}:{batch}":
        os._exit(17)
